//! A fine-tuning job: its spec as written in `job.toml` (or sent by the daemon), resolved once
//! into numbers with every default and the privacy calibration settled, and the loop that runs
//! it: Poisson-sampled logical batches, clipped micro-batches, noise once, optimizer step,
//! accounting, atomic checkpoints, resume.

use super::checkpoint::{self, CheckpointState};
use super::data::{sha256_file, DataConfig, DataCounts, Dataset, Encoder};
use super::dpsgd::{clip_and_accumulate, clip_and_accumulate_unit, ClippedSum};
use super::finetune::{FineTune, Targets};
use super::gradient_canaries::{GradientCanaries, BLOCK_NAME};
use super::model::{sequence_losses, ConfigLimits, Model};
use super::noise::{NoiseSource, NoiseStream};
use super::optim::{Optimizer, OptimizerKind, Schedule};
use super::output::{self, AdapterConfig, Output};
use super::precision::Precision;
use super::sampler::{plan_passes, Pass, PoissonSampler};
use super::self_audit::{SelfAuditReport, SelfAuditSpec};
use super::mutation;
use super::TrainError;
use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::{calibrate, History};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

/// The privacy target of a job: a target epsilon (sigma is calibrated, certified) or a fixed
/// noise multiplier (epsilon is reported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacySpec {
    /// Target epsilon; sigma is calibrated so the certified epsilon is at most this.
    pub epsilon: Option<f64>,
    /// Fixed noise multiplier (instead of `epsilon`).
    pub noise_multiplier: Option<f64>,
    /// Delta of the guarantee.
    pub delta: f64,
    /// Per-unit clipping norm C.
    #[serde(default = "default_clip")]
    pub clip_norm: f64,
}

/// Per-unit clipping norm C when none is given.
pub const DEFAULT_CLIP_NORM: f64 = 1.0;

fn default_clip() -> f64 {
    DEFAULT_CLIP_NORM
}

/// Hyper-parameters of the optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingSpec {
    /// Expected logical batch size B (q = B / N).
    pub batch_size: usize,
    /// Epochs (steps = ceil(epochs N / B)) unless `steps` is given.
    pub epochs: f64,
    /// Logical steps (overrides `epochs`).
    pub steps: Option<u64>,
    /// Sequences (examples) per forward/backward pass: the memory bound. Example-level units
    /// go `micro_batch` at a time; users are packed so their padded sequences fit, and a user
    /// with more examples than this goes through successive passes, clipped once over all.
    pub micro_batch: usize,
    /// Base learning rate.
    pub learning_rate: f64,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Seed of LoRA initialisation only (not privacy-relevant; sampling and noise come from the OS CSPRNG).
    pub init_seed: i64,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        TrainingSpec {
            batch_size: 32,
            epochs: 1.0,
            steps: None,
            micro_batch: 16,
            learning_rate: 1e-3,
            optimizer: OptimizerKind::default(),
            schedule: Schedule::Constant,
            checkpoint_every: 50,
            init_seed: 0,
        }
    }
}

/// Where computation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// CUDA when libtorch finds a GPU, else CPU.
    #[default]
    Auto,
    /// CPU.
    Cpu,
    /// The first CUDA device (an error without one).
    Cuda,
}

impl DeviceChoice {
    /// Resolves to a tch device.
    pub fn resolve(self) -> Result<Device, TrainError> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => Err(TrainError::BadSpec { field: "device", reason: "cuda requested but libtorch finds no GPU".into() }),
        }
    }
}

/// A job as written (`job.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// HF checkpoint directory of the base model.
    pub model: PathBuf,
    /// JSONL training data.
    pub data: PathBuf,
    /// Output directory (model, checkpoints, privacy report).
    pub output: PathBuf,
    /// Optional held-out JSONL (not sensitive) whose loss is reported.
    #[serde(default)]
    pub eval_data: Option<PathBuf>,
    /// LoRA (default) or full fine-tuning.
    #[serde(default)]
    pub finetune: FineTune,
    /// The privacy target.
    pub privacy: PrivacySpec,
    /// Optimisation.
    #[serde(default)]
    pub training: TrainingSpec,
    /// Data reading.
    #[serde(default, rename = "data_format")]
    pub data_config: DataConfig,
    /// Device.
    #[serde(default)]
    pub device: DeviceChoice,
    /// When set (by the daemon, which reserved the budget for exactly this N), the dataset must
    /// hold this many privacy units, or the job refuses to run.
    #[serde(default)]
    pub expected_units: Option<usize>,
    /// Canaries for the one-run membership audit (each inserted with probability 1/2 and counted
    /// in N); the manifest is written to `output/audit_manifest.json` before training.
    #[serde(default)]
    pub canaries: Option<crate::train::canaries::CanarySpec>,
    /// Forward/backward precision; unset: bf16 where the base is bf16 on CUDA, else f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// The self-audit: gradient canaries that check this run's clipping, noise and sampling
    /// (docs/self_audit.md). `None`: off. job.toml turns it on unless `[self_audit] canaries =
    /// 0`; the daemon unless the client opts out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_audit: Option<SelfAuditSpec>,
}

