//! The pre-norm decoder that Llama, Mistral, Qwen2, Qwen3, Gemma 2/3 and Phi-3 share, built from
//! the shared blocks (attention, rotary embeddings, norms, gated MLP). Each family's file resolves
//! its `config.json` into a [`DecoderSpec`]; the HF tensor names are written here, once, and used
//! both to load and to save.

use super::attention::{causal_mask, Attention, AttentionSpec, Qkv};
use super::layers::{Linear, Norm, NormKind};
use super::loader::Loader;
use super::mlp::{Act, Mlp};
use super::rope::Rope;
use crate::train::tape::Tape;
use crate::train::TrainError;
use tch::Tensor;

/// One layer's attention type.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerType {
    /// Sliding window (keys at most `window - 1` positions back), or full causal attention.
    pub window: Option<i64>,
    /// Index into [`DecoderSpec::ropes`].
    pub rope: usize,
}

/// How the projections are stored and named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projections {
    /// `q_proj`/`k_proj`/`v_proj` and `gate_proj`/`up_proj`.
    Separate,
    /// Phi-3: `qkv_proj` and `gate_up_proj`.
    Fused,
}

/// A decoder's resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Attention shape and numerics.
    pub attention: AttentionSpec,
    /// Norm formula (also of the per-head q/k norms).
    pub norm: NormKind,
    /// Norm epsilon.
    pub eps: f64,
    /// MLP activation.
    pub act: Act,
    /// Biases on q, k, v (Qwen2).
    pub qkv_bias: bool,
    /// Biases on the output projection.
    pub o_bias: bool,
    /// Biases in the MLP.
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Storage of the projections.
    pub projections: Projections,
    /// Gemma's sandwich norms: `post_attention_layernorm` on the attention output, and
    /// `pre_feedforward_layernorm` / `post_feedforward_layernorm` around the MLP.
    pub sandwich: bool,
    /// Embeddings multiplied by this (Gemma: sqrt(hidden_size)).
    pub embed_scale: Option<f64>,
    /// `cap * tanh(logits / cap)` on the output (Gemma 2).
    pub final_softcap: Option<f64>,
    /// LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Attention type of each layer.
    pub layers: Vec<LayerType>,
    /// The rotary embeddings layers refer to.
    pub ropes: Vec<Rope>,
    /// `max_position_embeddings`: the context the model was trained for.
    pub max_positions: i64,
}

struct Layer {
    input_layernorm: Norm,
    attn: Attention,
    post_attention_layernorm: Norm,
    /// Gemma's (pre, post) feed-forward norms.
    feedforward_norms: Option<(Norm, Norm)>,
    mlp: Mlp,
    kind: LayerType,
}

/// A loaded decoder with its trainable parts marked.
pub struct Decoder {
    /// Resolved configuration.
    pub spec: DecoderSpec,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Option<Linear>,
}

