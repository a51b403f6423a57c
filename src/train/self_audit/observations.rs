//! The self-audit's observations and its goodness-of-fit decisions: whether this run's clipping,
//! noise and sampling behaved as the accountant assumed (docs/self_audit.md).
//!
//! White-box gradient canaries (Nasr et al., "Tight Auditing of Differentially Private Machine
//! Learning", USENIX Security 2023) are synthetic units whose gradient is 10C on one
//! coordinate of a data-free audit block: each is included with probability 1/2, Poisson-sampled
//! at the accounted q, clipped to C and noised like every unit. In units of C, canary i's
//! privatised coordinate at step t is `y = b_i s_it + sigma z` (b: included, s: sampled, z
//! standard normal) when the machinery is right. [`Observations`] streams what a job sees, in
//! O(m) per step and O(m) memory:
//!
//! * per canary, the all-iterate Neyman-Pearson log-likelihood ratio
//!   `S_i = sum_t log(1 - q + q exp((2y - 1) / 2 sigma^2))`, the score a one-run lower bound
//!   ranks canaries by (Steinke, Nasr & Jagielski, NeurIPS 2023);
//! * sums and sums of squares of y over the excluded and the included canaries;
//! * the number of included canaries the sampler drew at each step;
//! * per trainable tensor, the realised noise (privatised minus clipped sum, in units of C),
//!   which does not depend on the data.
//!
//! [`Observations::decide`] turns them into four tests, each two-sided (a variance that is too
//! small is as wrong as one too large):
//!
//! * **V**, noise on the canaries: `sum y^2 / sigma^2` over excluded canaries is chi-square with
//!   one degree of freedom per observation;
//! * **M**, clipping and sampling rate: `sum y` over included canaries has mean `n q` and
//!   variance `n (q (1 - q) + sigma^2)` (a z-test);
//! * **D**, the sampler's dispersion: `sum_t (k_t - n_in q)^2 / (n_in q (1 - q))` has mean one
//!   per step and is matched to a scaled chi-square by its exact variance (a fixed-size batch
//!   makes it too small, a rate above q too large);
//! * **N**, each tensor's noise: `sum e^2 / sigma^2` is chi-square with one degree of freedom
//!   per coordinate.
//!
//! The job fails when any p-value is below its share of [`HARD_FAIL_LEVEL`] (Bonferroni over the
//! tests run). What this module does not own: inserting the canaries
//! (`train::gradient_canaries`), the one-run lower bounds, reports.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

/// The false-alarm level at which a job fails, over all of its tests together.
pub const HARD_FAIL_LEVEL: f64 = 1e-6;

/// Realised noise of one trainable tensor, in units of C: coordinates seen, sum of squares.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseStats {
    /// Coordinates observed (over all steps).
    pub count: u64,
    /// Sum of the squared noise.
    pub sum_sq: f64,
}

/// What a job's canaries and noise showed so far (serialisable: a checkpoint carries it, so a
/// resumed job goes on with every step it observed).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Observations {
    q: f64,
    sigma: f64,
    included: Vec<bool>,
    n_in: usize,
    llr: Vec<f64>,
    in_sum: f64,
    in_count: u64,
    out_sum_sq: f64,
    out_count: u64,
    steps: u64,
    dispersion: f64,
    tensors: Vec<(String, NoiseStats)>,
}

/// One goodness-of-fit test and its outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitTest {
    /// `V`, `M`, `D`, or `N:<tensor>`.
    pub name: String,
    /// What it checks, in words.
    pub checks: String,
    /// The measured quantity over its expected value (1 when the machinery is right).
    pub ratio: f64,
    /// Two-sided p-value.
    pub p_value: f64,
}

/// The decision on a job's privacy machinery.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Every test run.
    pub tests: Vec<FitTest>,
    /// The p-value below which a test fails (the hard-fail level over the tests run).
    pub level: f64,
    /// The failing tests' names and what they checked; empty when the job passes.
    pub failed: Vec<String>,
}

impl Decision {
    /// True when no test fell below its level.
    pub fn passed(&self) -> bool {
        self.failed.is_empty()
    }

