//! `ewtune.v1.Jobs`: plan (no side effects), create (reserve then queue), get, list, watch
//! (a server stream of events, in `watch.rs`), cancel, and the output files of a succeeded job
//! (a server stream of chunks, in `artifacts.rs`).

use super::auth::tenant;
use super::blocking;
use super::convert::{self, invalid, CheckedSpec};
use super::pb;
use crate::service::State;
use crate::store::{JobId, NewJob, TenantId};
use crate::train::data::DataCounts;
use crate::train::job::plan;
use crate::train::TrainError;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The service.
pub struct JobsApi {
    pub(crate) state: Arc<State>,
}

pub(crate) fn job_id(id: &str) -> Result<JobId, Status> {
    JobId::parse(id).map_err(|_| invalid("job_id", "not a job id"))
}

/// The certified epsilon of a job's steps done at `delta` (NaN, logged, if it cannot be stated).
fn job_epsilon(j: &crate::store::Job, delta: f64) -> f64 {
    j.certified_epsilon_spent(delta).unwrap_or_else(|e| {
        tracing::warn!(job = %j.id.as_str(), error = %e, "cannot account a job's spend");
        f64::NAN
    })
}

/// A spec settled for admission: the training spec with sigma and steps fixed, its plan, the
/// dataset, the canary manifest drawn for it (Create only) and advice.
struct Settled {
    spec: crate::train::job::JobSpec,
    plan: crate::train::job::Plan,
    dataset: crate::store::Dataset,
    manifest_json: Option<String>,
    warnings: Vec<String>,
    vocab: i64,
}

/// Settles `req` (blocking: runs on the CPU pool). With canaries and `draw`, draws the manifest
/// from the OS CSPRNG (m canaries, S_i each 1/2) and plans over the dataset's units plus the
/// inserted ones; without `draw` (Plan: no side effects) it assumes m/2 inserted.
fn settle(state: &State, tenant: &TenantId, req: &pb::JobSpec, draw: bool) -> Result<Settled, Status> {
    let dataset = convert::owned_dataset(state, tenant, &req.dataset_id)?;
    let CheckedSpec { mut spec, model } = convert::job_spec(state, &dataset, req)?;
    let mut units = dataset.units as usize;
    let mut manifest_json = None;
    let mut warnings = Vec::new();
    if let Some(c) = &spec.canaries {
        warnings.extend(c.warnings(units));
        let per_example = spec.data_config.max_length;
        if c.length > per_example {
            return Err(invalid("canaries.length", format!("{} tokens exceed the job's {per_example} tokens per example (max_length, at most the model's context)", c.length)));
        }
        if draw {
            let mut rng = crate::train::noise::os_seeded_rng().map_err(|e| Status::internal(e.to_string()))?;
            let manifest = crate::train::canaries::draw(c, model.vocab_size, spec.privacy.delta, &mut rng).map_err(|e| invalid("canaries", e))?;
            units += manifest.included.iter().filter(|&&s| s).count();
            manifest_json = Some(serde_json::to_string(&manifest).expect("manifests serialize"));
        } else {
            units += c.count / 2;
        }
    }
    spec.expected_units = Some(units);
    let p = plan(&spec, units).map_err(plan_error)?;
    // The daemon fixes sigma and steps now: the job runs exactly what was reserved.
    spec.privacy.epsilon = None;
    spec.privacy.noise_multiplier = Some(p.noise_multiplier);
    spec.training.steps = Some(p.steps);
    Ok(Settled { spec, plan: p, dataset, manifest_json, warnings, vocab: model.vocab_size })
}

/// What the dataset holds as `spec` would read it (examples, units, truncated and dropped
/// examples), from the cache or by reading and tokenising the file (blocking: runs on the CPU
/// pool). The counts describe the tenant's own data to the tenant: they are never logged.
fn data_counts(state: &State, tenant: &TenantId, settled: &Settled) -> Result<DataCounts, Status> {
    let spec = &settled.spec;
    let model_name = spec.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tokenizer_path = spec.model.join("tokenizer.json");
    let no_tokenizer = || Status::failed_precondition(format!("base_model: model {} has no readable tokenizer.json", super::limits::quote(&model_name)));
    let tokenizer_bytes = std::fs::read(&tokenizer_path).map_err(|_| no_tokenizer())?;
    let key = serde_json::json!([
        tenant.as_str(),
        settled.dataset.id.as_str(),
        crate::digest::sha256_hex(&tokenizer_bytes),
        crate::train::chat::template_digest(&spec.model),
        settled.vocab,
        spec.data_config,
    ])
    .to_string();
    if let Some(c) = state.data_counts.get(&key) {
        return Ok(c);
    }
    let tokenizer = tokenizers::Tokenizer::from_bytes(&tokenizer_bytes).map_err(|_| no_tokenizer())?;
    let encoder = crate::train::data::Encoder::for_model(&tokenizer, &spec.model);
    let counts = crate::train::data::count(&spec.data, encoder, &spec.data_config, settled.vocab).map_err(|e| match e {
        TrainError::BadDataset { .. } => Status::failed_precondition(format!("the dataset cannot be read with this model: {}", e.without_paths())),
        TrainError::BadSpec { field, reason } => invalid(field, reason),
        other => {
            tracing::error!(error = %other, "cannot count a dataset");
            Status::internal("the daemon cannot read the dataset; see its log")
        }
    })?;
    state.data_counts.put(key, counts);
    Ok(counts)
}

