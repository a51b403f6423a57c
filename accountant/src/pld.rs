//! The certified accountant: privacy loss distributions (PLDs) with pessimistic
//! "connect-the-dots" discretisation, composed by FFT, both adjacency directions, heterogeneous
//! histories. Its `upper` is the only number ewtune states as a guarantee.
//!
//! Method (Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, "Connect the Dots: Tighter Discrete
//! Approximations of Privacy Loss Distributions", arXiv 2207.04380 v1, §3): on a grid of loss
//! values `k h`, each interval's A-mass `a` and B-mass `b` are split between its two end points so
//! that both are preserved. The resulting hockey-stick curve interpolates the true one at the grid
//! points and lies above it in between (convexity in `e^eps`), so the discrete pair dominates the
//! true pair and, by monotonicity of composition, every composed delta(eps) is an upper bound.
//!
//! What is added on top so that `upper` is a bound and not an estimate:
//! * per-step tail truncation: the upper tail goes to an atom at +infinity (counted in delta),
//!   a lower tail is rounded up to the first grid point (both pessimistic);
//! * exponential tilting: the steps are composed as `p(k) e^{t k}` (renormalised), with `t` at
//!   the saddle point of the epsilon asked about, so the FFT resolves the tail that decides
//!   delta with relative precision. Untilted, its round-off is absolute (about `1e-16` per
//!   step and per unit of mass) and at 10^5 steps it already rivals delta = 1e-8;
//! * the FFT window: composition is cyclic; the tilted mass outside the window (which can wrap
//!   or be missed) is bounded by Chernoff bounds computed from the discrete PMFs themselves;
//! * floating point: an a-posteriori bound on the FFT and power errors. Window and round-off
//!   errors together, `E` in the tilted measure, add at most `E e^{C - lambda eps}` to
//!   delta(eps) (see [`Composed`]), a small fraction of delta at any history length.
//!
//! The step PMFs themselves are taken as exact (as in dp_accounting): their masses are
//! differences of libm's erfc values (each within an ulp or two), and that rounding is not part
//! of the allowance; a bin's relative error `r` grows to at most `(1 + r)^N - 1` after N steps.
//!
//! `lower` is rigorous too: couple each true loss L with its discretisation L' (monotone
//! coupling inside each interval); `D = L' - L` has conditional range h and conditional mean at
//! most `m(h) <= h^2 (1+h)/8` (Jensen on e^{-l}), so by Hoeffding the composed shift exceeds
//! `N m(h) + h sqrt(N ln(1/eta)/2)` with probability at most eta. Hence
//! `delta_true(eps) >= delta_cd(eps + shift) - eta - allowances`.
//! `estimate` is the connect-the-dots value itself (what dp_accounting reports as its PLD epsilon).

use crate::edgeworth::{self, Order};
use crate::domain::{check_delta, check_epsilon, check_open, MAX_COMPOSE_WORK, MAX_GRID_POINTS, MIN_NOISE_MULTIPLIER};
use crate::error::{Error, Result};
use crate::event::{History, StepGroup};
use crate::mechanism::SubsampledGaussian;
use crate::normal;
use realfft::num_complex::Complex;
use realfft::RealFftPlanner;
use serde::Serialize;

const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;
/// Largest FFT the accountant will run.
const MAX_FFT_LEN: usize = MAX_GRID_POINTS;
/// Grid indices beyond this are not exact in f64 (2^53).
const EXACT_INDEX: f64 = 9_007_199_254_740_992.0;
/// Most grid points of all one-step PMFs of a history together (they are alive at once).
const MAX_STEP_POINTS: f64 = 2.0 * MAX_GRID_POINTS as f64;
/// Coarsest value discretisation the adaptive rule picks.
const MAX_INTERVAL: f64 = 1e-3;
/// Finest value discretisation the adaptive rule picks.
const MIN_INTERVAL: f64 = 1e-7;
/// Fraction of epsilon the adaptive rule allows for the worst-case discretisation bias `N m(h)`.
const BIAS_FRACTION: f64 = 1e-4;
/// Relative width of the rigorous bracket (upper - lower) the adaptive rule aims at.
const BRACKET_FRACTION: f64 = 0.1;

/// A lower bound, a central estimate and a guaranteed upper bound of one privacy parameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bounds {
    /// Rigorous lower bound: no smaller value is valid.
    pub lower: f64,
    /// The connect-the-dots value (tight, itself pessimistic up to discretisation).
    pub estimate: f64,
    /// Guaranteed upper bound: the mechanism satisfies it.
    pub upper: f64,
}

/// How the privacy loss axis is discretised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Discretization {
    /// Pick the interval from the history and the target so the bias stays far below the
    /// tolerances of the reference grid in tests/data/accountant_reference.csv (the default).
    Adaptive,
    /// A fixed value discretisation interval (dp_accounting's `value_discretization_interval`).
    Fixed(f64),
}

/// The certified epsilon with the error budget that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CertifiedEpsilon {
    /// lower / estimate / upper epsilon.
    #[serde(flatten)]
    pub bounds: Bounds,
    /// The value discretisation interval used.
    pub value_discretization: f64,
    /// FFT length used.
    pub fft_len: usize,
    /// Delta added to the upper bound for tails, wrap-around and floating point.
    pub delta_allowance: f64,
    /// 0, or the relative grid step (e.g. 0.0004) on which the sigmas and sampling rates of a
    /// history with too many distinct steps to compose one by one were rounded (sigma down, q
    /// up) into a history that dominates it. `upper` is then the bound of that history, still a
    /// guarantee for this one, and `lower` is 0 (no claim).
    pub coarsening: f64,
}

/// The certified PLD accountant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PldAccountant {
    /// How the loss axis is discretised.
    pub discretization: Discretization,
}

impl Default for PldAccountant {
    fn default() -> Self {
        Self { discretization: Discretization::Adaptive }
    }
}

/// Adjacency direction of the dominating pair (dp_accounting's `AdjacencyType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjacency {
    /// A = mechanism on D (with the example), B = on D minus it: loss L, A = mixture.
    Remove,
    /// A = mechanism on D (without), B = on D plus it: loss -L, A = N(0, 1).
    Add,
}

impl PldAccountant {
    /// An accountant with a fixed value discretisation interval `h`.
    pub fn with_interval(h: f64) -> Result<Self> {
        check_open("value_discretization", h, 0.0, 0.1, "the value discretisation interval must lie in (0, 0.1)")?;
        Ok(Self { discretization: Discretization::Fixed(h) })
    }

