//! Jobs: admission, the queue and state machine, and the append-only event log.
//!
//! ```text
//!   create_job ──► Queued ──claim_next_queued──► Running ──finish_job──► Succeeded | Failed | Cancelled
//!                    │  ▲                          │  │
//!                    │  └─ requeue_running/_job ───┘  └─ request_cancel: cancel_requested = true
//!                    └── request_cancel ───────────────────────────────────► Cancelled
//! ```
//!
//! A job's plan `(noise_multiplier, sample_rate, steps_planned)` is fixed at creation; its
//! `steps_done` only grows and is what the ledger counts as spent. Admission (`create_job`)
//! reserves the full plan against the dataset's budget in the transaction that inserts the job,
//! under the tenant's ledger lock (see `ledger.rs`). A running job carries the daemon that
//! claimed it (`owner`) and a lease; only that daemon records its progress and its end, and
//! another daemon takes it over once the lease runs out (`claim_next_queued`). Every state
//! change appends a [`JobEvent`] in the transaction that makes it. What this module does not own: running jobs
//! (the scheduler) and the meaning of `spec_json` (the API's `JobSpec`).

use super::datasets::{self, DatasetId};
use super::error::{Result, StoreError};
use super::ledger;
use super::tokens::TenantId;
use super::db::{args, Dialect, Row, Tx};
use super::{list_page, now_ms, to_sql_count, Listed, Page, Store};
use crate::artifacts::{self, OutputFile};
use crate::digest::sha256_hex;
use ewtune_accountant::StepGroup;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::fmt;

random_id! {
    /// A job's id: 128 random bits from ring's `SystemRandom`, as 32 lower-case hex digits.
    JobId, "job"
}

text_id! {
    /// The id of a daemon as the owner of the jobs it runs: printable ASCII without spaces,
    /// 1 to 128 characters (`ewtuned` defaults it to its host name and gRPC port).
    DaemonId, "daemon_id"
}

impl DaemonId {
    /// Validates the id.
    pub fn parse(id: &str) -> Result<DaemonId> {
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(StoreError::invalid("daemon_id", "must be 1 to 128 printable ASCII characters without spaces"));
        }
        Ok(DaemonId(id.to_owned()))
    }
}

/// A daemon as a claimer of work: its id, and how long its claim on a running job holds
/// without a heartbeat before another daemon may take the job over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Its id (stable across its restarts, so that it requeues its own jobs at once).
    pub id: DaemonId,
    /// The lease, in milliseconds.
    pub lease_ms: i64,
}

impl Worker {
    /// The default lease: a daemon that stops heartbeating loses its jobs after this long.
    pub const DEFAULT_LEASE_MS: i64 = 30_000;

    /// The one daemon of a SQLite store.
    pub fn local() -> Worker {
        Worker { id: DaemonId("local".into()), lease_ms: Worker::DEFAULT_LEASE_MS }
    }
}

/// Where a job is in its life. The stored name of a final state is also the kind of the event
/// that enters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Admitted, its full plan reserved, waiting for the scheduler.
    Queued,
    /// Claimed by the scheduler.
    Running,
    /// Finished normally (possibly before its planned steps).
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Stopped at the tenant's request.
    Cancelled,
}

