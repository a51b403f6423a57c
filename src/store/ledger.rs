//! The privacy-budget ledger, kept per person: admission control and the budget report.
//!
//! The ledger is not a table of its own: it is derived from the jobs, whose plans are fixed and
//! whose progress only grows (the schema enforces both, see `0001_init.sql`), and from the
//! classes of privacy units (`units.rs`): the units found in exactly one set of the tenant's
//! datasets. A class's budget is every one of those datasets' budgets (the tighter binds), and
//! its history is every job on any of them:
//!
//! * spent — each such job's `(noise_multiplier, sample_rate, steps_done)`, whatever its state;
//! * reserved — `(noise_multiplier, sample_rate, steps_planned - steps_done)` of each queued or
//!   running one; a finished job releases its reservation and keeps only its spend;
//! * committed — spent plus reserved, composed into one heterogeneous [`History`].
//!
//! Every number stated as a guarantee is the certified PLD accountant's `bounds.upper`
//! (docs/accounting.md). Admission composes each class's committed history with the new job's
//! full plan and refuses the job if any class of its dataset's units would exceed any of its
//! budgets (each at its own delta); the refusal counts those units and finds the largest target
//! epsilon that would fit. The report lists the dataset's classes, worst first, and states the
//! worst as the dataset's. The accountant memoises per history, so classes with the same jobs
//! cost one composition. The Edgeworth accountant appears only in the report, labelled as an
//! estimate.
//!
//! A report is also a statement the daemon signs, so that an old one cannot pass for the
//! current one: it names the tenant and dataset, the time it was issued (`issued_at_unix_ms`,
//! unix milliseconds UTC: an integer, like every other time ewtune stores or sends) and a
//! `sequence` number, per dataset, that is never handed out twice and grows with every report a
//! daemon issues, also across its restarts. The snapshot of the ledger and the number are taken
//! under one lock, so a larger number never describes an older ledger.
//!
//! Numbers are reserved durably in blocks of [`SEQUENCE_BLOCK`]: one atomic upsert raises the
//! dataset's `report_sequences.last_seq` by a block and the store hands
//! the block out from memory. A per-report durable write would put an fsync (4 ms median on the
//! development machine's disk) and every training write ahead of it on Budget.Get, the API's
//! most frequent call. The price: a restart skips the rest of its block (numbers are never
//! repeated, but may jump), and several daemons on one database hand out numbers from different
//! blocks, unique but not in time order between them.
//!
//! Admission across daemons: every write that can raise what admission composes (a job
//! admitted, a dataset registered, units identified) locks the tenant's ledger ([`lock`]) and
//! raises its version ([`bump`]); `create_job` composes on a snapshot and inserts only if the
//! version it read is still the one under the lock.
//!
//! What this module does not own: the math (crate `ewtune-accountant`), the job state
//! machine (`jobs.rs`) and the signature (`service/signing.rs`).

use super::charts::{self, BudgetCharts};
use super::datasets::{self, Dataset, DatasetId, PrivacyUnit};
use super::error::{Result, StoreError};
use super::jobs::{self, Job, JobId, JobState};
use super::tokens::TenantId;
use super::units::{self, UnitClass, UnitIdentities};
use super::db::{args, Tx};
use super::{now_ms, Store};
use crate::artifacts::OutputFile;
use ewtune_accountant::edgeworth::{self, Order};
use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::{History, StepGroup};
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
    /// Whether the units' identities are known (the classes below need them).
    pub unit_identities: UnitIdentities,
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
    /// Every step done on the worst class's units, as `(noise_multiplier, sample_rate, steps)`
    /// groups in job order.
    pub spent_history: History,
    /// The dataset's units by the set of datasets they are in, worst first (least remaining).
    /// The spent, committed and remaining epsilons above are the worst class's: every unit of
    /// the dataset has at least that much left.
    pub classes: Vec<ClassLedger>,
    /// One row per job that spends any of the dataset's units' budget (jobs on this dataset,
    /// and on the tenant's other datasets that share units with it), oldest first.
    pub jobs: Vec<JobLedgerRow>,
    /// The data behind the report's charts, when asked for ([`Store::budget_report`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charts: Option<BudgetCharts>,
}

/// One job's part of its dataset's ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobLedgerRow {
    /// The job.
    pub job: JobId,
    /// The dataset it trains on.
    pub dataset: DatasetId,
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
    /// What the job's self-audit found (docs/self_audit.md), recorded when it ended: its
    /// goodness-of-fit tests, the one-run lower bounds beside the certified epsilon, the verdict.
    /// Absent for a job without one, or not ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_audit: Option<serde_json::Value>,
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