    /// Certified epsilon at `delta` for add/remove adjacency (max over both directions).
    /// Results are memoised per (history, delta, discretisation): a daemon asks the same
    /// question many times between two training steps.
    pub fn epsilon(&self, history: &History, delta: f64) -> Result<CertifiedEpsilon> {
        history.require_nonempty()?;
        check_delta(delta)?;
        let key = memo_key(history, delta, self.discretization);
        if let Some(hit) = memo().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(*hit);
        }
        let result = self.epsilon_uncached(history, delta)?;
        let mut m = memo().lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MEMO_CAPACITY {
            m.clear();
        }
        m.insert(key, result);
        Ok(result)
    }

    /// [`Self::epsilon`] without the memo: every call composes afresh (for benchmarks).
    pub fn epsilon_uncached(&self, history: &History, delta: f64) -> Result<CertifiedEpsilon> {
        history.require_nonempty()?;
        check_delta(delta)?;
        let guess = epsilon_guess(history, delta)?;
        let h = self.interval(history, guess, delta);
        let truncation = 1e-4 * delta / history.total_steps() as f64;
        let one_direction = |adjacency| -> Result<(CertifiedEpsilon, (f64, f64))> {
            let mut composed = Composed::build(history, adjacency, h, truncation, guess)?;
            // The guess only aims the tilt; if it missed, aim again at the composition's own
            // estimate (the bound was valid either way, just looser).
            let estimate = composed.invert(&composed.suffix_sums(), delta, false);
            if estimate.is_finite() && composed.allowance(estimate) > RETILT_FRACTION * delta {
                composed = Composed::build(history, adjacency, h, truncation, estimate)?;
            }
            let c = composed.epsilon(delta)?;
            Ok((c, (composed.log_allowance, composed.lambda)))
        };
        let (remove, add) = both_directions(one_direction);
        let ((r, r_allowance), (a, a_allowance)) = (remove?, add?);
        let upper = r.bounds.upper.max(a.bounds.upper);
        // Each direction's allowance at the epsilon stated (not at its own, smaller, answer).
        let allowance_at = |(log_allowance, lambda): (f64, f64)| (log_allowance - lambda * upper).exp();
        Ok(CertifiedEpsilon {
            bounds: Bounds { lower: r.bounds.lower.max(a.bounds.lower), estimate: r.bounds.estimate.max(a.bounds.estimate), upper },
            value_discretization: h,
            fft_len: r.fft_len.max(a.fft_len),
            delta_allowance: allowance_at(r_allowance).max(allowance_at(a_allowance)),
            coarsening: r.coarsening.max(a.coarsening),
        })
    }

    /// Certified delta at `eps` for add/remove adjacency (max over both directions).
    ///
    /// Consistent with [`Self::epsilon`]: a first, coarse pass estimates delta, and the final
    /// pass runs on half the interval `epsilon` would pick at that delta. Connect-the-dots
    /// over-states delta by an amount that shrinks like the square of the interval, so this
    /// curve lies below the one `epsilon` inverted, and `delta(epsilon(d).upper).upper <= d`
    /// (checked in the tests).
    pub fn delta(&self, history: &History, eps: f64) -> Result<Bounds> {
        history.require_nonempty()?;
        check_epsilon(eps)?;
        let steps = history.total_steps() as f64;
        let coarse = self.delta_on(history, eps, self.interval(history, eps.max(1e-3), 1e-6), 1e-16 / steps)?;
        let d0 = coarse.estimate;
        if !(d0 > 0.0 && d0 < 1.0) {
            return Ok(coarse);
        }
        let h = match self.discretization {
            Discretization::Fixed(h) => h,
            Discretization::Adaptive => match epsilon_guess(history, d0) {
                Ok(guess) => 0.5 * self.interval(history, guess, d0),
                Err(_) => return Ok(coarse),
            },
        };
        self.delta_on(history, eps, h, (1e-4 * d0).clamp(1e-200, 1e-16) / steps)
    }

    /// Certified upper bounds on delta(eps) at every eps of `epsilons` (add/remove adjacency,
    /// the larger of the two directions): a whole privacy profile, e.g. for an f-DP trade-off
    /// curve, from a few compositions per direction shared by all the epsilons, where
    /// [`Self::delta`] composes twice per direction for each one.
    ///
    /// Every value is a guarantee like `delta(eps).upper`: each composition's connect-the-dots
    /// delta plus its allowance at eps bounds the true delta (module doc), whatever its tilt, and
    /// the least of these bounds is kept; so is the least over the smaller epsilons (delta does
    /// not grow with eps). The first composition of each direction is aimed at the smallest
    /// epsilon asked for (untilted at 0); while some larger epsilon's allowance is above
    /// `PROFILE_ALLOWANCE_FRACTION` of its delta (or of `PROFILE_DELTA_FLOOR`, below which
    /// nothing is resolved), one more is tilted towards the smallest such epsilon: each serves
    /// a band of a few standard deviations of the composed loss. It stops after
    /// `PROFILE_MAX_TILTS` compositions, or when a tilt settles no new epsilon or can no longer
    /// grow (the support ends). The grid is the interval [`Self::epsilon`] would pick at delta
    /// = `PROFILE_REFERENCE_DELTA` (a `Fixed` accountant's own interval otherwise), and each
    /// step's tails are truncated at `1e-4 PROFILE_DELTA_FLOOR / steps`. Each epsilon is checked
    /// like [`Self::delta`]'s (finite, `>= 0`).
    pub fn delta_upper_profile(&self, history: &History, epsilons: &[f64]) -> Result<Vec<f64>> {
        history.require_nonempty()?;
        for &eps in epsilons {
            check_epsilon(eps)?;
        }
        let Some(bottom) = epsilons.iter().copied().reduce(f64::min) else {
            return Ok(Vec::new());
        };
        let h = match self.discretization {
            Discretization::Fixed(h) => h,
            Discretization::Adaptive => {
                let guess = epsilon_guess(history, PROFILE_REFERENCE_DELTA)?;
                adaptive_interval(history.total_steps(), guess, PROFILE_REFERENCE_DELTA)
            }
        };
        let truncation = 1e-4 * PROFILE_DELTA_FLOOR / history.total_steps() as f64;
        let one_direction = |adjacency| -> Result<Vec<f64>> {
            let mut best = vec![f64::INFINITY; epsilons.len()];
            let mut settled = vec![false; epsilons.len()];
            let (mut center, mut last_tilt) = (bottom, -1.0);
            for _ in 0..PROFILE_MAX_TILTS {
                let composed = Composed::build(history, adjacency, h, truncation, center)?;
                let sums = composed.suffix_sums();
                let mut newly_settled = false;
                for (i, &eps) in epsilons.iter().enumerate() {
                    let estimate = composed.delta_from_sums(&sums, eps);
                    let allowance = composed.allowance(eps);
                    best[i] = best[i].min((estimate + allowance).min(1.0));
                    if !settled[i] && allowance <= PROFILE_ALLOWANCE_FRACTION * estimate.max(PROFILE_DELTA_FLOOR) {
                        settled[i] = true;
                        newly_settled = true;
                    }
                }
                let saturated = composed.lambda <= last_tilt * 1.01;
                last_tilt = composed.lambda;
                // The next tilt aims at the smallest epsilon above this one still unsettled.
                let next = epsilons.iter().zip(&settled).filter(|&(&e, &s)| !s && e > center).map(|(&e, _)| e).reduce(f64::min);
                match next {
                    Some(e) if newly_settled && !saturated => center = e,
                    _ => break,
                }
            }
            Ok(best)
        };
        let (remove, add) = both_directions(one_direction);
        let (remove, add) = (remove?, add?);
        let mut profile: Vec<f64> = remove.iter().zip(&add).map(|(r, a)| r.max(*a)).collect();
        let mut order: Vec<usize> = (0..epsilons.len()).collect();
        order.sort_by(|&i, &j| epsilons[i].total_cmp(&epsilons[j]));
        let mut least = 1.0f64;
        for i in order {
            least = least.min(profile[i]);
            profile[i] = least;
        }
        Ok(profile)
    }

    fn delta_on(&self, history: &History, eps: f64, h: f64, truncation: f64) -> Result<Bounds> {
        let (remove, add) = both_directions(|adjacency| Composed::build(history, adjacency, h, truncation, eps).map(|c| c.delta(eps)));
        let (r, a) = (remove?, add?);
        Ok(Bounds { lower: r.lower.max(a.lower), estimate: r.estimate.max(a.estimate), upper: r.upper.max(a.upper) })
    }

    fn interval(&self, history: &History, eps_guess: f64, delta: f64) -> f64 {
        match self.discretization {
            Discretization::Fixed(h) => h,
            Discretization::Adaptive => adaptive_interval(history.total_steps(), eps_guess, delta),
        }
    }
}

/// The delta at which [`PldAccountant::delta_upper_profile`] picks its grid.
const PROFILE_REFERENCE_DELTA: f64 = 1e-6;
/// [`PldAccountant::delta_upper_profile`] truncates each step's tails so that its values bottom
/// out near `1e-4` of this.
const PROFILE_DELTA_FLOOR: f64 = 1e-30;
/// Most compositions (tilts) per direction of [`PldAccountant::delta_upper_profile`].
const PROFILE_MAX_TILTS: usize = 12;
/// An epsilon of [`PldAccountant::delta_upper_profile`] is served once some composition's
/// allowance there is at most this fraction of its delta.
const PROFILE_ALLOWANCE_FRACTION: f64 = 1e-3;

