//! What happened, as data: DP events in dp_accounting's words, and the run-length history of
//! DP-SGD steps `(sigma, q, steps)` that every accountant of this crate composes.
//!
//! A stored event's meaning never changes; a new kind of mechanism is a new variant.

use crate::domain::{check_steps, MAX_GROUPS, MAX_STEPS};
use crate::error::{Error, Result};
use crate::mechanism::SubsampledGaussian;
use serde::{Deserialize, Serialize};

/// A differentially private mechanism, or a composition of them (add/remove-one adjacency,
/// L2 sensitivity 1 throughout).
#[derive(Debug, Clone, PartialEq)]
pub enum DpEvent {
    /// The Gaussian mechanism with noise std `noise_multiplier` times the sensitivity, applied
    /// to the whole dataset (no sampling).
    Gaussian {
        /// Noise std / L2 sensitivity.
        noise_multiplier: f64,
    },
    /// `event` applied to a Poisson sample: each example independently with probability
    /// `sampling_probability`. Only a Gaussian inner event is supported.
    PoissonSampled {
        /// Inclusion probability of each example, in (0, 1].
        sampling_probability: f64,
        /// The mechanism run on the sample.
        event: Box<DpEvent>,
    },
    /// `event` run `count` times, adaptively.
    SelfComposed {
        /// The repeated mechanism.
        event: Box<DpEvent>,
        /// How many times.
        count: u64,
    },
    /// Several mechanisms run in sequence, adaptively.
    Composed(Vec<DpEvent>),
}

/// `steps` DP-SGD steps with the same noise multiplier and sampling rate (Opacus keeps its
/// history as a list of these).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepGroup {
    /// Noise std / clip norm.
    pub noise_multiplier: f64,
    /// Poisson sampling rate q.
    pub sample_rate: f64,
    /// Number of steps.
    pub steps: u64,
}

impl StepGroup {
    /// The mechanism of one step of this group.
    pub fn mechanism(&self) -> SubsampledGaussian {
        SubsampledGaussian { noise_multiplier: self.noise_multiplier, sample_rate: self.sample_rate }
    }
}

/// A validated, heterogeneous DP-SGD history: groups of identical steps, composed adaptively.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<StepGroup>", into = "Vec<StepGroup>")]
pub struct History {
    groups: Vec<StepGroup>,
    /// Sum of the groups' steps (kept so that composing one step stays O(1)).
    total: u64,
}

impl History {
    /// An empty history (no privacy spent).
    pub fn new() -> Self {
        Self::default()
    }

    /// A homogeneous history: `steps` steps of `(sigma, q)`. Accepted: sigma finite and
    /// `>= 0.02`, q in `[1e-12, 1]`, steps in `1 ..= 10^9` ([`crate::domain`]); anything else is
    /// `InvalidArgument` or `OutOfRange`.
    pub fn homogeneous(noise_multiplier: f64, sample_rate: f64, steps: u64) -> Result<Self> {
        let mut h = Self::new();
        h.compose(noise_multiplier, sample_rate, steps)?;
        Ok(h)
    }

    /// Builds a history from groups, validating each.
    pub fn from_groups(groups: impl IntoIterator<Item = StepGroup>) -> Result<Self> {
        let mut h = Self::new();
        for g in groups {
            h.compose(g.noise_multiplier, g.sample_rate, g.steps)?;
        }
        Ok(h)
    }

    /// Appends `steps` steps of `(sigma, q)`, merging with the last group when it matches (as
    /// Opacus' `step()` does). Zero steps are refused: they would be a silent no-op. The whole
    /// history holds at most `MAX_STEPS` (10^9) steps; past it the call is refused
    /// (`OutOfRange`, name `steps`) and the history is left unchanged; so is a history of more
    /// than `MAX_GROUPS` (10^5) groups (`OutOfRange`, name `history`).
    pub fn compose(&mut self, noise_multiplier: f64, sample_rate: f64, steps: u64) -> Result<()> {
        SubsampledGaussian::new(noise_multiplier, sample_rate)?;
        check_steps(steps)?;
        let total = self.total + steps; // both <= MAX_STEPS: no overflow
        if total > MAX_STEPS {
            return Err(Error::OutOfRange { name: "steps", value: format!("{total} in total"), range: "[1, 1e9] in total" });
        }
        let groups = self.groups.len();
        match self.groups.last_mut() {
            Some(last) if last.noise_multiplier == noise_multiplier && last.sample_rate == sample_rate => last.steps += steps,
            _ if groups >= MAX_GROUPS => {
                return Err(Error::OutOfRange {
                    name: "history",
                    value: format!("{} groups", groups + 1),
                    range: "[1, 100000] groups",
                })
            }
            _ => self.groups.push(StepGroup { noise_multiplier, sample_rate, steps }),
        }
        self.total = total;
        Ok(())
    }

