//! The privacy-budget ledger of each dataset: admission control and the budget report.
//!
//! The ledger is not a table of its own: it is derived from the dataset's jobs, whose plans are
//! fixed and whose progress only grows (the schema enforces both, see `0001_init.sql`).
//!
//! * spent — every job's `(noise_multiplier, sample_rate, steps_done)`, whatever its state;
//! * reserved — `(noise_multiplier, sample_rate, steps_planned - steps_done)` of each queued or
//!   running job; a finished job releases its reservation and keeps only its spend;
//! * committed — spent plus reserved, composed into one heterogeneous [`History`].
//!
//! Every number stated as a guarantee is the certified PLD accountant's `bounds.upper` at the
//! dataset's `budget_delta` (docs/accounting.md). Admission composes the committed
//! history with the new job's full plan and refuses it when that epsilon exceeds the budget. The
//! Edgeworth accountant appears only in the report, labelled as an estimate.
//!
//! A report is also a statement the daemon signs, so that an old one cannot pass for the
//! current one: it names the tenant and dataset, the time it was issued (`issued_at_unix_ms`,
//! unix milliseconds UTC: an integer, like every other time ewtune stores or sends) and a
//! `sequence` number, per dataset, that is never handed out twice and grows with every report a
//! daemon issues, also across its restarts. The snapshot of the ledger and the number are taken
//! under one lock, so a larger number never describes an older ledger.
//!
//! Numbers are reserved durably in blocks of [`SEQUENCE_BLOCK`]: a `BEGIN IMMEDIATE`
//! transaction raises the dataset's `report_sequences.last_seq` by a block and the store hands
//! the block out from memory. A per-report durable write would put an fsync (4 ms median on the
//! development machine's disk) and every training write ahead of it on Budget.Get, the API's
//! most frequent call. The price: a restart skips the rest of its block (numbers are never
//! repeated, but may jump), and two daemons serving one file hand out numbers from different
//! blocks, unique but not in time order between them.
//!
//! What this module does not own: the math (crate `ewtune-accountant`), the job state
//! machine (`jobs.rs`) and the signature (`service/signing.rs`).

use super::datasets::{self, Dataset, DatasetId, PrivacyUnit};
use crate::artifacts::OutputFile;
use super::error::{Result, StoreError};
use super::jobs::{self, Job, JobId, JobState};
use super::tokens::TenantId;
use super::{now_ms, Store};
use ewtune_accountant::edgeworth::{self, Order};
use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::{History, StepGroup};
use rusqlite::{params, Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::PoisonError;

/// The budget of one dataset, what is spent and committed, and each job's part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetReport {
    /// The tenant the report is issued to (the dataset's owner).
    pub tenant: TenantId,
    /// The dataset.
    pub dataset: DatasetId,
    /// This report's number among the dataset's reports: never repeated, and larger for a later
    /// report of the same daemon (numbers may jump, see the module doc).
    pub sequence: u64,
    /// When the report was issued: unix milliseconds, UTC.
    pub issued_at_unix_ms: i64,
    /// What one privacy unit is.
    pub privacy_unit: PrivacyUnit,
    /// Number of privacy units N.
    pub units: u64,
    /// The epsilon budget.
    pub budget_epsilon: f64,
    /// The delta at which every epsilon of this report is stated.
    pub budget_delta: f64,
    /// Certified epsilon (PLD upper bound) of every step done so far; 0 if none.
    pub spent_epsilon: f64,
    /// Certified epsilon of every step done plus every step still reserved by queued and
    /// running jobs: what admission compares with the budget; 0 if none.
    pub committed_epsilon: f64,
    /// `budget_epsilon - committed_epsilon`, at least 0. Not additive: a new job's cost is its
    /// composition with the committed history, which admission computes.
    pub remaining_epsilon: f64,
    /// ESTIMATE ONLY, never a guarantee: the Edgeworth accountant's epsilon of the spent
    /// history (0 if nothing is spent; `None` where the expansion gives no finite value).
    pub spent_epsilon_edgeworth_estimate: Option<f64>,
    /// Every step done, as `(noise_multiplier, sample_rate, steps)` groups in job order.
    pub spent_history: History,
    /// One row per job, oldest first.
    pub jobs: Vec<JobLedgerRow>,
}

