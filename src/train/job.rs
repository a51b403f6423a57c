//! A fine-tuning job: its spec as written in `job.toml` (or sent by the daemon), resolved once
//! into numbers with every default and the privacy calibration settled, and the loop that runs
//! it: Poisson-sampled logical batches, clipped micro-batches, noise once, optimizer step,
//! accounting, atomic checkpoints, resume.

use super::checkpoint::{self, CheckpointState};
use super::data::{sha256_file, DataConfig, Dataset};
use super::dpsgd::{clip_and_accumulate, ClippedSum};
use super::finetune::FineTune;
use super::model::{sequence_losses, Model};
use super::noise::{NoiseSource, NoiseStream};
use super::optim::{Optimizer, OptimizerKind, Schedule};
use super::output::{self, AdapterConfig, Output};
use super::sampler::{split_micro_batches, PoissonSampler};
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

fn default_clip() -> f64 {
    1.0
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
    /// Units per physical micro-batch (memory bound).
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
    pub canaries: Option<crate::audit::canary::CanarySpec>,
}

impl JobSpec {
    /// Reads a `job.toml`; relative paths are taken from the file's directory.
    pub fn from_toml_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|_| TrainError::MissingFile { path: path.to_path_buf() })?;
        let mut spec: JobSpec = toml::from_str(&text).map_err(|e| TrainError::BadSpec { field: "job.toml", reason: e.to_string() })?;
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
    let ew = ewtune_accountant::edgeworth::epsilon(&history, p.delta, ewtune_accountant::edgeworth::Order::DEFAULT)?.estimate;
    Ok(Plan { units, sample_rate: q, steps, noise_multiplier: sigma, certified_epsilon: certified, edgeworth_epsilon: ew, delta: p.delta })
}

/// What the loop reports after every logical step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// Steps done.
    pub step: u64,
    /// Steps planned.
    pub total_steps: u64,
    /// Units in this step's Poisson sample.
    pub batch_units: usize,
    /// Fraction of this step's units that were clipped.
    pub clipped_fraction: f64,
    /// Certified epsilon spent so far (computed at checkpoints; `None` between them).
    pub epsilon_spent: Option<f64>,
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

/// Mean sequence loss over a dataset (no gradients).
pub fn evaluate(model: &Model, data: &Dataset, micro: usize, device: Device) -> f64 {
    let _guard = tch::no_grad_guard();
    let (mut sum, mut n) = (0.0, 0usize);
    let all: Vec<usize> = (0..data.len()).collect();
    for chunk in all.chunks(micro.max(1)) {
        let mb = data.micro_batch(chunk, device);
        let l = sequence_losses(&model.forward(&mb.ids, None), &mb.ids, &mb.loss_mask);
        sum += l.sum(Kind::Double).double_value(&[]);
        n += l.size()[0] as usize;
    }
    sum / n.max(1) as f64
}