    /// Adds the steps of `event` to the history. Events other than (possibly sampled, self- or
    /// otherwise composed) Gaussians are refused rather than mis-accounted.
    pub fn compose_event(&mut self, event: &DpEvent, count: u64) -> Result<()> {
        match event {
            DpEvent::Gaussian { noise_multiplier } => self.compose(*noise_multiplier, 1.0, count),
            DpEvent::PoissonSampled { sampling_probability, event } => match event.as_ref() {
                DpEvent::Gaussian { noise_multiplier } => self.compose(*noise_multiplier, *sampling_probability, count),
                _ => Err(Error::NotCertifiable {
                    reason: "only a Gaussian mechanism may be Poisson-sampled in this accountant".into(),
                }),
            },
            DpEvent::SelfComposed { event, count: inner } => {
                let total = inner.checked_mul(count).ok_or_else(|| Error::InvalidArgument {
                    name: "count",
                    value: format!("{inner} x {count}"),
                    reason: "the number of compositions overflows u64",
                })?;
                self.compose_event(event, total)
            }
            DpEvent::Composed(events) => {
                let mut pass = History::new();
                for e in events {
                    pass.compose_event(e, 1)?;
                }
                match pass.groups() {
                    [] => Ok(()),
                    // One kind of step: `count` passes are one group (no loop over a crafted count).
                    [g] => {
                        let steps = g.steps.saturating_mul(count); // past MAX_STEPS either way: refused
                        self.compose(g.noise_multiplier, g.sample_rate, steps)
                    }
                    // Each further pass adds at least one group, so MAX_GROUPS bounds the loop.
                    groups => {
                        for _ in 0..count {
                            for g in groups {
                                self.compose(g.noise_multiplier, g.sample_rate, g.steps)?;
                            }
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    /// The groups, in order.
    pub fn groups(&self) -> &[StepGroup] {
        &self.groups
    }

    /// Total number of steps.
    pub fn total_steps(&self) -> u64 {
        self.total
    }

    /// True when nothing has been composed.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub(crate) fn require_nonempty(&self) -> Result<()> {
        if self.is_empty() {
            Err(Error::InvalidArgument { name: "history", value: "[]".into(), reason: "the history holds no steps" })
        } else {
            Ok(())
        }
    }
}

impl TryFrom<Vec<StepGroup>> for History {
    type Error = Error;
    fn try_from(groups: Vec<StepGroup>) -> Result<Self> {
        Self::from_groups(groups)
    }
}

impl From<History> for Vec<StepGroup> {
    fn from(h: History) -> Self {
        h.groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_flatten_to_groups() {
        let step = DpEvent::PoissonSampled { sampling_probability: 0.01, event: Box::new(DpEvent::Gaussian { noise_multiplier: 1.1 }) };
        let mut h = History::new();
        h.compose_event(&DpEvent::SelfComposed { event: Box::new(step.clone()), count: 100 }, 2).unwrap();
        h.compose_event(&step, 5).unwrap();
        h.compose_event(&DpEvent::Gaussian { noise_multiplier: 3.0 }, 1).unwrap();
        assert_eq!(h.groups(), &[
            StepGroup { noise_multiplier: 1.1, sample_rate: 0.01, steps: 205 },
            StepGroup { noise_multiplier: 3.0, sample_rate: 1.0, steps: 1 },
        ]);
        assert_eq!(h.total_steps(), 206);
    }

    #[test]
    fn zero_steps_and_bad_values_are_refused() {
        assert!(matches!(History::homogeneous(1.0, 0.1, 0), Err(Error::InvalidArgument { name: "steps", .. })));
        assert!(matches!(History::homogeneous(-1.0, 0.1, 5), Err(Error::InvalidArgument { name: "sigma", .. })));
        let json = r#"[{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3}]"#;
        let h: History = serde_json::from_str(json).unwrap();
        assert_eq!(h.total_steps(), 3);
        let bad = r#"[{"noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 3}]"#;
        let err = serde_json::from_str::<History>(bad).unwrap_err().to_string();
        assert!(err.contains("sigma"), "{err}");
    }
}