    /// One line for people: each test's measured-over-expected ratio and p-value, then the
    /// verdict, e.g. `noise 1.003 (p = 0.41), mean 0.98 (p = 0.70), sampler 1.05 (p = 0.52),
    /// tensor noise 1.000 worst (p = 0.33): implementation checks passed`.
    pub fn summary(&self) -> String {
        let find = |name: &str| self.tests.iter().find(|t| t.name == name);
        let mut parts = Vec::new();
        for (name, label) in [("V", "canary noise"), ("M", "canary mean"), ("D", "sampler dispersion")] {
            if let Some(t) = find(name) {
                parts.push(format!("{label} {:.3} (p = {})", t.ratio, p_value(t.p_value)));
            }
        }
        if let Some(worst) = self.tests.iter().filter(|t| t.name.starts_with("N:")).min_by(|a, b| a.p_value.total_cmp(&b.p_value)) {
            parts.push(format!("tensor noise {:.3} at worst (p = {}, {})", worst.ratio, p_value(worst.p_value), &worst.name[2..]));
        }
        let verdict = if self.passed() { "implementation checks passed".to_string() } else { format!("FAILED: {}", self.failed.join("; ")) };
        format!("{}: {verdict}", parts.join(", "))
    }
}

impl Observations {
    /// A job's canaries (`included[i]`: canary i was drawn into the run) at sampling rate `q`
    /// and noise multiplier `sigma`.
    pub fn new(included: Vec<bool>, q: f64, sigma: f64) -> Observations {
        let n_in = included.iter().filter(|&&b| b).count();
        let m = included.len();
        Observations {
            q,
            sigma,
            included,
            n_in,
            llr: vec![0.0; m],
            in_sum: 0.0,
            in_count: 0,
            out_sum_sq: 0.0,
            out_count: 0,
            steps: 0,
            dispersion: 0.0,
            tensors: Vec::new(),
        }
    }

    /// One step: `y[i]`, canary i's privatised coordinate in units of C, and how many included
    /// canaries the sampler drew.
    pub fn observe_step(&mut self, y: &[f64], sampled_in: usize) {
        assert_eq!(y.len(), self.included.len(), "one observation per canary");
        let two_var = 2.0 * self.sigma * self.sigma;
        for (i, &yi) in y.iter().enumerate() {
            self.llr[i] += log_mix(self.q, (2.0 * yi - 1.0) / two_var);
            if self.included[i] {
                self.in_sum += yi;
                self.in_count += 1;
            } else {
                self.out_sum_sq += yi * yi;
                self.out_count += 1;
            }
        }
        let expected = self.n_in as f64 * self.q;
        let var = self.n_in as f64 * self.q * (1.0 - self.q);
        if var > 0.0 {
            self.dispersion += (sampled_in as f64 - expected).powi(2) / var;
        }
        self.steps += 1;
    }

