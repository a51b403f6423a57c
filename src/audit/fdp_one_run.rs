//! The f-DP one-run audit of Mahloujifar, Melis & Chaudhuri, "Auditing f-Differential Privacy
//! in One Run" (ICML 2025, arXiv 2410.22235; reference code: Meta's PrivacyGuard,
//! `FDPAnalysisNode`, whose `rh_with_cap` / `audit_rh_with_cap` is the recursion below with
//! k = 2, i.e. each canary is guessed "in", "out" or not at all).
//!
//! What this file owns: trade-off functions ([`TradeOff`]: from an (eps, delta) profile, in
//! closed form for Gaussian and pure DP, and from the certified PLD accountant for DP-SGD), the
//! paper's bound on how many guesses an f-DP mechanism lets an adversary get right
//! ([`p_value`]), and the audit of a job's gradient canaries against the certified curve of its
//! DP-SGD parameters ([`audit`]). It does not own drawing or scoring the canaries, choosing
//! delta, or what a report makes of the numbers.
//!
//! Setting: m canaries, each included independently with probability 1/2. A guesser that sees
//! only the trained model makes `k` guesses (here: the top k+ scores "in", the bottom k- "out",
//! abstaining on the rest) and `C` of them are right. For a symmetric trade-off function f let
//! `fbar_inv(r) = f(1 - r)` (the paper's inverse blow-up function). Write
//! `r_j = E[C 1{C >= j}] / m` and `h_j = E[(k - C) 1{C >= j}] / m`. f-DP towards each canary
//! (and the concavity of `1 - f`) gives `h_{j-1} >= fbar_inv(r_j)`; by definition
//! `r_j - r_{j+1} = j P[C = j] / m`, `h_j - h_{j+1} = (k - j) P[C = j] / m` and
//! `r_0 + h_0 = k / m`. If `P[C >= c] = tau`, the least `r_0 + h_0` these allow comes from
//! putting the whole tail at `C = c` (`r_c = tau c / m`, `h_c = tau (k - c) / m`) and as little
//! mass below as the constraints permit:
//! `h_i = max(h_{i+1}, fbar_inv(r_{i+1}))`, `r_i = r_{i+1} + i / (k - i) (h_i - h_{i+1})`
//! for `i = c-1, ..., 0`. When that least value exceeds `k / m`, no f-DP mechanism has
//! `P[C >= c] = tau`; it grows with tau, so [`p_value`] is the largest tau not excluded.
//!
//! Note (checked in the tests): for pure eps-DP this recursion is never below the binomial bound
//! of Steinke, Nasr & Jagielski (2023), equals it when every guess is right, and is otherwise
//! slightly above it (the constraints above know the count only through these moments).

use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::{normal, History};

/// Significance of the audit: the in-family bound is the curve rejected at 95 % confidence.
pub const LEVEL: f64 = 0.05;

/// The k+ of the guess grid, in percent of m (at least 1 guess); each is tried with k- = 0 and
/// with k- = k+ (capped at m - k+), 14 pairs in all, Bonferroni-corrected.
pub const K_PLUS_PERCENT: [f64; 7] = [0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0];

/// Number of (k+, k-) pairs of the grid: the Bonferroni factor.
pub const PAIRS: usize = 2 * K_PLUS_PERCENT.len();

/// The smallest p-value stated: below it the bound is reported as this floor (still an upper
/// bound on the probability, just not a tight one).
pub const P_VALUE_FLOOR: f64 = 1e-300;

/// Bisection tolerance of [`p_value`] on ln(tau): the answer is within a factor `e^1e-7` above
/// the paper's bound, never below it.
const P_VALUE_LN_TOLERANCE: f64 = 1e-7;

/// The certified curve is built from the profile at `CURVE_GRID_POINTS` epsilons spread evenly
/// over `[0, eps_top]`, `eps_top` the RDP epsilon at `CURVE_TAIL_DELTA` (an upper bound on the
/// certified one, so the grid reaches the point where delta falls below it).
const CURVE_GRID_POINTS: usize = 4001;
/// See [`CURVE_GRID_POINTS`].
const CURVE_TAIL_DELTA: f64 = 1e-25;
/// The top of the epsilon grid stays within these limits.
const CURVE_EPS_TOP_RANGE: (f64, f64) = (0.05, 500.0);