stored_names!(JobState, "state", {
    Queued => "queued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl JobState {
    /// True for Succeeded, Failed and Cancelled: nothing changes afterwards, and the job holds
    /// no reservation (it contributes only its `steps_done` to the ledger).
    pub fn is_terminal(self) -> bool {
        match self {
            JobState::Queued | JobState::Running => false,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => true,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to admit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// The tenant's dataset it trains on.
    pub dataset: DatasetId,
    /// The validated job spec as JSON (stored as given; the store only checks it is JSON).
    pub spec_json: String,
    /// The canary audit manifest, committed with the job (before its first step) when it
    /// inserts canaries; stored with its SHA-256 and never changed.
    #[serde(default)]
    pub canary_manifest_json: Option<String>,
    /// Noise std / clip norm of every step.
    pub noise_multiplier: f64,
    /// Poisson sampling rate q of every step.
    pub sample_rate: f64,
    /// Planned number of DP-SGD steps: the reservation.
    pub steps: u64,
}

impl NewJob {
    fn validate(&self) -> Result<()> {
        serde_json::from_str::<serde::de::IgnoredAny>(&self.spec_json)
            .map_err(|e| StoreError::invalid("spec_json", format!("is not JSON: {e}")))?;
        if let Some(m) = &self.canary_manifest_json {
            serde_json::from_str::<serde::de::IgnoredAny>(m)
                .map_err(|e| StoreError::invalid("canary_manifest_json", format!("is not JSON: {e}")))?;
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier > 0.0) {
            return Err(StoreError::invalid(
                "noise_multiplier",
                format!("must be a finite number > 0, got {}", self.noise_multiplier),
            ));
        }
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return Err(StoreError::invalid("sample_rate", format!("must lie in (0, 1], got {}", self.sample_rate)));
        }
        if self.steps < 1 {
            return Err(StoreError::invalid("steps", "must be >= 1"));
        }
        to_sql_count("steps", self.steps)?;
        Ok(())
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its owner.
    pub tenant: TenantId,
    /// The dataset it trains on.
    pub dataset: DatasetId,
    /// The job spec as JSON.
    pub spec_json: String,
    /// Noise multiplier of every step.
    pub noise_multiplier: f64,
    /// Sampling rate of every step.
    pub sample_rate: f64,
    /// Planned steps (reserved while queued or running).
    pub steps_planned: u64,
    /// Steps done: spent, never decreases.
    pub steps_done: u64,
    /// The trainer's own epsilon report at `steps_done` (display only; the ledger recomputes).
    pub epsilon_spent: f64,
    /// Current state.
    pub state: JobState,
    /// The tenant asked to cancel while it was running.
    pub cancel_requested: bool,
    /// Why it ended (for terminal states, when given).
    pub reason: Option<String>,
    /// When it was admitted.
    pub created_at_unix_ms: i64,
    /// When it was last claimed by the scheduler.
    pub started_at_unix_ms: Option<i64>,
    /// When it reached a terminal state.
    pub finished_at_unix_ms: Option<i64>,
}

impl Job {
    /// The plan as the accountant's step group.
    pub fn plan(&self) -> StepGroup {
        StepGroup { noise_multiplier: self.noise_multiplier, sample_rate: self.sample_rate, steps: self.steps_planned }
    }

    /// The certified epsilon (PLD upper bound) of the steps done, at `delta`; 0 before any.
    pub fn certified_epsilon_spent(&self, delta: f64) -> Result<f64> {
        if self.steps_done == 0 {
            return Ok(0.0);
        }
        let history = ewtune_accountant::History::homogeneous(self.noise_multiplier, self.sample_rate, self.steps_done)?;
        Ok(ewtune_accountant::pld::PldAccountant::default().epsilon(&history, delta)?.bounds.upper)
    }

    /// Steps still reserved: `steps_planned - steps_done` while queued or running, else 0.
    pub fn steps_reserved(&self) -> u64 {
        if self.state.is_terminal() {
            0
        } else {
            self.steps_planned.saturating_sub(self.steps_done)
        }
    }

    fn from_row(row: &Row) -> Result<Job> {
        Ok(Job {
            id: row.get("id")?,
            tenant: row.get("tenant")?,
            dataset: row.get("dataset")?,
            spec_json: row.get("spec_json")?,
            noise_multiplier: row.get("noise_multiplier")?,
            sample_rate: row.get("sample_rate")?,
            steps_planned: row.get("steps_planned")?,
            steps_done: row.get("steps_done")?,
            epsilon_spent: row.get("epsilon_spent")?,
            state: row.get("state")?,
            cancel_requested: row.get("cancel_requested")?,
            reason: row.get("reason")?,
            created_at_unix_ms: row.get("created_at_ms")?,
            started_at_unix_ms: row.get("started_at_ms")?,
            finished_at_unix_ms: row.get("finished_at_ms")?,
        })
    }
}

/// The columns [`Job::from_row`] reads, by name: every SELECT of a whole job lists these.
const JOB_COLUMNS: &str = "id, tenant, dataset, spec_json, noise_multiplier, sample_rate, steps_planned, steps_done, \
     epsilon_spent, state, cancel_requested, reason, created_at_ms, started_at_ms, finished_at_ms";

/// One entry of a job's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Position in the store-wide log (increasing; resume with `events_since(.., seq)`).
    pub seq: i64,
    /// The job.
    pub job: JobId,
    /// `created`, `started`, `progress`, `cancel_requested`, `interrupted`, `succeeded`,
    /// `failed` or `cancelled`.
    pub kind: String,
    /// Details as a JSON object (`progress`: `{"step", "epsilon_spent"}`).
    pub payload_json: String,
    /// When it happened.
    pub at_unix_ms: i64,
}

impl Store {
    /// How many jobs are in each state (states with none left out), for the operators' metrics.
    pub fn job_counts(&self) -> Result<Vec<(JobState, u64)>> {
        self.read(|tx| tx.query_map("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state", args![], |row| Ok((row.get("state")?, row.get("n")?))))
    }

    /// Admits a job: composes everything already spent and reserved on the units of the
    /// dataset with the job's full plan, and if the certified epsilon at every budget those
    /// units are under stays within it, inserts the job as `Queued` (its plan reserved) with a
    /// `created` event. Otherwise [`StoreError::BudgetExceeded`], and nothing is written.
    ///
    /// The composition (the slow part) runs on a snapshot, outside any lock; the write then
    /// locks the tenant's ledger row and inserts only if the ledger's version is still the one
    /// the decision read, else decides again. After [`ADMISSION_ATTEMPTS`] lost races it decides
    /// inside the lock, so a busy budget cannot starve an admission.
    pub fn create_job(&self, tenant: &TenantId, job: NewJob) -> Result<Job> {
        job.validate()?;
        let id = JobId::random()?;
        let plan = StepGroup { noise_multiplier: job.noise_multiplier, sample_rate: job.sample_rate, steps: job.steps };
        for attempt in 1..=ADMISSION_ATTEMPTS {
            let decided = if attempt < ADMISSION_ATTEMPTS {
                let (version, scope) = self.read(|tx| {
                    let version = ledger::version(tx, tenant)?;
                    let dataset = datasets::load(tx, tenant, &job.dataset)?;
                    Ok((version, ledger::admission_scope(tx, &dataset)?))
                })?;
                // The snapshot is released: the composition holds no connection.
                Some((version, ledger::decide(scope, plan)?))
            } else {
                None
            };
            if let Some((_, ledger::Admission::Refused(refused))) = decided {
                return Err(refused.into_error());
            }
            let created = self.write(|tx| {
                let version = ledger::lock(tx, tenant)?;
                let dataset = datasets::load(tx, tenant, &job.dataset)?;
                let committed_epsilon = match &decided {
                    Some((read, ledger::Admission::Admitted(epsilon))) if *read == version => *epsilon,
                    Some(_) => return Ok(None),
                    None => match ledger::admit(tx, &dataset, plan)? {
                        ledger::Admission::Admitted(epsilon) => epsilon,
                        ledger::Admission::Refused(refused) => return Err(refused.into_error()),
                    },
                };
                insert(tx, &id, tenant, &dataset, &job, committed_epsilon).map(Some)
            })?;
            if let Some(created) = created {
                self.job_changed(&id);
                return Ok(created);
            }
        }
        unreachable!("the last attempt decides inside the lock")
    }

    /// The canary manifest committed with job `id` and its SHA-256, or `None` when the job
    /// inserts no canaries (scheduler and auditor paths: no tenant check).
    pub fn canary_manifest(&self, id: &JobId) -> Result<Option<(String, String)>> {
        self.read(|tx| tx.query_first("SELECT sha256, manifest_json FROM canary_manifests WHERE job = ?1", args![id], |row| Ok((row.get("sha256")?, row.get("manifest_json")?))))
    }

    /// The SHA-256 of the canary manifest committed with job `id`, without reading the manifest.
    pub fn canary_manifest_sha256(&self, id: &JobId) -> Result<Option<String>> {
        self.read(|tx| tx.query_first("SELECT sha256 FROM canary_manifests WHERE job = ?1", args![id], |row| row.get("sha256")))
    }

    /// The tenant's job `id`; `NotFound` if absent or another tenant's.
    pub fn get_job(&self, tenant: &TenantId, id: &JobId) -> Result<Job> {
        self.read(|tx| load_owned(tx, tenant, id))
    }

    /// One page of the tenant's jobs, oldest first.
    pub fn list_jobs(&self, tenant: &TenantId, page: Page) -> Result<Listed<Job>> {
        self.read(|tx| {
            list_page(
                tx,
                &format!("SELECT {JOB_COLUMNS}, seq AS cursor FROM jobs WHERE tenant = ?3 AND seq > ?1 ORDER BY seq LIMIT ?2"),
                page,
                args![tenant],
                Job::from_row,
            )
        })
    }

    /// At most `limit` of the tenant's job events with `seq > after_seq`, in order (`after_seq =
    /// 0` from the first).
    pub fn events_since(&self, tenant: &TenantId, job: &JobId, after_seq: i64, limit: u32) -> Result<Vec<JobEvent>> {
        self.read(|tx| {
            load_owned(tx, tenant, job)?;
            tx.query_map(
                "SELECT seq, job, kind, payload_json, at_ms FROM job_events WHERE job = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                args![job, after_seq, limit],
                |row| {
                    Ok(JobEvent {
                        seq: row.get("seq")?,
                        job: row.get("job")?,
                        kind: row.get("kind")?,
                        payload_json: row.get("payload_json")?,
                        at_unix_ms: row.get("at_ms")?,
                    })
                },
            )
        })
    }

    /// Scheduler: atomically turns the oldest claimable job into `Running` under this store's
    /// [`Worker`] (owner and lease, with a `started` event) and returns it; `None` when there
    /// is none. Claimable: `Queued`, or `Running` under another daemon's lease that expired (it
    /// stopped heartbeating): that one gets an `interrupted` event naming the daemon first, and
    /// resumes from its last checkpoint with its `steps_done` (the spend) as recorded. A daemon
    /// never takes over its own job (a late heartbeat of its own must not start a second
    /// worker): its jobs no worker runs go back to the queue ([`Store::requeue_abandoned`], and
    /// at start-up). On PostgreSQL rows another daemon is claiming are skipped (`SKIP LOCKED`),
    /// never waited for.
    pub fn claim_next_queued(&self) -> Result<Option<Job>> {
        let worker = &self.worker;
        let mut notify = Vec::new();
        let claimed = self.write(|tx| {
            notify.clear();
            let now = now_ms();
            loop {
                let sql = format!(
                    "SELECT {JOB_COLUMNS}, owner FROM jobs WHERE state = ?1 OR (state = ?2 AND lease_until_ms < ?3 AND owner <> ?4) ORDER BY seq LIMIT 1{}",
                    tx.dialect().skip_locked()
                );
                let Some((job, owner)) = tx.query_first(&sql, args![JobState::Queued, JobState::Running, now, worker.id], |r| Ok((Job::from_row(r)?, r.get::<Option<String>>("owner")?)))? else {
                    return Ok(None);
                };
                notify.push(job.id.clone());
                if job.state == JobState::Running {
                    append_event(tx, &job.id, "interrupted", json!({ "steps_done": job.steps_done, "daemon": owner, "lease_expired": true }), now)?;
                    if job.cancel_requested {
                        finish(tx, &job, JobState::Cancelled, Some("cancel requested before its daemon stopped"), now)?;
                        continue;
                    }
                }
                tx.execute(
                    "UPDATE jobs SET state = ?2, started_at_ms = ?3, owner = ?4, lease_until_ms = ?5 WHERE id = ?1",
                    args![job.id, JobState::Running, now, worker.id, now + worker.lease_ms],
                )?;
                append_event(tx, &job.id, "started", json!({ "steps_done": job.steps_done, "daemon": worker.id }), now)?;
                return load_any(tx, &job.id).map(Some);
            }
        })?;
        for id in &notify {
            self.job_changed(id);
        }
        Ok(claimed)
    }

    /// Scheduler: records that a running job has completed `steps_done` steps (the spend the
    /// ledger counts) and the trainer's epsilon at that point, with a `progress` event, and
    /// renews this daemon's lease on it. A value at or below the stored one is ignored
    /// (progress never decreases); one above the plan is `InvalidArgument`; a job that is not
    /// running is `FailedPrecondition`; one another daemon has taken over is `LeaseLost` (the
    /// step must not run).
    pub fn record_progress(&self, job: &JobId, steps_done: u64, epsilon_spent: f64) -> Result<Job> {
        if !(epsilon_spent.is_finite() && epsilon_spent >= 0.0) {
            return Err(StoreError::invalid(
                "epsilon_spent",
                format!("must be a finite number >= 0, got {epsilon_spent}"),
            ));
        }
        let updated = self.lease_write(|tx| {
            let now = now_ms();
            let current = self.load_held(tx, job, "record progress")?;
            if steps_done > current.steps_planned {
                return Err(StoreError::invalid(
                    "steps_done",
                    format!("{steps_done} is more than the {} steps planned (and reserved)", current.steps_planned),
                ));
            }
            if steps_done <= current.steps_done {
                return Ok(None);
            }
            tx.execute(
                "UPDATE jobs SET steps_done = ?2, epsilon_spent = ?3, lease_until_ms = ?4 WHERE id = ?1",
                args![job, to_sql_count("steps_done", steps_done)?, epsilon_spent, now + self.worker.lease_ms],
            )?;
            append_event(tx, job, "progress", json!({ "step": steps_done, "total_steps": current.steps_planned, "epsilon_spent": epsilon_spent }), now)?;
            load_any(tx, job).map(Some)
        })?;
        match updated {
            Some(job) => {
                self.job_changed(&job.id);
                Ok(job)
            }
            None => self.read(|tx| load_any(tx, job)),
        }
    }

    /// Heartbeat: renews this daemon's lease on each of `jobs` it is running. Returns the jobs
    /// whose lease it no longer holds (taken over after it expired, or finished elsewhere):
    /// their workers must stop without recording anything.
    pub fn renew_leases(&self, jobs: &[JobId]) -> Result<Vec<JobId>> {
        self.lease_write(|tx| {
            let until = now_ms() + self.worker.lease_ms;
            let mut lost = Vec::new();
            for job in jobs {
                let n = tx.execute("UPDATE jobs SET lease_until_ms = ?3 WHERE id = ?1 AND owner = ?2 AND state = 'running'", args![job, self.worker.id, until])?;
                if n == 0 {
                    lost.push(job.clone());
                }
            }
            tx.execute("UPDATE audits SET lease_until_ms = ?2 WHERE owner = ?1 AND state = 'running'", args![self.worker.id, until])?;
            Ok(lost)
        })
    }

    /// Scheduler: ends a job this daemon runs in `state` (Succeeded, Failed or Cancelled) with
    /// an event of that kind. The unspent part of its reservation is released: from now on it
    /// contributes only its `steps_done`. Finishing a finished job is `FailedPrecondition`; one
    /// this daemon no longer holds (taken over, or back in the queue) is `LeaseLost`. (A queued
    /// job ends through [`Store::request_cancel`].)
    pub fn finish_job(&self, job: &JobId, state: JobState, reason: Option<String>) -> Result<Job> {
        if !state.is_terminal() {
            return Err(StoreError::invalid(
                "state",
                format!("{state} is not a final state (succeeded, failed, cancelled)"),
            ));
        }
        let finished = self.write(|tx| {
            let current = self.load_held(tx, job, "finish")?;
            finish(tx, &current, state, reason.as_deref(), now_ms())?;
            load_any(tx, job)
        })?;
        self.job_changed(job);
        Ok(finished)
    }

    /// Scheduler: ends a running job `Succeeded` and records the files its output holds (path
    /// relative to the output directory, size, SHA-256), in one transaction: a succeeded job
    /// always has its outputs recorded, and they never change. A job that is not running is
    /// `FailedPrecondition`; a bad list (a path that is not a plain relative path, a malformed
    /// SHA-256, a repeated path, more than [`artifacts::MAX_FILES`] files) is `InvalidArgument`.
    pub fn succeed_job(&self, job: &JobId, outputs: &[OutputFile], self_audit: Option<&SelfAuditRecord>) -> Result<Job> {
        if outputs.len() > artifacts::MAX_FILES {
            return Err(StoreError::invalid("outputs", format!("{} files, more than {}", outputs.len(), artifacts::MAX_FILES)));
        }
        for f in outputs {
            artifacts::check_path(&f.path).map_err(|reason| StoreError::invalid("outputs.path", reason))?;
            if !artifacts::is_sha256_hex(&f.sha256) {
                return Err(StoreError::invalid("outputs.sha256", "must be 64 lower-case hex digits"));
            }
        }
        let finished = self.write(|tx| {
            let current = self.load_held(tx, job, "succeed")?;
            for f in outputs {
                let inserted = tx.execute(
                    "INSERT INTO job_outputs (job, path, size, sha256) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                    args![job, f.path, to_sql_count("outputs.size", f.size)?, f.sha256],
                )?;
                if inserted == 0 {
                    return Err(StoreError::invalid("outputs.path", format!("{} is listed twice", f.path)));
                }
            }
            if let Some(record) = self_audit {
                insert_self_audit(tx, job, record)?;
            }
            finish(tx, &current, JobState::Succeeded, None, now_ms())?;
            load_any(tx, job)
        })?;
        self.job_changed(job);
        Ok(finished)
    }

    /// Scheduler: ends a running job `Failed` because its self-audit failed (`reason` says
    /// which check), recording the self-audit in the same transaction.
    pub fn fail_self_audit(&self, job: &JobId, reason: String, self_audit: &SelfAuditRecord) -> Result<Job> {
        let finished = self.write(|tx| {
            let current = self.load_held(tx, job, "finish")?;
            insert_self_audit(tx, job, self_audit)?;
            finish(tx, &current, JobState::Failed, Some(&reason), now_ms())?;
            load_any(tx, job)
        })?;
        self.job_changed(job);
        Ok(finished)
    }

    /// The self-audit the tenant's job recorded when it ended (`NotFound` if the job is absent
    /// or another tenant's; `None` for a job without one, or not ended).
    pub fn job_self_audit(&self, tenant: &TenantId, job: &JobId) -> Result<Option<SelfAuditRecord>> {
        self.read(|tx| {
            load_owned(tx, tenant, job)?;
            self_audit_of(tx, job)
        })
    }

    /// The tenant's job (`NotFound` if absent or another tenant's) and the files it handed over,
    /// sorted by path: empty unless it succeeded (and for jobs that succeeded before this
    /// daemon version recorded outputs).
    pub fn job_outputs(&self, tenant: &TenantId, job: &JobId) -> Result<(Job, Vec<OutputFile>)> {
        self.read(|tx| Ok((load_owned(tx, tenant, job)?, outputs_of(tx, job)?)))
    }

    /// Tenant: cancels a job. A queued job becomes `Cancelled` at once (its reservation
    /// released); a running one gets `cancel_requested` (the scheduler of the daemon running it
    /// polls [`Store::is_cancel_requested`] and finishes it); a finished one is
    /// `FailedPrecondition`.
    pub fn request_cancel(&self, tenant: &TenantId, job: &JobId) -> Result<Job> {
        let updated = self.write(|tx| {
            let now = now_ms();
            let (current, _) = load_for_update(tx, job)?;
            if &current.tenant != tenant {
                return Err(StoreError::not_found("job", job.as_str()));
            }
            match current.state {
                JobState::Queued => finish(tx, &current, JobState::Cancelled, Some("cancelled before it started"), now)?,
                JobState::Running if current.cancel_requested => {}
                JobState::Running => {
                    tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", args![job])?;
                    append_event(tx, job, "cancel_requested", json!({ "steps_done": current.steps_done }), now)?;
                }
                JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
                    return Err(StoreError::FailedPrecondition {
                        job: job.clone(),
                        state: current.state,
                        action: "cancel",
                    });
                }
            }
            load_any(tx, job)
        })?;
        self.job_changed(job);
        Ok(updated)
    }

    /// Notices of job events: the id of a job each time a commit has appended to its event log
    /// (sent after the commit, so a reader that then calls [`Store::events_since`] sees them;
    /// on PostgreSQL also the commits of every other daemon on the database). Subscribe before
    /// reading, so nothing falls between the read and the subscription. A receiver that falls
    /// more than 1024 notices behind gets `Lagged` and should re-read.
    pub fn subscribe_job_events(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.job_events.subscribe()
    }

    /// After a commit that appended events to `job`'s log: tells the subscribers (none is fine).
    /// On PostgreSQL the commit's own NOTIFY reaches them through the listener, as every other
    /// daemon's does, so each commit is told once.
    fn job_changed(&self, job: &JobId) {
        if self.dialect() == Dialect::Sqlite {
            let _ = self.job_events.send(job.clone());
        }
    }

    /// Scheduler: whether the tenant asked to cancel this job.
    pub fn is_cancel_requested(&self, job: &JobId) -> Result<bool> {
        Ok(self.read(|tx| load_any(tx, job))?.cancel_requested)
    }

    /// Daemon start-up, and a worker that stopped at a checkpoint: every job this daemon (its
    /// [`Worker`] id) left `Running`, and any left by a daemon older than leases, gets an
    /// `interrupted` event and goes back to `Queued` (its `steps_done` and reservation kept, so
    /// the ledger still covers it; any daemon may resume it), or, when a cancel had been
    /// requested, to `Cancelled`. Returns the affected jobs in their new state, oldest first.
    pub fn requeue_running(&self) -> Result<Vec<Job>> {
        self.requeue_where("(owner = ?2 OR owner IS NULL)", None)
    }

    /// A worker of this daemon stopped at a checkpoint (shutdown): hands its job back to the
    /// queue at once, as [`Store::requeue_running`] does at start-up, so that another daemon
    /// resumes it without waiting for the lease to run out. `None` when this daemon no longer
    /// holds it.
    pub fn requeue_job(&self, job: &JobId) -> Result<Option<Job>> {
        Ok(self.requeue_where("owner = ?2 AND id = ?3", Some(job))?.pop())
    }

    /// Heartbeat: this daemon's running jobs that none of its workers runs (`running_here`
    /// lists those that do; a worker whose end could not be recorded left one) go back to the
    /// queue, as at start-up, once their lease has run out: a job claimed while the heartbeat
    /// was looking carries a fresh lease and is left alone.
    pub fn requeue_abandoned(&self, running_here: &[JobId]) -> Result<Vec<Job>> {
        let mine = self.read(|tx| {
            tx.query_map("SELECT id FROM jobs WHERE state = 'running' AND owner = ?1 AND lease_until_ms < ?2", args![self.worker.id, now_ms()], |r| r.get::<JobId>("id"))
        })?;
        let mut requeued = Vec::new();
        for id in mine.iter().filter(|id| !running_here.contains(id)) {
            requeued.extend(self.requeue_job(id)?);
        }
        Ok(requeued)
    }

    fn requeue_where(&self, held: &str, job: Option<&JobId>) -> Result<Vec<Job>> {
        let affected = self.write(|tx| {
            let now = now_ms();
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?1 AND {held} AND (CAST(?3 AS TEXT) IS NULL OR id = ?3) ORDER BY seq{}", tx.dialect().for_update());
            let running = tx.query_map(&sql, args![JobState::Running, self.worker.id, job], Job::from_row)?;
            let mut affected = Vec::with_capacity(running.len());
            for job in running {
                append_event(tx, &job.id, "interrupted", json!({ "steps_done": job.steps_done, "daemon": self.worker.id }), now)?;
                if job.cancel_requested {
                    finish(tx, &job, JobState::Cancelled, Some("cancel requested before the daemon stopped"), now)?;
                } else {
                    tx.execute("UPDATE jobs SET state = ?2, owner = NULL, lease_until_ms = NULL WHERE id = ?1", args![job.id, JobState::Queued])?;
                }
                affected.push(load_any(tx, &job.id)?);
            }
            Ok(affected)
        })?;
        for job in &affected {
            self.job_changed(&job.id);
        }
        Ok(affected)
    }

    /// Job `id`, locked for this write, which must be running under this daemon's lease (or a
    /// lease-less one from before leases): a finished job is `FailedPrecondition`, one back in
    /// the queue or run by another daemon `LeaseLost`.
    fn load_held(&self, tx: &mut Tx<'_>, id: &JobId, action: &'static str) -> Result<Job> {
        let (job, owner) = load_for_update(tx, id)?;
        match (job.state, owner) {
            (state, _) if state.is_terminal() => Err(StoreError::FailedPrecondition { job: id.clone(), state, action }),
            (JobState::Queued, _) => Err(StoreError::LeaseLost { job: id.clone(), holder: "it is in the queue".into() }),
            (_, Some(owner)) if owner != self.worker.id.as_str() => Err(StoreError::LeaseLost { job: id.clone(), holder: format!("daemon {owner} runs it") }),
            _ => Ok(job),
        }
    }
}

/// Admissions that decide on a snapshot before the last one decides inside the lock.
const ADMISSION_ATTEMPTS: u32 = 4;

/// Inserts an admitted job, its canary manifest and its `created` event, and bumps the
/// tenant's ledger version (the caller holds the ledger lock).
fn insert(tx: &mut Tx<'_>, id: &JobId, tenant: &TenantId, dataset: &datasets::Dataset, job: &NewJob, committed_epsilon: f64) -> Result<Job> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO jobs (id, tenant, dataset, spec_json, noise_multiplier, sample_rate, steps_planned, state, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        args![id, tenant, dataset.id, job.spec_json, job.noise_multiplier, job.sample_rate, to_sql_count("steps", job.steps)?, JobState::Queued, now],
    )?;
    if let Some(manifest) = &job.canary_manifest_json {
        tx.execute(
            "INSERT INTO canary_manifests (job, sha256, manifest_json) VALUES (?1, ?2, ?3)",
            args![id, sha256_hex(manifest.as_bytes()), manifest],
        )?;
    }
    ledger::bump(tx, tenant)?;
    append_event(
        tx,
        id,
        "created",
        json!({
            "dataset": dataset.id,
            "noise_multiplier": job.noise_multiplier,
            "sample_rate": job.sample_rate,
            "steps_planned": job.steps,
            "committed_epsilon": committed_epsilon,
            "budget_epsilon": dataset.budget_epsilon,
            "budget_delta": dataset.budget_delta,
        }),
        now,
    )?;
    load_any(tx, id)
}

