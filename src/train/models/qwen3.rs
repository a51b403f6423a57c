//! Qwen3 (Yang et al., arXiv 2505.09388) as transformers' `Qwen3ForCausalLM`: the Llama decoder
//! with a per-head RMSNorm on queries and keys before the rotary embedding, an explicit
//! `head_dim`, optional attention biases, and Qwen's sliding-window layers.

use super::decoder::{resolve_common, single_rope, DecoderSpec, Defaults};
use super::hf_config::HfConfig;
use crate::train::TrainError;

/// PEFT's default LoRA targets for Qwen3.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// Every linear module of a decoder layer, by its HF name.
pub const LINEAR_MODULES: &[&str] = super::llama::LINEAR_MODULES;

/// Resolves a Qwen3 `config.json`.
pub fn resolve(cfg: &mut HfConfig) -> Result<DecoderSpec, TrainError> {
    let defaults = Defaults { tie_word_embeddings: false, eps: 1e-6, act_key: "hidden_act", act: "silu", max_positions: 32768, head_dim: Some(128) };
    let mut spec = resolve_common(cfg, defaults)?;
    let attention_bias = cfg.opt::<bool>("attention_bias")?.unwrap_or(false);
    spec.qkv_bias = attention_bias;
    spec.o_bias = attention_bias;
    spec.qk_norm = true;
    super::qwen2::sliding_layers(cfg, &mut spec)?;
    single_rope(cfg, &mut spec, 10000.0)?;
    Ok(spec)
}
