//! A causal LM of any supported family, loaded from an HF checkpoint directory (`config.json`
//! and its weights), and the per-sequence loss the DP step clips. The families live in
//! `models/`, one file each, on shared building blocks.

use super::finetune::FineTune;
use super::models::decoder::Decoder;
use super::models::gpt2::{self, Gpt2};
use super::models::gpt_neox::{self, GptNeox};
use super::models::hf_config::HfConfig;
use super::models::loader::Loader;
use super::models::{gemma2, gemma3, llama, mistral, phi3, qwen2, qwen3};
use super::precision::Precision;
use super::tape::Tape;
use super::weights::Weights;
use super::TrainError;
use std::path::Path;
use tch::{Device, Kind, Reduction, Tensor};

/// A model family ewtune implements, by HF `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `gpt2`.
    Gpt2,
    /// `llama`.
    Llama,
    /// `mistral`.
    Mistral,
    /// `qwen2`.
    Qwen2,
    /// `qwen3`.
    Qwen3,
    /// `gemma2`.
    Gemma2,
    /// `gemma3_text`.
    Gemma3,
    /// `phi3`.
    Phi3,
    /// `gpt_neox`.
    GptNeox,
}

/// Every family, in the order messages list them.
pub const FAMILIES: &[Family] =
    &[Family::Gpt2, Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3, Family::Gemma2, Family::Gemma3, Family::Phi3, Family::GptNeox];

impl Family {
    /// The HF `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
            Family::Phi3 => "phi3",
            Family::GptNeox => "gpt_neox",
        }
    }

    /// The family of a `model_type`, or an error listing the supported ones.
    pub fn from_model_type(model_type: Option<&str>) -> Result<Family, TrainError> {
        let supported = || FAMILIES.iter().map(|f| f.model_type()).collect::<Vec<_>>().join(", ");
        match model_type {
            Some(t) => FAMILIES.iter().copied().find(|f| f.model_type() == t).ok_or_else(|| TrainError::UnsupportedModel {
                reason: match t {
                    "gemma3" => "model_type `gemma3` is Gemma 3's image-text model; use its text model (`gemma3_text`, Gemma3ForCausalLM)".into(),
                    _ => format!("model_type `{t}` (supported: {})", supported()),
                },
            }),
            None => Err(TrainError::UnsupportedModel { reason: format!("config.json names no model_type (supported: {})", supported()) }),
        }
    }

    /// PEFT's default LoRA target modules.
    pub fn default_lora_targets(self) -> &'static [&'static str] {
        match self {
            Family::Gpt2 => gpt2::DEFAULT_LORA_TARGETS,
            Family::Llama => llama::DEFAULT_LORA_TARGETS,
            Family::Mistral => mistral::DEFAULT_LORA_TARGETS,
            Family::Qwen2 => qwen2::DEFAULT_LORA_TARGETS,
            Family::Qwen3 => qwen3::DEFAULT_LORA_TARGETS,
            Family::Gemma2 => gemma2::DEFAULT_LORA_TARGETS,
            Family::Gemma3 => gemma3::DEFAULT_LORA_TARGETS,
            Family::Phi3 => phi3::DEFAULT_LORA_TARGETS,
            Family::GptNeox => gpt_neox::DEFAULT_LORA_TARGETS,
        }
    }

    /// The linear modules of a layer (what LoRA `target_modules` may name).
    pub fn linear_modules(self) -> &'static [&'static str] {
        match self {
            Family::Gpt2 => gpt2::LINEAR_MODULES,
            Family::Llama => llama::LINEAR_MODULES,
            Family::Mistral => mistral::LINEAR_MODULES,
            Family::Qwen2 => qwen2::LINEAR_MODULES,
            Family::Qwen3 => qwen3::LINEAR_MODULES,
            Family::Gemma2 => gemma2::LINEAR_MODULES,
            Family::Gemma3 => gemma3::LINEAR_MODULES,
            Family::Phi3 => phi3::LINEAR_MODULES,
            Family::GptNeox => gpt_neox::LINEAR_MODULES,
        }
    }

    /// True for GPT-2's Conv1D layout (PEFT's `fan_in_fan_out`).
    pub fn fan_in_fan_out(self) -> bool {
        self == Family::Gpt2
    }
}

/// The network of a loaded model.
enum Net {
    Gpt2(Gpt2),
    Decoder(Decoder),
    GptNeox(GptNeox),
}

/// A loaded model.
pub struct Model {
    /// Its family.
    pub family: Family,
    net: Net,
    /// Every tensor under the HF name it was loaded (or created) under.
    named: Vec<(String, Tensor)>,
    /// Precision of the forward/backward.
    pub precision: Precision,
}

/// What `dir/config.json` says about the model's limits, read without loading weights.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ConfigLimits {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Learned positions (GPT-2's `n_positions`); `None` for rotary models.
    #[serde(default)]
    pub n_positions: Option<i64>,
    /// The context a rotary model was trained for (`max_position_embeddings`).
    #[serde(default)]
    pub max_position_embeddings: Option<i64>,
    /// HF `model_type`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// The weights' dtype as transformers >= 5 writes it.
    #[serde(default)]
    pub dtype: Option<String>,
    /// The same as transformers 4 writes it.
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