/// Runs `f` for the Remove direction on a second thread and for the Add direction on this one
/// (they are independent and equally costly).
fn both_directions<T: Send>(f: impl Fn(Adjacency) -> T + Sync) -> (T, T) {
    std::thread::scope(|s| {
        let remove = s.spawn(|| f(Adjacency::Remove));
        let add = f(Adjacency::Add);
        (remove.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), add)
    })
}

/// Memoised certified epsilons (bounded; cleared when full).
const MEMO_CAPACITY: usize = 4096;

type MemoKey = (Vec<(u64, u64, u64)>, u64, u64);

fn memo() -> &'static std::sync::Mutex<std::collections::HashMap<MemoKey, CertifiedEpsilon>> {
    static MEMO: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<MemoKey, CertifiedEpsilon>>> = std::sync::OnceLock::new();
    MEMO.get_or_init(Default::default)
}

fn memo_key(history: &History, delta: f64, d: Discretization) -> MemoKey {
    let groups = history.groups().iter().map(|g| (g.noise_multiplier.to_bits(), g.sample_rate.to_bits(), g.steps)).collect();
    let disc = match d {
        Discretization::Adaptive => 0,
        Discretization::Fixed(h) => h.to_bits(),
    };
    (groups, delta.to_bits(), disc)
}