impl JobSpec {
    /// The tables of `job.toml` and their keys: every key outside them is refused.
    pub fn toml_tables() -> Vec<crate::strict_toml::Table> {
        use crate::strict_toml::Table;
        vec![
            Table::of::<JobSpec>(""),
            Table::of::<PrivacySpec>("privacy"),
            Table::of::<TrainingSpec>("training"),
            Table::of::<OptimizerKind>("training.optimizer"),
            Table::of::<FineTune>("finetune"),
            Table::of::<DataConfig>("data_format"),
            Table::of::<crate::train::canaries::CanarySpec>("canaries"),
            Table::of::<SelfAuditSpec>("self_audit"),
        ]
    }

    /// Reads a `job.toml`; relative paths are taken from the file's directory. A key no table
    /// reads (a misspelling) is an error naming it, its table and the closest known key.
    pub fn from_toml_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|_| TrainError::MissingFile { path: path.to_path_buf() })?;
        let file = path.file_name().map_or_else(|| "job.toml".into(), |n| n.to_string_lossy().into_owned());
        let mut spec: JobSpec = crate::strict_toml::from_str(&text, &file, &Self::toml_tables())?;
        // The self-audit is on unless the file turns it off.
        spec.self_audit = match spec.self_audit {
            None => Some(SelfAuditSpec::default()),
            Some(SelfAuditSpec { canaries: 0 }) => None,
            some => some,
        };
        if spec.data_config.max_examples_per_user.is_some() && spec.data_config.user_field.is_none() {
            return Err(TrainError::BadSpec {
                field: "data_format.max_examples_per_user",
                reason: "needs data_format.user_field (without it every privacy unit is one example)".into(),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut spec.model, &mut spec.data, &mut spec.output] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(e) = spec.eval_data.as_mut().filter(|e| e.is_relative()) {
            *e = base.join(&*e);
        }
        Ok(spec)
    }
}

/// The numbers a job runs with, every default and the calibration settled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Privacy units in the dataset (N).
    pub units: usize,
    /// Sampling rate q = B / N.
    pub sample_rate: f64,
    /// Logical steps.
    pub steps: u64,
    /// Noise multiplier sigma.
    pub noise_multiplier: f64,
    /// Certified epsilon of the whole job (upper bound: the guarantee).
    pub certified_epsilon: f64,
    /// Edgeworth estimate of the same (an estimate only).
    pub edgeworth_epsilon: f64,
    /// Delta.
    pub delta: f64,
    /// What the reader of the plan should know (the Edgeworth estimate straying from the
    /// certified value); none is an error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Settles q, steps and sigma for `spec` over a dataset of `units` privacy units.
pub fn plan(spec: &JobSpec, units: usize) -> Result<Plan, TrainError> {
    let t = &spec.training;
    let p = &spec.privacy;
    if t.batch_size == 0 || t.batch_size > units {
        return Err(TrainError::BadSpec { field: "training.batch_size", reason: format!("must lie in [1, {units}] (the dataset's privacy units)") });
    }
    if t.micro_batch == 0 {
        return Err(TrainError::BadSpec { field: "training.micro_batch", reason: "must be >= 1".into() });
    }
    if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
        return Err(TrainError::BadSpec { field: "training.learning_rate", reason: "must be a finite number > 0".into() });
    }
    if !(p.clip_norm.is_finite() && p.clip_norm > 0.0) {
        return Err(TrainError::BadSpec { field: "privacy.clip_norm", reason: "must be a finite number > 0".into() });
    }
    if let Some(a) = &spec.self_audit {
        a.validate()?;
    }
    let q = t.batch_size as f64 / units as f64;
    let steps = match t.steps {
        Some(0) => return Err(TrainError::BadSpec { field: "training.steps", reason: "must be >= 1".into() }),
        Some(s) => s,
        None if t.epochs.is_finite() && t.epochs > 0.0 => (t.epochs * units as f64 / t.batch_size as f64).ceil() as u64,
        None => return Err(TrainError::BadSpec { field: "training.epochs", reason: "must be a finite number > 0".into() }),
    };
    let sigma = match (p.epsilon, p.noise_multiplier) {
        (Some(eps), None) => calibrate::noise_multiplier(eps, p.delta, q, steps)?.sigma,
        (None, Some(s)) => s,
        _ => return Err(TrainError::BadSpec { field: "privacy", reason: "give exactly one of epsilon or noise_multiplier".into() }),
    };
    let history = History::homogeneous(sigma, q, steps)?;
    let certified = PldAccountant::default().epsilon(&history, p.delta)?.bounds.upper;
    let ew = ewtune_accountant::edgeworth::epsilon(&history, p.delta, ewtune_accountant::edgeworth::Order::DEFAULT)?;
    let warnings = ewtune_accountant::report::divergence_warning(certified, &ew).into_iter().collect();
    Ok(Plan { units, sample_rate: q, steps, noise_multiplier: sigma, certified_epsilon: certified, edgeworth_epsilon: ew.estimate, delta: p.delta, warnings })
}