/// One recorded output file from a row with the columns `path`, `size` and `sha256`.
fn output_from_row(row: &Row) -> Result<OutputFile> {
    Ok(OutputFile { path: row.get("path")?, size: row.get("size")?, sha256: row.get("sha256")? })
}

/// The recorded outputs of `job`, sorted by path.
/// What a job's self-audit found, as recorded when the job ended: the verdict and the report as
/// JSON (written by the trainer; the store keeps it as it is and checks only that it is an
/// object).
#[derive(Debug, Clone, PartialEq)]
pub struct SelfAuditRecord {
    /// Whether every check passed.
    pub passed: bool,
    /// The report.
    pub report: serde_json::Value,
}

fn insert_self_audit(tx: &mut Tx<'_>, job: &JobId, record: &SelfAuditRecord) -> Result<()> {
    if !record.report.is_object() {
        return Err(StoreError::invalid("self_audit", "the report must be a JSON object"));
    }
    tx.execute("INSERT INTO job_self_audits (job, passed, report_json) VALUES (?1, ?2, ?3)", args![job, i64::from(record.passed), record.report.to_string()])?;
    Ok(())
}

pub(crate) fn self_audit_of(tx: &mut Tx<'_>, job: &JobId) -> Result<Option<SelfAuditRecord>> {
    tx.query_first("SELECT passed, report_json FROM job_self_audits WHERE job = ?1", args![job], |row| {
        let json: String = row.get("report_json")?;
        let report = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt { column: "job_self_audits.report_json", value: e.to_string() })?;
        Ok(SelfAuditRecord { passed: row.get("passed")?, report })
    })
}

