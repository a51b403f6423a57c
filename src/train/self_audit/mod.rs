//! The self-audit: every job checks its own clipping, noise and sampling in the same run
//! (docs/self_audit.md). Gradient canaries (`train::gradient_canaries`) feed
//! [`Observations`]; at the end of the run [`judge`] turns them into the [`SelfAuditReport`]:
//! the goodness-of-fit tests, which fail the job before its output is released, and the one-run
//! lower bounds reported beside the certified epsilon.

#[cfg(test)]
mod engine_tests;
mod lower_bounds;
mod observations;

pub use lower_bounds::steinke_bound;
pub use observations::{Decision, FitTest, NoiseStats, Observations, HARD_FAIL_LEVEL};

use serde::{Deserialize, Serialize};

/// Gradient canaries a job inserts when none is said (`[self_audit] canaries`).
pub const DEFAULT_CANARIES: usize = 10_000;

/// The fewest canaries a job may ask for: below this the tests see too little to catch anything.
pub const MIN_CANARIES: usize = 100;

/// The most canaries a job may ask for (O(m) memory and time per step).
pub const MAX_CANARIES: usize = 1_000_000;

/// The `[self_audit]` table of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfAuditSpec {
    /// Gradient canaries m.
    #[serde(default = "default_canaries")]
    pub canaries: usize,
}

fn default_canaries() -> usize {
    DEFAULT_CANARIES
}

impl Default for SelfAuditSpec {
    fn default() -> Self {
        SelfAuditSpec { canaries: DEFAULT_CANARIES }
    }
}

impl SelfAuditSpec {
    /// Refuses a canary count outside [[`MIN_CANARIES`], [`MAX_CANARIES`]].
    pub fn validate(&self) -> Result<(), super::TrainError> {
        if !(MIN_CANARIES..=MAX_CANARIES).contains(&self.canaries) {
            return Err(super::TrainError::BadSpec {
                field: "self_audit.canaries",
                reason: format!("must lie in [{MIN_CANARIES}, {MAX_CANARIES}] (leave the [self_audit] table out to run without the self-audit)"),
            });
        }
        Ok(())
    }
}

/// What a finished job's self-audit found (in the job's privacy.json, its budget report, the
/// CLI and the pages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfAuditReport {
    /// Gradient canaries m.
    pub canaries: usize,
    /// Steps observed.
    pub steps: u64,
    /// The goodness-of-fit tests and their verdict.
    pub decision: Decision,
    /// Rigorous (epsilon, delta) lower bound at 95 % (Steinke, Nasr & Jagielski one-run test
    /// on the canaries); expected well below the certified epsilon.
    pub steinke_epsilon: f64,
    /// The certified epsilon of the steps observed (the guarantee).
    pub certified_epsilon: f64,
    /// Delta of both.
    pub delta: f64,
}

impl SelfAuditReport {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.decision.passed()
    }

    /// Why the job failed (empty when it passed).
    pub fn failures(&self) -> &[String] {
        &self.decision.failed
    }

    /// The headline: `certified <= 4.14, measured >= 0.61 (delta 1e-5), implementation checks
    /// passed` (or `FAILED: ...`).
    pub fn headline(&self) -> String {
        let verdict = if self.passed() { "implementation checks passed".to_string() } else { format!("implementation checks FAILED: {}", self.failures().join("; ")) };
        format!("certified <= {:.3}, measured >= {:.3} (delta {:e}), {verdict}", self.certified_epsilon, self.steinke_epsilon, self.delta)
    }
}

/// The self-audit of a job that ran with `observations` and was certified at
/// `certified_epsilon` for `delta`.
pub fn judge(observations: &Observations, certified_epsilon: f64, delta: f64) -> Result<SelfAuditReport, crate::stats::bounds::BoundError> {
    let steinke = steinke_bound(observations, delta)?;
    Ok(SelfAuditReport {
        canaries: observations.included().len(),
        steps: observations.steps(),
        decision: observations.decide(),
        steinke_epsilon: steinke.best.eps_lb,
        certified_epsilon,
        delta,
    })
}
