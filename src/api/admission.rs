//! What the server admits, below the services: how many connections are served at once,
//! how long a connection may take to send its first request and stay open with nothing in
//! flight, and how many uploads are decoded at once.
//!
//! * [`incoming`] accepts on the listener in its own task. Each connection takes one of
//!   `max_connections` slots; past the cap a new connection is closed at once (the client sees
//!   the connection end and may retry), so the daemon never holds more sockets than the cap.
//!   Accepted sockets keep TCP_NODELAY.
//! * Each connection is a [`LimitedIo`]: it fails its reads, which closes the connection, when
//!   no request has arrived `handshake_timeout` after accept (TLS and HTTP/2 handshakes
//!   included: a peer that never sends the HTTP/2 preface goes here), or when no request has
//!   been in flight for `idle_timeout`. A connection with a request in flight (a long Watch
//!   stream) is never idle; a peer that stops answering is caught by the HTTP/2 keepalive
//!   (`keepalive_interval`, `keepalive_timeout`, set on the server in `server.rs`).
//! * [`RequestLimitLayer`] counts each connection's requests in flight (until the response
//!   body ends) and lets at most `max_concurrent_uploads` of Datasets.Register and Audits.Create
//!   run at once (tonic decodes a message whole, up to 256 MiB, before the handler runs). One
//!   past the cap waits, unread, up to [`UPLOAD_WAIT`] for a slot, then is answered
//!   RESOURCE_EXHAUSTED and its body dropped. The wait is short on purpose: an upload waiting
//!   unread keeps what its client already sent in HTTP/2's connection-wide flow-control window,
//!   so a few of them on one connection stall the upload being received on that connection
//!   until they give up. An admitted upload has [`UPLOAD_TIMEOUT`] to arrive and be handled, so
//!   a client that stalls mid-body cannot hold a slot for ever.
//!
//! What this file does not own: the services, TLS, and the Watch stream cap (`watch.rs`).

use crate::service::config::ServerLimits;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The methods whose one message is an upload of up to 256 MiB.
pub const UPLOADS: [&str; 2] = ["/ewtune.v1.Datasets/Register", "/ewtune.v1.Audits/Create"];

/// How long an upload past `max_concurrent_uploads` waits for a slot before RESOURCE_EXHAUSTED.
pub const UPLOAD_WAIT: Duration = Duration::from_secs(5);

/// The longest one upload may take from its slot to its answer (256 MiB at about 1 MiB/s), so a
/// client that stalls mid-upload frees its slot.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Pause after a failed accept (EMFILE and the like), so a persistent error does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// File descriptors kept for the store, datasets, checkpoints and models besides connections.
const FD_RESERVE: libc::rlim_t = 256;

/// Starts accepting on `listener` (see the file's doc) and returns the stream of connections
/// for tonic's `serve_with_incoming_shutdown`. The accept task ends when the stream is dropped.
pub fn incoming(listener: TcpListener, limits: &ServerLimits) -> tokio_stream::wrappers::ReceiverStream<io::Result<LimitedIo>> {
    ensure_fd_headroom((limits.max_connections as libc::rlim_t).saturating_add(FD_RESERVE));
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(accept(listener, slots, limits.clone(), tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept(listener: TcpListener, slots: Arc<Semaphore>, limits: ServerLimits, tx: mpsc::Sender<io::Result<LimitedIo>>) {
    let mut at_cap = false;
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !at_cap {
                tracing::warn!(max_connections = limits.max_connections, "connection cap reached: new connections are closed until one ends");
                at_cap = true;
            }
            tracing::debug!(%peer, "connection closed: at the connection cap");
            drop(socket);
            continue;
        };
        at_cap = false;
        // No Nagle: a response written in two segments would otherwise wait for the client's
        // delayed ACK (~40 ms per unary call).
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        if tx.send(Ok(LimitedIo::new(socket, slot, &limits))).await.is_err() {
            return;
        }
    }
}

/// Raises the soft limit on open files towards `wanted` (up to the hard limit) and warns when
/// it stays below: the connection cap should hit before the process runs out of descriptors.
fn ensure_fd_headroom(wanted: libc::rlim_t) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed, which outlives the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= wanted {
            return;
        }
        let raised = libc::rlimit { rlim_cur: wanted.min(lim.rlim_max), rlim_max: lim.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur < wanted {
        tracing::warn!(open_files = lim.rlim_cur, wanted, "the open-file limit is below max_connections plus a reserve; lower max_connections or raise the limit");
    }
}

/// What a connection's IO and its requests share: when it was accepted, how many requests it
/// has had and has in flight, and when one last started or ended.
#[derive(Debug)]
pub struct ConnState {
    accepted: Instant,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds from `accepted` to the last request start or end.
    last_active_ms: AtomicU64,
    tcp: TcpConnectInfo,
}

/// When a connection expires, as of now.
enum Expiry {
    /// No request yet: at this instant.
    Handshake(Instant),
    /// Nothing in flight: at this instant.
    Idle(Instant),
    /// A request in flight: not now.
    Busy,
}

impl ConnState {
    fn touch(&self) {
        let ms = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn expiry(&self) -> Expiry {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            Expiry::Busy
        } else if self.requests.load(Ordering::Acquire) == 0 {
            Expiry::Handshake(self.accepted + self.handshake_timeout)
        } else {
            Expiry::Idle(self.accepted + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed)) + self.idle_timeout)
        }
    }
}

