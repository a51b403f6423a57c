//! The audit report (docs/audit.md, The report), one per audit: which models (by SHA-256) and
//! settings were audited, membership metrics on labelled texts (`data_mia`, aggregates only: no
//! text leaves in a report) and the one-run canary audit with its violation alarm. The daemon
//! signs its exact JSON bytes (`service/signing.rs`), as it signs budget reports. Every report
//! says when it was assembled (`issued_at_unix_ms`, unix milliseconds UTC); the daemon also
//! names the tenant and the audit it is issued for, so a signed report cannot be passed off as
//! another tenant's or another audit's.

use super::canary::{audit_canaries, CanaryAudit};
use crate::train::canaries::Manifest;
use super::scores::REPORTED_RATIOS;
use super::texts::{audit_texts, LabeledText, ScoreMetrics, BOOTSTRAP_SEED};
use crate::train::model::Model;
use crate::train::peft_adapter::{load_trained, AdapterBase};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Device;

/// Audit errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Bad input (names the problem).
    #[error("{0}")]
    Input(String),
    /// A model or tokenizer could not be loaded.
    #[error("{0}")]
    Model(#[from] crate::train::TrainError),
    /// A score could not be computed.
    #[error("score: {0}")]
    Score(#[from] super::scores::ScoreError),
    /// A metric could not be computed.
    #[error("metric: {0}")]
    Metric(#[from] crate::stats::metrics::MetricError),
}

/// Version of the report format.
pub const AUDIT_VERSION: &str = "1";

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// The tenant the report is issued to, for daemon audits.
    pub tenant: Option<String>,
    /// The audit, for daemon audits.
    pub audit_id: Option<String>,
    /// When the report was assembled: unix milliseconds, UTC.
    pub issued_at_unix_ms: i64,
    /// The audited job, for daemon audits.
    pub job_id: Option<String>,
    /// Report format version.
    pub audit_version: &'static str,
    /// What computed it.
    pub software: BTreeMap<&'static str, String>,
    /// What was audited.
    pub models: ModelHashes,
    /// How.
    pub config: AuditConfig,
    /// Membership metrics on labelled texts, when texts were given.
    pub data_mia: Option<DataMia>,
    /// The one-run canary audit, when the job inserted canaries.
    pub canary_audit: Option<CanaryAudit>,
}

/// SHA-256 of the audited files.
#[derive(Debug, Clone, Serialize)]
pub struct ModelHashes {
    /// The fine-tuned model (or adapter) directory: every file, by name, in order.
    pub target_sha256: String,
    /// The base model directory, likewise.
    pub base_sha256: String,
    /// The tokenizer used for texts.
    pub tokenizer_sha256: Option<String>,
    /// Scoring precision.
    pub dtype: &'static str,
}

/// Scoring settings.
#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    /// Tokens scored per text at most.
    pub max_tokens: usize,
    /// Which end is kept when a text is cut.
    pub truncation: &'static str,
    /// Whether a BOS token is added beyond the tokenizer's own post-processor.
    pub prepend_bos: bool,
    /// Which tokens are scored.
    pub token_mask: &'static str,
    /// Min-K% ratios reported.
    pub k_ratios: Vec<f64>,
    /// Bootstrap settings of every interval.
    pub bootstrap: BTreeMap<&'static str, serde_json::Value>,
}

/// Membership metrics on labelled texts.
#[derive(Debug, Clone, Serialize)]
pub struct DataMia {
    /// Texts labelled member.
    pub n_members: usize,
    /// Texts labelled non-member.
    pub n_nonmembers: usize,
    /// Texts cut at `max_tokens`.
    pub n_truncated: usize,
    /// NaN scores dropped, per score.
    pub dropped_nan: BTreeMap<String, usize>,
    /// Metrics per score.
    pub scores: BTreeMap<String, ScoreMetrics>,
}

/// What a reader of an audit report needs at a glance: the one-run canary audit's bound against
/// the job's claim. Read from a fresh report ([`AuditReport::canary_verdict`]) or from the stored,
/// signed JSON ([`CanaryVerdict::of_json`]) through typed fields: a report whose canary audit
/// lacks one of them is an error, never a silent "no violation".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryVerdict {
    /// The one-run epsilon lower bound at 95 % (`best.eps_lb`).
    pub eps_lb: f64,
    /// The certified epsilon the job claimed (0 when unknown).
    pub eps_claimed: f64,
    /// The bound exceeds the claim: the DP claim is refuted.
    pub violation: bool,
    /// AUC of the primary score on the canaries (0 when not computed).
    pub primary_auc: f64,
}

impl AuditReport {
    /// The canary verdict, when the job inserted canaries.
    pub fn canary_verdict(&self) -> Option<CanaryVerdict> {
        self.canary_audit.as_ref().map(|c| CanaryVerdict {
            eps_lb: c.best.eps_lb,
            eps_claimed: c.eps_claimed.unwrap_or(0.0),
            violation: c.violation,
            primary_auc: c.metrics.get(&c.primary_score).map_or(0.0, |m| m.auc),
        })
    }
}

