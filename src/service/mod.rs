//! The service layer: the domain logic of `ewtuned` between the gRPC handlers (`api`) and the
//! store, trainer and auditor below. It owns the shared [`State`] (configuration, store, signing
//! key, pools), opening the data directory (private modes, stale temp files removed), the
//! scheduler that runs jobs, the auditor that runs audits, job settlement and dataset
//! registration. It knows nothing of gRPC; `api` converts requests in and errors out.

pub mod artifacts;
pub mod auditor;
pub mod audits;
pub mod budget;
pub mod config;
pub mod cpu_pool;
pub mod data_dir;
pub mod datasets;
pub mod error;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod scheduler;
pub mod signing;
pub mod tenant_slots;

pub use error::{Kind, ServiceError};

use crate::store::Store;
use config::DaemonConfig;
use signing::Signer;
use std::sync::Arc;

/// What every service and the scheduler share.
pub struct State {
    /// The resolved configuration.
    pub config: DaemonConfig,
    /// The one SQLite store.
    pub store: Store,
    /// The daemon's Ed25519 key.
    pub signer: Signer,
    /// Wakes the scheduler when a job is queued.
    pub wake: tokio::sync::Notify,
    /// Audits run one at a time.
    pub audit_slots: tokio::sync::Semaphore,
    /// Request-driven CPU work (plans, uploads), off the async workers.
    pub cpu: cpu_pool::CpuPool,
    /// Serialises the write-and-record step of dataset registrations, so a file another
    /// registration relies on is never removed under it.
    pub dataset_writes: Arc<tokio::sync::Mutex<()>>,
    /// Open Watch streams per tenant (capped by `watch_streams_per_tenant`).
    pub watches: Arc<tenant_slots::TenantSlots>,
    /// Open Jobs.GetArtifacts streams per tenant (capped by `downloads_per_tenant`).
    pub downloads: Arc<tenant_slots::TenantSlots>,
    /// Turns true when the daemon starts to stop: open Watch streams end (UNAVAILABLE).
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// What Jobs.Plan found tokenising a dataset, per tenant, dataset, tokenizer and reading
    /// settings, so a tenant's later Plans do not tokenise it again (held in memory only).
    pub data_counts: DataCountsCache,
    /// The operators' metrics (`metrics_listen`).
    pub metrics: metrics::Metrics,
}

/// At most [`DataCountsCache::CAPACITY`] entries of data counts; when full it starts afresh.
#[derive(Default)]
pub struct DataCountsCache(std::sync::Mutex<std::collections::HashMap<String, crate::train::data::DataCounts>>);

impl DataCountsCache {
    /// Entries kept at most.
    pub const CAPACITY: usize = 1024;

    /// The counts under `key`, if kept.
    pub fn get(&self, key: &str) -> Option<crate::train::data::DataCounts> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).copied()
    }

    /// Keeps `counts` under `key`.
    pub fn put(&self, key: String, counts: crate::train::data::DataCounts) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(key, counts);
    }
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store refused to open.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The signing key.
    #[error("{0}")]
    Signing(#[from] signing::SigningError),
    /// The data directory cannot be prepared.
    #[error("data directory: {0}")]
    DataDir(#[from] data_dir::DataDirError),
    /// A directory or socket.
    #[error("{what}: {reason}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        reason: String,
    },
    /// The server stopped with an error.
    #[error("server: {0}")]
    Serve(String),
}

impl State {
    /// Opens everything under the data directory, after [`data_dir::prepare`]: the directories
    /// 0700, anything looser tightened, stale temp files removed. New files get private modes
    /// from the process umask, which `ewtuned` sets ([`data_dir::private_umask`]).
    pub fn open(config: DaemonConfig) -> Result<Arc<Self>, DaemonError> {
        let shared = matches!(config.database, crate::store::Database::Postgres(_));
        let prepared = data_dir::prepare(&config.data_dir, &config.models_dir, shared)?;
        if prepared.tightened > 0 {
            tracing::warn!(tightened = prepared.tightened, "data directory: group/other permissions removed (files 0600, directories 0700)");
        }
        if prepared.removed_temps > 0 {
            tracing::info!(removed = prepared.removed_temps, "data directory: temp files of unfinished writes removed");
        }
        std::fs::create_dir_all(&config.models_dir).map_err(|e| DaemonError::Io { what: format!("create {}", config.models_dir.display()), reason: e.to_string() })?;
        let store = Store::connect_as(&config.database, config.worker.clone())?;
        tracing::info!(database = %config.database.describe(), daemon_id = %config.worker.id, "ledger opened");
        adopt_legacy_sidecars(&store, &config.data_dir.join("datasets"))?;
        datasets::identify_old_datasets(&store, &config.data_dir.join("datasets"))?;
        let signer = Signer::load_or_create(&signing::key_path(&config.data_dir))?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = cpu_pool::CpuPool::new(threads).map_err(|e| DaemonError::Io { what: "start the CPU pool".into(), reason: e.to_string() })?;
        let watches = tenant_slots::TenantSlots::new(config.limits.watch_streams_per_tenant);
        let downloads = tenant_slots::TenantSlots::new(config.limits.downloads_per_tenant);
        Ok(Arc::new(State {
            config,
            store,
            signer,
            wake: tokio::sync::Notify::new(),
            audit_slots: tokio::sync::Semaphore::new(1),
            cpu,
            dataset_writes: Arc::default(),
            watches,
            downloads,
            stopping: tokio::sync::watch::Sender::new(false),
            data_counts: DataCountsCache::default(),
            metrics: metrics::Metrics::new(),
        }))
    }
}

