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
    /// The worst class's burn-down: its first point is the registration of the first dataset its
    /// units are in (nothing spent), then one per job with spent steps, in the order their
    /// spending ended (a running job's at the report's time).
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
        // Its units may be in older datasets whose jobs spent before this one was registered:
        // the history starts with the class's first dataset.
        burn_down[0].at_unix_ms = scope.budgets_of(class).map(|d| d.created_at_unix_ms).min().unwrap_or(scope.dataset.created_at_unix_ms);
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

#[cfg(test)]
mod tests {
    use super::super::jobs::JobState;
    use super::super::testutil::{new_dataset, new_job, unit_ids, Fixture};

    /// B's people were A's first: B's burn-down starts at A's registration, runs forward in
    /// time, and ends at B's report's spend and headroom (under both budgets).
    #[test]
    fn the_burn_down_starts_with_the_first_dataset_of_the_units_and_runs_forward() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let a = fx.store.register_dataset(&acme, new_dataset(1, 8.0)).unwrap();
        let job = fx.store.create_job(&acme, new_job(&a.id, 1.0, 0.01, 100)).unwrap();
        fx.store.claim_next_queued().unwrap();
        fx.store.record_progress(&job.id, 100, 0.5).unwrap();
        fx.store.finish_job(&job.id, JobState::Succeeded, None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = fx.store.register_dataset(&acme, super::super::NewDataset { unit_ids: unit_ids(1, 0..10_000), ..new_dataset(2, 6.0) }).unwrap();
        assert!(b.created_at_unix_ms > a.created_at_unix_ms);
        let report = fx.store.budget_report(&acme, &b.id, true).unwrap();
        let charts = report.charts.as_ref().unwrap();
        let burn = &charts.burn_down;
        assert_eq!(burn.len(), 2);
        assert_eq!((burn[0].at_unix_ms, burn[0].spent_epsilon, burn[0].remaining_epsilon), (a.created_at_unix_ms, 0.0, 6.0));
        assert!(burn[0].at_unix_ms <= burn[1].at_unix_ms, "{burn:?}");
        assert_eq!((burn[1].spent_epsilon, burn[1].remaining_epsilon), (report.spent_epsilon, report.remaining_epsilon));
        assert_eq!(report.remaining_epsilon, 6.0 - report.spent_epsilon, "B's tighter budget binds");
        // The job's curve ends at its plan, at the epsilon it spent alone.
        let curve = &charts.jobs[0];
        assert_eq!((curve.points.len() as u64, curve.points.last().unwrap().step), (super::CURVE_POINTS, 100));
        assert_eq!(curve.points.last().unwrap().certified_upper, report.jobs[0].epsilon_alone);
        assert!(fx.store.budget_report(&acme, &b.id, false).unwrap().charts.is_none(), "charts only when asked");
    }
}
