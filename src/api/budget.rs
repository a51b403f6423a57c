//! `ewtune.v1.Budget`: a dataset's privacy-budget report, issued by the store (naming the tenant,
//! the dataset, the time and the dataset's next sequence number) and signed with the daemon's key.

use super::auth::tenant;
use super::convert;
use super::pb;
use crate::service::State;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The service.
pub struct BudgetApi {
    pub(crate) state: Arc<State>,
}

#[tonic::async_trait]
impl pb::budget_server::Budget for BudgetApi {
    async fn get(&self, req: Request<pb::GetBudgetRequest>) -> Result<Response<pb::BudgetReport>, Status> {
        let tenant = tenant(&req)?;
        // SQLite and the accountant block: let the runtime move other requests off this thread.
        let report = tokio::task::block_in_place(|| {
            let d = convert::owned_dataset(&self.state, &tenant, &req.get_ref().dataset_id)?;
            Ok::<_, Status>(self.state.store.budget_report(&tenant, &d.id)?)
        })?;
        let json = serde_json::to_string(&report).expect("reports serialize");
        Ok(Response::new(pb::BudgetReport {
            signature: self.state.signer.sign(json.as_bytes()),
            public_key: self.state.signer.public_key(),
            report_json: json,
            budget_epsilon: report.budget_epsilon,
            spent_epsilon: report.spent_epsilon,
            committed_epsilon: report.committed_epsilon,
            remaining_epsilon: report.remaining_epsilon,
            spent_edgeworth_epsilon: report.spent_epsilon_edgeworth_estimate.unwrap_or(f64::NAN),
        }))
    }
}