/// The value discretisation interval for `steps` compositions around `eps` at `delta`: small
/// enough that the worst-case bias `N h^2/8` stays below `BIAS_FRACTION eps` and the rigorous
/// bracket below `BRACKET_FRACTION eps`, within [MIN_INTERVAL, MAX_INTERVAL].
pub fn adaptive_interval(steps: u64, eps: f64, delta: f64) -> f64 {
    let n = steps as f64;
    let by_bias = (8.0 * BIAS_FRACTION * eps / n).sqrt();
    let by_bracket = BRACKET_FRACTION * eps / (n * (1e3 / delta).ln() / 2.0).sqrt();
    by_bias.min(by_bracket).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// A cheap guess of epsilon that only sets the grid (never the answer): the larger of the
/// Edgeworth orders 0 and 2, or the RDP bound where both are degenerate.
fn epsilon_guess(history: &History, delta: f64) -> Result<f64> {
    let e0 = edgeworth::epsilon(history, delta, Order::new(0)?)?.estimate;
    let e2 = edgeworth::epsilon(history, delta, Order::DEFAULT)?.estimate;
    let g = e0.max(e2);
    if g.is_finite() && g > 1e-4 {
        return Ok(g);
    }
    Ok(crate::rdp::epsilon(history, delta)?.epsilon.clamp(1e-4, 1e3))
}

/// Worst-case conditional mean of `L' - L` inside one interval of width h (see module doc):
/// the exact maximum is `w* h + ln c*` with `c* = (1 - e^{-h})/h`, which is `h^2/8 + O(h^3)`.
pub fn interval_mean_shift_bound(h: f64) -> f64 {
    h * h * (1.0 + h) / 8.0
}

/// The one-step PMF of one direction on the grid, with its truncated tails.
struct StepPmf {
    /// Grid index of `probs[0]`.
    first: i64,
    /// A-mass at grid points `(first + i) h`.
    probs: Vec<f64>,
    /// A-mass at +infinity (the truncated upper tail).
    inf_mass: f64,
    /// A-mass moved up from a truncated lower tail.
    raised_mass: f64,
}

/// The loss as a monotone function of the Gaussian coordinate, in one direction.
struct LossModel {
    mech: SubsampledGaussian,
    adjacency: Adjacency,
}

impl LossModel {
    /// P-mass and Q-mass of the x-interval (xa, xb].
    fn pq(&self, xa: f64, xb: f64) -> (f64, f64) {
        let q = self.mech.sample_rate;
        let mu = self.mech.mu();
        let p = normal::interval(xa, xb);
        let shifted = normal::interval(xa - mu, xb - mu);
        (p, (1.0 - q) * p + q * shifted)
    }

    /// (A-mass, B-mass) of losses in (la, lb].
    fn masses(&self, la: f64, lb: f64) -> (f64, f64) {
        match self.adjacency {
            Adjacency::Remove => {
                let (p, q) = self.pq(self.mech.inverse_loss(la), self.mech.inverse_loss(lb));
                (q, p)
            }
            Adjacency::Add => {
                let (p, q) = self.pq(self.mech.inverse_loss(-lb), self.mech.inverse_loss(-la));
                (p, q)
            }
        }
    }

    /// Loss range `[lo, hi]` outside which the A-mass is at most `tau` on each side, with flags
    /// saying whether each end is a truncation (true) or the support's own end (false).
    fn range(&self, tau: f64) -> (f64, f64, bool, bool) {
        let z = inverse_sf(tau);
        let mu = self.mech.mu();
        let inf = self.mech.loss_infimum();
        match self.adjacency {
            // A = Q: its upper tail sits at x > mu + z; its lower end is the infimum (or, q = 1, x < mu - z).
            Adjacency::Remove => {
                let hi = self.mech.privacy_loss(mu + z);
                if inf.is_finite() {
                    (inf, hi, false, true)
                } else {
                    (self.mech.privacy_loss(mu - z), hi, true, true)
                }
            }
            // A = P, loss -L(x): its lower tail is x > z; its upper end is -inf (or, q = 1, x < -z).
            Adjacency::Add => {
                let lo = -self.mech.privacy_loss(z);
                if inf.is_finite() {
                    (lo, -inf, true, false)
                } else {
                    (lo, -self.mech.privacy_loss(-z), true, true)
                }
            }
        }
    }

    fn step_pmf(&self, h: f64, tau: f64) -> StepPmf {
        let (lo, hi, lo_truncated, hi_truncated) = self.range(tau);
        let first = (lo / h).floor() as i64;
        let last = (hi / h).ceil() as i64;
        // Composed::build has checked that both indices are exact and the span is below the cap.
        let len = (last - first + 1).max(1) as usize;
        let mut probs = vec![0.0; len];
        // Lower tail below the first grid point (only when truncated): rounded up onto it.
        let mut raised_mass = 0.0;
        if lo_truncated {
            let (a, _) = self.masses(f64::NEG_INFINITY, first as f64 * h);
            probs[0] += a;
            raised_mass = a;
        }
        let shrink = -(-h).exp_m1(); // 1 - e^{-h}
        for i in 0..len.saturating_sub(1) {
            let la = (first + i as i64) as f64 * h;
            let lb = la + h;
            let (a, b) = self.masses(la, lb);
            if a <= 0.0 {
                continue;
            }
            // Split preserving a and b: a_lo + a_hi = a, a_lo e^{-la} + a_hi e^{-lb} = b.
            let a_hi = ((a - b * la.exp()) / shrink).clamp(0.0, a);
            probs[i] += a - a_hi;
            probs[i + 1] += a_hi;
        }
        let inf_mass = if hi_truncated { self.masses(last as f64 * h, f64::INFINITY).0 } else { 0.0 };
        StepPmf { first, probs, inf_mass, raised_mass }
    }
}

/// `z` with `1 - Phi(z) = tau`, by bisection on the accurate survival function.
fn inverse_sf(tau: f64) -> f64 {
    crate::brent::brentq(|z| normal::log_sf(z) - tau.ln(), -10.0, 60.0, 1e-12, 1e-12).unwrap_or(40.0)
}

/// Tilted mass (each side) the composition window may leave outside; see [`Composed::build`].
const TILTED_WINDOW_TAIL: f64 = 1e-8;
/// Largest exponential tilt per grid index: tilting harder only moves the window to the top of
/// the support, where nothing is left to resolve.
const MAX_TILT: f64 = 50.0;
/// A composition is redone around its own estimate when its allowance at the answer exceeds this
/// fraction of delta (the first tilt came from a guess that was off).
const RETILT_FRACTION: f64 = 1e-3;

/// The composed PLD of one direction on a window of the grid.
///
/// The composition runs on exponentially tilted step PMFs, `p_t(k) = p(k) e^{t k - c}` with
/// `t = lambda h` (Esscher transform), so the FFT resolves the region around the epsilon asked
/// for with relative, not absolute, precision: the window's L1 error `E` (FFT round-off, powers,
/// wrap-around and the mass outside the window, all in the tilted measure) maps back to the true
/// losses above `eps` as at most `E e^{C - lambda eps}`, with `C` the summed log-normalisers.
/// `e^{C - lambda eps}` is a Chernoff bound on the loss exceeding eps, a small multiple of delta
/// at the saddle point, so the allowance is a tiny fraction of delta however long the history.
struct Composed {
    h: f64,
    /// Grid index of `probs[0]`.
    first: i64,
    /// True (untilted) probabilities on the window, each in [0, 1].
    probs: Vec<f64>,
    inf_mass: f64,
    /// `ln` of the allowance at eps = 0: `ln E + C`; the allowance at eps is `e^{this - lambda eps}`.
    log_allowance: f64,
    /// Tilt in nats^-1 (>= 0).
    lambda: f64,
    /// Probability that the coupling argument fails (truncated tails).
    coupling_failure: f64,
    total_steps: f64,
    fft_len: usize,
    /// Relative grid step of the dominating history composed instead of the given one (0 when
    /// the history was composed as it is).
    coarsening: f64,
}

/// A composition, or the FFT length it would have needed beyond the work cap.
enum Built {
    Done(Composed),
    OverWork { fft_len: usize },
}

/// The `what` of the error when a history has too many distinct steps even after coarsening.
const COMPOSE_WORK: &str = "composing every distinct step of the history";
/// Coarsest grid (log of its ratio, about 5 %) on which sigma and q of a long heterogeneous
/// history are rounded to fit the work cap.
const MAX_COARSENING: f64 = 0.05;
/// Most distinct steps composed one by one; a history with more is coarsened first.
const MAX_DISTINCT_STEPS: usize = 32;

impl Composed {
    /// Composes `history` in one direction on grid `h`, tilted towards `eps_center` (the epsilon
    /// the caller will ask about; any value gives a valid bound, a close one a tight bound).
    fn build(history: &History, adjacency: Adjacency, h: f64, truncation: f64, eps_center: f64) -> Result<Self> {
        let exact = distinct_mechanisms(history.groups());
        let total_steps = history.total_steps() as f64;
        let over = |work: f64| Error::TooLarge { what: COMPOSE_WORK, points: format!("{work:.3e}"), interval: h, limit: MAX_COMPOSE_WORK };
        // Too many distinct steps to transform one by one: compose a history that dominates
        // this one with fewer of them (sigma rounded down, q up, on a geometric grid as fine as
        // the budget allows), first to at most MAX_DISTINCT_STEPS, then, if the FFT turns out
        // long, to what the work cap leaves room for.
        let (mut groups, mut log_ratio) = (exact.clone(), 0.0);
        if exact.len() > MAX_DISTINCT_STEPS {
            (groups, log_ratio) = coarsen(&exact, MAX_DISTINCT_STEPS).ok_or_else(|| over(exact.len() as f64 * MAX_FFT_LEN as f64))?;
        }
        let fft_len = match Self::build_groups(&groups, total_steps, adjacency, h, truncation, eps_center)? {
            Built::Done(c) => return Ok(Composed { coarsening: log_ratio.exp_m1(), ..c }),
            Built::OverWork { fft_len } => fft_len,
        };
        (groups, log_ratio) = coarsen(&exact, MAX_COMPOSE_WORK / fft_len).ok_or_else(|| over(groups.len() as f64 * fft_len as f64))?;
        match Self::build_groups(&groups, total_steps, adjacency, h, truncation, eps_center)? {
            Built::Done(c) => Ok(Composed { coarsening: log_ratio.exp_m1(), ..c }),
            Built::OverWork { fft_len } => Err(over(groups.len() as f64 * fft_len as f64)),
        }
    }

    /// [`Self::build`] for the distinct `groups` of a history of `total_steps` steps, or the FFT
    /// length it would need when transforming every group exceeds the work cap.
    fn build_groups(groups: &[StepGroup], total_steps: f64, adjacency: Adjacency, h: f64, truncation: f64, eps_center: f64) -> Result<Built> {
        // Every size is checked in f64 (never wraps) before anything is allocated.
        let too_large = |what: &'static str, points: f64| Error::TooLarge { what, points: format!("{points:.3e}"), interval: h, limit: MAX_FFT_LEN };
        let mut all_points = 0.0;
        for g in groups {
            let (lo, hi, _, _) = LossModel { mech: g.mechanism(), adjacency }.range(truncation);
            // +3: the floor/ceil of both ends and the last point. Grid indices must also be exact
            // integers in f64 (below 2^53) to be cast to i64 and offset without overflow.
            let (lo_index, hi_index) = ((lo / h).floor(), (hi / h).ceil());
            let points = (hi_index - lo_index + 3.0).max(0.0);
            if !points.is_finite() || points >= MAX_FFT_LEN as f64 || lo_index.abs() >= EXACT_INDEX || hi_index.abs() >= EXACT_INDEX {
                return Err(too_large("one step's privacy loss", if points.is_nan() { f64::INFINITY } else { points }));
            }
            all_points += points;
        }
        if all_points > MAX_STEP_POINTS {
            return Err(too_large("the one-step privacy losses of the history together", all_points));
        }
        let steps: Vec<(StepPmf, u64)> =
            groups.iter().map(|g: &StepGroup| (LossModel { mech: g.mechanism(), adjacency }.step_pmf(h, truncation), g.steps)).collect();
        let logs: Vec<Vec<f64>> = steps.iter().map(|(p, _)| log_probs(p)).collect();
        let t = saddle_tilt(&steps, &logs, eps_center / h);
        let (tilted, log_norm) = tilt(&steps, &logs, t);
        // Window from Chernoff bounds of the tilted finite parts: P_t(S > hi), P_t(S < lo) <= tail.
        let ln_tail = TILTED_WINDOW_TAIL.ln();
        // Grid indices in i128: |first| < 2^63 per step times at most 10^9 steps cannot overflow.
        let hi_idx = i128::from(chernoff_edge(&tilted, ln_tail, 1.0));
        let lo_idx = -i128::from(chernoff_edge(&tilted, ln_tail, -1.0));
        let min_idx: i128 = steps.iter().map(|(p, n)| i128::from(p.first) * i128::from(*n)).sum();
        let max_idx: i128 = steps.iter().map(|(p, n)| (i128::from(p.first) + p.probs.len() as i128 - 1) * i128::from(*n)).sum();
        let hi_idx = hi_idx.min(max_idx);
        let lo_idx = lo_idx.max(min_idx).min(hi_idx);
        let widest = steps.iter().map(|(p, _)| p.probs.len()).max().unwrap_or(1) as i128;
        let needed = (hi_idx - lo_idx + 1).max(widest) + 1;
        if needed > MAX_FFT_LEN as i128 {
            return Err(too_large("the composed privacy loss", needed as f64));
        }
        let fft_len = fft_length(needed as usize);
        if fft_len > MAX_FFT_LEN {
            return Err(too_large("the composed privacy loss", fft_len as f64));
        }
        if steps.len() as f64 * fft_len as f64 > MAX_COMPOSE_WORK as f64 {
            return Ok(Built::OverWork { fft_len });
        }
        // The window's first index: within +-i64::MAX/4 (chernoff_edge's range, and lo <= hi).
        let lo_idx = i64::try_from(lo_idx).map_err(|_| too_large("the composed privacy loss", lo_idx as f64))?;
        let (window, numerical) = compose_fft(&tilted, fft_len, lo_idx);
        // Back to the true measure: p(k) = p_t(k) e^{C - t k}. A negative (round-off) value is
        // raised to 0 and a value above 1 lowered to 1; both only shrink the error to the true
        // probability, which lies in [0, 1].
        let probs = window
            .iter()
            .zip(geometric(window.len(), log_norm - t * lo_idx as f64, t))
            .enumerate()
            .map(|(i, (&w, scale))| match w {
                w if w <= 0.0 => 0.0,
                w if scale.is_finite() => (w * scale).min(1.0),
                w => (w.ln() + log_norm - t * (lo_idx + i as i64) as f64).exp().min(1.0),
            })
            .collect();
        // Tilted L1 error: round-off, plus the mass outside the window twice (once wrapped into
        // it by the cyclic convolution, once missing from it), on each side.
        let tilted_error = numerical + 4.0 * TILTED_WINDOW_TAIL;
        let inf_mass = -steps.iter().map(|(p, n)| *n as f64 * (-p.inf_mass).ln_1p()).sum::<f64>().exp_m1();
        let coupling_failure = steps.iter().map(|(p, n)| *n as f64 * (p.inf_mass + p.raised_mass)).sum();
        Ok(Built::Done(Composed {
            h,
            first: lo_idx,
            probs,
            inf_mass,
            log_allowance: tilted_error.ln() + log_norm,
            lambda: t / h,
            coupling_failure,
            total_steps,
            fft_len,
            coarsening: 0.0,
        }))
    }

    /// Bound on the error of `delta_at(eps)` (and of every sum over losses above eps) from
    /// the window and floating point; decreasing in eps.
    fn allowance(&self, eps: f64) -> f64 {
        (self.log_allowance - self.lambda * eps.max(0.0)).exp()
    }

    /// The loss at window index `i`.
    fn loss(&self, i: usize) -> f64 {
        (self.first + i as i64) as f64 * self.h
    }

    /// Suffix sums over losses > 0: `(A(j), B(j))` = sums of `p` and `p e^{-l}` over indices >= j.
    fn suffix_sums(&self) -> (usize, Vec<f64>, Vec<f64>) {
        let start = (1 - self.first).clamp(0, self.probs.len() as i64) as usize; // first index with l > 0
        let n = self.probs.len() - start;
        let (mut a, mut b) = (vec![0.0; n + 1], vec![0.0; n + 1]);
        let discount: Vec<f64> = geometric(n, -self.loss(start), self.h).collect(); // e^{-l}
        for i in (0..n).rev() {
            let p = self.probs[start + i];
            a[i] = a[i + 1] + p;
            b[i] = b[i + 1] + p * discount[i];
        }
        (start, a, b)
    }

    /// `delta_at(eps)` for `eps >= 0` from [`Self::suffix_sums`] in `O(log n)`:
    /// `inf + A(j) - e^eps B(j)`, `j` the first suffix index with a loss above eps, plus a bound
    /// on the rounding of the sums and of the difference (`2 (n + 2) u A(j)`), so that it never
    /// under-states the window's delta.
    fn delta_from_sums(&self, sums: &(usize, Vec<f64>, Vec<f64>), eps: f64) -> f64 {
        let (start, a, b) = sums;
        let n = a.len() - 1;
        // Losses grow with the index: bisect for the first one above eps (n when none is).
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.loss(start + mid) > eps { hi = mid } else { lo = mid + 1 }
        }
        let rounding = 2.0 * (n as f64 + 2.0) * UNIT_ROUNDOFF * a[lo];
        (self.inf_mass + (a[lo] - eps.exp() * b[lo]).max(0.0) + rounding).min(1.0)
    }

    /// delta_cd(eps) = inf_mass + sum_{l > eps} p (1 - e^{eps - l}), as computed on the window.
    fn delta_at(&self, eps: f64) -> f64 {
        let mut sum = self.inf_mass;
        for (i, &p) in self.probs.iter().enumerate() {
            let l = self.loss(i);
            if l > eps {
                sum += p * -(eps - l).exp_m1();
            }
        }
        sum
    }

    /// Smallest eps >= 0 with `delta_at(eps) (+ allowance(eps) if with_allowance) <= target`,
    /// or infinity. With the allowance the answer is rigorous for the true composed PLD: the
    /// allowance inside the last interval is taken at its left end, where it is largest.
    fn invert(&self, sums: &(usize, Vec<f64>, Vec<f64>), target: f64, with_allowance: bool) -> f64 {
        let (start, a, b) = sums;
        let allow = |eps: f64| if with_allowance { self.allowance(eps) } else { 0.0 };
        // delta at the loss of suffix index i (losses strictly above it are i+1..)
        let at_index = |i: usize| -> f64 {
            let l = self.loss(start + i);
            self.inf_mass + a[i + 1] - l.exp() * b[i + 1] + allow(l)
        };
        if self.inf_mass + a[0] - b[0] + allow(0.0) <= target {
            return 0.0;
        }
        let n = a.len() - 1;
        if n == 0 || at_index(n - 1) > target {
            // Above the window only the atom at infinity and the allowance remain.
            let top = if n == 0 { 0.0 } else { self.loss(start + n - 1) };
            let rest = target - self.inf_mass;
            if !with_allowance || rest <= 0.0 || self.lambda <= 0.0 {
                return if rest > 0.0 && !with_allowance { top } else { f64::INFINITY };
            }
            return top.max((self.log_allowance - rest.ln()) / self.lambda);
        }
        // Binary search the first suffix index whose delta is <= target.
        let (mut lo, mut hi) = (0usize, n - 1);
        if at_index(0) <= target {
            hi = 0;
        }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if at_index(mid) <= target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        // Between grid points (l_{hi-1}, l_hi] (from 0 when hi is the first point above 0)
        // delta(eps) = inf + A(hi) - e^eps B(hi): every mass of index >= hi lies above eps.
        let l_hi = self.loss(start + hi);
        let l_left = if hi == 0 { 0.0 } else { self.loss(start + hi - 1).max(0.0) };
        if b[hi] <= 0.0 {
            return l_hi;
        }
        if !with_allowance {
            let rest = self.inf_mass + a[hi] - target;
            return (rest / b[hi]).ln().clamp(l_left, l_hi);
        }
        // With the allowance (decreasing too) by bisection; `hi_eps` always meets the target.
        let u = |eps: f64| self.inf_mass + a[hi] - eps.exp() * b[hi] + allow(eps);
        let (mut lo_eps, mut hi_eps) = (l_left, l_hi);
        for _ in 0..60 {
            let mid = 0.5 * (lo_eps + hi_eps);
            if u(mid) <= target { hi_eps = mid } else { lo_eps = mid }
        }
        hi_eps
    }

    fn shift(&self, eta: f64) -> f64 {
        let n = self.total_steps;
        n * interval_mean_shift_bound(self.h) + self.h * (n * (1.0 / eta).ln() / 2.0).sqrt()
    }

    fn epsilon(&self, delta: f64) -> Result<CertifiedEpsilon> {
        let sums = self.suffix_sums();
        if self.inf_mass >= delta {
            return Err(Error::NotCertifiable {
                reason: format!("no finite epsilon at delta = {delta:e}: the privacy loss has mass {:e} at infinity", self.inf_mass),
            });
        }
        let upper = self.invert(&sums, delta, true);
        if !upper.is_finite() {
            return Err(Error::NotCertifiable {
                reason: format!("no finite epsilon at delta = {delta:e}: the numerical allowance {:e} of the composition is not below it", self.allowance(0.0)),
            });
        }
        let estimate = self.invert(&sums, delta, false);
        // Lower: delta_true(e) >= delta_cd(e + shift) - allowance(e + shift) - eta - coupling.
        // The allowance is fixed at x0, the point where the plain curve meets twice the target;
        // the bound holds for e + shift in [x0, y), and below that by monotonicity of delta(eps).
        let mut lower = 0.0f64;
        for eta in [delta * 0.1, delta * 0.01, delta * 0.001] {
            let base = delta + eta + self.coupling_failure;
            let x0 = self.invert(&sums, 2.0 * base, false);
            let allow = self.allowance(x0);
            if !x0.is_finite() || allow >= base {
                continue;
            }
            let y = self.invert(&sums, base + allow, false);
            if y > x0 && y.is_finite() {
                lower = lower.max(y - self.shift(eta));
            }
        }
        // The coupling bound is about the composed history, which a coarsened one is not.
        let lower = if self.coarsening > 0.0 { 0.0 } else { lower.min(estimate) };
        Ok(CertifiedEpsilon {
            bounds: Bounds { lower, estimate, upper: upper.max(estimate) },
            value_discretization: self.h,
            fft_len: self.fft_len,
            delta_allowance: self.allowance(upper),
            coarsening: self.coarsening,
        })
    }

    fn delta(&self, eps: f64) -> Bounds {
        let estimate = self.delta_at(eps);
        let upper = (estimate + self.allowance(eps)).min(1.0);
        let mut lower = 0.0f64;
        for k in 1..=8 {
            let eta = estimate * 10f64.powi(-k);
            if eta <= 0.0 {
                break;
            }
            let at = eps + self.shift(eta);
            let d = self.delta_at(at) - self.allowance(at) - eta - self.coupling_failure;
            lower = lower.max(d);
        }
        let lower = if self.coarsening > 0.0 { 0.0 } else { lower.min(estimate) };
        Bounds { lower, estimate, upper }
    }
}

