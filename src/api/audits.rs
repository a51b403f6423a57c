//! `ewtune.v1.Audits`: create (for a succeeded job; runs in the background, one per tenant at a
//! time), get (with the signed report), list.

use super::auth::tenant;
use super::convert::{self, invalid};
use super::jobs::job_id;
use super::pb;
use crate::audit::texts::LabeledText;
use crate::service::audits::{self, AuditView};
use crate::service::State;
use crate::store::{AuditId, AuditState};
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

/// An audit as the API shows it.
fn shown(view: AuditView) -> pb::Audit {
    let AuditView { audit: a, canary, public_key } = view;
    pb::Audit {
        audit_id: a.id.as_str().to_string(),
        job_id: a.job.as_str().to_string(),
        state: match a.state {
            AuditState::Running => pb::AuditState::Running,
            AuditState::Succeeded => pb::AuditState::Succeeded,
            AuditState::Failed => pb::AuditState::Failed,
        } as i32,
        reason: a.reason.unwrap_or_default(),
        report_json: a.report_json.unwrap_or_default(),
        signature: a.signature.unwrap_or_default(),
        public_key,
        has_canary_audit: canary.is_some(),
        epsilon_lower_bound: canary.map_or(0.0, |c| c.eps_lb),
        certified_epsilon: canary.map_or(0.0, |c| c.eps_claimed),
        violation: canary.is_some_and(|c| c.violation),
        canary_auc: canary.map_or(0.0, |c| c.primary_auc),
        created_unix_ms: a.created_at_unix_ms,
        scored: a.scored,
        to_score: a.to_score,
        texts: serde_json::from_str::<serde_json::Value>(&a.request_json).ok().and_then(|r| r["texts"].as_u64()).unwrap_or(0) as u32,
    }
}

#[tonic::async_trait]
impl pb::audits_server::Audits for AuditsApi {
    async fn create(&self, req: Request<pb::CreateAuditRequest>) -> Result<Response<pb::Audit>, Status> {
        let tenant = tenant(&req)?;
        let r = req.get_ref();
        let job = job_id(&r.job_id)?;
        let texts = texts(&r.texts)?;
        let view = tokio::task::block_in_place(|| {
            let audit = audits::create(&self.state, &tenant, &job, texts, r.max_tokens)?;
            audits::view(&self.state, audit)
        })?;
        Ok(Response::new(shown(view)))
    }

    async fn get(&self, req: Request<pb::GetAuditRequest>) -> Result<Response<pb::Audit>, Status> {
        let tenant = tenant(&req)?;
        let a = self.state.store.get_audit(&tenant, &audit_id(&req.get_ref().audit_id)?)?;
        Ok(Response::new(shown(audits::view(&self.state, a)?)))
    }

    async fn list(&self, req: Request<pb::ListAuditsRequest>) -> Result<Response<pb::ListAuditsResponse>, Status> {
        let tenant = tenant(&req)?;
        let job = match req.get_ref().job_id.as_str() {
            "" => None,
            id => Some(job_id(id)?),
        };
        let page = convert::page_request(req.get_ref().page_size, &req.get_ref().page_token)?;
        let listed = self.state.store.list_audits(&tenant, job.as_ref(), page)?;
        let audits = listed.items.into_iter().map(|a| Ok(shown(audits::view(&self.state, a)?))).collect::<Result<_, Status>>()?;
        Ok(Response::new(pb::ListAuditsResponse { audits, next_page_token: listed.next.map(convert::page_token).unwrap_or_default() }))
    }
}