/// What the loop reports after every logical step. By default only what does not depend on
/// the private data beyond what the accountant covers: the step count, the expected batch size
/// and the certified epsilon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// Steps done.
    pub step: u64,
    /// Steps planned.
    pub total_steps: u64,
    /// Expected units per step, q N (the Poisson sample's realised size is private).
    pub expected_batch_size: f64,
    /// Certified epsilon spent so far (computed at checkpoints; `None` between them).
    pub epsilon_spent: Option<f64>,
    /// Statistics of the step's private sample, only under [`Diagnostics::Private`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_diagnostics: Option<StepDiagnostics>,
}

/// Exact statistics of one step's Poisson sample of the private data. None of them is
/// privatised or counted by the accountant: whoever sees them learns about the training data
/// beyond the job's epsilon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepDiagnostics {
    /// Units in this step's Poisson sample (the realised batch size).
    pub batch_units: usize,
    /// Fraction of this step's units whose gradient norm exceeded the clip norm.
    pub clipped_fraction: f64,
    /// Units of this step left out of the update because their gradient norm was not finite.
    pub excluded_units: usize,
}

/// What the training loop reports per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Diagnostics {
    /// Only data-independent or privatised quantities (the default).
    #[default]
    Public,
    /// Also each step's [`StepDiagnostics`], which leak the private data unaccounted.
    Private,
}

/// The end of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The plan it ran.
    pub plan: Plan,
    /// Steps completed (less than planned when cancelled).
    pub steps_done: u64,
    /// Certified epsilon actually spent.
    pub epsilon_spent: f64,
    /// Held-out loss before and after, when `eval_data` was given.
    pub eval_loss: Option<(f64, f64)>,
    /// True when the job stopped early on request.
    pub cancelled: bool,
    /// Where the model was written.
    pub output_model: PathBuf,
    /// What reading the training data found (canaries not included): exact counts of the
    /// private dataset, not privatised.
    pub data: DataCounts,
    /// The self-audit's findings (a job that ran one to its end; it passed, or the job failed).
    pub self_audit: Option<SelfAuditReport>,
}

fn fingerprint(spec: &JobSpec, data_sha: &str) -> String {
    let mut s = serde_json::to_value(spec).expect("spec serializes");
    if let Some(o) = s.as_object_mut() {
        o.remove("output");
        o.remove("device");
    }
    let text = format!("{data_sha}\n{s}");
    crate::digest::sha256_hex(text.as_bytes())
}

/// Mean sequence loss over a dataset (no gradients), `micro` sequences per forward pass.
pub fn evaluate(model: &Model, data: &Dataset, micro: usize, device: Device) -> f64 {
    let _guard = tch::no_grad_guard();
    let (mut sum, mut n) = (0.0, 0usize);
    let rows: Vec<&super::data::Example> = data.units.iter().flatten().collect();
    for chunk in rows.chunks(micro.max(1)) {
        let (ids, mask) = super::data::pad(chunk, device);
        let l = sequence_losses(&model.forward(&ids, None), &ids, &mask);
        sum += l.sum(Kind::Double).double_value(&[]);
        n += l.size()[0] as usize;
    }
    sum / n.max(1) as f64
}

/// What the clipping of one logical batch did. Every field depends on the private data and none
/// is privatised: the job loop passes them on ([`StepDiagnostics`]) only when asked to
/// ([`Diagnostics::Private`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClipStats {
    /// Units whose (finite) gradient norm exceeded the clip norm.
    pub clipped: usize,
    /// Units left out of the clipped sum because their gradient norm was not finite.
    pub excluded: usize,
    /// `(unit, gradient norm before clipping)` for every unit of the batch, in the order processed.
    pub norms: Vec<(usize, f64)>,
    /// Forward/backward passes run.
    pub passes: usize,
    /// The most sequences one forward pass took (at most the micro-batch).
    pub peak_sequences: usize,
    /// The most padded per-unit sequence slots one pass grouped (`units x largest unit`; at most
    /// the micro-batch).
    pub peak_unit_slots: usize,
}

/// The clipped gradient sum of the units `batch`, at most `micro_batch` sequences per forward
/// pass ([`plan_passes`]): units that fit are clipped from one backward on the tape; a unit with
/// more sequences goes through successive passes with its gradient accumulated, then clipped
/// once ([`clip_and_accumulate_unit`]). Either way each unit's whole gradient is clipped to
/// `clip_norm`.
pub fn clipped_sum(model: &Model, data: &Dataset, batch: &[usize], clip_norm: f64, micro_batch: usize, device: Device) -> Result<(ClippedSum, ClipStats), TrainError> {
    let mut acc = ClippedSum::new(model);
    let mut stats = ClipStats::default();
    for pass in plan_passes(batch, |u| data.units[u].len(), micro_batch)? {
        match pass {
            Pass::Units(units) => {
                let mb = data.micro_batch(&units, device);
                stats.passes += 1;
                stats.peak_sequences = stats.peak_sequences.max(mb.ids.size()[0] as usize);
                stats.peak_unit_slots = stats.peak_unit_slots.max(mb.units.count * mb.units.per_unit);
                let norms = Vec::<f64>::try_from(&clip_and_accumulate(model, &mb, clip_norm, &mut acc)?.to_kind(Kind::Double))?;
                stats.norms.extend(units.into_iter().zip(norms));
            }
            Pass::Split { unit, sequences } => {
                let chunks = (0..sequences).step_by(micro_batch).map(|start| {
                    let (ids, mask) = data.unit_sequences(unit, start..(start + micro_batch).min(sequences), device);
                    stats.passes += 1;
                    stats.peak_sequences = stats.peak_sequences.max(ids.size()[0] as usize);
                    (ids, mask)
                });
                let norm = clip_and_accumulate_unit(model, chunks, clip_norm, &mut acc)?;
                stats.peak_unit_slots = stats.peak_unit_slots.max(1);
                stats.norms.push((unit, norm));
            }
        }
    }
    stats.clipped = stats.norms.iter().filter(|(_, n)| n.is_finite() && *n > clip_norm).count();
    stats.excluded = stats.norms.iter().filter(|(_, n)| !n.is_finite()).count();
    Ok((acc, stats))
}

