//! Phi-3, Phi-3.5 and Phi-4 (mini) (Abdin et al., arXiv 2404.14219 and 2412.08905) as
//! transformers' `Phi3ForCausalLM`: the Llama decoder with fused `qkv_proj` and `gate_up_proj`,
//! optional partial rotary dimensions and sliding window. LongRoPE (the 128k-context variants) is
//! refused by name.

use super::decoder::{resolve_common, single_rope, DecoderSpec, Defaults, Projections};
use super::hf_config::HfConfig;
use crate::train::TrainError;

/// Default LoRA targets for Phi-3 (PEFT has none for this family; the fused attention projection
/// is the usual choice).
pub const DEFAULT_LORA_TARGETS: &[&str] = &["qkv_proj"];

/// Every linear module of a decoder layer, by its HF name.
pub const LINEAR_MODULES: &[&str] = &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"];

/// Resolves a Phi-3 `config.json`.
pub fn resolve(cfg: &mut HfConfig) -> Result<DecoderSpec, TrainError> {
    let defaults = Defaults { tie_word_embeddings: false, eps: 1e-5, act_key: "hidden_act", act: "silu", max_positions: 4096, head_dim: None };
    let mut spec = resolve_common(cfg, defaults)?;
    spec.projections = Projections::Fused;
    let window = cfg.opt::<i64>("sliding_window")?;
    for layer in &mut spec.layers {
        layer.window = window;
    }
    // Used only by LongRoPE, which `single_rope` refuses.
    let _original: Option<i64> = cfg.opt("original_max_position_embeddings")?;
    single_rope(cfg, &mut spec, 10000.0)?;
    Ok(spec)
}