/// The in-family search never goes below this noise multiplier (the daemon's own floor)...
const SIGMA_SEARCH_MIN: f64 = 0.1;
/// ... nor above this one (a curve at sigma' = 1e4 is perfect privacy to many digits).
const SIGMA_SEARCH_MAX: f64 = 1e4;
/// The in-family bisection stops when the bracket's ratio `hi / lo` is below `1 + this`.
const SIGMA_SEARCH_TOLERANCE: f64 = 1e-3;

/// Everything that can go wrong in the f-DP audit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FdpAuditError {
    /// An argument is outside its domain.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// The offending value, printed.
        value: String,
        /// What the value must satisfy.
        reason: &'static str,
    },
    /// Canary scores and inclusion bits differ in length.
    #[error("{scores} canary scores but {included} inclusion bits")]
    LengthMismatch {
        /// Number of scores.
        scores: usize,
        /// Number of inclusion bits.
        included: usize,
    },
    /// A canary score is NaN, so it cannot be ranked.
    #[error("canary {index} has a NaN score")]
    NanScore {
        /// The canary's index.
        index: usize,
    },
    /// The certified accountant refused or failed.
    #[error(transparent)]
    Accountant(#[from] ewtune_accountant::Error),
}

fn invalid(name: &'static str, value: impl std::fmt::Display, reason: &'static str) -> FdpAuditError {
    FdpAuditError::InvalidArgument { name, value: value.to_string(), reason }
}

/// A symmetric trade-off function f: [0, 1] -> [0, 1] (convex, non-increasing, `f(a) <= 1 - a`):
/// `f(alpha)` is the least type II error of any test at type I error alpha between the outputs
/// on two neighbouring datasets. Stored in closed form (Gaussian DP) or as the upper envelope of
/// the lines of an (eps, delta) profile (breakpoints kept, evaluation by bisection).
#[derive(Debug, Clone, PartialEq)]
pub struct TradeOff {
    curve: Curve,
}

#[derive(Debug, Clone, PartialEq)]
enum Curve {
    /// `f(a) = Phi(Phi^-1(1 - a) - mu)`.
    Gaussian { mu: f64 },
    /// `f(1 - r) = max(0, max_k lines[k](r))`.
    Lines(Envelope),
}

/// A line `g(r) = slope (r - root)` in the variable `r = 1 - alpha`: with r as the argument the
/// bottom-right of the curve (alpha near 1, f tiny), which decides small p-values, is evaluated
/// without forming `1 - r`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    slope: f64,
    root: f64,
}

impl Line {
    fn at(&self, r: f64) -> f64 {
        self.slope * (r - self.root)
    }

    /// Where `self` and `next` (a steeper line) cross.
    fn crossing(&self, next: &Line) -> f64 {
        (next.slope * next.root - self.slope * self.root) / (next.slope - self.slope)
    }
}

/// The upper envelope of lines with increasing slopes; `breaks[k]` is where `lines[k + 1]`
/// overtakes `lines[k]`.
#[derive(Debug, Clone, PartialEq)]
struct Envelope {
    lines: Vec<Line>,
    breaks: Vec<f64>,
}

