//! Domain errors to gRPC statuses, in one exhaustive match per error type: a budget refusal is
//! FailedPrecondition, an unknown id NotFound, bad fields InvalidArgument; internal failures are
//! logged whole and answered with a short message that holds no SQL, path or token.

use crate::service::{Kind, ServiceError};
use crate::store::StoreError;
use tonic::{Code, Status};

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Refused { kind, message } => Status::new(
                match kind {
                    Kind::InvalidArgument => Code::InvalidArgument,
                    Kind::NotFound => Code::NotFound,
                    Kind::FailedPrecondition => Code::FailedPrecondition,
                    Kind::ResourceExhausted => Code::ResourceExhausted,
                    Kind::DeadlineExceeded => Code::DeadlineExceeded,
                    Kind::DataLoss => Code::DataLoss,
                    Kind::Unavailable => Code::Unavailable,
                    Kind::Internal => Code::Internal,
                },
                message,
            ),
            ServiceError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidArgument { field, reason } => Status::invalid_argument(format!("{field}: {reason}")),
            StoreError::NotFound { kind, id } => Status::not_found(format!("{kind} {id} not found")),
            StoreError::AlreadyExists { kind, id } => Status::already_exists(format!("{kind} {id} already exists")),
            e @ (StoreError::FailedPrecondition { .. } | StoreError::DatasetUnusable { .. }) => Status::failed_precondition(e.to_string()),
            StoreError::Busy(reason) => Status::resource_exhausted(reason),
            e @ StoreError::BudgetExceeded(_) => Status::failed_precondition(e.to_string()),
            // The ledger with this job cannot be certified (too long or too large for the
            // accountant's ranges): the job is refused, nothing was written.
            StoreError::Accountant {
                source:
                    source @ (ewtune_accountant::Error::NotCertifiable { .. }
                    | ewtune_accountant::Error::OutOfRange { .. }
                    | ewtune_accountant::Error::TooLarge { .. }),
            } => Status::failed_precondition(format!("the privacy ledger of this dataset cannot be certified with this job: {source}")),
            e @ StoreError::LeaseLost { .. } => Status::aborted(e.to_string()),
            StoreError::Unavailable { reason } => {
                tracing::warn!(%reason, "the ledger's database cannot be reached");
                Status::unavailable("the daemon cannot reach its ledger database; try again")
            }
            e @ (StoreError::IncompatibleSchema { .. }
            | StoreError::Pragma { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Random
            | StoreError::Open { .. }
            | StoreError::Accountant { .. }
            | StoreError::Sqlite { .. }
            | StoreError::Postgres { .. }) => {
                tracing::error!(error = ?e, "store failure");
                Status::internal("the daemon's store failed; see its log")
            }
        }
    }
}
