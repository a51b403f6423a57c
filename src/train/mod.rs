//! The DP-SGD training engine on tch: HF checkpoints (GPT-2, Llama, Mistral, Qwen2/3, Gemma 2/3,
//! Phi-3, GPT-NeoX), LoRA and full fine-tuning,
//! per-example clipping without per-example gradients, CSPRNG noise, Poisson sampling,
//! checkpoints. Knows nothing of gRPC. Described in docs/dpsgd.md.

pub mod bench;
pub mod canaries;
pub mod chat;
pub mod checkpoint;
pub mod data;
pub mod dpsgd;
pub mod finetune;
pub mod gradient_canaries;
pub mod job;
pub mod model;
pub mod models;
pub(crate) mod mutation;
pub mod noise;
pub mod optim;
pub mod output;
pub mod peft_adapter;
pub mod precision;
pub mod py_json;
pub mod sampler;
pub mod self_audit;
pub mod synthetic;
pub mod tape;
pub mod units;
pub mod weights;

use std::path::PathBuf;

/// Everything that can go wrong in the engine, naming the file, field or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A required file does not exist.
    #[error("missing file {path}")]
    MissingFile {
        /// The path that was expected.
        path: PathBuf,
    },
    /// A checkpoint (or its config) cannot be read or does not match its config.
    #[error("corrupt or mismatched checkpoint {path}: {reason}")]
    CorruptCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model this engine does not implement exactly; refused rather than approximated.
    #[error("unsupported model: {reason}")]
    UnsupportedModel {
        /// What is unsupported.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("i/o error on {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A dataset line is malformed (line 0: the file as a whole).
    #[error("bad dataset {path}, line {line}: {reason}")]
    BadDataset {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 for the whole file).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The fine-tuning mode leaves no trainable tensor in this model.
    #[error("nothing to train: the fine-tuning mode selects no trainable layer of this model")]
    NothingToTrain,
    /// A job spec field is invalid.
    #[error("invalid {field}: {reason}")]
    BadSpec {
        /// The field, as written in job.toml.
        field: &'static str,
        /// What it must satisfy.
        reason: String,
    },
    /// A hand-written file (`job.toml`) has a key no table reads, or does not parse.
    #[error(transparent)]
    Toml(#[from] crate::strict_toml::StrictTomlError),
    /// The accountant refused the privacy parameters.
    #[error("privacy accounting: {0}")]
    Accountant(#[from] ewtune_accountant::Error),
    /// The CSPRNG could not be seeded.
    #[error("secure randomness: {0}")]
    Noise(#[from] noise::NoiseError),
    /// The sampler refused its parameters.
    #[error("sampling: {0}")]
    Sampler(#[from] sampler::SamplerError),
    /// The privacy ledger refused to record the spend of the next step (the step did not run).
    #[error("privacy ledger: {reason}")]
    Ledger {
        /// Why.
        reason: String,
    },
    /// The job's self-audit found its clipping, noise or sampling not as accounted; the model
    /// was not released (docs/self_audit.md).
    #[error("self-audit failed, the model was not released: {}", report.headline())]
    SelfAuditFailed {
        /// What the self-audit found, the failing tests among it.
        report: Box<self_audit::SelfAuditReport>,
    },
    /// A torch operation failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<crate::fs::PathError> for TrainError {
    fn from(e: crate::fs::PathError) -> Self {
        TrainError::Io { path: e.path, reason: e.source.to_string() }
    }
}

impl TrainError {
    /// The error as a remote client may read it: files are named by their last component only,
    /// never by a path on the daemon's machine (the whole error goes to the daemon's log).
    pub fn without_paths(&self) -> String {
        let file = |p: &std::path::Path| p.file_name().map_or_else(|| "a file".to_string(), |n| n.to_string_lossy().into_owned());
        match self {
            TrainError::MissingFile { path } => format!("missing file {}", file(path)),
            TrainError::CorruptCheckpoint { path, reason } => format!("corrupt or mismatched checkpoint file {}: {reason}", file(path)),
            TrainError::Io { path, .. } => format!("the daemon could not read or write {}; see its log", file(path)),
            TrainError::BadDataset { line: 0, reason, .. } => format!("bad dataset: {reason}"),
            TrainError::BadDataset { line, reason, .. } => format!("bad dataset, line {line}: {reason}"),
            TrainError::Torch(_) => "the training engine failed (torch); see the daemon's log".into(),
            other => other.to_string(),
        }
    }
}
