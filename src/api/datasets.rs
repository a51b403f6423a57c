//! `ewtune.v1.Datasets`: register (the service checks, parses, hashes and writes it:
//! `service/datasets.rs`), get, list.

use super::auth::tenant;
use super::convert::{self, invalid};
use super::pb;
use crate::service::datasets::{self, Registration};
use crate::service::{jobs, State};
use crate::store::PrivacyUnit;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The service.
pub struct DatasetsApi {
    pub(crate) state: Arc<State>,
}

#[tonic::async_trait]
impl pb::datasets_server::Datasets for DatasetsApi {
    async fn register(&self, req: Request<pb::RegisterDatasetRequest>) -> Result<Response<pb::Dataset>, Status> {
        let tenant = tenant(&req)?;
        let deadline = super::deadline::of(req.metadata());
        let r = req.into_inner();
        let privacy_unit = match pb::PrivacyUnit::try_from(r.privacy_unit) {
            Ok(pb::PrivacyUnit::User) => PrivacyUnit::User,
            Ok(_) => PrivacyUnit::Example,
            Err(_) => return Err(invalid("privacy_unit", format!("unknown value {}", r.privacy_unit))),
        };
        let registration = Registration {
            name: r.name,
            privacy_unit,
            user_field: r.user_field,
            budget_epsilon: r.budget_epsilon,
            budget_delta: r.budget_delta,
            content: r.content,
        };
        let (d, left) = datasets::register(&self.state, &tenant, deadline, registration).await?;
        Ok(Response::new(convert::dataset(&d, left.remaining_epsilon, Some(left.shared))))
    }

    async fn get(&self, req: Request<pb::GetDatasetRequest>) -> Result<Response<pb::Dataset>, Status> {
        let tenant = tenant(&req)?;
        let id = req.get_ref().dataset_id.clone();
        let dataset = crate::api::blocking(&self.state, move |state| {
            let d = jobs::owned_dataset(state, &tenant, &id)?;
            let left = state.store.units_left(&tenant, &d.id)?;
            Ok(convert::dataset(&d, left.remaining_epsilon, Some(left.shared)))
        })
        .await?;
        Ok(Response::new(dataset))
    }

    async fn list(&self, req: Request<pb::ListDatasetsRequest>) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.get_ref();
        let page = convert::page_request(r.page_size, &r.page_token)?;
        let response = crate::api::blocking(&self.state, move |state| {
            let listed = state.store.list_datasets(&tenant, page)?;
            let datasets = listed
                .items
                .iter()
                .map(|d| Ok(convert::dataset(d, state.store.remaining_epsilon(&tenant, &d.id)?, None)))
                .collect::<Result<Vec<_>, Status>>()?;
            Ok(pb::ListDatasetsResponse { datasets, next_page_token: listed.next.map(convert::page_token).unwrap_or_default() })
        })
        .await?;
        Ok(Response::new(response))
    }
}
