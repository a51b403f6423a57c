//! The accepted input ranges of every public entry point, in one place, and the checks that
//! enforce them before any arithmetic or allocation.
//!
//! | argument | accepted | refused with |
//! |---|---|---|
//! | noise multiplier `sigma` | `[MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER]` = `[0.02, 1e6]` | `InvalidArgument` (NaN, inf, <= 0), `OutOfRange` (finite, outside) |
//! | sample rate `q` | `[MIN_SAMPLE_RATE, 1]` = `[1e-12, 1]` | `InvalidArgument` (NaN, <= 0, > 1), `OutOfRange` (0 < q < 1e-12) |
//! | steps (one group, and a whole history) | `1 ..= MAX_STEPS` (10^9) | `InvalidArgument` (0), `OutOfRange` (above) |
//! | groups of a history | `<= MAX_GROUPS` (10^5) | `OutOfRange` |
//! | `delta` | finite, in `[MIN_DELTA, 1)` = `[1e-100, 1)` | `InvalidArgument` (NaN, <= 0, >= 1), `OutOfRange` (0 < delta < 1e-100) |
//! | `epsilon` (delta at epsilon) | finite, `>= 0` | `InvalidArgument` |
//! | target epsilon (calibration) | finite, in `[MIN_TARGET_EPSILON, 1000)` | `InvalidArgument` (NaN, <= 0, >= 1000), `OutOfRange` (0 < eps < 0.01) |
//!
//! Why these limits:
//! * `sigma >= 0.02`. One step's privacy loss spans at least `mu^2 / 2` nats with `mu = 1/sigma`
//!   (for q = 1 it is `2 mu z` wide around `mu^2/2`, z the normal quantile of the truncation; the
//!   Remove direction reaches `mu^2/2 + mu z + ln q`). The certified accountant's coarsest grid
//!   (`1e-3`) holds at most `MAX_GRID_POINTS` = 2^21 points, 2.1e3 nats, so below sigma ~ 0.016
//!   not even one step fits; 0.02 (mu = 50, a step of about 1.25e3 + 50 z nats) leaves room for
//!   the tail quantile at ordinary deltas (a tiny delta there is refused with `TooLarge`). The
//!   Edgeworth cumulant quadrature uses `(80 + mu) mu / 0.02` points, 3.3e5 at the floor.
//! * `sigma <= 1e6`. The privacy loss `log(1 - q + q e^{mu x - mu^2/2})` is formed in floating
//!   point and keeps about `16 - log10(sigma)` significant digits: at sigma = 1e12 the
//!   Edgeworth skewness is already wrong in its first digit, and from about 1e16 the PLD's
//!   interval masses are (a bogus "mass 1 at infinity"). At 1e6 about ten digits remain, and
//!   epsilon is small anyway (about 0.1 after 10^9 full-batch steps).
//! * `q >= 1e-12`. The Edgeworth cumulants scale like `(q mu)^j`, `j <= 6`; with mu >= 1e-6 they
//!   stay above 1e-108, far from underflow (at q = 1e-300 they vanish and the standardised
//!   cumulants turn NaN). A rate below 1e-12 would mean more than 10^12 examples per expected
//!   example in a batch.
//! * `steps <= 10^9`. Step counts enter the arithmetic as `f64` and `i64` grid offsets; this cap
//!   keeps both exact and far from overflow. The certified accountant's rounding allowance is
//!   relative to delta (it composes exponentially tilted PMFs, see [`crate::pld`]), so it does
//!   not limit the step count; the grid does: a long history at a small epsilon needs a fine
//!   interval over a wide window, and beyond the caps below it is refused with `TooLarge`
//!   (10^6 steps fit at every delta down to 1e-10 for DP-SGD's usual sigma and q).
//! * `delta >= 1e-100`. The certified accountant truncates each step's tails at
//!   `1e-4 delta / steps`; from 1e-100 down to 10^9 steps that stays far above f64's subnormal
//!   range (2.2e-308), where probabilities lose their relative precision. No use of DP needs a
//!   smaller delta.
//! * calibration target `>= 0.01`. The certified grid is chosen fine enough for the target
//!   (interval ~ sqrt(8e-4 eps / steps), at least 1e-7), and a calibration makes ~15-25
//!   certified evaluations. No DP-SGD run targets less.
//! * Work: every call is bounded before it starts. One FFT is at most `MAX_GRID_POINTS` long
//!   (16 MiB per buffer), all one-step PMFs of a history together hold at most
//!   `2 MAX_GRID_POINTS` points, and one composition (one forward FFT per group of the history)
//!   costs at most `MAX_COMPOSE_WORK` = 2^24 FFT points (a history with more distinct steps is
//!   composed as a dominating one with fewer, see `pld`); a call makes at most four compositions
//!   (two directions, each at most twice), and a calibration at most `MAX_CALIBRATION_WORK`
//!   FFT points over all its evaluations. On two cores the largest accepted call takes about a
//!   second (`cargo bench -p ewtune-accountant` prints the worst cases).
//! * Everything that could still need a large grid (a fine fixed discretisation, a long history
//!   at a tiny delta) is checked against these caps with checked arithmetic and refused
//!   with `TooLarge` before any allocation.
//!
//! The daemon may ask for more (it requires sigma >= 0.1); it never gets less.