/// Raises the dataset's `last_seq` by [`SEQUENCE_BLOCK`] in one write (one statement: atomic on
/// both engines, so two daemons never get the same block) and returns the new value: the
/// numbers `last - SEQUENCE_BLOCK + 1 ..= last` are this store's.
fn reserve_block(store: &Store, dataset: &Dataset) -> Result<u64> {
    let block = super::to_sql_count("sequence", SEQUENCE_BLOCK)?;
    store.write(|tx| {
        tx.query_one(
            "INSERT INTO report_sequences (tenant, dataset, last_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant, dataset) DO UPDATE SET last_seq = report_sequences.last_seq + ?3
             RETURNING last_seq",
            args![dataset.tenant, dataset.id, block],
            |row| row.get("last_seq"),
        )
    })
}

/// The tenant's ledger version: it grows with every write that can raise what admission
/// composes (a job admitted, a dataset registered, units identified), so a decision made on a
/// snapshot still holds when the version is unchanged. 0 for an unknown tenant.
pub(crate) fn version(tx: &mut Tx<'_>, tenant: &TenantId) -> Result<i64> {
    Ok(tx.query_first("SELECT ledger_version FROM tenants WHERE name = ?1", args![tenant], |r| r.get("ledger_version"))?.unwrap_or(0))
}

/// Locks the tenant's ledger for the rest of this write and returns its version (`None`: no
/// such tenant). On SQLite the write already holds the file's lock; on PostgreSQL this locks
/// the tenant's row, so admissions and registrations of one tenant, from any daemon, take
/// turns, and other tenants never wait.
pub(crate) fn lock_if_known(tx: &mut Tx<'_>, tenant: &TenantId) -> Result<Option<i64>> {
    let sql = format!("SELECT ledger_version FROM tenants WHERE name = ?1{}", tx.dialect().for_update());
    tx.query_first(&sql, args![tenant], |r| r.get("ledger_version"))
}

/// [`lock_if_known`] for a tenant that has rows (0 when it has none: nothing to lock).
pub(crate) fn lock(tx: &mut Tx<'_>, tenant: &TenantId) -> Result<i64> {
    Ok(lock_if_known(tx, tenant)?.unwrap_or(0))
}

/// Raises the tenant's ledger version (the caller holds the lock).
pub(crate) fn bump(tx: &mut Tx<'_>, tenant: &TenantId) -> Result<()> {
    tx.execute("UPDATE tenants SET ledger_version = ledger_version + 1 WHERE name = ?1", args![tenant])?;
    Ok(())
}

impl Store {
    /// Issues the budget report of the tenant's dataset (`NotFound` if absent or another
    /// tenant's), with the dataset's next sequence number, and with the charts' data when
    /// `with_charts` (`charts.rs`: a composition per chart point, so only when asked). The
    /// snapshot and the number are taken under one lock; the accounting runs after it is
    /// released.
    pub fn budget_report(&self, tenant: &TenantId, dataset: &DatasetId, with_charts: bool) -> Result<BudgetReport> {
        let mut numbers = self.report_numbers.lock().unwrap_or_else(PoisonError::into_inner);
        let (scope, ended) = self.read(|tx| {
            let scope = Scope::load(tx, tenant, dataset)?;
            let mut ended = HashMap::new();
            for job in scope.jobs.iter().filter(|j| j.state.is_terminal()) {
                let outputs = if job.state == JobState::Succeeded { jobs::outputs_of(tx, &job.id)? } else { Vec::new() };
                ended.insert(job.id.clone(), (outputs, jobs::self_audit_of(tx, &job.id)?.map(|r| r.report)));
            }
            Ok((scope, ended))
        })?;
        let issue = Issue { sequence: numbers.take(self, &scope.dataset)?, issued_at_unix_ms: now_ms() };
        drop(numbers);
        report(&scope, ended, issue, with_charts)
    }

    /// What the tenant's dataset's people have left (its worst class, as its next budget report
    /// would state it) and which of them other datasets share, from one reading of the ledger,
    /// without issuing a report (nothing is written).
    pub fn units_left(&self, tenant: &TenantId, dataset: &DatasetId) -> Result<UnitsLeft> {
        let scope = self.scope(tenant, dataset)?;
        let ledgers = scope.ledgers()?;
        let shared: Vec<&ClassLedger> = ledgers.iter().filter(|c| c.datasets.len() > 1).collect();
        Ok(UnitsLeft {
            remaining_epsilon: ledgers.iter().map(|c| c.remaining_epsilon).fold(scope.dataset.budget_epsilon, f64::min),
            shared: SharedUnits {
                units: shared.iter().map(|c| c.units).sum(),
                least_remaining_epsilon: shared.iter().map(|c| c.remaining_epsilon).reduce(f64::min),
            },
        })
    }

