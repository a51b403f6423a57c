//! The gRPC API: tonic services over the store, the scheduler and the accountant. Requests are
//! validated and converted to domain types at the edge (`convert`), domain errors become the
//! right status in one place (`status`); handlers do no math.
pub mod admission;
pub mod artifacts;
pub mod audits;
pub mod auth;
pub mod budget;
pub mod convert;
pub mod datasets;
pub mod jobs;
pub mod limits;
pub mod pb;
pub mod server;
pub mod status;
pub mod watch;

/// Runs blocking store work (SQLite, the ledger's accounting, file writes) off the async
/// workers. A panic there is logged whole and answered Internal without its text.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &std::sync::Arc<crate::service::State>,
    f: impl FnOnce(&crate::service::State) -> Result<T, tonic::Status> + Send + 'static,
) -> Result<T, tonic::Status> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state)).await.map_err(|e| {
        tracing::error!(error = %e, "blocking request work failed");
        tonic::Status::internal("the request failed in the daemon; see its log")
    })?
}
