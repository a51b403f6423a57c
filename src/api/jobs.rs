//! `ewtune.v1.Jobs`: plan (no side effects), create (reserve then queue), get, list, watch
//! (a server stream of events, in `watch.rs`), cancel, and the output files of a succeeded job
//! (a server stream of chunks, in `artifacts.rs`).

use super::auth::tenant;
use super::blocking;
use super::convert::{self, invalid};
use super::pb;
use crate::service::jobs::{self, Settled};
use crate::service::State;
use crate::store::{JobId, TenantId};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The service.
pub struct JobsApi {
    pub(crate) state: Arc<State>,
}

pub(crate) fn job_id(id: &str) -> Result<JobId, Status> {
    JobId::parse(id).map_err(|_| invalid("job_id", "not a job id"))
}

impl JobsApi {
    /// Settles `req` on the CPU pool under the request's deadline.
    async fn settle_on_pool(&self, tenant: &TenantId, metadata: &tonic::metadata::MetadataMap, req: &pb::JobSpec, draw: bool) -> Result<Settled, Status> {
        let deadline = super::deadline::of(metadata);
        let (state, t, r) = (self.state.clone(), tenant.clone(), convert::job_request(req));
        Ok(self.state.cpu.run(tenant, deadline, move || jobs::settle(&state, &t, &r, draw)).await??)
    }
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for JobsApi {
    async fn plan(&self, req: Request<pb::JobSpec>) -> Result<Response<pb::PlanResponse>, Status> {
        let tenant = tenant(&req)?;
        let deadline = super::deadline::of(req.metadata());
        let (state, t, r) = (self.state.clone(), tenant.clone(), convert::job_request(req.get_ref()));
        let (settled, counts) = self
            .state
            .cpu
            .run(&tenant, deadline, move || {
                let settled = jobs::settle(&state, &t, &r, false)?;
                let counts = jobs::data_counts(&state, &t, &settled)?;
                Ok::<_, crate::service::ServiceError>((settled, counts))
            })
            .await??;
        let Settled { plan: p, dataset: d, warnings, .. } = settled;
        let (t, group) = (tenant.clone(), ewtune_accountant::StepGroup { noise_multiplier: p.noise_multiplier, sample_rate: p.sample_rate, steps: p.steps });
        let preview = blocking(&self.state, move |s| Ok(s.store.preview_admission(&t, &d.id, group)?)).await?;
        Ok(Response::new(pb::PlanResponse {
            units: p.units as u64,
            sample_rate: p.sample_rate,
            steps: p.steps,
            noise_multiplier: p.noise_multiplier,
            certified_epsilon: p.certified_epsilon,
            edgeworth_epsilon: p.edgeworth_epsilon,
            delta: p.delta,
            remaining_epsilon_before: preview.remaining_before,
            warnings,
            examples: counts.examples as u64,
            dataset_units: counts.units as u64,
            truncated_examples: counts.truncated_examples as u64,
            dropped_examples: counts.dropped_examples as u64,
            admitted: preview.refusal.is_none(),
            remaining_epsilon_after: preview.remaining_after,
            largest_admissible_epsilon: preview.largest_target_epsilon.unwrap_or(0.0),
            refusal: preview.refusal.map(|r| r.to_string()).unwrap_or_default(),
        }))
    }

    async fn create(&self, req: Request<pb::JobSpec>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&req)?;
        let settled = self.settle_on_pool(&tenant, req.metadata(), req.get_ref(), true).await?;
        let view = blocking(&self.state, move |s| Ok(jobs::create(s, &tenant, settled)?)).await?;
        Ok(Response::new(convert::job(&view)))
    }

    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&req)?;
        let id = job_id(&req.get_ref().job_id)?;
        let view = blocking(&self.state, move |s| Ok(jobs::view(s, &tenant, s.store.get_job(&tenant, &id)?)?)).await?;
        Ok(Response::new(convert::job(&view)))
    }

    async fn list(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = tenant(&req)?;
        let page = convert::page_request(req.get_ref().page_size, &req.get_ref().page_token)?;
        blocking(&self.state, move |s| {
            let listed = s.store.list_jobs(&tenant, page)?;
            let jobs = listed.items.into_iter().map(|j| Ok(convert::job(&jobs::view(s, &tenant, j)?))).collect::<Result<_, Status>>()?;
            Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token: listed.next.map(convert::page_token).unwrap_or_default() }))
        })
        .await
    }

    type WatchStream = super::watch::WatchStream;

    async fn watch(&self, req: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchStream>, Status> {
        super::watch::watch(&self.state, req).await
    }

    type GetArtifactsStream = super::artifacts::ArtifactStream;

    async fn get_artifacts(&self, req: Request<pb::GetArtifactsRequest>) -> Result<Response<Self::GetArtifactsStream>, Status> {
        super::artifacts::get_artifacts(&self.state, req).await
    }

    async fn cancel(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&req)?;
        let id = job_id(&req.get_ref().job_id)?;
        let view = blocking(&self.state, move |s| Ok(jobs::view(s, &tenant, s.store.request_cancel(&tenant, &id)?)?)).await?;
        Ok(Response::new(convert::job(&view)))
    }
}