/// The shortest FFT length of the form `2^k`, `3 * 2^k` or `5 * 2^k` that holds `needed` points
/// (within 4/3 of it; a power of two alone wastes up to half the transform).
fn fft_length(needed: usize) -> usize {
    [1usize, 3, 5].iter().map(|&m| m * needed.div_ceil(m).next_power_of_two()).min().expect("three candidates")
}

/// The groups with identical mechanisms merged wherever they occur (composition is
/// commutative, and each distinct mechanism costs one FFT), in order of first appearance.
fn distinct_mechanisms(groups: &[StepGroup]) -> Vec<StepGroup> {
    let mut out: Vec<StepGroup> = Vec::new();
    let mut index: std::collections::HashMap<(u64, u64), usize> = std::collections::HashMap::new();
    for g in groups {
        match index.entry((g.noise_multiplier.to_bits(), g.sample_rate.to_bits())) {
            std::collections::hash_map::Entry::Occupied(i) => out[*i.get()].steps += g.steps,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(out.len());
                out.push(*g);
            }
        }
    }
    out
}

/// A history that dominates `groups` with fewer distinct steps: each sigma rounded down and each
/// q rounded up to a power of `e^log_ratio` (q at most 1, sigma at least the accepted floor).
/// Less noise and a higher sampling rate never make a step more private (a lower rate is the
/// higher one after a further subsampling of the data), so the result's epsilon bounds the
/// given history's.
fn dominating_groups(groups: &[StepGroup], log_ratio: f64) -> Vec<StepGroup> {
    let coarse: Vec<StepGroup> = groups
        .iter()
        .map(|g| StepGroup {
            noise_multiplier: ((g.noise_multiplier.ln() / log_ratio).floor() * log_ratio).exp().clamp(MIN_NOISE_MULTIPLIER, g.noise_multiplier),
            sample_rate: ((g.sample_rate.ln() / log_ratio).ceil() * log_ratio).exp().clamp(g.sample_rate, 1.0),
            steps: g.steps,
        })
        .collect();
    distinct_mechanisms(&coarse)
}