impl ConfigLimits {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|_| TrainError::MissingFile { path: path.clone() })?;
        serde_json::from_slice(&text).map_err(|e| TrainError::CorruptCheckpoint { path, reason: e.to_string() })
    }

    /// True when the config says the weights are bfloat16.
    pub fn is_bf16(&self) -> bool {
        self.dtype.as_deref().or(self.torch_dtype.as_deref()) == Some("bfloat16")
    }

    /// Tokens one sequence may hold: the learned positions, else the trained context.
    pub fn context(&self) -> Option<i64> {
        self.n_positions.or(self.max_position_embeddings)
    }

    /// Names of the model's linear modules (what LoRA `target_modules` may name); empty for a
    /// family ewtune does not load.
    pub fn linear_modules(&self) -> &'static [&'static str] {
        Family::from_model_type(self.model_type.as_deref()).map(Family::linear_modules).unwrap_or(&[])
    }
}

impl Model {
    /// Loads `dir/config.json` and the checkpoint's weights (single file or shards); `adapter`
    /// (a PEFT-layout safetensors of LoRA tensors named as in [`Model::named_tensors`]) is
    /// merged in when given (resume, audits of adapters).
    pub fn load(dir: &Path, finetune: &FineTune, adapter: Option<&Path>, device: Device) -> Result<Self, TrainError> {
        Model::load_with(dir, finetune, adapter, device, Precision::F32)
    }

    /// [`Model::load`] in a given precision: in bf16, frozen weights are held in bfloat16 and
    /// the trainable ones as f32 masters.
    pub fn load_with(dir: &Path, finetune: &FineTune, adapter: Option<&Path>, device: Device, precision: Precision) -> Result<Self, TrainError> {
        let cfg = HfConfig::read(dir)?;
        let family = Family::from_model_type(cfg.model_type())?;
        let mut cfg = cfg.for_family(family.model_type());
        let _model_type: Option<String> = cfg.opt("model_type")?;
        // Resolve the config before reading weights: an unsupported model fails fast.
        enum Resolved {
            Gpt2(gpt2::Config),
            Decoder(super::models::decoder::DecoderSpec),
            GptNeox(gpt_neox::Config),
        }
        let resolved = match family {
            Family::Gpt2 => Resolved::Gpt2(gpt2::resolve(&mut cfg)?),
            Family::GptNeox => Resolved::GptNeox(gpt_neox::resolve(&mut cfg)?),
            Family::Llama => Resolved::Decoder(llama::resolve(&mut cfg)?),
            Family::Mistral => Resolved::Decoder(mistral::resolve(&mut cfg)?),
            Family::Qwen2 => Resolved::Decoder(qwen2::resolve(&mut cfg)?),
            Family::Qwen3 => Resolved::Decoder(qwen3::resolve(&mut cfg)?),
            Family::Gemma2 => Resolved::Decoder(gemma2::resolve(&mut cfg)?),
            Family::Gemma3 => Resolved::Decoder(gemma3::resolve(&mut cfg)?),
            Family::Phi3 => Resolved::Decoder(phi3::resolve(&mut cfg)?),
        };
        cfg.finish()?;
        let mut weights = Weights::read_dir(dir, device)?;
        weights.set_frozen_kind(precision.compute_kind());
        if family == Family::Gpt2 {
            gpt2::normalise_names(&mut weights);
        }
        if let Some(path) = adapter {
            weights.merge(Weights::read(path, device)?);
        }
        let mut ld = Loader::new(&mut weights, finetune, family.default_lora_targets(), device);
        let net = match resolved {
            Resolved::Gpt2(c) => Net::Gpt2(Gpt2::load(&mut ld, c)?),
            Resolved::GptNeox(c) => Net::GptNeox(GptNeox::load(&mut ld, c)?),
            Resolved::Decoder(s) => Net::Decoder(Decoder::load(&mut ld, s)?),
        };
        let named = ld.finish()?;
        Ok(Model { family, net, named, precision })
    }

    /// Loads a model as `ewtune train` or the daemon wrote it: a full checkpoint directory, or a
    /// PEFT LoRA adapter directory (`adapter_config.json` naming its base model).
    pub fn load_output(dir: &Path, device: Device) -> Result<Self, TrainError> {
        super::peft_adapter::load_trained(dir, super::peft_adapter::AdapterBase::Recorded, device)
    }

    /// Logits `[B, T, V]`, in f32 whatever the precision (losses are computed in f32).
    pub fn forward(&self, ids: &Tensor, tape: Option<&mut Tape>) -> Tensor {
        let logits = match &self.net {
            Net::Gpt2(m) => m.forward(ids, tape),
            Net::Decoder(m) => m.forward(ids, tape),
            Net::GptNeox(m) => m.forward(ids, tape),
        };
        logits.to_kind(Kind::Float)
    }

    /// Every tensor under its HF name (LoRA adapters under PEFT's suffixes).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
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
        match &self.net {
            Net::Gpt2(m) => Some(m.config.n_positions),
            _ => None,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> i64 {
        match &self.net {
            Net::Gpt2(m) => m.config.vocab_size,
            Net::Decoder(m) => m.spec.vocab_size,
            Net::GptNeox(m) => m.config.vocab_size,
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