    /// Every dataset of every tenant with its worst class's certified spent and remaining
    /// epsilon, as its next budget report would state them (for the operators' metrics; one
    /// composition per class, memoised by the accountant while nothing changes).
    pub fn dataset_spend(&self) -> Result<Vec<DatasetSpend>> {
        let ids: Vec<(TenantId, DatasetId)> =
            self.read(|tx| tx.query_map("SELECT tenant, sha256 FROM datasets ORDER BY tenant, created_at_ms", args![], |row| Ok((row.get("tenant")?, row.get("sha256")?))))?;
        let mut out = Vec::with_capacity(ids.len());
        for (tenant, dataset) in ids {
            let scope = self.scope(&tenant, &dataset)?;
            let ledgers = scope.ledgers()?;
            let worst = ledgers.first();
            out.push(DatasetSpend {
                spent_epsilon: worst.map_or(0.0, |w| w.spent_epsilon),
                remaining_epsilon: worst.map_or(scope.dataset.budget_epsilon, |w| w.remaining_epsilon),
                budget_epsilon: scope.dataset.budget_epsilon,
                tenant,
                dataset,
            });
        }
        Ok(out)
    }

    /// [`Store::units_left`]'s remaining epsilon.
    pub fn remaining_epsilon(&self, tenant: &TenantId, dataset: &DatasetId) -> Result<f64> {
        Ok(self.units_left(tenant, dataset)?.remaining_epsilon)
    }

    /// [`Store::units_left`]'s shared units: right after registering, the units the tenant had
    /// registered before.
    pub fn shared_units(&self, tenant: &TenantId, dataset: &DatasetId) -> Result<SharedUnits> {
        Ok(self.units_left(tenant, dataset)?.shared)
    }

    /// The dataset's scope, read in one transaction of the read-only connection.
    fn scope(&self, tenant: &TenantId, dataset: &DatasetId) -> Result<Scope> {
        self.read(|tx| Scope::load(tx, tenant, dataset))
    }
}

/// One dataset's spend ([`Store::dataset_spend`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpend {
    /// Its tenant.
    pub tenant: TenantId,
    /// The dataset.
    pub dataset: DatasetId,
    /// Its budget.
    pub budget_epsilon: f64,
    /// Certified epsilon spent on its worst-off units.
    pub spent_epsilon: f64,
    /// What its worst-off units have left.
    pub remaining_epsilon: f64,
}

/// What a dataset's people have left ([`Store::units_left`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitsLeft {
    /// The least epsilon any of its units has left.
    pub remaining_epsilon: f64,
    /// Its units that other datasets of the tenant share.
    pub shared: SharedUnits,
}

/// Units of a dataset that other datasets of its tenant share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedUnits {
    /// How many.
    pub units: u64,
    /// The least epsilon left to any of them (under the tightest of their budgets).
    pub least_remaining_epsilon: Option<f64>,
}

/// Everything the ledger needs about one dataset's people, read in one transaction: the
/// dataset, the classes of its units (each with every dataset it counts against), those
/// datasets, and their jobs in admission order.
pub(crate) struct Scope {
    pub(super) dataset: Dataset,
    classes: Vec<UnitClass>,
    datasets: HashMap<DatasetId, Dataset>,
    pub(super) jobs: Vec<Job>,
}

impl Scope {
    /// The scope of the tenant's `dataset`. The tenant's unidentified datasets count in every
    /// class; an unidentified dataset's own units may be anyone's, so its one class counts
    /// against every dataset of the tenant.
    fn load(tx: &mut Tx<'_>, tenant: &TenantId, dataset: &DatasetId) -> Result<Scope> {
        let dataset = datasets::load(tx, tenant, dataset)?;
        let all = jobs::for_tenant(tx, tenant)?;
        let classes = if dataset.unit_identities.known() {
            let unknown = units::unidentified(tx, tenant)?;
            let mut classes = units::classes_of(tx, tenant, &dataset.id)?;
            for class in &mut classes {
                class.datasets.extend(unknown.iter().cloned());
                class.datasets.sort();
                class.datasets.dedup();
            }
            classes
        } else {
            vec![UnitClass { units: dataset.units, datasets: datasets::ids_of_tenant(tx, tenant)? }]
        };
        let mut datasets = HashMap::new();
        for id in classes.iter().flat_map(|c| &c.datasets) {
            if !datasets.contains_key(id) {
                datasets.insert(id.clone(), datasets::load(tx, tenant, id)?);
            }
        }
        let jobs = all.into_iter().filter(|j| datasets.contains_key(&j.dataset)).collect();
        Ok(Scope { dataset, classes, datasets, jobs })
    }

    /// The jobs that spend a class's budget, in admission order.
    pub(super) fn jobs_of<'a>(&'a self, class: &'a UnitClass) -> impl Iterator<Item = &'a Job> {
        self.jobs.iter().filter(move |j| class.datasets.binary_search(&j.dataset).is_ok())
    }

    /// The class a ledger of [`Scope::ledgers`] is of.
    pub(super) fn class_of(&self, ledger: &ClassLedger) -> &UnitClass {
        self.classes.iter().find(|c| c.datasets == ledger.datasets && c.units == ledger.units).expect("a ledger of this scope")
    }

    /// The budgets a class must stay within: every one of its datasets'.
    pub(super) fn budgets_of<'a>(&'a self, class: &'a UnitClass) -> impl Iterator<Item = &'a Dataset> {
        class.datasets.iter().map(|id| &self.datasets[id])
    }

