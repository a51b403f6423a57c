//! The daemon's HTTP side, beside gRPC, each on its own optional address:
//!
//! * `http_listen` — the report pages (`pages/`) for people with a browser, behind the same
//!   tokens as the API: `GET /` lists the tenant's datasets and audits, `GET /budget/ID` draws a
//!   fresh signed budget report (with its charts' data), `GET /audits/ID` an audit's. The token
//!   comes as `Authorization: Bearer TOKEN`, or as the password of HTTP Basic (any user name),
//!   which a browser asks for. Over TLS when the daemon has a certificate. Pages are private:
//!   `Cache-Control: no-store`, and a content security policy that allows no script and no
//!   fetch (the pages need none).
//! * `metrics_listen` — `GET /metrics` in Prometheus' text format (`service/metrics.rs`), plain
//!   HTTP and no token, for the operators' network.
//!
//! Each connection is HTTP/1.1, served by hyper; at most `max_connections` at once (past it a new
//! one is closed at accept) and none longer than `idle_timeout`. Work that reads the store runs
//! on the blocking pool; drawing a page (a composition per chart point) on the CPU pool, within
//! the tenant's share, as plans do.

use crate::pages;
use crate::service::signing::SignedReport;
use crate::service::State;
use crate::store::{AuditId, AuditState, TenantId};
use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A response with its whole body.
type Reply = Response<Full<Bytes>>;

/// What an HTTP listener serves.
#[derive(Clone, Copy)]
enum Site {
    Pages,
    Metrics,
}

/// Serves the report pages on `listener` until the daemon stops (TLS when configured).
pub async fn serve_pages(state: Arc<State>, listener: TcpListener) -> std::io::Result<()> {
    let tls = match state.config.tls_pem()? {
        Some((cert, key)) => Some(tls_acceptor(&cert, &key)?),
        None => None,
    };
    serve(state, listener, tls, Site::Pages).await
}

/// Serves `/metrics` on `listener` until the daemon stops (plain HTTP).
pub async fn serve_metrics(state: Arc<State>, listener: TcpListener) -> std::io::Result<()> {
    serve(state, listener, None, Site::Metrics).await
}

/// The acceptor for the daemon's certificate and key (PEM).
fn tls_acceptor(cert: &[u8], key: &[u8]) -> std::io::Result<TlsAcceptor> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"));
    let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>().map_err(|e| invalid("the TLS certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("the TLS key", &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("the TLS certificate and key", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(state: Arc<State>, listener: TcpListener, tls: Option<TlsAcceptor>, site: Site) -> std::io::Result<()> {
    let limits = state.config.limits.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut stopping = state.stopping.subscribe();
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { stopping.wait_for(|&s| s).await.map(|_| ()) } => return Ok(()),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropping the socket closes it
        };
        let _ = tcp.set_nodelay(true);
        let (state, tls, limits) = (state.clone(), tls.clone(), limits.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(state, req, site).await) }
            });
            let connection = async {
                // A client must send its request's headers within the handshake timeout.
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.handshake_timeout);
                match tls {
                    None => http.serve_connection(TokioIo::new(tcp), service).await.is_ok(),
                    Some(tls) => match tokio::time::timeout(limits.handshake_timeout, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => http.serve_connection(TokioIo::new(stream), service).await.is_ok(),
                        _ => false,
                    },
                }
            };
            let _ = tokio::time::timeout(limits.idle_timeout, connection).await;
        });
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>, site: Site) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n".into());
    }
    let started = std::time::Instant::now();
    let (path, headers) = (req.uri().path().to_string(), req.headers().clone());
    let internal = || text(StatusCode::INTERNAL_SERVER_ERROR, "the page failed; see the daemon's log\n".into());
    let st = state.clone();
    let reply = match site {
        Site::Metrics => tokio::task::spawn_blocking(move || metrics(&st, &path)).await.unwrap_or_else(|_| internal()),
        Site::Pages => match tokio::task::spawn_blocking(move || authenticate(&st, &headers)).await {
            // A page composes its charts: on the CPU pool, within the tenant's share.
            Ok(Ok(tenant)) => {
                let (st, t) = (state.clone(), tenant.clone());
                let deadline = std::time::Instant::now() + PAGE_DEADLINE;
                state.cpu.run(&tenant, deadline, move || page(&st, &t, &path)).await.unwrap_or_else(|e| failed(e.into()))
            }
            Ok(Err(refused)) => refused,
            Err(_) => internal(),
        },
    };
    tracing::debug!(status = reply.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "HTTP request");
    reply
}

fn metrics(state: &State, path: &str) -> Reply {
    if path != "/metrics" {
        return text(StatusCode::NOT_FOUND, "metrics are at /metrics\n".into());
    }
    match state.metrics.render(&state.store) {
        Ok(body) => {
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics: the store failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "the daemon's store failed; see its log\n".into())
        }
    }
}

