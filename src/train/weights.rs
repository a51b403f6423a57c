//! Checkpoint tensors by their HF names: reading a checkpoint directory (`model.safetensors`, or
//! shards through `model.safetensors.index.json`; f32, bf16 or f16) into a name map with shape
//! checks that fail with the file and tensor named (files are memory-mapped and each tensor is
//! copied out once, in the dtype the model wants, when the model takes it: loading never holds
//! a second copy of the model), and writing tensors back atomically (temp
//! name, fsync, rename, fsync of the directory). Pickle checkpoints are refused, never executed.

use super::TrainError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Named tensors of a checkpoint: in memory (adapters, tests), or still in a memory-mapped file.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    mapped: HashMap<String, Mapped>,
    device: Device,
    /// dtype of the frozen tensors a model takes (trainable ones are always f32).
    frozen_kind: Kind,
}

/// A tensor still in its file: bytes `start..end` of a mapped safetensors file.
struct Mapped {
    file: std::sync::Arc<memmap2::Mmap>,
    start: usize,
    end: usize,
    shape: Vec<i64>,
    kind: Kind,
}

impl Mapped {
    fn load(&self) -> Result<Tensor, tch::TchError> {
        Tensor::f_from_data_size(&self.file[self.start..self.end], &self.shape, self.kind)
    }
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
        let mut w = Weights { path: path.to_path_buf(), tensors: HashMap::new(), mapped: HashMap::new(), device, frozen_kind: Kind::Float };
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
            let mut w = Weights { path: index_path.clone(), tensors: HashMap::new(), mapped: HashMap::new(), device, frozen_kind: Kind::Float };
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
            if let Some(name) = index.weight_map.keys().find(|n| !w.contains(n) && !is_buffer(n)) {
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

    /// Maps one safetensors file and records where each tensor is; with `expected`, the file
    /// must hold exactly those tensors (a shard of an index).
    fn read_file(&mut self, path: &Path, device: Device, expected: Option<&std::collections::BTreeSet<&str>>) -> Result<(), TrainError> {
        use safetensors::Dtype;
        let corrupt = |reason: String| TrainError::CorruptCheckpoint { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(|e| TrainError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
        // SAFETY: the map is read-only; a checkpoint rewritten underneath a running load is
        // outside what ewtune supports (as for every safetensors reader that maps files).
        let map = std::sync::Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| TrainError::Io { path: path.to_path_buf(), reason: e.to_string() })?);
        let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| corrupt(e.to_string()))?;
        let list = st.tensors();
        if let Some(expected) = expected {
            let got: std::collections::BTreeSet<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
            if let Some(n) = got.symmetric_difference(expected).next() {
                return Err(corrupt(format!("tensor `{n}` is in the shard or in the index for it, not in both")));
            }
        }
        self.device = device;
        for (name, view) in list {
            if is_buffer(&name) {
                continue;
            }
            let kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::BF16 => Kind::BFloat16,
                Dtype::F16 => Kind::Half,
                Dtype::F64 => Kind::Double,
                other => return Err(corrupt(format!("tensor `{name}` has dtype {other:?}; only f32, bf16 and f16 weights are read (quantised checkpoints are not)"))),
            };
            let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
            let end = start + view.data().len();
            let shape = view.shape().iter().map(|&d| d as i64).collect();
            if self.tensors.contains_key(&name) || self.mapped.insert(name.clone(), Mapped { file: map.clone(), start, end, shape, kind }).is_some() {
                return Err(corrupt(format!("tensor `{name}` appears twice")));
            }
        }
        Ok(())
    }

    /// Prefixes every name that lacks `prefix`, except those starting with `except` (GPT-2 as
    /// the Hub ships it: `h.0...` for `transformer.h.0...`).
    pub fn add_prefix_except(&mut self, prefix: &str, except: &str) {
        let rename = |n: String| if n.starts_with(prefix) || n.starts_with(except) { n } else { format!("{prefix}{n}") };
        self.tensors = std::mem::take(&mut self.tensors).into_iter().map(|(n, t)| (rename(n), t)).collect();
        self.mapped = std::mem::take(&mut self.mapped).into_iter().map(|(n, t)| (rename(n), t)).collect();
    }

    /// After a model took its tensors: any tensor left is one the config does not explain.
    pub fn refuse_leftovers(&self) -> Result<(), TrainError> {
        let mut left: Vec<&String> = self.tensors.keys().chain(self.mapped.keys()).collect();
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
        Weights { path, tensors, mapped: HashMap::new(), device: Device::Cpu, frozen_kind: Kind::Float }
    }

    /// Frozen tensors are taken in `kind` (bf16 training keeps the base in bf16).
    pub fn set_frozen_kind(&mut self, kind: Kind) {
        self.frozen_kind = kind;
    }

    /// True when any tensor is stored in bfloat16 (a bf16 checkpoint).
    pub fn holds_bf16(&self) -> bool {
        self.tensors.values().any(|t| t.kind() == Kind::BFloat16) || self.mapped.values().any(|m| m.kind == Kind::BFloat16)
    }

    /// Adds (or replaces) the tensors of `other`, e.g. LoRA adapters over a base model. PEFT's
    /// `base_model.model.` prefix is removed, so PEFT adapter files merge like our checkpoints.
    pub fn merge(&mut self, other: Weights) {
        let strip = |n: String| match n.strip_prefix("base_model.model.") {
            Some(rest) => rest.to_string(),
            None => n,
        };
        for (n, t) in other.tensors {
            let n = strip(n);
            self.mapped.remove(&n);
            self.tensors.insert(n, t);
        }
        for (n, m) in other.mapped {
            let n = strip(n);
            self.tensors.remove(&n);
            self.mapped.insert(n, m);
        }
    }

    /// True when the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.mapped.contains_key(name)
    }

    /// Takes tensor `name`, which must have `shape`, as a leaf that requires grad iff `trainable`:
    /// trainable tensors in f32 (the master copy the optimizer updates), frozen ones in the
    /// frozen dtype.
    pub fn take(&mut self, name: &str, shape: &[i64], trainable: bool) -> Result<Tensor, TrainError> {
        let missing = || TrainError::CorruptCheckpoint { path: self.path.clone(), reason: format!("tensor `{name}` is missing") };
        let t = match self.tensors.remove(name) {
            Some(t) => t,
            None => {
                let m = self.mapped.remove(name).ok_or_else(missing)?;
                if m.shape != shape {
                    return Err(TrainError::CorruptCheckpoint {
                        path: self.path.clone(),
                        reason: format!("tensor `{name}` has shape {:?}, the config implies {shape:?}", m.shape),
                    });
                }
                let kind = if trainable { Kind::Float } else { self.frozen_kind };
                m.load()?.to_kind(kind).to_device(self.device)
            }
        };
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

/// Writes `tensors` to `path` atomically ([`crate::fs::write_atomic_with`]).
pub fn write_safetensors_atomic(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), TrainError> {
    let owned: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t.detach().to_device(Device::Cpu).contiguous())).collect();
    crate::fs::write_atomic_with(path, |_, tmp| Tensor::write_safetensors(&owned, tmp).map_err(std::io::Error::other))?;
    Ok(())
}
