//! The gRPC API: thin tonic handlers over the service layer. Requests are copied into the
//! service's types (`convert`), the service does the checks and the work, and its errors become
//! the right status in one place (`status`); handlers do no math and no file I/O. Beside it, on
//! their own addresses, the report pages and the metrics over HTTP (`http`).
pub mod admission;
pub mod artifacts;
pub mod audits;
pub mod auth;
pub mod budget;
pub mod convert;
pub mod deadline;
pub mod http;
pub mod datasets;
pub mod jobs;
pub mod latency;
pub mod pb;
pub mod server;
pub mod status;
pub mod watch;

/// [`crate::service::blocking`] for handlers, whose work answers with a gRPC status.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &std::sync::Arc<crate::service::State>,
    f: impl FnOnce(&crate::service::State) -> Result<T, tonic::Status> + Send + 'static,
) -> Result<T, tonic::Status> {
    crate::service::blocking(state, f).await
}