impl Envelope {
    fn new(mut lines: Vec<Line>) -> Self {
        lines.sort_by(|a, b| a.slope.total_cmp(&b.slope).then(a.root.total_cmp(&b.root)));
        let mut hull: Vec<Line> = Vec::with_capacity(lines.len());
        for line in lines {
            // Equal slopes: the first (smallest root, highest line) is kept.
            if hull.last().is_some_and(|last| last.slope == line.slope) {
                continue;
            }
            // Drop the last line while the new one overtakes the one before it no later than it did.
            while hull.len() >= 2 {
                let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                if a.crossing(&line) <= a.crossing(&b) {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(line);
        }
        let breaks = hull.windows(2).map(|w| w[0].crossing(&w[1])).collect();
        Self { lines: hull, breaks }
    }

    /// The envelope at r (each line is a valid lower bound, so a rounding slip in the breaks
    /// only costs tightness; the neighbours are checked as well).
    fn at(&self, r: f64) -> f64 {
        let k = self.breaks.partition_point(|&b| b < r);
        let lo = k.saturating_sub(1);
        let hi = (k + 1).min(self.lines.len() - 1);
        self.lines[lo..=hi].iter().map(|l| l.at(r)).fold(0.0, f64::max)
    }
}

impl TradeOff {
    /// The trade-off function certified by an (eps, delta) profile: every point `(eps, delta)`
    /// (the mechanism is (eps, delta)-DP) gives `f(a) >= max(0, 1 - delta - e^eps a,
    /// e^-eps (1 - delta - a))` (Dong, Roth & Su 2019, Prop. 2.5 / Zhu, Dong & Wang 2022), and f
    /// is the supremum over the points. Each point's curve is symmetric, so the supremum equals
    /// its own inverse: the symmetrisation `min(f, f^-1)` leaves it as it is and the null is
    /// never narrower than what the points certify. Refused: an empty list, an eps that is not
    /// finite and `>= 0`, a delta outside `[0, 1]`.
    pub fn from_profile(points: &[(f64, f64)]) -> Result<Self, FdpAuditError> {
        if points.is_empty() {
            return Err(invalid("points", "[]", "the profile needs at least one (eps, delta) point"));
        }
        let mut lines = Vec::with_capacity(2 * points.len());
        for &(eps, delta) in points {
            if !(eps.is_finite() && eps >= 0.0) {
                return Err(invalid("eps", eps, "each epsilon must be finite and >= 0"));
            }
            if !(0.0..=1.0).contains(&delta) {
                return Err(invalid("delta", delta, "each delta must lie in [0, 1]"));
            }
            // In r = 1 - a: e^-eps (r - delta), and e^eps (r - (1 - e^-eps (1 - delta))).
            lines.push(Line { slope: (-eps).exp(), root: delta });
            lines.push(Line { slope: eps.exp(), root: -(-eps).exp_m1() + (-eps).exp() * delta });
        }
        Ok(Self { curve: Curve::Lines(Envelope::new(lines)) })
    }

    /// mu-Gaussian DP in closed form: `f(a) = Phi(Phi^-1(1 - a) - mu)`; `mu` finite and `>= 0`.
    pub fn gaussian(mu: f64) -> Result<Self, FdpAuditError> {
        if !(mu.is_finite() && mu >= 0.0) {
            return Err(invalid("mu", mu, "mu must be finite and >= 0"));
        }
        Ok(Self { curve: Curve::Gaussian { mu } })
    }

    /// Pure eps-DP: `f(a) = max(0, 1 - e^eps a, e^-eps (1 - a))`; `eps` finite and `>= 0`.
    pub fn pure(eps: f64) -> Result<Self, FdpAuditError> {
        Self::from_profile(&[(eps, 0.0)])
    }

    /// The curve the certified PLD accountant guarantees for `history` (add/remove adjacency,
    /// both directions): [`TradeOff::from_profile`] of the certified upper delta
    /// (`PldAccountant::default().delta_upper_profile`, the `.upper` of `delta` at many epsilons
    /// from shared compositions) at `CURVE_GRID_POINTS` (4001) epsilons spread evenly over
    /// `[0, eps_top]`, `eps_top` the RDP epsilon at delta = 1e-25 clamped to `[0.05, 500]`.
    /// A larger delta is a lower curve, and finitely many points give a curve below the true
    /// one: the null is conservative.
    pub fn certified(history: &History) -> Result<Self, FdpAuditError> {
        let rdp_top = ewtune_accountant::rdp::epsilon(history, CURVE_TAIL_DELTA)?.epsilon;
        let top = if rdp_top.is_finite() { rdp_top } else { CURVE_EPS_TOP_RANGE.1 };
        let top = top.clamp(CURVE_EPS_TOP_RANGE.0, CURVE_EPS_TOP_RANGE.1);
        let last = (CURVE_GRID_POINTS - 1) as f64;
        let eps: Vec<f64> = (0..CURVE_GRID_POINTS).map(|i| top * i as f64 / last).collect();
        let deltas = PldAccountant::default().delta_upper_profile(history, &eps)?;
        let points: Vec<(f64, f64)> = eps.into_iter().zip(deltas).map(|(e, d)| (e, d.clamp(0.0, 1.0))).collect();
        Self::from_profile(&points)
    }

    /// `f(alpha)`; alpha is clamped into `[0, 1]`.
    pub fn eval(&self, alpha: f64) -> f64 {
        self.inverse_blow_up(1.0 - alpha.clamp(0.0, 1.0))
    }

    /// `f(1 - r)`, the paper's inverse blow-up function `fbar^-1(r)` of a symmetric f (the
    /// least probability of an event under one neighbour when it has probability r under the
    /// other), computed without forming `1 - r`; r is clamped into `[0, 1]`.
    pub fn inverse_blow_up(&self, r: f64) -> f64 {
        let r = r.clamp(0.0, 1.0);
        match &self.curve {
            Curve::Gaussian { mu } => {
                if r <= 0.0 {
                    0.0
                } else if r >= 1.0 {
                    1.0
                } else {
                    normal::cdf(normal_quantile(r) - mu)
                }
            }
            Curve::Lines(envelope) => envelope.at(r).min(r),
        }
    }
}

/// `Phi^-1(p)` for p in (0, 1): statrs' `erfc_inv`, polished by two Newton steps on
/// `ln Phi` (on the lower half; the upper half by symmetry) so that tiny p keep their digits.
fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    if p > 0.5 {
        return -normal_quantile(1.0 - p);
    }
    let mut x = -std::f64::consts::SQRT_2 * statrs::function::erf::erfc_inv(2.0 * p);
    for _ in 0..2 {
        let cdf = normal::cdf(x);
        let pdf = normal::pdf(x);
        if !(cdf > 0.0 && pdf > 0.0) {
            break;
        }
        x -= (cdf.ln() - p.ln()) * cdf / pdf;
    }
    x
}

/// True when no f-DP mechanism has `P[C >= correct] = tau`: the least `r_0 + h_0` of the
/// recursion (module doc) exceeds `guesses / m`. Needs `1 <= correct <= guesses <= m`.
fn excluded(f: &TradeOff, m: usize, guesses: usize, correct: usize, tau: f64) -> bool {
    let cap = guesses as f64 / m as f64;
    let mut r = tau * correct as f64 / m as f64;
    let mut h = tau * (guesses - correct) as f64 / m as f64;
    if r + h > cap {
        return true;
    }
    for i in (0..correct).rev() {
        let need = f.inverse_blow_up(r);
        if need <= h {
            // Nothing changes from here on: r and h are a fixed point.
            return false;
        }
        r += i as f64 / (guesses - i) as f64 * (need - h);
        h = need;
        if r + h > cap {
            // Both only grow as i falls.
            return true;
        }
    }
    false
}

/// The paper's upper bound on `P[at least correct of guesses guesses are right]` for any
/// mechanism that is f-DP towards each of m canaries included with probability 1/2 (its main
/// theorem with k = 2; module doc): the largest tau that the recursion does not exclude, found
/// by bisection on ln(tau) and reported at the excluded end of the final bracket (so at most a
/// factor `e^1e-7` above the exact bound, never below it), floored at [`P_VALUE_FLOOR`].
/// Arguments outside `correct <= guesses <= m`, `m >= 1` describe no audit: the answer is then
/// 1 (no evidence), as it is for `correct = 0`.
pub fn p_value(f: &TradeOff, m: usize, guesses: usize, correct: usize) -> f64 {
    if m == 0 || guesses > m || correct > guesses || correct == 0 {
        return 1.0;
    }
    if !excluded(f, m, guesses, correct, 1.0) {
        return 1.0;
    }
    if excluded(f, m, guesses, correct, P_VALUE_FLOOR) {
        return P_VALUE_FLOOR;
    }
    let (mut lo, mut hi) = (P_VALUE_FLOOR.ln(), 0.0f64);
    while hi - lo > P_VALUE_LN_TOLERANCE {
        let mid = 0.5 * (lo + hi);
        if excluded(f, m, guesses, correct, mid.exp()) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi.exp()
}

/// The result of [`audit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FdpAudit {
    /// The smallest [`p_value`] over the 14 guess pairs against the certified curve,
    /// Bonferroni-adjusted (times 14) and capped at 1: a small value rejects "this run is as
    /// private as its certified DP-SGD curve says".
    pub p_value: f64,
    /// `(k+, k-)` of the pair with the smallest p-value (the first on ties, grid order).
    pub best_pair: (usize, usize),
    /// Correct guesses of that pair.
    pub correct: usize,
    /// Guesses of that pair, `k+ + k-`.
    pub guesses: usize,
    /// The in-family bound: the certified epsilon (at the audit's delta, `.upper`) of the
    /// least-noisy DP-SGD run with the same q and steps whose curve the guesses still reject
    /// at 95 % (Bonferroni over the 14 pairs), i.e. eps(`sigma_in_family`); 0 when not even
    /// `sigma' = 1e4` is rejected. It measures how far the run is from perfect privacy *within
    /// the DP-SGD family*: it is NOT an (eps, delta) lower bound for the run (rejecting one
    /// trade-off curve says nothing about other mechanisms with the same (eps, delta)).
    pub eps_in_family: f64,
    /// The noise multiplier sigma' of that curve (the rejected end of the bisection bracket);
    /// infinity when nothing is rejected. The search runs over sigma' in `[0.1, 1e4]` (starting
    /// at the run's own sigma, doubling or halving to a bracket, then bisecting in log sigma'
    /// to a ratio of 1 + 1e-3); when the curve is rejected down to 0.1, or the accountant
    /// refuses a smaller sigma', the smallest sigma' rejected is reported and the bound is
    /// "at least" that.
    pub sigma_in_family: f64,
}

/// One (k+, k-) pair of the guess grid with its outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GuessPair {
    k_plus: usize,
    k_minus: usize,
    correct: usize,
}

