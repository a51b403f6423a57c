//! Checkpoint tensors by their HF names: reading a `model.safetensors` into a name map with
//! shape and dtype checks that fail with the file and tensor named, and writing tensors back
//! atomically (temp name, fsync, rename, fsync of the directory).

use super::TrainError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Named tensors read from one safetensors file.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Reads every tensor of a safetensors file (converted to f32 on `device`).
    pub fn read(path: &Path, device: Device) -> Result<Self, TrainError> {
        if !path.is_file() {
            return Err(TrainError::MissingFile { path: path.to_path_buf() });
        }
        let list = Tensor::read_safetensors(path).map_err(|e| TrainError::CorruptCheckpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let tensors = list.into_iter().map(|(n, t)| (n, t.to_kind(Kind::Float).to_device(device))).collect();
        Ok(Weights { path: path.to_path_buf(), tensors })
    }

    /// An in-memory set (tests and freshly initialised models).
    pub fn from_map(path: PathBuf, tensors: HashMap<String, Tensor>) -> Self {
        Weights { path, tensors }
    }

    /// Adds (or replaces) the tensors of `other`, e.g. LoRA adapters over a base model. PEFT's
    /// `base_model.model.` prefix is removed, so PEFT adapter files merge like our checkpoints.
    pub fn merge(&mut self, other: Weights) {
        self.tensors.extend(other.tensors.into_iter().map(|(n, t)| match n.strip_prefix("base_model.model.") {
            Some(rest) => (rest.to_string(), t),
            None => (n, t),
        }));
    }

    /// True when the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Takes tensor `name`, which must have `shape`, as a leaf that requires grad iff `trainable`.
    pub fn take(&mut self, name: &str, shape: &[i64], trainable: bool) -> Result<Tensor, TrainError> {
        let t = self.tensors.remove(name).ok_or_else(|| TrainError::CorruptCheckpoint {
            path: self.path.clone(),
            reason: format!("tensor `{name}` is missing"),
        })?;
        if t.size() != shape {
            return Err(TrainError::CorruptCheckpoint {
                path: self.path.clone(),
                reason: format!("tensor `{name}` has shape {:?}, the config implies {shape:?}", t.size()),
            });
        }
        if t.isfinite().logical_not().any().int64_value(&[]) != 0 {
            return Err(TrainError::CorruptCheckpoint { path: self.path.clone(), reason: format!("tensor `{name}` holds NaN or infinite values") });
        }
        Ok(t.detach().set_requires_grad(trainable))
    }
}

/// Writes `tensors` to `path` atomically: a crash at any instant leaves either the old file or
/// the complete new one (and at worst a `.tmp-*` file beside it, which the daemon removes at
/// start-up).
pub fn write_safetensors_atomic(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), TrainError> {
    let tmp = temp_sibling(path)?;
    let owned: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t.detach().to_device(Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&owned, tmp.path()).map_err(|e| TrainError::Io { path: tmp.path().to_path_buf(), reason: e.to_string() })?;
    commit_file(tmp, path)
}

/// Writes bytes to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut tmp = temp_sibling(path)?;
    tmp.write_all(bytes).map_err(|e| TrainError::Io { path: tmp.path().to_path_buf(), reason: e.to_string() })?;
    commit_file(tmp, path)
}

/// Prefix of every temp file written beside its target.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A new temp file with a unique name (`.tmp-XXXXXX`) in `path`'s directory, mode 0600: two
/// writers never share one, and one left by a crash is recognisable by its prefix.
fn temp_sibling(path: &Path) -> Result<tempfile::NamedTempFile, TrainError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir).map_err(|e| TrainError::Io { path: dir.to_path_buf(), reason: e.to_string() })
}

/// fsync the temp file, rename it over the target, fsync the directory.
fn commit_file(tmp: tempfile::NamedTempFile, path: &Path) -> Result<(), TrainError> {
    let io = |p: &Path, e: std::io::Error| TrainError::Io { path: p.to_path_buf(), reason: e.to_string() };
    tmp.as_file().sync_all().map_err(|e| io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| io(path, e.error))?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io(dir, e))?;
    }
    Ok(())
}