impl Decoder {
    /// Builds the model from checkpoint tensors named as transformers names them.
    pub fn load(ld: &mut Loader, spec: DecoderSpec) -> Result<Self, TrainError> {
        let s = &spec;
        let (d, a) = (s.hidden_size, &s.attention);
        let (q_out, kv_out) = (a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim);
        let mut layers = Vec::with_capacity(s.layers.len());
        for (i, kind) in s.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let input_layernorm = ld.norm(&format!("{p}.input_layernorm"), d, s.norm, s.eps)?;
            let qkv = match s.projections {
                Projections::Separate => Qkv::Separate {
                    q: ld.linear(&format!("{p}.self_attn.q_proj"), d, q_out, s.qkv_bias)?,
                    k: ld.linear(&format!("{p}.self_attn.k_proj"), d, kv_out, s.qkv_bias)?,
                    v: ld.linear(&format!("{p}.self_attn.v_proj"), d, kv_out, s.qkv_bias)?,
                },
                Projections::Fused => Qkv::Concatenated(ld.linear(&format!("{p}.self_attn.qkv_proj"), d, q_out + 2 * kv_out, s.qkv_bias)?),
            };
            let (q_norm, k_norm) = if s.qk_norm {
                (
                    Some(ld.norm(&format!("{p}.self_attn.q_norm"), a.head_dim, s.norm, s.eps)?),
                    Some(ld.norm(&format!("{p}.self_attn.k_norm"), a.head_dim, s.norm, s.eps)?),
                )
            } else {
                (None, None)
            };
            let o = ld.linear(&format!("{p}.self_attn.o_proj"), q_out, d, s.o_bias)?;
            let post_attention_layernorm = ld.norm(&format!("{p}.post_attention_layernorm"), d, s.norm, s.eps)?;
            let feedforward_norms = if s.sandwich {
                Some((
                    ld.norm(&format!("{p}.pre_feedforward_layernorm"), d, s.norm, s.eps)?,
                    ld.norm(&format!("{p}.post_feedforward_layernorm"), d, s.norm, s.eps)?,
                ))
            } else {
                None
            };
            let ff = s.intermediate_size;
            let mlp = match s.projections {
                Projections::Separate => Mlp::Gated {
                    gate: ld.linear(&format!("{p}.mlp.gate_proj"), d, ff, s.mlp_bias)?,
                    up: ld.linear(&format!("{p}.mlp.up_proj"), d, ff, s.mlp_bias)?,
                    down: ld.linear(&format!("{p}.mlp.down_proj"), ff, d, s.mlp_bias)?,
                    act: s.act,
                },
                Projections::Fused => Mlp::FusedGated {
                    gate_up: ld.linear(&format!("{p}.mlp.gate_up_proj"), d, 2 * ff, s.mlp_bias)?,
                    down: ld.linear(&format!("{p}.mlp.down_proj"), ff, d, s.mlp_bias)?,
                    act: s.act,
                },
            };
            layers.push(Layer {
                input_layernorm,
                attn: Attention { qkv, o, q_norm, k_norm, spec: a.clone() },
                post_attention_layernorm,
                feedforward_norms,
                mlp,
                kind: kind.clone(),
            });
        }
        let embed_tokens = ld.frozen("model.embed_tokens.weight", &[s.vocab_size, d])?;
        let norm = ld.norm("model.norm", d, s.norm, s.eps)?;
        let lm_head = if s.tie_word_embeddings {
            ld.discard_tied("lm_head.weight", &embed_tokens)?;
            None
        } else {
            Some(ld.linear("lm_head", d, s.vocab_size, false)?)
        };
        Ok(Decoder { spec, embed_tokens, layers, norm, lm_head })
    }

    /// Logits `[B, T, V]` for token ids `[B, T]` (right-padded; causal attention).
    // `h = h + x`, never `h += x`: in-place adds would corrupt tensors autograd saved.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, ids: &Tensor, mut tape: Option<&mut Tape>) -> Tensor {
        let (_, t) = ids.size2().expect("ids are [B, T]");
        let device = ids.device();
        let s = &self.spec;
        let tables: Vec<_> = s.ropes.iter().map(|r| r.tables(t, device)).collect();
        let mut masks: Vec<(Option<i64>, Tensor)> = Vec::new();
        for l in &self.layers {
            if !masks.iter().any(|(w, _)| *w == l.kind.window) {
                masks.push((l.kind.window, causal_mask(t, l.kind.window, device)));
            }
        }
        let mut h = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        if let Some(scale) = s.embed_scale {
            // transformers rounds the scale to the embedding's dtype first.
            h = &h * Tensor::from(scale).to_kind(h.kind()).to_device(device);
        }
        for l in &self.layers {
            let mask = &masks.iter().find(|(w, _)| *w == l.kind.window).expect("mask built above").1;
            let rope = Some(&tables[l.kind.rope]);
            let r = l.input_layernorm.forward(&h, &mut tape);
            let a = l.attn.forward(&r, rope, mask, &mut tape);
            match &l.feedforward_norms {
                Some((pre, post)) => {
                    h = h + l.post_attention_layernorm.forward(&a, &mut tape);
                    let m = l.mlp.forward(&pre.forward(&h, &mut tape), &mut tape);
                    h = h + post.forward(&m, &mut tape);
                }
                None => {
                    h = h + a;
                    let r = l.post_attention_layernorm.forward(&h, &mut tape);
                    h = h + l.mlp.forward(&r, &mut tape);
                }
            }
        }
        let h = self.norm.forward(&h, &mut tape);
        let logits = match &self.lm_head {
            Some(head) => head.forward(&h, &mut tape),
            None => h.matmul(&self.embed_tokens.tr()),
        };
        match s.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }
}

/// Family defaults for [`resolve_common`].
pub struct Defaults {
    /// `tie_word_embeddings` when absent.
    pub tie_word_embeddings: bool,
    /// Norm epsilon when absent.
    pub eps: f64,
    /// Config key of the activation (`hidden_act`, Gemma's `hidden_activation`).
    pub act_key: &'static str,
    /// Activation when absent.
    pub act: &'static str,
    /// `max_position_embeddings` when absent.
    pub max_positions: i64,
    /// `head_dim` when absent (`None`: hidden_size / num_attention_heads).
    pub head_dim: Option<i64>,
}

