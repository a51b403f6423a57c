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
    /// A finite argument lies outside the range this accountant supports (see [`crate::domain`]):
    /// the value is meaningful, but the method cannot work with it within bounded memory and time.
    #[error("{name} = {value} is outside the accepted range {range}")]
    OutOfRange {
        /// The argument's name as the user wrote it (`sigma`, `steps`, ...).
        name: &'static str,
        /// The offending value, printed.
        value: String,
        /// The accepted range, printed (e.g. `[0.01, inf)`).
        range: &'static str,
    },
    /// The certified method would need a grid larger than its memory cap
    /// ([`crate::domain::MAX_GRID_POINTS`]); refused before allocating.
    #[error("cannot certify: {what} needs {points} grid points at interval {interval:e}, above the limit of {limit}")]
    TooLarge {
        /// What would have been allocated (`one step's privacy loss`, `the composed privacy loss`).
        what: &'static str,
        /// The number of grid points it would need, printed (may be `inf`).
        points: String,
        /// The value discretisation interval of the grid.
        interval: f64,
        /// The cap.
        limit: usize,
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
