//! What the service layer's calls fail with: a [`Kind`] that the API maps to a gRPC status in
//! one place (`api/status.rs`) and a message written for the client. Details a client must not
//! see (paths, SQL, panics) are logged where they arise and never put in the message.

use crate::store::StoreError;

/// The kind of a refusal, one per gRPC status the service answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A field of the request is wrong (the message names it).
    InvalidArgument,
    /// What the request names does not exist (for this tenant).
    NotFound,
    /// The request is well formed but the state of things refuses it.
    FailedPrecondition,
    /// A limit of the daemon or of the tenant is reached; retry later.
    ResourceExhausted,
    /// The client's deadline passed first.
    DeadlineExceeded,
    /// A file the daemon recorded no longer matches the record.
    DataLoss,
    /// The daemon is stopping.
    Unavailable,
    /// The daemon failed (logged); nothing the client can change.
    Internal,
}

/// A service call's failure.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Refused, with a message for the client.
    #[error("{message}")]
    Refused {
        /// Which kind.
        kind: Kind,
        /// What the client reads.
        message: String,
    },
    /// The store's own error (it knows its kinds).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    /// A refusal of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        ServiceError::Refused { kind, message: message.into() }
    }

    /// The kind of a refusal (`None` for a store error).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            ServiceError::Refused { kind, .. } => Some(*kind),
            ServiceError::Store(_) => None,
        }
    }
}
