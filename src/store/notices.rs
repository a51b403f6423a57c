//! PostgreSQL: job events committed by any daemon reach this daemon's watchers.
//!
//! A write that appends to a job's event log also runs `pg_notify('ewtune_job_events', id)`
//! (`jobs.rs`), which PostgreSQL delivers to every listening session when, and only if, that
//! transaction commits. [`Listener`] holds one session that `LISTEN`s on the channel, on its own
//! thread, and forwards each job id to the store's broadcast channel, the same one the daemon's
//! own commits feed: a Watch stream reads the shared event log whichever daemon runs the job.
//! A lost session is reopened (after a pause) and listens again; notices sent while it was
//! gone are lost, so watchers also re-read on a slow timer (`api/watch.rs`).

use super::db::outside_runtime;
use super::error::{Result, StoreError};
use super::jobs::JobId;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The notification channel of job events.
pub(crate) const CHANNEL: &str = "ewtune_job_events";

/// How long the listening thread waits for a notice before it checks whether to stop.
const POLL: Duration = Duration::from_millis(250);

/// How long it waits before reopening a lost session.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The listening session's thread; stopped and joined on drop.
#[derive(Debug)]
pub(crate) struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Opens the session now (a wrong URL fails at start-up) and starts the thread.
    pub(crate) fn start(config: postgres::Config, notices: tokio::sync::broadcast::Sender<JobId>) -> Result<Listener> {
        let client = listen(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ewtune-pg-listen".into())
            .spawn(move || forward(&config, client, &notices, &stopping))
            .map_err(|e| StoreError::Unavailable { reason: format!("cannot start the notice thread: {e}") })?;
        Ok(Listener { stop, thread: Some(thread) })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn listen(config: &postgres::Config) -> Result<postgres::Client> {
    outside_runtime(|| {
        let mut client = config.connect(postgres::NoTls).map_err(super::db::pg_error)?;
        client.batch_execute(&format!("LISTEN {CHANNEL}")).map_err(super::db::pg_error)?;
        Ok(client)
    })
}

fn forward(config: &postgres::Config, client: postgres::Client, notices: &tokio::sync::broadcast::Sender<JobId>, stop: &AtomicBool) {
    let mut session = Some(client);
    while !stop.load(Ordering::Relaxed) {
        let Some(client) = session.as_mut() else {
            std::thread::sleep(RECONNECT_PAUSE);
            match listen(config) {
                Ok(c) => {
                    tracing::info!("listening for job events again");
                    session = Some(c);
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for job events; retrying"),
            }
            continue;
        };
        let lost = drain(client, notices);
        if lost {
            session = None;
        }
    }
}

/// Forwards the notices that arrive within [`POLL`]; true when the session was lost.
fn drain(client: &mut postgres::Client, notices: &tokio::sync::broadcast::Sender<JobId>) -> bool {
    let mut received = client.notifications();
    let mut iter = received.timeout_iter(POLL);
    loop {
        match iter.next() {
            Ok(Some(notice)) => {
                if let Ok(id) = JobId::parse(notice.payload()) {
                    let _ = notices.send(id);
                }
            }
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "the job-event session was lost");
                return true;
            }
        }
    }
}
