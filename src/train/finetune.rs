//! What a job trains: LoRA adapters on chosen modules (the default) or the full model, and how
//! each checkpoint tensor is therefore treated (frozen, trainable, or adapted), with PEFT's
//! semantics for target modules (names, `all-linear`, a regex), rsLoRA scaling and per-module
//! rank and alpha patterns.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which linear layers LoRA adapts, as PEFT's `target_modules` says it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    /// Module names: a layer is adapted when its full name equals one or ends with `.name`;
    /// empty = the model family's default; `["all-linear"]` = every linear layer but the head.
    List(Vec<String>),
    /// `"all-linear"`, or a regular expression the full module name must match entirely.
    Pattern(String),
}

impl Default for Targets {
    fn default() -> Self {
        Targets::List(Vec::new())
    }
}

impl Targets {
    /// The named modules (empty for a pattern or the family default).
    pub fn names(&self) -> &[String] {
        match self {
            Targets::List(v) => v,
            Targets::Pattern(_) => &[],
        }
    }
}

/// The fine-tuning mode of a job. Written `{"mode": "lora", "rank": .., "alpha": ..,
/// "target_modules": [..], "use_rslora": ..}` or `{"mode": "full"}`; read through the plain struct
/// [`FineTuneTable`], so a strict reader (`crate::strict_toml`) sees every key of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", try_from = "FineTuneTable")]
pub enum FineTune {
    /// LoRA adapters (Hu et al., arXiv 2106.09685) with PEFT's semantics.
    Lora {
        /// Adapter rank r.
        rank: i64,
        /// Scaling numerator: the branch is multiplied by alpha / r (alpha / sqrt(r) with rsLoRA).
        alpha: f64,
        /// Modules to adapt; empty = the model family's default (PEFT's).
        #[serde(default)]
        target_modules: Targets,
        /// rsLoRA (Kalajdzievski, arXiv 2312.03732): scale alpha / sqrt(r).
        #[serde(default)]
        use_rslora: bool,
        /// Per-module rank overrides (PEFT's `rank_pattern`: key matches the end of the name).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        rank_pattern: BTreeMap<String, i64>,
        /// Per-module alpha overrides (PEFT's `alpha_pattern`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        alpha_pattern: BTreeMap<String, f64>,
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
    pub target_modules: Option<Targets>,
    /// rsLoRA scaling (LoRA only).
    pub use_rslora: Option<bool>,
    /// Per-module rank overrides (LoRA only).
    pub rank_pattern: Option<BTreeMap<String, i64>>,
    /// Per-module alpha overrides (LoRA only).
    pub alpha_pattern: Option<BTreeMap<String, f64>>,
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
                use_rslora: t.use_rslora.unwrap_or(false),
                rank_pattern: t.rank_pattern.unwrap_or_default(),
                alpha_pattern: t.alpha_pattern.unwrap_or_default(),
            }),
            FineTuneMode::Full => match [
                ("rank", t.rank.is_some()),
                ("alpha", t.alpha.is_some()),
                ("target_modules", t.target_modules.is_some()),
                ("use_rslora", t.use_rslora.is_some()),
                ("rank_pattern", t.rank_pattern.is_some()),
                ("alpha_pattern", t.alpha_pattern.is_some()),
            ]
                .into_iter()
                .find(|(_, given)| *given)
            {
                Some((key, _)) => Err(format!("finetune: `{key}` is a LoRA setting; mode = \"full\" takes none")),
                None => Ok(FineTune::Full),
            },
        }
    }
}

/// LoRA rank when none is given.
pub const DEFAULT_LORA_RANK: i64 = 8;
/// LoRA alpha when none is given (the update is scaled by alpha / rank).
pub const DEFAULT_LORA_ALPHA: f64 = 16.0;

impl Default for FineTune {
    fn default() -> Self {
        FineTune::lora(DEFAULT_LORA_RANK, DEFAULT_LORA_ALPHA, Vec::new())
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

/// PEFT's pattern-key rule: `key` applies to `name` when `(.*\.)?(key)$` matches it from the start.
fn pattern_applies(key: &str, name: &str) -> Result<bool, String> {
    let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| format!("pattern {key:?}: {e}"))?;
    Ok(re.is_match(name))
}

impl FineTune {
    /// LoRA with rank, alpha and target module names, PEFT's other options at their defaults.
    pub fn lora(rank: i64, alpha: f64, target_modules: Vec<String>) -> Self {
        FineTune::Lora {
            rank,
            alpha,
            target_modules: Targets::List(target_modules),
            use_rslora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
        }
    }

