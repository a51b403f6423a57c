//! Llama 1/2/3.x (Touvron et al., arXiv 2302.13971 and 2307.09288; Grattafiori et al., arXiv
//! 2407.21783) as transformers' `LlamaForCausalLM`: the shared pre-norm decoder with RMSNorm,
//! grouped-query attention, SwiGLU and rotary embeddings of every `rope_type` transformers writes
//! for Llama (default, linear, dynamic, llama3, yarn); optional attention and MLP biases; tied
//! or untied head.

use super::decoder::{resolve_common, single_rope, DecoderSpec, Defaults};
use super::hf_config::HfConfig;
use crate::train::TrainError;

/// PEFT's default LoRA targets for Llama.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// Every linear module of a decoder layer, by its HF name.
pub const LINEAR_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Resolves a Llama `config.json`.
pub fn resolve(cfg: &mut HfConfig) -> Result<DecoderSpec, TrainError> {
    let defaults = Defaults { tie_word_embeddings: false, eps: 1e-6, act_key: "hidden_act", act: "silu", max_positions: 2048, head_dim: None };
    let mut spec = resolve_common(cfg, defaults)?;
    let attention_bias = cfg.opt::<bool>("attention_bias")?.unwrap_or(false);
    spec.qkv_bias = attention_bias;
    spec.o_bias = attention_bias;
    spec.mlp_bias = cfg.opt::<bool>("mlp_bias")?.unwrap_or(false);
    single_rope(cfg, &mut spec, 10000.0)?;
    Ok(spec)
}
