//! GPT-2 (Radford et al., 2019) as HF transformers' `models/gpt2/modeling_gpt2.py`
//! (`GPT2LMHeadModel`): Conv1D weights in `[in, out]` layout, `gelu_new`, pre-LayerNorm blocks,
//! learned positions, LM head tied to `transformer.wte`. Tensor names are HF's, written out.

use super::finetune::{FineTune, LinearRole};
use super::layers::{Linear, LoraInit, Norm};
use super::tape::Tape;
use super::weights::Weights;
use super::TrainError;
use serde::Deserialize;
use tch::{Kind, Tensor};

/// HF `config.json` of a GPT-2 model, as it stands.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    vocab_size: i64,
    n_positions: i64,
    n_embd: i64,
    n_layer: i64,
    n_head: i64,
    n_inner: Option<i64>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    tie_word_embeddings: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    reorder_and_upcast_attn: Option<bool>,
}

/// Resolved GPT-2 configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Maximum sequence length.
    pub n_positions: i64,
    /// Model width.
    pub n_embd: i64,
    /// Number of blocks.
    pub n_layer: i64,
    /// Attention heads.
    pub n_head: i64,
    /// MLP width.
    pub n_inner: i64,
    /// LayerNorm epsilon.
    pub eps: f64,
}

impl HfConfig {
    /// Resolves defaults and refuses what this implementation does not compute.
    pub fn into_config(self) -> Result<Config, TrainError> {
        let unsupported = |what: String| TrainError::UnsupportedModel { reason: what };
        let act = self.activation_function.as_deref().unwrap_or("gelu_new");
        if act != "gelu_new" {
            return Err(unsupported(format!("GPT-2 activation_function `{act}` (only gelu_new)")));
        }
        if self.tie_word_embeddings == Some(false) {
            return Err(unsupported("GPT-2 with an untied LM head".into()));
        }
        if self.scale_attn_by_inverse_layer_idx == Some(true) || self.reorder_and_upcast_attn == Some(true) {
            return Err(unsupported("GPT-2 attention variants (scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn)".into()));
        }
        if self.n_head <= 0 || self.n_embd % self.n_head != 0 {
            return Err(unsupported(format!("n_embd {} not divisible by n_head {}", self.n_embd, self.n_head)));
        }
        Ok(Config {
            vocab_size: self.vocab_size,
            n_positions: self.n_positions,
            n_embd: self.n_embd,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_inner: self.n_inner.unwrap_or(4 * self.n_embd),
            eps: self.layer_norm_epsilon.unwrap_or(1e-5),
        })
    }
}

/// PEFT's default LoRA targets for GPT-2.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["c_attn"];

/// Every linear (Conv1D) module of a block, by its HF name.
pub const LINEAR_MODULES: &[&str] = &["c_attn", "c_proj", "c_fc"];

struct Block {
    ln_1: Norm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: Norm,
    c_fc: Linear,
    mlp_proj: Linear,
}

/// A GPT-2 LM with its trainable parts marked.
pub struct Gpt2 {
    /// Resolved configuration.
    pub config: Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
}

fn norm(w: &mut Weights, prefix: &str, d: i64, eps: f64, ft: &FineTune) -> Result<Norm, TrainError> {
    let t = ft.norms_trainable();
    Ok(Norm { gamma: w.take(&format!("{prefix}.weight"), &[d], t)?, beta: Some(w.take(&format!("{prefix}.bias"), &[d], t)?), eps, rms: false })
}

/// Loads a Conv1D `[in, out]` layer, with a LoRA branch when adapted.
pub(crate) fn conv1d(w: &mut Weights, prefix: &str, d_in: i64, d_out: i64, ft: &FineTune, lora: &mut LoraInit) -> Result<Linear, TrainError> {
    let module = prefix.rsplit('.').next().unwrap_or(prefix);
    let role = ft.linear_role(module, DEFAULT_LORA_TARGETS);
    let trainable = role == LinearRole::Trainable;
    Ok(Linear {
        weight: w.take(&format!("{prefix}.weight"), &[d_in, d_out], trainable)?,
        bias: Some(w.take(&format!("{prefix}.bias"), &[d_out], trainable)?),
        in_out_layout: true,
        lora: (role == LinearRole::Adapted).then(|| lora.make(w, prefix, d_in, d_out)).transpose()?,
    })
}

