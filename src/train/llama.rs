//! Llama (Touvron et al., arXiv 2302.13971; GQA: Ainslie et al., arXiv 2305.13245) as HF
//! transformers' `models/llama/modeling_llama.py` (`LlamaForCausalLM`): RMSNorm, rotary position
//! embeddings with `rotate_half`, grouped-query attention (`repeat_kv`), SwiGLU MLP, no biases,
//! `nn.Linear` `[out, in]` weights, optional tied LM head. Tensor names are HF's, written out.

use super::finetune::{FineTune, LinearRole};
use super::gpt2::{causal_mask, push_linear, push_norm};
use super::layers::{Linear, LoraInit, Norm};
use super::tape::Tape;
use super::weights::Weights;
use super::TrainError;
use serde::Deserialize;
use tch::{Kind, Tensor};

/// HF `config.json` of a Llama model, as it stands.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5 keeps `rope_theta` and `rope_type` here.
    rope_parameters: Option<RopeParameters>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
}

/// `rope_parameters` of transformers >= 5.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

/// Resolved Llama configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Number of decoder layers.
    pub num_layers: i64,
    /// Query heads.
    pub num_heads: i64,
    /// Key/value heads (grouped-query attention).
    pub num_kv_heads: i64,
    /// Per-head width.
    pub head_dim: i64,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// LM head shares `model.embed_tokens.weight`.
    pub tie_word_embeddings: bool,
}

impl HfConfig {
    /// Resolves defaults and refuses what this implementation does not compute.
    pub fn into_config(self) -> Result<Config, TrainError> {
        let unsupported = |what: String| TrainError::UnsupportedModel { reason: what };
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported("Llama rope_scaling".into()));
        }
        let rope_type = self.rope_parameters.as_ref().and_then(|p| p.rope_type.as_deref()).unwrap_or("default");
        if rope_type != "default" {
            return Err(unsupported(format!("Llama rope_type `{rope_type}` (only default)")));
        }
        let rope_theta = self.rope_parameters.as_ref().and_then(|p| p.rope_theta).or(self.rope_theta).unwrap_or(10000.0);
        if self.attention_bias == Some(true) || self.mlp_bias == Some(true) {
            return Err(unsupported("Llama with attention_bias / mlp_bias".into()));
        }
        let act = self.hidden_act.as_deref().unwrap_or("silu");
        if act != "silu" {
            return Err(unsupported(format!("Llama hidden_act `{act}` (only silu)")));
        }
        let kv = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        if kv <= 0 || self.num_attention_heads % kv != 0 {
            return Err(unsupported(format!("num_attention_heads {} not a multiple of num_key_value_heads {kv}", self.num_attention_heads)));
        }
        Ok(Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: kv,
            head_dim: self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads),
            eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
        })
    }
}

/// PEFT's default LoRA targets for Llama.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// Every linear module of a decoder layer, by its HF name.
pub const LINEAR_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

struct Layer {
    input_layernorm: Norm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: Norm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// A Llama causal LM with its trainable parts marked.
pub struct Llama {
    /// Resolved configuration.
    pub config: Config,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Option<Linear>,
}

fn linear(w: &mut Weights, prefix: &str, d_in: i64, d_out: i64, ft: &FineTune, lora: &mut LoraInit) -> Result<Linear, TrainError> {
    let module = prefix.rsplit('.').next().unwrap_or(prefix);
    let role = ft.linear_role(module, DEFAULT_LORA_TARGETS);
    Ok(Linear {
        weight: w.take(&format!("{prefix}.weight"), &[d_out, d_in], role == LinearRole::Trainable)?,
        bias: None,
        in_out_layout: false,
        lora: (role == LinearRole::Adapted).then(|| lora.make(w, prefix, d_in, d_out)).transpose()?,
    })
}

fn rms(w: &mut Weights, prefix: &str, d: i64, eps: f64, ft: &FineTune) -> Result<Norm, TrainError> {
    Ok(Norm { gamma: w.take(&format!("{prefix}.weight"), &[d], ft.norms_trainable())?, beta: None, eps, rms: true })
}

impl Llama {
    /// Builds the model from checkpoint tensors named as HF names them.
    pub fn load(w: &mut Weights, config: Config, ft: &FineTune, device: tch::Device) -> Result<Self, TrainError> {
        let c = &config;
        let mut lora = LoraInit::new(ft, device);
        let (d, q_out, kv_out) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let layers = (0..c.num_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Layer {
                    input_layernorm: rms(w, &format!("{p}.input_layernorm"), d, c.eps, ft)?,
                    q_proj: linear(w, &format!("{p}.self_attn.q_proj"), d, q_out, ft, &mut lora)?,
                    k_proj: linear(w, &format!("{p}.self_attn.k_proj"), d, kv_out, ft, &mut lora)?,
                    v_proj: linear(w, &format!("{p}.self_attn.v_proj"), d, kv_out, ft, &mut lora)?,
                    o_proj: linear(w, &format!("{p}.self_attn.o_proj"), q_out, d, ft, &mut lora)?,
                    post_attention_layernorm: rms(w, &format!("{p}.post_attention_layernorm"), d, c.eps, ft)?,
                    gate_proj: linear(w, &format!("{p}.mlp.gate_proj"), d, c.intermediate_size, ft, &mut lora)?,
                    up_proj: linear(w, &format!("{p}.mlp.up_proj"), d, c.intermediate_size, ft, &mut lora)?,
                    down_proj: linear(w, &format!("{p}.mlp.down_proj"), c.intermediate_size, d, ft, &mut lora)?,
                })
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let embed_tokens = w.take("model.embed_tokens.weight", &[c.vocab_size, d], false)?;
        let lm_head = if c.tie_word_embeddings && !w.contains("lm_head.weight") {
            None
        } else {
            Some(linear(w, "lm_head", d, c.vocab_size, ft, &mut lora)?)
        };
        Ok(Llama { norm: rms(w, "model.norm", d, c.eps, ft)?, embed_tokens, layers, lm_head, config })
    }

