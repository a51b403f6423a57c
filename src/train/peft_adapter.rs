//! Reading a PEFT LoRA adapter directory (`adapter_config.json`, `adapter_model.safetensors`) as
//! PEFT itself would apply it: target modules as names or a regex, rsLoRA, rank and alpha
//! patterns. Every option that would change the adapted model and that ewtune does not compute
//! (DoRA, biases, extra trained modules, layer selection, other PEFT methods) is refused by name.

use super::finetune::{FineTune, Targets};
use super::model::Model;
use super::TrainError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Keys that never change the adapted model's outputs (bookkeeping, initialisation, dropout),
/// or that are read below.
const INERT: &[&str] = &[
    "base_model_name_or_path", "revision", "inference_mode", "init_lora_weights", "lora_dropout", "peft_version",
    "auto_mapping", "megatron_core", "qalora_group_size", "runtime_config", "eva_config", "corda_config",
    "loftq_config", "fan_in_fan_out", "task_type", "peft_type", "r", "lora_alpha", "use_rslora", "target_modules",
    "rank_pattern", "alpha_pattern", "bias", "lora_ga_config",
];

/// A PEFT adapter resolved for loading.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    /// The base model directory.
    pub base: PathBuf,
    /// The LoRA layout, in ewtune's terms.
    pub finetune: FineTune,
    /// The adapter weights.
    pub weights: PathBuf,
}

/// True when a value is PEFT's "off": null, false, empty.
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

/// Where a LoRA adapter directory's base model is.
#[derive(Debug, Clone, Copy)]
pub enum AdapterBase<'a> {
    /// The directory its `adapter_config.json` names: absolute, or relative to the adapter, then
    /// to the working directory (`ewtune train` records an absolute path).
    Recorded,
    /// The recorded directory when it is one here, else this one (an adapter downloaded from the
    /// daemon names its base by the daemon's model name).
    RecordedOr(&'a Path),
    /// This directory, whatever is recorded (the daemon knows each job's base).
    Given(&'a Path),
}

/// Loads a model ewtune (or transformers / PEFT) wrote: a full checkpoint directory, or a PEFT
/// LoRA adapter directory over its base, found as `base` says.
pub fn load_trained(dir: &Path, base: AdapterBase<'_>, device: tch::Device) -> Result<Model, TrainError> {
    if !dir.join("adapter_config.json").exists() {
        return Model::load(dir, &FineTune::Full, None, device);
    }
    let adapter = read(dir, base)?;
    Model::load(&adapter.base, &adapter.finetune, Some(&adapter.weights), device)
}

/// Reads `dir/adapter_config.json`, its base found as `base` says.
pub fn read(dir: &Path, base: AdapterBase<'_>) -> Result<Adapter, TrainError> {
    let path = dir.join("adapter_config.json");
    let corrupt = |reason: String| TrainError::CorruptCheckpoint { path: path.clone(), reason };
    let refuse = |reason: String| TrainError::UnsupportedModel { reason: format!("PEFT adapter {}: {reason}", dir.display()) };
    let text = std::fs::read(&path).map_err(|_| TrainError::MissingFile { path: path.clone() })?;
    let cfg: Map<String, Value> = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    let get = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let peft_type = get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(refuse(format!("peft_type {peft_type} (only LORA is implemented)")));
    }
    if let Some(t) = get("task_type").and_then(Value::as_str).filter(|t| *t != "CAUSAL_LM") {
        return Err(refuse(format!("task_type {t} (only CAUSAL_LM)")));
    }
    if let Some(b) = get("bias").and_then(Value::as_str).filter(|b| *b != "none") {
        return Err(refuse(format!("bias = {b:?} (trained biases are not implemented; only \"none\")")));
    }
    let mut keys: Vec<&String> = cfg.keys().collect();
    keys.sort();
    for k in keys {
        if !INERT.contains(&k.as_str()) && !is_off(&cfg[k.as_str()]) {
            let hint = if k == "use_dora" { " (DoRA's magnitude vectors are not implemented)" } else { "" };
            return Err(refuse(format!("option `{k}` = {} is not implemented{hint}; refused rather than scored wrongly", cfg[k.as_str()])));
        }
    }
    let rank = get("r").and_then(Value::as_i64).ok_or_else(|| corrupt("`r` is missing or not an integer".into()))?;
    let alpha = get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| corrupt("`lora_alpha` is missing or not a number".into()))?;
    let target_modules = match get("target_modules") {
        Some(v) => serde_json::from_value::<Targets>(v.clone()).map_err(|e| corrupt(format!("target_modules: {e}")))?,
        None => return Err(corrupt("`target_modules` is missing".into())),
    };
    let pattern = |k: &str| -> Result<BTreeMap<String, Value>, TrainError> {
        Ok(get(k).map(|v| serde_json::from_value(v.clone())).transpose().map_err(|e| corrupt(format!("{k}: {e}")))?.unwrap_or_default())
    };
    let rank_pattern = pattern("rank_pattern")?
        .into_iter()
        .map(|(k, v)| v.as_i64().map(|r| (k.clone(), r)).ok_or_else(|| corrupt(format!("rank_pattern[{k}] is not an integer"))))
        .collect::<Result<_, _>>()?;
    let alpha_pattern = pattern("alpha_pattern")?
        .into_iter()
        .map(|(k, v)| v.as_f64().map(|a| (k.clone(), a)).ok_or_else(|| corrupt(format!("alpha_pattern[{k}] is not a number"))))
        .collect::<Result<_, _>>()?;
    let use_rslora = get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let recorded = get("base_model_name_or_path").and_then(Value::as_str).unwrap_or("");
    let found = (!recorded.is_empty()).then(|| resolve_base(dir, Path::new(recorded))).flatten();
    let base = match (base, found) {
        (AdapterBase::Given(b), _) => b.to_path_buf(),
        (_, Some(found)) => found,
        (AdapterBase::RecordedOr(b), None) => b.to_path_buf(),
        (AdapterBase::Recorded, None) => {
            return Err(corrupt(format!("its base_model_name_or_path {recorded:?} is no model directory here; give the base model's directory")))
        }
    };
    Ok(Adapter {
        base,
        finetune: FineTune::Lora { rank, alpha, target_modules, use_rslora, rank_pattern, alpha_pattern },
        weights: dir.join("adapter_model.safetensors"),
    })
}

/// The base model directory: absolute as given, else beside the adapter, else from the
/// working directory.
fn resolve_base(adapter: &Path, base: &Path) -> Option<PathBuf> {
    let candidates = if base.is_absolute() { vec![base.to_path_buf()] } else { vec![adapter.join(base), base.to_path_buf()] };
    candidates.into_iter().find(|c| c.join("config.json").is_file())
}

/// The tokenizer of a model directory: its own `tokenizer.json`, else (an adapter saved
/// without one) its base model's, found as `base` says.
pub fn tokenizer_path(model_dir: &Path, base: AdapterBase<'_>) -> Result<PathBuf, TrainError> {
    let own = model_dir.join("tokenizer.json");
    if own.is_file() || !model_dir.join("adapter_config.json").is_file() {
        return Ok(own);
    }
    Ok(read(model_dir, base)?.base.join("tokenizer.json"))
}