    /// Every class's ledger at the dataset's delta, worst first (least remaining, then most
    /// committed).
    fn ledgers(&self) -> Result<Vec<ClassLedger>> {
        let delta = self.dataset.budget_delta;
        let mut out = Vec::with_capacity(self.classes.len());
        for class in &self.classes {
            let spent = spent_history(self.jobs_of(class))?;
            let committed = committed_history(self.jobs_of(class))?;
            let (remaining_epsilon, binding) = self.headroom(class, &committed)?;
            out.push(ClassLedger {
                units: class.units,
                datasets: class.datasets.clone(),
                spent_epsilon: certified_epsilon(&spent, delta)?,
                committed_epsilon: certified_epsilon(&committed, delta)?,
                remaining_epsilon,
                binding_dataset: binding.clone(),
                spent_history: spent,
            });
        }
        out.sort_by(|a, b| a.remaining_epsilon.total_cmp(&b.remaining_epsilon).then(b.committed_epsilon.total_cmp(&a.committed_epsilon)));
        Ok(out)
    }

    /// The least headroom of `history` under the class's budgets, each at its own delta (at
    /// least 0), and whose budget that is.
    pub(super) fn headroom<'a>(&'a self, class: &'a UnitClass, history: &History) -> Result<(f64, &'a DatasetId)> {
        let mut least = (f64::INFINITY, &self.dataset.id);
        for budget in self.budgets_of(class) {
            let left = (budget.budget_epsilon - certified_epsilon(history, budget.budget_delta)?).max(0.0);
            if left < least.0 {
                least = (left, &budget.id);
            }
        }
        Ok(least)
    }

    /// The first budget of `class` that `history` exceeds, with its certified epsilon there.
    fn exceeded<'a>(&'a self, class: &'a UnitClass, history: &History) -> Result<Option<(&'a Dataset, f64)>> {
        for budget in self.budgets_of(class) {
            let epsilon = certified_epsilon(history, budget.budget_delta)?;
            if epsilon > budget.budget_epsilon {
                return Ok(Some((budget, epsilon)));
            }
        }
        Ok(None)
    }
}

/// One class of a dataset's units in its budget report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassLedger {
    /// How many of the dataset's units are in exactly these datasets.
    pub units: u64,
    /// The tenant's datasets these units are in (with any whose units are unknown), sorted:
    /// every job on them spends these units' budget, and every budget of them binds.
    pub datasets: Vec<DatasetId>,
    /// Certified epsilon of every step done on these units, at the report's delta.
    pub spent_epsilon: f64,
    /// Certified epsilon of the steps done and reserved, at the report's delta.
    pub committed_epsilon: f64,
    /// The least headroom under these units' budgets (each at its own delta), at least 0.
    pub remaining_epsilon: f64,
    /// The dataset whose budget leaves that least headroom.
    pub binding_dataset: DatasetId,
    /// Every step done on these units, in job order.
    pub spent_history: History,
}

/// What an ended job left: its output files and its self-audit.
type Ended = (Vec<OutputFile>, Option<serde_json::Value>);

