//! Canaries for the one-run audit (docs/audit.md, Canaries): m random-token sequences, each
//! included in training with probability 1/2 (S_i drawn from the OS CSPRNG), written with the
//! audit plan to a manifest whose SHA-256 is fixed before the first training step, so the audit
//! cannot be tuned afterwards. Included canaries are ordinary privacy units: sampled like the
//! data and counted in the N of the sampling rate.

use super::bounds::OneRunRow;
use super::report::AuditError;
use super::texts::{score_metrics, ScoreMetrics, BOOTSTRAP_SEED};
use crate::digest::sha256_hex;
use crate::train::data::Example;
use crate::train::TrainError;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

/// The default k+ grid for m canaries (docs/audit.md, The one-run lower bound): {10, 20, 50, 100, ...} up to m/2.
pub fn default_k_plus(m: usize) -> Vec<usize> {
    [10, 20, 50, 100, 200, 300, 400, 500].into_iter().filter(|&k| k <= (m / 2).max(10)).collect()
}

/// Loads `path` if it exists (a resumed job keeps its canaries and S), else draws a new manifest
/// from the OS CSPRNG and writes it atomically. Returns it with its SHA-256.
pub fn prepare(path: &Path, spec: &CanarySpec, vocab: i64, delta: f64) -> Result<(Manifest, String), TrainError> {
    spec.validate()?;
    if path.exists() {
        let bytes = std::fs::read(path).map_err(|e| TrainError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| TrainError::CorruptCheckpoint { path: path.to_path_buf(), reason: e.to_string() })?;
        if m.canaries.len() != spec.count {
            return Err(TrainError::BadSpec { field: "canaries", reason: format!("the output's manifest holds {} canaries, the job asks for {}", m.canaries.len(), spec.count) });
        }
        return Ok((m, sha256_hex(&bytes)));
    }
    let m = draw(spec, vocab, delta, &mut crate::train::noise::os_seeded_rng()?)?;
    let bytes = serde_json::to_vec(&m).expect("manifests serialize");
    crate::train::weights::write_bytes_atomic(path, &bytes)?;
    Ok((m, sha256_hex(&bytes)))
}

/// Draws a manifest's m distinct canaries and inclusion bits from `rng` (the OS CSPRNG in jobs;
/// a seeded generator only in reproducible tests).
pub fn draw(spec: &CanarySpec, vocab: i64, delta: f64, rng: &mut impl rand::RngCore) -> Result<Manifest, TrainError> {
    if ((vocab - 1).max(0) as f64).powi(spec.length as i32) < 2.0 * spec.count as f64 {
        return Err(TrainError::BadSpec { field: "canaries.length", reason: format!("{} distinct canaries of {} tokens cannot be drawn from a vocabulary of {vocab}", spec.count, spec.length) });
    }
    // Unique canaries (docs/audit.md, Canaries): a repeat would be a group of two, audited against the wrong epsilon.
    let mut seen = std::collections::HashSet::new();
    let mut canaries: Vec<Vec<i64>> = Vec::with_capacity(spec.count);
    while canaries.len() < spec.count {
        let c: Vec<i64> = (0..spec.length).map(|_| rng.random_range(1..vocab)).collect();
        if seen.insert(c.clone()) {
            canaries.push(c);
        }
    }
    let included = (0..spec.count).map(|_| rng.random_bool(0.5)).collect();
    Ok(Manifest {
        version: 1,
        canary_type: "random_tokens".into(),
        canaries,
        included,
        primary_score: "ref".into(),
        k_plus: default_k_plus(spec.count),
        beta: 0.05,
        delta,
    })
}


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
}

/// The smallest m the daemon accepts (docs/audit.md, Canaries: at least 200).
pub const MIN_CANARIES: usize = 200;

/// The largest m accepted (1000 is typical; the manifest is stored whole).
pub const MAX_CANARIES: usize = 10_000;

/// The longest canary accepted, in tokens (32-64 is typical for random-token canaries).
pub const MAX_CANARY_LENGTH: usize = 256;