use crate::error::{Error, Result};

/// Smallest noise multiplier any accountant accepts (see the module doc for why).
pub const MIN_NOISE_MULTIPLIER: f64 = 0.02;
/// Largest noise multiplier any accountant accepts.
pub const MAX_NOISE_MULTIPLIER: f64 = 1e6;
/// Smallest Poisson sampling rate any accountant accepts.
pub const MIN_SAMPLE_RATE: f64 = 1e-12;
/// Smallest delta any accountant accepts.
pub const MIN_DELTA: f64 = 1e-100;
/// Smallest target epsilon calibration accepts.
pub const MIN_TARGET_EPSILON: f64 = 0.01;
/// Most steps one group, or one whole history, may hold.
pub const MAX_STEPS: u64 = 1_000_000_000;
/// Most groups (runs of identical steps) one history may hold.
pub const MAX_GROUPS: usize = 100_000;
/// Most grid points (and FFT length) the certified accountant allocates: 2^21, 16 MiB per
/// `f64` buffer; a few such buffers are live at once.
pub const MAX_GRID_POINTS: usize = 1 << 21;
/// Most FFT points one composition may transform (the FFT length times the groups of the
/// history, each one forward transform): 2^24.
pub const MAX_COMPOSE_WORK: usize = 1 << 24;
/// Most FFT points a calibration may transform over all its certified evaluations.
pub const MAX_CALIBRATION_WORK: usize = 1 << 27;

const SIGMA_RANGE: &str = "[0.02, 1e6]";
const SAMPLE_RATE_RANGE: &str = "[1e-12, 1]";
const STEPS_RANGE: &str = "[1, 1e9]";

/// Checks a noise multiplier: finite, in `[MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER]`.
pub fn check_noise_multiplier(sigma: f64) -> Result<f64> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(Error::invalid("sigma", sigma, "the noise multiplier must be a finite number > 0"));
    }
    if !(MIN_NOISE_MULTIPLIER..=MAX_NOISE_MULTIPLIER).contains(&sigma) {
        return Err(Error::OutOfRange { name: "sigma", value: format!("{sigma:e}"), range: SIGMA_RANGE });
    }
    Ok(sigma)
}

/// Checks a Poisson sampling rate: finite, in `[MIN_SAMPLE_RATE, 1]`.
pub fn check_sample_rate(q: f64) -> Result<f64> {
    if !(q.is_finite() && q > 0.0 && q <= 1.0) {
        return Err(Error::invalid("sample_rate", q, "the sampling rate q must lie in (0, 1]"));
    }
    if q < MIN_SAMPLE_RATE {
        return Err(Error::OutOfRange { name: "sample_rate", value: format!("{q:e}"), range: SAMPLE_RATE_RANGE });
    }
    Ok(q)
}

/// Checks a step count: `1 ..= MAX_STEPS`.
pub fn check_steps(steps: u64) -> Result<u64> {
    if steps == 0 {
        return Err(Error::InvalidArgument { name: "steps", value: "0".into(), reason: "the number of steps must be >= 1" });
    }
    if steps > MAX_STEPS {
        return Err(Error::OutOfRange { name: "steps", value: steps.to_string(), range: STEPS_RANGE });
    }
    Ok(steps)
}