/// A plan that cannot be made: a spec the accountant cannot certify or calibrate is the
/// client's to change (InvalidArgument, or FailedPrecondition when no noise reaches the target).
fn plan_error(e: TrainError) -> Status {
    use ewtune_accountant::Error as AccountantError;
    match e {
        TrainError::BadSpec { field, reason } => invalid(field, reason),
        TrainError::Accountant(a @ (AccountantError::InvalidArgument { .. } | AccountantError::OutOfRange { .. })) => {
            Status::invalid_argument(format!("the privacy accountant refuses this job: {a}"))
        }
        TrainError::Accountant(a) => Status::failed_precondition(format!("the privacy accountant cannot plan this job: {a}")),
        other => {
            tracing::error!(error = %other, "planning failed");
            Status::internal("planning failed; see the daemon's log")
        }
    }
}

impl JobsApi {
    /// Settles `req` on the CPU pool under the request's deadline.
    async fn settle_off_runtime(&self, tenant: &TenantId, metadata: &tonic::metadata::MetadataMap, req: &pb::JobSpec, draw: bool) -> Result<Settled, Status> {
        let deadline = crate::service::cpu_pool::deadline(metadata);
        let (state, t, r) = (self.state.clone(), tenant.clone(), req.clone());
        self.state.cpu.run(tenant, deadline, move || settle(&state, &t, &r, draw)).await?
    }
}

/// A stored job as the API shows it, with its certified spend, canary commitment and, once it
/// succeeded, its recorded output files.
fn shown(state: &State, tenant: &TenantId, j: &crate::store::Job) -> Result<pb::Job, Status> {
    let delta = state.store.get_dataset(tenant, &j.dataset)?.budget_delta;
    let eps = job_epsilon(j, delta);
    let sha = state.store.canary_manifest_sha256(&j.id)?;
    let (_, outputs) = state.store.job_outputs(tenant, &j.id)?;
    Ok(convert::job(j, eps, sha, &outputs))
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for JobsApi {
    async fn plan(&self, req: Request<pb::JobSpec>) -> Result<Response<pb::PlanResponse>, Status> {
        let tenant = tenant(&req)?;
        let deadline = crate::service::cpu_pool::deadline(req.metadata());
        let (state, t, r) = (self.state.clone(), tenant.clone(), req.get_ref().clone());
        let (settled, counts) = self
            .state
            .cpu
            .run(&tenant, deadline, move || {
                let settled = settle(&state, &t, &r, false)?;
                let counts = data_counts(&state, &t, &settled)?;
                Ok::<_, Status>((settled, counts))
            })
            .await??;
        let Settled { plan: p, dataset: d, warnings, .. } = settled;
        let t = tenant.clone();
        let remaining_epsilon_before = blocking(&self.state, move |s| Ok(s.store.remaining_epsilon(&t, &d.id)?)).await?;
        Ok(Response::new(pb::PlanResponse {
            units: p.units as u64,
            sample_rate: p.sample_rate,
            steps: p.steps,
            noise_multiplier: p.noise_multiplier,
            certified_epsilon: p.certified_epsilon,
            edgeworth_epsilon: p.edgeworth_epsilon,
            delta: p.delta,
            remaining_epsilon_before,
            warnings,
            examples: counts.examples as u64,
            dataset_units: counts.units as u64,
            truncated_examples: counts.truncated_examples as u64,
            dropped_examples: counts.dropped_examples as u64,
        }))
    }

    async fn create(&self, req: Request<pb::JobSpec>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&req)?;
        let Settled { spec, plan: p, dataset: d, manifest_json, .. } = self.settle_off_runtime(&tenant, req.metadata(), req.get_ref(), true).await?;
        let t = tenant.clone();
        let shown_job = blocking(&self.state, move |s| {
                let job = s.store.create_job(
                    &t,
                    NewJob {
                        dataset: d.id.clone(),
                        spec_json: serde_json::to_string(&spec).expect("specs serialize"),
                        noise_multiplier: p.noise_multiplier,
                        sample_rate: p.sample_rate,
                        steps: p.steps,
                        canary_manifest_json: manifest_json,
                    },
                )?;
                tracing::info!(tenant = %t.as_str(), job = %job.id.as_str(), certified_epsilon = p.certified_epsilon, "job queued");
                shown(s, &t, &job)
            })
            .await?;
        self.state.wake.notify_one();
        Ok(Response::new(shown_job))
    }

    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&req)?;
        let id = job_id(&req.get_ref().job_id)?;
        let job = blocking(&self.state, move |s| shown(s, &tenant, &s.store.get_job(&tenant, &id)?)).await?;
        Ok(Response::new(job))
    }

    async fn list(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = tenant(&req)?;
        let page = convert::page_request(req.get_ref().page_size, &req.get_ref().page_token)?;
        blocking(&self.state, move |s| {
            let listed = s.store.list_jobs(&tenant, page)?;
            let jobs = listed.items.iter().map(|j| shown(s, &tenant, j)).collect::<Result<_, Status>>()?;
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
        let job = blocking(&self.state, move |s| shown(s, &tenant, &s.store.request_cancel(&tenant, &id)?)).await?;
        Ok(Response::new(job))
    }
}
