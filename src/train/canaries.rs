//! Canaries drawn for the one-run audit and inserted into training (docs/audit.md, Canaries):
//! m random-token sequences, each included with probability 1/2 (S_i drawn from the OS CSPRNG),
//! written with the audit plan to a manifest whose SHA-256 is fixed before the first training
//! step, so the audit cannot be tuned afterwards. Included canaries are ordinary privacy units:
//! sampled like the data and counted in the N of the sampling rate. Scoring them and bounding
//! epsilon from the scores is the audit's (`audit/canary.rs`).

use super::data::Example;
use super::TrainError;
use crate::digest::sha256_hex;
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

/// Tokens per canary when none is given.
pub const DEFAULT_LENGTH: usize = 32;

fn default_length() -> usize {
    DEFAULT_LENGTH
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
    let m = draw(spec, vocab, delta, &mut super::noise::os_seeded_rng()?)?;
    let bytes = serde_json::to_vec(&m).expect("manifests serialize");
    crate::fs::write_atomic(path, &bytes)?;
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