/// The bearer token of a request: `Bearer TOKEN`, or the password of `Basic`.
fn token(headers: &hyper::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim().to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let pair = String::from_utf8(decoded).ok()?;
        Some(pair.split_once(':')?.1.to_string())
    } else {
        None
    }
}

/// How long a page may take to be drawn.
const PAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The tenant of a request's token, or the reply that asks for one.
fn authenticate(state: &State, headers: &hyper::HeaderMap) -> Result<TenantId, Reply> {
    match token(headers).map(|t| state.store.authenticate(&t)) {
        Some(Ok(Some(tenant))) => Ok(tenant),
        Some(Err(e)) => Err(failed(e.into())),
        _ => {
            let mut r = text(StatusCode::UNAUTHORIZED, "a token is needed: send it as the password (any user name), or as `Authorization: Bearer TOKEN`\n".into());
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"ewtune\", charset=\"UTF-8\""));
            Err(r)
        }
    }
}

/// The tenant's page at `path`.
fn page(state: &State, tenant: &TenantId, path: &str) -> Reply {
    let result = match path.trim_end_matches('/').split('/').collect::<Vec<_>>()[..] {
        [""] => index(state, tenant),
        ["", "budget", id] => crate::service::budget::signed_report(state, tenant, id, true)
            .map_err(tonic::Status::from)
            .and_then(|r| pages::budget::budget_page(&SignedReport::new(r.json, &r.signature, &r.public_key)).map_err(|e| tonic::Status::internal(e.to_string()))),
        ["", "audits", id] => audit(state, tenant, id),
        _ => Err(tonic::Status::not_found(format!("no page at {path}: see / for the pages of your datasets and audits"))),
    };
    match result {
        Ok(html) => {
            let mut r = Response::new(Full::new(Bytes::from(html)));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
            h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            h.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; frame-ancestors 'none'"));
            h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
            h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
            r
        }
        Err(status) => failed(status),
    }
}

/// An audit's page, once it succeeded.
fn audit(state: &State, tenant: &TenantId, id: &str) -> Result<String, tonic::Status> {
    let id = AuditId::parse(id).map_err(|_| tonic::Status::not_found(format!("audit {id} not found")))?;
    let a = state.store.get_audit(tenant, &id)?;
    match (a.state, a.report_json, a.signature) {
        (AuditState::Succeeded, Some(json), Some(signature)) => {
            pages::audit::audit_page(&SignedReport::new(json, &signature, &state.signer.public_key())).map_err(|e| tonic::Status::internal(e.to_string()))
        }
        (AuditState::Running, ..) => Err(tonic::Status::failed_precondition(format!("audit {id} is still running: reload this page later"))),
        (_, ..) => Err(tonic::Status::failed_precondition(format!("audit {id} failed: {}", a.reason.unwrap_or_default()))),
    }
}

/// The tenant's datasets and audits, linked to their pages.
fn index(state: &State, tenant: &TenantId) -> Result<String, tonic::Status> {
    let datasets = state.store.list_datasets(tenant, crate::store::Page::default())?.items;
    let audits = state.store.list_audits(tenant, None, crate::store::Page::default())?.items;
    let mut body = format!("<h1>Reports of {}</h1>\n<h2>Datasets</h2>\n<ul>\n", pages::escape(tenant.as_str()));
    for d in &datasets {
        body.push_str(&format!(
            "<li><a href=\"/budget/{id}\">{name}</a> <code>{id}</code>, budget epsilon {eps} at delta {delta:e}</li>\n",
            id = pages::escape(d.id.as_str()),
            name = pages::escape(&d.name),
            eps = d.budget_epsilon,
            delta = d.budget_delta
        ));
    }
    body.push_str("</ul>\n<h2>Audits</h2>\n<ul>\n");
    for a in &audits {
        body.push_str(&format!(
            "<li><a href=\"/audits/{id}\"><code>{id}</code></a> of job <code>{job}</code>, {state}</li>\n",
            id = pages::escape(a.id.as_str()),
            job = pages::escape(a.job.as_str()),
            state = a.state.as_str()
        ));
    }
    body.push_str("</ul>\n");
    Ok(pages::plain_page(&format!("ewtune reports of {}", tenant.as_str()), &body))
}

/// A plain-text reply.
fn text(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

/// A refusal as HTTP: the gRPC status's code mapped, its message as the body.
fn failed(status: tonic::Status) -> Reply {
    use tonic::Code;
    let code = match status.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(code, format!("{}\n", status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_as_bearer_or_as_the_basic_password() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ewt_abc".parse().unwrap());
        assert_eq!(token(&h).as_deref(), Some("ewt_abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:ewt_def");
        h.insert(header::AUTHORIZATION, format!("Basic {basic}").parse().unwrap());
        assert_eq!(token(&h).as_deref(), Some("ewt_def"));
        h.insert(header::AUTHORIZATION, "Digest x".parse().unwrap());
        assert_eq!(token(&h), None);
    }
}
