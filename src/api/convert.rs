//! Proto <-> domain: requests copied into the service's types (the service checks them; every
//! error is InvalidArgument naming the field), page tokens, and results as proto messages.

use super::pb;
use crate::service::jobs::{CanaryRequest, FineTuneRequest, JobRequest, JobView, LoraRequest, SelfAuditRequest};
use crate::train::self_audit::SelfAuditReport;
use crate::service::limits;
use crate::store::{Dataset, JobState, Page, PrivacyUnit, SharedUnits};
use tonic::Status;

/// InvalidArgument naming `field`.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    limits::invalid(field, reason).into()
}

/// The service's request for a proto job spec: a field-for-field copy (zero or empty means the
/// default); every check happens in [`crate::service::jobs::job_spec`].
pub fn job_request(req: &pb::JobSpec) -> JobRequest {
    JobRequest {
        dataset_id: req.dataset_id.clone(),
        base_model: req.base_model.clone(),
        finetune: match &req.finetune {
            None => FineTuneRequest::Default,
            Some(pb::job_spec::Finetune::Full(full)) => FineTuneRequest::Full(*full),
            Some(pb::job_spec::Finetune::Lora(l)) => FineTuneRequest::Lora(LoraRequest { rank: l.rank, alpha: l.alpha, target_modules: l.target_modules.clone() }),
        },
        target_epsilon: req.target_epsilon,
        noise_multiplier: req.noise_multiplier,
        delta: req.delta,
        clip_norm: req.clip_norm,
        batch_size: req.batch_size,
        epochs: req.epochs,
        steps: req.steps,
        micro_batch: req.micro_batch,
        max_length: req.max_length,
        learning_rate: req.learning_rate,
        canaries: req.canaries.as_ref().map(|c| CanaryRequest { count: c.count, length: c.length }),
        precision: req.precision.clone(),
        self_audit: req.self_audit.as_ref().map(|a| SelfAuditRequest { disabled: a.disabled, canaries: a.canaries }),
    }
}

/// A List request's page: its size (default and cap in [`limits::PAGE_SIZE`]) and the cursor
/// its token carries.
pub fn page_request(page_size: u32, page_token: &str) -> Result<Page, Status> {
    let (default, max) = limits::PAGE_SIZE;
    let size = match page_size {
        0 => default,
        n => n.min(max),
    };
    let after = if page_token.is_empty() {
        0
    } else {
        page_token
            .strip_prefix(PAGE_TOKEN_PREFIX)
            .and_then(|c| c.parse::<i64>().ok())
            .filter(|&c| c > 0)
            .ok_or_else(|| invalid("page_token", "not a token from a previous response of this call"))?
    };
    Ok(Page { after, size })
}

const PAGE_TOKEN_PREFIX: &str = "p1.";

/// The token that continues a listing after `cursor`.
pub fn page_token(cursor: i64) -> String {
    format!("{PAGE_TOKEN_PREFIX}{cursor}")
}

/// A dataset as the API shows it, with the epsilon its units have left; `shared` (Register and
/// Get) says how many of its units other datasets of the tenant share and what they have left.
pub fn dataset(d: &Dataset, remaining_epsilon: f64, shared: Option<SharedUnits>) -> pb::Dataset {
    pb::Dataset {
        dataset_id: d.id.as_str().to_string(),
        name: d.name.clone(),
        privacy_unit: match d.privacy_unit {
            PrivacyUnit::Example => pb::PrivacyUnit::Example as i32,
            PrivacyUnit::User => pb::PrivacyUnit::User as i32,
        },
        units: d.units,
        budget_epsilon: d.budget_epsilon,
        budget_delta: d.budget_delta,
        created_unix_ms: d.created_at_unix_ms,
        units_shared: shared.map_or(0, |s| s.units),
        shared_units_remaining_epsilon: shared.and_then(|s| s.least_remaining_epsilon).unwrap_or(0.0),
        unit_identities: d.unit_identities.as_str().to_string(),
        remaining_epsilon,
    }
}

/// A job as the API shows it (`canary_manifest_sha256` empty when it inserts no canaries;
/// `artifacts` the files recorded when it succeeded).
pub fn job(view: &JobView) -> pb::Job {
    let JobView { job: j, epsilon_spent, canary_manifest_sha256, outputs, self_audit } = view;
    pb::Job {
        job_id: j.id.as_str().to_string(),
        dataset_id: j.dataset.as_str().to_string(),
        state: match j.state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        } as i32,
        steps_planned: j.steps_planned,
        steps_done: j.steps_done,
        noise_multiplier: j.noise_multiplier,
        sample_rate: j.sample_rate,
        epsilon_spent: *epsilon_spent,
        reason: j.reason.clone().unwrap_or_default(),
        spec_json: spec_without_paths(&j.spec_json),
        created_unix_ms: j.created_at_unix_ms,
        canary_manifest_sha256: canary_manifest_sha256.clone().unwrap_or_default(),
        artifacts: outputs.iter().map(|f| pb::Artifact { path: f.path.clone(), size: f.size, sha256: f.sha256.clone() }).collect(),
        self_audit: self_audit.as_ref().map(self_audit_message),
    }
}

/// A job's self-audit as the API shows it.
pub fn self_audit_message(r: &SelfAuditReport) -> pb::SelfAudit {
    pb::SelfAudit {
        passed: r.passed(),
        summary: r.headline(),
        canaries: r.canaries as u32,
        steps: r.steps,
        tests: r.decision.tests.iter().map(|t| pb::FitTest { name: t.name.clone(), checks: t.checks.clone(), ratio: t.ratio, p_value: t.p_value }).collect(),
        level: r.decision.level,
        failures: r.failures().to_vec(),
        certified_epsilon: r.certified_epsilon,
        steinke_epsilon: r.steinke_epsilon.unwrap_or(f64::NAN),
        delta: r.delta,
        fdp_p_value: r.fdp_p_value.unwrap_or(f64::NAN),
        fdp_in_family_epsilon: r.fdp_in_family_epsilon.unwrap_or(f64::NAN),
        warnings: r.warnings.clone(),
    }
}

/// A stored job spec as a client may read it: the model by its name in the models dir, the
/// data by its dataset id, no other path on the daemon's machine.
fn spec_without_paths(spec_json: &str) -> String {
    let Ok(serde_json::Value::Object(mut spec)) = serde_json::from_str(spec_json) else {
        return String::new();
    };
    let last = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str()).and_then(|p| std::path::Path::new(p).file_name()).map(|n| n.to_string_lossy().into_owned())
    };
    let model = last(spec.get("model"));
    let data = last(spec.get("data")).map(|n| n.trim_end_matches(".jsonl").to_string());
    spec.insert("model".into(), model.into());
    spec.insert("data".into(), data.into());
    spec.remove("output");
    spec.remove("eval_data");
    serde_json::Value::Object(spec).to_string()
}
