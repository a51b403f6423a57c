//! Causal self-attention shared by every family: separate or fused q/k/v projections, grouped
//! query attention (Ainslie et al., arXiv 2305.13245) with an explicit head_dim, optional per-head
//! q/k RMSNorm, rotary embeddings, a sliding window, and logit soft-capping (Gemma 2), computed
//! as transformers' eager attention does (float32 softmax).

use super::layers::{Linear, Norm};
use super::rope;
use crate::train::tape::Tape;
use tch::{Kind, Tensor};

/// How the q, k and v projections are stored.
pub enum Qkv {
    /// `q_proj`, `k_proj`, `v_proj`.
    Separate {
        /// Query projection.
        q: Linear,
        /// Key projection.
        k: Linear,
        /// Value projection.
        v: Linear,
    },
    /// One projection whose output is `[q | k | v]` (GPT-2's `c_attn`, Phi-3's `qkv_proj`).
    Concatenated(Linear),
    /// One projection whose output is `[head][q | k | v]` (GPT-NeoX's `query_key_value`).
    PerHead(Linear),
}

/// Attention shape and numerics.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionSpec {
    /// Query heads.
    pub num_heads: i64,
    /// Key/value heads.
    pub num_kv_heads: i64,
    /// Width of each head.
    pub head_dim: i64,
    /// Multiplier of `q k^T` (usually `head_dim^-0.5`).
    pub scaling: f64,
    /// `cap * tanh(scores / cap)` before the mask (Gemma 2).
    pub softcap: Option<f64>,
}

/// A self-attention block.
pub struct Attention {
    /// Projections.
    pub qkv: Qkv,
    /// Output projection.
    pub o: Linear,
    /// Per-head RMSNorm of queries (Qwen3, Gemma 3).
    pub q_norm: Option<Norm>,
    /// Per-head RMSNorm of keys.
    pub k_norm: Option<Norm>,
    /// Shape and numerics.
    pub spec: AttentionSpec,
}

/// Rotary tables `(cos, sin)` `[T, rotary_dim]` for one forward pass.
pub type RopeTables = (Tensor, Tensor);

impl Attention {
    /// `x [B, T, d] -> [B, T, d]` under the additive `mask [T, T]`.
    pub fn forward(&self, x: &Tensor, rope_tables: Option<&RopeTables>, mask: &Tensor, tape: &mut Option<&mut Tape>) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input is [B, T, d]");
        let AttentionSpec { num_heads: nh, num_kv_heads: nkv, head_dim: hd, .. } = self.spec;
        let (q, k, v) = match &self.qkv {
            Qkv::Separate { q, k, v } => (q.forward(x, tape), k.forward(x, tape), v.forward(x, tape)),
            Qkv::Concatenated(l) => {
                let p = l.forward(x, tape).split_with_sizes([nh * hd, nkv * hd, nkv * hd], -1);
                (p[0].shallow_clone(), p[1].shallow_clone(), p[2].shallow_clone())
            }
            Qkv::PerHead(l) => {
                let p = l.forward(x, tape).reshape([b, t, nh, 3 * hd]).split(hd, -1);
                (p[0].reshape([b, t, nh * hd]), p[1].reshape([b, t, nh * hd]), p[2].reshape([b, t, nh * hd]))
            }
        };
        let heads = |y: Tensor, n: i64, norm: &Option<Norm>, tape: &mut Option<&mut Tape>| {
            let y = y.reshape([b, t, n, hd]);
            let y = match norm {
                Some(norm) => norm.forward(&y, tape),
                None => y,
            };
            y.transpose(1, 2)
        };
        let q = heads(q, nh, &self.q_norm, tape);
        let k = heads(k, nkv, &self.k_norm, tape);
        let v = v.reshape([b, t, nkv, hd]).transpose(1, 2);
        let (q, k) = match rope_tables {
            Some((cos, sin)) => {
                let (cos, sin) = (cos.to_kind(q.kind()), sin.to_kind(q.kind()));
                (rope::apply(&q, &cos, &sin), rope::apply(&k, &cos, &sin))
            }
            None => (q, k),
        };
        // repeat_kv: each key/value head serves nh / nkv consecutive query heads.
        let rep = nh / nkv;
        let repeat = |y: &Tensor| if rep == 1 { y.shallow_clone() } else { y.unsqueeze(2).expand([b, nkv, rep, t, hd], false).reshape([b, nh, t, hd]) };
        let (k, v) = (repeat(&k), repeat(&v));
        let mut scores = q.matmul(&k.transpose(-2, -1)) * self.spec.scaling;
        if let Some(cap) = self.spec.softcap {
            scores = (scores / cap).tanh() * cap;
        }
        // Softmax in f32, its result in the values' dtype (transformers' eager attention).
        let attn = (scores + mask).softmax(-1, Kind::Float).to_kind(v.kind()).matmul(&v).transpose(1, 2).reshape([b, t, nh * hd]);
        self.o.forward(&attn, tape)
    }
}

/// `[T, T]` additive causal mask: 0 where key `j` may be seen from query `i` (`j <= i`, and
/// `i - j < window` with a sliding window), a large negative elsewhere.
pub fn causal_mask(t: i64, window: Option<i64>, device: tch::Device) -> Tensor {
    let i = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(1);
    let j = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0);
    let mut hidden = j.gt_tensor(&i);
    if let Some(w) = window {
        hidden = hidden.logical_or(&j.le_tensor(&(&i - w)));
    }
    hidden.to_kind(Kind::Float) * f64::from(f32::MIN)
}
