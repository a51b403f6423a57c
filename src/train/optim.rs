//! Optimizers applied to the privatised gradient: AdamW (Loshchilov & Hutter, arXiv 1711.05101)
//! and SGD with momentum, with a learning-rate schedule. Their state is plain tensors so a
//! checkpoint can hold it exactly.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerKind {
    /// AdamW with decoupled weight decay.
    AdamW {
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Denominator epsilon.
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay.
        #[serde(default)]
        weight_decay: f64,
    },
    /// SGD with (heavy-ball) momentum.
    Sgd {
        /// Momentum (0 = plain SGD).
        #[serde(default)]
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
}
