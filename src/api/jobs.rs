//! `ewtune.v1.Jobs`: plan (no side effects), create (reserve then queue), get, list, watch
//! (a server stream of events), cancel.

use super::auth::tenant;
use super::convert::{self, invalid};
use super::pb;
use crate::daemon::State;
use crate::store::{JobId, JobState, NewJob};
use crate::train::job::plan;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The service.
pub struct JobsApi {
    pub(crate) state: Arc<State>,
}

fn job_id(id: &str) -> Result<JobId, Status> {
    JobId::parse(id).map_err(|_| invalid("job_id", "not a job id"))
}

fn job_epsilon(j: &crate::store::Job, delta: f64) -> f64 {
    if j.steps_done == 0 {
        return 0.0;
    }
    ewtune_accountant::History::homogeneous(j.noise_multiplier, j.sample_rate, j.steps_done)
        .and_then(|h| ewtune_accountant::pld::PldAccountant::default().epsilon(&h, delta))
        .map(|c| c.bounds.upper)
        .unwrap_or_else(|e| {
            tracing::warn!(job = %j.id.as_str(), error = %e, "cannot account a job's spend");
            f64::NAN
        })
}

impl JobsApi {
    fn plan(&self, tenant: &crate::store::TenantId, req: &pb::JobSpec) -> Result<(crate::train::job::JobSpec, crate::train::job::Plan, crate::store::Dataset), Status> {
        let d = convert::owned_dataset(&self.state, tenant, &req.dataset_id)?;
        let mut spec = convert::job_spec(&self.state, &d, req)?;
        let p = plan(&spec, d.units as usize).map_err(|e| invalid("spec", e))?;
        // The daemon fixes sigma and steps now: the job runs exactly what was reserved.
        spec.privacy.epsilon = None;
        spec.privacy.noise_multiplier = Some(p.noise_multiplier);
        spec.training.steps = Some(p.steps);
        Ok((spec, p, d))
    }

    fn delta_of(&self, tenant: &crate::store::TenantId, j: &crate::store::Job) -> Result<f64, Status> {
        Ok(self.state.store.get_dataset(tenant, &j.dataset)?.budget_delta)
    }
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for JobsApi {
    async fn plan(&self, req: Request<pb::JobSpec>) -> Result<Response<pb::PlanResponse>, Status> {
        let tenant = tenant(&req)?;
        let (_, p, d) = self.plan(&tenant, req.get_ref())?;
        let report = self.state.store.budget_report(&tenant, &d.id)?;
        Ok(Response::new(pb::PlanResponse {
            units: p.units as u64,
            sample_rate: p.sample_rate,
            steps: p.steps,
            noise_multiplier: p.noise_multiplier,
            certified_epsilon: p.certified_epsilon,
            edgeworth_epsilon: p.edgeworth_epsilon,
            delta: p.delta,
            remaining_epsilon_before: report.remaining_epsilon,
        }))
    }

    async fn create(&self, req: Request<pb::JobSpec>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&req)?;
        let (spec, p, d) = self.plan(&tenant, req.get_ref())?;
        let job = self.state.store.create_job(
            &tenant,
            NewJob {
                dataset: d.id.clone(),
                spec_json: serde_json::to_string(&spec).expect("specs serialize"),
                noise_multiplier: p.noise_multiplier,
                sample_rate: p.sample_rate,
                steps: p.steps,
            },
        )?;
        tracing::info!(tenant = %tenant.as_str(), job = %job.id.as_str(), certified_epsilon = p.certified_epsilon, "job queued");
        self.state.wake.notify_one();
        Ok(Response::new(convert::job(&job, 0.0)))
    }

    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&req)?;
        tokio::task::block_in_place(|| {
            let j = self.state.store.get_job(&tenant, &job_id(&req.get_ref().job_id)?)?;
            let eps = job_epsilon(&j, self.delta_of(&tenant, &j)?);
            Ok(Response::new(convert::job(&j, eps)))
        })
    }

    async fn list(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = tenant(&req)?;
        tokio::task::block_in_place(|| {
            let jobs = self
                .state
                .store
                .list_jobs(&tenant)?
                .iter()
                .map(|j| Ok(convert::job(j, job_epsilon(j, self.delta_of(&tenant, j)?))))
                .collect::<Result<_, Status>>()?;
            Ok(Response::new(pb::ListJobsResponse { jobs }))
        })
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

    async fn watch(&self, req: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let tenant = tenant(&req)?;
        let id = job_id(&req.get_ref().job_id)?;
        let mut after = req.get_ref().after_seq;
        self.state.store.get_job(&tenant, &id)?; // NotFound before the stream starts
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let state = self.state.clone();
        tokio::spawn(async move {
            loop {
                let events = match state.store.events_since(&tenant, &id, after) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                for e in events {
                    after = e.seq;
                    let msg = pb::JobEvent { seq: e.seq, job_id: e.job.as_str().to_string(), kind: e.kind, payload_json: e.payload_json, at_unix_ms: e.at_unix_ms };
                    if tx.send(Ok(msg)).await.is_err() {
                        return; // the client hung up
                    }
                }
                match state.store.get_job(&tenant, &id) {
                    Ok(j) if matches!(j.state, JobState::Succeeded | JobState::Failed | JobState::Cancelled) => {
                        // Drain what was appended with the terminal state, then end the stream.
                        if let Ok(rest) = state.store.events_since(&tenant, &id, after) {
                            for e in rest {
                                let msg = pb::JobEvent { seq: e.seq, job_id: e.job.as_str().to_string(), kind: e.kind, payload_json: e.payload_json, at_unix_ms: e.at_unix_ms };
                                if tx.send(Ok(msg)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cancel(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&req)?;
        let j = self.state.store.request_cancel(&tenant, &job_id(&req.get_ref().job_id)?)?;
        let eps = job_epsilon(&j, self.delta_of(&tenant, &j)?);
        Ok(Response::new(convert::job(&j, eps)))
    }
}
