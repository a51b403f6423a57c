//! What a job trains: LoRA adapters on chosen modules (the default) or the full model, and how
//! each checkpoint tensor is therefore treated (frozen, trainable, or adapted).

use serde::{Deserialize, Serialize};

/// The fine-tuning mode of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum FineTune {
    /// LoRA adapters (PEFT semantics) on the linear layers whose last name component is listed.
    Lora {
        /// Adapter rank r.
        rank: i64,
        /// Scaling numerator: the branch is multiplied by alpha / r.
        alpha: f64,
        /// Module names to adapt (e.g. `c_attn`, `q_proj`); empty = the model family's default.
        #[serde(default)]
        target_modules: Vec<String>,
    },
    /// Every linear and norm layer trains. Token and position embeddings stay frozen: with a tied
    /// LM head their per-example norms do not add, and ewtune refuses to approximate them.
    Full,
}

impl Default for FineTune {
    fn default() -> Self {
        FineTune::Lora { rank: 8, alpha: 16.0, target_modules: Vec::new() }
    }
}

/// PEFT's `target_modules = "all-linear"`: every linear layer except the output head.
pub const ALL_LINEAR: &str = "all-linear";

/// Names of output heads, which `all-linear` leaves out (as PEFT does).
pub const OUTPUT_HEADS: &[&str] = &["lm_head", "embed_out"];

/// How the model loader treats one linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearRole {
    /// Frozen, no adapter.
    Frozen,
    /// Trainable weight (and bias).
    Trainable,
    /// Frozen base weight with a trainable LoRA branch.
    Adapted,
}

impl FineTune {
    /// The role of the linear layer whose HF name is `prefix` (e.g. `model.layers.0.self_attn.q_proj`),
    /// given the family's default LoRA targets. `target_modules` name modules by their last
    /// component, as PEFT's list form does; `all-linear` (PEFT's shorthand) adapts every linear
    /// layer but the output head.
    pub fn linear_role(&self, prefix: &str, default_targets: &[&str]) -> LinearRole {
        let module = prefix.rsplit('.').next().unwrap_or(prefix);
        match self {
            FineTune::Full => LinearRole::Trainable,
            FineTune::Lora { target_modules, .. } => {
                let hit = if target_modules.is_empty() {
                    default_targets.contains(&module)
                } else if target_modules.iter().any(|t| t == ALL_LINEAR) {
                    !OUTPUT_HEADS.contains(&prefix)
                } else {
                    target_modules.iter().any(|t| t == module)
                };
                if hit { LinearRole::Adapted } else { LinearRole::Frozen }
            }
        }
    }

    /// True when norm layers train.
    pub fn norms_trainable(&self) -> bool {
        matches!(self, FineTune::Full)
    }
}