/// Checks a calibration target epsilon: finite, in `[MIN_TARGET_EPSILON, 1000)`.
pub fn check_target_epsilon(eps: f64) -> Result<f64> {
    check_open("epsilon", eps, 0.0, 1e3, "the target epsilon must lie in (0, 1000)")?;
    if eps < MIN_TARGET_EPSILON {
        return Err(Error::OutOfRange { name: "epsilon", value: format!("{eps:e}"), range: "[0.01, 1000)" });
    }
    Ok(eps)
}

/// Checks a delta: finite, in `[MIN_DELTA, 1)`.
pub fn check_delta(delta: f64) -> Result<f64> {
    check_open("delta", delta, 0.0, 1.0, "delta must lie in (0, 1)")?;
    if delta < MIN_DELTA {
        return Err(Error::OutOfRange { name: "delta", value: format!("{delta:e}"), range: "[1e-100, 1)" });
    }
    Ok(delta)
}

/// Checks an epsilon argument: a finite number `>= 0`.
pub fn check_epsilon(eps: f64) -> Result<f64> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(eps)
    } else {
        Err(Error::invalid("epsilon", eps, "epsilon must be a finite number >= 0"))
    }
}

/// Checks that `value` is a finite number strictly inside `(lo, hi)` (an open interval).
pub(crate) fn check_open(name: &'static str, value: f64, lo: f64, hi: f64, reason: &'static str) -> Result<f64> {
    if value.is_finite() && value > lo && value < hi {
        Ok(value)
    } else {
        Err(Error::invalid(name, value, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_are_refused_with_the_argument_named() {
        for s in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, -1.0, f64::MIN] {
            assert!(matches!(check_noise_multiplier(s), Err(Error::InvalidArgument { name: "sigma", .. })), "{s}");
        }
        for s in [f64::MIN_POSITIVE / 2.0, 1e-300, 1e-4, 0.0099, 0.0199] {
            assert!(matches!(check_noise_multiplier(s), Err(Error::OutOfRange { name: "sigma", .. })), "{s}");
        }
        for s in [1e6 * (1.0 + 1e-15), 1e300, f64::MAX] {
            assert!(matches!(check_noise_multiplier(s), Err(Error::OutOfRange { name: "sigma", .. })), "{s}");
        }
        assert!(check_noise_multiplier(0.02).is_ok() && check_noise_multiplier(1e6).is_ok());
        for q in [f64::NAN, 0.0, -0.5, 1.0 + 1e-15, f64::INFINITY] {
            assert!(matches!(check_sample_rate(q), Err(Error::InvalidArgument { name: "sample_rate", .. })), "{q}");
        }
        for q in [f64::MIN_POSITIVE / 2.0, 1e-300, 9.9e-13] {
            assert!(matches!(check_sample_rate(q), Err(Error::OutOfRange { name: "sample_rate", .. })), "{q}");
        }
        assert!(check_sample_rate(1e-12).is_ok() && check_sample_rate(1.0).is_ok());
        assert!(matches!(check_steps(0), Err(Error::InvalidArgument { name: "steps", .. })));
        for n in [MAX_STEPS + 1, 1 << 63, (1 << 63) - 1, u64::MAX] {
            assert!(matches!(check_steps(n), Err(Error::OutOfRange { name: "steps", .. })), "{n}");
        }
        assert!(check_steps(1).is_ok() && check_steps(MAX_STEPS).is_ok());
        for d in [f64::NAN, 0.0, 1.0, -1e-9, f64::INFINITY] {
            assert!(matches!(check_delta(d), Err(Error::InvalidArgument { name: "delta", .. })), "{d}");
        }
        for d in [5e-324, 1e-300, 9.9e-101] {
            assert!(matches!(check_delta(d), Err(Error::OutOfRange { name: "delta", .. })), "{d}");
        }
        assert!(check_delta(1e-100).is_ok());
        for e in [f64::NAN, -1e-300, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(check_epsilon(e), Err(Error::InvalidArgument { name: "epsilon", .. })), "{e}");
        }
    }
}
