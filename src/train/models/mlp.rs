//! Feed-forward blocks: the gated MLP of Llama-style decoders (separate or fused gate/up, Phi-3),
//! and the plain two-layer MLP of GPT-2 and GPT-NeoX, with the activations their configs name.

use super::layers::Linear;
use crate::train::tape::Tape;
use tch::Tensor;

/// An activation function, by the name transformers' `ACT2FN` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `silu` / `swish`.
    Silu,
    /// `gelu` (exact, erf).
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`-free tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Act {
    /// Parses a config's activation name; `None` for one ewtune does not implement.
    pub fn from_hf(name: &str) -> Option<Act> {
        match name {
            "silu" | "swish" => Some(Act::Silu),
            "gelu" => Some(Act::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Act::GeluTanh),
            "relu" => Some(Act::Relu),
            _ => None,
        }
    }

    /// Applies it.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Act::Silu => x.silu(),
            Act::Gelu => x.gelu("none"),
            Act::GeluTanh => x.gelu("tanh"),
            Act::Relu => x.relu(),
        }
    }
}

/// A feed-forward block.
pub enum Mlp {
    /// `down(act(gate(x)) * up(x))`.
    Gated {
        /// `gate_proj`.
        gate: Linear,
        /// `up_proj`.
        up: Linear,
        /// `down_proj`.
        down: Linear,
        /// Activation.
        act: Act,
    },
    /// Phi-3: `gate_up_proj` outputs `[gate | up]`.
    FusedGated {
        /// `gate_up_proj`.
        gate_up: Linear,
        /// `down_proj`.
        down: Linear,
        /// Activation.
        act: Act,
    },
    /// `proj(act(fc(x)))`.
    Plain {
        /// First layer.
        fc: Linear,
        /// Second layer.
        proj: Linear,
        /// Activation.
        act: Act,
    },
}

impl Mlp {
    /// `x [B, T, d] -> [B, T, d]`.
    pub fn forward(&self, x: &Tensor, tape: &mut Option<&mut Tape>) -> Tensor {
        match self {
            Mlp::Gated { gate, up, down, act } => {
                let g = act.apply(&gate.forward(x, tape));
                down.forward(&(g * up.forward(x, tape)), tape)
            }
            Mlp::FusedGated { gate_up, down, act } => {
                let h = gate_up.forward(x, tape).chunk(2, -1);
                down.forward(&(&h[1] * act.apply(&h[0])), tape)
            }
            Mlp::Plain { fc, proj, act } => proj.forward(&act.apply(&fc.forward(x, tape)), tape),
        }
    }
}
