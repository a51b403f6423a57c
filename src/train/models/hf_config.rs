//! A model's `config.json` read strictly: each family takes the fields it implements, checks
//! their values, and whatever is left must be metadata that does not change the computation.
//! A field ewtune does not implement is refused by name, never ignored.

use crate::train::TrainError;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Fields that never change what the model computes from token ids: identifiers, bookkeeping,
/// generation defaults, dropout (inactive in evaluation, and DP-SGD here trains without it),
/// attention-kernel choices.
const METADATA: &[&str] = &[
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "unk_token_id",
    "use_cache", "initializer_range", "initializer_factor", "output_attentions", "output_hidden_states",
    "return_dict", "use_return_dict", "torchscript", "id2label", "label2id", "num_labels", "problem_type",
    "tokenizer_class", "task_specific_params", "finetuning_task", "prefix", "is_decoder", "is_encoder_decoder",
    "add_cross_attention", "tie_encoder_decoder", "cross_attention_hidden_size", "chunk_size_feed_forward",
    "pruned_heads", "tf_legacy_loss", "use_bfloat16", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "classifier_dropout", "_attn_implementation_autoset", "attn_implementation", "n_ctx", "pretraining_tp",
];

/// A `config.json` being resolved by one family.
pub struct HfConfig {
    path: PathBuf,
    family: &'static str,
    fields: Map<String, Value>,
}

impl HfConfig {
    /// Reads `dir/config.json` (any JSON object).
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|_| TrainError::MissingFile { path: path.clone() })?;
        let fields: Map<String, Value> =
            serde_json::from_slice(&text).map_err(|e| TrainError::CorruptCheckpoint { path: path.clone(), reason: e.to_string() })?;
        Ok(HfConfig { path, family: "model", fields })
    }

    /// The raw `model_type`, if any.
    pub fn model_type(&self) -> Option<&str> {
        self.fields.get("model_type").and_then(Value::as_str)
    }

    /// Names the family resolving the rest (used in messages).
    pub fn for_family(mut self, family: &'static str) -> Self {
        self.family = family;
        self
    }

    /// The family's name.
    pub fn family(&self) -> &'static str {
        self.family
    }

    fn corrupt(&self, reason: String) -> TrainError {
        TrainError::CorruptCheckpoint { path: self.path.clone(), reason }
    }

    /// Refuses a feature of this family's config.
    pub fn unsupported(&self, what: impl std::fmt::Display) -> TrainError {
        TrainError::UnsupportedModel { reason: format!("{} {what}", self.family) }
    }

    /// Takes an optional field (`null` counts as absent).
    pub fn opt<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, TrainError> {
        match self.fields.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| self.corrupt(format!("config field `{key}` = {v}: {e}"))),
        }
    }

    /// Takes a required field.
    pub fn req<T: DeserializeOwned>(&mut self, key: &str) -> Result<T, TrainError> {
        self.opt(key)?.ok_or_else(|| self.corrupt(format!("config field `{key}` is missing")))
    }

    /// Takes a field that ewtune implements only at one value (its absence means that value).
    pub fn only<T: DeserializeOwned + PartialEq + std::fmt::Debug>(&mut self, key: &str, implemented: T) -> Result<(), TrainError> {
        match self.opt::<T>(key)? {
            Some(v) if v != implemented => Err(self.unsupported(format!("config field `{key}` = {v:?} (implemented: {implemented:?})"))),
            _ => Ok(()),
        }
    }

    /// Takes a positive integer field.
    pub fn positive(&mut self, key: &str) -> Result<i64, TrainError> {
        let v: i64 = self.req(key)?;
        if v <= 0 {
            return Err(self.corrupt(format!("config field `{key}` = {v} must be positive")));
        }
        Ok(v)
    }

    /// Ends resolution: every field left must be metadata, else it is refused by name.
    pub fn finish(self) -> Result<(), TrainError> {
        let mut left: Vec<&String> = self.fields.keys().filter(|k| !METADATA.contains(&k.as_str())).collect();
        left.sort();
        match left.first() {
            None => Ok(()),
            Some(k) => Err(self.unsupported(format!(
                "config field `{k}` = {} is not implemented by ewtune (refused rather than ignored)",
                self.fields[k.as_str()]
            ))),
        }
    }
}

#[cfg(test)]
impl HfConfig {
    /// An empty config for unit tests of resolution helpers.
    pub fn empty_for_tests() -> Self {
        HfConfig { path: PathBuf::from("config.json"), family: "test", fields: Map::new() }
    }
}

impl HfConfig {
    /// True when the field is present (even as `null`).
    pub fn has(&self, key: &str) -> bool {
        self.fields.contains_key(key)
    }
}