    /// The realised noise of tensor `name` at one step (privatised minus clipped sum, in units
    /// of C): `count` coordinates observed, `sum_sq` the sum of their squares.
    pub fn observe_noise(&mut self, name: &str, count: u64, sum_sq: f64) {
        let stats = match self.tensors.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => s,
            None => {
                self.tensors.push((name.to_owned(), NoiseStats::default()));
                &mut self.tensors.last_mut().expect("just pushed").1
            }
        };
        stats.count += count;
        stats.sum_sq += sum_sq;
    }

    /// Each canary's log-likelihood ratio so far (the score of the one-run lower bounds).
    pub fn scores(&self) -> &[f64] {
        &self.llr
    }

    /// Which canaries were included.
    pub fn included(&self) -> &[bool] {
        &self.included
    }

    /// Steps observed.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The accounted sampling rate q.
    pub fn sample_rate(&self) -> f64 {
        self.q
    }

    /// The accounted noise multiplier sigma.
    pub fn noise_multiplier(&self) -> f64 {
        self.sigma
    }

    /// The goodness-of-fit tests on what was observed, and the decision at [`HARD_FAIL_LEVEL`].
    pub fn decide(&self) -> Decision {
        let var = self.sigma * self.sigma;
        let mut tests = Vec::new();
        if self.out_count > 0 {
            let statistic = self.out_sum_sq / var;
            tests.push(FitTest {
                name: "V".into(),
                checks: "noise on the canaries' coordinates (its variance against sigma^2 C^2)".into(),
                ratio: statistic / self.out_count as f64,
                p_value: chi_square_two_sided(statistic, self.out_count as f64),
            });
        }
        if self.in_count > 0 {
            let n = self.in_count as f64;
            let z = (self.in_sum - n * self.q) / (n * (self.q * (1.0 - self.q) + var)).sqrt();
            tests.push(FitTest {
                name: "M".into(),
                checks: "clipping and the sampling rate (included canaries' mean against q C per step)".into(),
                ratio: self.in_sum / (n * self.q),
                p_value: normal_two_sided(z),
            });
        }
        if self.steps > 0 && self.n_in > 0 && self.q < 1.0 {
            // Each step's (k - nq)^2 / (nq(1-q)) has mean 1 and, from the binomial's fourth
            // central moment, variance c = 2 + 1/(nq(1-q)) - 6/n (2 only as n q grows): the sum
            // is matched to (c/2) chi-square with 2T/c degrees of freedom (Satterthwaite), which
            // keeps the tail honest when few canaries are drawn per step.
            let n = self.n_in as f64;
            let c = (2.0 + 1.0 / (n * self.q * (1.0 - self.q)) - 6.0 / n).max(1e-9);
            let steps = self.steps as f64;
            tests.push(FitTest {
                name: "D".into(),
                checks: "the sampler's dispersion (included canaries drawn per step against Binomial(n, q))".into(),
                ratio: self.dispersion / steps,
                p_value: chi_square_two_sided(self.dispersion * 2.0 / c, 2.0 * steps / c),
            });
        }
        for (name, s) in &self.tensors {
            if s.count == 0 {
                continue;
            }
            let statistic = s.sum_sq / var;
            tests.push(FitTest {
                name: format!("N:{name}"),
                checks: format!("the noise of tensor {name} (its variance against sigma^2 C^2)"),
                ratio: statistic / s.count as f64,
                p_value: chi_square_two_sided(statistic, s.count as f64),
            });
        }
        let level = HARD_FAIL_LEVEL / tests.len().max(1) as f64;
        let failed = tests.iter().filter(|t| !(t.p_value >= level)).map(|t| format!("{} ({}: measured/expected {:.4}, p = {:.2e})", t.name, t.checks, t.ratio, t.p_value)).collect();
        Decision { tests, level, failed }
    }
}

/// A p-value for people: two decimals, or two significant digits below 0.01.
fn p_value(p: f64) -> String {
    if p >= 0.01 {
        format!("{p:.2}")
    } else {
        format!("{p:.1e}")
    }
}

/// `log(1 - q + q e^a)`, stable for large |a|.
fn log_mix(q: f64, a: f64) -> f64 {
    if a > 0.0 {
        a + (q + (1.0 - q) * (-a).exp()).ln()
    } else {
        (q * a.exp_m1()).ln_1p()
    }
}

/// Two-sided p-value of `z` under the standard normal.
fn normal_two_sided(z: f64) -> f64 {
    if !z.is_finite() {
        return 0.0;
    }
    let n = Normal::new(0.0, 1.0).expect("the standard normal");
    (2.0 * n.sf(z.abs())).min(1.0)
}

/// Two-sided p-value of `x` under chi-square with `df` degrees of freedom: twice the smaller
/// tail. Past 10^5 degrees of freedom the Wilson-Hilferty cube-root transform (normal to a
/// relative error far below the 1e-6 level's needs at that size) replaces the incomplete gamma.
fn chi_square_two_sided(x: f64, df: f64) -> f64 {
    if !x.is_finite() || df <= 0.0 {
        return 0.0;
    }
    let (lower, upper) = if df > 1e5 {
        let n = Normal::new(0.0, 1.0).expect("the standard normal");
        let h = 2.0 / (9.0 * df);
        let z = ((x / df).cbrt() - (1.0 - h)) / h.sqrt();
        (n.cdf(z), n.sf(z))
    } else {
        let c = ChiSquared::new(df).expect("positive degrees of freedom");
        (c.cdf(x), c.sf(x))
    };
    (2.0 * lower.min(upper)).min(1.0)
}

/// Simulated jobs of the idealised mechanism, for the tests here and of the one-run bounds.
#[cfg(test)]
pub(crate) mod simulate {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use rand_distr::{Distribution, StandardNormal};

