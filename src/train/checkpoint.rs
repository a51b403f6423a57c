//! Training checkpoints and the final model output.
//!
//! A checkpoint is a directory `ckpt-NNNNNNNN/` holding the trainable tensors, the optimizer
//! state and `state.json` (step, privacy history, job fingerprint); `LATEST` names the newest
//! complete one and is replaced atomically only after that directory is fully written and
//! fsynced, so a kill at any instant leaves the last good checkpoint. Older ones are removed only
//! after `LATEST` moved on.
//!
//! The output model is HF-loadable: full fine-tuning writes `model.safetensors` with every
//! tensor; LoRA writes PEFT's `adapter_config.json` + `adapter_model.safetensors`.

use super::weights::{write_bytes_atomic, write_safetensors_atomic, Weights};
use super::TrainError;
use ewtune_accountant::History;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Logical steps completed.
    pub step: u64,
    /// Every privacy-relevant step composed so far.
    pub history: History,
    /// Fingerprint of the job (dataset hash, model, hyper-parameters) the checkpoint belongs to.
    pub job_fingerprint: String,
}

fn io(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::Io { path: path.to_path_buf(), reason: e.to_string() }
}

/// Writes checkpoint `state` with `trainable` and `optimizer` tensors under `root`.
pub fn save(root: &Path, state: &CheckpointState, trainable: &[(String, Tensor)], optimizer: &[(String, Tensor)]) -> Result<PathBuf, TrainError> {
    let name = format!("ckpt-{:08}", state.step);
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?; // an unfinished earlier attempt: LATEST never named it
    }
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    write_safetensors_atomic(&dir.join("trainable.safetensors"), trainable)?;
    write_safetensors_atomic(&dir.join("optimizer.safetensors"), optimizer)?;
    let json = serde_json::to_vec_pretty(state).expect("checkpoint state serializes");
    write_bytes_atomic(&dir.join("state.json"), &json)?;
    std::fs::File::open(&dir).and_then(|f| f.sync_all()).map_err(|e| io(&dir, e))?;
    write_bytes_atomic(&root.join("LATEST"), name.as_bytes())?;
    // Only now are older checkpoints garbage.
    for entry in std::fs::read_dir(root).map_err(|e| io(root, e))?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with("ckpt-") && n != name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(dir)
}

/// A checkpoint read back.
pub struct Loaded {
    /// Its state.
    pub state: CheckpointState,
    /// Path of its trainable tensors (merged over the base model when loading).
    pub trainable_path: PathBuf,
    /// Optimizer state by name.
    pub optimizer: HashMap<String, Tensor>,
}

/// Reads the checkpoint `LATEST` names, if any. A named but unreadable checkpoint is an error,
/// never silently skipped: that would restart training and double-spend privacy.
pub fn load_latest(root: &Path, device: Device) -> Result<Option<Loaded>, TrainError> {
    let latest = root.join("LATEST");
    if !latest.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(|e| io(&latest, e))?;
    let dir = root.join(name.trim());
    let state_path = dir.join("state.json");
    let text = std::fs::read(&state_path).map_err(|_| TrainError::CorruptCheckpoint {
        path: state_path.clone(),
        reason: "LATEST names a checkpoint without state.json".into(),
    })?;
    let state: CheckpointState =
        serde_json::from_slice(&text).map_err(|e| TrainError::CorruptCheckpoint { path: state_path.clone(), reason: e.to_string() })?;
    let opt_path = dir.join("optimizer.safetensors");
    let optimizer = Tensor::read_safetensors(&opt_path)
        .map_err(|e| TrainError::CorruptCheckpoint { path: opt_path.clone(), reason: e.to_string() })?
        .into_iter()
        .map(|(n, t)| (n, t.to_device(device)))
        .collect();
    let trainable_path = dir.join("trainable.safetensors");
    Weights::read(&trainable_path, device)?; // validate now, with the file named
    Ok(Some(Loaded { state, trainable_path, optimizer }))
}

/// PEFT's `adapter_config.json` for LoRA adapters.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterConfig {
    /// Always "LORA".
    pub peft_type: &'static str,
    /// Always "CAUSAL_LM".
    pub task_type: &'static str,
    /// Rank.
    pub r: i64,
    /// Alpha.
    pub lora_alpha: f64,
    /// Adapted modules (names or a pattern, as PEFT reads them).
    pub target_modules: super::finetune::Targets,
    /// rsLoRA scaling (alpha / sqrt(r)).
    pub use_rslora: bool,
    /// Per-module rank overrides.
    pub rank_pattern: std::collections::BTreeMap<String, i64>,
    /// Per-module alpha overrides.
    pub alpha_pattern: std::collections::BTreeMap<String, f64>,
    /// True for GPT-2's Conv1D layout.
    pub fan_in_fan_out: bool,
    /// No bias training.
    pub bias: &'static str,
    /// No dropout was used.
    pub lora_dropout: f64,
    /// Where the base model came from.
    pub base_model_name_or_path: String,
}

/// Writes the output model into `dir`: `full` tensors as `model.safetensors`, or LoRA tensors as
/// PEFT's adapter files, plus `config.json` and `tokenizer.json` copied from the base.
pub fn write_output(
    dir: &Path,
    base: &Path,
    tensors: &[(String, Tensor)],
    adapter: Option<&AdapterConfig>,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for f in ["config.json", "tokenizer.json"] {
        let src = base.join(f);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(|e| io(&src, e))?;
            write_bytes_atomic(&dir.join(f), &bytes)?;
        }
    }
    match adapter {
        None => write_safetensors_atomic(&dir.join("model.safetensors"), tensors),
        Some(cfg) => {
            let peft: Vec<(String, Tensor)> = tensors
                .iter()
                .filter(|(n, _)| n.contains(".lora_"))
                .map(|(n, t)| (format!("base_model.model.{n}"), t.shallow_clone()))
                .collect();
            write_safetensors_atomic(&dir.join("adapter_model.safetensors"), &peft)?;
            write_bytes_atomic(&dir.join("adapter_config.json"), &serde_json::to_vec_pretty(cfg).expect("serializes"))
        }
    }
}