/// The connect info tonic puts into every request's extensions: the connection's shared state.
#[derive(Debug, Clone)]
pub struct ConnInfo(pub Arc<ConnState>);

/// An accepted TCP connection holding its slot, closed by failing its reads when it expires.
#[derive(Debug)]
pub struct LimitedIo {
    socket: TcpStream,
    state: Arc<ConnState>,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl LimitedIo {
    fn new(socket: TcpStream, slot: OwnedSemaphorePermit, limits: &ServerLimits) -> LimitedIo {
        let accepted = Instant::now();
        let state = Arc::new(ConnState {
            accepted,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            tcp: socket.connect_info(),
        });
        let timer = Box::pin(tokio::time::sleep_until(accepted + limits.handshake_timeout));
        LimitedIo { socket, state, timer, _slot: slot }
    }

    /// With nothing to read: an error once the connection has expired, else wakes at its expiry.
    fn poll_expiry(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let (at, why) = match self.state.expiry() {
                Expiry::Handshake(at) => (at, "no request within handshake_timeout_secs"),
                Expiry::Idle(at) => (at, "no request in flight for idle_timeout_secs"),
                Expiry::Busy => (now + self.state.idle_timeout, ""),
            };
            if at <= now {
                tracing::debug!(peer = ?self.state.tcp.remote_addr(), why, "closing connection");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
            }
            self.timer.as_mut().reset(at);
        }
    }
}

impl AsyncRead for LimitedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.socket).poll_read(cx, buf) {
            Poll::Pending => this.poll_expiry(cx),
            ready => ready,
        }
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

impl Connected for LimitedIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo(self.state.clone())
    }
}

/// A request in flight on its connection, from its headers to the end of its response body.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(conn: Arc<ConnState>) -> InFlight {
        conn.touch();
        conn.requests.fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The tower layer of the file's doc: requests in flight per connection, uploads capped.
#[derive(Debug, Clone)]
pub struct RequestLimitLayer {
    uploads: Arc<Semaphore>,
    max_uploads: usize,
}

impl RequestLimitLayer {
    /// At most `max_concurrent_uploads` uploads at once.
    pub fn new(max_concurrent_uploads: usize) -> Self {
        RequestLimitLayer { uploads: Arc::new(Semaphore::new(max_concurrent_uploads)), max_uploads: max_concurrent_uploads }
    }
}

impl<S> tower::Layer<S> for RequestLimitLayer {
    type Service = RequestLimit<S>;

    fn layer(&self, inner: S) -> RequestLimit<S> {
        RequestLimit { inner, uploads: self.uploads.clone(), max_uploads: self.max_uploads }
    }
}

/// The service of [`RequestLimitLayer`].
#[derive(Debug, Clone)]
pub struct RequestLimit<S> {
    inner: S,
    uploads: Arc<Semaphore>,
    max_uploads: usize,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RequestLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let in_flight = req.extensions().get::<ConnInfo>().map(|c| InFlight::start(c.0.clone()));
        if let Some(f) = &in_flight {
            // Request::remote_addr() looks for the plain TCP info.
            req.extensions_mut().insert(f.0.tcp.clone());
        }
        let upload_slots = UPLOADS.contains(&req.uri().path()).then(|| (self.uploads.clone(), self.max_uploads));
        // The ready service goes into the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _upload_slot = match upload_slots {
                None => None,
                Some((slots, max)) => match tokio::time::timeout(UPLOAD_WAIT, slots.acquire_owned()).await {
                    Ok(Ok(slot)) => Some(slot),
                    _ => {
                        // Dropping the request drops its body unread.
                        let status = tonic::Status::resource_exhausted(format!("{max} uploads are being received already (max_concurrent_uploads); retry shortly"));
                        return Ok(status.into_http::<tonic::body::Body>());
                    }
                },
            };
            let response = if _upload_slot.is_some() {
                // A client that sends an upload's headers and then stalls would hold its slot
                // forever: the whole upload (receiving and handling) gets UPLOAD_TIMEOUT.
                match tokio::time::timeout(UPLOAD_TIMEOUT, inner.call(req)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        let status = tonic::Status::deadline_exceeded(format!("an upload must arrive and be handled within {} s", UPLOAD_TIMEOUT.as_secs()));
                        return Ok(status.into_http::<tonic::body::Body>());
                    }
                }
            } else {
                inner.call(req).await?
            };
            Ok(response.map(|body| tonic::body::Body::new(Tracked { body: Box::pin(body), _in_flight: in_flight })))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Tracked<B> {
    body: Pin<Box<B>>,
    _in_flight: Option<InFlight>,
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
