//! The model a job hands over, in the layouts transformers and PEFT write themselves, so people
//! load it with their own tools (`AutoModelForCausalLM.from_pretrained(dir)`, with or without
//! PEFT), and the way ewtune reads such a directory back.
//!
//! * **LoRA**: PEFT 0.21.2's `save_pretrained` layout: `adapter_config.json` (its whole field set,
//!   `json.dumps(indent=2, sort_keys=True)` bytes), `adapter_model.safetensors` (the adapter
//!   tensors named `base_model.model.<module>.lora_{A,B}.weight`, float32 as PEFT keeps
//!   adapters by default, metadata `{"format": "pt"}`), and the base's tokenizer files. No
//!   `config.json`: transformers would take the directory for a full model.
//!   `base_model_name_or_path` is what the caller says ([`AdapterConfig`]): `ewtune train` gives
//!   the canonical path of the base, the daemon the model's name as its client sent it.
//! * **Full**: transformers 5.24's `save_pretrained` layout: `config.json` and
//!   `generation_config.json` copied from the base, the tokenizer files, and the weights in the
//!   dtype each tensor has in the base checkpoint (read from its safetensors headers), split as
//!   transformers splits the state dict of a model loaded with `from_pretrained` past
//!   `max_shard_bytes` (its default 50 GB): `model-00001-of-0000N.safetensors` and
//!   `model.safetensors.index.json`. Every weight file is byte for byte what transformers'
//!   `save_pretrained` writes for the same tensors (tests/check_outputs.py checks it).
//!
//! The directory is written whole into a staging directory beside it and renamed into place in
//! one step ([`crate::fs::StagedDir`]): a reader, or a crash, sees the previous output
//! or the complete new one, never a mix.

use super::TrainError;
use crate::artifacts;
use crate::fs::{write_synced, Existing, StagedDir};
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// transformers 5.24's default `max_shard_size` of `save_pretrained` ("50GB", 10^9 bytes a GB).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 50_000_000_000;

/// The PEFT release whose `adapter_config.json` field set ewtune writes.
pub const PEFT_VERSION: &str = "0.21.2";

/// The tokenizer files copied from the base when present: what transformers' tokenizers save,
/// fast and slow.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
];

/// Metadata of every safetensors file transformers and PEFT write.
fn pt_metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// What ewtune puts in a PEFT `adapter_config.json`; every other field has PEFT's default.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// Rank.
    pub r: i64,
    /// Alpha (the branch is scaled by alpha / r).
    pub lora_alpha: f64,
    /// Adapted modules: names (written sorted) or a pattern (`all-linear`, a regex).
    pub target_modules: crate::train::finetune::Targets,
    /// rsLoRA scaling (alpha / sqrt(r)).
    pub use_rslora: bool,
    /// Per-module rank overrides.
    pub rank_pattern: std::collections::BTreeMap<String, i64>,
    /// Per-module alpha overrides.
    pub alpha_pattern: std::collections::BTreeMap<String, f64>,
    /// True for GPT-2's Conv1D layout.
    pub fan_in_fan_out: bool,
    /// The base model: a path, or a name the reader resolves.
    pub base_model_name_or_path: String,
}

