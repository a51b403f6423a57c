//! Jobs as the service settles them: a client's request checked against the dataset and the
//! model it names and turned into a training spec ([`job_spec`]), planned by the accountant with
//! sigma and steps fixed, with its canaries drawn ([`settle`]); what the dataset holds as the
//! spec reads it ([`data_counts`]); and a stored job with its certified spend, canary commitment
//! and recorded outputs ([`view`]). Every number was range-checked by [`super::limits`] before
//! any math.

use super::error::{Kind, ServiceError};
use super::limits::{self, invalid};
use super::State;
use crate::artifacts::OutputFile;
use crate::store::{Dataset, DatasetId, Job, NewJob, TenantId};
use crate::train::canaries::{self, CanarySpec, DEFAULT_LENGTH as DEFAULT_CANARY_LENGTH};
use crate::train::data::{DataConfig, DataCounts};
use crate::train::finetune::{FineTune, ALL_LINEAR, DEFAULT_LORA_ALPHA, DEFAULT_LORA_RANK};
use crate::train::job::{plan, DeviceChoice, JobSpec, Plan, PrivacySpec, TrainingSpec, DEFAULT_CLIP_NORM};
use crate::train::model::ConfigLimits;
use crate::train::precision::Precision;
use crate::train::self_audit::{SelfAuditReport, SelfAuditSpec};
use crate::train::TrainError;
use std::path::PathBuf;

/// Steps between checkpoints of a daemon job. More often than `ewtune train`'s default: a
/// daemon's jobs are stopped and resumed (shutdown, crash) and lose at most this many steps.
pub const CHECKPOINT_EVERY: u64 = 10;

/// A job as a client asks for it, before any check. A zero number or empty string means "the
/// default" (proto3's unset).
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    /// The dataset, by its SHA-256.
    pub dataset_id: String,
    /// A model directory name under the daemon's models dir.
    pub base_model: String,
    /// LoRA (the default) or full fine-tuning.
    pub finetune: FineTuneRequest,
    /// The target epsilon (or a noise multiplier, not both).
    pub target_epsilon: f64,
    /// The noise multiplier sigma.
    pub noise_multiplier: f64,
    /// Delta (default: the dataset's budget delta).
    pub delta: f64,
    /// Per-unit clipping norm.
    pub clip_norm: f64,
    /// Expected units per step.
    pub batch_size: u32,
    /// Epochs (or steps, not both).
    pub epochs: f64,
    /// Steps.
    pub steps: u64,
    /// Units per micro-batch.
    pub micro_batch: u32,
    /// Tokens per example.
    pub max_length: u32,
    /// Learning rate.
    pub learning_rate: f64,
    /// Canaries to insert for the audit.
    pub canaries: Option<CanaryRequest>,
    /// "f32", "bf16", or empty for the default.
    pub precision: String,
    /// The self-audit: `None` for the default (on, with [`crate::train::self_audit::DEFAULT_CANARIES`] canaries).
    pub self_audit: Option<SelfAuditRequest>,
}

/// The self-audit as a client asked for it.
#[derive(Debug, Clone)]
pub struct SelfAuditRequest {
    /// Run without it.
    pub disabled: bool,
    /// m (0: the default).
    pub canaries: u32,
}

/// How to fine-tune.
#[derive(Debug, Clone, Default)]
pub enum FineTuneRequest {
    /// Neither given: LoRA with the family's defaults.
    #[default]
    Default,
    /// Full fine-tuning (must be true).
    Full(bool),
    /// LoRA.
    Lora(LoraRequest),
}

/// LoRA as asked for.
#[derive(Debug, Clone, Default)]
pub struct LoraRequest {
    /// Rank r.
    pub rank: u32,
    /// Alpha.
    pub alpha: f64,
    /// Target modules (empty: the family's PEFT defaults).
    pub target_modules: Vec<String>,
}

/// Canaries as asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct CanaryRequest {
    /// m.
    pub count: u32,
    /// Tokens per canary.
    pub length: u32,
}

/// Where a dataset's bytes live.
pub fn dataset_file(state: &State, id: &DatasetId) -> PathBuf {
    state.config.data_dir.join("datasets").join(format!("{id}.jsonl"))
}

