//! Proto <-> domain: request validation at the edge (every error is InvalidArgument naming the
//! field) and the conversion of results into proto messages.

use super::pb;
use crate::train::canaries::CanarySpec;
use crate::service::State;
use super::limits;
use crate::store::{Dataset, Job, JobState, Page, PrivacyUnit, TenantId};
use crate::train::precision::Precision;
use crate::train::data::DataConfig;
use crate::train::finetune::FineTune;
use crate::train::job::{DeviceChoice, JobSpec, PrivacySpec, TrainingSpec};
use crate::train::model::ConfigLimits;
use crate::train::optim::{OptimizerKind, Schedule};
use tonic::Status;

pub use super::limits::invalid;

/// Where a dataset's bytes live.
pub fn dataset_file(state: &State, id: &str) -> std::path::PathBuf {
    state.config.data_dir.join("datasets").join(format!("{id}.jsonl"))
}

/// A job spec validated against the model it names, ready to plan: the training spec (noise
/// and steps are filled in by the plan) and the model's limits.
pub struct CheckedSpec {
    /// The training spec.
    pub spec: JobSpec,
    /// What the model's config says (context, vocabulary).
    pub model: ConfigLimits,
}

/// Builds the training spec a proto job spec asks for, over `dataset`. Every number is checked
/// against its range in [`limits`] before any math; the first failure is InvalidArgument naming
/// the field and the range, an unknown model NotFound. Reads only the model's config.json.
pub fn job_spec(state: &State, dataset: &Dataset, req: &pb::JobSpec) -> Result<CheckedSpec, Status> {
    let name = limits::key("base_model", &req.base_model)?;
    if name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(invalid("base_model", format!("must name a model directory under the daemon's models dir, got {}", limits::quote(&name))));
    }
    let model = state.config.models_dir.join(&name);
    if !model.join("config.json").is_file() {
        return Err(Status::not_found(format!("base_model: no model {} in the daemon's models dir", limits::quote(&name))));
    }
    let config = ConfigLimits::read(&model).map_err(|_| invalid("base_model", format!("the config.json of model {} cannot be read", limits::quote(&name))))?;
    let finetune = match &req.finetune {
        Some(pb::job_spec::Finetune::Full(true)) => FineTune::Full,
        Some(pb::job_spec::Finetune::Full(false)) => return Err(invalid("full", "set it to true, or give lora instead")),
        Some(pb::job_spec::Finetune::Lora(l)) => lora(l, &config)?,
        None => FineTune::default(),
    };
    let (epsilon, noise) = match (req.target_epsilon, req.noise_multiplier) {
        (e, n) if e != 0.0 && n == 0.0 => (Some(limits::in_range("target_epsilon", e, limits::TARGET_EPSILON)?), None),
        (e, n) if e == 0.0 && n != 0.0 => (None, Some(limits::in_range("noise_multiplier", n, limits::NOISE_MULTIPLIER)?)),
        _ => return Err(invalid("target_epsilon", "give exactly one of target_epsilon or noise_multiplier")),
    };
    let delta = if req.delta == 0.0 { dataset.budget_delta } else { req.delta };
    if !(delta > 0.0 && delta <= dataset.budget_delta) {
        return Err(invalid("delta", format!("must lie in (0, {}] (the dataset's budget delta), got {delta}", dataset.budget_delta)));
    }
    let batch_size = limits::count_in_range("batch_size", u64::from(req.batch_size), 1, dataset.units)?;
    let (steps, epochs) = match (req.steps, req.epochs) {
        (0, 0.0) => return Err(invalid("epochs", "give epochs or steps")),
        (s, 0.0) => (Some(limits::count_in_range("steps", s, 1, limits::MAX_STEPS)?), 1.0),
        (0, e) => {
            let e = limits::in_range("epochs", e, limits::EPOCHS)?;
            let derived = (e * dataset.units as f64 / batch_size as f64).ceil();
            if derived > limits::MAX_STEPS as f64 {
                return Err(invalid("epochs", format!("{e} epochs are {derived} steps at this batch size, more than {}", limits::MAX_STEPS)));
            }
            (None, e)
        }
        _ => return Err(invalid("steps", "give steps or epochs, not both")),
    };
    let clip_norm = if req.clip_norm == 0.0 { 1.0 } else { limits::in_range("clip_norm", req.clip_norm, limits::CLIP_NORM)? };
    let learning_rate = if req.learning_rate == 0.0 { 1e-3 } else { limits::in_range("learning_rate", req.learning_rate, limits::LEARNING_RATE)? };
    let micro_batch = if req.micro_batch == 0 { 16 } else { limits::count_in_range("micro_batch", u64::from(req.micro_batch), 1, u64::from(limits::MAX_MICRO_BATCH))? };
    let context = config.context().map_or(u64::from(limits::MAX_MAX_LENGTH), |c| c.clamp(0, i64::from(limits::MAX_MAX_LENGTH)) as u64);
    let max_length = if req.max_length == 0 {
        context.min(128)
    } else {
        limits::count_in_range("max_length", u64::from(req.max_length), u64::from(limits::MIN_MAX_LENGTH), context)
            .map_err(|_| invalid("max_length", format!("must lie in [{}, {context}] (the model's context), got {}", limits::MIN_MAX_LENGTH, req.max_length)))?
    };
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
    let precision = match req.precision.as_str() {
        "" => None,
        "f32" => Some(Precision::F32),
        "bf16" => Some(Precision::Bf16),
        other => return Err(invalid("precision", format!("must be \"f32\" or \"bf16\" (or empty for the default), got {}", limits::quote(other)))),
    };
    let spec = JobSpec {
        model,
        data: dataset_file(state, dataset.id.as_str()),
        output: state.config.data_dir.join("jobs").join("unassigned"),
        eval_data: None,
        finetune,
        privacy: PrivacySpec { epsilon, noise_multiplier: noise, delta, clip_norm },
        training: TrainingSpec {
            batch_size: batch_size as usize,
            epochs,
            steps,
            micro_batch: micro_batch as usize,
            learning_rate,
            optimizer: OptimizerKind::default(),
            schedule: Schedule::Constant,
            checkpoint_every: 10,
            init_seed: 0,
        },
        data_config: DataConfig { user_field, max_length: max_length as usize, ..DataConfig::default() },
        device: DeviceChoice::Auto,
        expected_units: Some(dataset.units as usize),
        canaries,
        precision,
    };
    Ok(CheckedSpec { spec, model: config })
}