impl CanaryVerdict {
    /// The verdict of a stored report (`None`: no canary audit). The fields are read as
    /// [`AuditReport`] and [`CanaryAudit`] serialise them (a test ties the two together).
    pub fn of_json(report_json: &str) -> Result<Option<CanaryVerdict>, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Report {
            canary_audit: Option<Canary>,
        }
        #[derive(serde::Deserialize)]
        struct Canary {
            best: Best,
            eps_claimed: Option<f64>,
            violation: bool,
            primary_score: String,
            metrics: BTreeMap<String, Metrics>,
        }
        #[derive(serde::Deserialize)]
        struct Best {
            eps_lb: f64,
        }
        #[derive(serde::Deserialize)]
        struct Metrics {
            auc: Option<f64>,
        }
        let report: Report = serde_json::from_str(report_json)?;
        Ok(report.canary_audit.map(|c| CanaryVerdict {
            eps_lb: c.best.eps_lb,
            eps_claimed: c.eps_claimed.unwrap_or(0.0),
            violation: c.violation,
            primary_auc: c.metrics.get(&c.primary_score).and_then(|m| m.auc).unwrap_or(0.0),
        }))
    }
}

/// What to audit.
pub struct AuditInputs<'a> {
    /// The job, for daemon audits.
    pub job_id: Option<String>,
    /// The fine-tuned model: an HF directory or a PEFT adapter directory.
    pub target_dir: &'a Path,
    /// Where a PEFT adapter target's base model is (the daemon gives the job's base: its
    /// adapters name their base by the client's name for it).
    pub adapter_base: AdapterBase<'a>,
    /// The model before fine-tuning.
    pub base_dir: &'a Path,
    /// Labelled texts (1 = member), possibly none.
    pub texts: &'a [LabeledText],
    /// The job's canary manifest and the SHA-256 committed for it before training.
    pub manifest: Option<(&'a Manifest, &'a str)>,
    /// The certified epsilon the job spent.
    pub eps_claimed: Option<f64>,
    /// Tokens per text (default and ceiling: the model's context; 1024 without one). Canaries
    /// are always scored whole.
    pub max_tokens: Option<usize>,
    /// Where to score.
    pub device: Device,
    /// Told `(done, total)` scorings as they happen ([`super::logprobs::Scoring`]).
    pub progress: &'a dyn Fn(u64, u64),
}

/// Runs every part of the audit `inputs` asks for and assembles the report.
pub fn build_report(inputs: &AuditInputs<'_>) -> Result<AuditReport, AuditError> {
    if inputs.texts.is_empty() && inputs.manifest.is_none() {
        return Err(AuditError::Input("nothing to audit: the job inserted no canaries and no texts were given".into()));
    }
    let target = load_trained(inputs.target_dir, inputs.adapter_base, inputs.device)?;
    let base = Model::load_output(inputs.base_dir, inputs.device)?;
    let context = target.max_positions().map(|p| p as usize);
    let max_tokens = match (inputs.max_tokens, context) {
        (Some(m), Some(c)) => m.min(c),
        (Some(m), None) => m,
        (None, c) => c.unwrap_or(1024),
    };
    if max_tokens < 2 {
        return Err(AuditError::Input("max_tokens must be >= 2 (one scored token)".into()));
    }
    let total = inputs.texts.len() as u64 * super::texts::SCORINGS_PER_TEXT
        + inputs.manifest.map_or(0, |(m, _)| m.canaries.len() as u64 * super::canary::SCORINGS_PER_CANARY);
    let scoring = super::logprobs::Scoring::new(total, inputs.progress);
    let tokenizer_path = crate::train::peft_adapter::tokenizer_path(&inputs.base_dir, crate::train::peft_adapter::AdapterBase::Recorded)?;
    let mut tokenizer_sha256 = None;
    let data_mia = if inputs.texts.is_empty() {
        None
    } else {
        let bytes = std::fs::read(&tokenizer_path).map_err(|e| AuditError::Input(format!("cannot read {}: {e}", tokenizer_path.display())))?;
        tokenizer_sha256 = Some(crate::digest::sha256_hex(&bytes));
        let tokenizer = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| AuditError::Input(format!("{}: {e}", tokenizer_path.display())))?;
        let audit = audit_texts(&target, Some(&base), &tokenizer, inputs.texts, max_tokens, inputs.device, &scoring)?;
        let n_members = inputs.texts.iter().filter(|t| t.label == 1).count();
        Some(DataMia {
            n_members,
            n_nonmembers: inputs.texts.len() - n_members,
            n_truncated: audit.texts.iter().filter(|t| t.truncated).count(),
            dropped_nan: audit.metrics.iter().map(|(k, m)| (k.clone(), m.dropped_nan)).collect(),
            scores: audit.metrics,
        })
    };
    let canary_audit = inputs.manifest.map(|(m, sha)| audit_canaries(m, sha, &target, &base, inputs.eps_claimed, inputs.device, &scoring)).transpose()?;
    let mut software = BTreeMap::new();
    software.insert("crate", format!("ewtune {}", env!("CARGO_PKG_VERSION")));
    software.insert("zlib", "flate2 (zlib backend)".to_string());
    software.insert("libtorch", "tch 0.24".to_string());
    let mut bootstrap = BTreeMap::new();
    bootstrap.insert("B", serde_json::json!(crate::stats::metrics::BootstrapConfig::default().resamples));
    bootstrap.insert("seed", serde_json::json!(BOOTSTRAP_SEED));
    bootstrap.insert("method", serde_json::json!("stratified-percentile"));
    Ok(AuditReport {
        tenant: None,
        audit_id: None,
        issued_at_unix_ms: now_unix_ms(),
        job_id: inputs.job_id.clone(),
        audit_version: AUDIT_VERSION,
        software,
        models: ModelHashes { target_sha256: dir_sha256(inputs.target_dir)?, base_sha256: dir_sha256(inputs.base_dir)?, tokenizer_sha256, dtype: "f32" },
        config: AuditConfig {
            max_tokens,
            truncation: "head",
            prepend_bos: false,
            token_mask: "all but the first token",
            k_ratios: REPORTED_RATIOS.to_vec(),
            bootstrap,
        },
        data_mia,
        canary_audit,
    })
}

