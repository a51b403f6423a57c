//! GPT-2 (Radford et al., 2019) as transformers' `GPT2LMHeadModel`: Conv1D weights in `[in, out]`
//! layout, `gelu_new`, pre-LayerNorm blocks, learned positions, the head tied to `transformer.wte`
//! or untied (`lm_head`). Checkpoints with the Hub's original key layout (`h.0...` without the
//! `transformer.` prefix) load too; they are saved under transformers' current names.

use super::attention::{causal_mask, Attention, AttentionSpec, Qkv};
use super::hf_config::HfConfig;
use super::layers::{Linear, Norm, NormKind};
use super::loader::Loader;
use super::mlp::{Act, Mlp};
use crate::train::tape::Tape;
use crate::train::weights::Weights;
use crate::train::TrainError;
use tch::{Kind, Tensor};

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
    /// MLP activation.
    pub act: Act,
    /// The head shares `transformer.wte`.
    pub tie_word_embeddings: bool,
}

/// Resolves a GPT-2 `config.json`.
pub fn resolve(cfg: &mut HfConfig) -> Result<Config, TrainError> {
    let n_embd = cfg.positive("n_embd")?;
    let n_head = cfg.positive("n_head")?;
    if n_embd % n_head != 0 {
        return Err(cfg.unsupported(format!("n_embd {n_embd} not divisible by n_head {n_head}")));
    }
    let act_name = cfg.opt::<String>("activation_function")?.unwrap_or_else(|| "gelu_new".into());
    let act = Act::from_hf(&act_name).ok_or_else(|| cfg.unsupported(format!("activation_function `{act_name}` is not implemented")))?;
    cfg.only("scale_attn_weights", true)?;
    cfg.only("scale_attn_by_inverse_layer_idx", false)?;
    cfg.only("reorder_and_upcast_attn", false)?;
    Ok(Config {
        vocab_size: cfg.positive("vocab_size")?,
        n_positions: cfg.positive("n_positions")?,
        n_layer: cfg.positive("n_layer")?,
        n_inner: cfg.opt::<i64>("n_inner")?.unwrap_or(4 * n_embd),
        eps: cfg.opt::<f64>("layer_norm_epsilon")?.unwrap_or(1e-5),
        tie_word_embeddings: cfg.opt::<bool>("tie_word_embeddings")?.unwrap_or(true),
        n_embd,
        n_head,
        act,
    })
}

/// PEFT's default LoRA targets for GPT-2.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["c_attn"];

/// Every linear (Conv1D) module of a block, by its HF name.
pub const LINEAR_MODULES: &[&str] = &["c_attn", "c_proj", "c_fc"];

struct Block {
    ln_1: Norm,
    attn: Attention,
    ln_2: Norm,
    mlp: Mlp,
}

/// A GPT-2 LM with its trainable parts marked.
pub struct Gpt2 {
    /// Resolved configuration.
    pub config: Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
    lm_head: Option<Linear>,
}

/// Renames the Hub's original layout (`wte.weight`, `h.0...`) to transformers' current one.
pub fn normalise_names(w: &mut Weights) {
    if !w.contains("transformer.wte.weight") && w.contains("wte.weight") {
        w.add_prefix_except("transformer.", "lm_head.");
    }
}

impl Gpt2 {
    /// Builds the model from checkpoint tensors named as transformers names them.
    pub fn load(ld: &mut Loader, config: Config) -> Result<Self, TrainError> {
        let c = &config;
        let d = c.n_embd;
        let mut blocks = Vec::new();
        for i in 0..c.n_layer {
            let p = format!("transformer.h.{i}");
            blocks.push(Block {
                ln_1: ld.norm(&format!("{p}.ln_1"), d, NormKind::LayerNorm, c.eps)?,
                attn: Attention {
                    qkv: Qkv::Concatenated(ld.conv1d(&format!("{p}.attn.c_attn"), d, 3 * d)?),
                    o: ld.conv1d(&format!("{p}.attn.c_proj"), d, d)?,
                    q_norm: None,
                    k_norm: None,
                    spec: AttentionSpec { num_heads: c.n_head, num_kv_heads: c.n_head, head_dim: d / c.n_head, scaling: 1.0 / ((d / c.n_head) as f64).sqrt(), softcap: None },
                },
                ln_2: ld.norm(&format!("{p}.ln_2"), d, NormKind::LayerNorm, c.eps)?,
                mlp: Mlp::Plain { fc: ld.conv1d(&format!("{p}.mlp.c_fc"), d, c.n_inner)?, proj: ld.conv1d(&format!("{p}.mlp.c_proj"), c.n_inner, d)?, act: c.act },
            });
        }
        let wte = ld.frozen("transformer.wte.weight", &[c.vocab_size, d])?;
        let wpe = ld.frozen("transformer.wpe.weight", &[c.n_positions, d])?;
        let ln_f = ld.norm("transformer.ln_f", d, NormKind::LayerNorm, c.eps)?;
        let lm_head = if c.tie_word_embeddings {
            ld.discard_tied("lm_head.weight", &wte)?;
            None
        } else {
            Some(ld.linear("lm_head", d, c.vocab_size, false)?)
        };
        Ok(Gpt2 { config, wte, wpe, blocks, ln_f, lm_head })
    }

    /// Logits `[B, T, V]` for token ids `[B, T]` (right-padded; causal attention).
    // `h = h + x`, never `h += x`: in-place adds would corrupt tensors autograd saved.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, ids: &Tensor, mut tape: Option<&mut Tape>) -> Tensor {
        let (_, t) = ids.size2().expect("ids are [B, T]");
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()));
        let mut h = Tensor::embedding(&self.wte, ids, -1, false, false) + Tensor::embedding(&self.wpe, &positions, -1, false, false);
        let mask = causal_mask(t, None, ids.device());
        for blk in &self.blocks {
            let a = blk.attn.forward(&blk.ln_1.forward(&h, &mut tape), None, &mask, &mut tape);
            h = h + a;
            let m = blk.mlp.forward(&blk.ln_2.forward(&h, &mut tape), &mut tape);
            h = h + m;
        }
        let h = self.ln_f.forward(&h, &mut tape);
        match &self.lm_head {
            Some(head) => head.forward(&h, &mut tape),
            None => h.matmul(&self.wte.tr()),
        }
    }
}
