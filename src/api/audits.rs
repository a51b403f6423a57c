//! `ewtune.v1.Audits`: create (for a succeeded job; runs in the background, one per tenant at a
//! time), get (with the signed report), list.

use super::auth::tenant;
use super::convert::{self, invalid};
use super::jobs::job_id;
use super::pb;
use crate::audit::texts::LabeledText;
use crate::service::auditor::{self, AuditRequest};
use crate::service::State;
use crate::store::{Audit, AuditId, AuditState};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Most texts one audit scores.
const MAX_TEXTS: usize = 100_000;

/// The service.
pub struct AuditsApi {
    pub(crate) state: Arc<State>,
}

fn audit_id(id: &str) -> Result<AuditId, Status> {
    AuditId::parse(id).map_err(|_| invalid("audit_id", "not an audit id"))
}

/// Members and non-members, checked: both classes, no empty text.
fn texts(req: &[pb::LabeledText]) -> Result<Vec<LabeledText>, Status> {
    if req.len() > MAX_TEXTS {
        return Err(invalid("texts", format!("at most {MAX_TEXTS} per audit, got {}", req.len())));
    }
    if let Some(i) = req.iter().position(|t| t.input.trim().is_empty()) {
        return Err(invalid("texts", format!("text {i} is empty")));
    }
    let members = req.iter().filter(|t| t.member).count();
    if !req.is_empty() && (members == 0 || members == req.len()) {
        return Err(invalid("texts", "give both members and non-members (membership metrics compare the two)"));
    }
    Ok(req.iter().map(|t| LabeledText { input: t.input.clone(), label: i64::from(t.member) }).collect())
}

impl AuditsApi {
    fn shown(&self, a: &Audit) -> pb::Audit {
        let report: serde_json::Value = a.report_json.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
        let canary = &report["canary_audit"];
        pb::Audit {
            audit_id: a.id.as_str().to_string(),
            job_id: a.job.as_str().to_string(),
            state: match a.state {
                AuditState::Running => pb::AuditState::Running,
                AuditState::Succeeded => pb::AuditState::Succeeded,
                AuditState::Failed => pb::AuditState::Failed,
            } as i32,
            reason: a.reason.clone().unwrap_or_default(),
            report_json: a.report_json.clone().unwrap_or_default(),
            signature: a.signature.clone().unwrap_or_default(),
            public_key: if a.signature.is_some() { self.state.signer.public_key() } else { Vec::new() },
            has_canary_audit: canary.is_object(),
            epsilon_lower_bound: canary["best"]["eps_lb"].as_f64().unwrap_or(0.0),
            certified_epsilon: canary["eps_claimed"].as_f64().unwrap_or(0.0),
            violation: canary["violation"].as_bool().unwrap_or(false),
            canary_auc: canary["metrics"]["ref"]["auc"].as_f64().unwrap_or(0.0),
            created_unix_ms: a.created_at_unix_ms,
        }
    }
}

#[tonic::async_trait]
impl pb::audits_server::Audits for AuditsApi {
    async fn create(&self, req: Request<pb::CreateAuditRequest>) -> Result<Response<pb::Audit>, Status> {
        let tenant = tenant(&req)?;
        let r = req.get_ref();
        let job = self.state.store.get_job(&tenant, &job_id(&r.job_id)?)?;
        let texts = texts(&r.texts)?;
        if texts.is_empty() && self.state.store.canary_manifest_sha256(&job.id)?.is_none() {
            return Err(invalid("texts", format!("job {} inserted no canaries: give member and non-member texts to audit", job.id)));
        }
        let summary = serde_json::json!({
            "texts": texts.len(),
            "members": texts.iter().filter(|t| t.label == 1).count(),
            "max_tokens": r.max_tokens,
        });
        let audit = tokio::task::block_in_place(|| self.state.store.create_audit(&tenant, &job.id, &summary.to_string()))?;
        tracing::info!(tenant = %tenant.as_str(), job = %job.id, audit = %audit.id, "audit started");
        let shown = self.shown(&audit);
        auditor::start(self.state.clone(), audit, job, AuditRequest { texts, max_tokens: (r.max_tokens > 0).then_some(r.max_tokens as usize) });
        Ok(Response::new(shown))
    }

    async fn get(&self, req: Request<pb::GetAuditRequest>) -> Result<Response<pb::Audit>, Status> {
        let tenant = tenant(&req)?;
        let a = self.state.store.get_audit(&tenant, &audit_id(&req.get_ref().audit_id)?)?;
        Ok(Response::new(self.shown(&a)))
    }

    async fn list(&self, req: Request<pb::ListAuditsRequest>) -> Result<Response<pb::ListAuditsResponse>, Status> {
        let tenant = tenant(&req)?;
        let job = match req.get_ref().job_id.as_str() {
            "" => None,
            id => Some(job_id(id)?),
        };
        let page = convert::page_request(req.get_ref().page_size, &req.get_ref().page_token)?;
        let listed = self.state.store.list_audits(&tenant, job.as_ref(), page)?;
        let audits = listed.items.iter().map(|a| self.shown(a)).collect();
        Ok(Response::new(pb::ListAuditsResponse { audits, next_page_token: listed.next.map(convert::page_token).unwrap_or_default() }))
    }
}