/// One logical DP-SGD step over the units `batch` (possibly empty): the clipped sum
/// ([`clipped_sum`]), the pre-drawn `noise` (std sigma C, one value per trainable coordinate)
/// added once, division by the expected batch size, optimizer update. Returns what the
/// clipping did.
///
/// With `canaries`, the batch's indices from the dataset's size on are gradient canaries: they
/// are clipped into the audit block, which takes the last m values of `noise` (one per canary,
/// after every trainable tensor's), and the step's privatised block and every tensor's realised
/// noise are observed.
#[allow(clippy::too_many_arguments)]
pub fn private_step(
    model: &Model,
    data: &Dataset,
    batch: &[usize],
    privacy: &PrivacySpec,
    micro_batch: usize,
    noise: &[f32],
    expected_batch: f64,
    optimizer: &mut Optimizer,
    params: &[Tensor],
    device: Device,
    mut canaries: Option<&mut GradientCanaries>,
) -> Result<ClipStats, TrainError> {
    let (real, coordinates) = match canaries.as_deref() {
        Some(c) => c.split(batch),
        None => (batch.to_vec(), Vec::new()),
    };
    let (mut acc, stats) = clipped_sum(model, data, &real, privacy.clip_norm, micro_batch, device)?;
    if let Some(c) = canaries.as_deref() {
        c.accumulate(&coordinates, mutation::clip_norm(privacy.clip_norm), &mut acc)?;
    }
    let total: usize = acc.entries.iter().map(|(_, p, _)| p.numel()).sum();
    if noise.len() != total {
        return Err(TrainError::BadSpec { field: "noise", reason: format!("{} noise draws for {total} trainable values", noise.len()) });
    }
    // SAFETY: the tensor borrows `noise` (f32, contiguous, `total` values, checked above) without
    // copying; it and every view of it are dropped before this function returns, and nothing
    // writes through it. On CUDA it is copied to the device at once.
    let borrowed = unsafe { Tensor::from_blob(noise.as_ptr().cast::<u8>(), &[total as i64], &[1], Kind::Float, Device::Cpu) };
    let noise_t = if device == Device::Cpu { borrowed } else { borrowed.to_device(device) };
    let mut offset = 0i64;
    let mut grads = Vec::with_capacity(acc.entries.len());
    let _guard = tch::no_grad_guard();
    for (name, p, sum) in acc.sums() {
        let n = p.numel() as i64;
        let z = noise_t.narrow(0, offset, n).view(p.size().as_slice());
        offset += n;
        let clipped = canaries.as_ref().map(|_| GradientCanaries::noise_sample(sum)).transpose()?;
        // (clipped sum + noise) / (q N), in place on the sum, which nothing else holds.
        if !mutation::skips_noise(name) {
            let _ = sum.f_add_(&z)?;
        }
        mutation::add_per_pass_noise(sum, stats.passes, &z);
        if let (Some(c), Some(clipped)) = (canaries.as_deref_mut(), clipped) {
            c.observe_noise(name, clipped, sum)?;
            if name == BLOCK_NAME {
                c.observe_step(sum, coordinates.len())?;
                continue; // nothing reads the block: its update is not applied
            }
        }
        let _ = sum.f_div_scalar_(expected_batch)?;
        grads.push(sum.shallow_clone());
    }
    drop(noise_t);
    optimizer.apply(params, &grads);
    Ok(stats)
}

/// How a LoRA output's `adapter_config.json` names its base model
/// (`base_model_name_or_path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseName {
    /// The canonical absolute path of `JobSpec::model`, so the adapter loads from any directory
    /// (`ewtune train`).
    CanonicalPath,
    /// This name (the daemon: the model's name as its client sent it; no daemon path reaches a
    /// client).
    Given(String),
}

impl BaseName {
    /// The name to record for the base model at `model`.
    pub fn resolve(&self, model: &Path) -> Result<String, TrainError> {
        match self {
            BaseName::Given(name) => Ok(name.clone()),
            BaseName::CanonicalPath => std::fs::canonicalize(model)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => TrainError::MissingFile { path: model.to_path_buf() },
                    _ => TrainError::Io { path: model.to_path_buf(), reason: e.to_string() },
                })?
                .into_os_string()
                .into_string()
                .map_err(|p| TrainError::BadSpec { field: "model", reason: format!("the path {p:?} is not UTF-8, so adapter_config.json cannot name it") }),
        }
    }
}

