//! Runs the membership audits of succeeded jobs: one at a time on a low-priority thread (scoring
//! is CPU or GPU bound), loading the job's final model, its base model and the canary manifest
//! committed at admission, and ends each audit in the store with its report signed by the
//! daemon's key, or with the reason it failed. Audits read the model only; they spend no budget.

use super::State;
use crate::train::canaries::Manifest;
use crate::audit::report::{build_report, AuditError, AuditInputs};
use crate::audit::texts::LabeledText;
use crate::store::{Audit, AuditId, AuditOutcome, Job, TenantId};
use crate::train::job::JobSpec;
use std::sync::Arc;

/// What the tenant asked to audit beyond the job's canaries.
pub struct AuditRequest {
    /// Labelled texts (1 = member), possibly none. Used, never stored.
    pub texts: Vec<LabeledText>,
    /// Tokens per text (default: the model's context).
    pub max_tokens: Option<usize>,
}

/// Runs `audit` of `job` in the background and records how it ended.
pub fn start(state: Arc<State>, audit: Audit, job: Job, request: AuditRequest) {
    tokio::spawn(async move {
        let _slot = state.audit_slots.acquire().await;
        let worker = state.clone();
        let (tenant, id) = (audit.tenant.clone(), audit.id.clone());
        let result = super::run_batch("ewtune-audit", move || report_json(&worker, &job, &tenant, &id, &request)).await;
        let outcome = match result {
            Ok(Ok(json)) => AuditOutcome::Report { signature: state.signer.sign(json.as_bytes()), report_json: json },
            Ok(Err(e)) => {
                tracing::warn!(audit = %audit.id, error = %e, "audit failed");
                AuditOutcome::Failed(match &e {
                    AuditError::Model(t) => t.without_paths(),
                    // Messages naming files (a tokenizer, a checkpoint) lose the daemon's directories.
                    other => {
                        let dirs = [(&state.config.models_dir, "<models>"), (&state.config.data_dir, "<data>")];
                        dirs.iter().fold(other.to_string(), |m, (dir, name)| m.replace(dir.to_string_lossy().as_ref(), name))
                    }
                })
            }
            Err(super::BatchPanicked(message)) => {
                tracing::error!(audit = %audit.id, panic = %message, "the audit worker panicked");
                AuditOutcome::Failed("the audit worker panicked (a shape or device error)".into())
            }
        };
        if let Err(e) = state.store.finish_audit(&audit.id, outcome) {
            tracing::error!(audit = %audit.id, error = %e, "cannot record the audit's end");
        }
    });
}

/// The audit's report, issued to `tenant` as audit `id`, as the exact JSON that gets signed.
fn report_json(state: &State, job: &Job, tenant: &TenantId, id: &AuditId, request: &AuditRequest) -> Result<String, AuditError> {
    let input = |what: &str, e: &dyn std::fmt::Display| AuditError::Input(format!("{what}: {e}"));
    let spec: JobSpec = serde_json::from_str(&job.spec_json).map_err(|e| input("the job's spec", &e))?;
    let manifest: Option<(Manifest, String)> = match state.store.canary_manifest(&job.id).map_err(|e| input("the store", &e))? {
        Some((sha, json)) => Some((serde_json::from_str(&json).map_err(|e| input("the committed canary manifest", &e))?, sha)),
        None => None,
    };
    // The claim the canary audit tests: the certified epsilon of the steps that ran, at the
    // job's own delta (the manifest's).
    let claimed = job.certified_epsilon_spent(spec.privacy.delta).map_err(|e| input("accounting the job", &e))?;
    let target = super::jobs::output_dir(state, &job.id);
    // How far it has got, for Audits.Get: at most one write a second (and the last one).
    let last_write = std::cell::Cell::new(None::<std::time::Instant>);
    let progress = |done: u64, total: u64| {
        let due = last_write.get().is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) || done == total;
        if due {
            last_write.set(Some(std::time::Instant::now()));
            if let Err(e) = state.store.record_audit_progress(id, done, total) {
                tracing::warn!(audit = %id, error = %e, "cannot record the audit's progress");
            }
        }
    };
    let mut report = build_report(&AuditInputs {
        job_id: Some(job.id.as_str().to_string()),
        target_dir: &target,
        // The job's own base, whatever name its adapter_config.json gives it.
        adapter_base: crate::train::peft_adapter::AdapterBase::Given(&spec.model),
        base_dir: &spec.model,
        texts: &request.texts,
        manifest: manifest.as_ref().map(|(m, sha)| (m, sha.as_str())),
        eps_claimed: Some(claimed),
        max_tokens: request.max_tokens,
        device: spec.device.resolve()?,
        progress: &progress,
    })?;
    report.tenant = Some(tenant.to_string());
    report.audit_id = Some(id.to_string());
    if report.canary_verdict().is_some_and(|v| v.violation) {
        tracing::error!(job = %job.id, "ALARM: the canary audit's lower bound exceeds the certified epsilon: accounting or training is wrong");
    }
    Ok(serde_json::to_string(&report).expect("reports serialize"))
}
