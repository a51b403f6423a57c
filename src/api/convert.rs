//! Proto <-> domain: request validation at the edge (every error is InvalidArgument naming the
//! field) and the conversion of results into proto messages.

use super::pb;
use crate::audit::canary::CanarySpec;
use crate::daemon::State;
use crate::store::{Dataset, Job, JobState, PrivacyUnit, TenantId};
use crate::train::data::DataConfig;
use crate::train::finetune::FineTune;
use crate::train::job::{DeviceChoice, JobSpec, PrivacySpec, TrainingSpec};
use crate::train::optim::{OptimizerKind, Schedule};
use tonic::Status;

/// InvalidArgument naming `field`.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// Where a dataset's bytes live.
pub fn dataset_file(state: &State, id: &str) -> std::path::PathBuf {
    state.config.data_dir.join("datasets").join(format!("{id}.jsonl"))
}

/// Builds the training spec a proto job spec asks for, over `dataset` (noise and steps are
/// filled in by the plan).
pub fn job_spec(state: &State, dataset: &Dataset, req: &pb::JobSpec) -> Result<JobSpec, Status> {
    let name = req.base_model.as_str();
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Err(invalid("base_model", "must name a model directory under the daemon's models dir"));
    }
    let model = state.config.models_dir.join(name);
    if !model.join("config.json").exists() {
        return Err(Status::not_found(format!("base_model: no model `{name}` in the daemon's models dir")));
    }
    let finetune = match &req.finetune {
        Some(pb::job_spec::Finetune::Full(true)) => FineTune::Full,
        Some(pb::job_spec::Finetune::Full(false)) => return Err(invalid("full", "set it to true, or give lora instead")),
        Some(pb::job_spec::Finetune::Lora(l)) => FineTune::Lora {
            rank: if l.rank == 0 { 8 } else { i64::from(l.rank) },
            alpha: if l.alpha == 0.0 { 16.0 } else { l.alpha },
            target_modules: l.target_modules.clone(),
        },
        None => FineTune::default(),
    };
    let (epsilon, noise) = match (req.target_epsilon, req.noise_multiplier) {
        (e, n) if e > 0.0 && n == 0.0 => (Some(e), None),
        (e, n) if e == 0.0 && n > 0.0 => (None, Some(n)),
        _ => return Err(invalid("target_epsilon", "give exactly one of target_epsilon or noise_multiplier, > 0")),
    };
    let delta = if req.delta == 0.0 { dataset.budget_delta } else { req.delta };
    if !(delta > 0.0 && delta <= dataset.budget_delta) {
        return Err(invalid("delta", format!("must lie in (0, {}] (the dataset's budget delta)", dataset.budget_delta)));
    }
    if req.batch_size == 0 {
        return Err(invalid("batch_size", "must be >= 1"));
    }
    if req.steps == 0 && !(req.epochs > 0.0 && req.epochs.is_finite()) {
        return Err(invalid("epochs", "give epochs > 0 or steps >= 1"));
    }
    let canaries = match &req.canaries {
        None => None,
        Some(c) => {
            let spec = CanarySpec { count: c.count as usize, length: if c.length == 0 { 32 } else { c.length as usize } };
            spec.validate().map_err(|e| match e {
                crate::train::TrainError::BadSpec { field, reason } => invalid(field, reason),
                other => invalid("canaries", other),
            })?;
            Some(spec)
        }
    };
    let user_field = dataset.data_user_field()?.map(str::to_string);
    Ok(JobSpec {
        model,
        data: dataset_file(state, dataset.id.as_str()),
        output: state.config.data_dir.join("jobs").join("unassigned"),
        eval_data: None,
        finetune,
        privacy: PrivacySpec { epsilon, noise_multiplier: noise, delta, clip_norm: if req.clip_norm == 0.0 { 1.0 } else { req.clip_norm } },
        training: TrainingSpec {
            batch_size: req.batch_size as usize,
            epochs: if req.epochs > 0.0 { req.epochs } else { 1.0 },
            steps: (req.steps > 0).then_some(req.steps),
            micro_batch: if req.micro_batch == 0 { 16 } else { req.micro_batch as usize },
            learning_rate: if req.learning_rate == 0.0 { 1e-3 } else { req.learning_rate },
            optimizer: OptimizerKind::default(),
            schedule: Schedule::Constant,
            checkpoint_every: 10,
            init_seed: 0,
        },
        data_config: DataConfig {
            user_field,
            max_length: if req.max_length == 0 { 128 } else { req.max_length as usize },
            ..DataConfig::default()
        },
        device: DeviceChoice::Auto,
        expected_units: Some(dataset.units as usize),
        canaries,
    })
}

/// A dataset as the API shows it.
pub fn dataset(d: &Dataset) -> pb::Dataset {
    pb::Dataset {
        dataset_id: d.id.as_str().to_string(),
        name: d.name.clone(),
        privacy_unit: match d.privacy_unit {
            PrivacyUnit::Example => pb::PrivacyUnit::Example as i32,
            PrivacyUnit::User => pb::PrivacyUnit::User as i32,
        },
        units: d.units,
        budget_epsilon: d.budget_epsilon,
        budget_delta: d.budget_delta,
        created_unix_ms: d.created_at_unix_ms,
    }
}

/// A job as the API shows it (`canary_manifest_sha256` empty when it inserts no canaries).
pub fn job(j: &Job, epsilon_spent: f64, canary_manifest_sha256: Option<String>) -> pb::Job {
    pb::Job {
        job_id: j.id.as_str().to_string(),
        dataset_id: j.dataset.as_str().to_string(),
        state: match j.state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        } as i32,
        steps_planned: j.steps_planned,
        steps_done: j.steps_done,
        noise_multiplier: j.noise_multiplier,
        sample_rate: j.sample_rate,
        epsilon_spent,
        reason: j.reason.clone().unwrap_or_default(),
        spec_json: j.spec_json.clone(),
        created_unix_ms: j.created_at_unix_ms,
        canary_manifest_sha256: canary_manifest_sha256.unwrap_or_default(),
    }
}

/// The tenant's dataset, NotFound otherwise.
pub fn owned_dataset(state: &State, tenant: &TenantId, id: &str) -> Result<Dataset, Status> {
    let id = crate::store::DatasetId::parse(id).map_err(|_| invalid("dataset_id", "must be the 64-hex SHA-256 of the dataset"))?;
    Ok(state.store.get_dataset(tenant, &id)?)
}
