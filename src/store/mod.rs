//! The durable store: tenants' token hashes, datasets, jobs, job events and the privacy-budget
//! ledger, in ONE database: a SQLite file under the data directory (the embedded default, one
//! daemon) or a PostgreSQL database that several daemons share (docs/architecture.md, "The
//! parts"; running either: docs/operations.md).
//!
//! [`Store`] is a struct with a narrow API; there is no repository trait. Its SQL is written
//! once for both engines through `db.rs`, and each area adds its methods in its own file:
//!
//! * `db.rs` — the engines behind one interface: connections, transactions, rows by name.
//! * `migrate.rs` — opening a database: numbered SQL migrations (`migrations/` for SQLite,
//!   `migrations/postgres/` for PostgreSQL, the same steps), a newer schema refused untouched.
//! * `notices.rs` — PostgreSQL: other daemons' job events heard through LISTEN/NOTIFY.
//! * `scratch_postgres.rs` — a throwaway PostgreSQL cluster for tests and benchmarks.
//! * `tokens.rs` — tenants and bearer tokens (stored as SHA-256 only).
//! * `datasets.rs` — datasets keyed by (tenant, SHA-256 of their bytes) with their budget.
//! * `units.rs` — each tenant's secret, its privacy units' keyed identities and their classes
//!   (the units found in exactly the same datasets), which the ledger composes per class.
//! * `jobs.rs` — the job queue and state machine, and the append-only event log, with a
//!   notice (the job's id, on a `tokio::sync::broadcast`) after every commit that appends to it.
//! * `charts.rs` — the data behind a budget report's charts (epsilon over steps, burn-down).
//! * `ledger.rs` — admission control and the budget report. The ledger is derived from the jobs'
//!   plans and progress: spent = every job's `steps_done`, reserved = the planned-but-unspent
//!   steps of queued and running jobs. Every guarantee comes from the certified PLD
//!   accountant's upper bound; the Edgeworth number is reported as an estimate only.
//!
//! Every write runs in one transaction that holds what it read until it commits: on SQLite
//! `BEGIN IMMEDIATE` takes the file's write lock before the first read; on PostgreSQL a write
//! locks the rows it decides on (a tenant's ledger row for admission and registration, a job's
//! row for its state changes). So two daemons can never both admit against the same budget.
//! A tenant only ever sees its own rows: another tenant's id is `NotFound`, never "forbidden".
//!
//! Rows are read by column name, never by position (two REAL columns read in each other's place
//! would pass every type check): each kind of row has one `*_COLUMNS` list that every SELECT of
//! it uses and one `from_row` that reads those names, and computed columns are named with `AS`.
//!
//! What this module does not own: gRPC status codes (`api/status.rs`), scheduling, training.

/// Defines a validated string id: the newtype (serde through `String`, validated), `as_str`,
/// `Display`, and TEXT in the database, where a stored value that fails validation is `Corrupt` for
/// `$column`. The type writes its own `parse(&str) -> Result<Self>`.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $column:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::store::StoreError;
            fn try_from(id: String) -> $crate::store::Result<Self> {
                $name::parse(&id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl $crate::store::db::ToValue for $name {
            fn to_value(&self) -> $crate::store::db::Value {
                $crate::store::db::Value::Text(self.0.clone())
            }
        }

        impl $crate::store::db::FromValue for $name {
            fn from_value(_: &'static str, value: &$crate::store::db::Value) -> $crate::store::Result<Self> {
                match value {
                    $crate::store::db::Value::Text(s) => $name::parse(s).map_err(|_| $crate::store::db::corrupt($column, value)),
                    v => Err($crate::store::db::corrupt($column, v)),
                }
            }
        }
    };
}

/// Defines a random id: a `text_id!` of 128 bits from ring's `SystemRandom` as 32 lower-case
/// hex digits; a bad one is `InvalidArgument` naming `$kind`.
macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        text_id! { $(#[$doc])* $name, $kind }

        impl $name {
            /// Validates 32 hex digits.
            pub fn parse(id: &str) -> $crate::store::Result<$name> {
                if id.len() != 2 * $crate::store::RANDOM_ID_BYTES || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err($crate::store::StoreError::invalid($kind, format!("must be {} hex digits", 2 * $crate::store::RANDOM_ID_BYTES)));
                }
                Ok($name(id.to_ascii_lowercase()))
            }

            fn random() -> $crate::store::Result<$name> {
                Ok($name($crate::store::random_hex()?))
            }
        }
    };
}

