//! Gemma 2 (Gemma Team, arXiv 2408.00118) as transformers' `Gemma2ForCausalLM`: the shared
//! decoder with Gemma's `(1 + w)` RMSNorm, sandwich norms around attention and MLP, embeddings
//! scaled by sqrt(hidden_size), `query_pre_attn_scalar` attention scaling, logit soft-capping in
//! attention and on the output, GeGLU (`gelu_pytorch_tanh`), and sliding-window attention on
//! alternating layers.

use super::decoder::{apply_layer_types, resolve_common, single_rope, DecoderSpec, Defaults};
use super::hf_config::HfConfig;
use super::layers::NormKind;
use crate::train::TrainError;

/// PEFT's default LoRA targets for Gemma 2.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// Every linear module of a decoder layer, by its HF name.
pub const LINEAR_MODULES: &[&str] = super::llama::LINEAR_MODULES;

/// What Gemma 2 and Gemma 3 share on top of the common decoder fields.
pub(crate) fn resolve_gemma(cfg: &mut HfConfig, max_positions: i64, softcap_defaults: (Option<f64>, Option<f64>)) -> Result<DecoderSpec, TrainError> {
    let defaults = Defaults { tie_word_embeddings: true, eps: 1e-6, act_key: "hidden_activation", act: "gelu_pytorch_tanh", max_positions, head_dim: Some(256) };
    // Older Gemma configs carry `hidden_act` beside `hidden_activation`; only the latter is used.
    let _legacy_act: Option<String> = cfg.opt("hidden_act")?;
    let mut spec = resolve_common(cfg, defaults)?;
    spec.norm = NormKind::RmsUnitOffset;
    spec.sandwich = true;
    spec.embed_scale = Some((spec.hidden_size as f64).sqrt());
    let attention_bias = cfg.opt::<bool>("attention_bias")?.unwrap_or(false);
    spec.qkv_bias = attention_bias;
    spec.o_bias = attention_bias;
    let scalar = cfg.opt::<f64>("query_pre_attn_scalar")?.unwrap_or(256.0);
    if !(scalar > 0.0) {
        return Err(cfg.unsupported(format!("query_pre_attn_scalar {scalar}")));
    }
    spec.attention.scaling = scalar.powf(-0.5);
    let cap = |cfg: &mut HfConfig, key: &str, default: Option<f64>| -> Result<Option<f64>, TrainError> {
        // An explicit null switches soft-capping off; absence means the family default.
        let explicit = cfg.has(key);
        let v = cfg.opt::<f64>(key)?;
        Ok(if explicit { v } else { default })
    };
    spec.attention.softcap = cap(cfg, "attn_logit_softcapping", softcap_defaults.0)?;
    spec.final_softcap = cap(cfg, "final_logit_softcapping", softcap_defaults.1)?;
    cfg.only("use_bidirectional_attention", false)?;
    Ok(spec)
}

/// Resolves a Gemma 2 `config.json`.
pub fn resolve(cfg: &mut HfConfig) -> Result<DecoderSpec, TrainError> {
    let mut spec = resolve_gemma(cfg, 8192, (Some(50.0), Some(30.0)))?;
    let window = Some(cfg.opt::<i64>("sliding_window")?.unwrap_or(4096));
    apply_layer_types(cfg, &mut spec, window, |i| (i + 1) % 2 != 0, |_| 0)?;
    single_rope(cfg, &mut spec, 10000.0)?;
    Ok(spec)
}