impl GuessPair {
    fn guesses(&self) -> usize {
        self.k_plus + self.k_minus
    }
}

/// The 14 pairs: k+ = max(1, floor(m p / 100)) for p in [`K_PLUS_PERCENT`], k- in {0, k+}
/// (capped at m - k+). Canaries are ranked by score, highest first, ties broken by index
/// (lower first; independent of inclusion, as the bound requires); the top k+ are guessed
/// "in", the bottom k- "out".
fn guess_pairs(scores: &[f64], included: &[bool]) -> Vec<GuessPair> {
    let m = scores.len();
    let mut order: Vec<usize> = (0..m).collect();
    // Stable sort, descending score: equal scores keep ascending index.
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    // in_top[k] = included among the first k; out_bottom[k] = excluded among the last k.
    let mut in_top = vec![0usize; m + 1];
    let mut out_bottom = vec![0usize; m + 1];
    for k in 0..m {
        in_top[k + 1] = in_top[k] + usize::from(included[order[k]]);
        out_bottom[k + 1] = out_bottom[k] + usize::from(!included[order[m - 1 - k]]);
    }
    let mut pairs = Vec::with_capacity(PAIRS);
    for pct in K_PLUS_PERCENT {
        let k_plus = ((m as f64 * pct / 100.0).floor() as usize).clamp(1, m);
        for k_minus in [0, k_plus.min(m - k_plus)] {
            pairs.push(GuessPair { k_plus, k_minus, correct: in_top[k_plus] + out_bottom[k_minus] });
        }
    }
    pairs
}