/// The finest [`dominating_groups`] of at most `most` distinct steps (at least 1), with the log
/// of its grid ratio; `None` beyond `MAX_COARSENING`.
fn coarsen(exact: &[StepGroup], most: usize) -> Option<(Vec<StepGroup>, f64)> {
    let mut log_ratio = 1e-4;
    while log_ratio <= MAX_COARSENING {
        let coarse = dominating_groups(exact, log_ratio);
        if coarse.len() <= most.max(1) {
            return Some((coarse, log_ratio));
        }
        log_ratio *= 1.5;
    }
    None
}

/// `ln p_i` of a step PMF's finite part (`-inf` where `p_i = 0`), computed once per tilt search.
fn log_probs(p: &StepPmf) -> Vec<f64> {
    p.probs.iter().map(|&x| if x > 0.0 { x.ln() } else { f64::NEG_INFINITY }).collect()
}

/// For the PMF with `ln p_i = log_p[i]` tilted by `e^{t i}` (indices relative to its first):
/// `ln sum_i p_i e^{t i}`, and the tilted mean and variance of `i`; summed from the largest
/// term down (no overflow, no underflow of what matters).
fn tilted_stats(log_p: &[f64], t: f64) -> (f64, f64, f64) {
    let top = log_p.iter().enumerate().map(|(i, &l)| l + t * i as f64).fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return (f64::NEG_INFINITY, 0.0, 0.0);
    }
    let (mut s0, mut s1, mut s2) = (0.0, 0.0, 0.0);
    for (i, &l) in log_p.iter().enumerate() {
        if l > f64::NEG_INFINITY {
            let w = (l + t * i as f64 - top).exp();
            let x = i as f64;
            s0 += w;
            s1 += w * x;
            s2 += w * x * x;
        }
    }
    let mean = s1 / s0;
    (top + s0.ln(), mean, (s2 / s0 - mean * mean).max(0.0))
}

