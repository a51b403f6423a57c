//! Checkpoint tensors by their HF names: reading a checkpoint directory (`model.safetensors`, or
//! shards through `model.safetensors.index.json`; f32, bf16 or f16) into a name map with shape
//! checks that fail with the file and tensor named, and writing tensors back atomically (temp
//! name, fsync, rename, fsync of the directory). Pickle checkpoints are refused, never executed.

use super::TrainError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Named tensors read from a checkpoint, each in its file's dtype until taken.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// dtype of the frozen tensors a model takes (trainable ones are always f32).
    frozen_kind: Kind,
}

/// Names of non-parameter buffers some checkpoints carry (GPT-2's causal-mask buffers, old
/// rotary caches): recomputed by the model, so dropped when present.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name.ends_with("rotary_emb.inv_freq")
}

/// The safetensors index of a sharded checkpoint.
#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

impl Weights {
    /// Reads every tensor of a safetensors file (converted to f32 on `device`).
    pub fn read(path: &Path, device: Device) -> Result<Self, TrainError> {
        if !path.is_file() {
            return Err(TrainError::MissingFile { path: path.to_path_buf() });
        }
        let mut w = Weights { path: path.to_path_buf(), tensors: HashMap::new(), frozen_kind: Kind::Float };
        w.read_file(path, device, None)?;
        Ok(w)
    }

    /// Reads a checkpoint directory as transformers saves it: `model.safetensors`, or the shards
    /// named by `model.safetensors.index.json` (each read, converted and released before the
    /// next, so at most one shard is held twice). `pytorch_model.bin` is refused with how to
    /// convert it: reading pickle can execute code.
    pub fn read_dir(dir: &Path, device: Device) -> Result<Self, TrainError> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Weights::read(&single, device);
        }
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.is_file() {
            let corrupt = |reason: String| TrainError::CorruptCheckpoint { path: index_path.clone(), reason };
            let text = std::fs::read(&index_path).map_err(|e| TrainError::Io { path: index_path.clone(), reason: e.to_string() })?;
            let index: ShardIndex = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
            let mut w = Weights { path: index_path.clone(), tensors: HashMap::new(), frozen_kind: Kind::Float };
            let shards: std::collections::BTreeSet<&String> = index.weight_map.values().collect();
            for shard in shards {
                if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                    return Err(corrupt(format!("shard name {shard:?} must be a file name in the checkpoint directory")));
                }
                let path = dir.join(shard);
                if !path.is_file() {
                    return Err(TrainError::MissingFile { path });
                }
                let expected: std::collections::BTreeSet<&str> =
                    index.weight_map.iter().filter(|(_, f)| *f == shard).map(|(n, _)| n.as_str()).collect();
                w.read_file(&path, device, Some(&expected))?;
            }
            if let Some(name) = index.weight_map.keys().find(|n| !w.tensors.contains_key(n.as_str()) && !is_buffer(n)) {
                return Err(corrupt(format!("tensor `{name}` is listed in the index but not in its shard")));
            }
            return Ok(w);
        }
        for pickle in ["pytorch_model.bin", "pytorch_model.bin.index.json"] {
            if dir.join(pickle).is_file() {
                return Err(TrainError::UnsupportedModel {
                    reason: format!(
                        "{} holds {pickle}, a pickle checkpoint; ewtune does not read pickle (loading it can run arbitrary code). \
                         Convert it once with transformers: python -c \"import sys, transformers as t; \
                         t.AutoModelForCausalLM.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])\" IN OUT \
                         (OUT then holds model.safetensors)",
                        dir.display()
                    ),
                });
            }
        }
        Err(TrainError::MissingFile { path: single })
    }

    /// Reads one safetensors file into the map (f32 on `device`); with `expected`, the file
    /// must hold exactly those tensors (a shard of an index).
    fn read_file(&mut self, path: &Path, device: Device, expected: Option<&std::collections::BTreeSet<&str>>) -> Result<(), TrainError> {
        let corrupt = |reason: String| TrainError::CorruptCheckpoint { path: path.to_path_buf(), reason };
        let list = Tensor::read_safetensors(path).map_err(|e| corrupt(e.to_string()))?;
        if let Some(expected) = expected {
            let got: std::collections::BTreeSet<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
            if let Some(n) = got.symmetric_difference(expected).next() {
                return Err(corrupt(format!("tensor `{n}` is in the shard or in the index for it, not in both")));
            }
        }
        for (name, t) in list {
            if is_buffer(&name) {
                continue;
            }
            match t.kind() {
                Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double => {}
                other => return Err(corrupt(format!("tensor `{name}` has dtype {other:?}; only f32, bf16 and f16 weights are read (quantised checkpoints are not)"))),
            }
            // Kept in the file's dtype until a model takes it (then converted once).
            let t = if t.kind() == Kind::Double { t.to_kind(Kind::Float) } else { t };
            if self.tensors.insert(name.clone(), t.to_device(device)).is_some() {
                return Err(corrupt(format!("tensor `{name}` appears twice")));
            }
        }
        Ok(())
    }

    /// Prefixes every name that lacks `prefix`, except those starting with `except` (GPT-2 as
    /// the Hub ships it: `h.0...` for `transformer.h.0...`).
    pub fn add_prefix_except(&mut self, prefix: &str, except: &str) {
        self.tensors = std::mem::take(&mut self.tensors)
            .into_iter()
            .map(|(n, t)| if n.starts_with(prefix) || n.starts_with(except) { (n, t) } else { (format!("{prefix}{n}"), t) })
            .collect();
    }

    /// After a model took its tensors: any tensor left is one the config does not explain.
    pub fn refuse_leftovers(&self) -> Result<(), TrainError> {
        let mut left: Vec<&String> = self.tensors.keys().collect();
        left.sort();
        match left.first() {
            None => Ok(()),
            Some(n) => Err(TrainError::CorruptCheckpoint {
                path: self.path.clone(),
                reason: format!("tensor `{n}` is not part of the model its config describes ({} unused tensors)", left.len()),
            }),
        }
    }

    /// An in-memory set (tests and freshly initialised models).
    pub fn from_map(path: PathBuf, tensors: HashMap<String, Tensor>) -> Self {
        Weights { path, tensors, frozen_kind: Kind::Float }
    }

    /// Frozen tensors are taken in `kind` (bf16 training keeps the base in bf16).
    pub fn set_frozen_kind(&mut self, kind: Kind) {
        self.frozen_kind = kind;
    }

    /// True when any tensor is stored in bfloat16 (a bf16 checkpoint).
    pub fn holds_bf16(&self) -> bool {
        self.tensors.values().any(|t| t.kind() == Kind::BFloat16)
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

    /// Takes tensor `name`, which must have `shape`, as a leaf that requires grad iff `trainable`:
    /// trainable tensors in f32 (the master copy the optimizer updates), frozen ones in the
    /// frozen dtype.
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
        let kind = if trainable { Kind::Float } else { self.frozen_kind };
        Ok(t.detach().to_kind(kind).set_requires_grad(trainable))
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