/// One logical DP-SGD step over the units `batch` (possibly empty): clipped sums over physical
/// micro-batches, the pre-drawn `noise` (std sigma C, one value per trainable coordinate) added
/// once, division by the expected batch size, optimizer update. Returns how many units clipped.
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
) -> Result<usize, TrainError> {
    let mut acc = ClippedSum::new(model);
    let mut clipped = 0usize;
    for chunk in split_micro_batches(batch, micro_batch)? {
        let mb = data.micro_batch(chunk, device);
        let norms = clip_and_accumulate(model, &mb, privacy.clip_norm, &mut acc)?;
        clipped += norms.gt(privacy.clip_norm).sum(Kind::Int64).int64_value(&[]) as usize;
    }
    let noise_t = Tensor::from_slice(noise).to_device(device);
    let mut offset = 0i64;
    let grads: Vec<Tensor> = acc
        .entries
        .iter()
        .map(|(_, p, sum)| {
            let n = p.numel() as i64;
            let z = noise_t.narrow(0, offset, n).view(p.size().as_slice());
            offset += n;
            (sum + z) / expected_batch
        })
        .collect();
    optimizer.apply(params, &grads);
    Ok(clipped)
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
    mut before_step: impl FnMut(u64) -> Result<(), TrainError>,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Outcome, TrainError> {
    let device = spec.device.resolve()?;
    let base_model_name = base_name.resolve(&spec.model)?;
    let tokenizer_path = spec.model.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| TrainError::CorruptCheckpoint { path: tokenizer_path.clone(), reason: e.to_string() })?;
    let probe = Model::load(&spec.model, &spec.finetune, None, Device::Cpu)?;
    let vocab = probe.vocab_size();
    let mut data_cfg = spec.data_config.clone();
    if let Some(max) = probe.max_positions() {
        data_cfg.max_length = data_cfg.max_length.min(max as usize);
    }
    drop(probe);
    let mut data = Dataset::load(&spec.data, &tokenizer, &data_cfg, vocab)?;
    std::fs::create_dir_all(&spec.output).map_err(|e| TrainError::Io { path: spec.output.clone(), reason: e.to_string() })?;
    let manifest_sha = match &spec.canaries {
        Some(c) if c.length > data_cfg.max_length => {
            return Err(TrainError::BadSpec {
                field: "canaries.length",
                reason: format!("{} tokens exceed the job's {} tokens per example (data_format.max_length, at most the model's context)", c.length, data_cfg.max_length),
            })
        }
        Some(c) => {
            let (manifest, sha) = crate::audit::canary::prepare(&spec.output.join("audit_manifest.json"), c, vocab, spec.privacy.delta)?;
            data.units.extend(manifest.training_units());
            Some(sha)
        }
        None => None,
    };
    let eval = spec.eval_data.as_ref().map(|p| Dataset::load(p, &tokenizer, &data_cfg, vocab)).transpose()?;
    if let Some(n) = spec.expected_units {
        if n != data.len() {
            return Err(TrainError::BadSpec { field: "expected_units", reason: format!("the dataset holds {} privacy units, the plan assumed {n}", data.len()) });
        }
    }
    let plan = plan(spec, data.len())?;
    let data_sha = sha256_file(&spec.data)?;
    // The canary manifest is part of the job's identity: checkpoints of one draw never resume another.
    let job_fingerprint = fingerprint(spec, &format!("{data_sha}/{}", manifest_sha.as_deref().unwrap_or("-")));
    let ckpt_root = spec.output.join("checkpoints");
    std::fs::create_dir_all(&ckpt_root).map_err(|e| TrainError::Io { path: ckpt_root.clone(), reason: e.to_string() })?;

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
    let model = Model::load(&spec.model, &spec.finetune, resumed.as_ref().map(|r| r.trainable_path.as_path()), device)?;
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
    let eval_before = eval.as_ref().map(|e| evaluate(&model, e, spec.training.micro_batch, device));

    // Fresh OS randomness on every (re)start: a resumed job never replays its noise or samples.
    let noise_source = NoiseSource::from_os()?;
    let mut sampling_rng = super::noise::os_seeded_rng()?;
    let sampler = PoissonSampler::new(plan.sample_rate, data.len())?;
    let noise_std = plan.noise_multiplier * spec.privacy.clip_norm;
    let expected_batch = sampler.expected_batch_size();
    let total_numel: usize = params.iter().map(|p| p.numel()).sum();
    // The noise thread draws while the step computes: leave one core to the step.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).saturating_sub(1).max(1);
    let mut noise = NoiseStream::start(noise_source, noise_std, total_numel, threads);
    let accountant = PldAccountant::default();

    let mut step = start;
    let mut cancelled = false;
    while step < plan.steps {
        if cancel.load(Ordering::Relaxed) {
            cancelled = true;
            break;
        }
        before_step(step + 1)?;
        let batch = sampler.sample(&mut sampling_rng);
        let noise_buf = noise.next_buffer();
        let clipped = private_step(&model, &data, &batch, &spec.privacy, spec.training.micro_batch, &noise_buf, expected_batch, &mut optimizer, &params, device)?;
        noise.recycle(noise_buf);
        history.compose(plan.noise_multiplier, plan.sample_rate, 1)?;
        step += 1;
        let checkpoint_due = step.is_multiple_of(spec.training.checkpoint_every.max(1)) || step == plan.steps;
        let mut epsilon_spent = None;
        if checkpoint_due {
            let state = CheckpointState { step, history: history.clone(), job_fingerprint: job_fingerprint.clone() };
            checkpoint::save(&ckpt_root, &state, &model.trainable(), &optimizer.state(&names))?;
            epsilon_spent = Some(accountant.epsilon(&history, plan.delta)?.bounds.upper);
        }
        on_progress(&Progress {
            step,
            total_steps: plan.steps,
            batch_units: batch.len(),
            clipped_fraction: if batch.is_empty() { 0.0 } else { clipped as f64 / batch.len() as f64 },
            epsilon_spent,
        });
    }
    if cancelled && step > start {
        let state = CheckpointState { step, history: history.clone(), job_fingerprint: job_fingerprint.clone() };
        checkpoint::save(&ckpt_root, &state, &model.trainable(), &optimizer.state(&names))?;
    }
    let epsilon_spent = if history.is_empty() { 0.0 } else { accountant.epsilon(&history, plan.delta)?.bounds.upper };
    let eval_loss = eval.as_ref().map(|e| (eval_before.unwrap_or(f64::NAN), evaluate(&model, e, spec.training.micro_batch, device)));
    let output_model = spec.output.join("model");
    if !cancelled {
        let adapter = match &spec.finetune {
            FineTune::Lora { rank, alpha, target_modules } => Some(AdapterConfig {
                r: *rank,
                lora_alpha: *alpha,
                target_modules: lora_targets(&model, target_modules),
                fan_in_fan_out: matches!(model, Model::Gpt2(_)),
                base_model_name_or_path: base_model_name,
            }),
            FineTune::Full => None,
        };
        let what = match &adapter {
            Some(cfg) => Output::Adapter(cfg),
            None => Output::Full { max_shard_bytes: output::DEFAULT_MAX_SHARD_BYTES },
        };
        output::write(&output_model, &spec.model, &model.named_tensors(), what)?;
        let report = serde_json::json!({ "plan": &plan, "steps_done": step, "epsilon_spent": epsilon_spent, "history": &history, "audit_manifest_sha256": manifest_sha });
        super::weights::write_bytes_atomic(&spec.output.join("privacy.json"), &serde_json::to_vec_pretty(&report).expect("serializes"))?;
    }
    Ok(Outcome { plan, steps_done: step, epsilon_spent, eval_loss, cancelled, output_model })
}

fn lora_targets(model: &Model, given: &[String]) -> Vec<String> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let defaults = match model {
        Model::Gpt2(_) => super::gpt2::DEFAULT_LORA_TARGETS,
        Model::Llama(_) => super::llama::DEFAULT_LORA_TARGETS,
    };
    defaults.iter().map(|s| s.to_string()).collect()
}