/// Opens only the configured store (creating the data directory 0700 when absent), for the
/// commands that run beside a serving daemon (`ewtuned token ...`): unlike [`State::open`] it
/// touches no other file, so it cannot remove a temp file the daemon is writing.
pub fn open_store(config: &DaemonConfig) -> Result<Store, DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|e| DaemonError::Io { what: format!("create {}", config.data_dir.display()), reason: e.to_string() })?;
    Ok(Store::connect_as(&config.database, config.worker.clone())?)
}

/// Moves the `user_field` of user-level datasets registered by a daemon before schema version 3
/// from their sidecar files (`datasets/<sha256>.json`) into their rows, once. Such a file was
/// shared by every tenant with the same bytes (and rewritable by any of them), so it is adopted
/// only if its field groups the data into exactly the units counted when this row was
/// registered. A missing, corrupt or inconsistent sidecar is never guessed: that dataset stays
/// unusable, and the log says which.
fn adopt_legacy_sidecars(store: &Store, datasets_dir: &std::path::Path) -> Result<(), DaemonError> {
    #[derive(serde::Deserialize)]
    struct Sidecar {
        user_field: Option<String>,
    }
    let read = |id: &crate::store::DatasetId, units: u64| {
        let bytes = std::fs::read(datasets_dir.join(format!("{id}.json"))).ok()?;
        let field = serde_json::from_slice::<Sidecar>(&bytes).ok()?.user_field?;
        let data = std::fs::read_to_string(datasets_dir.join(format!("{id}.jsonl"))).ok()?;
        let cfg = crate::train::data::DataConfig { user_field: Some(field.clone()), ..Default::default() };
        let records = crate::train::data::read_records(std::path::Path::new("dataset"), &data, &cfg).ok()?;
        (crate::train::data::count_units(&records) as u64 == units).then_some(field)
    };
    let (adopted, unusable) = store.adopt_legacy_user_fields(read)?;
    if adopted > 0 {
        tracing::info!(adopted, "user-level datasets: user_field moved from sidecar files into the store");
    }
    for id in unusable {
        tracing::warn!(dataset = %id, "user-level dataset without a trustworthy user_field record (missing, corrupt or inconsistent with its units): no job will run on it");
    }
    Ok(())
}

/// The nice value of batch work (training, audits) in the daemon: on a busy machine the API's
/// threads get the CPU first, so unary calls stay fast while a job trains.
const BATCH_NICENESS: i32 = 10;

/// A batch worker panicked (a shape or device error); its message.
#[derive(Debug)]
pub struct BatchPanicked(pub String);

/// Runs `work` on a new OS thread named `name` at lower scheduling priority
/// ([`BATCH_NICENESS`]; threads it spawns, like the noise thread, inherit it) and awaits it. A
/// fresh thread, not tokio's blocking pool: pooled threads later serve the runtime itself, and an
/// unprivileged process cannot raise a thread's priority back.
pub async fn run_batch<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> Result<T, BatchPanicked> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        lower_thread_priority(BATCH_NICENESS);
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    if let Err(e) = spawned {
        return Err(BatchPanicked(format!("cannot start a worker thread: {e}")));
    }
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(panic)) => Err(BatchPanicked(panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())),
        Err(_) => Err(BatchPanicked("the worker thread ended without a result".into())),
    }
}

/// Lowers the calling thread's priority to `niceness` (on Linux the nice value is per thread;
/// elsewhere threads share the process's, so nothing is changed and batch work runs at the
/// API's priority). A failure only costs latency, so it is logged and ignored.
fn lower_thread_priority(niceness: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; they act on the calling thread only.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, niceness)
        };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower a batch thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::debug!(niceness, "per-thread priority is Linux-only; batch work runs at normal priority");
}

/// Runs blocking work (SQLite, the ledger's accounting, file writes) off the async workers. A
/// panic there is logged whole and answered Internal without its text.
pub async fn blocking<T: Send + 'static, E: From<ServiceError> + Send + 'static>(
    state: &Arc<State>,
    f: impl FnOnce(&State) -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state)).await.map_err(|e| {
        tracing::error!(error = %e, "blocking request work failed");
        E::from(ServiceError::new(Kind::Internal, "the request failed in the daemon; see its log"))
    })?
}