    /// The role of the linear layer whose HF name is `prefix` (e.g. `model.layers.0.self_attn.q_proj`),
    /// given the family's default LoRA targets. An invalid regex is an error naming it.
    pub fn linear_role(&self, prefix: &str, default_targets: &[&str]) -> Result<LinearRole, String> {
        let ends = |t: &str| prefix == t || prefix.ends_with(&format!(".{t}"));
        match self {
            FineTune::Full => Ok(LinearRole::Trainable),
            FineTune::Lora { target_modules, .. } => {
                let all_linear = || !OUTPUT_HEADS.contains(&prefix);
                let hit = match target_modules {
                    Targets::List(v) if v.is_empty() => default_targets.iter().any(|t| ends(t)),
                    Targets::List(v) if v.iter().any(|t| t == ALL_LINEAR) => all_linear(),
                    Targets::List(v) => v.iter().any(|t| ends(t)),
                    Targets::Pattern(p) if p == ALL_LINEAR => all_linear(),
                    Targets::Pattern(p) => {
                        let re = regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("target_modules regex {p:?}: {e}"))?;
                        re.is_match(prefix)
                    }
                };
                Ok(if hit { LinearRole::Adapted } else { LinearRole::Frozen })
            }
        }
    }

    /// Rank and scale of the adapter on `prefix` (patterns first, then the global values).
    pub fn lora_rank_scale(&self, prefix: &str) -> Result<(i64, f64), String> {
        match self {
            FineTune::Full => Ok((0, 0.0)),
            FineTune::Lora { rank, alpha, use_rslora, rank_pattern, alpha_pattern, .. } => {
                let mut r = *rank;
                for (key, v) in rank_pattern {
                    if pattern_applies(key, prefix)? {
                        r = *v;
                        break;
                    }
                }
                let mut a = *alpha;
                for (key, v) in alpha_pattern {
                    if pattern_applies(key, prefix)? {
                        a = *v;
                        break;
                    }
                }
                if r <= 0 {
                    return Err(format!("LoRA rank {r} for {prefix} must be >= 1"));
                }
                let scale = if *use_rslora { a / (r as f64).sqrt() } else { a / r as f64 };
                Ok((r, scale))
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

    fn with_pattern(p: &str) -> FineTune {
        let mut ft = FineTune::lora(4, 8.0, vec![]);
        if let FineTune::Lora { target_modules, .. } = &mut ft {
            *target_modules = Targets::Pattern(p.into());
        }
        ft
    }

    #[test]
    fn targets_follow_peft() {
        let names = FineTune::lora(4, 8.0, vec!["self_attn.q_proj".into()]);
        assert_eq!(names.linear_role("model.layers.3.self_attn.q_proj", &[]).unwrap(), LinearRole::Adapted);
        assert_eq!(names.linear_role("model.layers.3.self_attn.k_proj", &[]).unwrap(), LinearRole::Frozen);
        let all = with_pattern(ALL_LINEAR);
        assert_eq!(all.linear_role("model.layers.0.mlp.down_proj", &[]).unwrap(), LinearRole::Adapted);
        assert_eq!(all.linear_role("lm_head", &[]).unwrap(), LinearRole::Frozen);
        let re = with_pattern(r".*\.1\.self_attn\.q_proj");
        assert_eq!(re.linear_role("model.layers.1.self_attn.q_proj", &[]).unwrap(), LinearRole::Adapted);
        assert_eq!(re.linear_role("model.layers.11.self_attn.q_proj", &[]).unwrap(), LinearRole::Frozen);
        let bad = with_pattern("(");
        assert!(bad.linear_role("x", &[]).is_err());
    }

    #[test]
    fn rslora_and_patterns_scale_like_peft() {
        let mut ft = FineTune::lora(4, 8.0, vec![]);
        if let FineTune::Lora { use_rslora, rank_pattern, alpha_pattern, .. } = &mut ft {
            *use_rslora = true;
            rank_pattern.insert("layers.1.self_attn.q_proj".into(), 16);
            alpha_pattern.insert("q_proj".into(), 32.0);
        }
        assert_eq!(ft.lora_rank_scale("model.layers.1.self_attn.q_proj").unwrap(), (16, 32.0 / 4.0));
        assert_eq!(ft.lora_rank_scale("model.layers.0.self_attn.q_proj").unwrap(), (4, 32.0 / 2.0));
        assert_eq!(ft.lora_rank_scale("model.layers.0.self_attn.v_proj").unwrap(), (4, 8.0 / 2.0));
        // `(.*\.)?(key)$` from the start: `proj` does not apply to `q_proj`.
        let mut ft = FineTune::lora(4, 8.0, vec![]);
        if let FineTune::Lora { rank_pattern, .. } = &mut ft {
            rank_pattern.insert("proj".into(), 2);
        }
        assert_eq!(ft.lora_rank_scale("model.layers.0.self_attn.q_proj").unwrap().0, 4);
    }

    #[test]
    fn the_json_form_round_trips() {
        let mut rslora = FineTune::lora(4, 8.0, vec![]);
        if let FineTune::Lora { use_rslora, target_modules, .. } = &mut rslora {
            *use_rslora = true;
            *target_modules = Targets::Pattern(ALL_LINEAR.into());
        }
        for ft in [FineTune::default(), FineTune::lora(4, 8.0, vec!["q_proj".into()]), rslora, FineTune::Full] {
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
