//! Optimizers applied to the privatised gradient: AdamW (Loshchilov & Hutter, arXiv 1711.05101)
//! and SGD with momentum, with a learning-rate schedule. Their state is plain tensors so a
//! checkpoint can hold it exactly.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which optimizer. Written `{"kind": "adam_w", ..}` or `{"kind": "sgd", "momentum": ..}`; read
/// through the plain struct [`OptimizerTable`], so a strict reader (`crate::strict_toml`) sees
/// every key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "OptimizerTable")]
pub enum OptimizerKind {
    /// AdamW with decoupled weight decay.
    AdamW {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator epsilon.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
    /// SGD with (heavy-ball) momentum.
    Sgd {
        /// Momentum (0 = plain SGD).
        momentum: f64,
    },
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

/// `training.optimizer` as written: every key of every kind, checked against the kind by
/// `TryFrom` (a key of the other kind is an error, not ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OptimizerTable {
    /// `adam_w` or `sgd`.
    pub kind: OptimizerName,
    /// AdamW first-moment decay (default 0.9).
    pub beta1: Option<f64>,
    /// AdamW second-moment decay (default 0.999).
    pub beta2: Option<f64>,
    /// AdamW denominator epsilon (default 1e-8).
    pub eps: Option<f64>,
    /// AdamW decoupled weight decay (default 0).
    pub weight_decay: Option<f64>,
    /// SGD momentum (default 0).
    pub momentum: Option<f64>,
}

/// The `kind` key of [`OptimizerTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerName {
    /// AdamW.
    AdamW,
    /// SGD with momentum.
    Sgd,
}

impl TryFrom<OptimizerTable> for OptimizerKind {
    type Error = String;

    fn try_from(t: OptimizerTable) -> Result<Self, String> {
        let stray = |keys: &[(&str, bool)], kind: &str| match keys.iter().find(|(_, given)| *given) {
            Some((key, _)) => Err(format!("optimizer: `{key}` is not a setting of kind = \"{kind}\"")),
            None => Ok(()),
        };
        match t.kind {
            OptimizerName::AdamW => {
                stray(&[("momentum", t.momentum.is_some())], "adam_w")?;
                Ok(OptimizerKind::AdamW {
                    beta1: t.beta1.unwrap_or_else(default_beta1),
                    beta2: t.beta2.unwrap_or_else(default_beta2),
                    eps: t.eps.unwrap_or_else(default_eps),
                    weight_decay: t.weight_decay.unwrap_or(0.0),
                })
            }
            OptimizerName::Sgd => {
                let adam = [("beta1", t.beta1.is_some()), ("beta2", t.beta2.is_some()), ("eps", t.eps.is_some()), ("weight_decay", t.weight_decay.is_some())];
                stray(&adam, "sgd")?;
                Ok(OptimizerKind::Sgd { momentum: t.momentum.unwrap_or(0.0) })
            }
        }
    }
}

impl Default for OptimizerKind {
    fn default() -> Self {
        OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Learning-rate schedule over the job's logical steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Linear warm-up over the first 10 % of steps, then linear decay to 0.
    Linear,
    /// Linear warm-up over the first 10 % of steps, then cosine decay to 0.
    Cosine,
}

impl Schedule {
    /// Multiplier of the base rate at `step` (0-based) of `total`.
    pub fn factor(self, step: u64, total: u64) -> f64 {
        let total = total.max(1) as f64;
        let s = step as f64 + 1.0;
        let warmup = (0.1 * total).ceil();
        match self {
            Schedule::Constant => 1.0,
            _ if s <= warmup => s / warmup,
            Schedule::Linear => ((total - s) / (total - warmup).max(1.0)).max(0.0),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * (s - warmup) / (total - warmup).max(1.0)).cos()),
        }
    }
}

/// An optimizer with its per-tensor state.
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    schedule: Schedule,
    total_steps: u64,
    /// Steps taken.
    pub step: u64,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
}

impl Optimizer {
    /// Fresh state for `params`.
    pub fn new(kind: OptimizerKind, lr: f64, schedule: Schedule, total_steps: u64, params: &[Tensor]) -> Self {
        let zeros = |p: &Tensor| Tensor::zeros_like(p).set_requires_grad(false);
        Optimizer { kind, lr, schedule, total_steps, step: 0, first: params.iter().map(zeros).collect(), second: params.iter().map(zeros).collect() }
    }

