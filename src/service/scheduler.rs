//! The scheduler: claims jobs from the store (queued ones, and running ones whose daemon's lease
//! ran out) and runs each on its own low-priority thread (up to `concurrency` at once), recording
//! the privacy spend in the ledger *before* every step touches data, and the outcome at the end.
//! A heartbeat renews this daemon's lease on its jobs every third of the lease; a job another
//! daemon has taken over (this one was cut off past its lease) stops at once and records
//! nothing. On shutdown running jobs stop after their current step with a checkpoint and go back
//! to the queue (an `interrupted` event), where any daemon resumes them from that checkpoint;
//! after a crash this daemon requeues them when it starts again, or another daemon takes them
//! over when the lease runs out.
//!
//! The ledger counts, per job, the highest step index started. Steps re-run after a crash
//! replace ones whose results were never persisted nor released (a checkpoint is the only
//! output before the end, and progress events carry no data-dependent value), so the output
//! model depends on exactly that many steps and the count never under-states the spend.

use super::State;
use crate::store::{Job, JobId, JobState};
use std::collections::HashMap;
use crate::train::job::{self, JobSpec};
use crate::train::self_audit::SelfAuditReport;
use crate::train::TrainError;
use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::History;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The jobs this daemon runs, each with the flag its worker polls: set when the daemon no
/// longer holds the job's lease.
type Held = Arc<std::sync::Mutex<HashMap<JobId, Arc<AtomicBool>>>>;

