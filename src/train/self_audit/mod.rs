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

use crate::stats::fdp_one_run;
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

/// The p-value below which the f-DP one-run test fails the job.
pub const FDP_FAIL_LEVEL: f64 = 1e-6;

/// The p-value below which the f-DP one-run test warns.
pub const FDP_WARN_LEVEL: f64 = 0.05;

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
    /// The f-DP one-run test (Mahloujifar, Melis & Chaudhuri, ICML 2025) of the certified
    /// trade-off curve on the canaries' guesses: its p-value (Bonferroni over 14 guess pairs);
    /// fails the job below [`FDP_FAIL_LEVEL`], warns below [`FDP_WARN_LEVEL`]. `None` when it
    /// could not be computed (a warning says why).
    pub fdp_p_value: Option<f64>,
    /// The f-DP in-family epsilon: the certified epsilon of the least-noisy DP-SGD run with the
    /// job's q and steps whose curve the guesses reject at 95 %. An estimate within that
    /// family, NOT an (epsilon, delta) lower bound.
    pub fdp_in_family_epsilon: Option<f64>,
    /// Rigorous (epsilon, delta) lower bound at 95 % (Steinke, Nasr & Jagielski one-run test
    /// on the canaries); expected well below the certified epsilon.
    pub steinke_epsilon: Option<f64>,
    /// The certified epsilon of the steps observed (the guarantee).
    pub certified_epsilon: f64,
    /// Delta of all three.
    pub delta: f64,
    /// True when every check passed.
    pub passed: bool,
    /// Why the job failed: the failing checks, what they checked and measured (empty when it
    /// passed).
    pub failures: Vec<String>,
    /// What does not fail the job but deserves a look.
    pub warnings: Vec<String>,
}

impl SelfAuditReport {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.passed
    }

    /// Why the job failed (empty when it passed).
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// The headline: `certified <= 4.140, measured >= 0.610 (delta 1e-5), implementation
    /// checks passed` (or `... FAILED: ...`).
    pub fn headline(&self) -> String {
        let verdict = if self.passed { "implementation checks passed".to_string() } else { format!("implementation checks FAILED: {}", self.failures.join("; ")) };
        let measured = self.steinke_epsilon.map_or_else(|| "not stated".to_string(), |e| format!("{e:.3}"));
        format!("certified <= {:.3}, measured >= {measured} (delta {:e}), {verdict}", self.certified_epsilon, self.delta)
    }
}

/// The self-audit of a job that ran with `observations` and was certified at
/// `certified_epsilon` for `delta`: the goodness-of-fit tests and the f-DP test decide; the
/// one-run lower bounds are stated beside the certified epsilon.
pub fn judge(observations: &Observations, certified_epsilon: f64, delta: f64) -> SelfAuditReport {
    let decision = observations.decide();
    let mut failures = decision.failed.clone();
    let mut warnings = Vec::new();
    let (mut steinke, mut fdp) = (None, None);
    if !observations.scores().iter().all(|s| s.is_finite()) {
        failures.push("the canaries' scores are not all finite (the privatised gradient held NaN or infinity)".to_string());
    } else if observations.steps() > 0 {
        match steinke_bound(observations, delta) {
            Ok(a) => steinke = Some(a.best.eps_lb),
            Err(e) => warnings.push(format!("the one-run lower bound could not be computed: {e}")),
        }
        let (q, sigma) = (observations.sample_rate(), observations.noise_multiplier());
        match fdp_one_run::audit(observations.scores(), observations.included(), sigma, q, observations.steps(), delta) {
            Ok(a) => fdp = Some(a),
            Err(e) => warnings.push(format!("the f-DP one-run test could not be computed: {e}")),
        }
    }
    if let Some(a) = &fdp {
        let what = format!(
            "the certified trade-off curve against the canaries' guesses (f-DP one-run test: {} of {} guesses right, p = {:.2e})",
            a.correct, a.guesses, a.p_value
        );
        if !(a.p_value >= FDP_FAIL_LEVEL) {
            failures.push(format!("f-DP ({what})"));
        } else if a.p_value < FDP_WARN_LEVEL {
            warnings.push(format!("f-DP test below 5 % ({what}); one job in twenty is expected to warn by chance"));
        }
    }
    SelfAuditReport {
        canaries: observations.included().len(),
        steps: observations.steps(),
        decision,
        fdp_p_value: fdp.map(|a| a.p_value),
        fdp_in_family_epsilon: fdp.map(|a| a.eps_in_family),
        steinke_epsilon: steinke,
        certified_epsilon,
        delta,
        passed: failures.is_empty(),
        failures,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::observations::simulate::{run, Machinery, HONEST};
    use super::*;

    /// The verdict on seeded simulations (ChaCha20, seeds fixed) at q = 0.01, sigma = 1, 1000
    /// steps, m = 1000 (certified epsilon 1.83 at delta 1e-5): an honest run passes with both
    /// lower bounds stated below the certified epsilon; canaries without noise fail both the V
    /// test and the f-DP test of the certified curve; scores that are not numbers fail.
    #[test]
    fn the_verdict_combines_the_fit_tests_and_the_fdp_test() {
        let honest = judge(&run(1, 1000, 1000, 0.01, 1.0, HONEST), 1.83, 1e-5);
        assert!(honest.passed && honest.failures.is_empty(), "{}", honest.headline());
        let (lower, in_family, p) = (honest.steinke_epsilon.unwrap(), honest.fdp_in_family_epsilon.unwrap(), honest.fdp_p_value.unwrap());
        assert!(lower < 1.83 && in_family < 1.83 && p >= FDP_WARN_LEVEL, "{}: in-family {in_family}, p {p}", honest.headline());
        assert!(honest.headline().starts_with("certified <= 1.830, measured >= ") && honest.headline().ends_with("implementation checks passed"));

        let noiseless = judge(&run(1, 1000, 1000, 0.01, 1.0, Machinery { canary_noise: 0.05, ..HONEST }), 1.83, 1e-5);
        assert!(!noiseless.passed);
        assert!(noiseless.failures.iter().any(|f| f.starts_with("V ")) && noiseless.failures.iter().any(|f| f.starts_with("f-DP ")), "{:?}", noiseless.failures);
        assert!(noiseless.fdp_p_value.unwrap() < FDP_FAIL_LEVEL && noiseless.fdp_in_family_epsilon.unwrap() > 1.83);
        let restored: SelfAuditReport = serde_json::from_value(serde_json::to_value(&noiseless).unwrap()).unwrap();
        assert_eq!(restored, noiseless, "the report round-trips through the ledger's JSON");

        let mut broken = Observations::new(vec![true, false, true, false], 0.5, 1.0);
        broken.observe_step(&[f64::NAN, 0.0, 1.0, 0.0], 1);
        let verdict = judge(&broken, 1.0, 1e-5);
        assert!(!verdict.passed && verdict.failures.iter().any(|f| f.contains("not all finite")), "{:?}", verdict.failures);
    }
}
