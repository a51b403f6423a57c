//! The scheduler: claims queued jobs from the store and runs each on its own low-priority thread
//! (up to `concurrency` at once), recording the privacy spend in the ledger *before* every step
//! touches data, and the outcome at the end. On shutdown running jobs stop after their current
//! step with a checkpoint and stay `running` in the store, which requeues them (with an
//! `interrupted` event) when the daemon starts again; after a crash the same happens, and they
//! resume from their last checkpoint.
//!
//! The ledger counts, per job, the highest step index started. Steps re-run after a crash
//! replace ones whose results were never persisted nor released (a checkpoint is the only
//! output before the end, and progress events carry no data-dependent value), so the output
//! model depends on exactly that many steps and the count never under-states the spend.

use super::State;
use crate::store::{Job, JobState};
use crate::train::job::{self, JobSpec};
use crate::train::TrainError;
use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::History;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs until `shutdown` turns true, then waits for the running jobs to checkpoint.
pub async fn run(state: Arc<State>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let stopping = Arc::new(AtomicBool::new(false));
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < state.config.concurrency {
            match state.store.claim_next_queued() {
                Ok(Some(job)) => {
                    let (state, stopping) = (state.clone(), stopping.clone());
                    running.spawn(async move {
                        let worker_state = state.clone();
                        let worker_job = job.clone();
                        let result = super::run_batch("ewtune-train", move || run_job(&worker_state, &worker_job, &stopping)).await;
                        let _ = state.metrics.steps_per_second.remove_label_values(&[job.id.as_str()]);
                        settle(&state, &job, result);
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
                return;
            }
        }
    }
}

/// How a job's worker ended.
enum Ended {
    /// With the files of its output model (path relative to it, size, SHA-256).
    Finished(Vec<crate::artifacts::OutputFile>),
    CancelledByUser,
    Interrupted,
}

/// Rounds the ledger's epsilon display up to a multiple of this many steps (an upper bound at
/// every step, computed once per block instead of once per step).
const EPSILON_BLOCK: u64 = 10;

fn run_job(state: &State, job: &Job, stopping: &AtomicBool) -> Result<Ended, TrainError> {
    let mut spec: JobSpec = serde_json::from_str(&job.spec_json).map_err(|e| TrainError::BadSpec { field: "spec_json", reason: e.to_string() })?;
    spec.output = super::jobs::job_dir(state, &job.id);
    place_canary_manifest(state, job, &spec.output)?;
    let delta = spec.privacy.delta;
    let cancel = AtomicBool::new(false);
    let user_cancel = AtomicBool::new(false);
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
            state.store.record_progress(&job.id, step, eps).map_err(store_err)?;
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
            if stopping.load(Ordering::Relaxed) {
                cancel.store(true, Ordering::Relaxed);
            }
        },
    )?;
    if !outcome.cancelled {
        let files = crate::artifacts::list_files(&outcome.output_model).map_err(|e| TrainError::Io { path: e.path, reason: e.source.to_string() })?;
        Ok(Ended::Finished(files))
    } else if user_cancel.load(Ordering::Relaxed) {
        Ok(Ended::CancelledByUser)
    } else {
        Ok(Ended::Interrupted)
    }
}

/// Writes the canary manifest committed at admission into the job's directory, where training
/// reads it, or checks that the one already there (a resumed job) is byte for byte the same.
fn place_canary_manifest(state: &State, job: &Job, output: &std::path::Path) -> Result<(), TrainError> {
    let Some((sha, json)) = state.store.canary_manifest(&job.id).map_err(store_err)? else {
        return Ok(());
    };
    let path = output.join("audit_manifest.json");
    if path.exists() {
        let bytes = std::fs::read(&path).map_err(|e| TrainError::Io { path: path.clone(), reason: e.to_string() })?;
        if crate::digest::sha256_hex(&bytes) != sha {
            return Err(TrainError::BadSpec { field: "canaries", reason: "the job's audit_manifest.json differs from the manifest committed at admission".into() });
        }
        return Ok(());
    }
    std::fs::create_dir_all(output).map_err(|e| TrainError::Io { path: output.to_path_buf(), reason: e.to_string() })?;
    Ok(crate::fs::write_atomic(&path, json.as_bytes())?)
}

fn store_err(e: crate::store::StoreError) -> TrainError {
    TrainError::Ledger { reason: e.to_string() }
}

/// Records the end of a worker: success, cancellation, failure (with the reason), or a panic.
/// An interrupted job stays `running` in the store; start-up requeues it.
fn settle(state: &State, job: &Job, result: Result<Result<Ended, TrainError>, super::BatchPanicked>) {
    let id = &job.id;
    let r = match result {
        Ok(Ok(Ended::Finished(files))) => state.store.succeed_job(id, &files).or_else(|e| match e {
            crate::store::StoreError::InvalidArgument { .. } => {
                tracing::error!(job = %id.as_str(), error = %e, "the job's output cannot be recorded");
                state.store.finish_job(id, JobState::Failed, Some("the job's output could not be recorded; see the daemon's log".into()))
            }
            other => Err(other),
        }),
        Ok(Ok(Ended::CancelledByUser)) => state.store.finish_job(id, JobState::Cancelled, Some("cancelled by request".into())),
        Ok(Ok(Ended::Interrupted)) => {
            tracing::info!(job = %id.as_str(), "stopped at a checkpoint; resumes when the daemon starts again");
            return;
        }
        Ok(Err(e)) => {
            tracing::error!(job = %id.as_str(), error = %e, "job failed");
            state.store.finish_job(id, JobState::Failed, Some(e.without_paths()))
        }
        Err(super::BatchPanicked(message)) => {
            tracing::error!(job = %id.as_str(), panic = %message, "the training worker panicked");
            state.store.finish_job(id, JobState::Failed, Some("the training worker panicked (a shape or device error)".into()))
        }
    };
    if let Err(e) = r {
        tracing::error!(job = %id.as_str(), error = %e, "cannot record the job's end");
    }
}
