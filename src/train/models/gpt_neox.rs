//! GPT-NeoX (Black et al., arXiv 2204.06745) and Pythia (Biderman et al., arXiv 2304.01373) as
//! transformers' `GPTNeoXForCausalLM`: LayerNorm, a fused per-head `query_key_value`
//! projection, partial rotary embeddings (`rotary_pct`), GELU MLP, and the parallel residual
//! (`x + attn(ln1(x)) + mlp(ln2(x))`) or the sequential one.

use super::attention::{causal_mask, Attention, AttentionSpec, Qkv};
use super::hf_config::HfConfig;
use super::layers::{Linear, Norm, NormKind};
use super::loader::Loader;
use super::mlp::{Act, Mlp};
use super::rope::{self, Rope};
use crate::train::tape::Tape;
use crate::train::TrainError;
use tch::Tensor;

/// PEFT's default LoRA targets for GPT-NeoX.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["query_key_value"];

/// Every linear module of a layer, by its HF name.
pub const LINEAR_MODULES: &[&str] = &["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];

/// Resolved GPT-NeoX configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Layers.
    pub num_layers: i64,
    /// Attention shape.
    pub attention: AttentionSpec,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// MLP activation.
    pub act: Act,
    /// Biases on the attention projections.
    pub attention_bias: bool,
    /// Parallel residual.
    pub parallel_residual: bool,
    /// The output head shares `embed_in`.
    pub tie_word_embeddings: bool,
    /// Rotary embedding (partial).
    pub rope: Rope,
    /// `max_position_embeddings`.
    pub max_positions: i64,
}

/// Resolves a GPT-NeoX `config.json`.
pub fn resolve(cfg: &mut HfConfig) -> Result<Config, TrainError> {
    let vocab_size = cfg.positive("vocab_size")?;
    let hidden_size = cfg.positive("hidden_size")?;
    let num_heads = cfg.positive("num_attention_heads")?;
    if hidden_size % num_heads != 0 {
        return Err(cfg.unsupported(format!("hidden_size {hidden_size} not divisible by num_attention_heads {num_heads}")));
    }
    let head_dim = hidden_size / num_heads;
    let act_name = cfg.opt::<String>("hidden_act")?.unwrap_or_else(|| "gelu".into());
    let act = Act::from_hf(&act_name).ok_or_else(|| cfg.unsupported(format!("hidden_act `{act_name}` is not implemented")))?;
    let max_positions = cfg.opt::<i64>("max_position_embeddings")?.unwrap_or(2048);
    let mut params = rope::parameters(cfg)?;
    if let Some(base) = cfg.opt::<f64>("rotary_emb_base")? {
        params.entry("rope_theta").or_insert(base.into());
    }
    let pct = cfg.opt::<f64>("rotary_pct")?;
    params.entry("partial_rotary_factor").or_insert(pct.unwrap_or(0.25).into());
    let rope = Rope::from_parameters(cfg, &params, head_dim, max_positions, 10000.0)?;
    let config = Config {
        vocab_size,
        hidden_size,
        intermediate_size: cfg.positive("intermediate_size")?,
        num_layers: cfg.positive("num_hidden_layers")?,
        attention: AttentionSpec { num_heads, num_kv_heads: num_heads, head_dim, scaling: (head_dim as f64).powf(-0.5), softcap: None },
        eps: cfg.opt::<f64>("layer_norm_eps")?.unwrap_or(1e-5),
        act,
        attention_bias: cfg.opt::<bool>("attention_bias")?.unwrap_or(true),
        parallel_residual: cfg.opt::<bool>("use_parallel_residual")?.unwrap_or(true),
        tie_word_embeddings: cfg.opt::<bool>("tie_word_embeddings")?.unwrap_or(false),
        rope,
        max_positions,
    };
    Ok(config)
}

struct Layer {
    input_layernorm: Norm,
    post_attention_layernorm: Norm,
    attention: Attention,
    mlp: Mlp,
}