/// Runs (or resumes) a job to completion or until `cancel` is set, reporting every step.
pub fn run(spec: &JobSpec, cancel: &AtomicBool, on_progress: impl FnMut(&Progress)) -> Result<Outcome, TrainError> {
    run_with_ledger(spec, &BaseName::CanonicalPath, cancel, |_| Ok(()), on_progress)
}

/// [`run`], with `before_step(n)` called before the n-th step (1-based, counted over restarts
/// from this process's start) touches any data: the daemon records the spend there, so a crash
/// can only over-count, never under-count. An error from it stops the job before the step. A
/// LoRA output names its base as `base_name` says.
pub fn run_with_ledger(
    spec: &JobSpec,
    base_name: &BaseName,
    cancel: &AtomicBool,
    before_step: impl FnMut(u64) -> Result<(), TrainError>,
    on_progress: impl FnMut(&Progress),
) -> Result<Outcome, TrainError> {
    run_observed(spec, base_name, cancel, before_step, |_, _| {}, |_| {}, on_progress, Diagnostics::Public)
}

/// What a run is doing between its steps, for people watching (`ewtune train` prints each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading and tokenising the training data (and the eval data).
    Tokenising,
    /// Finding the noise multiplier for the target epsilon and certifying the plan.
    Calibrating,
    /// Reading the base model's weights (and a checkpoint to resume from).
    LoadingModel,
    /// The loss on the eval data, before or after training.
    Evaluating,
    /// The DP-SGD steps.
    Training,
    /// Writing the trained model and its privacy record (or, when stopped, a checkpoint).
    Saving,
}

impl Phase {
    /// For people: `tokenising the data`.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Tokenising => "reading and tokenising the data",
            Phase::Calibrating => "calibrating the noise and certifying the plan",
            Phase::LoadingModel => "loading the model",
            Phase::Evaluating => "computing the loss on the eval data",
            Phase::Training => "training",
            Phase::Saving => "saving",
        }
    }
}