impl CanarySpec {
    /// Refuses too few, too many, too short or too long canaries, naming the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(MIN_CANARIES..=MAX_CANARIES).contains(&self.count) {
            return Err(TrainError::BadSpec {
                field: "canaries.count",
                reason: format!("must lie in [{MIN_CANARIES}, {MAX_CANARIES}] (fewer cannot bound epsilon usefully), got {}", self.count),
            });
        }
        if !(8..=MAX_CANARY_LENGTH).contains(&self.length) {
            return Err(TrainError::BadSpec { field: "canaries.length", reason: format!("must lie in [8, {MAX_CANARY_LENGTH}] tokens, got {}", self.length) });
        }
        Ok(())
    }

    /// Advice for a dataset of `units` (docs/audit.md, Canaries): m/2 extra examples are cheap only when
    /// the data holds at least 10 m.
    pub fn warnings(&self, units: usize) -> Vec<String> {
        if units < 10 * self.count {
            vec![format!("the dataset holds {units} units, fewer than 10 x {} canaries: about {} canaries are added; consider fewer", self.count, self.count / 2)]
        } else {
            Vec::new()
        }
    }
}

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
) -> Result<CanaryAudit, AuditError> {
    use super::logprobs::token_stats;
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
    let t = token_stats(target, &manifest.canaries, longest, 64, device);
    let b = token_stats(base, &manifest.canaries, longest, 64, device);
    let primary: Vec<f64> = t.iter().zip(&b).map(|(t, b)| score_ref(&t.logprobs, &b.logprobs)).collect();
    let secondary: Vec<f64> = t.iter().map(|t| min_k_pp(&t.logprobs, &t.mu, &t.sigma2, 0.2)).collect::<Result<_, _>>()?;
    let audit = super::bounds::one_run_audit(&primary, &manifest.included, manifest.delta, manifest.beta, &manifest.k_plus, &[0])
        .map_err(|e| AuditError::Input(e.to_string()))?;
    let ceiling = super::bounds::one_run_ceiling(manifest.canaries.len(), manifest.delta, manifest.beta).map_err(|e| AuditError::Input(e.to_string()))?;
    let classic = super::bounds::eps_classic_best(&primary, &manifest.included, manifest.delta, manifest.beta).map_err(|e| AuditError::Input(e.to_string()))?;
    let mut metrics = BTreeMap::new();
    metrics.insert("ref".to_string(), score_metrics(&primary, &manifest.included, BOOTSTRAP_SEED)?);
    metrics.insert("min_k_pp_20".to_string(), score_metrics(&secondary, &manifest.included, BOOTSTRAP_SEED)?);
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
    })
}

#[cfg(test)]
mod tests {
    //! Seeded generators (reproducible tests, not private).
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draws_distinct_canaries_and_fair_inclusion_bits() {
        // Ids 1..3 over 12 tokens: 4096 sequences, so 1000 draws would repeat some without the check.
        let spec = CanarySpec { count: 1000, length: 12 };
        let m = draw(&spec, 3, 1e-5, &mut rand_chacha::ChaCha20Rng::seed_from_u64(11)).unwrap();
        let distinct: std::collections::HashSet<_> = m.canaries.iter().collect();
        assert_eq!(distinct.len(), 1000);
        assert!(m.canaries.iter().flatten().all(|&t| (1..3).contains(&t)), "token 0 is never drawn");
        let inserted = m.included.iter().filter(|&&s| s).count();
        assert!((430..=570).contains(&inserted), "Binomial(1000, 1/2) within 4.4 sd: {inserted}");
        assert_eq!(m.k_plus, vec![10, 20, 50, 100, 200, 300, 400, 500]);
    }

    #[test]
    fn impossible_or_weak_canary_settings_are_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        let err = draw(&CanarySpec { count: 300, length: 8 }, 3, 1e-5, &mut rng).unwrap_err();
        assert!(err.to_string().contains("cannot be drawn"), "{err}");
        assert!(CanarySpec { count: 199, length: 32 }.validate().unwrap_err().to_string().contains("canaries.count"));
        assert!(CanarySpec { count: 200, length: 4 }.validate().unwrap_err().to_string().contains("canaries.length"));
        assert!(CanarySpec { count: 200, length: 32 }.validate().is_ok());
        assert!(CanarySpec { count: 200, length: 32 }.warnings(1000).len() == 1 && CanarySpec { count: 200, length: 32 }.warnings(2000).is_empty());
    }
}