impl AdapterConfig {
    /// The `adapter_config.json` PEFT 0.21.2's `save_pretrained` writes for this adapter (LoRA,
    /// causal LM, no bias or dropout, inference mode), byte for byte as its
    /// `json.dumps(indent=2, sort_keys=True)` spells it.
    pub fn to_json(&self) -> String {
        use serde_json::{json, Value};
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
            json!(self.lora_alpha as i64) // PEFT users write an int; so does ewtune when it is one
        } else {
            json!(self.lora_alpha)
        };
        let targets = match &self.target_modules {
            crate::train::finetune::Targets::List(v) => {
                let mut v = v.clone();
                v.sort();
                v.dedup();
                json!(v)
            }
            crate::train::finetune::Targets::Pattern(p) => json!(p),
        };
        let number = |a: f64| if a.fract() == 0.0 && a.abs() < 1e15 { json!(a as i64) } else { json!(a) };
        let alpha_pattern: serde_json::Map<String, Value> = self.alpha_pattern.iter().map(|(k, v)| (k.clone(), number(*v))).collect();
        let rank_pattern: serde_json::Map<String, Value> = self.rank_pattern.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let fields: Vec<(&str, Value)> = vec![
            ("alora_invocation_tokens", Value::Null),
            ("alpha_pattern", Value::Object(alpha_pattern)),
            ("arrow_config", Value::Null),
            ("auto_mapping", Value::Null),
            ("base_model_name_or_path", json!(self.base_model_name_or_path)),
            ("bias", json!("none")),
            ("corda_config", Value::Null),
            ("ensure_weight_tying", json!(false)),
            ("eva_config", Value::Null),
            ("exclude_modules", Value::Null),
            ("fan_in_fan_out", json!(self.fan_in_fan_out)),
            ("inference_mode", json!(true)),
            ("init_lora_weights", json!(true)),
            ("kasa_config", Value::Null),
            ("layer_replication", Value::Null),
            ("layers_pattern", Value::Null),
            ("layers_to_transform", Value::Null),
            ("loftq_config", json!({})),
            ("lora_alpha", alpha),
            ("lora_bias", json!(false)),
            ("lora_dropout", json!(0.0)),
            ("lora_ga_config", Value::Null),
            ("megatron_config", Value::Null),
            ("megatron_core", json!("megatron.core")),
            ("modules_to_save", Value::Null),
            ("monteclora_config", Value::Null),
            ("peft_type", json!("LORA")),
            ("peft_version", json!(PEFT_VERSION)),
            ("qalora_group_size", json!(16)),
            ("r", json!(self.r)),
            ("rank_pattern", Value::Object(rank_pattern)),
            ("revision", Value::Null),
            ("target_modules", targets),
            ("target_parameters", Value::Null),
            ("task_type", json!("CAUSAL_LM")),
            ("trainable_token_indices", Value::Null),
            ("use_bdlora", Value::Null),
            ("use_dora", json!(false)),
            ("use_qalora", json!(false)),
            ("use_rslora", json!(self.use_rslora)),
            ("velora_config", Value::Null),
        ];
        python_json(&Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }
}

/// What to write.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    /// A PEFT LoRA adapter (the tensors whose names hold `.lora_`).
    Adapter(&'a AdapterConfig),
    /// The whole model, sharded past `max_shard_bytes` ([`DEFAULT_MAX_SHARD_BYTES`] outside tests).
    Full {
        /// Largest shard before another begins (transformers' `max_shard_size`).
        max_shard_bytes: u64,
    },
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.to_path_buf(), reason: e.to_string() }
}


/// Writes the output model `tensors` (every tensor of the model, by HF name) trained from the
/// base checkpoint directory `base` into `dir`, replacing whatever `dir` held, in one rename.
pub fn write(dir: &Path, base: &Path, tensors: &[(String, Tensor)], what: Output<'_>) -> Result<(), TrainError> {
    let staged = StagedDir::new(dir).map_err(TrainError::from)?;
    for name in TOKENIZER_FILES {
        copy_if_present(&base.join(name), &staged.path().join(name))?;
    }
    match what {
        Output::Adapter(cfg) => write_adapter(staged.path(), tensors, cfg)?,
        Output::Full { max_shard_bytes } => {
            let config = base.join("config.json");
            if !config.is_file() {
                return Err(TrainError::MissingFile { path: config });
            }
            copy_if_present(&config, &staged.path().join("config.json"))?;
            copy_if_present(&base.join("generation_config.json"), &staged.path().join("generation_config.json"))?;
            write_full(staged.path(), base, tensors, max_shard_bytes)?;
        }
    }
    staged.commit(Existing::Replace).map_err(TrainError::from)
}

fn copy_if_present(from: &Path, to: &Path) -> Result<(), TrainError> {
    match std::fs::read(from) {
        Ok(bytes) => write_synced(to, &bytes).map_err(TrainError::from),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(from, e)),
    }
}

fn write_adapter(dir: &Path, tensors: &[(String, Tensor)], cfg: &AdapterConfig) -> Result<(), TrainError> {
    let adapter: Vec<(String, Tensor)> =
        tensors.iter().filter(|(n, _)| n.contains(".lora_")).map(|(n, t)| (format!("base_model.model.{n}"), t.shallow_clone())).collect();
    if adapter.is_empty() {
        return Err(TrainError::NothingToTrain);
    }
    let kinds = vec![Kind::Float; adapter.len()];
    write_safetensors(&dir.join("adapter_model.safetensors"), &adapter, &kinds)?;
    write_synced(&dir.join("adapter_config.json"), cfg.to_json().as_bytes()).map_err(TrainError::from)
}

