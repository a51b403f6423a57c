//! The bounded pool for request-driven CPU work (accountant calibration and composition, dataset
//! parsing and hashing), so that no request can occupy the async runtime's workers: the health
//! check and every other call keep being answered while it runs.
//!
//! * A fixed number of threads (rayon), each at lower scheduling priority than the runtime's
//!   workers, so the API's own threads get the CPU first on a busy machine.
//! * A bounded number of tasks admitted at once (running plus queued) and at most
//!   [`PER_TENANT`] per tenant: past either, the call is ResourceExhausted at once, naming the
//!   limit. A tenant runs on at most all threads but one (one thread on a two-core machine), so
//!   one tenant's long calibrations cannot keep everybody else's plans waiting.
//! * The client's deadline (`grpc-timeout`, read by `api/deadline.rs`, capped by the daemon's
//!   own [`MAX_WORK`]): waiting for a slot stops at the deadline. When the caller goes
//!   (deadline passed, client hung up), its admission is freed at once and its result
//!   dropped: a task not yet started is skipped, one already running finishes (every input was
//!   range-checked first, so it is bounded) but keeps only its thread and its tenant's running
//!   share, so one tenant's abandoned work never holds more of the pool than its own share.

use super::error::{Kind, ServiceError};
use super::tenant_slots::{TenantSlot, TenantSlots};
use crate::store::TenantId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Tasks one tenant may have admitted at once.
pub const PER_TENANT: usize = 4;
/// Tasks admitted per pool thread (one running, the rest queued).
const ADMITTED_PER_THREAD: usize = 8;
/// The longest a request may wait for and run CPU work when its client sets no deadline.
pub const MAX_WORK: Duration = Duration::from_secs(120);
/// Nice value of the pool's threads (the runtime's workers run at 0, training at 10).
const POOL_NICENESS: i32 = 5;

/// The pool.
pub struct CpuPool {
    threads: rayon::ThreadPool,
    admitted: Arc<tokio::sync::Semaphore>,
    capacity: usize,
    admitted_per_tenant: Arc<TenantSlots>,
    /// Each tenant's running share, created on its first task and kept (one small entry per
    /// tenant the store knows): a task abandoned while running still holds its permit, so the
    /// tenant's next task can never be given a fresh share beside it.
    running: Mutex<HashMap<TenantId, Arc<tokio::sync::Semaphore>>>,
    running_per_tenant: usize,
}

/// A task's admission (its place in the pool and in its tenant's share), freed by whichever
/// comes first: the task's end, or its caller going away.
type Admission = Arc<Mutex<Option<(tokio::sync::OwnedSemaphorePermit, TenantSlot)>>>;

fn free(admission: &Admission) {
    drop(admission.lock().unwrap_or_else(PoisonError::into_inner).take());
}

/// When the awaiting request goes away (answered, past its deadline, or dropped): marks the task
/// abandoned and frees its admission.
struct AbandonOnDrop(Arc<AtomicBool>, Admission);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        free(&self.1);
    }
}