/// A LoRA config checked against the model: rank and alpha in range, every target module one
/// of the model's linear modules.
fn lora(l: &pb::LoraConfig, model: &ConfigLimits) -> Result<FineTune, Status> {
    let rank = if l.rank == 0 { 8 } else { limits::count_in_range("lora.rank", u64::from(l.rank), 1, u64::from(limits::MAX_LORA_RANK))? };
    let alpha = if l.alpha == 0.0 { 16.0 } else { limits::in_range("lora.alpha", l.alpha, limits::LORA_ALPHA)? };
    if l.target_modules.len() > limits::MAX_TARGET_MODULES {
        return Err(invalid("lora.target_modules", format!("at most {} names", limits::MAX_TARGET_MODULES)));
    }
    let known = model.linear_modules();
    for m in &l.target_modules {
        if !known.contains(&m.as_str()) && m != crate::train::finetune::ALL_LINEAR {
            return Err(invalid("lora.target_modules", format!("{} is not a linear module of this model (it has: {}, or all-linear)", limits::quote(m), known.join(", "))));
        }
    }
    Ok(FineTune::lora(rank as i64, alpha, l.target_modules.clone()))
}

/// A List request's page: its size (default and cap in [`limits::PAGE_SIZE`]) and the cursor
/// its token carries.
pub fn page_request(page_size: u32, page_token: &str) -> Result<Page, Status> {
    let (default, max) = limits::PAGE_SIZE;
    let size = match page_size {
        0 => default,
        n => n.min(max),
    };
    let after = if page_token.is_empty() {
        0
    } else {
        page_token
            .strip_prefix(PAGE_TOKEN_PREFIX)
            .and_then(|c| c.parse::<i64>().ok())
            .filter(|&c| c > 0)
            .ok_or_else(|| invalid("page_token", "not a token from a previous response of this call"))?
    };
    Ok(Page { after, size })
}

const PAGE_TOKEN_PREFIX: &str = "p1.";

/// The token that continues a listing after `cursor`.
pub fn page_token(cursor: i64) -> String {
    format!("{PAGE_TOKEN_PREFIX}{cursor}")
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

/// A job as the API shows it (`canary_manifest_sha256` empty when it inserts no canaries;
/// `outputs` the files recorded when it succeeded).
pub fn job(j: &Job, epsilon_spent: f64, canary_manifest_sha256: Option<String>, outputs: &[crate::artifacts::OutputFile]) -> pb::Job {
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
        spec_json: spec_without_paths(&j.spec_json),
        created_unix_ms: j.created_at_unix_ms,
        canary_manifest_sha256: canary_manifest_sha256.unwrap_or_default(),
        artifacts: outputs.iter().map(|f| pb::Artifact { path: f.path.clone(), size: f.size, sha256: f.sha256.clone() }).collect(),
    }
}

/// A stored job spec as a client may read it: the model by its name in the models dir, the
/// data by its dataset id, no other path on the daemon's machine.
fn spec_without_paths(spec_json: &str) -> String {
    let Ok(serde_json::Value::Object(mut spec)) = serde_json::from_str(spec_json) else {
        return String::new();
    };
    let last = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str()).and_then(|p| std::path::Path::new(p).file_name()).map(|n| n.to_string_lossy().into_owned())
    };
    let model = last(spec.get("model"));
    let data = last(spec.get("data")).map(|n| n.trim_end_matches(".jsonl").to_string());
    spec.insert("model".into(), model.into());
    spec.insert("data".into(), data.into());
    spec.remove("output");
    spec.remove("eval_data");
    serde_json::Value::Object(spec).to_string()
}

/// The tenant's dataset, NotFound otherwise.
pub fn owned_dataset(state: &State, tenant: &TenantId, id: &str) -> Result<Dataset, Status> {
    let id = crate::store::DatasetId::parse(id).map_err(|_| invalid("dataset_id", "must be the 64-hex SHA-256 of the dataset"))?;
    Ok(state.store.get_dataset(tenant, &id)?)
}
