//! Audits as the service runs them: one is created for a succeeded job of the tenant's (with
//! labelled texts, its canaries, or both) and handed to the auditor, which scores it in the
//! background; a stored audit is shown with the canary verdict read, typed, from its signed
//! report.

use super::auditor::{self, AuditRequest};
use super::error::{Kind, ServiceError};
use super::limits::invalid;
use super::State;
use crate::audit::report::CanaryVerdict;
use crate::audit::texts::LabeledText;
use crate::store::{Audit, JobId, TenantId};
use std::sync::Arc;

/// Records a new audit of `job` and starts it in the background (blocking: the store).
pub fn create(state: &Arc<State>, tenant: &TenantId, job: &JobId, texts: Vec<LabeledText>, max_tokens: u32) -> Result<Audit, ServiceError> {
    let job = state.store.get_job(tenant, job)?;
    if texts.is_empty() && state.store.canary_manifest_sha256(&job.id)?.is_none() {
        return Err(invalid("texts", format!("job {} inserted no canaries: give member and non-member texts to audit", job.id)));
    }
    let summary = serde_json::json!({
        "texts": texts.len(),
        "members": texts.iter().filter(|t| t.label == 1).count(),
        "max_tokens": max_tokens,
    });
    let audit = state.store.create_audit(tenant, &job.id, &summary.to_string())?;
    tracing::info!(tenant = %tenant.as_str(), job = %job.id, audit = %audit.id, "audit started");
    auditor::start(state.clone(), audit.clone(), job, AuditRequest { texts, max_tokens: (max_tokens > 0).then_some(max_tokens as usize) });
    Ok(audit)
}

/// A stored audit as clients see it.
pub struct AuditView {
    /// The audit.
    pub audit: Audit,
    /// The canary audit's verdict, when its report holds one.
    pub canary: Option<CanaryVerdict>,
    /// The daemon's public key, when the report is signed.
    pub public_key: Vec<u8>,
}

/// `audit` with its canary verdict. A signed report that does not read as this daemon's report
/// format is an internal error (logged), never shown as "no violation".
pub fn view(state: &State, audit: Audit) -> Result<AuditView, ServiceError> {
    let canary = match audit.report_json.as_deref() {
        None => None,
        Some(json) => CanaryVerdict::of_json(json).map_err(|e| {
            tracing::error!(audit = %audit.id, error = %e, "a stored audit report does not read as a report");
            ServiceError::new(Kind::Internal, "the daemon cannot read this audit's report; see its log")
        })?,
    };
    let public_key = if audit.signature.is_some() { state.signer.public_key() } else { Vec::new() };
    Ok(AuditView { audit, canary, public_key })
}
