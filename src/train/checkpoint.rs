//! Training checkpoints and the final model output.
//!
//! A checkpoint is a directory `ckpt-NNNNNNNN/` holding the trainable tensors, the optimizer
//! state and `state.json` (step, privacy history, job fingerprint, the self-audit's observations); `LATEST` names the newest
//! complete one and is replaced atomically only after that directory is fully written and
//! fsynced, so a kill at any instant leaves the last good checkpoint. Older ones are removed only
//! after `LATEST` moved on.
//!
//! The output model a finished job hands over is written by `output.rs`.

use super::weights::{write_safetensors_atomic, Weights};
use crate::fs::write_atomic;
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
    /// What the self-audit observed up to this step (a job with a self-audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_audit: Option<super::self_audit::Observations>,
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
    write_atomic(&dir.join("state.json"), &json)?;
    std::fs::File::open(&dir).and_then(|f| f.sync_all()).map_err(|e| io(&dir, e))?;
    write_atomic(&root.join("LATEST"), name.as_bytes())?;
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
