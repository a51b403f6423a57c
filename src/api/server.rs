//! The gRPC server: ewtune's services behind the auth interceptor, plus grpc.health.v1 and
//! server reflection (v1 and v1alpha) listing only `ewtune.v1.*` and the health service, on an
//! already bound listener so the daemon and the tests run the same code. TLS when configured.
//! The resource limits (`admission.rs`) wrap it: the connection cap and timeouts on the accepted
//! sockets, the upload cap as a layer, HTTP/2 keepalive here; every request is timed into the
//! metrics (`latency.rs`). [`run`] also serves the HTTP side (`http.rs`) when configured.

use super::auth::Authenticator;
use super::pb;
use crate::service::State;
use std::sync::Arc;

/// Serves until `shutdown` resolves.
pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let auth = Authenticator { state: state.clone() };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::datasets_server::DatasetsServer<super::datasets::DatasetsApi>>().await;
    health_reporter.set_serving::<pb::jobs_server::JobsServer<super::jobs::JobsApi>>().await;
    health_reporter.set_serving::<pb::budget_server::BudgetServer<super::budget::BudgetApi>>().await;
    health_reporter.set_serving::<pb::audits_server::AuditsServer<super::audits::AuditsApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let limits = &state.config.limits;
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(super::latency::LatencyLayer::new(state.clone()))
        .layer(super::admission::RequestLimitLayer::new(limits.max_concurrent_uploads));
    if let Some((cert, key)) = state.config.tls_pem()? {
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key)))?;
    }
    const MAX_MESSAGE: usize = 256 << 20; // datasets and audit texts are uploaded in one message
    let incoming = super::admission::incoming(listener, limits);
    builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::datasets_server::DatasetsServer::new(super::datasets::DatasetsApi { state: state.clone() }).max_decoding_message_size(MAX_MESSAGE),
            auth.clone(),
        ))
        .add_service(pb::jobs_server::JobsServer::with_interceptor(super::jobs::JobsApi { state: state.clone() }, auth.clone()))
        .add_service(pb::budget_server::BudgetServer::with_interceptor(super::budget::BudgetApi { state: state.clone() }, auth.clone()))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::audits_server::AuditsServer::new(super::audits::AuditsApi { state }).max_decoding_message_size(MAX_MESSAGE),
            auth,
        ))
        // TCP_NODELAY is set on every accepted socket (admission.rs).
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// The daemon's bound sockets: gRPC, and the HTTP side's when configured.
pub struct Listeners {
    /// The gRPC API (`listen`).
    pub grpc: tokio::net::TcpListener,
    /// The report pages (`http_listen`).
    pub pages: Option<tokio::net::TcpListener>,
    /// The metrics (`metrics_listen`).
    pub metrics: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// Binds every address of `config`.
    pub async fn bind(config: &crate::service::config::DaemonConfig) -> std::io::Result<Listeners> {
        let optional = |addr: Option<std::net::SocketAddr>| async move {
            match addr {
                Some(a) => tokio::net::TcpListener::bind(a).await.map(Some),
                None => Ok(None),
            }
        };
        Ok(Listeners { grpc: tokio::net::TcpListener::bind(config.listen).await?, pages: optional(config.http_listen).await?, metrics: optional(config.metrics_listen).await? })
    }
}

/// `ewtuned`'s serving loop: requeues the jobs a crash left running (and ends their unfinished
/// audits), then runs the scheduler, the gRPC server and the HTTP side until `shutdown` resolves
/// (SIGTERM/SIGINT in `ewtuned`); running jobs checkpoint and go back to the queue.
pub async fn run(state: Arc<State>, listeners: Listeners, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), crate::service::DaemonError> {
    let requeued = state.store.requeue_running()?;
    if !requeued.is_empty() {
        tracing::info!(requeued = requeued.len(), "jobs interrupted by the last stop go back to the queue");
    }
    let failed_audits = state.store.fail_running_audits()?;
    if failed_audits > 0 {
        tracing::info!(failed_audits, "audits interrupted by the last stop end failed (create them again)");
    }
    let stop_rx = state.stopping.subscribe();
    let scheduler = tokio::spawn(crate::service::scheduler::run(state.clone(), stop_rx.clone()));
    let mut server_stop = stop_rx;
    let Listeners { grpc, pages, metrics } = listeners;
    for (listener, what) in [(pages, "report pages"), (metrics, "metrics")] {
        let Some(listener) = listener else { continue };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listen = %addr, "serving the {what} over HTTP");
        }
        let state = state.clone();
        tokio::spawn(async move {
            let served = if what == "metrics" { super::http::serve_metrics(state, listener).await } else { super::http::serve_pages(state, listener).await };
            if let Err(e) = served {
                tracing::error!(error = %e, "the {what} server stopped");
            }
        });
    }
    let server = serve(state.clone(), grpc, async move {
        let _ = server_stop.changed().await;
    });
    let server = tokio::spawn(server);
    shutdown.await;
    tracing::info!("shutting down: running jobs checkpoint and return to the queue");
    state.stopping.send_replace(true);
    let _ = scheduler.await;
    server.await.map_err(|e| crate::service::DaemonError::Serve(e.to_string()))?.map_err(|e| crate::service::DaemonError::Serve(e.to_string()))
}
