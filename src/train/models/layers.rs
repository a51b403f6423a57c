//! The trainable building blocks shared by the models: linear layers in both HF layouts with an
//! optional LoRA branch, LayerNorm and the RMSNorm variants. Each records itself on the DP tape when it holds
//! trainable parameters (frozen ones record nothing and get no gradient work).

use crate::train::finetune::FineTune;
use crate::train::tape::{Record, Tape};
use crate::train::weights::Weights;
use crate::train::TrainError;
use tch::{Kind, Tensor};

/// A LoRA adapter (Hu et al., arXiv 2106.09685): `y += (alpha / r) * (x A^T) B^T`, PEFT names
/// `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`.
pub struct Lora {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    /// `alpha / r`.
    pub scale: f64,
}

/// A linear map; `in_out_layout` is HF's GPT-2 `Conv1D` (`weight` `[in, out]`), otherwise
/// `nn.Linear` (`weight` `[out, in]`).
pub struct Linear {
    /// The weight, in its checkpoint layout.
    pub weight: Tensor,
    /// Optional bias `[out]`.
    pub bias: Option<Tensor>,
    /// True for the Conv1D layout.
    pub in_out_layout: bool,
    /// Optional LoRA branch.
    pub lora: Option<Lora>,
}

impl Linear {
    /// `x [B, T, in] -> [B, T, out]`, recording trainable parts on `tape`.
    /// Trainable (f32) parameters are cast to the activations' dtype where used (bf16 training).
    pub fn forward(&self, x: &Tensor, tape: &mut Option<&mut Tape>) -> Tensor {
        let kind = x.kind();
        let w = self.weight.to_kind(kind);
        let base = if self.in_out_layout { x.matmul(&w) } else { x.matmul(&w.tr()) };
        let base = match &self.bias {
            Some(b) => base + b.to_kind(kind),
            None => base,
        };
        if let Some(t) = tape.as_deref_mut() {
            if self.weight.requires_grad() {
                t.push(Record::Linear {
                    input: x.shallow_clone(),
                    output: base.shallow_clone(),
                    weight: self.weight.shallow_clone(),
                    bias: self.bias.as_ref().map(Tensor::shallow_clone),
                    in_out_layout: self.in_out_layout,
                });
            }
        }
        match &self.lora {
            None => base,
            Some(l) => {
                let hidden = x.matmul(&l.a.to_kind(kind).tr());
                let z = hidden.matmul(&l.b.to_kind(kind).tr());
                if let Some(t) = tape.as_deref_mut() {
                    t.push(Record::Lora {
                        input: x.shallow_clone(),
                        hidden: hidden.shallow_clone(),
                        output: z.shallow_clone(),
                        a: l.a.shallow_clone(),
                        b: l.b.shallow_clone(),
                    });
                }
                base + z * l.scale
            }
        }
    }
}

/// Which normalisation a [`Norm`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm: `(x - mean) / sqrt(var + eps) * gamma + beta` (GPT-2, GPT-NeoX).
    LayerNorm,
    /// RMSNorm: `x * rsqrt(mean(x^2) + eps) * gamma` (Llama and most decoders).
    Rms,
    /// Gemma's RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + gamma)`.
    RmsUnitOffset,
}

/// A normalisation layer over the last dimension.
pub struct Norm {
    /// Scale `[d]`.
    pub gamma: Tensor,
    /// Shift `[d]` (LayerNorm only).
    pub beta: Option<Tensor>,
    /// Epsilon inside the square root.
    pub eps: f64,
    /// The formula.
    pub kind: NormKind,
}

impl Norm {
    /// Normalises the last dimension, recording `(xhat, y)` when trainable. Inputs of any rank
    /// (`[B, T, d]`, or per head `[B, T, H, d]`) are recorded as `[B, T', d]`.
    pub fn forward(&self, x: &Tensor, tape: &mut Option<&mut Tape>) -> Tensor {
        let d = *x.size().last().expect("norm input has a last dimension");
        let kind = x.kind();
        // Normalised in f32 (as transformers does), returned in the input's dtype.
        let xf = x.to_kind(Kind::Float);
        let xhat = match self.kind {
            NormKind::LayerNorm => xf.layer_norm([d], None::<Tensor>, None::<Tensor>, self.eps, false),
            NormKind::Rms | NormKind::RmsUnitOffset => &xf * (xf.square().mean_dim(&[-1i64][..], true, Kind::Float) + self.eps).rsqrt(),
        }
        .to_kind(kind);
        let scale = match self.kind {
            NormKind::RmsUnitOffset => self.gamma.to_kind(kind) + 1.0,
            _ => self.gamma.to_kind(kind),
        };
        let y = match &self.beta {
            Some(b) => &xhat * &scale + b.to_kind(kind),
            None => &xhat * &scale,
        };
        if let Some(t) = tape.as_deref_mut() {
            if self.gamma.requires_grad() {
                // dy/dgamma = xhat for every kind (the unit offset is a constant).
                let rows = x.size()[0];
                t.push(Record::Norm {
                    normalized: xhat.detach().reshape([rows, -1, d]),
                    output: y.shallow_clone(),
                    gamma: self.gamma.shallow_clone(),
                    beta: self.beta.as_ref().map(Tensor::shallow_clone),
                });
            }
        }
        y
    }
}

/// Creates LoRA adapters: loaded from the weights when present (resume, audits), otherwise
/// PEFT's init (A ~ kaiming-uniform(a = sqrt 5) = U(-1/sqrt(in), 1/sqrt(in)), B = 0) from torch's
/// generator, which the caller seeds. Rank and scale per module follow the fine-tune mode.
pub struct LoraInit {
    /// Device of new tensors.
    pub device: tch::Device,
}

impl LoraInit {
    pub(crate) fn make(&mut self, ft: &FineTune, w: &mut Weights, prefix: &str, d_in: i64, d_out: i64) -> Result<Lora, TrainError> {
        let (r, scale) = ft.lora_rank_scale(prefix).map_err(|reason| TrainError::BadSpec { field: "finetune", reason })?;
        let (an, bn) = (format!("{prefix}.lora_A.weight"), format!("{prefix}.lora_B.weight"));
        if w.contains(&an) {
            return Ok(Lora { a: w.take(&an, &[r, d_in], true)?, b: w.take(&bn, &[d_out, r], true)?, scale });
        }
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Tensor::empty([r, d_in], (Kind::Float, self.device)).uniform_(-bound, bound).set_requires_grad(true);
        let b = Tensor::zeros([d_out, r], (Kind::Float, self.device)).set_requires_grad(true);
        Ok(Lora { a, b, scale })
    }
}