    /// How the simulated machinery departs from what is accounted: each field 1 when honest.
    #[derive(Clone, Copy)]
    pub(crate) struct Machinery {
        /// Noise std over the accounted sigma C.
        pub(crate) noise: f64,
        /// Noise std on the canaries' tensor only.
        pub(crate) canary_noise: f64,
        /// The canary's magnitude after "clipping" (10 when clipping is off).
        pub(crate) magnitude: f64,
        /// The true sampling rate over the accounted q.
        pub(crate) rate: f64,
        /// Noise draws summed per step (micro-batches each adding their own).
        pub(crate) draws_per_step: f64,
        /// Sample a fixed-size batch (round(n_in q) included canaries every step).
        pub(crate) fixed_batch: bool,
    }

    pub(crate) const HONEST: Machinery = Machinery { noise: 1.0, canary_noise: 1.0, magnitude: 1.0, rate: 1.0, draws_per_step: 1.0, fixed_batch: false };

    /// One simulated job of `m` canaries over `steps` steps at (q, sigma), with a 4096-coordinate
    /// tensor's noise beside them; seeded, so every run is reproducible.
    pub(crate) fn run(seed: u64, m: usize, steps: usize, q: f64, sigma: f64, mech: Machinery) -> Observations {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let included: Vec<bool> = (0..m).map(|_| rng.random_bool(0.5)).collect();
        let mut obs = Observations::new(included.clone(), q, sigma);
        let canary_sd = sigma * mech.canary_noise * mech.draws_per_step.sqrt();
        let tensor_sd = sigma * mech.noise * mech.draws_per_step.sqrt();
        let n_in = included.iter().filter(|&&b| b).count();
        let mut y = vec![0.0; m];
        let mut noise = vec![0.0; 4096];
        for _ in 0..steps {
            let mut drawn: Vec<bool> = included.iter().map(|&b| b && rng.random_bool((q * mech.rate).min(1.0))).collect();
            if mech.fixed_batch {
                let k = (n_in as f64 * q).round() as usize;
                let mut left = k;
                drawn = included.iter().map(|&b| if b && left > 0 { left -= 1; true } else { false }).collect();
            }
            let sampled = drawn.iter().filter(|&&d| d).count();
            for i in 0..m {
                let z: f64 = StandardNormal.sample(&mut rng);
                y[i] = if drawn[i] { mech.magnitude } else { 0.0 } + canary_sd * z;
            }
            obs.observe_step(&y, sampled);
            for e in noise.iter_mut() {
                let z: f64 = StandardNormal.sample(&mut rng);
                *e = tensor_sd * z;
            }
            obs.observe_noise("layer.0.weight", noise.len() as u64, noise.iter().map(|e| e * e).sum());
        }
        obs
    }

}

#[cfg(test)]
mod tests {
    use super::simulate::{run as simulate, Machinery, HONEST};
    use super::*;

    fn run(seed: u64, m: usize, steps: usize, q: f64, sigma: f64, mech: Machinery) -> Decision {
        simulate(seed, m, steps, q, sigma, mech).decide()
    }

    /// Honest runs pass: over 200 seeded runs at each setting not one falls below the hard-fail
    /// level, and the p-values look uniform (about 5 % of them below 0.05).
    #[test]
    fn honest_runs_pass() {
        let mut below = 0;
        let mut total = 0;
        for (q, sigma, steps) in [(0.05, 0.8, 40), (0.05, 1.5, 200)] {
            for seed in 0..200 {
                let d = run(seed, 1000, steps, q, sigma, HONEST);
                assert!(d.passed(), "seed {seed}: {:?}", d.failed);
                below += d.tests.iter().filter(|t| t.p_value < 0.05).count();
                total += d.tests.len();
            }
        }
        let fraction = below as f64 / total as f64;
        assert!((0.03..0.07).contains(&fraction), "{fraction} of p-values below 0.05");
    }