/// Runs until `shutdown` turns true, then waits for the running jobs to checkpoint.
pub async fn run(state: Arc<State>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let stopping = Arc::new(AtomicBool::new(false));
    let held: Held = Arc::default();
    let heartbeat = tokio::spawn(heartbeat(state.clone(), held.clone()));
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < state.config.concurrency {
            match state.store.claim_next_queued() {
                Ok(Some(job)) => {
                    let (state, stopping, held) = (state.clone(), stopping.clone(), held.clone());
                    let lost = Arc::new(AtomicBool::new(false));
                    lock(&held).insert(job.id.clone(), lost.clone());
                    running.spawn(async move {
                        let worker_state = state.clone();
                        let worker_job = job.clone();
                        let worker_lost = lost.clone();
                        let result = super::run_batch("ewtune-train", move || run_job(&worker_state, &worker_job, &stopping, &worker_lost)).await;
                        let _ = state.metrics.steps_per_second.remove_label_values(&[job.id.as_str()]);
                        settle(&state, &job, result, &lost);
                        lock(&held).remove(&job.id);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim a queued job");
                    break;
                }
            }
        }
        tokio::select! {
            _ = state.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = shutdown.changed() => {
                stopping.store(true, Ordering::Relaxed);
                while running.join_next().await.is_some() {}
                heartbeat.abort();
                return;
            }
        }
    }
}

fn lock(held: &Held) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<AtomicBool>>> {
    held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every third of the lease: renews this daemon's lease on the jobs it runs (flagging those it
/// lost) and on its audits, and fails the audits of daemons whose leases ran out.
async fn heartbeat(state: Arc<State>, held: Held) {
    let every = Duration::from_millis((state.config.worker.lease_ms / 3).max(100) as u64);
    loop {
        tokio::time::sleep(every).await;
        let ids: Vec<JobId> = lock(&held).keys().cloned().collect();
        let beat = (|| -> Result<Vec<JobId>, crate::store::StoreError> {
            let lost = state.store.renew_leases(&ids)?;
            let requeued = state.store.requeue_abandoned(&ids)?;
            if !requeued.is_empty() {
                tracing::warn!(requeued = requeued.len(), "jobs of this daemon that no worker ran (their end could not be recorded) go back to the queue");
            }
            let abandoned = state.store.fail_abandoned_audits()?;
            if abandoned > 0 {
                tracing::warn!(abandoned, "audits whose daemon stopped renewing its lease end failed");
            }
            Ok(lost)
        })();
        match beat {
            Ok(lost) => {
                let held = lock(&held);
                for id in lost {
                    tracing::warn!(job = %id.as_str(), "this daemon no longer holds the job (its lease ran out and another daemon took it over); stopping it");
                    if let Some(flag) = held.get(&id) {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the leases of this daemon's jobs"),
        }
    }
}

/// How a job's worker ended.
enum Ended {
    /// With the files of its output model (path relative to it, size, SHA-256) and what its
    /// self-audit found.
    Finished(Vec<crate::artifacts::OutputFile>, Option<SelfAuditReport>),
    CancelledByUser,
    Interrupted,
}

/// Rounds the ledger's epsilon display up to a multiple of this many steps (an upper bound at
/// every step, computed once per block instead of once per step).
const EPSILON_BLOCK: u64 = 10;

fn run_job(state: &State, job: &Job, stopping: &AtomicBool, lost: &AtomicBool) -> Result<Ended, TrainError> {
    let mut spec: JobSpec = serde_json::from_str(&job.spec_json).map_err(|e| TrainError::BadSpec { field: "spec_json", reason: e.to_string() })?;
    spec.output = super::jobs::job_dir(state, &job.id);
    match place_canary_manifest(state, job, &spec.output) {
        Err(PlaceError::Unreachable(e)) => {
            tracing::warn!(job = %job.id.as_str(), error = %e, "the ledger's database is unreachable: the job waits");
            return Ok(Ended::Interrupted);
        }
        Err(PlaceError::Train(e)) => return Err(e),
        Ok(()) => {}
    }
    let delta = spec.privacy.delta;
    let cancel = AtomicBool::new(false);
    let user_cancel = AtomicBool::new(false);
    // The ledger's database could not be reached for a step's spend: the step did not run.
    let unreachable = AtomicBool::new(false);
    let mut block_epsilon: Option<(u64, f64)> = None;
    // Steps per second since this run of the job started (the first step it does).
    let mut pace: Option<(u64, std::time::Instant)> = None;
    // An adapter names its base as the client did: no daemon path reaches a client.
    let base_name = spec.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let outcome = job::run_with_ledger(
        &spec,
        &job::BaseName::Given(base_name),
        &cancel,
        |step| {
            // The spend is on the ledger before the step touches any data.
            let block = step.div_ceil(EPSILON_BLOCK) * EPSILON_BLOCK;
            let eps = match block_epsilon {
                Some((b, e)) if b == block => e,
                _ => {
                    let h = History::homogeneous(job.noise_multiplier, job.sample_rate, block.min(job.steps_planned))?;
                    let e = PldAccountant::default().epsilon(&h, delta)?.bounds.upper;
                    block_epsilon = Some((block, e));
                    e
                }
            };
            if let Err(e) = state.store.record_progress(&job.id, step, eps) {
                match e {
                    crate::store::StoreError::LeaseLost { .. } => lost.store(true, Ordering::Relaxed),
                    crate::store::StoreError::Unavailable { .. } => unreachable.store(true, Ordering::Relaxed),
                    _ => {}
                }
                return Err(store_err(e));
            }
            state.metrics.steps.inc();
            match pace {
                None => pace = Some((step, std::time::Instant::now())),
                Some((first, since)) => {
                    state.metrics.steps_per_second.with_label_values(&[job.id.as_str()]).set((step - first) as f64 / since.elapsed().as_secs_f64().max(1e-9))
                }
            }
            Ok(())
        },
        |_| {
            if let Ok(true) = state.store.is_cancel_requested(&job.id) {
                user_cancel.store(true, Ordering::Relaxed);
                cancel.store(true, Ordering::Relaxed);
            }
            // A job this daemon lost is not cancelled (that would write a checkpoint into
            // another daemon's job): its next step's spend is refused, which ends it as it is.
            if stopping.load(Ordering::Relaxed) {
                cancel.store(true, Ordering::Relaxed);
            }
        },
    );
    let outcome = match outcome {
        // Not the job's fault: it goes back to the queue (or, while the database is still
        // away, keeps this daemon's lapsing lease) and resumes from its checkpoint.
        Err(e) if unreachable.load(Ordering::Relaxed) => {
            tracing::warn!(job = %job.id.as_str(), error = %e, "the ledger's database is unreachable: the job stops before its next step");
            return Ok(Ended::Interrupted);
        }
        other => other?,
    };
    if !outcome.cancelled {
        let files = crate::artifacts::list_files(&outcome.output_model).map_err(|e| TrainError::Io { path: e.path, reason: e.source.to_string() })?;
        Ok(Ended::Finished(files, outcome.self_audit))
    } else if user_cancel.load(Ordering::Relaxed) {
        Ok(Ended::CancelledByUser)
    } else {
        Ok(Ended::Interrupted)
    }
}

/// Writes the canary manifest committed at admission into the job's directory, where training
/// reads it, or checks that the one already there (a resumed job) is byte for byte the same.
fn place_canary_manifest(state: &State, job: &Job, output: &std::path::Path) -> Result<(), PlaceError> {
    let manifest = match state.store.canary_manifest(&job.id) {
        Ok(m) => m,
        Err(e @ crate::store::StoreError::Unavailable { .. }) => return Err(PlaceError::Unreachable(e)),
        Err(e) => return Err(PlaceError::Train(store_err(e))),
    };
    let Some((sha, json)) = manifest else {
        return Ok(());
    };
    let path = output.join("audit_manifest.json");
    if path.exists() {
        let bytes = std::fs::read(&path).map_err(|e| TrainError::Io { path: path.clone(), reason: e.to_string() })?;
        if crate::digest::sha256_hex(&bytes) != sha {
            return Err(TrainError::BadSpec { field: "canaries", reason: "the job's audit_manifest.json differs from the manifest committed at admission".into() }.into());
        }
        return Ok(());
    }
    std::fs::create_dir_all(output).map_err(|e| TrainError::Io { path: output.to_path_buf(), reason: e.to_string() })?;
    crate::fs::write_atomic(&path, json.as_bytes()).map_err(TrainError::from)?;
    Ok(())
}

/// Why the canary manifest could not be placed.
enum PlaceError {
    /// The ledger's database is out of reach: not the job's fault.
    Unreachable(crate::store::StoreError),
    Train(TrainError),
}

impl From<TrainError> for PlaceError {
    fn from(e: TrainError) -> Self {
        PlaceError::Train(e)
    }
}

/// The self-audit as the ledger records it.
fn self_audit_record(report: &SelfAuditReport) -> crate::store::SelfAuditRecord {
    crate::store::SelfAuditRecord { passed: report.passed(), report: serde_json::to_value(report).expect("the report serialises") }
}

fn store_err(e: crate::store::StoreError) -> TrainError {
    TrainError::Ledger { reason: e.to_string() }
}

/// Records the end of a worker: success, cancellation, failure (with the reason), or a panic.
/// An interrupted job goes back to the queue. A job this daemon no longer holds is another
/// daemon's now: nothing is recorded.
fn settle(state: &State, job: &Job, result: Result<Result<Ended, TrainError>, super::BatchPanicked>, lost: &AtomicBool) {
    let id = &job.id;
    if lost.load(Ordering::Relaxed) {
        tracing::warn!(job = %id.as_str(), "the job was taken over by another daemon; this one recorded nothing more");
        return;
    }
    let r = match result {
        Ok(Ok(Ended::Finished(files, self_audit))) => state.store.succeed_job(id, &files, self_audit.as_ref().map(self_audit_record).as_ref()).or_else(|e| match e {
            crate::store::StoreError::InvalidArgument { .. } => {
                tracing::error!(job = %id.as_str(), error = %e, "the job's output cannot be recorded");
                state.store.finish_job(id, JobState::Failed, Some("the job's output could not be recorded; see the daemon's log".into()))
            }
            other => Err(other),
        }),
        Ok(Ok(Ended::CancelledByUser)) => state.store.finish_job(id, JobState::Cancelled, Some("cancelled by request".into())),
        Ok(Ok(Ended::Interrupted)) => {
            tracing::info!(job = %id.as_str(), "stopped at a checkpoint; back in the queue, where any daemon resumes it");
            match state.store.requeue_job(id) {
                Ok(_) => return,
                // Unreachable ledger: the job stays running under this daemon's lease, which
                // runs out; then any daemon (this one after a restart) resumes it.
                Err(e) => Err(e),
            }
        }
        Ok(Err(e)) => {
            tracing::error!(job = %id.as_str(), error = %e, "job failed");
            match &e {
                // Recorded with the job's end: which checks failed, what they measured.
                TrainError::SelfAuditFailed { report } => state.store.fail_self_audit(id, e.without_paths(), &self_audit_record(report)),
                _ => state.store.finish_job(id, JobState::Failed, Some(e.without_paths())),
            }
        }
        Err(super::BatchPanicked(message)) => {
            tracing::error!(job = %id.as_str(), panic = %message, "the training worker panicked");
            state.store.finish_job(id, JobState::Failed, Some("the training worker panicked (a shape or device error)".into()))
        }
    };
    match r {
        Ok(_) => {}
        Err(e @ crate::store::StoreError::LeaseLost { .. }) => tracing::warn!(job = %id.as_str(), error = %e, "the job's end was not recorded"),
        Err(e) => tracing::error!(job = %id.as_str(), error = %e, "cannot record the job's end"),
    }
}