/// For an enum stored by name: `as_str` and TEXT in the database from ONE table of
/// `Variant => "name"` pairs, so what is written and what is read back cannot disagree; an
/// unknown stored name is `Corrupt` for `$column`.
macro_rules! stored_names {
    ($name:ident, $column:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl $crate::store::db::ToValue for $name {
            fn to_value(&self) -> $crate::store::db::Value {
                $crate::store::db::Value::Text(self.as_str().to_owned())
            }
        }

        impl $crate::store::db::FromValue for $name {
            fn from_value(_: &'static str, value: &$crate::store::db::Value) -> $crate::store::Result<Self> {
                match value {
                    $($crate::store::db::Value::Text(t) if t == $text => Ok($name::$variant),)+
                    other => Err($crate::store::db::corrupt($column, other)),
                }
            }
        }
    };
}

mod audits;
mod charts;
mod datasets;
pub(crate) mod db;
mod error;
mod jobs;
mod ledger;
mod migrate;
mod notices;
pub mod scratch_postgres;
mod tokens;
mod units;

#[cfg(test)]
pub(crate) mod testutil;

pub use audits::{Audit, AuditId, AuditOutcome, AuditState};
pub use charts::{BudgetCharts, BurnDownPoint, EpsilonAtStep, JobCurve, CURVE_POINTS};
pub use datasets::{Dataset, DatasetId, NewDataset, PrivacyUnit};
pub use error::{Result, StoreError};
pub use jobs::{DaemonId, Job, JobEvent, JobId, JobState, NewJob, SelfAuditRecord, Worker};
pub use ledger::{AdmissionPreview, BudgetRefusal, BudgetReport, ClassLedger, DatasetSpend, JobLedgerRow, SharedUnits, UnitsLeft};
pub use tokens::{Revocation, TenantId, TokenId, TokenInfo};
pub use units::{FoundIdentities, UnitIdentities};

use db::{Begin, Conn, Row, ToValue, Tx};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

pub use db::Dialect;

/// Where the ledger lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// One SQLite file: the embedded default, for one daemon.
    Sqlite(PathBuf),
    /// A PostgreSQL database that several daemons share: a `postgres://` URL or libpq
    /// `key=value` pairs.
    Postgres(String),
}

impl Database {
    /// `postgres://...` / `postgresql://...` / `host=...` text is PostgreSQL, anything else a
    /// SQLite file path.
    pub fn parse(text: &str) -> Database {
        let t = text.trim();
        if t.starts_with("postgres://") || t.starts_with("postgresql://") || t.contains("host=") || t.contains("dbname=") {
            Database::Postgres(t.to_owned())
        } else {
            Database::Sqlite(PathBuf::from(t))
        }
    }

    /// For logs and errors: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => match url.parse::<postgres::Config>() {
                Ok(c) => format!(
                    "postgres://{}@{}/{}",
                    c.get_user().unwrap_or(""),
                    c.get_hosts()
                        .iter()
                        .map(|h| match h {
                            postgres::config::Host::Tcp(name) => name.clone(),
                            postgres::config::Host::Unix(path) => path.display().to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    c.get_dbname().unwrap_or("")
                ),
                Err(_) => "postgres://(unparsable URL)".into(),
            },
        }
    }
}

/// The ewtune store: one connection for writes and one for reads (so that reads, snapshots,
/// never wait behind a write's commit), to one SQLite file or one PostgreSQL database.
#[derive(Debug)]
pub struct Store {
    writer: Mutex<Conn>,
    reader: Mutex<Conn>,
    /// PostgreSQL: the connection of the lease-keeping writes ([`Store::lease_write`]).
    leases: Option<Mutex<Conn>>,
    /// Budget-report numbers reserved and not yet handed out (`ledger.rs`).
    report_numbers: Mutex<ledger::ReportNumbers>,
    database: Database,
    /// The id of each job whose event log grew, sent after the commit (see `jobs.rs`).
    job_events: tokio::sync::broadcast::Sender<JobId>,
    /// PostgreSQL: the thread that hears other daemons' commits (`notices.rs`).
    _listener: Option<notices::Listener>,
    /// This daemon, as the owner of the jobs it claims.
    worker: Worker,
}