pub(crate) fn outputs_of(tx: &mut Tx<'_>, job: &JobId) -> Result<Vec<OutputFile>> {
    tx.query_map("SELECT path, size, sha256 FROM job_outputs WHERE job = ?1 ORDER BY path", args![job], output_from_row)
}

/// Moves `job` (queued or running) to the terminal `state`, with its event; its claim ends.
fn finish(tx: &mut Tx<'_>, job: &Job, state: JobState, reason: Option<&str>, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE jobs SET state = ?2, reason = ?3, finished_at_ms = ?4, owner = NULL, lease_until_ms = NULL WHERE id = ?1",
        args![job.id, state, reason, now],
    )?;
    let released = job.steps_planned.saturating_sub(job.steps_done);
    append_event(
        tx,
        &job.id,
        state.as_str(),
        json!({ "reason": reason, "steps_done": job.steps_done, "steps_released": released }),
        now,
    )
}

/// Appends one event to `job`'s log; on PostgreSQL also notifies every daemon's listener,
/// delivered when (and only if) this transaction commits.
fn append_event(tx: &mut Tx<'_>, job: &JobId, kind: &str, payload: serde_json::Value, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO job_events (job, kind, payload_json, at_ms) VALUES (?1, ?2, ?3, ?4)",
        args![job, kind, payload.to_string(), now],
    )?;
    if tx.dialect() == Dialect::Postgres {
        tx.query_one("SELECT pg_notify(?1, ?2) IS NULL AS sent", args![super::notices::CHANNEL, job], |_| Ok(()))?;
    }
    Ok(())
}

