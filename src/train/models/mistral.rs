//! Mistral (Jiang et al., arXiv 2310.06825) as transformers' `MistralForCausalLM`: the Llama
//! decoder with sliding-window attention on every layer when `sliding_window` is set.

use super::decoder::{resolve_common, single_rope, DecoderSpec, Defaults};
use super::hf_config::HfConfig;
use crate::train::TrainError;

/// PEFT's default LoRA targets for Mistral.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// Every linear module of a decoder layer, by its HF name.
pub const LINEAR_MODULES: &[&str] = super::llama::LINEAR_MODULES;

/// Resolves a Mistral `config.json`.
pub fn resolve(cfg: &mut HfConfig) -> Result<DecoderSpec, TrainError> {
    let defaults = Defaults { tie_word_embeddings: false, eps: 1e-6, act_key: "hidden_act", act: "silu", max_positions: 4096 * 32, head_dim: None };
    let mut spec = resolve_common(cfg, defaults)?;
    let window = cfg.opt::<i64>("sliding_window")?;
    if let Some(w) = window.filter(|w| *w <= 0) {
        return Err(cfg.unsupported(format!("sliding_window {w}")));
    }
    for layer in &mut spec.layers {
        layer.window = window;
    }
    single_rope(cfg, &mut spec, 10000.0)?;
    Ok(spec)
}