    /// Every mutant of the research note fails in one run, by the test meant to catch it.
    #[test]
    fn every_mutant_fails_in_one_run() {
        let mutants = [
            ("noise std halved", Machinery { noise: 0.5, canary_noise: 0.5, ..HONEST }, "V"),
            ("no noise on the canaries' tensor", Machinery { canary_noise: 0.0, ..HONEST }, "V"),
            ("clipping disabled (canary 10C)", Machinery { magnitude: 10.0, ..HONEST }, "M"),
            ("true sampling rate 2q", Machinery { rate: 2.0, ..HONEST }, "M"),
            ("noise per micro-batch (4 per step)", Machinery { draws_per_step: 4.0, ..HONEST }, "V"),
            ("fixed-size batches", Machinery { fixed_batch: true, ..HONEST }, "D"),
            ("one tensor's noise halved", Machinery { noise: 0.5, ..HONEST }, "N:layer.0.weight"),
        ];
        for (q, sigma, steps) in [(0.05, 0.8, 40), (0.05, 1.5, 200)] {
            for (what, mech, test) in mutants {
                for seed in 0..5 {
                    let d = run(1000 + seed, 1000, steps, q, sigma, mech);
                    assert!(!d.passed(), "{what} passed (q {q}, sigma {sigma}, seed {seed})");
                    assert!(d.failed.iter().any(|f| f.starts_with(&format!("{test} "))), "{what}: {:?}", d.failed);
                }
            }
        }
    }

    /// A checkpoint carries the observations: one restored from JSON goes on exactly as the
    /// original, and the verdict reads in words.
    #[test]
    fn observations_survive_a_checkpoint_and_the_verdict_reads() {
        let obs = simulate(3, 200, 20, 0.05, 1.0, HONEST);
        let restored: Observations = serde_json::from_str(&serde_json::to_string(&obs).unwrap()).unwrap();
        assert_eq!(restored, obs);
        let (mut a, mut b) = (obs, restored);
        a.observe_step(&vec![0.5; 200], 4);
        b.observe_step(&vec![0.5; 200], 4);
        assert_eq!(a.decide(), b.decide());
        let honest = run(3, 1000, 40, 0.05, 0.8, HONEST).summary();
        assert!(honest.starts_with("canary noise ") && honest.ends_with("implementation checks passed"), "{honest}");
        let broken = run(3, 1000, 40, 0.05, 0.8, Machinery { magnitude: 10.0, ..HONEST }).summary();
        assert!(broken.contains("FAILED: M (clipping"), "{broken}");
    }

    /// D's per-step variance `2 + 1/(n q (1 - q)) - 6/n` (the binomial's fourth central moment)
    /// matches 400 000 seeded binomial draws (ChaCha20, seed 11) at n = 40, q = 0.1, where the
    /// chi-square's 2 would be 6 % short.
    #[test]
    fn the_dispersion_variance_matches_binomial_draws() {
        use rand::SeedableRng;
        use rand_distr::{Binomial, Distribution};
        let (n, q) = (40u64, 0.1);
        let (mu, v) = (n as f64 * q, n as f64 * q * (1.0 - q));
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let draws: Vec<f64> = (0..400_000).map(|_| (Binomial::new(n, q).unwrap().sample(&mut rng) as f64 - mu).powi(2) / v).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        let c = 2.0 + 1.0 / v - 6.0 / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!((var - c).abs() < 0.04 && (var - 2.0).abs() > 0.08, "{var} vs {c}");
    }

    /// The chi-square tails agree with an independent route: the Wilson-Hilferty transform and
    /// the incomplete gamma meet at 10^5 degrees of freedom.
    #[test]
    fn chi_square_tails_agree_across_the_switch() {
        let df = 1e5;
        for x in [df * 0.98, df, df * 1.02] {
            let exact = {
                let c = ChiSquared::new(df).unwrap();
                2.0 * c.cdf(x).min(c.sf(x))
            };
            let h = 2.0 / (9.0 * df);
            let z = ((x / df).cbrt() - (1.0 - h)) / h.sqrt();
            let n = Normal::new(0.0, 1.0).unwrap();
            let wh = 2.0 * n.cdf(z).min(n.sf(z));
            assert!((exact - wh).abs() <= 1e-3 * exact.max(1e-12) + 1e-9, "x {x}: {exact} vs {wh}");
        }
        assert_eq!(log_mix(0.3, 0.0), 0.0);
        assert!((log_mix(0.01, 800.0) - (800.0 + 0.01f64.ln())).abs() < 1e-9);
    }
}
