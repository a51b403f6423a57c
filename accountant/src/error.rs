//! Typed errors of the accountant: every bad input names the argument and the problem, and an
//! epsilon that the certified method cannot state is an error, never a silent 0, NaN or infinity.

/// Everything that can go wrong while accounting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument is outside its domain (sigma <= 0, q outside (0, 1], delta outside (0, 1), NaN ...).
    #[error("invalid {name} = {value}: {reason}")]
    InvalidArgument {
        /// The argument's name as the user wrote it (`sigma`, `sample_rate`, `delta`, ...).
        name: &'static str,
        /// The offending value, printed.
        value: String,
        /// What the value must satisfy.
        reason: &'static str,
    },
    /// The certified method cannot state a finite guarantee for these parameters within its range.
    #[error("cannot certify: {reason}")]
    NotCertifiable {
        /// Why, in words a person can act on.
        reason: String,
    },
    /// Calibration found no noise multiplier meeting the target in its search range.
    #[error("calibration failed: {reason}")]
    Calibration {
        /// Why, in words a person can act on.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(name: &'static str, value: f64, reason: &'static str) -> Self {
        Error::InvalidArgument { name, value: format!("{value}"), reason }
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

/// Checks an epsilon argument: a finite number >= 0.
pub(crate) fn check_epsilon(eps: f64) -> Result<f64> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(eps)
    } else {
        Err(Error::invalid("epsilon", eps, "epsilon must be a finite number >= 0"))
    }
}
