//! A causal LM of either supported family, loaded from an HF checkpoint directory
//! (`config.json`, `model.safetensors`), and the per-sequence loss the DP step clips.

use super::finetune::FineTune;
use super::tape::Tape;
use super::weights::Weights;
use super::{gpt2, llama, TrainError};
use std::path::Path;
use tch::{Device, Kind, Reduction, Tensor};

/// A loaded model.
pub enum Model {
    /// GPT-2 family.
    Gpt2(gpt2::Gpt2),
    /// Llama family.
    Llama(llama::Llama),
}

#[derive(serde::Deserialize)]
struct ModelType {
    model_type: Option<String>,
}

/// What `dir/config.json` says about the model's limits, read without loading weights.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ConfigLimits {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Learned positions (GPT-2's `n_positions`); `None` for rotary models.
    #[serde(default)]
    pub n_positions: Option<i64>,
    /// The context a rotary model was trained for (Llama's `max_position_embeddings`).
    #[serde(default)]
    pub max_position_embeddings: Option<i64>,
    /// HF `model_type`.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ConfigLimits {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|_| TrainError::MissingFile { path: path.clone() })?;
        serde_json::from_slice(&text).map_err(|e| TrainError::CorruptCheckpoint { path, reason: e.to_string() })
    }

    /// Tokens one sequence may hold: the learned positions, else the trained context.
    pub fn context(&self) -> Option<i64> {
        self.n_positions.or(self.max_position_embeddings)
    }

    /// Names of the model's linear modules (what LoRA `target_modules` may name); empty for a
    /// family ewtune does not load.
    pub fn linear_modules(&self) -> &'static [&'static str] {
        match self.model_type.as_deref() {
            Some("gpt2") => super::gpt2::LINEAR_MODULES,
            Some("llama") => super::llama::LINEAR_MODULES,
            _ => &[],
        }
    }
}

impl Model {
    /// Loads `dir/config.json` and `dir/model.safetensors`; `adapter` (a PEFT-layout safetensors
    /// of LoRA tensors named as in [`Model::named_tensors`]) is merged in when given (resume).
    pub fn load(dir: &Path, finetune: &FineTune, adapter: Option<&Path>, device: Device) -> Result<Self, TrainError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|_| TrainError::MissingFile { path: config_path.clone() })?;
        let bad = |e: serde_json::Error| TrainError::CorruptCheckpoint { path: config_path.clone(), reason: e.to_string() };
        let kind: ModelType = serde_json::from_str(&text).map_err(bad)?;
        let mut weights = Weights::read(&dir.join("model.safetensors"), device)?;
        if let Some(path) = adapter {
            weights.merge(Weights::read(path, device)?);
        }
        match kind.model_type.as_deref() {
            Some("gpt2") => {
                let cfg: gpt2::HfConfig = serde_json::from_str(&text).map_err(bad)?;
                Ok(Model::Gpt2(gpt2::Gpt2::load(&mut weights, cfg.into_config()?, finetune, device)?))
            }
            Some("llama") => {
                let cfg: llama::HfConfig = serde_json::from_str(&text).map_err(bad)?;
                Ok(Model::Llama(llama::Llama::load(&mut weights, cfg.into_config()?, finetune, device)?))
            }
            other => Err(TrainError::UnsupportedModel { reason: format!("model_type {other:?} (supported: gpt2, llama)") }),
        }
    }

    /// Loads a model as `ewtune train` or the daemon wrote it: a full checkpoint directory, or a
    /// PEFT LoRA adapter directory (`adapter_config.json` naming its base model).
    pub fn load_output(dir: &Path, device: Device) -> Result<Self, TrainError> {
        let adapter_cfg = dir.join("adapter_config.json");
        if !adapter_cfg.exists() {
            return Model::load(dir, &FineTune::Full, None, device);
        }
        #[derive(serde::Deserialize)]
        struct Peft {
            base_model_name_or_path: std::path::PathBuf,
            r: i64,
            lora_alpha: f64,
            target_modules: Vec<String>,
        }
        let text = std::fs::read(&adapter_cfg).map_err(|_| TrainError::MissingFile { path: adapter_cfg.clone() })?;
        let peft: Peft = serde_json::from_slice(&text).map_err(|e| TrainError::CorruptCheckpoint { path: adapter_cfg.clone(), reason: e.to_string() })?;
        let ft = FineTune::Lora { rank: peft.r, alpha: peft.lora_alpha, target_modules: peft.target_modules };
        Model::load(&peft.base_model_name_or_path, &ft, Some(&dir.join("adapter_model.safetensors")), device)
    }

    /// Logits `[B, T, V]`.
    pub fn forward(&self, ids: &Tensor, tape: Option<&mut Tape>) -> Tensor {
        match self {
            Model::Gpt2(m) => m.forward(ids, tape),
            Model::Llama(m) => m.forward(ids, tape),
        }
    }

    /// Every tensor under its HF name.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Model::Gpt2(m) => m.named_tensors(),
            Model::Llama(m) => m.named_tensors(),
        }
    }

    /// The trainable tensors, by name.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.named_tensors().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }

    /// The frozen tensors, by name.
    pub fn frozen(&self) -> Vec<(String, Tensor)> {
        self.named_tensors().into_iter().filter(|(_, t)| !t.requires_grad()).collect()
    }

    /// Maximum sequence length the model accepts (None: no learned limit).
    pub fn max_positions(&self) -> Option<i64> {
        match self {
            Model::Gpt2(m) => Some(m.config.n_positions),
            Model::Llama(_) => None,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> i64 {
        match self {
            Model::Gpt2(m) => m.config.vocab_size,
            Model::Llama(m) => m.config.vocab_size,
        }
    }
}

/// Mean next-token cross-entropy of each sequence over its target positions: `ids [B, T]`,
/// `loss_mask [B, T]` (1 where `ids[t]` is a target predicted from `ids[..t]`; position 0 is never
/// a target). Returns `[B]`; a sequence without targets has loss 0 (and so no gradient).
pub fn sequence_losses(logits: &Tensor, ids: &Tensor, loss_mask: &Tensor) -> Tensor {
    let (b, t, v) = logits.size3().expect("logits are [B, T, V]");
    let pred = logits.narrow(1, 0, t - 1).reshape([b * (t - 1), v]);
    let target = ids.narrow(1, 1, t - 1).reshape([b * (t - 1)]);
    let mask = loss_mask.narrow(1, 1, t - 1).to_kind(Kind::Float);
    let nll = pred.cross_entropy_loss::<Tensor>(&target, None, Reduction::None, -100, 0.0).reshape([b, t - 1]);
    let count = mask.sum_dim_intlist(&[1i64][..], false, Kind::Float).clamp_min(1.0);
    (nll * &mask).sum_dim_intlist(&[1i64][..], false, Kind::Float) / count
}

/// Per-token log-probabilities `log p(ids[t] | ids[..t])`, `[B, T-1]` (float64).
pub fn token_logprobs(logits: &Tensor, ids: &Tensor) -> Tensor {
    let t = logits.size()[1];
    let logp = logits.narrow(1, 0, t - 1).to_kind(Kind::Double).log_softmax(-1, Kind::Double);
    logp.gather(2, &ids.narrow(1, 1, t - 1).unsqueeze(-1), false).squeeze_dim(-1)
}
