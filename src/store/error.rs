//! `StoreError`: everything the store can refuse or fail at, as typed data.
//!
//! Refusals a caller can act on (a bad field, an unknown id, a finished job, an exhausted
//! budget, a database from a newer ewtune) are their own variants; `api/status.rs` maps each to
//! a gRPC code. Storage failures wrap their source. Nothing here mentions `tonic`.

use super::datasets::DatasetId;
use super::jobs::{JobId, JobState};
use super::ledger::BudgetRefusal;
use std::path::PathBuf;

/// Result alias of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A caller-supplied value is outside its domain.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field as the API names it (`tenant`, `sha256`, `budget_epsilon`, ...).
        field: &'static str,
        /// What is wrong with it, in words a person can act on.
        reason: String,
    },
    /// No such object for this tenant (also when it exists but belongs to another tenant).
    #[error("{kind} {id} not found")]
    NotFound {
        /// `dataset` or `job`.
        kind: &'static str,
        /// The id as the caller gave it.
        id: String,
    },
    /// The object exists already and may not be created again.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// `dataset`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// This daemon no longer holds the job: another daemon took it over after this one's lease
    /// ran out, or it went back to the queue. This daemon must stop working on it and record
    /// nothing.
    #[error("job {job} is no longer this daemon's: {holder}")]
    LeaseLost {
        /// The job.
        job: JobId,
        /// Who has it now, in words (`daemon b runs it`, `it is in the queue`).
        holder: String,
    },
    /// The job's state does not allow the action (finishing or cancelling a finished job, ...).
    #[error("job {job} is {state}: cannot {action}")]
    FailedPrecondition {
        /// The job.
        job: JobId,
        /// Its current state.
        state: JobState,
        /// What was asked (`finish`, `cancel`, `record progress`).
        action: &'static str,
    },
    /// The dataset cannot be trained on as stored (a user-level dataset whose user field was
    /// lost before the store kept it).
    #[error("dataset {dataset} cannot be used: {reason}")]
    DatasetUnusable {
        /// The dataset.
        dataset: DatasetId,
        /// Why, in words a person can act on.
        reason: &'static str,
    },
    /// The tenant already has as much work of this kind in flight as it may (one running audit).
    #[error("{0}")]
    Busy(String),
    /// Admitting the job would let the certified epsilon of some of its dataset's units exceed
    /// a budget they are under (see [`BudgetRefusal`]). Nothing was written.
    #[error("{0}")]
    BudgetExceeded(Box<BudgetRefusal>),
    /// The database was written by a newer ewtune; it is left untouched.
    #[error("the database has schema version {found}, this ewtune supports up to {supported}; it was left untouched")]
    IncompatibleSchema {
        /// `PRAGMA user_version` of the file, or the version row of the PostgreSQL schema.
        found: i64,
        /// The newest schema this build knows.
        supported: i64,
    },
    /// A pragma the store's durability depends on did not take effect.
    #[error("PRAGMA {pragma} is {found}, the store needs {wanted}")]
    Pragma {
        /// The pragma's name.
        pragma: &'static str,
        /// The value the store set.
        wanted: &'static str,
        /// The value SQLite reports.
        found: String,
    },
    /// A stored value that the schema should have made impossible (reported inside
    /// `rusqlite::Error::FromSqlConversionFailure`, as the `FromSql` impls of the domain types
    /// produce it).
    #[error("corrupt value in column {column}: {value}")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// The value read, printed.
        value: String,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The database file could not be opened.
    #[error("cannot open the database {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The certified accountant could not state an epsilon for the ledger.
    #[error("privacy accounting failed")]
    Accountant {
        /// The accountant's error.
        #[from]
        source: ewtune_accountant::Error,
    },
    /// SQLite failed.
    #[error("SQLite failed")]
    Sqlite {
        /// SQLite's error.
        #[from]
        source: rusqlite::Error,
    },
    /// PostgreSQL refused a statement (a constraint, a trigger, a bug in the store's SQL).
    #[error("PostgreSQL failed")]
    Postgres {
        /// The server's error.
        source: postgres::Error,
    },
    /// The database cannot be reached now (PostgreSQL down, the network, a refused login):
    /// nothing was written; the call may be tried again.
    #[error("the ledger's database cannot be reached: {reason}")]
    Unavailable {
        /// The client's error, in words (holds no password).
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::InvalidArgument { field, reason: reason.into() }
    }

    pub(crate) fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        StoreError::NotFound { kind, id: id.into() }
    }
}
