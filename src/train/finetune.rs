//! What a job trains: LoRA adapters on chosen modules (the default) or the full model, and how
//! each checkpoint tensor is therefore treated (frozen, trainable, or adapted).

use serde::{Deserialize, Serialize};

/// The fine-tuning mode of a job. Written `{"mode": "lora", "rank": .., "alpha": ..,
/// "target_modules": [..]}` or `{"mode": "full"}`; read through the plain struct
/// [`FineTuneTable`], so a strict reader (`crate::strict_toml`) sees every key of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", try_from = "FineTuneTable")]
pub enum FineTune {
    /// LoRA adapters (PEFT semantics) on the linear layers whose last name component is listed.
    Lora {
        /// Adapter rank r.
        rank: i64,
        /// Scaling numerator: the branch is multiplied by alpha / r.
        alpha: f64,
        /// Module names to adapt (e.g. `c_attn`, `q_proj`); empty = the model family's default.
        target_modules: Vec<String>,
    },
    /// Every linear and norm layer trains. Token and position embeddings stay frozen: with a tied
    /// LM head their per-example norms do not add, and ewtune refuses to approximate them.
    Full,
}

/// The `[finetune]` table as written: every key of every mode, checked against the mode by
/// `TryFrom` (a key of the other mode is an error, not ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FineTuneTable {
    /// `lora` or `full`.
    pub mode: FineTuneMode,
    /// LoRA rank (LoRA only; required).
    pub rank: Option<i64>,
    /// LoRA alpha (LoRA only; required).
    pub alpha: Option<f64>,
    /// LoRA target modules (LoRA only; default: the family's).
    pub target_modules: Option<Vec<String>>,
}

/// The `mode` key of [`FineTuneTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FineTuneMode {
    /// LoRA adapters.
    Lora,
    /// Full fine-tuning.
    Full,
}

impl TryFrom<FineTuneTable> for FineTune {
    type Error = String;

    fn try_from(t: FineTuneTable) -> Result<Self, String> {
        match t.mode {
            FineTuneMode::Lora => Ok(FineTune::Lora {
                rank: t.rank.ok_or("finetune: mode = \"lora\" needs `rank`")?,
                alpha: t.alpha.ok_or("finetune: mode = \"lora\" needs `alpha`")?,
                target_modules: t.target_modules.unwrap_or_default(),
            }),
            FineTuneMode::Full => match [("rank", t.rank.is_some()), ("alpha", t.alpha.is_some()), ("target_modules", t.target_modules.is_some())]
                .into_iter()
                .find(|(_, given)| *given)
            {
                Some((key, _)) => Err(format!("finetune: `{key}` is a LoRA setting; mode = \"full\" takes none")),
                None => Ok(FineTune::Full),
            },
        }
    }
}

impl Default for FineTune {
    fn default() -> Self {
        FineTune::Lora { rank: 8, alpha: 16.0, target_modules: Vec::new() }
    }
}

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
    /// The role of a linear layer called `module` (last name component), given the family's
    /// default LoRA targets.
    pub fn linear_role(&self, module: &str, default_targets: &[&str]) -> LinearRole {
        match self {
            FineTune::Full => LinearRole::Trainable,
            FineTune::Lora { target_modules, .. } => {
                let hit = if target_modules.is_empty() {
                    default_targets.contains(&module)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_form_round_trips() {
        for ft in [FineTune::default(), FineTune::Lora { rank: 4, alpha: 8.0, target_modules: vec!["q_proj".into()] }, FineTune::Full] {
            let json = serde_json::to_string(&ft).unwrap();
            assert_eq!(serde_json::from_str::<FineTune>(&json).unwrap(), ft, "{json}");
        }
        assert_eq!(serde_json::to_string(&FineTune::Full).unwrap(), r#"{"mode":"full"}"#);
    }

    #[test]
    fn keys_of_the_wrong_mode_and_missing_ones_are_named() {
        let err = serde_json::from_str::<FineTune>(r#"{"mode":"full","rank":8}"#).unwrap_err().to_string();
        assert!(err.contains("`rank` is a LoRA setting"), "{err}");
        let err = serde_json::from_str::<FineTune>(r#"{"mode":"lora","rank":8}"#).unwrap_err().to_string();
        assert!(err.contains("needs `alpha`"), "{err}");
        let err = serde_json::from_str::<FineTune>(r#"{"mode":"qlora"}"#).unwrap_err().to_string();
        assert!(err.contains("qlora"), "{err}");
    }
}
