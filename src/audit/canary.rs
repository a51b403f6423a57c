//! The canary half of the one-run audit (docs/audit.md, Canaries): every canary of the manifest
//! committed before training scored against the trained and the base model, and the one-run
//! epsilon lower bound computed from those scores. Drawing and inserting the canaries is
//! training's (`train/canaries.rs`).

use crate::stats::bounds::OneRunRow;
use super::report::AuditError;
use super::texts::{score_metrics, ScoreMetrics, BOOTSTRAP_SEED};
use crate::train::canaries::Manifest;
use serde::Serialize;
use std::collections::BTreeMap;

/// The one-run canary audit, the report's `canary_audit` (docs/audit.md, The report).
#[derive(Debug, Clone, Serialize)]
pub struct CanaryAudit {
    /// Canaries m.
    pub m: usize,
    /// Canaries inserted (S = +1).
    pub n_included: usize,
    /// How they were made.
    pub canary_type: String,
    /// The one score the bound uses (fixed in the manifest).
    pub primary_score: String,
    /// SHA-256 of the manifest audited (the commitment made before training).
    pub manifest_sha256: String,
    /// The job's delta.
    pub delta: f64,
    /// Significance of the bound.
    pub beta: f64,
    /// Multiple-testing correction over the grid.
    pub correction: &'static str,
    /// Guess pairs tried (beta is divided by it).
    pub grid_size: usize,
    /// The best row: the one-run epsilon lower bound at 95 %.
    pub best: OneRunRow,
    /// Every row.
    pub grid: Vec<OneRunRow>,
    /// The certified epsilon the job claimed, when known.
    pub eps_claimed: Option<f64>,
    /// True when `best.eps_lb > eps_claimed`: the DP claim is refuted at 95 % (a bug in
    /// accounting, sampling, clipping or noise).
    pub violation: bool,
    /// The largest lower bound m canaries can give at this delta and beta (docs/audit.md, The one-run lower bound).
    pub eps_ceiling_for_m: f64,
    /// The classic Clopper-Pearson bound on the same scores (best threshold, beta split over
    /// every threshold), labelled heuristic: its confidence needs independent training runs,
    /// and this is one. Never compared with the claim; `best.eps_lb` is the headline.
    pub eps_classic_heuristic: f64,
    /// Membership metrics on the canaries (inserted vs not): the primary score and Min-K%++ 20 %
    /// (secondary, not used by the bound).
    pub metrics: BTreeMap<String, ScoreMetrics>,
    /// The canaries' scores, inserted and held out apart, per score of `metrics` (canaries are
    /// random token strings ewtune drew, not training data).
    pub histograms: BTreeMap<String, ScoreHistogram>,
}

/// Bins of the canaries' scores ([`crate::stats::metrics::histogram`]).
#[derive(Debug, Clone, Serialize)]
pub struct ScoreHistogram {
    /// `bins + 1` increasing edges; the last bin is closed.
    pub edges: Vec<f64>,
    /// Inserted canaries per bin.
    pub inserted: Vec<u64>,
    /// Held-out canaries per bin.
    pub held_out: Vec<u64>,
}

/// Bins per canary histogram: about ten canaries per bin at the default m = 1000 (docs/audit.md).
pub const HISTOGRAM_BINS: usize = 40;

/// Scorings per canary: under the target and under the base.
pub const SCORINGS_PER_CANARY: u64 = 2;

/// Scores every canary, whole, by the manifest's primary score `ref = loss_base - loss_target`
/// on its tokens (and Min-K%++ 20 % as a secondary metric) and runs the one-run audit
/// with the manifest's grid, beta and delta. Nothing here is a knob: the audit was fixed before
/// training. `manifest_sha256` is the hash committed then (of the manifest's stored bytes).
pub fn audit_canaries(
    manifest: &Manifest,
    manifest_sha256: &str,
    target: &crate::train::model::Model,
    base: &crate::train::model::Model,
    eps_claimed: Option<f64>,
    device: tch::Device,
    scoring: &super::logprobs::Scoring<'_>,
) -> Result<CanaryAudit, AuditError> {
    use super::logprobs::token_stats_counted;
    use super::scores::{min_k_pp, score_ref};
    if manifest.primary_score != "ref" {
        return Err(AuditError::Input(format!("unsupported primary score `{}`", manifest.primary_score)));
    }
    if manifest.canaries.len() != manifest.included.len() {
        return Err(AuditError::Input(format!("the manifest holds {} canaries but {} inclusion bits", manifest.canaries.len(), manifest.included.len())));
    }
    let longest = manifest.canaries.iter().map(Vec::len).max().unwrap_or(0);
    if let Some(limit) = target.max_positions().filter(|&p| longest as i64 > p) {
        return Err(AuditError::Input(format!("canaries of {longest} tokens exceed the model's context of {limit}")));
    }
    let t = token_stats_counted(target, &manifest.canaries, longest, 64, device, scoring);
    let b = token_stats_counted(base, &manifest.canaries, longest, 64, device, scoring);
    let primary: Vec<f64> = t.iter().zip(&b).map(|(t, b)| score_ref(&t.logprobs, &b.logprobs)).collect();
    let secondary: Vec<f64> = t.iter().map(|t| min_k_pp(&t.logprobs, &t.mu, &t.sigma2, 0.2)).collect::<Result<_, _>>()?;
    let audit = crate::stats::bounds::one_run_audit(&primary, &manifest.included, manifest.delta, manifest.beta, &manifest.k_plus, &[0])
        .map_err(|e| AuditError::Input(e.to_string()))?;
    let ceiling = crate::stats::bounds::one_run_ceiling(manifest.canaries.len(), manifest.delta, manifest.beta).map_err(|e| AuditError::Input(e.to_string()))?;
    let classic = crate::stats::bounds::eps_classic_best(&primary, &manifest.included, manifest.delta, manifest.beta).map_err(|e| AuditError::Input(e.to_string()))?;
    let mut metrics = BTreeMap::new();
    let mut histograms = BTreeMap::new();
    for (name, scores) in [("ref", &primary), ("min_k_pp_20", &secondary)] {
        metrics.insert(name.to_string(), score_metrics(scores, &manifest.included, BOOTSTRAP_SEED)?);
        let h = crate::stats::metrics::histogram(scores, &manifest.included, HISTOGRAM_BINS)?;
        histograms.insert(name.to_string(), ScoreHistogram { edges: h.edges, inserted: h.members, held_out: h.nonmembers });
    }
    Ok(CanaryAudit {
        m: manifest.canaries.len(),
        n_included: audit.n_included,
        canary_type: manifest.canary_type.clone(),
        primary_score: manifest.primary_score.clone(),
        manifest_sha256: manifest_sha256.to_string(),
        delta: manifest.delta,
        beta: manifest.beta,
        correction: "bonferroni",
        grid_size: audit.grid.len(),
        violation: eps_claimed.is_some_and(|c| audit.best.eps_lb > c),
        best: audit.best,
        grid: audit.grid,
        eps_claimed,
        eps_ceiling_for_m: ceiling.eps,
        eps_classic_heuristic: classic.eps_lb,
        metrics,
        histograms,
    })
}
