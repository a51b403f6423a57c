//! The multi-run audit (docs/audit.md, The one-run lower bound, last paragraph): several independent training runs, each with
//! one target example that the run did or did not train on. Each run's model scores its target
//! once (`ref` against the base model when given, else `loss`), and the classic Clopper-Pearson
//! bound over those decisions is a valid epsilon lower bound at 1 - alpha, because the trials
//! are independent (one decision per run); within a single run it would be a heuristic only.

use super::logprobs::token_stats;
use super::report::AuditError;
use super::scores::{score_loss, score_ref};
use crate::train::model::Model;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Device;

/// One training run's target (`{"model": DIR, "input": text, "label": 1|0}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunTarget {
    /// The run's trained model (HF or PEFT adapter directory).
    pub model: PathBuf,
    /// The run's target text.
    pub input: String,
    /// 1 = the run trained on it.
    pub label: i64,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct MultiRunAudit {
    /// Runs.
    pub n_runs: usize,
    /// Runs that trained on their target.
    pub n_members: usize,
    /// The score: `ref` (base model given) or `loss`.
    pub score: &'static str,
    /// Each run's score, in input order (higher = member).
    pub scores: Vec<f64>,
    /// AUC of the scores.
    pub auc: f64,
    /// The classic bound at the best threshold (alpha split over every threshold).
    pub eps_lb: f64,
    /// True positives at that threshold.
    pub tp: usize,
    /// False positives at that threshold.
    pub fp: usize,
    /// Thresholds tried (the Bonferroni divisor).
    pub thresholds: usize,
    /// 1 - confidence, before the split.
    pub alpha: f64,
    /// The delta of the bound.
    pub delta: f64,
    /// The certified epsilon the runs claimed, when given.
    pub eps_claimed: Option<f64>,
    /// `eps_lb > eps_claimed`: the claim is refuted at 1 - alpha.
    pub violation: bool,
}

/// Scores every run's target with its own model and bounds epsilon from the decisions.
pub fn audit_runs(
    runs: &[RunTarget],
    base_dir: Option<&Path>,
    delta: f64,
    alpha: f64,
    eps_claimed: Option<f64>,
    device: Device,
) -> Result<MultiRunAudit, AuditError> {
    if let Some(i) = runs.iter().position(|r| r.label != 0 && r.label != 1) {
        return Err(AuditError::Input(format!("run {}: label must be 1 (trained on) or 0", i + 1)));
    }
    let members: Vec<bool> = runs.iter().map(|r| r.label == 1).collect();
    let n_members = members.iter().filter(|&&m| m).count();
    if n_members == 0 || n_members == runs.len() {
        return Err(AuditError::Input("give runs that trained on their target and runs that did not".into()));
    }
    let base = base_dir.map(|b| Model::load_output(b, device)).transpose()?;
    let tokenizer_dir = base_dir.unwrap_or(&runs[0].model);
    let tokenizer_path = crate::train::peft_adapter::tokenizer_path(tokenizer_dir, crate::train::peft_adapter::AdapterBase::Recorded)?;
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| AuditError::Input(format!("cannot load {}: {e}", tokenizer_path.display())))?;
    // One model in memory at a time: the runs of each model, in order of first appearance.
    let mut scores = vec![f64::NAN; runs.len()];
    let mut order: Vec<&Path> = Vec::new();
    for r in runs {
        if !order.contains(&r.model.as_path()) {
            order.push(&r.model);
        }
    }
    for dir in order {
        let model = Model::load_output(dir, device)?;
        let max_tokens = model.max_positions().map_or(1024, |p| p as usize);
        for (i, r) in runs.iter().enumerate().filter(|(_, r)| r.model == dir) {
            let enc = tokenizer.encode(r.input.as_str(), true).map_err(|e| AuditError::Input(format!("tokenizer: {e}")))?;
            let ids = vec![enc.get_ids().iter().map(|&t| i64::from(t)).collect::<Vec<i64>>()];
            let target = &token_stats(&model, &ids, max_tokens, 1, device)[0];
            scores[i] = match &base {
                Some(b) => score_ref(&target.logprobs, &token_stats(b, &ids, max_tokens, 1, device)[0].logprobs),
                None => score_loss(&target.logprobs),
            };
        }
    }
    let auc = crate::stats::metrics::auc(&scores, &members)?.auc;
    let best = crate::stats::bounds::eps_classic_best(&scores, &members, delta, alpha).map_err(|e| AuditError::Input(e.to_string()))?;
    Ok(MultiRunAudit {
        n_runs: runs.len(),
        n_members,
        score: if base.is_some() { "ref" } else { "loss" },
        scores,
        auc,
        eps_lb: best.eps_lb,
        tp: best.point.tp,
        fp: best.point.fp,
        thresholds: best.thresholds,
        alpha,
        delta,
        eps_claimed,
        violation: eps_claimed.is_some_and(|c| best.eps_lb > c),
    })
}