impl Store {
    /// Opens the SQLite store at `path`, creating the file if absent and migrating it to the
    /// current schema. A file from a newer ewtune is refused with
    /// [`StoreError::IncompatibleSchema`] and left exactly as it was. The parent directory must
    /// exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::connect(&Database::Sqlite(path.as_ref().to_owned()))
    }

    /// Opens the store in `database`: a SQLite file as [`Store::open`] does, or a PostgreSQL
    /// database, migrated under a lock so that daemons starting together migrate once. Other
    /// daemons' job events reach [`Store::subscribe_job_events`] through LISTEN/NOTIFY.
    pub fn connect(database: &Database) -> Result<Store> {
        Store::connect_as(database, Worker::local())
    }

    /// [`Store::connect`] for the daemon `worker`: the jobs it claims carry its id and lease.
    pub fn connect_as(database: &Database, worker: Worker) -> Result<Store> {
        let (job_events, _) = tokio::sync::broadcast::channel(JOB_EVENT_NOTICES);
        let (writer, reader, leases, listener) = match database {
            Database::Sqlite(path) => (Conn::Sqlite(migrate::open(path)?), Conn::Sqlite(migrate::open_reader(path)?), None, None),
            Database::Postgres(url) => {
                let config: postgres::Config = url.parse().map_err(|e| StoreError::invalid("database", format!("is not a PostgreSQL URL: {e}")))?;
                let mut writer = Conn::Postgres(db::PgConn::connect(config.clone())?);
                migrate::migrate_postgres(&mut writer)?;
                let reader = Conn::Postgres(db::PgConn::connect(config.clone())?);
                let leases = Conn::Postgres(db::PgConn::connect(config.clone())?);
                let listener = notices::Listener::start(db::bounded(config), job_events.clone())?;
                (writer, reader, Some(Mutex::new(leases)), Some(listener))
            }
        };
        Ok(Store {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            leases,
            report_numbers: Mutex::default(),
            database: database.clone(),
            job_events,
            _listener: listener,
            worker,
        })
    }

    /// The engine.
    pub fn dialect(&self) -> Dialect {
        match self.database {
            Database::Sqlite(_) => Dialect::Sqlite,
            Database::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` in one write transaction and commits it when `f` returns `Ok`. A panic while
    /// the connection was held cannot have left a half-written change (a transaction dropped
    /// while unwinding rolls back), so the mutex's poison flag is ignored.
    fn write<T>(&self, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        db::outside_runtime(|| lock(&self.writer).transaction(Begin::Write, f))
    }

    /// [`Store::write`] for the writes that keep this daemon's leases (a step's spend, the
    /// heartbeat): on PostgreSQL they have a connection of their own, so that no other write
    /// of this daemon (one waiting for another daemon's ledger lock) can hold them up past the
    /// lease.
    fn lease_write<T>(&self, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        match &self.leases {
            Some(conn) => db::outside_runtime(|| lock(conn).transaction(Begin::Write, f)),
            None => self.write(f),
        }
    }

    /// Runs `f` on a consistent snapshot, on the read connection. Reads that must be
    /// consistent with a following write happen inside that write instead.
    fn read<T>(&self, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        db::outside_runtime(|| lock(&self.reader).transaction(Begin::Read, f))
    }
}

fn lock(conn: &Mutex<Conn>) -> MutexGuard<'_, Conn> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One page of a listing: the rows after cursor `after` (0: from the start), at most `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// The cursor of the last row of the previous page (0 for the first page).
    pub after: i64,
    /// Rows per page (>= 1).
    pub size: u32,
}

impl Default for Page {
    fn default() -> Self {
        Page { after: 0, size: 1000 }
    }
}

/// A page of rows, oldest first, and the cursor to continue from when there are more.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T> {
    /// The rows.
    pub items: Vec<T>,
    /// `Some(cursor)` when more rows follow: pass it as the next page's `after`.
    pub next: Option<i64>,
}

