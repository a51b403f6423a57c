//! The data behind a budget report's charts (`BudgetReport::charts`, filled when asked for):
//! each job's epsilon over its planned steps by the three accountants, and the dataset's
//! burn-down, the worst class's remaining budget after each job's spent steps over time. They
//! are part of the signed report, so a page drawn from them (`pages/budget.rs`) shows signed
//! numbers only. Nothing here depends on the training data: only on the jobs' plans, progress
//! and times, which the report states already.
//!
//! Every point is a fresh composition (the certified one memoised by the accountant), so the
//! report's cost grows with the jobs times [`CURVE_POINTS`]: it is computed only when asked
//! (`Budget.Get` with `charts`), never on the API's hot path.

use super::jobs::{Job, JobId};
use super::ledger::{certified_epsilon, ClassLedger, Scope};
use super::Result;
use ewtune_accountant::edgeworth::{self, Order};
use ewtune_accountant::{rdp, History};
use serde::{Deserialize, Serialize};

/// At most this many points per job curve (evenly spaced over its planned steps, the last one
/// at the plan's end).
pub const CURVE_POINTS: u64 = 24;

/// The charts' data, at the report's delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetCharts {
    /// One curve per job of the report, in the report's job order.
    pub jobs: Vec<JobCurve>,
    /// The worst class's burn-down: its first point is the dataset's registration (nothing
    /// spent), then one per job with spent steps, in the order their spending ended (a running
    /// job's at the report's time).
    pub burn_down: Vec<BurnDownPoint>,
}

/// One job's epsilon, alone, after a number of its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCurve {
    /// The job.
    pub job: JobId,
    /// Steps it has done (the points past it are planned, not spent).
    pub steps_done: u64,
    /// The points, by step.
    pub points: Vec<EpsilonAtStep>,
}

/// Epsilon after `step` steps by each accountant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpsilonAtStep {
    /// Steps composed.
    pub step: u64,
    /// The certified PLD upper bound: the guarantee.
    pub certified_upper: f64,
    /// ESTIMATE ONLY: the Edgeworth accountant (EW-Tune); `None` where it gives no finite value.
    pub edgeworth_estimate: Option<f64>,
    /// The Rényi-DP bound (an upper bound, looser than the certified one).
    pub rdp: f64,
}

/// The worst class's ledger at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BurnDownPoint {
    /// Unix milliseconds, UTC.
    pub at_unix_ms: i64,
    /// The job whose spending ended here (`None` for the registration).
    pub job: Option<JobId>,
    /// Certified epsilon of every step spent so far on the class.
    pub spent_epsilon: f64,
    /// The least headroom under the class's budgets after those steps (at least 0).
    pub remaining_epsilon: f64,
}

/// The charts of `scope`'s report: `worst` is its worst class (`None` for a dataset with no
/// units), `now` the report's time.
pub(super) fn charts(scope: &Scope, worst: Option<&ClassLedger>, now: i64) -> Result<BudgetCharts> {
    let delta = scope.dataset.budget_delta;
    let jobs = scope.jobs.iter().map(|job| job_curve(job, delta)).collect::<Result<Vec<_>>>()?;
    let mut burn_down = vec![BurnDownPoint {
        at_unix_ms: scope.dataset.created_at_unix_ms,
        job: None,
        spent_epsilon: 0.0,
        remaining_epsilon: scope.dataset.budget_epsilon,
    }];
    if let Some(worst) = worst {
        let class = scope.class_of(worst);
        let mut spending: Vec<(&Job, i64)> =
            scope.jobs_of(class).filter(|j| j.steps_done > 0).map(|j| (j, j.finished_at_unix_ms.unwrap_or(now))).collect();
        spending.sort_by_key(|&(_, at)| at);
        let mut history = History::new();
        burn_down[0].remaining_epsilon = scope.headroom(class, &history)?.0;
        for (job, at) in spending {
            history.compose(job.noise_multiplier, job.sample_rate, job.steps_done)?;
            burn_down.push(BurnDownPoint {
                at_unix_ms: at,
                job: Some(job.id.clone()),
                spent_epsilon: certified_epsilon(&history, delta)?,
                remaining_epsilon: scope.headroom(class, &history)?.0,
            });
        }
    }
    Ok(BudgetCharts { jobs, burn_down })
}

/// The job's curve over its planned steps.
fn job_curve(job: &Job, delta: f64) -> Result<JobCurve> {
    let planned = job.steps_planned;
    let n = CURVE_POINTS.min(planned);
    let mut points = Vec::with_capacity(n as usize);
    for i in 1..=n {
        let step = (i * planned).div_ceil(n);
        let history = History::homogeneous(job.noise_multiplier, job.sample_rate, step)?;
        points.push(EpsilonAtStep {
            step,
            certified_upper: certified_epsilon(&history, delta)?,
            edgeworth_estimate: Some(edgeworth::epsilon(&history, delta, Order::DEFAULT)?.estimate).filter(|e| e.is_finite()),
            rdp: rdp::epsilon(&history, delta)?.epsilon,
        });
    }
    Ok(JobCurve { job: job.id.clone(), steps_done: job.steps_done, points })
}