/// Takes the fields every Llama-style config has and resolves them with Llama's numerics
/// (RMSNorm, no biases, `head_dim^-0.5` scaling, one rotary embedding, full attention);
/// families then take and apply their own fields.
pub fn resolve_common(cfg: &mut HfConfig, d: Defaults) -> Result<DecoderSpec, TrainError> {
    let vocab_size = cfg.positive("vocab_size")?;
    let hidden_size = cfg.positive("hidden_size")?;
    let intermediate_size = cfg.positive("intermediate_size")?;
    let num_layers = cfg.positive("num_hidden_layers")?;
    let num_heads = cfg.positive("num_attention_heads")?;
    let num_kv_heads = cfg.opt::<i64>("num_key_value_heads")?.unwrap_or(num_heads);
    if num_kv_heads <= 0 || num_heads % num_kv_heads != 0 {
        return Err(cfg.unsupported(format!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}")));
    }
    let head_dim = match cfg.opt::<i64>("head_dim")? {
        Some(h) if h > 0 => h,
        Some(h) => return Err(cfg.unsupported(format!("head_dim {h}"))),
        None if d.head_dim.is_some() => d.head_dim.unwrap_or_default(),
        None if hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => return Err(cfg.unsupported(format!("hidden_size {hidden_size} not divisible by num_attention_heads {num_heads} and no head_dim"))),
    };
    let eps = cfg.opt::<f64>("rms_norm_eps")?.unwrap_or(d.eps);
    let act_name = cfg.opt::<String>(d.act_key)?.unwrap_or_else(|| d.act.to_string());
    let act = Act::from_hf(&act_name).ok_or_else(|| cfg.unsupported(format!("{} `{act_name}` is not implemented", d.act_key)))?;
    let max_positions = cfg.opt::<i64>("max_position_embeddings")?.unwrap_or(d.max_positions);
    let tie_word_embeddings = cfg.opt::<bool>("tie_word_embeddings")?.unwrap_or(d.tie_word_embeddings);
    Ok(DecoderSpec {
        vocab_size,
        hidden_size,
        intermediate_size,
        attention: AttentionSpec { num_heads, num_kv_heads, head_dim, scaling: (head_dim as f64).powf(-0.5), softcap: None },
        norm: NormKind::Rms,
        eps,
        act,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        projections: Projections::Separate,
        sandwich: false,
        embed_scale: None,
        final_softcap: None,
        tie_word_embeddings,
        layers: (0..num_layers).map(|_| LayerType { window: None, rope: 0 }).collect(),
        ropes: Vec::new(),
        max_positions,
    })
}

/// Resolves the single rotary embedding of a config (every layer uses it).
pub fn single_rope(cfg: &mut HfConfig, spec: &mut DecoderSpec, default_theta: f64) -> Result<(), TrainError> {
    let params = super::rope::parameters(cfg)?;
    spec.ropes = vec![Rope::from_parameters(cfg, &params, spec.attention.head_dim, spec.max_positions, default_theta)?];
    Ok(())
}

/// Applies `layer_types` (`full_attention` / `sliding_attention`, transformers >= 4.53), or
/// the given per-layer default, with `window` for sliding layers; each layer type may pick its
/// own rope through `rope_of`.
pub fn apply_layer_types(
    cfg: &mut HfConfig,
    spec: &mut DecoderSpec,
    window: Option<i64>,
    default_sliding: impl Fn(usize) -> bool,
    rope_of: impl Fn(bool) -> usize,
) -> Result<(), TrainError> {
    let n = spec.layers.len();
    let types: Vec<bool> = match cfg.opt::<Vec<String>>("layer_types")? {
        Some(list) => {
            if list.len() != n {
                return Err(cfg.unsupported(format!("layer_types lists {} layers, num_hidden_layers is {n}", list.len())));
            }
            list.iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(false),
                    "sliding_attention" => Ok(true),
                    other => Err(cfg.unsupported(format!("layer type `{other}` is not implemented"))),
                })
                .collect::<Result<_, _>>()?
        }
        None => (0..n).map(default_sliding).collect(),
    };
    for (layer, sliding) in spec.layers.iter_mut().zip(types) {
        if sliding && window.is_none() {
            return Err(cfg.unsupported("sliding_attention layers without a sliding_window"));
        }
        layer.window = if sliding { window } else { None };
        layer.rope = rope_of(sliding);
    }
    Ok(())
}

use super::hf_config::HfConfig;