/// True when some pair rejects f at `LEVEL / PAIRS`.
fn rejects(f: &TradeOff, m: usize, pairs: &[GuessPair]) -> bool {
    let level = LEVEL / PAIRS as f64;
    pairs.iter().any(|p| p.correct > 0 && excluded(f, m, p.guesses(), p.correct, level))
}

/// Whether the certified curve of DP-SGD at (sigma, q, steps) is rejected.
fn rejects_dp_sgd(sigma: f64, q: f64, steps: u64, m: usize, pairs: &[GuessPair]) -> Result<bool, FdpAuditError> {
    let curve = TradeOff::certified(&History::homogeneous(sigma, q, steps)?)?;
    Ok(rejects(&curve, m, pairs))
}

/// The in-family bound `(eps, sigma')` (see [`FdpAudit::eps_in_family`]).
fn in_family(
    rejected_at_sigma: bool,
    sigma: f64,
    q: f64,
    steps: u64,
    delta: f64,
    m: usize,
    pairs: &[GuessPair],
) -> Result<(f64, f64), FdpAuditError> {
    // lo: not rejected (None: none found in range), hi: rejected.
    let (mut lo, mut hi);
    if rejected_at_sigma {
        hi = sigma;
        lo = None;
        while hi / 2.0 >= SIGMA_SEARCH_MIN {
            // A refusal of the accountant (grid too large, ...) ends the range here.
            match rejects_dp_sgd(hi / 2.0, q, steps, m, pairs) {
                Ok(true) => hi /= 2.0,
                Ok(false) => {
                    lo = Some(hi / 2.0);
                    break;
                }
                Err(_) => break,
            }
        }
    } else {
        let mut below = sigma;
        loop {
            let next = below * 2.0;
            if next > SIGMA_SEARCH_MAX {
                return Ok((0.0, f64::INFINITY));
            }
            if rejects_dp_sgd(next, q, steps, m, pairs)? {
                hi = next;
                break;
            }
            below = next;
        }
        lo = Some(below);
    }
    if let Some(mut lo) = lo {
        while hi / lo > 1.0 + SIGMA_SEARCH_TOLERANCE {
            let mid = (lo * hi).sqrt();
            if rejects_dp_sgd(mid, q, steps, m, pairs)? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
    }
    let eps = PldAccountant::default().epsilon(&History::homogeneous(hi, q, steps)?, delta)?.bounds.upper;
    Ok((eps, hi))
}

/// The f-DP one-run audit of a DP-SGD job's canaries: `scores[i]` is canary i's score (higher
/// = more likely included; NaN refused), `included[i]` whether it was inserted; the job ran
/// `steps` steps at `noise_multiplier` and Poisson rate `sample_rate`, and `delta` is the delta
/// at which the in-family epsilon is stated. Guesses over the 14 (k+, k-) pairs (see
/// [`K_PLUS_PERCENT`]; ranking by score, ties broken by index), each bounded by [`p_value`]
/// against [`TradeOff::certified`] of `History::homogeneous(noise_multiplier, sample_rate,
/// steps)`, then the in-family bound (see [`FdpAudit`]).
pub fn audit(
    scores: &[f64],
    included: &[bool],
    noise_multiplier: f64,
    sample_rate: f64,
    steps: u64,
    delta: f64,
) -> Result<FdpAudit, FdpAuditError> {
    if scores.len() != included.len() {
        return Err(FdpAuditError::LengthMismatch { scores: scores.len(), included: included.len() });
    }
    if scores.is_empty() {
        return Err(invalid("scores", "[]", "the audit needs at least one canary"));
    }
    if let Some(index) = scores.iter().position(|s| s.is_nan()) {
        return Err(FdpAuditError::NanScore { index });
    }
    ewtune_accountant::domain::check_delta(delta)?;
    let history = History::homogeneous(noise_multiplier, sample_rate, steps)?;
    let m = scores.len();
    let pairs = guess_pairs(scores, included);
    let curve = TradeOff::certified(&history)?;
    let mut best = (f64::INFINITY, pairs[0]);
    for pair in &pairs {
        let p = p_value(&curve, m, pair.guesses(), pair.correct);
        if p < best.0 {
            best = (p, *pair);
        }
    }
    let (p_min, best_pair) = best;
    let (eps_in_family, sigma_in_family) = in_family(rejects(&curve, m, &pairs), noise_multiplier, sample_rate, steps, delta, m, &pairs)?;
    Ok(FdpAudit {
        p_value: (p_min * PAIRS as f64).min(1.0),
        best_pair: (best_pair.k_plus, best_pair.k_minus),
        correct: best_pair.correct,
        guesses: best_pair.guesses(),
        eps_in_family,
        sigma_in_family,
    })
}

#[cfg(test)]
mod tests {
    //! Randomised checks use `ChaCha20Rng::seed_from_u64` with fixed seeds: reproducible.

    use super::*;
}
