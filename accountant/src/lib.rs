//! `ewtune-accountant`: privacy accounting for DP-SGD (the Poisson-subsampled Gaussian
//! mechanism, add/remove-one adjacency), usable on its own.
//!
//! * [`pld`] — the **certified** accountant (connect-the-dots PLD, FFT composition, both
//!   directions): `lower / estimate / upper`, where `upper` is a guarantee. The only source of
//!   any guarantee ewtune states.
//! * [`edgeworth`] — the Edgeworth accountant of EW-Tune: a fast *estimate*, never a guarantee
//!   (it under-states epsilon in common DP-SGD regimes: docs/accounting.md, "Why it is only an
//!   estimate").
//! * [`rdp`] — Rényi DP, the classic loose baseline.
//! * [`calibrate`] — the noise multiplier for a target (epsilon, delta), always certified.
//! * [`report`] — the three side by side, with the warning when Edgeworth strays from the certified value.
//! * [`domain`] — the accepted range of every argument; anything outside it is a typed error,
//!   returned before any arithmetic or allocation.
//!
//! ```
//! use ewtune_accountant::{History, pld::PldAccountant};
//! let history = History::homogeneous(1.0, 0.01, 1000).unwrap();
//! let eps = PldAccountant::default().epsilon(&history, 1e-5).unwrap();
//! assert!(eps.bounds.lower <= eps.bounds.estimate && eps.bounds.estimate <= eps.bounds.upper);
//! assert!((eps.bounds.upper - 1.828).abs() < 0.01); // dp_accounting PLD: 1.828
//! ```
#![deny(missing_docs)]

mod brent;
pub mod calibrate;
pub mod domain;
pub mod edgeworth;
mod error;
mod event;
pub mod mechanism;
pub mod normal;
pub mod pld;
pub mod rdp;
pub mod report;

pub use error::{Error, Result};
pub use event::{DpEvent, History, StepGroup};