fn report(scope: &Scope, mut ended: HashMap<JobId, Ended>, issue: Issue, with_charts: bool) -> Result<BudgetReport> {
    let dataset = &scope.dataset;
    let delta = dataset.budget_delta;
    let classes = scope.ledgers()?;
    let worst = classes.first().cloned();
    let charts = if with_charts { Some(charts::charts(scope, worst.as_ref(), issue.issued_at_unix_ms)?) } else { None };
    let (spent, spent_epsilon, committed_epsilon, remaining_epsilon) = match &worst {
        Some(w) => (w.spent_history.clone(), w.spent_epsilon, w.committed_epsilon, w.remaining_epsilon),
        None => (History::new(), 0.0, 0.0, dataset.budget_epsilon),
    };
    let spent_epsilon_edgeworth_estimate = if spent.is_empty() {
        Some(0.0)
    } else {
        Some(edgeworth::epsilon(&spent, delta, Order::DEFAULT)?.estimate).filter(|e| e.is_finite())
    };
    let rows = scope
        .jobs
        .iter()
        .map(|job| {
            let (outputs, self_audit) = ended.remove(&job.id).unwrap_or_default();
            Ok(JobLedgerRow {
                job: job.id.clone(),
                dataset: job.dataset.clone(),
                state: job.state,
                noise_multiplier: job.noise_multiplier,
                sample_rate: job.sample_rate,
                steps_planned: job.steps_planned,
                steps_done: job.steps_done,
                steps_reserved: job.steps_reserved(),
                epsilon_alone: job.certified_epsilon_spent(delta)?,
                outputs,
                self_audit,
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
        unit_identities: dataset.unit_identities,
        budget_epsilon: dataset.budget_epsilon,
        budget_delta: delta,
        spent_epsilon,
        committed_epsilon,
        remaining_epsilon,
        spent_epsilon_edgeworth_estimate,
        spent_history: spent,
        classes,
        jobs: rows,
        charts,
    })
}

/// What admission decided (on a snapshot, or inside the caller's locked write).
pub(crate) enum Admission {
    /// Every class of the dataset's units stays within its budgets; the largest certified
    /// epsilon of a class with the job, at the dataset's delta.
    Admitted(f64),
    /// Some class would not; explain it with [`Refused::into_error`] after the transaction.
    Refused(Box<Refused>),
}

/// A refused job and what it was refused against.
pub(crate) struct Refused {
    scope: Scope,
    plan: StepGroup,
    /// (class, its committed history) of each class the job would overspend.
    over: Vec<(UnitClass, History)>,
}

/// A plan composed with every class of a scope.
struct Composed {
    /// (class, its committed history) of each class the plan would overspend.
    over: Vec<(UnitClass, History)>,
    /// The largest certified epsilon of a class with the plan, at the dataset's delta.
    largest: f64,
    /// The least headroom any class would have left under its budgets (0 when one overspends).
    remaining_after: f64,
}

impl Scope {
    /// Composes `plan` with each class's committed history (spent and reserved by every job on
    /// any of the class's datasets) and checks it against each of the class's budgets.
    fn compose_plan(&self, plan: StepGroup) -> Result<Composed> {
        let mut composed = Composed { over: Vec::new(), largest: 0.0, remaining_after: f64::INFINITY };
        for class in &self.classes {
            let committed = committed_history(self.jobs_of(class))?;
            let mut requested = committed.clone();
            requested.compose(plan.noise_multiplier, plan.sample_rate, plan.steps)?;
            composed.largest = composed.largest.max(certified_epsilon(&requested, self.dataset.budget_delta)?);
            composed.remaining_after = composed.remaining_after.min(self.headroom(class, &requested)?.0);
            if self.exceeded(class, &requested)?.is_some() {
                composed.over.push((class.clone(), committed));
            }
        }
        Ok(composed)
    }

    /// The largest target epsilon (the job alone at the dataset's delta) for `plan`'s sampling
    /// rate and steps that every class in `classes` admits: the smallest fitting noise
    /// multiplier, bracketed by doubling or halving from the plan's and narrowed by geometric
    /// bisection. `None` when nothing fits within [`NOISE_DOUBLINGS`] doublings; when the
    /// bracket search ends fitting after as many halvings, the target there (a lower bound).
    fn largest_target(&self, plan: StepGroup, classes: &[(UnitClass, History)]) -> Result<Option<f64>> {
        let fits = |sigma: f64| -> bool {
            classes.iter().all(|(class, committed)| {
                let mut requested = committed.clone();
                requested.compose(sigma, plan.sample_rate, plan.steps).is_ok() && matches!(self.exceeded(class, &requested), Ok(None))
            })
        };
        // A bracket: `unfit` does not fit, `fit` does.
        let (mut unfit, mut fit);
        if fits(plan.noise_multiplier) {
            fit = plan.noise_multiplier;
            let mut halvings = 0;
            while fits(fit / 2.0) {
                halvings += 1;
                fit /= 2.0;
                if halvings == NOISE_DOUBLINGS {
                    return Ok(Some(self.target_of(fit, plan)?));
                }
            }
            unfit = fit / 2.0;
        } else {
            unfit = plan.noise_multiplier;
            let mut doublings = 0;
            while !fits(2.0 * unfit) {
                doublings += 1;
                unfit *= 2.0;
                if doublings == NOISE_DOUBLINGS {
                    return Ok(None);
                }
            }
            fit = 2.0 * unfit;
        }
        for _ in 0..NOISE_BISECTIONS {
            let mid = (unfit * fit).sqrt();
            if fits(mid) {
                fit = mid;
            } else {
                unfit = mid;
            }
        }
        Ok(Some(self.target_of(fit, plan)?))
    }

    /// The certified epsilon of `plan`'s steps and sampling rate alone at `sigma`.
    fn target_of(&self, sigma: f64, plan: StepGroup) -> Result<f64> {
        certified_epsilon(&History::homogeneous(sigma, plan.sample_rate, plan.steps)?, self.dataset.budget_delta)
    }
}

/// Admission control: composes each class's committed history (spent and reserved by every job
/// on any of the class's datasets) with `plan`, and admits the job only if every class stays
/// within every one of its budgets. A dataset whose units are unknown or repeated is refused
/// ([`Dataset::check_identities`]).
pub(crate) fn admit(tx: &mut Tx<'_>, dataset: &Dataset, plan: StepGroup) -> Result<Admission> {
    decide(admission_scope(tx, dataset)?, plan)
}

/// What [`admit`] reads: the dataset's scope (a dataset whose units are unknown or repeated is
/// refused here).
pub(crate) fn admission_scope(tx: &mut Tx<'_>, dataset: &Dataset) -> Result<Scope> {
    dataset.check_identities()?;
    Scope::load(tx, &dataset.tenant, &dataset.id)
}

/// What [`admit`] decides on a scope read before, with no connection held.
pub(crate) fn decide(scope: Scope, plan: StepGroup) -> Result<Admission> {
    let composed = scope.compose_plan(plan)?;
    if composed.over.is_empty() {
        Ok(Admission::Admitted(composed.largest))
    } else {
        Ok(Admission::Refused(Box::new(Refused { scope, plan, over: composed.over })))
    }
}

/// What admission would decide for a plan on the ledger as it stands ([`Store::preview_admission`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionPreview {
    /// The least epsilon any of the dataset's units has left now ([`Store::remaining_epsilon`]).
    pub remaining_before: f64,
    /// The least epsilon any of the dataset's units would have left after the job (0 when
    /// refused).
    pub remaining_after: f64,
    /// The largest target epsilon with the plan's steps and sampling rate that would be
    /// admitted, at the dataset's delta (`None`: none).
    pub largest_target_epsilon: Option<f64>,
    /// Why it would be refused; `None` when it would be admitted.
    pub refusal: Option<BudgetRefusal>,
}

impl Store {
    /// What `create_job` would decide for `plan` on the tenant's dataset now, writing nothing
    /// (a job created later meets the ledger as it is then).
    pub fn preview_admission(&self, tenant: &TenantId, dataset: &DatasetId, plan: StepGroup) -> Result<AdmissionPreview> {
        let scope = self.scope(tenant, dataset)?;
        scope.dataset.check_identities()?;
        let composed = scope.compose_plan(plan)?;
        let every: Vec<(UnitClass, History)> =
            scope.classes.iter().map(|c| Ok((c.clone(), committed_history(scope.jobs_of(c))?))).collect::<Result<_>>()?;
        let mut remaining_before = scope.dataset.budget_epsilon;
        for (class, committed) in &every {
            remaining_before = remaining_before.min(scope.headroom(class, committed)?.0);
        }
        if composed.over.is_empty() {
            let largest_target_epsilon = scope.largest_target(plan, &every)?;
            return Ok(AdmissionPreview { remaining_before, remaining_after: composed.remaining_after, largest_target_epsilon, refusal: None });
        }
        let refusal = Refused { scope, plan, over: composed.over }.explain()?;
        Ok(AdmissionPreview { remaining_before, remaining_after: 0.0, largest_target_epsilon: refusal.largest_target_epsilon, refusal: Some(refusal) })
    }
}

/// Doublings (or halvings) of the noise multiplier tried before the search for the largest
/// admissible target stops.
const NOISE_DOUBLINGS: u32 = 10;

/// Geometric bisection steps on the noise multiplier (a ratio of 2^(1/2^10) between the ends).
const NOISE_BISECTIONS: u32 = 10;

impl Refused {
    /// The refusal as the client reads it: how many units would overspend, against whose
    /// budget, and the largest target epsilon (the job's own certified epsilon at the dataset's
    /// delta, same steps and sampling rate) that every class would admit. Runs outside the
    /// write transaction: it composes many candidate plans.
    pub(crate) fn into_error(self) -> StoreError {
        match self.explain() {
            Ok(refusal) => StoreError::BudgetExceeded(Box::new(refusal)),
            Err(e) => e,
        }
    }

    fn explain(&self) -> Result<BudgetRefusal> {
        let Refused { scope, plan, over } = self;
        let mut worst: Option<(f64, &Dataset, f64, f64)> = None;
        let mut units_over = 0;
        for (class, committed) in over {
            units_over += class.units;
            let mut requested = committed.clone();
            requested.compose(plan.noise_multiplier, plan.sample_rate, plan.steps)?;
            if let Some((budget, epsilon)) = scope.exceeded(class, &requested)? {
                let excess = epsilon - budget.budget_epsilon;
                if worst.as_ref().is_none_or(|(e, ..)| excess > *e) {
                    worst = Some((excess, budget, epsilon, certified_epsilon(committed, budget.budget_delta)?));
                }
            }
        }
        let (_, budget, requested_epsilon, committed_epsilon) = worst.expect("a refused job exceeds some budget");
        Ok(BudgetRefusal {
            dataset: scope.dataset.id.clone(),
            units: scope.dataset.units,
            units_over,
            requested_epsilon,
            committed_epsilon,
            budget_epsilon: budget.budget_epsilon,
            budget_delta: budget.budget_delta,
            budget_dataset: budget.id.clone(),
            largest_target_epsilon: scope.largest_target(*plan, over)?,
            target_delta: scope.dataset.budget_delta,
        })
    }
}

/// Why a job was refused (see [`StoreError::BudgetExceeded`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRefusal {
    /// The dataset the job would train on.
    pub dataset: DatasetId,
    /// Its number of privacy units.
    pub units: u64,
    /// How many of them the job would take over a budget.
    pub units_over: u64,
    /// Certified epsilon of the most overspent class with the job, at `budget_delta`.
    pub requested_epsilon: f64,
    /// The same class's certified epsilon before the job (spent and reserved).
    pub committed_epsilon: f64,
    /// The budget it would exceed.
    pub budget_epsilon: f64,
    /// That budget's delta.
    pub budget_delta: f64,
    /// Whose budget that is: this dataset, or another dataset of the tenant with the same units.
    pub budget_dataset: DatasetId,
    /// The largest target epsilon the job could have instead (same steps and sampling rate, at
    /// `target_delta`); `None` when no job on this dataset fits.
    pub largest_target_epsilon: Option<f64>,
    /// The dataset's delta.
    pub target_delta: f64,
}