impl Gpt2 {
    /// Builds the model from checkpoint tensors named as HF names them.
    pub fn load(w: &mut Weights, config: Config, ft: &FineTune, device: tch::Device) -> Result<Self, TrainError> {
        let c = &config;
        let mut lora = LoraInit::new(ft, device);
        let blocks = (0..c.n_layer)
            .map(|i| {
                let p = format!("transformer.h.{i}");
                Ok(Block {
                    ln_1: norm(w, &format!("{p}.ln_1"), c.n_embd, c.eps, ft)?,
                    c_attn: conv1d(w, &format!("{p}.attn.c_attn"), c.n_embd, 3 * c.n_embd, ft, &mut lora)?,
                    attn_proj: conv1d(w, &format!("{p}.attn.c_proj"), c.n_embd, c.n_embd, ft, &mut lora)?,
                    ln_2: norm(w, &format!("{p}.ln_2"), c.n_embd, c.eps, ft)?,
                    c_fc: conv1d(w, &format!("{p}.mlp.c_fc"), c.n_embd, c.n_inner, ft, &mut lora)?,
                    mlp_proj: conv1d(w, &format!("{p}.mlp.c_proj"), c.n_inner, c.n_embd, ft, &mut lora)?,
                })
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(Gpt2 {
            wte: w.take("transformer.wte.weight", &[c.vocab_size, c.n_embd], false)?,
            wpe: w.take("transformer.wpe.weight", &[c.n_positions, c.n_embd], false)?,
            ln_f: norm(w, "transformer.ln_f", c.n_embd, c.eps, ft)?,
            blocks,
            config,
        })
    }

    /// Logits `[B, T, V]` for token ids `[B, T]` (right-padded; causal attention).
    // `h = h + x`, never `h += x`: in-place adds would corrupt tensors autograd saved.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, ids: &Tensor, mut tape: Option<&mut Tape>) -> Tensor {
        let (b, t) = ids.size2().expect("ids are [B, T]");
        let c = &self.config;
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()));
        let mut h = Tensor::embedding(&self.wte, ids, -1, false, false) + Tensor::embedding(&self.wpe, &positions, -1, false, false);
        let mask = causal_mask(t, ids.device());
        let hd = c.n_embd / c.n_head;
        for blk in &self.blocks {
            let a = blk.ln_1.forward(&h, &mut tape);
            let qkv = blk.c_attn.forward(&a, &mut tape);
            let parts = qkv.split(c.n_embd, 2);
            let heads = |x: &Tensor| x.reshape([b, t, c.n_head, hd]).transpose(1, 2);
            let (q, k, v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
            let scores = q.matmul(&k.transpose(-2, -1)) / (hd as f64).sqrt() + &mask;
            let attn = scores.softmax(-1, Kind::Float).matmul(&v).transpose(1, 2).reshape([b, t, c.n_embd]);
            h = h + blk.attn_proj.forward(&attn, &mut tape);
            let m = blk.ln_2.forward(&h, &mut tape);
            let m = blk.c_fc.forward(&m, &mut tape).gelu("tanh");
            h = h + blk.mlp_proj.forward(&m, &mut tape);
        }
        let h = self.ln_f.forward(&h, &mut tape);
        h.matmul(&self.wte.tr())
    }

    /// Every tensor under its HF name (LoRA adapters under PEFT's suffixes).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("transformer.wte.weight".to_string(), self.wte.shallow_clone()),
            ("transformer.wpe.weight".to_string(), self.wpe.shallow_clone()),
        ];
        for (i, blk) in self.blocks.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            push_norm(&mut out, &format!("{p}.ln_1"), &blk.ln_1);
            push_linear(&mut out, &format!("{p}.attn.c_attn"), &blk.c_attn);
            push_linear(&mut out, &format!("{p}.attn.c_proj"), &blk.attn_proj);
            push_norm(&mut out, &format!("{p}.ln_2"), &blk.ln_2);
            push_linear(&mut out, &format!("{p}.mlp.c_fc"), &blk.c_fc);
            push_linear(&mut out, &format!("{p}.mlp.c_proj"), &blk.mlp_proj);
        }
        push_norm(&mut out, "transformer.ln_f", &self.ln_f);
        out
    }
}

/// `[T, T]` additive causal mask: 0 on and below the diagonal, a large negative above.
pub(crate) fn causal_mask(t: i64, device: tch::Device) -> Tensor {
    Tensor::ones([t, t], (Kind::Float, device)).triu(1) * f64::from(f32::MIN)
}

pub(crate) fn push_norm(out: &mut Vec<(String, Tensor)>, prefix: &str, n: &Norm) {
    out.push((format!("{prefix}.weight"), n.gamma.shallow_clone()));
    if let Some(b) = &n.beta {
        out.push((format!("{prefix}.bias"), b.shallow_clone()));
    }
}

pub(crate) fn push_linear(out: &mut Vec<(String, Tensor)>, prefix: &str, l: &Linear) {
    out.push((format!("{prefix}.weight"), l.weight.shallow_clone()));
    if let Some(b) = &l.bias {
        out.push((format!("{prefix}.bias"), b.shallow_clone()));
    }
    if let Some(lora) = &l.lora {
        out.push((format!("{prefix}.lora_A.weight"), lora.a.shallow_clone()));
        out.push((format!("{prefix}.lora_B.weight"), lora.b.shallow_clone()));
    }
}