fn write_full(dir: &Path, base: &Path, tensors: &[(String, Tensor)], max_shard_bytes: u64) -> Result<(), TrainError> {
    let base_kinds = base_dtypes(base)?;
    let full: Vec<&(String, Tensor)> = tensors.iter().filter(|(n, _)| !n.contains(".lora_")).collect();
    let order = hf_save_order(&full.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
    let fallback = predominant(&base_kinds).ok_or_else(|| TrainError::CorruptCheckpoint { path: base.to_path_buf(), reason: "the base checkpoint holds no floating-point tensor".into() })?;
    let ordered: Vec<(String, Tensor, Kind)> = order
        .into_iter()
        .map(|i| {
            let (n, t) = full[i];
            (n.clone(), t.shallow_clone(), base_kinds.get(n).copied().unwrap_or(fallback))
        })
        .collect();
    let sizes: Vec<(String, u64)> = ordered.iter().map(|(n, t, k)| (n.clone(), t.numel() as u64 * k.elt_size_in_bytes() as u64)).collect();
    let plan = plan_shards(&sizes, max_shard_bytes);
    let index_of: HashMap<&str, usize> = ordered.iter().enumerate().map(|(i, (n, _, _))| (n.as_str(), i)).collect();
    for (file, names) in &plan.shards {
        let (named, kinds): (Vec<(String, Tensor)>, Vec<Kind>) = names
            .iter()
            .map(|n| {
                let (name, t, k) = &ordered[index_of[n.as_str()]];
                ((name.clone(), t.shallow_clone()), *k)
            })
            .unzip();
        write_safetensors(&dir.join(file), &named, &kinds)?;
    }
    if plan.shards.len() > 1 {
        let total_parameters: u64 = ordered.iter().map(|(_, t, _)| t.numel() as u64).sum();
        let weight_map: serde_json::Map<String, serde_json::Value> =
            plan.shards.iter().flat_map(|(file, names)| names.iter().map(move |n| (n.clone(), serde_json::Value::from(file.clone())))).collect();
        let index = serde_json::json!({
            "metadata": { "total_parameters": total_parameters, "total_size": plan.total_size },
            "weight_map": weight_map,
        });
        let text = python_json(&index) + "\n";
        write_synced(&dir.join("model.safetensors.index.json"), text.as_bytes()).map_err(TrainError::from)?;
    }
    Ok(())
}

/// A tensor as it is written: converted to its output dtype on the CPU when the serializer
/// reaches it, so only one converted tensor is in memory at a time.
struct Converted {
    tensor: Tensor,
    kind: Kind,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl View for Converted {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let t = self.tensor.detach().to_device(Device::Cpu).to_kind(self.kind).contiguous();
        let mut bytes = vec![0u8; self.data_len()];
        // Sizes agree by construction (numel times the element size of `kind`).
        t.f_copy_data_u8(&mut bytes, t.numel()).expect("a contiguous CPU tensor copies into a buffer of its size");
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.kind.elt_size_in_bytes()
    }
}

/// Writes `tensors`, each converted to its `kinds` entry, as one safetensors file with
/// metadata `{"format": "pt"}`, fsynced.
fn write_safetensors(path: &Path, tensors: &[(String, Tensor)], kinds: &[Kind]) -> Result<(), TrainError> {
    let views = tensors
        .iter()
        .zip(kinds)
        .map(|((name, t), &kind)| {
            let dtype = match kind {
                Kind::Float => Dtype::F32,
                Kind::Half => Dtype::F16,
                Kind::BFloat16 => Dtype::BF16,
                Kind::Double => Dtype::F64,
                other => return Err(TrainError::UnsupportedModel { reason: format!("tensor `{name}` would be written as {other:?}; ewtune writes floating-point tensors only") }),
            };
            Ok((name.as_str(), Converted { tensor: t.shallow_clone(), kind, dtype, shape: t.size().iter().map(|&d| d as usize).collect() }))
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    safetensors::tensor::serialize_to_file(views, pt_metadata(), path).map_err(|e| io(path, e))?;
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| io(path, e))
}

/// The dtype of every tensor of the base checkpoint in `base` (`model.safetensors`, or the
/// shards `model.safetensors.index.json` names), read from the safetensors headers alone.
pub fn base_dtypes(base: &Path) -> Result<HashMap<String, Kind>, TrainError> {
    let single = base.join("model.safetensors");
    let files = if single.is_file() {
        vec![single]
    } else {
        let index_path = base.join("model.safetensors.index.json");
        let text = std::fs::read(&index_path).map_err(|_| TrainError::MissingFile { path: single.clone() })?;
        let index: serde_json::Value = serde_json::from_slice(&text).map_err(|e| TrainError::CorruptCheckpoint { path: index_path.clone(), reason: e.to_string() })?;
        let map = index["weight_map"].as_object().ok_or_else(|| TrainError::CorruptCheckpoint { path: index_path.clone(), reason: "no weight_map object".into() })?;
        let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
        shards.sort();
        shards.dedup();
        for s in &shards {
            artifacts::check_path(s).map_err(|reason| TrainError::CorruptCheckpoint { path: index_path.clone(), reason: format!("shard {s:?}: {reason}") })?;
        }
        shards.into_iter().map(|s| base.join(s)).collect()
    };
    let mut kinds = HashMap::new();
    for f in files {
        for (name, dtype) in safetensors_dtypes(&f)? {
            let kind = match dtype.as_str() {
                "F32" => Kind::Float,
                "F16" => Kind::Half,
                "BF16" => Kind::BFloat16,
                "F64" => Kind::Double,
                other => return Err(TrainError::UnsupportedModel { reason: format!("tensor `{name}` of the base checkpoint has dtype {other}; ewtune trains floating-point checkpoints only") }),
            };
            kinds.insert(name, kind);
        }
    }
    Ok(kinds)
}

/// Largest safetensors header ewtune reads (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// `(tensor name, dtype)` of every tensor in the safetensors file at `path`, from its header.
fn safetensors_dtypes(path: &Path) -> Result<Vec<(String, String)>, TrainError> {
    use std::io::Read;
    let corrupt = |reason: String| TrainError::CorruptCheckpoint { path: path.to_path_buf(), reason };
    let mut f = std::fs::File::open(path).map_err(|_| TrainError::MissingFile { path: path.to_path_buf() })?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| corrupt(format!("no safetensors header: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES {
        return Err(corrupt(format!("a safetensors header of {n} bytes (at most {MAX_HEADER_BYTES})")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| corrupt(format!("the safetensors header is cut short: {e}")))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).map_err(|e| corrupt(format!("the safetensors header is not JSON: {e}")))?;
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| match v["dtype"].as_str() {
            Some(d) => Ok((k, d.to_string())),
            None => Err(corrupt(format!("tensor `{k}` has no dtype in the header"))),
        })
        .collect()
}

/// The dtype most tensors have (ties broken towards the wider type).
fn predominant(kinds: &HashMap<String, Kind>) -> Option<Kind> {
    let mut count: Vec<(Kind, usize)> = Vec::new();
    for k in kinds.values() {
        match count.iter_mut().find(|(c, _)| c == k) {
            Some((_, n)) => *n += 1,
            None => count.push((*k, 1)),
        }
    }
    count.into_iter().max_by_key(|(k, n)| (*n, k.elt_size_in_bytes())).map(|(k, _)| k)
}

/// How transformers splits a state dict into shards.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPlan {
    /// `(file name, tensor names in state-dict order)`, in file order.
    pub shards: Vec<(String, Vec<String>)>,
    /// Bytes of every tensor (the index's `metadata.total_size`).
    pub total_size: u64,
}

/// huggingface_hub's `split_state_dict_into_shards_factory` (what transformers'
/// `save_pretrained` uses), for `(name, bytes)` in state-dict order: tensors fill a shard in
/// order until the next would take it past `max_shard_bytes`; a tensor larger than that gets a
/// shard of its own, placed where it comes. One shard is `model.safetensors`; N shards are
/// `model-0000i-of-0000N.safetensors`.
pub fn plan_shards(sizes: &[(String, u64)], max_shard_bytes: u64) -> ShardPlan {
    let mut shards: Vec<Vec<String>> = Vec::new();
    let (mut current, mut current_size, mut total_size) = (Vec::new(), 0u64, 0u64);
    for (name, size) in sizes {
        total_size += size;
        if *size > max_shard_bytes {
            shards.push(vec![name.clone()]);
            continue;
        }
        if current_size + size > max_shard_bytes {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(name.clone());
        current_size += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    let n = shards.len();
    let shards = if n == 1 {
        vec![("model.safetensors".to_string(), shards.pop().expect("one shard"))]
    } else {
        shards.into_iter().enumerate().map(|(i, names)| (format!("model-{:05}-of-{n:05}.safetensors", i + 1), names)).collect()
    };
    ShardPlan { shards, total_size }
}

/// The order in which transformers 5.24's `save_pretrained` lays out the state dict of a model
/// loaded with `from_pretrained` (its `revert_weight_conversion` sorts it by `dot_natural_key`):
/// names split at `.`, a numeric component before any other and compared as a number, other
/// components compared as text, then by a numeric suffix (`shard_2` before `shard_11`). Shard
/// boundaries fall where transformers puts them. Returns indices into `names`; equal keys keep
/// their order.
pub fn hf_save_order(names: &[&str]) -> Vec<usize> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Part<'a> {
        /// A number: (digits without leading zeros, compared by length then text).
        Number(usize, &'a str),
        /// Text, with the number its trailing digits make, if any.
        Text(&'a str, Option<(usize, &'a str)>),
    }
    fn number(digits: &str) -> (usize, &str) {
        let d = digits.trim_start_matches('0');
        (d.len(), d)
    }
    fn key(name: &str) -> Vec<Part<'_>> {
        name.split('.')
            .map(|part| {
                if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                    let (len, d) = number(part);
                    Part::Number(len, d)
                } else {
                    let text = part.trim_end_matches(|c: char| c.is_ascii_digit());
                    let digits = &part[text.len()..];
                    Part::Text(text, (!digits.is_empty()).then(|| number(digits)))
                }
            })
            .collect()
    }
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by(|&a, &b| key(names[a]).cmp(&key(names[b])));
    idx
}

