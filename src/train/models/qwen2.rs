//! Qwen2 and Qwen2.5 (Yang et al., arXiv 2407.10671 and 2412.15115) as transformers'
//! `Qwen2ForCausalLM`: the Llama decoder with biases on q, k and v, and sliding-window attention
//! on the layers `layer_types` (or `use_sliding_window` with `max_window_layers`) selects.

use super::decoder::{apply_layer_types, resolve_common, single_rope, DecoderSpec, Defaults};
use super::hf_config::HfConfig;
use crate::train::TrainError;

/// PEFT's default LoRA targets for Qwen2.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// Every linear module of a decoder layer, by its HF name.
pub const LINEAR_MODULES: &[&str] = super::llama::LINEAR_MODULES;

/// Resolves a Qwen2 `config.json`.
pub fn resolve(cfg: &mut HfConfig) -> Result<DecoderSpec, TrainError> {
    let defaults = Defaults { tie_word_embeddings: false, eps: 1e-6, act_key: "hidden_act", act: "silu", max_positions: 32768, head_dim: None };
    let mut spec = resolve_common(cfg, defaults)?;
    spec.qkv_bias = true;
    sliding_layers(cfg, &mut spec)?;
    single_rope(cfg, &mut spec, 10000.0)?;
    Ok(spec)
}

/// Qwen's sliding-window settings (shared with Qwen3): without `layer_types`, layers from
/// `max_window_layers` on slide when `use_sliding_window` is set.
pub fn sliding_layers(cfg: &mut HfConfig, spec: &mut DecoderSpec) -> Result<(), TrainError> {
    let use_window = cfg.opt::<bool>("use_sliding_window")?.unwrap_or(false);
    let window = cfg.opt::<i64>("sliding_window")?.filter(|_| use_window);
    let max_window_layers = cfg.opt::<usize>("max_window_layers")?.unwrap_or(28);
    apply_layer_types(cfg, spec, window, |i| window.is_some() && i >= max_window_layers, |_| 0)
}