/// One job's part of its dataset's ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobLedgerRow {
    /// The job.
    pub job: JobId,
    /// Its state.
    pub state: JobState,
    /// Noise multiplier of its steps.
    pub noise_multiplier: f64,
    /// Sampling rate of its steps.
    pub sample_rate: f64,
    /// Steps planned.
    pub steps_planned: u64,
    /// Steps done (spent).
    pub steps_done: u64,
    /// Steps still reserved (0 once finished).
    pub steps_reserved: u64,
    /// Certified epsilon of this job's spent steps alone (0 if none).
    pub epsilon_alone: f64,
    /// The files a succeeded job handed over (its output model: path, size, SHA-256), as
    /// recorded when it succeeded and as `Jobs.GetArtifacts` streams them; absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputFile>,
}

/// Report numbers reserved per durable write (see the module doc).
pub(crate) const SEQUENCE_BLOCK: u64 = 1024;

/// A report's number and time.
struct Issue {
    sequence: u64,
    issued_at_unix_ms: i64,
}

/// The report numbers a store has reserved and not handed out yet, per (tenant, dataset).
#[derive(Debug, Default)]
pub(crate) struct ReportNumbers(HashMap<(TenantId, DatasetId), Block>);

/// `next..=last` are reserved and unused.
#[derive(Debug)]
struct Block {
    next: u64,
    last: u64,
}

impl ReportNumbers {
    /// The dataset's next number, reserving a new block first when this store has none left.
    fn take(&mut self, store: &Store, dataset: &Dataset) -> Result<u64> {
        let block = self.0.entry((dataset.tenant.clone(), dataset.id.clone())).or_insert(Block { next: 1, last: 0 });
        if block.next > block.last {
            let last = reserve_block(store, dataset)?;
            *block = Block { next: last + 1 - SEQUENCE_BLOCK, last };
        }
        let n = block.next;
        block.next += 1;
        Ok(n)
    }
}

/// Raises the dataset's `last_seq` by [`SEQUENCE_BLOCK`] in one `BEGIN IMMEDIATE` transaction
/// and returns the new value: the numbers `last - SEQUENCE_BLOCK + 1 ..= last` are this store's.
fn reserve_block(store: &Store, dataset: &Dataset) -> Result<u64> {
    let mut conn = store.conn();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let block = super::to_sql_count("sequence", SEQUENCE_BLOCK)?;
    let last: u64 = tx.query_row(
        "INSERT INTO report_sequences (tenant, dataset, last_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (tenant, dataset) DO UPDATE SET last_seq = last_seq + ?3
         RETURNING last_seq",
        params![dataset.tenant, dataset.id, block],
        |row| row.get("last_seq"),
    )?;
    tx.commit()?;
    Ok(last)
}

impl Store {
    /// Issues the budget report of the tenant's dataset (`NotFound` if absent or another
    /// tenant's), with the dataset's next sequence number. The snapshot and the number are
    /// taken under one lock; the accounting runs after it is released.
    pub fn budget_report(&self, tenant: &TenantId, dataset: &DatasetId) -> Result<BudgetReport> {
        let mut numbers = self.report_numbers.lock().unwrap_or_else(PoisonError::into_inner);
        let (dataset, jobs, outputs) = {
            let mut conn = self.reader();
            let tx = conn.transaction()?;
            let dataset = datasets::load(&tx, tenant, dataset)?;
            let jobs = jobs::for_dataset(&tx, tenant, &dataset.id)?;
            let outputs = jobs::outputs_for_dataset(&tx, tenant, &dataset.id)?;
            tx.commit()?;
            (dataset, jobs, outputs)
        };
        let issue = Issue { sequence: numbers.take(self, &dataset)?, issued_at_unix_ms: now_ms() };
        drop(numbers);
        report(&dataset, &jobs, outputs, issue)
    }