/// [`run_with_ledger`], with `on_start(plan, counts)` called once the data is read and the plan
/// settled, before the model is loaded and the first step (or the first step of a resumed run)
/// runs, `on_phase` at the start of each [`Phase`], and each step's progress carrying its
/// private statistics when `diagnostics` is [`Diagnostics::Private`]. The
/// counts (like [`Outcome::data`]) describe the private dataset exactly: `ewtune train` prints
/// them only with `--print-private-diagnostics`.
pub fn run_observed(
    spec: &JobSpec,
    base_name: &BaseName,
    cancel: &AtomicBool,
    mut before_step: impl FnMut(u64) -> Result<(), TrainError>,
    on_start: impl FnOnce(&Plan, &DataCounts),
    mut on_phase: impl FnMut(Phase),
    mut on_progress: impl FnMut(&Progress),
    diagnostics: Diagnostics,
) -> Result<Outcome, TrainError> {
    let device = spec.device.resolve()?;
    let base_model_name = base_name.resolve(&spec.model)?;
    let tokenizer_path = spec.model.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| TrainError::CorruptCheckpoint { path: tokenizer_path.clone(), reason: e.to_string() })?;
    // The config alone settles the vocabulary and context; the weights are read once, below.
    let limits = ConfigLimits::read(&spec.model)?;
    let vocab = limits.vocab_size;
    let mut data_cfg = spec.data_config.clone();
    if let Some(max) = limits.n_positions {
        data_cfg.max_length = data_cfg.max_length.min(max as usize);
    }
    let precision = spec.precision.unwrap_or_else(|| Precision::default_for(limits.is_bf16(), device));
    on_phase(Phase::Tokenising);
    let mut data = Dataset::load(&spec.data, Encoder::for_model(&tokenizer, &spec.model), &data_cfg, vocab)?;
    let counts = data.counts();
    std::fs::create_dir_all(&spec.output).map_err(|e| TrainError::Io { path: spec.output.clone(), reason: e.to_string() })?;
    let manifest_sha = match &spec.canaries {
        Some(c) if c.length > data_cfg.max_length => {
            return Err(TrainError::BadSpec {
                field: "canaries.length",
                reason: format!("{} tokens exceed the job's {} tokens per example (data_format.max_length, at most the model's context)", c.length, data_cfg.max_length),
            })
        }
        Some(c) => {
            let (manifest, sha) = crate::train::canaries::prepare(&spec.output.join("audit_manifest.json"), c, vocab, spec.privacy.delta)?;
            data.units.extend(manifest.training_units());
            Some(sha)
        }
        None => None,
    };
    let eval = spec.eval_data.as_ref().map(|p| Dataset::load(p, Encoder::for_model(&tokenizer, &spec.model), &data_cfg, vocab)).transpose()?;
    if let Some(n) = spec.expected_units {
        if n != data.len() {
            return Err(TrainError::BadSpec { field: "expected_units", reason: format!("the dataset holds {} privacy units, the plan assumed {n}", data.len()) });
        }
    }
    on_phase(Phase::Calibrating);
    let plan = plan(spec, data.len())?;
    on_start(&plan, &counts);
    let data_sha = sha256_file(&spec.data)?;
    // The canary manifest is part of the job's identity: checkpoints of one draw never resume another.
    let job_fingerprint = fingerprint(spec, &format!("{data_sha}/{}", manifest_sha.as_deref().unwrap_or("-")));
    let ckpt_root = spec.output.join("checkpoints");
    std::fs::create_dir_all(&ckpt_root).map_err(|e| TrainError::Io { path: ckpt_root.clone(), reason: e.to_string() })?;

    on_phase(Phase::LoadingModel);
    tch::manual_seed(spec.training.init_seed);
    let resumed = checkpoint::load_latest(&ckpt_root, device)?;
    if let Some(r) = &resumed {
        if r.state.job_fingerprint != job_fingerprint {
            return Err(TrainError::BadSpec {
                field: "output",
                reason: "holds checkpoints of a different job (dataset or settings changed); use a fresh output directory".into(),
            });
        }
    }
    let model = Model::load_with(&spec.model, &spec.finetune, resumed.as_ref().map(|r| r.trainable_path.as_path()), device, precision)?;
    let trainable = model.trainable();
    if trainable.is_empty() {
        return Err(TrainError::NothingToTrain);
    }
    let names: Vec<String> = trainable.iter().map(|(n, _)| n.clone()).collect();
    let params: Vec<Tensor> = trainable.iter().map(|(_, p)| p.shallow_clone()).collect();
    let mut optimizer = Optimizer::new(spec.training.optimizer.clone(), spec.training.learning_rate, spec.training.schedule, plan.steps, &params);
    let mut history = History::new();
    if let Some(r) = &resumed {
        optimizer
            .restore(&names, &r.optimizer, r.state.step)
            .map_err(|reason| TrainError::CorruptCheckpoint { path: r.trainable_path.clone(), reason })?;
        history = r.state.history.clone();
    }
    let start = optimizer.step;
    let mut canaries = match (&spec.self_audit, &resumed) {
        (None, _) => None,
        (Some(a), None) => Some(GradientCanaries::draw(a.canaries, data.len(), plan.sample_rate, plan.noise_multiplier, spec.privacy.clip_norm, device)?),
        (Some(_), Some(r)) => match &r.state.self_audit {
            Some(observed) => Some(GradientCanaries::resume(observed.clone(), data.len(), spec.privacy.clip_norm, device)),
            None => return Err(TrainError::CorruptCheckpoint { path: r.trainable_path.clone(), reason: "its state holds no self-audit observations".into() }),
        },
    };
    if eval.is_some() {
        on_phase(Phase::Evaluating);
    }
    let eval_before = eval.as_ref().map(|e| evaluate(&model, e, spec.training.micro_batch, device));

    // Fresh OS randomness on every (re)start: a resumed job never replays its noise or samples.
    let noise_source = NoiseSource::from_os()?;
    let mut sampling_rng = super::noise::os_seeded_rng()?;
    // Included gradient canaries join the population after the dataset's units, drawn at the
    // accounted q; the normaliser stays q N.
    let canary_units = canaries.as_ref().map_or(0, GradientCanaries::units);
    let sampler = PoissonSampler::new(mutation::sample_rate(plan.sample_rate), data.len() + canary_units)?;
    let noise_std = plan.noise_multiplier * spec.privacy.clip_norm * mutation::noise_scale();
    let expected_batch = plan.sample_rate * data.len() as f64;
    let audit_block = canaries.as_ref().map_or(0, |c| c.observations().included().len());
    let total_numel: usize = params.iter().map(|p| p.numel()).sum::<usize>() + audit_block;
    // The noise thread draws while the step computes: leave one core to the step.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).saturating_sub(1).max(1);
    let mut noise = NoiseStream::start(noise_source, noise_std, total_numel, threads);
    let accountant = PldAccountant::default();

    let mut step = start;
    let mut cancelled = false;
    on_phase(Phase::Training);
    while step < plan.steps {
        if cancel.load(Ordering::Relaxed) {
            cancelled = true;
            break;
        }
        before_step(step + 1)?;
        let batch = sampler.sample(&mut sampling_rng);
        let noise_buf = noise.next_buffer();
        let stats = private_step(&model, &data, &batch, &spec.privacy, spec.training.micro_batch, &noise_buf, expected_batch, &mut optimizer, &params, device, canaries.as_mut())?;
        noise.recycle(noise_buf);
        history.compose(plan.noise_multiplier, plan.sample_rate, 1)?;
        step += 1;
        let checkpoint_due = step.is_multiple_of(spec.training.checkpoint_every.max(1)) || step == plan.steps;
        let mut epsilon_spent = None;
        if checkpoint_due {
            let state = CheckpointState { step, history: history.clone(), job_fingerprint: job_fingerprint.clone(), self_audit: canaries.as_ref().map(|c| c.observations().clone()) };
            checkpoint::save(&ckpt_root, &state, &model.trainable(), &optimizer.state(&names))?;
            epsilon_spent = Some(accountant.epsilon(&history, plan.delta)?.bounds.upper);
        }
        let private_diagnostics = (diagnostics == Diagnostics::Private).then(|| StepDiagnostics {
            batch_units: batch.len(),
            clipped_fraction: if batch.is_empty() { 0.0 } else { stats.clipped as f64 / batch.len() as f64 },
            excluded_units: stats.excluded,
        });
        on_progress(&Progress { step, total_steps: plan.steps, expected_batch_size: expected_batch, epsilon_spent, private_diagnostics });
    }
    if cancelled && step > start {
        on_phase(Phase::Saving);
        let state = CheckpointState { step, history: history.clone(), job_fingerprint: job_fingerprint.clone(), self_audit: canaries.as_ref().map(|c| c.observations().clone()) };
        checkpoint::save(&ckpt_root, &state, &model.trainable(), &optimizer.state(&names))?;
    }
    let epsilon_spent = if history.is_empty() { 0.0 } else { accountant.epsilon(&history, plan.delta)?.bounds.upper };
    if eval.is_some() {
        on_phase(Phase::Evaluating);
    }
    let eval_loss = eval.as_ref().map(|e| (eval_before.unwrap_or(f64::NAN), evaluate(&model, e, spec.training.micro_batch, device)));
    let output_model = spec.output.join("model");
    // The self-audit decides before anything is released: a failed check leaves no model.
    let self_audit = match (&canaries, cancelled) {
        (Some(c), false) => {
            let report = super::self_audit::judge(c.observations(), epsilon_spent, plan.delta);
            if !report.passed() {
                return Err(TrainError::SelfAuditFailed { report: Box::new(report) });
            }
            Some(report)
        }
        _ => None,
    };
    if !cancelled {
        on_phase(Phase::Saving);
        let adapter = match &spec.finetune {
            FineTune::Lora { rank, alpha, target_modules, use_rslora, rank_pattern, alpha_pattern } => Some(AdapterConfig {
                r: *rank,
                lora_alpha: *alpha,
                target_modules: lora_targets(&model, target_modules),
                use_rslora: *use_rslora,
                rank_pattern: rank_pattern.clone(),
                alpha_pattern: alpha_pattern.clone(),
                fan_in_fan_out: model.family.fan_in_fan_out(),
                base_model_name_or_path: base_model_name,
            }),
            FineTune::Full => None,
        };
        let what = match &adapter {
            Some(cfg) => Output::Adapter(cfg),
            None => Output::Full { max_shard_bytes: output::DEFAULT_MAX_SHARD_BYTES },
        };
        output::write(&output_model, &spec.model, &model.named_tensors(), what)?;
        let report = serde_json::json!({ "plan": &plan, "steps_done": step, "epsilon_spent": epsilon_spent, "history": &history, "audit_manifest_sha256": manifest_sha, "self_audit": &self_audit });
        crate::fs::write_atomic(&spec.output.join("privacy.json"), &serde_json::to_vec_pretty(&report).expect("serializes"))?;
    }
    Ok(Outcome { plan, steps_done: step, epsilon_spent, eval_loss, cancelled, output_model, data: counts, self_audit })
}