/// `value` as Python's `json.dumps(value, indent=2, sort_keys=True)` writes it (what PEFT and
/// transformers write): keys sorted, two-space indents, non-ASCII characters as `\uXXXX`,
/// floats as Python's `repr`.
pub fn python_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_py(&mut out, value, 0);
    out
}

fn write_py(out: &mut String, v: &serde_json::Value, depth: usize) {
    use serde_json::Value;
    let indent = |out: &mut String, d: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(d));
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&super::py_json::float_repr(f)),
            _ => out.push_str("null"),
        },
        Value::String(s) => super::py_json::string(out, s, true),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, depth + 1);
                write_py(out, item, depth + 1);
            }
            indent(out, depth);
            out.push(']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push('{');
            for (i, (k, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, depth + 1);
                super::py_json::string(out, k, true);
                out.push_str(": ");
                write_py(out, item, depth + 1);
            }
            indent(out, depth);
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_spelled_like_python_json_dumps() {
        let v = serde_json::json!({"b": [1, "é😀"], "a": {}, "c": [], "d": {"y": null, "x": 0.0}});
        assert_eq!(
            python_json(&v),
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    \"\\u00e9\\ud83d\\ude00\"\n  ],\n  \"c\": [],\n  \"d\": {\n    \"x\": 0.0,\n    \"y\": null\n  }\n}"
        );
    }

    #[test]
    fn shards_split_like_huggingface_hub() {
        let t = |n: &str, s: u64| (n.to_string(), s);
        // The docstring's example: [6, 6, 2, 6, 2, 2] GB at 10 GB -> [6], [6+2], [6+2+2].
        let plan = plan_shards(&[t("a", 6), t("b", 6), t("c", 2), t("d", 6), t("e", 2), t("f", 2)], 10);
        let names: Vec<Vec<String>> = plan.shards.iter().map(|(_, n)| n.clone()).collect();
        assert_eq!(names, [vec!["a"], vec!["b", "c"], vec!["d", "e", "f"]]);
        assert_eq!(plan.shards[0].0, "model-00001-of-00003.safetensors");
        assert_eq!(plan.total_size, 24);
        // A tensor bigger than the limit gets a shard of its own where it comes.
        let plan = plan_shards(&[t("a", 2), t("big", 30), t("b", 2)], 10);
        let names: Vec<Vec<String>> = plan.shards.iter().map(|(_, n)| n.clone()).collect();
        assert_eq!(names, [vec!["big"], vec!["a", "b"]]);
        let plan = plan_shards(&[t("a", 2), t("b", 2)], 10);
        assert_eq!(plan.shards, [("model.safetensors".to_string(), vec!["a".to_string(), "b".to_string()])]);
    }

    #[test]
    fn tensors_are_laid_out_in_transformers_dot_natural_order() {
        let names = [
            "model.norm.weight",
            "model.layers.10.mlp.up_proj.weight",
            "model.layers.2.self_attn.q_proj.weight",
            "model.layers.2.input_layernorm.weight",
            "lm_head.weight",
            "model.embed_tokens.weight",
            "model.layers.2.mlp.down_proj.weight",
            "x.shard_11",
            "x.shard_2",
            "x.shard",
        ];
        let order: Vec<&str> = hf_save_order(&names).into_iter().map(|i| names[i]).collect();
        assert_eq!(
            order,
            [
                "lm_head.weight",
                "model.embed_tokens.weight",
                "model.layers.2.input_layernorm.weight",
                "model.layers.2.mlp.down_proj.weight",
                "model.layers.2.self_attn.q_proj.weight",
                "model.layers.10.mlp.up_proj.weight",
                "model.norm.weight",
                "x.shard",
                "x.shard_2",
                "x.shard_11",
            ]
        );
    }
}