impl std::fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = if self.budget_dataset == self.dataset {
            "this dataset's budget".to_string()
        } else {
            format!("the budget of dataset {}, which holds the same units", self.budget_dataset)
        };
        write!(
            f,
            "privacy budget exceeded: this job would bring {} of the {} privacy units of dataset {} to a certified epsilon of \
             {:.4} at delta {:e}, above {whose} of {}; {:.4} is already spent or reserved for them and {:.4} of it is left \
             (epsilons compose rather than add up, so the largest job that fits is computed below). ",
            self.units_over,
            self.units,
            self.dataset,
            self.requested_epsilon,
            self.budget_delta,
            self.budget_epsilon,
            self.committed_epsilon,
            (self.budget_epsilon - self.committed_epsilon).max(0.0)
        )?;
        match self.largest_target_epsilon {
            Some(e) => write!(
                f,
                "The largest target epsilon this job could have (same steps and sampling rate, at delta {:e}) is {}",
                self.target_delta,
                round_down(e)
            ),
            None => f.write_str("Nothing usable is left for them: no job on this dataset fits"),
        }
    }
}

/// `x` rounded down to 3 significant digits: a target quoted to a client must itself fit.
fn round_down(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 0.0;
    }
    let scale = 10f64.powi(2 - x.log10().floor() as i32);
    (x * scale).floor() / scale
}

