//! An audit of labelled texts (`ewtune score --texts`, and the `data_mia` part of a job's audit
//! report): per-text token log-probs and every score of docs/audit.md, Scores, and per-score
//! metrics (AUC with a seeded stratified bootstrap CI, TPR at 0.1 / 1 / 5 % FPR, strict, realised
//! FPR reported), NaNs dropped and counted.

use super::logprobs::{token_stats_counted, Scoring};
use crate::stats::metrics::{self, FprMode};
use super::report::AuditError;
use super::scores::{TextInput, TextScores, REPORTED_RATIOS};
use crate::train::model::Model;
use serde::Serialize;
use std::collections::BTreeMap;
use tch::Device;

/// Scorings per text: under the target, its lowercase form under the target, under the base.
pub const SCORINGS_PER_TEXT: u64 = 3;

/// One labelled text (`{"input": ..., "label": 1|0}`, 1 = member).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct LabeledText {
    /// The text.
    pub input: String,
    /// 1 = member (trained on), 0 = non-member.
    pub label: i64,
}

/// One text's result.
#[derive(Debug, Clone, Serialize)]
pub struct TextResult {
    /// The text.
    pub input: String,
    /// Its label.
    pub label: i64,
    /// `log p(x_t | x_<t)`, t = 1..n-1.
    pub token_logprobs: Vec<f64>,
    /// Canonical scores (higher = member): `min_k_10/20/50`, `min_k_pp_10/20/50`, `loss`,
    /// `zlib`, `lowercase`, and `ref` when a base model was given.
    pub scores: BTreeMap<String, f64>,
    /// The text was cut at the model's context.
    pub truncated: bool,
}

/// One score's metrics.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreMetrics {
    /// Exact AUC (ties = 1/2).
    pub auc: f64,
    /// Stratified percentile bootstrap 95 % interval of the AUC (seeded).
    pub auc_ci95: [f64; 2],
    /// TPR at FPR < 1 % (strict).
    pub tpr_at_1pct_fpr: f64,
    /// TPR at FPR < 0.1 % and 5 %, with the realised FPR, by target.
    pub tpr_at_fpr: BTreeMap<String, TprPoint>,
    /// NaN scores dropped before the metrics.
    pub dropped_nan: usize,
    /// The ROC for drawing (log-log), thinned by [`metrics::roc_for_plot`]: `[false positives,
    /// true positives]` counts, classifying "member" at or above falling thresholds.
    pub roc: RocCurve,
}

/// A ROC as counts, with the class sizes that turn them into rates.
#[derive(Debug, Clone, Serialize)]
pub struct RocCurve {
    /// Members P (after NaNs are dropped).
    pub members: usize,
    /// Non-members N (after NaNs are dropped).
    pub nonmembers: usize,
    /// `[fp, tp]` from `[0, 0]` to `[N, P]`.
    pub points: Vec<[usize; 2]>,
}

/// A TPR at a target FPR.
#[derive(Debug, Clone, Serialize)]
pub struct TprPoint {
    /// TPR.
    pub tpr: f64,
    /// FPR actually achieved.
    pub realised_fpr: f64,
    /// Too few non-members for the target (N < 10 / target).
    pub underpowered: bool,
}

/// The audit of a labelled text set.
#[derive(Debug, Clone, Serialize)]
pub struct TextAudit {
    /// Per text.
    pub texts: Vec<TextResult>,
    /// Per score.
    pub metrics: BTreeMap<String, ScoreMetrics>,
    /// Seed of the bootstrap.
    pub bootstrap_seed: u64,
}

fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<i64>, AuditError> {
    // HF encode semantics: the tokenizer's post-processor decides about BOS (docs/audit.md, Token log-probabilities).
    let enc = tok.encode(text, true).map_err(|e| AuditError::Input(format!("tokenizer: {e}")))?;
    Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
}