    /// The current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.lr * self.schedule.factor(self.step, self.total_steps)
    }

    /// Updates `params` in place with `grads` (same order as at construction).
    pub fn apply(&mut self, params: &[Tensor], grads: &[Tensor]) {
        let lr = self.learning_rate();
        self.step += 1;
        let t = self.step as f64;
        let _guard = tch::no_grad_guard();
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let mut p = p.shallow_clone();
            match self.kind {
                OptimizerKind::AdamW { beta1, beta2, eps, weight_decay } => {
                    self.first[i] = &self.first[i] * beta1 + g * (1.0 - beta1);
                    self.second[i] = &self.second[i] * beta2 + g.square() * (1.0 - beta2);
                    let m_hat = &self.first[i] / (1.0 - beta1.powf(t));
                    let v_hat = &self.second[i] / (1.0 - beta2.powf(t));
                    if weight_decay > 0.0 {
                        let _ = p.f_mul_scalar_(1.0 - lr * weight_decay);
                    }
                    let _ = p.f_sub_(&(m_hat / (v_hat.sqrt() + eps) * lr));
                }
                OptimizerKind::Sgd { momentum } => {
                    if momentum > 0.0 {
                        self.first[i] = &self.first[i] * momentum + g;
                        let _ = p.f_sub_(&(&self.first[i] * lr));
                    } else {
                        let _ = p.f_sub_(&(g * lr));
                    }
                }
            }
        }
    }

    /// The state as named tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`), for checkpoints.
    pub fn state(&self, names: &[String]) -> Vec<(String, Tensor)> {
        names
            .iter()
            .zip(self.first.iter().zip(&self.second))
            .flat_map(|(n, (m, v))| [(format!("{n}.exp_avg"), m.shallow_clone()), (format!("{n}.exp_avg_sq"), v.shallow_clone())])
            .collect()
    }

    /// Restores state written by [`Optimizer::state`]; `None` names a missing or mis-shaped tensor.
    pub fn restore(&mut self, names: &[String], state: &std::collections::HashMap<String, Tensor>, step: u64) -> Result<(), String> {
        for (i, n) in names.iter().enumerate() {
            for (suffix, slot) in [("exp_avg", &mut self.first[i]), ("exp_avg_sq", &mut self.second[i])] {
                let key = format!("{n}.{suffix}");
                let t = state.get(&key).ok_or_else(|| format!("optimizer state `{key}` is missing"))?;
                if t.size() != slot.size() {
                    return Err(format!("optimizer state `{key}` has shape {:?}, expected {:?}", t.size(), slot.size()));
                }
                *slot = t.to_device(slot.device()).detach();
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_and_decay() {
        assert_eq!(Schedule::Constant.factor(5, 10), 1.0);
        assert!((Schedule::Linear.factor(0, 100) - 0.1).abs() < 1e-12);
        assert!((Schedule::Linear.factor(9, 100) - 1.0).abs() < 1e-12);
        assert!(Schedule::Linear.factor(99, 100) < 0.02);
        assert!((Schedule::Cosine.factor(9, 100) - 1.0).abs() < 1e-12);
        assert!(Schedule::Cosine.factor(99, 100) < 1e-3);
    }

    #[test]
    fn optimizer_kinds_round_trip_and_refuse_the_other_kinds_keys() {
        for k in [OptimizerKind::default(), OptimizerKind::AdamW { beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 0.1 }, OptimizerKind::Sgd { momentum: 0.9 }] {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<OptimizerKind>(&json).unwrap(), k, "{json}");
        }
        assert_eq!(serde_json::from_str::<OptimizerKind>(r#"{"kind":"adam_w","weight_decay":0.1}"#).unwrap(), OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 });
        let err = serde_json::from_str::<OptimizerKind>(r#"{"kind":"sgd","weight_decay":0.1}"#).unwrap_err().to_string();
        assert!(err.contains("`weight_decay` is not a setting of kind = \"sgd\""), "{err}");
        let err = serde_json::from_str::<OptimizerKind>(r#"{"kind":"adam_w","momentum":0.9}"#).unwrap_err().to_string();
        assert!(err.contains("`momentum`"), "{err}");
    }
}