    /// `(cos, sin)` `[T, head_dim]`: HF's `inv_freq = 1 / theta^(2i/dim)`, `emb = cat(freqs, freqs)`.
    fn rope(&self, t: i64, device: tch::Device) -> (Tensor, Tensor) {
        let hd = self.config.head_dim;
        let inv_freq = Tensor::arange_start_step(0, hd, 2, (Kind::Float, device))
            .divide_scalar(hd as f64)
            .multiply_scalar(self.config.rope_theta.ln())
            .exp()
            .reciprocal();
        let freqs = Tensor::arange(t, (Kind::Float, device)).outer(&inv_freq);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos(), emb.sin())
    }

    /// Logits `[B, T, V]` for token ids `[B, T]` (right-padded; causal attention).
    // `h = h + x`, never `h += x`: in-place adds would corrupt tensors autograd saved.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, ids: &Tensor, mut tape: Option<&mut Tape>) -> Tensor {
        let (b, t) = ids.size2().expect("ids are [B, T]");
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let mask = causal_mask(t, ids.device());
        let (cos, sin) = self.rope(t, ids.device());
        let rotate_half = |x: &Tensor| {
            let halves = x.split(hd / 2, -1);
            Tensor::cat(&[&halves[1].neg(), &halves[0]], -1)
        };
        let apply_rope = |x: &Tensor| x * &cos + rotate_half(x) * &sin;
        let mut h = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        for layer in &self.layers {
            let r = layer.input_layernorm.forward(&h, &mut tape);
            let q = layer.q_proj.forward(&r, &mut tape).reshape([b, t, nh, hd]).transpose(1, 2);
            let k = layer.k_proj.forward(&r, &mut tape).reshape([b, t, nkv, hd]).transpose(1, 2);
            let v = layer.v_proj.forward(&r, &mut tape).reshape([b, t, nkv, hd]).transpose(1, 2);
            let (q, k) = (apply_rope(&q), apply_rope(&k));
            // repeat_kv: each key/value head serves nh / nkv consecutive query heads.
            let rep = nh / nkv;
            let repeat = |x: &Tensor| x.unsqueeze(2).expand([b, nkv, rep, t, hd], false).reshape([b, nh, t, hd]);
            let (k, v) = (repeat(&k), repeat(&v));
            let scores = q.matmul(&k.transpose(-2, -1)) / (hd as f64).sqrt() + &mask;
            let attn = scores.softmax(-1, Kind::Float).matmul(&v).transpose(1, 2).reshape([b, t, nh * hd]);
            h = h + layer.o_proj.forward(&attn, &mut tape);
            let r = layer.post_attention_layernorm.forward(&h, &mut tape);
            let gated = layer.gate_proj.forward(&r, &mut tape).silu() * layer.up_proj.forward(&r, &mut tape);
            h = h + layer.down_proj.forward(&gated, &mut tape);
        }
        let h = self.norm.forward(&h, &mut tape);
        match &self.lm_head {
            Some(head) => head.forward(&h, &mut tape),
            None => h.matmul(&self.embed_tokens.tr()),
        }
    }

    /// Every tensor under its HF name (LoRA adapters under PEFT's suffixes).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.shallow_clone())];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            push_norm(&mut out, &format!("{p}.input_layernorm"), &l.input_layernorm);
            push_linear(&mut out, &format!("{p}.self_attn.q_proj"), &l.q_proj);
            push_linear(&mut out, &format!("{p}.self_attn.k_proj"), &l.k_proj);
            push_linear(&mut out, &format!("{p}.self_attn.v_proj"), &l.v_proj);
            push_linear(&mut out, &format!("{p}.self_attn.o_proj"), &l.o_proj);
            push_norm(&mut out, &format!("{p}.post_attention_layernorm"), &l.post_attention_layernorm);
            push_linear(&mut out, &format!("{p}.mlp.gate_proj"), &l.gate_proj);
            push_linear(&mut out, &format!("{p}.mlp.up_proj"), &l.up_proj);
            push_linear(&mut out, &format!("{p}.mlp.down_proj"), &l.down_proj);
        }
        push_norm(&mut out, "model.norm", &self.norm);
        if let Some(head) = &self.lm_head {
            push_linear(&mut out, "lm_head", head);
        }
        out
    }
}
