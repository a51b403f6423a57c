//! The gRPC API: tonic services over the store, the scheduler and the accountant. Requests are
//! validated and converted to domain types at the edge (`convert`), domain errors become the
//! right status in one place (`status`); handlers do no math.
pub mod admission;
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