/// The tilt `t >= 0` per grid index at which the composed tilted mean reaches `center_idx`
/// (the saddle point of the Chernoff bound at that loss), to within a hundredth of the tilted
/// standard deviation (the Chernoff factor is flat there); 0 when the untilted mean is already
/// there, `MAX_TILT` when the support ends below it. Safeguarded Newton on the mean, whose
/// derivative is the variance.
/// `logs[g]` is [`log_probs`] of `steps[g]`.
fn saddle_tilt(steps: &[(StepPmf, u64)], logs: &[Vec<f64>], center_idx: f64) -> f64 {
    // Composed tilted mean minus the center, and the composed tilted variance.
    let gap = |t: f64| {
        let (mut mean, mut var) = (0.0, 0.0);
        for ((p, n), l) in steps.iter().zip(logs) {
            let (_, m, v) = tilted_stats(l, t);
            mean += *n as f64 * (p.first as f64 + m);
            var += *n as f64 * v;
        }
        (mean - center_idx, var)
    };
    if !center_idx.is_finite() {
        return 0.0;
    }
    let (g0, v0) = gap(0.0);
    if g0 >= 0.0 {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    let (mut t, mut g, mut v) = (0.0, g0, v0);
    for _ in 0..100 {
        if g.abs() <= 0.01 * v.sqrt() {
            break;
        }
        if g < 0.0 { lo = t } else { hi = t }
        let newton = t - g / v;
        t = if newton > lo && newton < hi && newton.is_finite() {
            newton
        } else if hi.is_finite() {
            0.5 * (lo + hi)
        } else {
            (4.0 * lo).max(1e-9)
        };
        if t >= MAX_TILT {
            return MAX_TILT;
        }
        (g, v) = gap(t);
    }
    t
}

/// The step PMFs tilted by `e^{t k}` and renormalised to mass 1, with `C = sum_g n_g c_g`, the
/// log-normalisers times the step counts (the composed tilted PMF times `e^{C - t k}` is the
/// composed true one).
fn tilt(steps: &[(StepPmf, u64)], logs: &[Vec<f64>], t: f64) -> (Vec<(StepPmf, u64)>, f64) {
    let mut log_norm = 0.0;
    let tilted = steps
        .iter()
        .zip(logs)
        .map(|((p, n), log_p)| {
            let (c, _, _) = tilted_stats(log_p, t);
            log_norm += *n as f64 * (c + t * p.first as f64);
            let probs = log_p.iter().enumerate().map(|(i, &l)| (l + t * i as f64 - c).exp()).collect();
            (StepPmf { first: p.first, probs, inf_mass: 0.0, raised_mass: 0.0 }, *n)
        })
        .collect();
    (tilted, log_norm)
}

/// `base * e^{-rate i}` for `i` in `0..len`, with one `exp` per block of 64 and products in
/// between (relative error below 64 ulps); `base` may overflow only where callers cap the result.
fn geometric(len: usize, log_base: f64, rate: f64) -> impl Iterator<Item = f64> {
    let step = (-rate).exp();
    let mut current = 0.0;
    (0..len).map(move |i| {
        if i % 64 == 0 {
            current = (log_base - rate * i as f64).exp();
        } else {
            current *= step;
        }
        current
    })
}

/// Grid index `e` such that `P(sign * S > e h) <= exp(ln_tail)` for the composed finite parts,
/// minimising the Chernoff bound `(sum n K(sign*lambda) - ln_tail)/lambda` over lambda by golden
/// section in log lambda (the objective is quasi-convex). K is the exact log-MGF of the discrete PMF.
fn chernoff_edge(steps: &[(StepPmf, u64)], ln_tail: f64, sign: f64) -> i64 {
    // Work in grid units: lambda is per grid index.
    let objective = |log_lambda: f64| -> f64 {
        let lambda = log_lambda.exp();
        let total: f64 = steps.iter().map(|(p, n)| *n as f64 * log_mgf_grid(p, sign * lambda)).sum();
        (total - ln_tail) / lambda
    };
    let (mut a, mut b) = ((1e-10f64).ln(), 0.0f64);
    let phi = 0.5 * (5f64.sqrt() - 1.0);
    let (mut c, mut d) = (b - phi * (b - a), a + phi * (b - a));
    let (mut fc, mut fd) = (objective(c), objective(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - phi * (b - a);
            fc = objective(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + phi * (b - a);
            fd = objective(d);
        }
        if b - a < 0.02 {
            break;
        }
    }
    let best = fc.min(fd);
    if best.is_finite() {
        best.ceil().min(i64::MAX as f64 / 4.0) as i64
    } else {
        i64::MAX / 4
    }
}

/// An upper bound on `ln sum_i p_i e^{t (first + i)}` for the finite part of a step PMF, by
/// Horner's rule in `e^{-|t|}` from the dominant end (all terms positive: no cancellation, no
/// overflow). Partial sums that would turn subnormal are flushed, and the most they could have
/// held (`FLUSH` each) is added back, so the result never under-states the MGF.
fn log_mgf_grid(p: &StepPmf, t: f64) -> f64 {
    const FLUSH: f64 = 1e-290;
    let rho = (-t.abs()).exp();
    let n = p.probs.len();
    let horner = |acc: f64, &x: &f64| {
        let next = acc * rho + x;
        if next < FLUSH { 0.0 } else { next }
    };
    if t >= 0.0 {
        let acc = p.probs.iter().fold(0.0, horner) + n as f64 * FLUSH;
        acc.ln() + t * (p.first + n as i64 - 1) as f64
    } else {
        let acc = p.probs.iter().rev().fold(0.0, horner) + n as f64 * FLUSH;
        acc.ln() + t * p.first as f64
    }
}

/// Composes the step PMFs by one real FFT each, pointwise powers and one inverse FFT, and
/// returns the window `[lo_idx, lo_idx + len)` with an a-posteriori bound on its L1 error.
fn compose_fft(steps: &[(StepPmf, u64)], len: usize, lo_idx: i64) -> (Vec<f64>, f64) {
    let mut planner = RealFftPlanner::<f64>::new();
    let forward = planner.plan_fft_forward(len);
    let inverse = planner.plan_fft_inverse(len);
    let half = len / 2 + 1;
    let log2_len = (len as f64).log2().max(1.0);
    // The product of the groups' powers, accumulated in log-polar form: ln|.| and the phase,
    // with one exp and one sincos per frequency at the end.
    let mut log_abs = vec![0.0f64; half];
    let mut phase = vec![0.0f64; half];
    let mut log_envelope = vec![0.0f64; half];
    let mut err_coef = vec![0.0f64; half];
    let mut buf = forward.make_input_vec();
    let mut spec = forward.make_output_vec();
    let mut base: i128 = 0;
    for (pmf, count) in steps {
        let n = *count as f64;
        buf.iter_mut().for_each(|x| *x = 0.0);
        buf[..pmf.probs.len()].copy_from_slice(&pmf.probs);
        let mass: f64 = pmf.probs.iter().sum();
        forward.process(&mut buf, &mut spec).expect("buffer sizes come from the plan");
        let fft_err = 8.0 * log2_len * UNIT_ROUNDOFF * mass;
        for k in 0..half {
            let z = spec[k];
            let r = z.norm_sqr().sqrt();
            if r == 0.0 {
                log_abs[k] = f64::NEG_INFINITY;
                log_envelope[k] += (n - 1.0) * fft_err.ln().min(0.0);
                err_coef[k] += n * (fft_err + UNIT_ROUNDOFF * (1e3 + std::f64::consts::PI)) + 6.0 * UNIT_ROUNDOFF;
                continue;
            }
            let ln_r = r.ln();
            log_abs[k] += n * ln_r;
            phase[k] += n * z.im.atan2(z.re);
            // The perturbed power's size: (r + e)^(n-1) with ln(r + e) <= ln r + e/r, at most 1.
            log_envelope[k] += (n - 1.0) * (ln_r + fft_err / r).min(0.0);
            err_coef[k] += n * (fft_err + UNIT_ROUNDOFF * (ln_r.abs().min(1e3) + std::f64::consts::PI)) + 6.0 * UNIT_ROUNDOFF;
        }
        base += i128::from(pmf.first) * i128::from(*count);
    }
    // Rounding of the sums of logs and phases over the groups, relative to their size.
    let groups = steps.len() as f64;
    let mut acc: Vec<Complex<f64>> = (0..half)
        .map(|k| {
            err_coef[k] += groups * UNIT_ROUNDOFF * (log_abs[k].abs().min(1e3) + phase[k].abs());
            if log_abs[k] < -745.0 { Complex::new(0.0, 0.0) } else { Complex::from_polar(log_abs[k].exp(), phase[k]) }
        })
        .collect();
    // a-posteriori error of the spectrum (Parseval: the L1 error of the result is at most the
    // L2 norm of the full spectrum's error), plus the inverse transform's own error.
    let mut spec_err2 = 0.0;
    let mut spec_l1 = 0.0;
    for k in 0..half {
        let e = err_coef[k] * log_envelope[k].exp();
        spec_err2 += 2.0 * e * e;
        spec_l1 += 2.0 * acc[k].norm();
    }
    let numerical = spec_err2.sqrt() + 8.0 * log2_len * UNIT_ROUNDOFF * spec_l1;
    acc[0].im = 0.0;
    if len.is_multiple_of(2) {
        acc[half - 1].im = 0.0;
    }
    let mut out = inverse.make_output_vec();
    inverse.process(&mut acc, &mut out).expect("buffer sizes come from the plan");
    let scale = 1.0 / len as f64;
    let window: Vec<f64> = (0..len)
        .map(|i| {
            let r = (i128::from(lo_idx) + i as i128 - base).rem_euclid(len as i128) as usize;
            out[r] * scale
        })
        .collect();
    (window, numerical)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed-form maximum of the interval mean shift never exceeds the bound in use.
    #[test]
    fn mean_shift_bound_dominates_exact_maximum() {
        for h in [1e-6f64, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1] {
            let c = -(-h).exp_m1() / h;
            let w = (1.0 - c) / -(-h).exp_m1();
            let exact = w * h + c.ln();
            assert!(exact <= interval_mean_shift_bound(h) + 1e-18, "h={h}: {exact}");
            assert!(exact >= 0.9 * h * h / 8.0 - 1e-18, "h={h}: {exact}");
        }
    }

    /// One step of the discretised PLD reproduces the exact one-step delta at grid points from
    /// above, within the discretisation, in both directions.
    #[test]
    fn one_step_matches_exact_curves() {
        let mech = SubsampledGaussian::new(0.8, 0.01).unwrap();
        let h = 1e-4;
        for (adjacency, exact) in [(Adjacency::Remove, mech.remove_delta(0.05)), (Adjacency::Add, mech.add_delta(0.05))] {
            let pmf = LossModel { mech, adjacency }.step_pmf(h, 1e-20);
            let composed = Composed {
                h,
                first: pmf.first,
                probs: pmf.probs,
                inf_mass: pmf.inf_mass,
                log_allowance: f64::NEG_INFINITY,
                lambda: 0.0,
                coupling_failure: 0.0,
                total_steps: 1.0,
                fft_len: 0,
                coarsening: 0.0,
            };
            let got = composed.delta_at(0.05);
            assert!(got >= exact * (1.0 - 1e-9) && got <= exact * (1.0 + 1e-6), "{adjacency:?}: {got} vs {exact}");
        }
    }

    /// epsilon(delta) and delta(epsilon) are inverse to each other, and every triple is ordered.
    #[test]
    fn epsilon_and_delta_round_trip() {
        let acc = PldAccountant::default();
        for (sigma, q, n, delta) in [(1.0, 0.01, 1000, 1e-5), (0.7, 0.05, 300, 1e-6), (2.0, 0.2, 50, 1e-3)] {
            let h = History::homogeneous(sigma, q, n).unwrap();
            let e = acc.epsilon(&h, delta).unwrap().bounds;
            assert!(e.lower <= e.estimate && e.estimate <= e.upper, "{e:?}");
            let d = acc.delta(&h, e.upper).unwrap();
            assert!(d.lower <= d.estimate && d.estimate <= d.upper, "{d:?}");
            assert!(d.upper <= delta * 1.01 && d.upper >= delta * 0.9, "sigma={sigma}: {d:?} at {e:?}");
        }
    }

    /// A history split into groups composes to the same PLD as the homogeneous one.
    #[test]
    fn heterogeneous_composition_is_consistent() {
        let acc = PldAccountant::with_interval(2e-4).unwrap();
        let whole = History::homogeneous(1.1, 0.02, 900).unwrap();
        let split = History::from_groups([
            StepGroup { noise_multiplier: 1.1, sample_rate: 0.02, steps: 300 },
            StepGroup { noise_multiplier: 5.0, sample_rate: 0.5, steps: 1 },
            StepGroup { noise_multiplier: 1.1, sample_rate: 0.02, steps: 600 },
        ])
        .unwrap();
        let a = acc.epsilon(&whole, 1e-5).unwrap().bounds;
        let b = acc.epsilon(&split, 1e-5).unwrap().bounds;
        // The extra Gaussian step costs a little; the groups in between change nothing else.
        assert!(b.estimate > a.estimate && b.estimate < a.estimate * 1.05, "{a:?} {b:?}");
        let c = acc
            .epsilon(&History::from_groups([
                StepGroup { noise_multiplier: 1.1, sample_rate: 0.02, steps: 400 },
                StepGroup { noise_multiplier: 1.1, sample_rate: 0.02001, steps: 500 },
            ]).unwrap(), 1e-5)
            .unwrap()
            .bounds;
        assert!((c.estimate / a.estimate - 1.0).abs() < 1e-3, "{a:?} {c:?}");
    }

    /// The discretised step keeps all of its mass (finite part + atom at infinity), both directions.
    #[test]
    fn step_pmf_conserves_mass() {
        for (sigma, q) in [(0.8, 0.01), (0.6, 0.001), (2.0, 1.0), (1.0, 0.5)] {
            let mech = SubsampledGaussian::new(sigma, q).unwrap();
            for adjacency in [Adjacency::Remove, Adjacency::Add] {
                let p = LossModel { mech, adjacency }.step_pmf(3e-4, 1e-15);
                let total: f64 = p.probs.iter().sum::<f64>() + p.inf_mass;
                assert!((total - 1.0).abs() < 1e-12, "sigma={sigma} q={q} {adjacency:?}: {total}");
                assert!(p.probs.iter().all(|&x| x >= 0.0));
            }
        }
    }

    /// Gaussian mechanism: the composed PLD must bracket the closed form of docs/accounting.md, "One DP-SGD step".
    #[test]
    fn gaussian_composition_brackets_closed_form() {
        let acc = PldAccountant::default();
        for (sigma, n, eps, exact) in [(2.0, 10, 1.0, 3.525180588949e-01), (1.0, 4, 2.0, 3.318979987768e-01)] {
            let h = History::homogeneous(sigma, 1.0, n).unwrap();
            let d = acc.delta(&h, eps).unwrap();
            assert!(d.lower <= exact && exact <= d.upper, "{d:?} vs {exact}");
            assert!((d.estimate - exact).abs() < 1e-4 * exact, "{d:?} vs {exact}");
        }
        // One subsampled step: the exact one-step curves (`mechanism.rs`), max over both directions.
        let mech = SubsampledGaussian::new(0.8, 0.01).unwrap();
        let h = History::homogeneous(0.8, 0.01, 1).unwrap();
        for eps in [0.0, 0.05, 0.5, 1.0] {
            let exact = mech.remove_delta(eps).max(mech.add_delta(eps));
            let d = acc.delta(&h, eps).unwrap();
            assert!(d.lower <= exact && exact <= d.upper, "eps={eps}: {d:?} vs {exact}");
        }
    }

    /// The profile agrees with `delta` one epsilon at a time (both are upper bounds, on
    /// different grids), never lies below its rigorous lower bound, and never below the closed
    /// form of the Gaussian mechanism.
    #[test]
    fn delta_upper_profile_agrees_with_delta() {
        let acc = PldAccountant::default();
        let eps: Vec<f64> = (0..=80).map(|i| 0.125 * i as f64).collect();
        for (sigma, q, n) in [(1.0, 0.01, 1000), (0.8, 0.05, 40), (2.0, 0.2, 50)] {
            let h = History::homogeneous(sigma, q, n).unwrap();
            let profile = acc.delta_upper_profile(&h, &eps).unwrap();
            assert!(profile.windows(2).all(|w| w[1] <= w[0]), "sigma={sigma}: {profile:?}");
            for (&e, &p) in eps.iter().zip(&profile).filter(|(&e, _)| [0.5, 1.0, 2.0, 4.0, 8.0].contains(&e)) {
                let d = acc.delta(&h, e).unwrap();
                assert!(p >= d.lower, "sigma={sigma} eps={e}: {p} below {d:?}");
                // Below 1e-20 `delta` reaches the floor of its own tail truncation; the profile goes deeper.
                if d.upper > 1e-20 {
                    assert!((p / d.upper - 1.0).abs() < 0.02, "sigma={sigma} eps={e}: {p} vs {d:?}");
                } else {
                    assert!(p <= d.upper * 1.02, "sigma={sigma} eps={e}: {p} vs {d:?}");
                }
            }
        }
        // The Gaussian mechanism, mu = 1/sigma: delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu).
        for sigma in [0.5, 1.0, 3.0] {
            let mu = 1.0 / sigma;
            let profile = acc.delta_upper_profile(&History::homogeneous(sigma, 1.0, 1).unwrap(), &eps).unwrap();
            for (&e, &p) in eps.iter().zip(&profile) {
                let exact = normal::cdf(0.5 * mu - e / mu) - e.exp() * normal::cdf(-0.5 * mu - e / mu);
                assert!(p >= exact * (1.0 - 1e-9), "sigma={sigma} eps={e}: {p} < {exact}");
                assert!(p <= exact * 1.01 + 1e-30, "sigma={sigma} eps={e}: {p} vs {exact}");
            }
        }
        assert!(acc.delta_upper_profile(&History::homogeneous(1.0, 0.1, 3).unwrap(), &[]).unwrap().is_empty());
        assert!(matches!(acc.delta_upper_profile(&History::homogeneous(1.0, 0.1, 3).unwrap(), &[1.0, f64::NAN]), Err(Error::InvalidArgument { .. })));
    }
}