/// A GPT-NeoX LM with its trainable parts marked.
pub struct GptNeox {
    /// Resolved configuration.
    pub config: Config,
    embed_in: Tensor,
    layers: Vec<Layer>,
    final_layer_norm: Norm,
    /// The output head (`lm_head` or `embed_out`), absent when tied.
    embed_out: Option<Linear>,
}

impl GptNeox {
    /// Builds the model from checkpoint tensors named as transformers names them.
    pub fn load(ld: &mut Loader, config: Config) -> Result<Self, TrainError> {
        let c = &config;
        let d = c.hidden_size;
        let mut layers = Vec::new();
        for i in 0..c.num_layers {
            let p = format!("gpt_neox.layers.{i}");
            layers.push(Layer {
                input_layernorm: ld.norm(&format!("{p}.input_layernorm"), d, NormKind::LayerNorm, c.eps)?,
                post_attention_layernorm: ld.norm(&format!("{p}.post_attention_layernorm"), d, NormKind::LayerNorm, c.eps)?,
                attention: Attention {
                    qkv: Qkv::PerHead(ld.linear(&format!("{p}.attention.query_key_value"), d, 3 * d, c.attention_bias)?),
                    o: ld.linear(&format!("{p}.attention.dense"), d, d, c.attention_bias)?,
                    q_norm: None,
                    k_norm: None,
                    spec: c.attention.clone(),
                },
                mlp: Mlp::Plain {
                    fc: ld.linear(&format!("{p}.mlp.dense_h_to_4h"), d, c.intermediate_size, true)?,
                    proj: ld.linear(&format!("{p}.mlp.dense_4h_to_h"), c.intermediate_size, d, true)?,
                    act: c.act,
                },
            });
        }
        let embed_in = ld.frozen("gpt_neox.embed_in.weight", &[c.vocab_size, d])?;
        let final_layer_norm = ld.norm("gpt_neox.final_layer_norm", d, NormKind::LayerNorm, c.eps)?;
        // transformers 5 names the head `lm_head`; Pythia checkpoints saved before call it
        // `embed_out`. It keeps the name it was loaded under when saved.
        let head = if ld.has("embed_out.weight") { "embed_out" } else { "lm_head" };
        let embed_out = if c.tie_word_embeddings {
            ld.discard_tied(&format!("{head}.weight"), &embed_in)?;
            None
        } else {
            Some(ld.linear(head, d, c.vocab_size, false)?)
        };
        Ok(GptNeox { config, embed_in, layers, final_layer_norm, embed_out })
    }

    /// Logits `[B, T, V]` for token ids `[B, T]` (right-padded; causal attention).
    // `h = h + x`, never `h += x`: in-place adds would corrupt tensors autograd saved.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, ids: &Tensor, mut tape: Option<&mut Tape>) -> Tensor {
        let (_, t) = ids.size2().expect("ids are [B, T]");
        let device = ids.device();
        let tables = self.config.rope.tables(t, device);
        let mask = causal_mask(t, None, device);
        let mut h = Tensor::embedding(&self.embed_in, ids, -1, false, false);
        for l in &self.layers {
            let a = l.attention.forward(&l.input_layernorm.forward(&h, &mut tape), Some(&tables), &mask, &mut tape);
            if self.config.parallel_residual {
                let m = l.mlp.forward(&l.post_attention_layernorm.forward(&h, &mut tape), &mut tape);
                h = m + a + h;
            } else {
                let a = a + h;
                let m = l.mlp.forward(&l.post_attention_layernorm.forward(&a, &mut tape), &mut tape);
                h = m + a;
            }
        }
        let h = self.final_layer_norm.forward(&h, &mut tape);
        match &self.embed_out {
            Some(head) => head.forward(&h, &mut tape),
            None => h.matmul(&self.embed_in.tr()),
        }
    }
}