/// `target_modules` as PEFT should read them back: as given, the family's default list, or
/// PEFT's string form of `all-linear` (PEFT reads `["all-linear"]` as a module name).
fn lora_targets(model: &Model, given: &Targets) -> Targets {
    match given {
        Targets::List(v) if v.is_empty() => Targets::List(model.family.default_lora_targets().iter().map(|s| s.to_string()).collect()),
        Targets::List(v) if v.iter().any(|t| t == super::finetune::ALL_LINEAR) => Targets::Pattern(super::finetune::ALL_LINEAR.into()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strict_toml::StrictTomlError;

    /// Top-level keys only, so that `extra` may add top-level keys and then tables.
    const MINIMAL: &str = "model = \"base\"\ndata = \"train.jsonl\"\noutput = \"out\"\nprivacy = { epsilon = 4.0, delta = 1e-5 }\n";

    fn read(extra: &str) -> Result<JobSpec, TrainError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, format!("{MINIMAL}{extra}")).unwrap();
        JobSpec::from_toml_file(&path)
    }

    fn unknown(extra: &str) -> String {
        match read(extra) {
            Err(TrainError::Toml(e @ StrictTomlError::UnknownKeys { .. })) => e.to_string(),
            other => panic!("{extra:?}: expected an unknown-key error, got {other:?}"),
        }
    }

    #[test]
    fn a_misspelt_key_in_any_table_is_refused_naming_the_nearest_key() {
        assert_eq!(unknown("[training]\nlearnin_rate = 0.1\n"), "unknown key `training.learnin_rate` in job.toml; did you mean `learning_rate`?");
        assert_eq!(unknown("devise = \"cpu\"\n"), "unknown key `devise` in job.toml; did you mean `device`?");
        assert_eq!(unknown("[data_format]\nmax_lenght = 64\n"), "unknown key `data_format.max_lenght` in job.toml; did you mean `max_length`?");
        assert_eq!(unknown("[data_format]\nmax_examples_per_users = 4\n"), "unknown key `data_format.max_examples_per_users` in job.toml; did you mean `max_examples_per_user`?");
        assert_eq!(unknown("[canaries]\ncount = 200\nlenght = 16\n"), "unknown key `canaries.lenght` in job.toml; did you mean `length`?");
        // ([privacy] is in MINIMAL; its misspelling has a test of its own.) The internally tagged tables: serde would drop these keys unseen without the plain
        // structs they are read through.
        assert_eq!(unknown("[finetune]\nmode = \"lora\"\nrank = 8\nalpha = 16\ntarget_modles = []\n"), "unknown key `finetune.target_modles` in job.toml; did you mean `target_modules`?");
        assert_eq!(unknown("[finetune]\nmode = \"full\"\nrnak = 8\n"), "unknown key `finetune.rnak` in job.toml; did you mean `rank`?");
        assert_eq!(
            unknown("[training]\noptimizer = { kind = \"adam_w\", weight_decy = 0.1 }\n"),
            "unknown key `training.optimizer.weight_decy` in job.toml; did you mean `weight_decay`?"
        );
        // A misspelt table is named as one key.
        assert_eq!(unknown("[trainig]\nsteps = 3\n"), "unknown key `trainig` in job.toml; did you mean `training`?");
    }

    #[test]
    fn a_misspelt_privacy_key_is_named_even_though_a_required_key_is_then_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("my-job.toml");
        std::fs::write(&path, "model = \"b\"\ndata = \"d\"\noutput = \"o\"\n[privacy]\nepsilon = 4.0\ndelt = 1e-5\n").unwrap();
        let err = JobSpec::from_toml_file(&path).unwrap_err().to_string();
        assert_eq!(err, "unknown key `privacy.delt` in my-job.toml; did you mean `delta`?");
    }

    #[test]
    fn settings_of_the_other_mode_are_refused() {
        let err = read("[finetune]\nmode = \"full\"\nrank = 8\n").unwrap_err().to_string();
        assert!(err.contains("`rank` is a LoRA setting"), "{err}");
        let err = read("[training]\noptimizer = { kind = \"sgd\", weight_decay = 0.1 }\n").unwrap_err().to_string();
        assert!(err.contains("`weight_decay` is not a setting of kind = \"sgd\""), "{err}");
    }

    /// The job.toml README.md shows is accepted key for key, with the values it shows.
    #[test]
    fn the_readme_job_toml_is_accepted() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README shows a job.toml") + "```toml\n".len();
        let end = start + readme[start..].find("```").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, &readme[start..end]).unwrap();
        let spec = JobSpec::from_toml_file(&path).unwrap();
        assert_eq!(spec.training.learning_rate, 3e-3);
        assert_eq!(spec.training.optimizer, OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 });
        assert_eq!(spec.finetune, FineTune::lora(8, 16.0, vec![]));
        assert_eq!(spec.data_config.user_field, None, "it runs on `ewtune synth`'s notes, which name no users");
        assert_eq!(spec.data_config.max_examples_per_user, None, "README documents the cap as off");
        assert_eq!(spec.model, dir.path().join("base"));
    }

    #[test]
    fn a_cap_without_users_is_refused_in_job_toml_but_read_from_stored_specs() {
        match read("[data_format]\nmax_examples_per_user = 3\n") {
            Err(TrainError::BadSpec { field, reason }) => assert!(field == "data_format.max_examples_per_user" && reason.contains("user_field"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Daemons before the cap became optional stored `8` in every spec, example-level too.
        let mut stored = serde_json::to_value(read("").unwrap()).unwrap();
        stored["data_format"]["max_examples_per_user"] = 8.into();
        let spec: JobSpec = serde_json::from_value(stored).unwrap();
        assert_eq!((spec.data_config.max_examples_per_user, spec.data_config.user_field), (Some(8), None));
    }

    /// The self-audit is on unless job.toml turns it off; a stored spec without it (a daemon's
    /// job from before it existed) keeps it off, and its fingerprint; a count out of range is
    /// refused when the job is planned.
    #[test]
    fn the_self_audit_is_on_unless_turned_off() {
        assert_eq!(read("").unwrap().self_audit, Some(SelfAuditSpec { canaries: 10_000 }));
        assert_eq!(read("[self_audit]\ncanaries = 2000\n").unwrap().self_audit, Some(SelfAuditSpec { canaries: 2000 }));
        assert_eq!(read("[self_audit]\ncanaries = 0\n").unwrap().self_audit, None);
        assert_eq!(unknown("[self_audit]\ncanary = 10\n"), "unknown key `self_audit.canary` in job.toml; did you mean `canaries`?");
        let mut stored = serde_json::to_value(read("[self_audit]\ncanaries = 0\n").unwrap()).unwrap();
        assert!(stored.get("self_audit").is_none(), "an unset self-audit is not written, so older fingerprints hold");
        stored["self_audit"] = serde_json::Value::Null;
        assert_eq!(serde_json::from_value::<JobSpec>(stored).unwrap().self_audit, None);
        let few = read("[self_audit]\ncanaries = 99\n").unwrap();
        match plan(&few, 1000) {
            Err(TrainError::BadSpec { field: "self_audit.canaries", reason }) => assert!(reason.contains("[100, 1000000]"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn known_keys_still_parse_with_their_defaults() {
        let spec = read("[training]\noptimizer = { kind = \"sgd\", momentum = 0.9 }\n[data_format]\nuser_field = \"user\"\nmax_examples_per_user = 3\n").unwrap();
        assert_eq!(spec.training.optimizer, OptimizerKind::Sgd { momentum: 0.9 });
        assert_eq!(spec.training.micro_batch, TrainingSpec::default().micro_batch);
        assert_eq!(spec.data_config.max_examples_per_user, Some(3));
        // The spec the daemon stores as JSON reads back the same.
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    }
}