/// Job `id` whoever owns it (scheduler paths); `NotFound` if absent.
fn load_any(tx: &mut Tx<'_>, id: &JobId) -> Result<Job> {
    tx.query_first(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"), args![id], Job::from_row)?
        .ok_or_else(|| StoreError::not_found("job", id.as_str()))
}

/// Job `id` and the daemon holding it, locked until the write commits; `NotFound` if absent.
fn load_for_update(tx: &mut Tx<'_>, id: &JobId) -> Result<(Job, Option<String>)> {
    let sql = format!("SELECT {JOB_COLUMNS}, owner FROM jobs WHERE id = ?1{}", tx.dialect().for_update());
    tx.query_first(&sql, args![id], |r| Ok((Job::from_row(r)?, r.get("owner")?)))?.ok_or_else(|| StoreError::not_found("job", id.as_str()))
}

/// The tenant's job `id`; `NotFound` if absent or another tenant's.
pub(super) fn load_owned(tx: &mut Tx<'_>, tenant: &TenantId, id: &JobId) -> Result<Job> {
    tx.query_first(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND tenant = ?2"), args![id, tenant], Job::from_row)?
        .ok_or_else(|| StoreError::not_found("job", id.as_str()))
}

/// Every job of the tenant, in admission order.
pub(crate) fn for_tenant(tx: &mut Tx<'_>, tenant: &TenantId) -> Result<Vec<Job>> {
    tx.query_map(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 ORDER BY seq"), args![tenant], Job::from_row)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{chain, count_rows, new_dataset, new_job, Fixture};
    use super::*;

    fn kinds(events: &[JobEvent]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    /// The next notice, waiting up to 10 s (on PostgreSQL it comes back through the server).
    fn next_notice(rx: &mut tokio::sync::broadcast::Receiver<JobId>) -> Option<JobId> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(id) => return Some(id),
                Err(tokio::sync::broadcast::error::TryRecvError::Empty) if std::time::Instant::now() < until => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(_) => return None,
            }
        }
    }

    /// Every commit that appends a job event sends one notice with the job's id, after the
    /// commit: the event is readable when the notice arrives. A no-op sends none. On
    /// PostgreSQL another daemon's commits arrive the same way.
    #[test]
    fn each_event_commit_sends_one_notice() {
        use tokio::sync::broadcast::error::TryRecvError;
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let mut rx = fx.store.subscribe_job_events();
        let mut expect = |store: &Store, id: &JobId, kind: &str| {
            assert_eq!(next_notice(&mut rx).as_ref(), Some(id));
            assert_eq!(store.events_since(&acme, id, 0, u32::MAX).unwrap().last().unwrap().kind, kind);
        };
        let job = fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 100)).unwrap();
        expect(&fx.store, &job.id, "created");
        fx.store.claim_next_queued().unwrap().unwrap();
        expect(&fx.store, &job.id, "started");
        fx.store.record_progress(&job.id, 5, 0.1).unwrap();
        expect(&fx.store, &job.id, "progress");
        fx.store.request_cancel(&acme, &job.id).unwrap();
        expect(&fx.store, &job.id, "cancel_requested");
        fx.store.requeue_running().unwrap();
        expect(&fx.store, &job.id, "cancelled");
        if super::super::testutil::on_postgres() {
            let other = fx.other_daemon("b");
            let job = other.create_job(&acme, new_job(&d.id, 1.0, 0.01, 100)).unwrap();
            expect(&fx.store, &job.id, "created");
            other.request_cancel(&acme, &job.id).unwrap();
            expect(&fx.store, &job.id, "cancelled");
        }
        fx.store.list_jobs(&acme, Page::default()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    /// A daemon that stops heartbeating loses its job when its lease runs out: another daemon
    /// takes it over with the spend as recorded, and the first one can record nothing more.
    #[test]
    fn a_job_whose_daemon_stopped_heartbeating_is_taken_over() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let (a, b) = (fx.daemon("a", 300), fx.daemon("b", 300));
        let job = a.create_job(&acme, new_job(&d.id, 1.0, 0.01, 100)).unwrap();
        assert_eq!(a.claim_next_queued().unwrap().unwrap().id, job.id);
        a.record_progress(&job.id, 10, 0.1).unwrap();
        assert_eq!(b.claim_next_queued().unwrap(), None, "held while the lease runs");
        assert!(a.renew_leases(std::slice::from_ref(&job.id)).unwrap().is_empty());
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(b.claim_next_queued().unwrap(), None, "renewed");
        std::thread::sleep(std::time::Duration::from_millis(400));

        let taken = b.claim_next_queued().unwrap().expect("taken over after the lease ran out");
        assert_eq!((taken.id.clone(), taken.state, taken.steps_done), (job.id.clone(), JobState::Running, 10));
        let events = b.events_since(&acme, &job.id, 0, u32::MAX).unwrap();
        assert_eq!(kinds(&events), ["created", "started", "progress", "interrupted", "started"]);
        let interrupted: serde_json::Value = serde_json::from_str(&events[3].payload_json).unwrap();
        assert_eq!(interrupted, json!({ "steps_done": 10, "daemon": "a", "lease_expired": true }));
        let started: serde_json::Value = serde_json::from_str(&events[4].payload_json).unwrap();
        assert_eq!(started, json!({ "steps_done": 10, "daemon": "b" }));

        // The old daemon is fenced off: no step, no end, no renewal.
        assert!(matches!(a.record_progress(&job.id, 11, 0.2), Err(StoreError::LeaseLost { ref holder, .. }) if holder == "daemon b runs it"));
        assert!(matches!(a.finish_job(&job.id, JobState::Failed, None), Err(StoreError::LeaseLost { .. })));
        assert!(matches!(a.succeed_job(&job.id, &[], None), Err(StoreError::LeaseLost { .. })));
        assert_eq!(a.renew_leases(std::slice::from_ref(&job.id)).unwrap(), [job.id.clone()]);
        assert!(a.requeue_job(&job.id).unwrap().is_none(), "a cannot hand back what it no longer holds");
        assert_eq!(a.requeue_running().unwrap(), [], "nor requeue it at start-up");

        // The new one goes on from the recorded spend; the ledger never counted less.
        assert_eq!(b.record_progress(&job.id, 11, 0.2).unwrap().steps_done, 11);
        assert_eq!(b.succeed_job(&job.id, &[], None).unwrap().state, JobState::Succeeded);
        assert_eq!(fx.store.get_job(&acme, &job.id).unwrap().steps_done, 11);
    }

    /// A daemon stopping at a checkpoint hands its job back at once: any daemon resumes it.
    #[test]
    fn a_job_handed_back_is_resumed_by_another_daemon_at_once() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let (a, b) = (fx.daemon("a", 60_000), fx.daemon("b", 60_000));
        let job = a.create_job(&acme, new_job(&d.id, 1.0, 0.01, 100)).unwrap();
        a.claim_next_queued().unwrap().unwrap();
        a.record_progress(&job.id, 7, 0.1).unwrap();
        assert_eq!(b.requeue_job(&job.id).unwrap(), None, "only its daemon hands it back");
        let back = a.requeue_job(&job.id).unwrap().unwrap();
        assert_eq!((back.state, back.steps_done, back.steps_reserved()), (JobState::Queued, 7, 93));
        let resumed = b.claim_next_queued().unwrap().unwrap();
        assert_eq!((resumed.id, resumed.steps_done), (job.id.clone(), 7));
        assert!(matches!(a.record_progress(&job.id, 8, 0.1), Err(StoreError::LeaseLost { .. })));
        // Handed back again by b, it is in the queue: a's late end changes nothing.
        b.requeue_job(&job.id).unwrap().unwrap();
        assert!(matches!(a.finish_job(&job.id, JobState::Failed, None), Err(StoreError::LeaseLost { ref holder, .. }) if holder == "it is in the queue"));
        assert_eq!(fx.store.get_job(&acme, &job.id).unwrap().state, JobState::Queued);
        // A daemon never takes over its own job; one that no worker of it runs goes back once
        // its lease has run out (a fresh claim is left alone).
        let mine = a.claim_next_queued().unwrap().unwrap();
        assert_eq!(a.requeue_abandoned(std::slice::from_ref(&mine.id)).unwrap(), []);
        assert_eq!(a.requeue_abandoned(&[]).unwrap(), [], "its lease still runs");
        let short = fx.daemon("a", 1);
        short.renew_leases(std::slice::from_ref(&job.id)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(short.requeue_abandoned(&[]).unwrap().iter().map(|j| (&j.id, j.state)).collect::<Vec<_>>(), [(&job.id, JobState::Queued)]);
    }

    #[test]
    fn lifecycle_with_events() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let job = fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 100)).unwrap();
        assert_eq!((job.state, job.steps_done, job.steps_reserved()), (JobState::Queued, 0, 100));
        assert_eq!(fx.store.list_jobs(&acme, Page::default()).unwrap().items, vec![job.clone()]);

        let claimed = fx.store.claim_next_queued().unwrap().unwrap();
        assert_eq!((claimed.id.clone(), claimed.state), (job.id.clone(), JobState::Running));
        assert!(claimed.started_at_unix_ms.is_some());
        assert_eq!(fx.store.claim_next_queued().unwrap(), None);

        fx.store.record_progress(&job.id, 40, 0.5).unwrap();
        let done = fx.store.finish_job(&job.id, JobState::Succeeded, None).unwrap();
        assert_eq!((done.state, done.steps_done, done.steps_reserved()), (JobState::Succeeded, 40, 0));
        assert!(done.finished_at_unix_ms.is_some());

        let events = fx.store.events_since(&acme, &job.id, 0, u32::MAX).unwrap();
        assert_eq!(kinds(&events), ["created", "started", "progress", "succeeded"]);
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
        let progress: serde_json::Value = serde_json::from_str(&events[2].payload_json).unwrap();
        assert_eq!(progress, json!({ "step": 40, "total_steps": 100, "epsilon_spent": 0.5 }));
        let end: serde_json::Value = serde_json::from_str(&events[3].payload_json).unwrap();
        assert_eq!(end["steps_released"], 60);
        let tail = fx.store.events_since(&acme, &job.id, events[1].seq, u32::MAX).unwrap();
        assert_eq!(tail, events[2..].to_vec());

        let err = fx.store.finish_job(&job.id, JobState::Failed, Some("again".into())).unwrap_err();
        assert!(
            matches!(err, StoreError::FailedPrecondition { state: JobState::Succeeded, action: "finish", .. }),
            "{err:?}"
        );
        let err = fx.store.finish_job(&job.id, JobState::Running, None).unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument { field: "state", .. }), "{err:?}");
    }

    /// A succeeded job's outputs are recorded in the transaction that ends it, listed in the
    /// budget report, readable by its tenant only, and never change; a bad list changes nothing.
    #[test]
    fn outputs_are_recorded_as_the_job_succeeds_and_never_change() {
        let fx = Fixture::new();
        let (acme, globex) = (fx.tenant("acme"), fx.tenant("globex"));
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let job = fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 10)).unwrap();
        let file = |path: &str, sha: char| OutputFile { path: path.into(), size: 3, sha256: sha.to_string().repeat(64) };
        let files = vec![file("adapter_model.safetensors", 'b'), file("adapter_config.json", 'a')];
        let err = fx.store.succeed_job(&job.id, &files, None).unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { ref holder, .. } if holder == "it is in the queue"), "not claimed: {err:?}");
        fx.store.claim_next_queued().unwrap().unwrap();
        for (bad, field) in [
            (vec![file("../escape", 'a')], "outputs.path"),
            (vec![file("a", 'A')], "outputs.sha256"),
            (vec![file("a", 'a'), file("a", 'b')], "outputs.path"),
        ] {
            let err = fx.store.succeed_job(&job.id, &bad, None).unwrap_err();
            assert!(matches!(err, StoreError::InvalidArgument { field: f, .. } if f == field), "{err:?}");
        }
        assert_eq!(count_rows(&fx.store, "job_outputs"), 0, "a refused list writes nothing");
        assert_eq!(fx.store.get_job(&acme, &job.id).unwrap().state, JobState::Running);
        let done = fx.store.succeed_job(&job.id, &files, None).unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        let (_, recorded) = fx.store.job_outputs(&acme, &job.id).unwrap();
        let mut sorted = files.clone();
        sorted.sort();
        assert_eq!(recorded, sorted);
        assert!(matches!(fx.store.job_outputs(&globex, &job.id), Err(StoreError::NotFound { .. })));
        let report = fx.store.budget_report(&acme, &d.id, false).unwrap();
        assert_eq!(report.jobs[0].outputs, sorted);
        assert!(serde_json::to_string(&report).unwrap().contains(&"b".repeat(64)));
        // Below the Rust code, the schema refuses any change and any late addition.
        assert!(fx.raw("UPDATE job_outputs SET sha256 = ?1", args!["c".repeat(64)]).is_err());
        assert!(fx.raw("DELETE FROM job_outputs", args![]).is_err());
        assert!(fx.raw("INSERT INTO job_outputs (job, path, size, sha256) VALUES (?1, 'late', 1, ?2)", args![job.id, "d".repeat(64)]).is_err());
    }

    /// A job's self-audit is recorded in the transaction that ends it, passed (succeeded) or
    /// failed (the job failed with the reason), read back by its tenant only, carried by the
    /// budget report for every ended job, and never changed or added late.
    #[test]
    fn self_audits_are_recorded_as_the_job_ends_and_never_change() {
        let fx = Fixture::new();
        let (acme, globex) = (fx.tenant("acme"), fx.tenant("globex"));
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let passed = SelfAuditRecord { passed: true, report: json!({ "canaries": 10000, "steinke_epsilon": 0.61 }) };
        let failed = SelfAuditRecord { passed: false, report: json!({ "canaries": 10000, "decision": { "failed": ["V (noise ...)"] } }) };
        let good = fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 10)).unwrap();
        let bad = fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 10)).unwrap();
        let plain = fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 10)).unwrap();
        assert!(matches!(fx.store.fail_self_audit(&bad.id, "x".into(), &failed), Err(StoreError::LeaseLost { .. })), "not claimed");
        for _ in 0..3 {
            fx.store.claim_next_queued().unwrap().unwrap();
        }
        let not_an_object = SelfAuditRecord { passed: true, report: json!([1, 2]) };
        assert!(matches!(fx.store.succeed_job(&good.id, &[], Some(&not_an_object)), Err(StoreError::InvalidArgument { field: "self_audit", .. })));
        assert_eq!(fx.store.get_job(&acme, &good.id).unwrap().state, JobState::Running, "a refused record ends nothing");
        fx.store.succeed_job(&good.id, &[], Some(&passed)).unwrap();
        let ended = fx.store.fail_self_audit(&bad.id, "self-audit failed: V".into(), &failed).unwrap();
        assert_eq!((ended.state, ended.reason.as_deref()), (JobState::Failed, Some("self-audit failed: V")));
        fx.store.succeed_job(&plain.id, &[], None).unwrap();
        assert_eq!(fx.store.job_self_audit(&acme, &good.id).unwrap(), Some(passed.clone()));
        assert_eq!(fx.store.job_self_audit(&acme, &bad.id).unwrap(), Some(failed.clone()));
        assert_eq!(fx.store.job_self_audit(&acme, &plain.id).unwrap(), None);
        assert!(matches!(fx.store.job_self_audit(&globex, &good.id), Err(StoreError::NotFound { .. })));
        let report = fx.store.budget_report(&acme, &d.id, false).unwrap();
        let row = |id: &JobId| report.jobs.iter().find(|r| &r.job == id).unwrap().self_audit.clone();
        assert_eq!((row(&good.id), row(&bad.id), row(&plain.id)), (Some(passed.report), Some(failed.report), None));
        assert!(fx.raw("UPDATE job_self_audits SET passed = 1", args![]).is_err());
        assert!(fx.raw("DELETE FROM job_self_audits", args![]).is_err());
        assert!(fx.raw("INSERT INTO job_self_audits (job, passed, report_json) VALUES (?1, 1, '{}')", args![plain.id]).is_err(), "never after the end");
    }

    /// Each REAL column is read back into its own field on every read path: a job's three REALs
    /// all hold plausible values, so a swapped read would pass every type check.
    #[test]
    fn real_columns_read_back_into_their_own_fields() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let job = fx.store.create_job(&acme, new_job(&d.id, 1.25, 0.015, 100)).unwrap();
        assert_eq!((job.noise_multiplier, job.sample_rate, job.epsilon_spent), (1.25, 0.015, 0.0));
        fx.store.claim_next_queued().unwrap().unwrap();
        fx.store.record_progress(&job.id, 40, 0.75).unwrap();
        let reals = |j: &Job| (j.noise_multiplier, j.sample_rate, j.epsilon_spent);
        let expected = (1.25, 0.015, 0.75);
        assert_eq!(reals(&fx.store.get_job(&acme, &job.id).unwrap()), expected);
        assert_eq!(reals(&fx.store.list_jobs(&acme, Page::default()).unwrap().items[0]), expected);
        assert_eq!(reals(&fx.store.requeue_running().unwrap()[0]), expected);
        let row = &fx.store.budget_report(&acme, &d.id, false).unwrap().jobs[0];
        assert_eq!((row.noise_multiplier, row.sample_rate), (1.25, 0.015));
        let stored = fx.store.get_dataset(&acme, &d.id).unwrap();
        assert_eq!((stored.budget_epsilon, stored.budget_delta), (10.0, 1e-5));
        assert_eq!(fx.store.list_datasets(&acme, Page::default()).unwrap().items, vec![stored]);
    }

    #[test]
    fn queue_is_oldest_first() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 50.0)).unwrap();
        let ids: Vec<JobId> =
            (0..3).map(|_| fx.store.create_job(&acme, new_job(&d.id, 2.0, 0.01, 10)).unwrap().id).collect();
        for id in &ids {
            assert_eq!(&fx.store.claim_next_queued().unwrap().unwrap().id, id);
        }
        assert_eq!(fx.store.claim_next_queued().unwrap(), None);
    }

    #[test]
    fn progress_is_monotone_and_bounded_by_the_plan() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let job = fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 100)).unwrap();
        let err = fx.store.record_progress(&job.id, 1, 0.1).unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "not claimed: {err:?}");
        fx.store.claim_next_queued().unwrap();

        assert_eq!(fx.store.record_progress(&job.id, 30, 0.3).unwrap().steps_done, 30);
        let after_lower = fx.store.record_progress(&job.id, 10, 0.1).unwrap();
        assert_eq!((after_lower.steps_done, after_lower.epsilon_spent), (30, 0.3), "a lower value is ignored");
        assert_eq!(fx.store.record_progress(&job.id, 30, 0.9).unwrap().epsilon_spent, 0.3, "an equal value too");
        let err = fx.store.record_progress(&job.id, 101, 1.0).unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument { field: "steps_done", .. }), "{err:?}");
        let err = fx.store.record_progress(&job.id, 50, f64::NAN).unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument { field: "epsilon_spent", .. }), "{err:?}");
        assert_eq!(fx.store.record_progress(&job.id, 100, 1.0).unwrap().steps_done, 100);

        let progress =
            fx.store.events_since(&acme, &job.id, 0, u32::MAX).unwrap().into_iter().filter(|e| e.kind == "progress").count();
        assert_eq!(progress, 2, "ignored updates append no event");

        // Below the Rust code, the schema refuses a decrease too.
        let err = chain(&fx.raw("UPDATE jobs SET steps_done = 5 WHERE id = ?1", args![job.id]).unwrap_err());
        assert!(err.contains("never decreases"), "{err}");
        let err = chain(&fx.raw("DELETE FROM jobs", args![]).unwrap_err());
        assert!(err.contains("never deleted"), "{err}");
    }

    #[test]
    fn cancel_queued_running_and_finished() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 50.0)).unwrap();
        let running = fx.store.create_job(&acme, new_job(&d.id, 2.0, 0.01, 10)).unwrap();
        let queued = fx.store.create_job(&acme, new_job(&d.id, 2.0, 0.01, 10)).unwrap();
        fx.store.claim_next_queued().unwrap();

        let c = fx.store.request_cancel(&acme, &queued.id).unwrap();
        assert_eq!((c.state, c.steps_reserved()), (JobState::Cancelled, 0));
        let r = fx.store.request_cancel(&acme, &running.id).unwrap();
        assert_eq!((r.state, r.cancel_requested), (JobState::Running, true));
        assert!(fx.store.is_cancel_requested(&running.id).unwrap());
        assert!(!fx.store.is_cancel_requested(&queued.id).unwrap());
        fx.store.request_cancel(&acme, &running.id).unwrap();
        let events = fx.store.events_since(&acme, &running.id, 0, u32::MAX).unwrap();
        assert_eq!(kinds(&events), ["created", "started", "cancel_requested"], "a repeated request adds nothing");

        fx.store.finish_job(&running.id, JobState::Cancelled, Some("cancelled by tenant".into())).unwrap();
        let err = fx.store.request_cancel(&acme, &running.id).unwrap_err();
        assert!(
            matches!(err, StoreError::FailedPrecondition { state: JobState::Cancelled, action: "cancel", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("cancelled"), "{err}");
    }

    #[test]
    fn requeue_running_after_restart() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 50.0)).unwrap();
        let a = fx.store.create_job(&acme, new_job(&d.id, 2.0, 0.01, 100)).unwrap();
        let b = fx.store.create_job(&acme, new_job(&d.id, 2.0, 0.01, 100)).unwrap();
        let c = fx.store.create_job(&acme, new_job(&d.id, 2.0, 0.01, 100)).unwrap();
        for _ in 0..3 {
            fx.store.claim_next_queued().unwrap();
        }
        fx.store.record_progress(&a.id, 25, 0.2).unwrap();
        fx.store.request_cancel(&acme, &b.id).unwrap();
        fx.store.finish_job(&c.id, JobState::Failed, Some("out of memory".into())).unwrap();
        let report_before = fx.store.budget_report(&acme, &d.id, false).unwrap();

        let fx = fx.reopen(); // the daemon died; a new one opens the same file
        let affected = fx.store.requeue_running().unwrap();
        assert_eq!(
            affected.iter().map(|j| (&j.id, j.state)).collect::<Vec<_>>(),
            [(&a.id, JobState::Queued), (&b.id, JobState::Cancelled)]
        );
        let a_now = fx.store.get_job(&acme, &a.id).unwrap();
        assert_eq!((a_now.steps_done, a_now.steps_reserved()), (25, 75), "spend and reservation kept");
        assert_eq!(
            kinds(&fx.store.events_since(&acme, &a.id, 0, u32::MAX).unwrap()),
            ["created", "started", "progress", "interrupted"]
        );
        assert_eq!(
            kinds(&fx.store.events_since(&acme, &b.id, 0, u32::MAX).unwrap()),
            ["created", "started", "cancel_requested", "interrupted", "cancelled"]
        );
        assert_eq!(fx.store.get_job(&acme, &c.id).unwrap().state, JobState::Failed);
        let report_after = fx.store.budget_report(&acme, &d.id, false).unwrap();
        assert_eq!(report_after.spent_history, report_before.spent_history, "the ledger never forgets spend");
        assert!(fx.store.requeue_running().unwrap().is_empty(), "idempotent");

        let resumed = fx.store.claim_next_queued().unwrap().unwrap();
        assert_eq!((resumed.id, resumed.steps_done), (a.id.clone(), 25));
        assert_eq!(fx.store.record_progress(&a.id, 100, 0.9).unwrap().steps_done, 100);
    }

    #[test]
    fn jobs_are_validated() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let cases: Vec<(&str, NewJob)> = vec![
            ("spec_json", NewJob { spec_json: "{not json".into(), ..new_job(&d.id, 1.0, 0.01, 10) }),
            ("noise_multiplier", new_job(&d.id, 0.0, 0.01, 10)),
            ("noise_multiplier", new_job(&d.id, f64::NAN, 0.01, 10)),
            ("sample_rate", new_job(&d.id, 1.0, 0.0, 10)),
            ("sample_rate", new_job(&d.id, 1.0, 1.5, 10)),
            ("steps", new_job(&d.id, 1.0, 0.01, 0)),
        ];
        for (field, job) in cases {
            let err = fx.store.create_job(&acme, job).unwrap_err();
            assert!(matches!(err, StoreError::InvalidArgument { field: f, .. } if f == field), "{field}: {err:?}");
        }
        let unknown = DatasetId::parse(&"0".repeat(64)).unwrap();
        let err = fx.store.create_job(&acme, new_job(&unknown, 1.0, 0.01, 10)).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "dataset", .. }), "{err:?}");
        assert_eq!(count_rows(&fx.store, "jobs"), 0);
        assert!(JobId::parse("xyz").is_err());
    }

    #[test]
    fn tenant_isolation() {
        let fx = Fixture::new();
        let (acme, globex) = (fx.tenant("acme"), fx.tenant("globex"));
        let d = fx.store.register_dataset(&acme, new_dataset(1, 10.0)).unwrap();
        let job = fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 10)).unwrap();

        let not_found = |r: Result<_>, kind: &str| match r {
            Err(StoreError::NotFound { kind: k, .. }) => assert_eq!(k, kind),
            other => panic!("expected NotFound {kind}, got {other:?}"),
        };
        not_found(fx.store.get_dataset(&globex, &d.id).map(drop), "dataset");
        not_found(fx.store.budget_report(&globex, &d.id, false).map(drop), "dataset");
        not_found(fx.store.create_job(&globex, new_job(&d.id, 1.0, 0.01, 10)).map(drop), "dataset");
        not_found(fx.store.get_job(&globex, &job.id).map(drop), "job");
        not_found(fx.store.events_since(&globex, &job.id, 0, u32::MAX).map(drop), "job");
        not_found(fx.store.request_cancel(&globex, &job.id).map(drop), "job");
        assert!(fx.store.list_jobs(&globex, Page::default()).unwrap().items.is_empty());
        assert!(fx.store.list_datasets(&globex, Page::default()).unwrap().items.is_empty());
        assert_eq!(fx.store.get_job(&acme, &job.id).unwrap().state, JobState::Queued, "untouched");

        // The same bytes under globex are a separate dataset with its own, empty ledger.
        let theirs = fx.store.register_dataset(&globex, new_dataset(1, 10.0)).unwrap();
        let report = fx.store.budget_report(&globex, &theirs.id, false).unwrap();
        assert!(report.jobs.is_empty());
        assert_eq!(report.committed_epsilon, 0.0);
    }
}