    /// The epsilon left in the tenant's dataset's budget, as its next budget report would
    /// state it, without issuing a report (nothing is written).
    pub fn remaining_epsilon(&self, tenant: &TenantId, dataset: &DatasetId) -> Result<f64> {
        let (dataset, jobs) = self.ledger_snapshot(tenant, dataset)?;
        let committed = certified_epsilon(&committed_history(&jobs)?, dataset.budget_delta)?;
        Ok(remaining(&dataset, committed))
    }

    /// The dataset and its jobs, read in one transaction of the read-only connection.
    fn ledger_snapshot(&self, tenant: &TenantId, dataset: &DatasetId) -> Result<(Dataset, Vec<Job>)> {
        let mut conn = self.reader();
        let tx = conn.transaction()?;
        let dataset = datasets::load(&tx, tenant, dataset)?;
        let jobs = jobs::for_dataset(&tx, tenant, &dataset.id)?;
        tx.commit()?;
        Ok((dataset, jobs))
    }
}

/// `budget_epsilon - committed_epsilon`, at least 0.
fn remaining(dataset: &Dataset, committed_epsilon: f64) -> f64 {
    (dataset.budget_epsilon - committed_epsilon).max(0.0)
}

fn report(dataset: &Dataset, jobs: &[Job], mut outputs: HashMap<JobId, Vec<OutputFile>>, issue: Issue) -> Result<BudgetReport> {
    let delta = dataset.budget_delta;
    let spent = spent_history(jobs)?;
    let spent_epsilon = certified_epsilon(&spent, delta)?;
    let committed_epsilon = certified_epsilon(&committed_history(jobs)?, delta)?;
    let spent_epsilon_edgeworth_estimate = if spent.is_empty() {
        Some(0.0)
    } else {
        Some(edgeworth::epsilon(&spent, delta, Order::DEFAULT)?.estimate).filter(|e| e.is_finite())
    };
    let rows = jobs
        .iter()
        .map(|job| {
            Ok(JobLedgerRow {
                job: job.id.clone(),
                state: job.state,
                noise_multiplier: job.noise_multiplier,
                sample_rate: job.sample_rate,
                steps_planned: job.steps_planned,
                steps_done: job.steps_done,
                steps_reserved: job.steps_reserved(),
                epsilon_alone: job.certified_epsilon_spent(delta)?,
                outputs: outputs.remove(&job.id).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(BudgetReport {
        tenant: dataset.tenant.clone(),
        dataset: dataset.id.clone(),
        sequence: issue.sequence,
        issued_at_unix_ms: issue.issued_at_unix_ms,
        privacy_unit: dataset.privacy_unit,
        units: dataset.units,
        budget_epsilon: dataset.budget_epsilon,
        budget_delta: delta,
        spent_epsilon,
        committed_epsilon,
        remaining_epsilon: remaining(dataset, committed_epsilon),
        spent_epsilon_edgeworth_estimate,
        spent_history: spent,
        jobs: rows,
    })
}

/// Admission control, inside the caller's `BEGIN IMMEDIATE` transaction: composes the dataset's
/// committed history with `plan` and returns its certified epsilon if it is within the budget,
/// else [`StoreError::BudgetExceeded`].
pub(crate) fn admit(conn: &Connection, dataset: &Dataset, plan: StepGroup) -> Result<f64> {
    let jobs = jobs::for_dataset(conn, &dataset.tenant, &dataset.id)?;
    let committed = committed_history(&jobs)?;
    let mut requested = committed.clone();
    requested.compose(plan.noise_multiplier, plan.sample_rate, plan.steps)?;
    let requested_epsilon = certified_epsilon(&requested, dataset.budget_delta)?;
    if requested_epsilon > dataset.budget_epsilon {
        return Err(StoreError::BudgetExceeded {
            dataset: dataset.id.clone(),
            requested_epsilon,
            committed_epsilon: certified_epsilon(&committed, dataset.budget_delta)?,
            budget_epsilon: dataset.budget_epsilon,
        });
    }
    Ok(requested_epsilon)
}

/// Every job's steps done, in job order.
fn spent_history(jobs: &[Job]) -> Result<History> {
    compose(jobs.iter().map(|job| (job, job.steps_done)))
}

/// Every job's steps done plus, for queued and running jobs, the rest of their plan.
fn committed_history(jobs: &[Job]) -> Result<History> {
    compose(jobs.iter().map(|job| (job, job.steps_done + job.steps_reserved())))
}

fn compose<'a>(parts: impl Iterator<Item = (&'a Job, u64)>) -> Result<History> {
    let mut history = History::new();
    for (job, steps) in parts.filter(|(_, steps)| *steps > 0) {
        history.compose(job.noise_multiplier, job.sample_rate, steps)?;
    }
    Ok(history)
}

/// The certified epsilon (PLD upper bound) of `history` at `delta`; 0 for an empty history.
fn certified_epsilon(history: &History, delta: f64) -> Result<f64> {
    if history.is_empty() {
        return Ok(0.0);
    }
    Ok(PldAccountant::default().epsilon(history, delta)?.bounds.upper)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{count_rows, new_dataset, new_job, Fixture};
    use super::*;

    fn pld(history: &History, delta: f64) -> f64 {
        PldAccountant::default().epsilon(history, delta).unwrap().bounds.upper
    }

    #[test]
    fn admission_accepts_until_the_budget_and_refusal_writes_nothing() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 2.0)).unwrap();
        let (sigma, q, steps) = (1.0, 0.02, 100);
        let one_job = pld(&History::homogeneous(sigma, q, steps).unwrap(), d.budget_delta);
        assert!(one_job < d.budget_epsilon, "the test needs at least one job to fit: {one_job}");

        let mut accepted = Vec::new();
        let refusal = loop {
            match fx.store.create_job(&acme, new_job(&d.id, sigma, q, steps)) {
                Ok(job) => accepted.push(job),
                Err(e) => break e,
            }
            assert!(accepted.len() < 100, "the budget never ran out");
        };
        let n = accepted.len() as u64;
        assert!(n >= 2, "{n}");
        let fitted = pld(&History::homogeneous(sigma, q, n * steps).unwrap(), d.budget_delta);
        let one_more = pld(&History::homogeneous(sigma, q, (n + 1) * steps).unwrap(), d.budget_delta);
        assert!(fitted <= d.budget_epsilon && one_more > d.budget_epsilon, "{fitted} {one_more}");
        match refusal {
            StoreError::BudgetExceeded { dataset, requested_epsilon, committed_epsilon, budget_epsilon } => {
                assert_eq!(dataset, d.id);
                assert_eq!(requested_epsilon, one_more);
                assert_eq!(committed_epsilon, fitted);
                assert_eq!(budget_epsilon, d.budget_epsilon);
            }
            other => panic!("expected BudgetExceeded, got {other:?}"),
        }

        // A refusal writes nothing: same rows before and after another refused attempt.
        let rows = |fx: &Fixture| (count_rows(&fx.store, "jobs"), count_rows(&fx.store, "job_events"));
        let before = rows(&fx);
        assert_eq!(before, (n as i64, n as i64));
        let err = fx.store.create_job(&acme, new_job(&d.id, sigma, q, steps)).unwrap_err();
        assert!(matches!(err, StoreError::BudgetExceeded { .. }), "{err:?}");
        assert_eq!(rows(&fx), before);

        let report = fx.store.budget_report(&acme, &d.id).unwrap();
        assert_eq!(report.committed_epsilon, fitted);
        assert_eq!(report.spent_epsilon, 0.0);
        assert_eq!(report.remaining_epsilon, d.budget_epsilon - fitted);
        assert!(report.spent_history.is_empty());
        assert_eq!(report.spent_epsilon_edgeworth_estimate, Some(0.0));

        // A noisier, shorter job may still fit in what is left.
        let small = fx.store.create_job(&acme, new_job(&d.id, 20.0, q, 1));
        assert!(small.is_ok(), "{small:?}");
    }

    #[test]
    fn the_ledger_counts_exactly_the_steps_done_and_releases_the_rest() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        // A budget that holds one job of 120 steps plus 17 spent steps, but not two such jobs.
        let eps = |steps| pld(&History::homogeneous(1.0, 0.02, steps).unwrap(), 1e-5);
        let budget = 0.5 * (eps(17 + 120) + eps(2 * 120));
        let d = fx.store.register_dataset(&acme, new_dataset(1, budget)).unwrap();
        let delta = d.budget_delta;
        let big = new_job(&d.id, 1.0, 0.02, 120);
        let a = fx.store.create_job(&acme, big.clone()).unwrap();
        let err = fx.store.create_job(&acme, big.clone()).unwrap_err();
        assert!(matches!(err, StoreError::BudgetExceeded { .. }), "the full plan is reserved: {err:?}");

        fx.store.claim_next_queued().unwrap();
        fx.store.record_progress(&a.id, 17, 0.3).unwrap();
        fx.store.finish_job(&a.id, JobState::Failed, Some("NaN loss".into())).unwrap();

        let report = fx.store.budget_report(&acme, &d.id).unwrap();
        assert_eq!(report.spent_history.groups(), &[StepGroup { noise_multiplier: 1.0, sample_rate: 0.02, steps: 17 }]);
        let spent = pld(&History::homogeneous(1.0, 0.02, 17).unwrap(), delta);
        assert_eq!(report.spent_epsilon, spent);
        assert_eq!(report.committed_epsilon, spent, "the failed job's unspent steps were released");
        assert_eq!(report.jobs[0].steps_reserved, 0);
        assert_eq!(report.jobs[0].epsilon_alone, spent);

        // The released reservation makes room for the same job again.
        let b = fx.store.create_job(&acme, big).unwrap();
        let report = fx.store.budget_report(&acme, &d.id).unwrap();
        assert_eq!(report.spent_history.total_steps(), 17);
        assert_eq!(report.committed_epsilon, pld(&History::homogeneous(1.0, 0.02, 17 + 120).unwrap(), delta));
        assert_eq!(
            report.jobs.iter().map(|r| (&r.job, r.steps_reserved)).collect::<Vec<_>>(),
            [(&a.id, 0), (&b.id, 120)]
        );
    }

    #[test]
    fn concurrent_admission_through_two_connections_never_overspends() {
        // Two daemons on one file: BEGIN IMMEDIATE serialises admission across connections.
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 2.0)).unwrap();
        let (sigma, q, steps) = (1.0, 0.02, 50);
        let fits =
            |k: u64| pld(&History::homogeneous(sigma, q, k * steps).unwrap(), d.budget_delta) <= d.budget_epsilon;
        let capacity = (1..).take_while(|&k| fits(k)).count();
        assert!((2..20).contains(&capacity), "{capacity}");

        let other = Store::open(fx.store.path()).unwrap();
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = [&fx.store, &other]
                .into_iter()
                .map(|store| {
                    let (acme, id) = (acme.clone(), d.id.clone());
                    scope.spawn(move || {
                        (0..capacity)
                            .filter(|_| match store.create_job(&acme, new_job(&id, sigma, q, steps)) {
                                Ok(_) => true,
                                Err(StoreError::BudgetExceeded { .. }) => false,
                                Err(e) => panic!("{e:?}"),
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, capacity);
        assert_eq!(count_rows(&fx.store, "jobs"), capacity as i64);
        assert!(fx.store.budget_report(&acme, &d.id).unwrap().committed_epsilon <= d.budget_epsilon);
    }

    #[test]
    fn each_report_takes_the_next_number_of_its_own_dataset() {
        let fx = Fixture::new();
        let (acme, globex) = (fx.tenant("acme"), fx.tenant("globex"));
        let a1 = fx.store.register_dataset(&acme, new_dataset(1, 8.0)).unwrap();
        let a2 = fx.store.register_dataset(&acme, new_dataset(2, 8.0)).unwrap();
        // The same bytes under another tenant: another dataset, its own numbers.
        let g1 = fx.store.register_dataset(&globex, new_dataset(1, 8.0)).unwrap();
        assert_eq!(a1.id, g1.id);
        let seq = |store: &Store, t: &TenantId, d: &DatasetId| store.budget_report(t, d).unwrap().sequence;
        assert_eq!([seq(&fx.store, &acme, &a1.id), seq(&fx.store, &acme, &a1.id), seq(&fx.store, &acme, &a1.id)], [1, 2, 3]);
        assert_eq!(seq(&fx.store, &acme, &a2.id), 1);
        assert_eq!(seq(&fx.store, &globex, &g1.id), 1);
        assert_eq!(seq(&fx.store, &acme, &a1.id), 4);
        assert_eq!(seq(&fx.store, &globex, &g1.id), 2);

        // A refused read takes no number and writes nothing.
        let err = fx.store.budget_report(&globex, &a2.id).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "dataset", .. }), "{err:?}");
        assert_eq!(count_rows(&fx.store, "report_sequences"), 3);

        // The report says whose, which and when.
        let before = super::super::now_ms();
        let r = fx.store.budget_report(&acme, &a2.id).unwrap();
        let after = super::super::now_ms();
        assert_eq!((&r.tenant, &r.dataset, r.sequence), (&acme, &a2.id, 2));
        assert!((before..=after).contains(&r.issued_at_unix_ms), "{before} <= {} <= {after}", r.issued_at_unix_ms);
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!((json["tenant"].as_str(), json["sequence"].as_u64()), (Some("acme"), Some(2)));
        assert_eq!(json["issued_at_unix_ms"].as_i64(), Some(r.issued_at_unix_ms));

        // One durable write per block: the row holds the block's end, not each number.
        let stored = |fx: &Fixture| -> i64 {
            fx.store.conn().query_row("SELECT last_seq FROM report_sequences WHERE tenant = 'acme' AND dataset = ?1", [&a1.id], |r| r.get("last_seq")).unwrap()
        };
        assert_eq!(stored(&fx), SEQUENCE_BLOCK as i64);

        // A restarted daemon goes on above everything the last one could have handed out.
        let fx = fx.reopen();
        assert_eq!(seq(&fx.store, &acme, &a1.id), SEQUENCE_BLOCK + 1);
        assert_eq!(seq(&fx.store, &acme, &a1.id), SEQUENCE_BLOCK + 2);
        assert_eq!(stored(&fx), 2 * SEQUENCE_BLOCK as i64);

        // A block runs out: the next one follows it.
        for expected in SEQUENCE_BLOCK + 3..=2 * SEQUENCE_BLOCK + 1 {
            assert_eq!(seq(&fx.store, &acme, &a1.id), expected);
        }
        assert_eq!(stored(&fx), 3 * SEQUENCE_BLOCK as i64);

        // Two daemons on one file never hand out the same number, and each one's grow.
        let other = Store::open(fx.store.path()).unwrap();
        let per_store: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = [&fx.store, &other]
                .into_iter()
                .map(|store| {
                    let (acme, id) = (acme.clone(), a1.id.clone());
                    scope.spawn(move || (0..40).map(|_| seq(store, &acme, &id)).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(per_store.iter().all(|numbers| numbers.windows(2).all(|w| w[0] < w[1])), "{per_store:?}");
        let mut all: Vec<u64> = per_store.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 80, "a number was handed out twice");
        assert!(all[0] > 2 * SEQUENCE_BLOCK + 1);
    }

    #[test]
    fn remaining_epsilon_is_the_reports_and_issues_nothing() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 3.0)).unwrap();
        assert_eq!(fx.store.remaining_epsilon(&acme, &d.id).unwrap(), 3.0);
        fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.02, 100)).unwrap();
        let remaining = fx.store.remaining_epsilon(&acme, &d.id).unwrap();
        assert_eq!(count_rows(&fx.store, "report_sequences"), 0);
        let report = fx.store.budget_report(&acme, &d.id).unwrap();
        assert_eq!(remaining, report.remaining_epsilon);
        assert!(remaining < 3.0);
        assert!(matches!(fx.store.remaining_epsilon(&fx.tenant("globex"), &d.id), Err(StoreError::NotFound { .. })));
    }

    #[test]
    fn heterogeneous_report_matches_the_accountant_composed_by_hand() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 8.0)).unwrap();
        let delta = d.budget_delta;
        let a = fx.store.create_job(&acme, new_job(&d.id, 1.1, 0.01, 300)).unwrap();
        let b = fx.store.create_job(&acme, new_job(&d.id, 0.8, 0.05, 50)).unwrap();
        let c = fx.store.create_job(&acme, new_job(&d.id, 2.0, 0.1, 80)).unwrap();
        for _ in 0..3 {
            fx.store.claim_next_queued().unwrap();
        }
        fx.store.record_progress(&a.id, 300, 0.0).unwrap();
        fx.store.finish_job(&a.id, JobState::Succeeded, None).unwrap();
        fx.store.record_progress(&b.id, 20, 0.0).unwrap();
        fx.store.record_progress(&c.id, 10, 0.0).unwrap();
        fx.store.request_cancel(&acme, &c.id).unwrap();
        fx.store.finish_job(&c.id, JobState::Cancelled, None).unwrap();

        let report = fx.store.budget_report(&acme, &d.id).unwrap();
        let spent = History::from_groups([
            StepGroup { noise_multiplier: 1.1, sample_rate: 0.01, steps: 300 },
            StepGroup { noise_multiplier: 0.8, sample_rate: 0.05, steps: 20 },
            StepGroup { noise_multiplier: 2.0, sample_rate: 0.1, steps: 10 },
        ])
        .unwrap();
        let mut committed = History::new();
        committed.compose(1.1, 0.01, 300).unwrap();
        committed.compose(0.8, 0.05, 50).unwrap(); // b: 20 done + 30 reserved
        committed.compose(2.0, 0.1, 10).unwrap(); // c: cancelled, only its steps done
        assert_eq!(report.spent_history, spent);
        assert_eq!(report.spent_epsilon, pld(&spent, delta));
        assert_eq!(report.committed_epsilon, pld(&committed, delta));
        assert!(report.spent_epsilon < report.committed_epsilon && report.committed_epsilon < d.budget_epsilon);
        assert_eq!(report.remaining_epsilon, d.budget_epsilon - report.committed_epsilon);
        let estimate = edgeworth::epsilon(&spent, delta, Order::DEFAULT).unwrap().estimate;
        assert_eq!(report.spent_epsilon_edgeworth_estimate, Some(estimate));
        assert!(
            (estimate - report.spent_epsilon).abs() < 0.25 * report.spent_epsilon,
            "{estimate} vs {}",
            report.spent_epsilon
        );
        let alone: Vec<f64> = report.jobs.iter().map(|r| r.epsilon_alone).collect();
        assert_eq!(
            alone,
            [
                pld(&History::homogeneous(1.1, 0.01, 300).unwrap(), delta),
                pld(&History::homogeneous(0.8, 0.05, 20).unwrap(), delta),
                pld(&History::homogeneous(2.0, 0.1, 10).unwrap(), delta),
            ]
        );
        // Composition costs less than the sum of its parts, and more than any one part.
        assert!(report.spent_epsilon < alone.iter().sum::<f64>());
        assert!(alone.iter().all(|&e| e < report.spent_epsilon));
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<BudgetReport>(&json).unwrap(), report);
    }
}