impl CpuPool {
    /// A pool of `threads` threads.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ewtune-cpu-{i}"))
            .start_handler(|_| super::lower_thread_priority(POOL_NICENESS))
            .build()
            .map_err(std::io::Error::other)?;
        let capacity = threads * ADMITTED_PER_THREAD;
        Ok(CpuPool {
            threads: pool,
            admitted: Arc::new(tokio::sync::Semaphore::new(capacity)),
            capacity,
            admitted_per_tenant: TenantSlots::new(PER_TENANT),
            running: Mutex::default(),
            running_per_tenant: (threads - 1).max(1),
        })
    }

    /// Runs `work` for `tenant` on the pool before `deadline`. ResourceExhausted when the pool
    /// or the tenant's share is full, DeadlineExceeded when the deadline passes first; a panic
    /// in `work` is Internal (logged).
    pub async fn run<T: Send + 'static>(&self, tenant: &TenantId, deadline: Instant, work: impl FnOnce() -> T + Send + 'static) -> Result<T, ServiceError> {
        let tenant_slot = self.admitted_per_tenant.try_open(tenant).ok_or_else(|| {
            ServiceError::new(Kind::ResourceExhausted, format!("this tenant already has {PER_TENANT} plans, uploads or report pages being computed; retry when one finishes"))
        })?;
        let running = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            running.entry(tenant.clone()).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.running_per_tenant))).clone()
        };
        let permit = match self.admitted.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                return Err(ServiceError::new(Kind::ResourceExhausted, format!(
                    "the daemon is computing {} plans, uploads or report pages already; retry shortly",
                    self.capacity
                )))
            }
        };
        let deadline_passed = || ServiceError::new(Kind::DeadlineExceeded, "the deadline passed before the computation could start");
        let run_permit = match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), running.acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(ServiceError::new(Kind::Internal, "the CPU pool is closed")),
            Err(_) => return Err(deadline_passed()),
        };
        let abandoned = Arc::new(AtomicBool::new(false));
        let admission: Admission = Arc::new(Mutex::new(Some((permit, tenant_slot))));
        let guard = AbandonOnDrop(abandoned.clone(), admission.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.threads.spawn(move || {
            let _running = run_permit;
            if abandoned.load(Ordering::Relaxed) {
                return; // the caller is gone: skip the work
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            free(&admission); // the slots are free before the caller sees the result
            let _ = tx.send(result);
        });
        let result = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), rx).await;
        drop(guard);
        match result {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(panic))) => {
                let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                tracing::error!(panic = %msg, "request work panicked");
                Err(ServiceError::new(Kind::Internal, "the daemon failed while computing this request; see its log"))
            }
            Ok(Err(_)) => Err(ServiceError::new(Kind::Internal, "the computation ended without a result")),
            Err(_) => Err(ServiceError::new(Kind::DeadlineExceeded, "the deadline passed before the computation finished")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tenant_share_and_deadlines_are_enforced() {
        let pool = Arc::new(CpuPool::new(1).unwrap());
        let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
        let release = Arc::new(AtomicBool::new(false));
        let far = Instant::now() + Duration::from_secs(30);
        let mut held = tokio::task::JoinSet::new();
        for _ in 0..PER_TENANT {
            let (r, p, a) = (release.clone(), pool.clone(), a.clone());
            held.spawn(async move { p.run(&a, far, move || while !r.load(Ordering::Relaxed) { std::thread::sleep(Duration::from_millis(1)) }).await });
        }
        while pool.admitted_per_tenant.open_for(&a) != PER_TENANT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = pool.run(&a, far, || ()).await.unwrap_err();
        assert_eq!(e.kind(), Some(Kind::ResourceExhausted), "{e:?}");
        // Another tenant is admitted, but the one thread is busy: its deadline passes.
        let e = pool.run(&b, Instant::now() + Duration::from_millis(100), || ()).await.unwrap_err();
        assert_eq!(e.kind(), Some(Kind::DeadlineExceeded), "{e:?}");
        // Its admission was freed at the deadline, though its task still waits in the queue.
        assert_eq!(pool.admitted_per_tenant.open_for(&b), 0);
        assert_eq!(pool.admitted.available_permits(), pool.capacity - PER_TENANT);
        release.store(true, Ordering::Relaxed);
        while let Some(r) = held.join_next().await {
            r.unwrap().unwrap();
        }
        // Every slot came back: the abandoned task was skipped, not leaked.
        assert_eq!(pool.run(&b, Instant::now() + Duration::from_secs(5), || 7).await.unwrap(), 7);
        assert_eq!(pool.admitted_per_tenant.open_total(), 0);
        assert_eq!(pool.admitted.available_permits(), pool.capacity);
    }

    /// A task abandoned while it runs keeps its tenant's running share: the tenant's next task
    /// waits for it (here past its deadline) though a thread is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_running_work_keeps_its_tenants_share() {
        let pool = CpuPool::new(2).unwrap(); // one thread per tenant at a time
        let a = TenantId::parse("a").unwrap();
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let e = pool.run(&a, Instant::now() + Duration::from_millis(100), move || while !r.load(Ordering::Relaxed) { std::thread::sleep(Duration::from_millis(1)) }).await.unwrap_err();
        assert_eq!(e.kind(), Some(Kind::DeadlineExceeded));
        assert_eq!(pool.admitted_per_tenant.open_for(&a), 0, "its admission was freed");
        let e = pool.run(&a, Instant::now() + Duration::from_millis(200), || ()).await.unwrap_err();
        assert_eq!(e.kind(), Some(Kind::DeadlineExceeded), "{e:?}");
        release.store(true, Ordering::Relaxed);
        assert_eq!(pool.run(&a, Instant::now() + Duration::from_secs(5), || 7).await.unwrap(), 7);
    }
}