/// Reads one page: `sql` selects the row's columns then its cursor as a column named `cursor`,
/// in cursor order, with `?1` the cursor to start after and `?2` the limit (one more than the
/// page, to know whether more follow); `extra` binds from `?3` on.
fn list_page<T>(tx: &mut Tx<'_>, sql: &str, page: Page, extra: &[&dyn ToValue], from_row: impl Fn(&Row) -> Result<T>) -> Result<Listed<T>> {
    let size = page.size.max(1) as usize;
    let limit = size as i64 + 1;
    let mut params: Vec<&dyn ToValue> = Vec::with_capacity(2 + extra.len());
    params.push(&page.after);
    params.push(&limit);
    params.extend_from_slice(extra);
    let mut rows: Vec<(T, i64)> = tx.query_map(sql, &params, |row| Ok((from_row(row)?, row.get::<i64>("cursor")?)))?;
    let next = if rows.len() > size {
        rows.truncate(size);
        rows.last().map(|(_, c)| *c)
    } else {
        None
    };
    Ok(Listed { items: rows.into_iter().map(|(t, _)| t).collect(), next })
}

/// Job-event notices buffered per subscriber; one that falls further behind gets `Lagged` and
/// re-reads its job.
const JOB_EVENT_NOTICES: usize = 1024;

/// Now, in unix milliseconds (0 if the clock is before 1970).
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A `u64` count as a 64-bit INTEGER, refusing values above `i64::MAX`.
fn to_sql_count(field: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::invalid(field, format!("{value} is larger than {}", i64::MAX)))
}

/// Random bytes in a job or audit id.
const RANDOM_ID_BYTES: usize = 16;

/// [`RANDOM_ID_BYTES`] from the OS generator, as hex.
fn random_hex() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; RANDOM_ID_BYTES];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| StoreError::Random)?;
    Ok(crate::digest::hex(&bytes))
}


#[cfg(test)]
mod tests {
    use super::testutil::Fixture;
    use super::*;

    #[test]
    fn store_and_its_error_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Store>();
        assert_send_sync::<StoreError>();
    }

    #[test]
    fn reopen_preserves_everything() {
        let fx = Fixture::new();
        let token = fx.store.create_token("acme").unwrap();
        let tenant = fx.store.authenticate(&token).unwrap().unwrap();
        let dataset = fx.store.register_dataset(&tenant, testutil::new_dataset(1, 8.0)).unwrap();
        let job = fx.store.create_job(&tenant, testutil::new_job(&dataset.id, 1.0, 0.01, 200)).unwrap();
        let claimed = fx.store.claim_next_queued().unwrap().unwrap();
        fx.store.record_progress(&claimed.id, 50, 0.4).unwrap();
        let report = fx.store.budget_report(&tenant, &dataset.id, false).unwrap();
        let events = fx.store.events_since(&tenant, &job.id, 0, u32::MAX).unwrap();
        let fx = fx.reopen();
        let store = &fx.store;
        assert_eq!(store.authenticate(&token).unwrap(), Some(tenant.clone()));
        assert_eq!(store.get_dataset(&tenant, &dataset.id).unwrap(), dataset);
        assert_eq!(store.list_datasets(&tenant, Page::default()).unwrap().items, vec![dataset.clone()]);
        let reopened = store.get_job(&tenant, &job.id).unwrap();
        assert_eq!(reopened.state, JobState::Running);
        assert_eq!(reopened.steps_done, 50);
        assert_eq!(reopened.epsilon_spent, 0.4);
        assert_eq!(store.events_since(&tenant, &job.id, 0, u32::MAX).unwrap(), events);
        let again = store.budget_report(&tenant, &dataset.id, false).unwrap();
        assert!(again.sequence > report.sequence, "report numbers grow across a restart");
        assert_eq!(BudgetReport { sequence: report.sequence, issued_at_unix_ms: report.issued_at_unix_ms, ..again }, report);
    }
}