/// Every job's steps done, in job order.
fn spent_history<'a>(jobs: impl Iterator<Item = &'a Job>) -> Result<History> {
    compose(jobs.map(|job| (job, job.steps_done)))
}

/// Every job's steps done plus, for queued and running jobs, the rest of their plan.
fn committed_history<'a>(jobs: impl Iterator<Item = &'a Job>) -> Result<History> {
    compose(jobs.map(|job| (job, job.steps_done + job.steps_reserved())))
}

fn compose<'a>(parts: impl Iterator<Item = (&'a Job, u64)>) -> Result<History> {
    let mut history = History::new();
    for (job, steps) in parts.filter(|(_, steps)| *steps > 0) {
        history.compose(job.noise_multiplier, job.sample_rate, steps)?;
    }
    Ok(history)
}

/// The certified epsilon (PLD upper bound) of `history` at `delta`; 0 for an empty history.
pub(super) fn certified_epsilon(history: &History, delta: f64) -> Result<f64> {
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
        let quoted = match &refusal {
            StoreError::BudgetExceeded(r) => {
                assert_eq!((&r.dataset, &r.budget_dataset), (&d.id, &d.id));
                assert_eq!((r.units_over, r.units), (10_000, 10_000));
                assert_eq!(r.requested_epsilon, one_more);
                assert_eq!(r.committed_epsilon, fitted);
                assert_eq!((r.budget_epsilon, r.budget_delta), (d.budget_epsilon, d.budget_delta));
                r.largest_target_epsilon.expect("some budget is left")
            }
            other => panic!("expected BudgetExceeded, got {other:?}"),
        };
        let message = refusal.to_string();
        assert!(message.contains("10000 of the 10000 privacy units") && message.contains("largest target epsilon"), "{message}");
        // The quoted target fits, calibrated by the accountant's own search, and is tight: 5 %
        // more does not.
        let rounded = message.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
        assert!(rounded <= quoted && rounded > 0.99 * quoted, "{rounded} {quoted}");
        let calibrated = |target: f64| ewtune_accountant::calibrate::noise_multiplier(target, d.budget_delta, q, steps).unwrap().sigma;
        let over = fx.store.create_job(&acme, new_job(&d.id, calibrated(1.05 * quoted), q, steps)).unwrap_err();
        assert!(matches!(over, StoreError::BudgetExceeded(_)), "{over:?}");
        let fits = fx.store.create_job(&acme, new_job(&d.id, calibrated(rounded), q, steps)).unwrap();
        fx.store.request_cancel(&acme, &fits.id).unwrap(); // a queued job's cancel releases its plan at once

        // A refusal writes nothing: same rows before and after another refused attempt.
        let rows = |fx: &Fixture| (count_rows(&fx.store, "jobs"), count_rows(&fx.store, "job_events"));
        let before = rows(&fx);
        assert_eq!(before, (n as i64 + 1, n as i64 + 2), "the cancelled job has two events");
        let err = fx.store.create_job(&acme, new_job(&d.id, sigma, q, steps)).unwrap_err();
        assert!(matches!(err, StoreError::BudgetExceeded(_)), "{err:?}");
        assert_eq!(rows(&fx), before);

        let report = fx.store.budget_report(&acme, &d.id, false).unwrap();
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
        assert!(matches!(err, StoreError::BudgetExceeded(_)), "the full plan is reserved: {err:?}");

        fx.store.claim_next_queued().unwrap();
        fx.store.record_progress(&a.id, 17, 0.3).unwrap();
        fx.store.finish_job(&a.id, JobState::Failed, Some("NaN loss".into())).unwrap();

        let report = fx.store.budget_report(&acme, &d.id, false).unwrap();
        assert_eq!(report.spent_history.groups(), &[StepGroup { noise_multiplier: 1.0, sample_rate: 0.02, steps: 17 }]);
        let spent = pld(&History::homogeneous(1.0, 0.02, 17).unwrap(), delta);
        assert_eq!(report.spent_epsilon, spent);
        assert_eq!(report.committed_epsilon, spent, "the failed job's unspent steps were released");
        assert_eq!(report.jobs[0].steps_reserved, 0);
        assert_eq!(report.jobs[0].epsilon_alone, spent);

        // The released reservation makes room for the same job again.
        let b = fx.store.create_job(&acme, big).unwrap();
        let report = fx.store.budget_report(&acme, &d.id, false).unwrap();
        assert_eq!(report.spent_history.total_steps(), 17);
        assert_eq!(report.committed_epsilon, pld(&History::homogeneous(1.0, 0.02, 17 + 120).unwrap(), delta));
        assert_eq!(
            report.jobs.iter().map(|r| (&r.job, r.steps_reserved)).collect::<Vec<_>>(),
            [(&a.id, 0), (&b.id, 120)]
        );
    }

    #[test]
    fn concurrent_admission_through_two_connections_never_overspends() {
        // Two daemons on one database: on SQLite BEGIN IMMEDIATE, on PostgreSQL the tenant's
        // ledger row lock and version check, serialise admission across connections.
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 2.0)).unwrap();
        let (sigma, q, steps) = (1.0, 0.02, 50);
        let fits =
            |k: u64| pld(&History::homogeneous(sigma, q, k * steps).unwrap(), d.budget_delta) <= d.budget_epsilon;
        let capacity = (1..).take_while(|&k| fits(k)).count();
        assert!((2..20).contains(&capacity), "{capacity}");

        let other = fx.other_daemon("other");
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = [&fx.store, &other]
                .into_iter()
                .map(|store| {
                    let (acme, id) = (acme.clone(), d.id.clone());
                    scope.spawn(move || {
                        (0..capacity)
                            .filter(|_| match store.create_job(&acme, new_job(&id, sigma, q, steps)) {
                                Ok(_) => true,
                                Err(StoreError::BudgetExceeded(_)) => false,
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
        assert!(fx.store.budget_report(&acme, &d.id, false).unwrap().committed_epsilon <= d.budget_epsilon);
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
        let seq = |store: &Store, t: &TenantId, d: &DatasetId| store.budget_report(t, d, false).unwrap().sequence;
        assert_eq!([seq(&fx.store, &acme, &a1.id), seq(&fx.store, &acme, &a1.id), seq(&fx.store, &acme, &a1.id)], [1, 2, 3]);
        assert_eq!(seq(&fx.store, &acme, &a2.id), 1);
        assert_eq!(seq(&fx.store, &globex, &g1.id), 1);
        assert_eq!(seq(&fx.store, &acme, &a1.id), 4);
        assert_eq!(seq(&fx.store, &globex, &g1.id), 2);

        // A refused read takes no number and writes nothing.
        let err = fx.store.budget_report(&globex, &a2.id, false).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "dataset", .. }), "{err:?}");
        assert_eq!(count_rows(&fx.store, "report_sequences"), 3);

        // The report says whose, which and when.
        let before = super::super::now_ms();
        let r = fx.store.budget_report(&acme, &a2.id, false).unwrap();
        let after = super::super::now_ms();
        assert_eq!((&r.tenant, &r.dataset, r.sequence), (&acme, &a2.id, 2));
        assert!((before..=after).contains(&r.issued_at_unix_ms), "{before} <= {} <= {after}", r.issued_at_unix_ms);
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!((json["tenant"].as_str(), json["sequence"].as_u64()), (Some("acme"), Some(2)));
        assert_eq!(json["issued_at_unix_ms"].as_i64(), Some(r.issued_at_unix_ms));

        // One durable write per block: the row holds the block's end, not each number.
        let stored = |fx: &Fixture| -> i64 {
            fx.store.read(|tx| tx.query_one("SELECT last_seq FROM report_sequences WHERE tenant = 'acme' AND dataset = ?1", args![a1.id], |r| r.get("last_seq"))).unwrap()
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
        let other = fx.other_daemon("other");
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
        let report = fx.store.budget_report(&acme, &d.id, false).unwrap();
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

        let report = fx.store.budget_report(&acme, &d.id, false).unwrap();
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
