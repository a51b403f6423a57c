//! `ewtune.v1.Datasets`: register (upload, validate every line, fix the budget), get, list.

use super::auth::tenant;
use super::convert::{self, dataset_file, invalid};
use super::pb;
use crate::daemon::State;
use crate::store::{NewDataset, PrivacyUnit};
use crate::train::data::{count_units, read_records, DataConfig};
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
        let r = req.into_inner();
        let unit = match pb::PrivacyUnit::try_from(r.privacy_unit) {
            Ok(pb::PrivacyUnit::User) => PrivacyUnit::User,
            Ok(_) => PrivacyUnit::Example,
            Err(_) => return Err(invalid("privacy_unit", "unknown value")),
        };
        let user_field = match unit {
            PrivacyUnit::User if r.user_field.is_empty() => return Err(invalid("user_field", "required when privacy_unit is USER")),
            PrivacyUnit::User => Some(r.user_field.clone()),
            PrivacyUnit::Example => None,
        };
        let text = std::str::from_utf8(&r.content).map_err(|e| invalid("content", format!("not UTF-8: {e}")))?;
        let cfg = DataConfig { user_field: user_field.clone(), ..DataConfig::default() };
        let records = read_records(std::path::Path::new("content"), text, &cfg).map_err(|e| invalid("content", e))?;
        let units = count_units(&records) as u64;
        let sha = crate::digest::sha256_hex(&r.content);
        let path = dataset_file(&self.state, &sha);
        // Content-addressed: identical bytes are identical files, whichever tenant wrote them.
        if !path.exists() {
            crate::train::weights::write_bytes_atomic(&path, &r.content).map_err(|e| {
                tracing::error!(error = %e, "cannot store a dataset");
                Status::internal("cannot store the dataset")
            })?;
        }
        let d = self.state.store.register_dataset(
            &tenant,
            NewDataset {
                name: r.name,
                sha256: sha,
                path: path.display().to_string(),
                units,
                privacy_unit: unit,
                user_field,
                budget_epsilon: r.budget_epsilon,
                budget_delta: r.budget_delta,
            },
        )?;
        tracing::info!(tenant = %tenant.as_str(), dataset = %d.id.as_str(), units, "dataset registered");
        Ok(Response::new(convert::dataset(&d)))
    }

    async fn get(&self, req: Request<pb::GetDatasetRequest>) -> Result<Response<pb::Dataset>, Status> {
        let tenant = tenant(&req)?;
        let d = convert::owned_dataset(&self.state, &tenant, &req.get_ref().dataset_id)?;
        Ok(Response::new(convert::dataset(&d)))
    }

    async fn list(&self, req: Request<pb::ListDatasetsRequest>) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let tenant = tenant(&req)?;
        let datasets = self.state.store.list_datasets(&tenant)?.iter().map(convert::dataset).collect();
        Ok(Response::new(pb::ListDatasetsResponse { datasets }))
    }
}
