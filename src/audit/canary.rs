//! Canaries for the one-run audit (`research/audit.md` §5.3): m random-token sequences, each
//! included in training with probability 1/2 (S_i drawn from the OS CSPRNG), written with the
//! audit plan to a manifest whose SHA-256 is fixed before the first training step, so the audit
//! cannot be tuned afterwards. Included canaries are ordinary privacy units: sampled like the
//! data and counted in the N of the sampling rate.

use crate::train::data::Example;
use crate::train::TrainError;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a job asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanarySpec {
    /// Number of canaries m (each included with probability 1/2).
    pub count: usize,
    /// Tokens per canary.
    #[serde(default = "default_length")]
    pub length: usize,
}

fn default_length() -> usize {
    32
}

/// The audit plan, committed to before training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format.
    pub version: u32,
    /// "random_tokens": ids uniform over 1..vocab.
    pub canary_type: String,
    /// The canaries' token ids.
    pub canaries: Vec<Vec<i64>>,
    /// S_i: true = inserted into the training data.
    pub included: Vec<bool>,
    /// The one score the audit uses ("ref": loss_base - loss_target on the canary tokens).
    pub primary_score: String,
    /// Guess counts k+ tried (Bonferroni over them).
    pub k_plus: Vec<usize>,
    /// Significance of the bound.
    pub beta: f64,
    /// The job's delta.
    pub delta: f64,
}

impl Manifest {
    /// The included canaries as training examples (loss on every token but the first).
    pub fn training_units(&self) -> Vec<Vec<Example>> {
        self.canaries
            .iter()
            .zip(&self.included)
            .filter(|(_, &inc)| inc)
            .map(|(ids, _)| {
                let mut mask = vec![1; ids.len()];
                mask[0] = 0;
                vec![Example { ids: ids.clone(), loss_mask: mask }]
            })
            .collect()
    }
}

/// The default k+ grid for m canaries (§5.2.4): {10, 20, 50, 100, ...} up to m/2.
pub fn default_k_plus(m: usize) -> Vec<usize> {
    [10, 20, 50, 100, 200, 300, 400, 500].into_iter().filter(|&k| k <= (m / 2).max(10)).collect()
}

/// Loads `path` if it exists (a resumed job keeps its canaries and S), else draws a new manifest
/// from the OS CSPRNG and writes it atomically. Returns it with its SHA-256.
pub fn prepare(path: &Path, spec: &CanarySpec, vocab: i64, delta: f64) -> Result<(Manifest, String), TrainError> {
    if spec.count < 2 || spec.length < 2 {
        return Err(TrainError::BadSpec { field: "canaries", reason: "count and length must be >= 2".into() });
    }
    if path.exists() {
        let bytes = std::fs::read(path).map_err(|e| TrainError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| TrainError::CorruptCheckpoint { path: path.to_path_buf(), reason: e.to_string() })?;
        if m.canaries.len() != spec.count {
            return Err(TrainError::BadSpec { field: "canaries", reason: format!("the output's manifest holds {} canaries, the job asks for {}", m.canaries.len(), spec.count) });
        }
        return Ok((m, sha256_hex(&bytes)));
    }
    let m = draw(spec, vocab, delta, &mut crate::train::noise::os_seeded_rng()?);
    let bytes = serde_json::to_vec(&m).expect("manifests serialize");
    crate::train::weights::write_bytes_atomic(path, &bytes)?;
    Ok((m, sha256_hex(&bytes)))
}

/// Draws a manifest's canaries and inclusion bits from `rng` (the OS CSPRNG in jobs; a seeded
/// generator only in reproducible tests).
pub fn draw(spec: &CanarySpec, vocab: i64, delta: f64, rng: &mut impl rand::RngCore) -> Manifest {
    let canaries: Vec<Vec<i64>> = (0..spec.count).map(|_| (0..spec.length).map(|_| rng.random_range(1..vocab)).collect()).collect();
    let included = (0..spec.count).map(|_| rng.random_bool(0.5)).collect();
    Manifest {
        version: 1,
        canary_type: "random_tokens".into(),
        canaries,
        included,
        primary_score: "ref".into(),
        k_plus: default_k_plus(spec.count),
        beta: 0.05,
        delta,
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The result of the one-run canary audit.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryAudit {
    /// Canaries m.
    pub m: usize,
    /// Canaries inserted (S = +1).
    pub n_included: usize,
    /// AUC of the primary score, inserted vs not.
    pub auc: f64,
    /// The one-run epsilon lower bound at 95 % (Bonferroni over the k+ grid).
    pub eps_lb: f64,
    /// Guesses of the best grid row.
    pub best_k_plus: usize,
    /// r of the best row.
    pub best_r: usize,
    /// v (correct guesses) of the best row.
    pub best_v: usize,
    /// Every grid row `(k+, r, v, eps_lb)`.
    pub grid: Vec<(usize, usize, usize, f64)>,
    /// The certified epsilon the job claimed, when known.
    pub eps_claimed: Option<f64>,
    /// True when `eps_lb > eps_claimed`: the DP claim is refuted (a bug in accounting or training).
    pub violation: bool,
    /// SHA-256 of the manifest audited.
    pub manifest_sha256: String,
}

/// Scores every canary by `ref = loss_base - loss_target` on its tokens and runs the one-run
/// audit of §5.2 with the manifest's grid, beta and delta.
pub fn audit_canaries(
    manifest: &Manifest,
    target: &crate::train::model::Model,
    base: &crate::train::model::Model,
    eps_claimed: Option<f64>,
    max_tokens: usize,
    device: tch::Device,
) -> Result<CanaryAudit, super::report::AuditError> {
    use super::logprobs::token_stats;
    if manifest.primary_score != "ref" {
        return Err(super::report::AuditError::Input(format!("unsupported primary score `{}`", manifest.primary_score)));
    }
    let t = token_stats(target, &manifest.canaries, max_tokens, 64, device);
    let b = token_stats(base, &manifest.canaries, max_tokens, 64, device);
    let scores: Vec<f64> = t.iter().zip(&b).map(|(t, b)| super::scores::score_ref(&t.logprobs, &b.logprobs)).collect();
    let auc = super::metrics::auc(&scores, &manifest.included)?.auc;
    let audit = super::bounds::one_run_audit(&scores, &manifest.included, manifest.delta, manifest.beta, &manifest.k_plus, &[0])
        .map_err(|e| super::report::AuditError::Input(e.to_string()))?;
    let bytes = serde_json::to_vec(manifest).expect("manifests serialize");
    let violation = eps_claimed.is_some_and(|c| audit.best.eps_lb > c);
    Ok(CanaryAudit {
        m: manifest.canaries.len(),
        n_included: manifest.included.iter().filter(|&&s| s).count(),
        auc,
        eps_lb: audit.best.eps_lb,
        best_k_plus: audit.best.k_plus,
        best_r: audit.best.r,
        best_v: audit.best.v,
        grid: audit.grid.iter().map(|g| (g.k_plus, g.r, g.v, g.eps_lb)).collect(),
        eps_claimed,
        violation,
        manifest_sha256: sha256_hex(&bytes),
    })
}