/// Job `id`'s directory: its checkpoints, canary manifest and output model.
pub fn job_dir(state: &State, id: &crate::store::JobId) -> PathBuf {
    state.config.data_dir.join("jobs").join(id.as_str())
}

/// The directory of job `id`'s output model.
pub fn output_dir(state: &State, id: &crate::store::JobId) -> PathBuf {
    job_dir(state, id).join("model")
}

/// The tenant's dataset, NotFound otherwise.
pub fn owned_dataset(state: &State, tenant: &TenantId, id: &str) -> Result<Dataset, ServiceError> {
    let id = DatasetId::parse(id).map_err(|_| invalid("dataset_id", "must be the 64-hex SHA-256 of the dataset"))?;
    Ok(state.store.get_dataset(tenant, &id)?)
}

/// A job spec validated against the model it names, ready to plan: the training spec (noise
/// and steps are filled in by the plan) and the model's limits.
pub struct CheckedSpec {
    /// The training spec.
    pub spec: JobSpec,
    /// What the model's config says (context, vocabulary).
    pub model: ConfigLimits,
}

/// Builds the training spec `req` asks for, over `dataset`. Every number is checked against its
/// range in [`limits`] before any math; the first failure is InvalidArgument naming the field
/// and the range, an unknown model NotFound. Reads only the model's config.json. Defaults are
/// the trainer's own (`TrainingSpec::default()` and the like), except [`CHECKPOINT_EVERY`].
pub fn job_spec(state: &State, dataset: &Dataset, req: &JobRequest) -> Result<CheckedSpec, ServiceError> {
    let name = limits::key("base_model", &req.base_model)?;
    if name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(invalid("base_model", format!("must name a model directory under the daemon's models dir, got {}", limits::quote(&name))));
    }
    let model = state.config.models_dir.join(&name);
    if !model.join("config.json").is_file() {
        return Err(ServiceError::new(Kind::NotFound, format!("base_model: no model {} in the daemon's models dir", limits::quote(&name))));
    }
    let config = ConfigLimits::read(&model).map_err(|_| invalid("base_model", format!("the config.json of model {} cannot be read", limits::quote(&name))))?;
    let finetune = match &req.finetune {
        FineTuneRequest::Full(true) => FineTune::Full,
        FineTuneRequest::Full(false) => return Err(invalid("full", "set it to true, or give lora instead")),
        FineTuneRequest::Lora(l) => lora(l, &config)?,
        FineTuneRequest::Default => FineTune::default(),
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
    let defaults = TrainingSpec::default();
    let clip_norm = if req.clip_norm == 0.0 { DEFAULT_CLIP_NORM } else { limits::in_range("clip_norm", req.clip_norm, limits::CLIP_NORM)? };
    let learning_rate = if req.learning_rate == 0.0 { defaults.learning_rate } else { limits::in_range("learning_rate", req.learning_rate, limits::LEARNING_RATE)? };
    let micro_batch = if req.micro_batch == 0 { defaults.micro_batch as u64 } else { limits::count_in_range("micro_batch", u64::from(req.micro_batch), 1, u64::from(limits::MAX_MICRO_BATCH))? };
    let context = config.context().map_or(u64::from(limits::MAX_MAX_LENGTH), |c| c.clamp(0, i64::from(limits::MAX_MAX_LENGTH)) as u64);
    let max_length = if req.max_length == 0 {
        context.min(DataConfig::default().max_length as u64)
    } else {
        limits::count_in_range("max_length", u64::from(req.max_length), u64::from(limits::MIN_MAX_LENGTH), context)
            .map_err(|_| invalid("max_length", format!("must lie in [{}, {context}] (the model's context), got {}", limits::MIN_MAX_LENGTH, req.max_length)))?
    };
    let canaries = match &req.canaries {
        None => None,
        Some(c) => {
            let spec = CanarySpec { count: c.count as usize, length: if c.length == 0 { DEFAULT_CANARY_LENGTH } else { c.length as usize } };
            spec.validate().map_err(|e| match e {
                TrainError::BadSpec { field, reason } => invalid(field, reason),
                other => invalid("canaries", other),
            })?;
            Some(spec)
        }
    };
    let self_audit = match &req.self_audit {
        Some(SelfAuditRequest { disabled: true, canaries: 0 }) => None,
        Some(SelfAuditRequest { disabled: true, .. }) => return Err(invalid("self_audit.canaries", "a count for a self-audit that is disabled")),
        None | Some(SelfAuditRequest { canaries: 0, .. }) => Some(SelfAuditSpec::default()),
        Some(SelfAuditRequest { canaries, .. }) => {
            let spec = SelfAuditSpec { canaries: *canaries as usize };
            spec.validate().map_err(|e| match e {
                TrainError::BadSpec { field, reason } => invalid(field, reason),
                other => invalid("self_audit", other),
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
        data: dataset_file(state, &dataset.id),
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
            checkpoint_every: CHECKPOINT_EVERY,
            ..defaults
        },
        data_config: DataConfig { user_field, max_length: max_length as usize, ..DataConfig::default() },
        device: DeviceChoice::Auto,
        expected_units: Some(dataset.units as usize),
        canaries,
        precision,
        self_audit,
    };
    Ok(CheckedSpec { spec, model: config })
}

/// A LoRA config checked against the model: rank and alpha in range, every target module one
/// of the model's linear modules.
fn lora(l: &LoraRequest, model: &ConfigLimits) -> Result<FineTune, ServiceError> {
    let rank = if l.rank == 0 { DEFAULT_LORA_RANK as u64 } else { limits::count_in_range("lora.rank", u64::from(l.rank), 1, u64::from(limits::MAX_LORA_RANK))? };
    let alpha = if l.alpha == 0.0 { DEFAULT_LORA_ALPHA } else { limits::in_range("lora.alpha", l.alpha, limits::LORA_ALPHA)? };
    if l.target_modules.len() > limits::MAX_TARGET_MODULES {
        return Err(invalid("lora.target_modules", format!("at most {} names", limits::MAX_TARGET_MODULES)));
    }
    let known = model.linear_modules();
    for m in &l.target_modules {
        if !known.contains(&m.as_str()) && m != ALL_LINEAR {
            return Err(invalid("lora.target_modules", format!("{} is not a linear module of this model (it has: {}, or all-linear)", limits::quote(m), known.join(", "))));
        }
    }
    Ok(FineTune::lora(rank as i64, alpha, l.target_modules.clone()))
}

/// The certified epsilon of a job's steps done at `delta` (NaN, logged, if it cannot be stated).
pub fn job_epsilon(j: &Job, delta: f64) -> f64 {
    j.certified_epsilon_spent(delta).unwrap_or_else(|e| {
        tracing::warn!(job = %j.id.as_str(), error = %e, "cannot account a job's spend");
        f64::NAN
    })
}

/// A spec settled for admission: the training spec with sigma and steps fixed, its plan, the
/// dataset, the canary manifest drawn for it (Create only) and advice.
pub struct Settled {
    /// The training spec, sigma and steps fixed.
    pub spec: JobSpec,
    /// Its plan.
    pub plan: Plan,
    /// The dataset it trains on.
    pub dataset: Dataset,
    /// The canary manifest drawn for it (Create with canaries only).
    pub manifest_json: Option<String>,
    /// Advice that does not stop the job.
    pub warnings: Vec<String>,
    /// The model's vocabulary size.
    pub vocab: i64,
}

/// Settles `req` (blocking: runs on the CPU pool). With canaries and `draw`, draws the manifest
/// from the OS CSPRNG (m canaries, S_i each 1/2) and plans over the dataset's units plus the
/// inserted ones; without `draw` (Plan: no side effects) it assumes m/2 inserted.
pub fn settle(state: &State, tenant: &TenantId, req: &JobRequest, draw: bool) -> Result<Settled, ServiceError> {
    let dataset = owned_dataset(state, tenant, &req.dataset_id)?;
    let CheckedSpec { mut spec, model } = job_spec(state, &dataset, req)?;
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
            let mut rng = crate::train::noise::os_seeded_rng().map_err(|e| ServiceError::new(Kind::Internal, e.to_string()))?;
            let manifest = canaries::draw(c, model.vocab_size, spec.privacy.delta, &mut rng).map_err(|e| invalid("canaries", e))?;
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
pub fn data_counts(state: &State, tenant: &TenantId, settled: &Settled) -> Result<DataCounts, ServiceError> {
    let spec = &settled.spec;
    let model_name = spec.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tokenizer_path = spec.model.join("tokenizer.json");
    let no_tokenizer = || ServiceError::new(Kind::FailedPrecondition, format!("base_model: model {} has no readable tokenizer.json", limits::quote(&model_name)));
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
        TrainError::BadDataset { .. } => ServiceError::new(Kind::FailedPrecondition, format!("the dataset cannot be read with this model: {}", e.without_paths())),
        TrainError::BadSpec { field, reason } => invalid(field, reason),
        other => {
            tracing::error!(error = %other, "cannot count a dataset");
            ServiceError::new(Kind::Internal, "the daemon cannot read the dataset; see its log")
        }
    })?;
    state.data_counts.put(key, counts);
    Ok(counts)
}

/// A plan that cannot be made: a spec the accountant cannot certify or calibrate is the
/// client's to change (InvalidArgument, or FailedPrecondition when no noise reaches the target).
fn plan_error(e: TrainError) -> ServiceError {
    use ewtune_accountant::Error as AccountantError;
    match e {
        TrainError::BadSpec { field, reason } => invalid(field, reason),
        TrainError::Accountant(a @ (AccountantError::InvalidArgument { .. } | AccountantError::OutOfRange { .. })) => {
            ServiceError::new(Kind::InvalidArgument, format!("the privacy accountant refuses this job: {a}"))
        }
        TrainError::Accountant(a) => ServiceError::new(Kind::FailedPrecondition, format!("the privacy accountant cannot plan this job: {a}")),
        other => {
            tracing::error!(error = %other, "planning failed");
            ServiceError::new(Kind::Internal, "planning failed; see the daemon's log")
        }
    }
}

/// A stored job as clients see it.
pub struct JobView {
    /// The job.
    pub job: Job,
    /// The certified epsilon of its steps done, at its dataset's delta (NaN, logged, if it
    /// cannot be stated).
    pub epsilon_spent: f64,
    /// SHA-256 of its canary manifest, when it inserts canaries.
    pub canary_manifest_sha256: Option<String>,
    /// The files recorded when it succeeded.
    pub outputs: Vec<OutputFile>,
    /// What its self-audit found, recorded when it ended.
    pub self_audit: Option<SelfAuditReport>,
}

/// A stored job with its certified spend, canary commitment and, once it succeeded, its
/// recorded output files.
pub fn view(state: &State, tenant: &TenantId, job: Job) -> Result<JobView, ServiceError> {
    let delta = state.store.get_dataset(tenant, &job.dataset)?.budget_delta;
    let epsilon_spent = job_epsilon(&job, delta);
    let canary_manifest_sha256 = state.store.canary_manifest_sha256(&job.id)?;
    let (_, outputs) = state.store.job_outputs(tenant, &job.id)?;
    let self_audit = match state.store.job_self_audit(tenant, &job.id)? {
        None => None,
        Some(record) => match serde_json::from_value(record.report) {
            Ok(report) => Some(report),
            Err(e) => {
                tracing::error!(job = %job.id.as_str(), error = %e, "the job's recorded self-audit cannot be read");
                None
            }
        },
    };
    Ok(JobView { job, epsilon_spent, canary_manifest_sha256, outputs, self_audit })
}

/// Reserves a settled job's budget and queues it (the store refuses one that would overspend),
/// then wakes the scheduler.
pub fn create(state: &State, tenant: &TenantId, settled: Settled) -> Result<JobView, ServiceError> {
    let Settled { spec, plan: p, dataset: d, manifest_json, .. } = settled;
    let job = state.store.create_job(
        tenant,
        NewJob {
            dataset: d.id.clone(),
            spec_json: serde_json::to_string(&spec).expect("specs serialize"),
            noise_multiplier: p.noise_multiplier,
            sample_rate: p.sample_rate,
            steps: p.steps,
            canary_manifest_json: manifest_json,
        },
    )?;
    tracing::info!(tenant = %tenant.as_str(), job = %job.id.as_str(), certified_epsilon = p.certified_epsilon, "job queued");
    state.wake.notify_one();
    view(state, tenant, job)
}
