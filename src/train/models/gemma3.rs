//! Gemma 3 text models (Gemma Team, arXiv 2503.19786) as transformers' `Gemma3ForCausalLM`
//! (`model_type` `gemma3_text`): Gemma 2's decoder without soft-capping by default, with a
//! per-head `(1 + w)` RMSNorm on queries and keys, and two rotary embeddings: local layers
//! (sliding window) use `rope_local_base_freq`, global layers `rope_theta` with its scaling.

use super::decoder::{apply_layer_types, DecoderSpec};
use super::hf_config::HfConfig;
use super::rope::{self, Rope};
use crate::train::TrainError;

/// PEFT's default LoRA targets for Gemma 3 text models.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// Every linear module of a decoder layer, by its HF name.
pub const LINEAR_MODULES: &[&str] = super::llama::LINEAR_MODULES;

/// Resolves a Gemma 3 text `config.json`.
pub fn resolve(cfg: &mut HfConfig) -> Result<DecoderSpec, TrainError> {
    let mut spec = super::gemma2::resolve_gemma(cfg, 131_072, (None, None))?;
    spec.qk_norm = true;
    let window = Some(cfg.opt::<i64>("sliding_window")?.unwrap_or(4096));
    let private_pattern: Option<usize> = cfg.opt("_sliding_window_pattern")?;
    let pattern = cfg.opt::<usize>("sliding_window_pattern")?.or(private_pattern).unwrap_or(6).max(1);
    // Ropes: 0 = global (full attention), 1 = local (sliding).
    apply_layer_types(cfg, &mut spec, window, |i| (i + 1) % pattern != 0, |sliding| usize::from(sliding))?;
    let local_theta = cfg.opt::<f64>("rope_local_base_freq")?;
    let params = rope::parameters(cfg)?;
    let (mut global, mut local) = match (rope::layer_type_parameters(&params, "full_attention"), rope::layer_type_parameters(&params, "sliding_attention")) {
        (Some(g), Some(l)) => (g, l),
        // transformers 4: `rope_scaling` and `rope_theta` are the global layers'.
        _ => (params, serde_json::Map::new()),
    };
    if let Some(t) = local_theta {
        local.entry("rope_theta").or_insert(t.into());
    }
    global.entry("rope_theta").or_insert(1_000_000.0.into());
    local.entry("rope_theta").or_insert(10_000.0.into());
    let (hd, max) = (spec.attention.head_dim, spec.max_positions);
    spec.ropes = vec![Rope::from_parameters(cfg, &global, hd, max, 1_000_000.0)?, Rope::from_parameters(cfg, &local, hd, max, 10_000.0)?];
    Ok(spec)
}
