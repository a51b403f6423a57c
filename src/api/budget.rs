//! `ewtune.v1.Budget`: a dataset's signed privacy-budget report (`service/budget.rs`).

use super::auth::tenant;
use super::pb;
use crate::service::budget::{self, SignedBudgetReport};
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
        let signed = if req.get_ref().charts {
            // A composition per chart point: on the CPU pool, within the tenant's share.
            let (state, t, id) = (self.state.clone(), tenant.clone(), req.get_ref().dataset_id.clone());
            self.state.cpu.run(&tenant, super::deadline::of(req.metadata()), move || budget::signed_report(&state, &t, &id, true)).await??
        } else {
            // SQLite and the (memoised) accountant block briefly: let the runtime move other
            // requests off this thread.
            tokio::task::block_in_place(|| budget::signed_report(&self.state, &tenant, &req.get_ref().dataset_id, false))?
        };
        let SignedBudgetReport { report, json, signature, public_key } = signed;
        Ok(Response::new(pb::BudgetReport {
            signature,
            public_key,
            report_json: json,
            budget_epsilon: report.budget_epsilon,
            spent_epsilon: report.spent_epsilon,
            committed_epsilon: report.committed_epsilon,
            remaining_epsilon: report.remaining_epsilon,
            spent_edgeworth_epsilon: report.spent_epsilon_edgeworth_estimate.unwrap_or(f64::NAN),
            classes: report
                .classes
                .iter()
                .map(|c| pb::UnitClass {
                    units: c.units,
                    dataset_ids: c.datasets.iter().map(|d| d.as_str().to_string()).collect(),
                    spent_epsilon: c.spent_epsilon,
                    committed_epsilon: c.committed_epsilon,
                    remaining_epsilon: c.remaining_epsilon,
                    binding_dataset_id: c.binding_dataset.as_str().to_string(),
                })
                .collect(),
        }))
    }
}
