//! The numeric precision of a job's forward and backward passes. In bf16 the frozen weights are
//! held in bfloat16 and the forward/backward run in bfloat16, while the trainable parameters stay
//! f32 master copies (cast to bf16 where they are used, as autocast does) and every privacy-
//! relevant quantity — per-unit gradient norms, the clipped sum, the noise and the update — is
//! computed in f32.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

/// `precision` of job.toml and JobSpec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// bf16 forward/backward, f32 master weights and DP arithmetic.
    Bf16,
}

impl Precision {
    /// The dtype of frozen weights and activations.
    pub fn compute_kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// The default when a job names none: bf16 where the base checkpoint is bf16 and the job runs
    /// on CUDA, f32 otherwise (CPU bf16 matmuls are slower than f32 ones).
    pub fn default_for(base_is_bf16: bool, device: Device) -> Precision {
        if base_is_bf16 && device.is_cuda() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}
