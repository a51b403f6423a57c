//! Builds a model's layers from checkpoint tensors: every tensor is taken under its HF name
//! exactly once, and the name is recorded with the tensor, so the names written in a family's
//! loader are the names the model is saved under (LoRA adapters under PEFT's suffixes).

use super::layers::{Linear, LoraInit, Norm, NormKind};
use crate::train::finetune::{FineTune, LinearRole};
use crate::train::weights::Weights;
use crate::train::TrainError;
use tch::Tensor;

/// Takes tensors out of [`Weights`] and records their names.
pub struct Loader<'a> {
    weights: &'a mut Weights,
    finetune: &'a FineTune,
    lora: LoraInit,
    default_targets: &'static [&'static str],
    named: Vec<(String, Tensor)>,
}

impl<'a> Loader<'a> {
    /// A loader for one model; `default_targets` are the family's default LoRA modules.
    pub fn new(weights: &'a mut Weights, finetune: &'a FineTune, default_targets: &'static [&'static str], device: tch::Device) -> Self {
        Loader { weights, finetune, lora: LoraInit { device }, default_targets, named: Vec::new() }
    }

    /// True when the checkpoint holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.weights.contains(name)
    }

    fn take(&mut self, name: &str, shape: &[i64], trainable: bool) -> Result<Tensor, TrainError> {
        let t = self.weights.take(name, shape, trainable)?;
        self.named.push((name.to_string(), t.shallow_clone()));
        Ok(t)
    }

    /// A frozen tensor (embeddings, learned positions).
    pub fn frozen(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, TrainError> {
        self.take(name, shape, false)
    }

    /// An `nn.Linear` (`weight [out, in]`) called `prefix`, with its LoRA branch when adapted.
    pub fn linear(&mut self, prefix: &str, d_in: i64, d_out: i64, bias: bool) -> Result<Linear, TrainError> {
        self.linear_layout(prefix, d_in, d_out, bias, false)
    }

    /// A GPT-2 `Conv1D` (`weight [in, out]`, always with a bias).
    pub fn conv1d(&mut self, prefix: &str, d_in: i64, d_out: i64) -> Result<Linear, TrainError> {
        self.linear_layout(prefix, d_in, d_out, true, true)
    }

    fn linear_layout(&mut self, prefix: &str, d_in: i64, d_out: i64, bias: bool, in_out: bool) -> Result<Linear, TrainError> {
        let role = self.finetune.linear_role(prefix, self.default_targets).map_err(|reason| TrainError::BadSpec { field: "finetune.target_modules", reason })?;
        let trainable = role == LinearRole::Trainable;
        let shape = if in_out { [d_in, d_out] } else { [d_out, d_in] };
        let weight = self.take(&format!("{prefix}.weight"), &shape, trainable)?;
        let bias = if bias { Some(self.take(&format!("{prefix}.bias"), &[d_out], trainable)?) } else { None };
        let lora = match role {
            LinearRole::Adapted => {
                let l = self.lora.make(self.finetune, self.weights, prefix, d_in, d_out)?;
                self.named.push((format!("{prefix}.lora_A.weight"), l.a.shallow_clone()));
                self.named.push((format!("{prefix}.lora_B.weight"), l.b.shallow_clone()));
                Some(l)
            }
            _ => None,
        };
        Ok(Linear { weight, bias, in_out_layout: in_out, lora })
    }

    /// A norm layer called `prefix` (`weight`, and `bias` for LayerNorm); trainable in full
    /// fine-tuning.
    pub fn norm(&mut self, prefix: &str, d: i64, kind: NormKind, eps: f64) -> Result<Norm, TrainError> {
        let t = self.finetune.norms_trainable();
        let gamma = self.take(&format!("{prefix}.weight"), &[d], t)?;
        let beta = if kind == NormKind::LayerNorm { Some(self.take(&format!("{prefix}.bias"), &[d], t)?) } else { None };
        Ok(Norm { gamma, beta, eps, kind })
    }

    /// Ends loading: a tensor the model did not take means the checkpoint and its config
    /// disagree (or adapters target modules the config does not adapt), refused by name.
    /// Returns every tensor under its HF name.
    pub fn finish(self) -> Result<Vec<(String, Tensor)>, TrainError> {
        self.weights.refuse_leftovers()?;
        Ok(self.named)
    }
}

impl Loader<'_> {
    /// A tied checkpoint may still carry the head's copy of the embedding: equal, it is dropped;
    /// different, the checkpoint contradicts `tie_word_embeddings` and is refused.
    pub fn discard_tied(&mut self, name: &str, embedding: &Tensor) -> Result<(), TrainError> {
        if !self.weights.contains(name) {
            return Ok(());
        }
        let head = self.weights.take(name, &embedding.size(), false)?;
        if !head.equal(embedding) {
            return Err(TrainError::UnsupportedModel {
                reason: format!("`{name}` differs from the embedding although the config sets tie_word_embeddings"),
            });
        }
        Ok(())
    }
}