/// Scores `texts` with `target` (and `base` for `ref`) and computes the metrics, counting
/// [`SCORINGS_PER_TEXT`] (one fewer without a base) scorings per text into `scoring`.
pub fn audit_texts(
    target: &Model,
    base: Option<&Model>,
    tokenizer: &tokenizers::Tokenizer,
    texts: &[LabeledText],
    max_tokens: usize,
    device: Device,
    scoring: &Scoring<'_>,
) -> Result<TextAudit, AuditError> {
    if texts.iter().any(|t| t.label != 0 && t.label != 1) {
        return Err(AuditError::Input("every label must be 1 (member) or 0 (non-member)".into()));
    }
    let ids: Vec<Vec<i64>> = texts.iter().map(|t| encode(tokenizer, &t.input)).collect::<Result<_, _>>()?;
    let lower_ids: Vec<Vec<i64>> = texts.iter().map(|t| encode(tokenizer, &t.input.to_lowercase())).collect::<Result<_, _>>()?;
    let batch = 16;
    let stats = token_stats_counted(target, &ids, max_tokens, batch, device, scoring);
    let lower = token_stats_counted(target, &lower_ids, max_tokens, batch, device, scoring);
    let base_stats = base.map(|b| token_stats_counted(b, &ids, max_tokens, batch, device, scoring));
    let mut results = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let s = &stats[i];
        let input = TextInput {
            logprobs: &s.logprobs,
            moments: Some((&s.mu, &s.sigma2)),
            text: Some(&t.input),
            lowercase_logprobs: Some(&lower[i].logprobs),
            base_logprobs: base_stats.as_ref().map(|b| b[i].logprobs.as_slice()),
        };
        let sc = TextScores::compute(&input, &REPORTED_RATIOS)?;
        let mut scores = BTreeMap::new();
        for r in &sc.min_k {
            scores.insert(format!("min_k_{}", (r.ratio * 100.0).round()), r.score);
        }
        for r in &sc.min_k_pp {
            scores.insert(format!("min_k_pp_{}", (r.ratio * 100.0).round()), r.score);
        }
        scores.insert("loss".into(), sc.score_loss);
        if let Some(z) = sc.score_zlib {
            scores.insert("zlib".into(), z);
        }
        if let Some(l) = sc.score_lowercase {
            scores.insert("lowercase".into(), l);
        }
        if let Some(r) = sc.score_ref {
            scores.insert("ref".into(), r);
        }
        results.push(TextResult { input: t.input.clone(), label: t.label, token_logprobs: s.logprobs.clone(), scores, truncated: s.truncated });
    }
    let members: Vec<bool> = texts.iter().map(|t| t.label == 1).collect();
    let mut metrics_by_score = BTreeMap::new();
    let names: Vec<String> = results.first().map(|r| r.scores.keys().cloned().collect()).unwrap_or_default();
    for name in names {
        let values: Vec<f64> = results.iter().map(|r| r.scores.get(&name).copied().unwrap_or(f64::NAN)).collect();
        metrics_by_score.insert(name, score_metrics(&values, &members, BOOTSTRAP_SEED)?);
    }
    Ok(TextAudit { texts: results, metrics: metrics_by_score, bootstrap_seed: BOOTSTRAP_SEED })
}

/// The recorded seed of every bootstrap in an audit (reproducible intervals, docs/audit.md, Metrics).
pub const BOOTSTRAP_SEED: u64 = 7;

/// One score's metrics over members and non-members: exact AUC, its stratified percentile
/// bootstrap interval from `seed`, and TPR at each target FPR (strict).
pub fn score_metrics(values: &[f64], members: &[bool], seed: u64) -> Result<ScoreMetrics, AuditError> {
    let auc = metrics::auc(values, members)?;
    let mut tpr = BTreeMap::new();
    for target in metrics::FPR_TARGETS {
        let p = metrics::tpr_at_fpr(values, members, target, FprMode::Strict)?;
        tpr.insert(format!("{target}"), TprPoint { tpr: p.tpr, realised_fpr: p.realised_fpr, underpowered: p.underpowered });
    }
    let config = metrics::BootstrapConfig { seed, ..metrics::BootstrapConfig::default() };
    let ci = metrics::bootstrap_ci(values, members, &config, |s, m| Ok(metrics::auc(s, m)?.auc))?;
    let full = metrics::roc(values, members)?;
    let roc = RocCurve { members: full.n_pos, nonmembers: full.n_neg, points: metrics::roc_for_plot(&full).iter().map(|p| [p.fp, p.tp]).collect() };
    Ok(ScoreMetrics { auc: auc.auc, auc_ci95: [ci.lo, ci.hi], tpr_at_1pct_fpr: tpr["0.01"].tpr, tpr_at_fpr: tpr, dropped_nan: auc.dropped_nan, roc })
}