/// Now, in unix milliseconds (0 if the clock is before 1970).
fn now_unix_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// SHA-256 over a model directory: for every regular file, sorted by name, its name, a NUL,
/// its length and its bytes. A single file hashes the same way, as a one-file directory.
pub fn dir_sha256(path: &Path) -> Result<String, AuditError> {
    let err = |e: std::io::Error| AuditError::Input(format!("cannot hash {}: {e}", path.display()));
    let mut files: Vec<std::path::PathBuf> = if path.is_dir() {
        std::fs::read_dir(path).map_err(err)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for f in files {
        let bytes = std::fs::read(&f).map_err(err)?;
        ctx.update(f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        ctx.update(&[0]);
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(&bytes);
    }
    Ok(crate::digest::hex(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::bounds::OneRunRow;
    use crate::audit::texts::ScoreMetrics;

    fn metrics(auc: f64) -> ScoreMetrics {
        ScoreMetrics { auc, auc_ci95: [auc - 0.1, auc + 0.1], tpr_at_1pct_fpr: 0.02, tpr_at_fpr: BTreeMap::new(), dropped_nan: 0, roc: crate::audit::texts::RocCurve { members: 1, nonmembers: 1, points: vec![[0, 0], [1, 1]] } }
    }

    /// The verdict read back from a report's JSON is the verdict of the report itself, for every
    /// field: renaming one in `CanaryAudit` or `AuditReport` fails here (or in `of_json`), never
    /// silently turning a violation into none.
    #[test]
    fn verdict_of_the_signed_json_matches_the_report() {
        let row = OneRunRow { k_plus: 20, k_minus: 0, r: 20, v: 19, eps_lb: 1.75 };
        let canary = CanaryAudit {
            m: 1000,
            n_included: 497,
            canary_type: "random_tokens".into(),
            primary_score: "ref".into(),
            manifest_sha256: "ab".repeat(32),
            delta: 1e-5,
            beta: 0.05,
            correction: "bonferroni",
            grid_size: 8,
            best: row,
            grid: vec![row],
            eps_claimed: Some(1.25),
            violation: true,
            eps_ceiling_for_m: 3.5,
            eps_classic_heuristic: 0.4,
            metrics: [("ref".to_string(), metrics(0.93)), ("min_k_pp_20".to_string(), metrics(0.61))].into(),
            histograms: BTreeMap::new(),
        };
        let config = AuditConfig { max_tokens: 64, truncation: "right", prepend_bos: false, token_mask: "all", k_ratios: vec![0.2], bootstrap: BTreeMap::new() };
        let models = ModelHashes { target_sha256: "t".into(), base_sha256: "b".into(), tokenizer_sha256: None, dtype: "f32" };
        let mut report = AuditReport {
            tenant: Some("acme".into()),
            audit_id: None,
            issued_at_unix_ms: 1,
            job_id: None,
            audit_version: AUDIT_VERSION,
            software: BTreeMap::new(),
            models,
            config,
            data_mia: None,
            canary_audit: Some(canary),
        };
        let expected = CanaryVerdict { eps_lb: 1.75, eps_claimed: 1.25, violation: true, primary_auc: 0.93 };
        assert_eq!(report.canary_verdict(), Some(expected));
        assert_eq!(CanaryVerdict::of_json(&serde_json::to_string(&report).unwrap()).unwrap(), Some(expected));
        report.canary_audit = None;
        assert_eq!(CanaryVerdict::of_json(&serde_json::to_string(&report).unwrap()).unwrap(), None);
        // A canary audit without its verdict is an error, not "no violation".
        assert!(CanaryVerdict::of_json(r#"{"canary_audit": {"best": {"eps_lb": 2.0}, "eps_claimed": 1.0, "primary_score": "ref", "metrics": {}}}"#).is_err());
    }
}
