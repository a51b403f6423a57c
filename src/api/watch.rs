//! `ewtune.v1.Jobs/Watch`: a server stream of one job's events, pushed. The stream task sends
//! what the event log holds after `after_seq`, then sleeps until the store's notice that this
//! job's log grew (`Store::subscribe_job_events`), the client going away, or a slow re-check
//! ([`RECHECK`], a safety net only); it ends after the job's final event, and with UNAVAILABLE
//! when the daemon stops. Open streams are counted per tenant (`State::watches`) and capped by
//! `watch_streams_per_tenant`: past the cap Watch answers `RESOURCE_EXHAUSTED`; a stream's slot
//! frees when its task ends.
//!
//! What this file does not own: the event log itself (`store/jobs.rs`) and the other Jobs
//! handlers (`jobs.rs`).

use super::auth::tenant;
use super::jobs::job_id;
use super::pb;
use crate::service::tenant_slots::TenantSlot;
use crate::service::State;
use crate::store::{JobEvent, JobId, TenantId};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The stream type of `Jobs/Watch`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

/// How often an open stream re-reads its job with no notice (a safety net: notices are sent
/// after every commit that appends an event, and a lagging receiver re-reads at once).
pub const RECHECK: Duration = Duration::from_secs(10);

/// Events buffered per stream for a slow client.
const BUFFERED_EVENTS: usize = 64;

/// The handler: checks the job (`NotFound` before the stream starts), takes a slot, and spawns
/// the stream's task.
pub(super) async fn watch(state: &Arc<State>, req: Request<pb::WatchJobRequest>) -> Result<Response<WatchStream>, Status> {
    let tenant = tenant(&req)?;
    let id = job_id(&req.get_ref().job_id)?;
    let after = req.get_ref().after_seq;
    // Subscribed before the first read: an event committed after it is noticed.
    let notices = state.store.subscribe_job_events();
    tokio::task::block_in_place(|| state.store.get_job(&tenant, &id))?;
    let slot = state.watches.try_open(&tenant).ok_or_else(|| {
        Status::resource_exhausted(format!(
            "this tenant already has {} open Watch streams (watch_streams_per_tenant); close one before opening another",
            state.watches.cap()
        ))
    })?;
    let (tx, rx) = mpsc::channel(BUFFERED_EVENTS);
    tokio::spawn(follow(state.clone(), tenant, id, after, notices, tx, slot));
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

/// Events read from the store at once: a stream of a long job never holds its whole log.
const EVENTS_PER_READ: u32 = 256;

/// The stream's task: sends the job's events after `after`, ends after its final event, when the
/// client goes away, or on a store error (sent to the client). Holds `_slot` while it runs.
async fn follow(
    state: Arc<State>,
    tenant: TenantId,
    id: JobId,
    mut after: i64,
    mut notices: broadcast::Receiver<JobId>,
    tx: mpsc::Sender<Result<pb::JobEvent, Status>>,
    _slot: TenantSlot,
) {
    let stopping = stopped(state.stopping.subscribe());
    tokio::pin!(stopping);
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The state first: when it is final, the final event (same commit) is in the next read.
        let read = tokio::task::block_in_place(|| {
            let done = state.store.get_job(&tenant, &id)?.state.is_terminal();
            state.store.events_since(&tenant, &id, after, EVENTS_PER_READ).map(|events| (done, events))
        });
        let (done, events) = match read {
            Ok(read) => read,
            Err(e) => {
                let _ = tx.send(Err(Status::from(e))).await;
                return;
            }
        };
        let full_page = events.len() == EVENTS_PER_READ as usize;
        for e in events {
            after = e.seq;
            if tx.send(Ok(event(e))).await.is_err() {
                return; // the client hung up
            }
        }
        if full_page {
            continue; // more are stored: read on before waiting (a long job has one event per step)
        }
        if done {
            return;
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = &mut stopping => {
                    // Not a clean end: that would say the job is over. The client resumes with after_seq.
                    let _ = tx.send(Err(Status::unavailable(format!("the daemon is stopping; watch again with after_seq = {after}")))).await;
                    return;
                }
                _ = recheck.tick() => break,
                notice = notices.recv() => match notice {
                    Ok(job) if job == id => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return, // no sender: cannot happen while this task holds the store
                },
            }
        }
    }
}

/// Resolves when the daemon starts to stop.
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

fn event(e: JobEvent) -> pb::JobEvent {
    let detail = detail(&e.kind, &serde_json::from_str(&e.payload_json).unwrap_or_default());
    pb::JobEvent { seq: e.seq, job_id: e.job.as_str().to_string(), kind: e.kind, payload_json: e.payload_json, at_unix_ms: e.at_unix_ms, detail }
}

/// The typed form of a stored event's payload (fields an older event lacks are 0 or empty).
fn detail(kind: &str, p: &serde_json::Value) -> Option<pb::job_event::Detail> {
    use pb::job_event::Detail;
    let count = |field: &str| p[field].as_u64().unwrap_or(0);
    let real = |field: &str| p[field].as_f64().unwrap_or(0.0);
    let resumed = || pb::JobResumed {
        steps_done: count("steps_done"),
        daemon_id: p["daemon"].as_str().unwrap_or_default().to_string(),
        lease_expired: p["lease_expired"].as_bool().unwrap_or(false),
    };
    Some(match kind {
        "created" => Detail::Created(pb::JobCreated {
            dataset_id: p["dataset"].as_str().unwrap_or_default().to_string(),
            noise_multiplier: real("noise_multiplier"),
            sample_rate: real("sample_rate"),
            steps_planned: count("steps_planned"),
            committed_epsilon: real("committed_epsilon"),
            budget_epsilon: real("budget_epsilon"),
            budget_delta: real("budget_delta"),
        }),
        "started" => Detail::Started(resumed()),
        "interrupted" => Detail::Interrupted(resumed()),
        "cancel_requested" => Detail::CancelRequested(resumed()),
        "progress" => Detail::Progress(pb::JobProgress { step: count("step"), total_steps: count("total_steps"), epsilon_spent: real("epsilon_spent") }),
        "succeeded" | "failed" | "cancelled" => Detail::Ended(pb::JobEnded {
            reason: p["reason"].as_str().unwrap_or_default().to_string(),
            steps_done: count("steps_done"),
            steps_released: count("steps_released"),
        }),
        _ => return None,
    })
}
