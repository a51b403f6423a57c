//! Training data: JSONL with a text field, prompt/completion pairs with the loss on the
//! completion only, or conversations (`messages`) rendered with the model's chat template with the
//! loss on the assistant contents only (train/chat.rs); tokenised, truncated, grouped into privacy
//! units (one example each, or all examples sharing a user key), and padded into micro-batches
//! with masks.

use super::chat::{ChatTemplate, Conversation, OrderedJson, TEMPLATE_FILE, TOKENIZER_CONFIG};
use super::dpsgd::MicroBatch;
use super::tape::Units;
use super::TrainError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// How a dataset file is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataConfig {
    /// Field holding the whole text (plain language-model data).
    pub text_field: String,
    /// Field of the prompt (prompt/completion data: no loss on it).
    pub prompt_field: String,
    /// Field of the completion (the loss is computed on it).
    pub completion_field: String,
    /// Field of a conversation: a list of `{"role": ..., "content": ...}` rendered with the
    /// model's chat template, the loss on the assistant messages' contents only. Written only
    /// when not `messages`, so that specs (and the fingerprints of their checkpoints) from before
    /// the field existed serialise as they did.
    #[serde(skip_serializing_if = "is_default_messages_field")]
    pub messages_field: String,
    /// Field naming the user: when set, a privacy unit is a user, not an example, and every
    /// example of the user is in their unit (clipped as one).
    pub user_field: Option<String>,
    /// Optional cap (only with `user_field`): at most this many examples of one user are used,
    /// the first ones in file order; the rest are counted as dropped. `None` (the default): all.
    pub max_examples_per_user: Option<usize>,
    /// Tokens per example after truncation.
    pub max_length: usize,
    /// Append the end-of-text token (`<|endoftext|>` / `</s>`) when the tokenizer has one (text
    /// and prompt/completion lines; a conversation ends as its chat template ends it).
    pub append_eos: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            text_field: "text".into(),
            prompt_field: "prompt".into(),
            completion_field: "completion".into(),
            messages_field: "messages".into(),
            user_field: None,
            max_examples_per_user: None,
            max_length: 128,
            append_eos: true,
        }
    }
}

fn is_default_messages_field(field: &str) -> bool {
    field == "messages"
}

impl DataConfig {
    /// Refuses settings that cannot be read: a cap of 0, or `max_length` under 2. (A cap
    /// without `user_field` drops nothing, every unit being one example: job.toml refuses it as
    /// meaningless, but specs stored by older daemons, which always carried a cap, still load.)
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.max_examples_per_user == Some(0) {
            return Err(TrainError::BadSpec { field: "data_format.max_examples_per_user", reason: "must be >= 1 (leave it out to use every example)".into() });
        }
        if self.max_length < 2 {
            return Err(TrainError::BadSpec { field: "data_format.max_length", reason: "must be >= 2".into() });
        }
        Ok(())
    }
}

/// What reading a dataset found, before any training: the dataset owner's view of their own
/// data (shown to them; the daemon keeps these out of its logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DataCounts {
    /// Examples (non-empty lines) in the file.
    pub examples: usize,
    /// Privacy units they form (examples, or distinct users).
    pub units: usize,
    /// Examples trained on whose tokens were cut at `max_length`.
    pub truncated_examples: usize,
    /// Examples left out by `max_examples_per_user` (0 without a cap).
    pub dropped_examples: usize,
}

/// Admits a user's examples in file order up to the cap.
#[derive(Default)]
struct UserCap {
    seen: std::collections::HashMap<String, usize>,
}

impl UserCap {
    /// True when the next example of `user` is within `cap`.
    fn admit(&mut self, user: &str, cap: Option<usize>) -> bool {
        let n = self.seen.entry(user.to_string()).or_insert(0);
        *n += 1;
        cap.is_none_or(|k| *n <= k)
    }
}

/// One tokenised example: ids and which positions are targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<i64>,
    /// 1 where `ids[t]` is a training target (never at t = 0).
    pub loss_mask: Vec<i64>,
}

/// A tokenised dataset grouped into privacy units.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The units; each holds one example, or a user's examples.
    pub units: Vec<Vec<Example>>,
    /// Examples of users beyond `max_examples_per_user`, left out (0 without a cap).
    pub dropped_examples: usize,
    /// Examples trained on whose text was cut at `max_length`.
    pub truncated_examples: usize,
}

fn bad(path: &Path, line: usize, reason: impl Into<String>) -> TrainError {
    TrainError::BadDataset { path: path.to_path_buf(), line, reason: reason.into() }
}

/// The end-of-text token id of a tokenizer, if it has one.
pub fn eos_id(tokenizer: &tokenizers::Tokenizer) -> Option<i64> {
    ["<|endoftext|>", "</s>", "<eos>"].iter().find_map(|t| tokenizer.token_to_id(t)).map(i64::from)
}

/// One line of a dataset file, parsed but not tokenised.
#[derive(Debug, Clone, PartialEq)]
pub struct RawExample {
    /// 1-based line number.
    pub line: usize,
    /// The user key, when the dataset's unit is a user.
    pub user: Option<String>,
    /// What the line holds.
    pub body: Body,
}

/// The three formats of a dataset line.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Plain text: the loss on every token.
    Text(String),
    /// No loss on the prompt, the loss on the completion.
    PromptCompletion {
        /// The prompt.
        prompt: String,
        /// The completion.
        completion: String,
    },
    /// A conversation, rendered with the model's chat template: the loss on the assistant
    /// messages' contents only.
    Messages(Conversation),
}

/// What turns dataset lines into tokens: the model's tokenizer, and for conversations the
/// model's chat template, read from its directory at the first `messages` line (so that text
/// datasets never depend on the template).
pub struct Encoder<'a> {
    tokenizer: &'a tokenizers::Tokenizer,
    model_dir: Option<&'a Path>,
    chat: std::cell::OnceCell<Result<ChatTemplate, String>>,
}

impl<'a> Encoder<'a> {
    /// The tokenizer of the model in `model_dir`, and its chat template when a line needs it.
    pub fn for_model(tokenizer: &'a tokenizers::Tokenizer, model_dir: &'a Path) -> Self {
        Encoder { tokenizer, model_dir: Some(model_dir), chat: std::cell::OnceCell::new() }
    }

    /// The chat template, read once; `Err` is the sentence a `messages` line's error carries.
    fn chat_template(&self) -> Result<&ChatTemplate, String> {
        let loaded = self.chat.get_or_init(|| match self.model_dir {
            None => Err("the messages format needs the model's chat template, and only a tokenizer was given".into()),
            Some(dir) => ChatTemplate::for_model(dir)?.ok_or_else(|| {
                format!("the messages format needs the model's chat template, and the model has none: no {TEMPLATE_FILE}, and no `chat_template` in its {TOKENIZER_CONFIG}")
            }),
        });
        loaded.as_ref().map_err(Clone::clone)
    }
}

impl<'a> From<&'a tokenizers::Tokenizer> for Encoder<'a> {
    /// A tokenizer alone: text and prompt/completion lines (a `messages` line is refused).
    fn from(tokenizer: &'a tokenizers::Tokenizer) -> Self {
        Encoder { tokenizer, model_dir: None, chat: std::cell::OnceCell::new() }
    }
}

/// Parses every non-empty line of a JSONL dataset; a malformed line is an error naming its number.
pub fn read_records(path: &Path, text: &str, cfg: &DataConfig) -> Result<Vec<RawExample>, TrainError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| bad(path, n, format!("not a JSON object: {e}")))?;
        let field = |name: &str| -> Result<Option<String>, TrainError> {
            match obj.get(name) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(path, n, format!("field `{name}` must be a string"))),
            }
        };
        let body = if obj.contains_key(&cfg.messages_field) {
            // Parsed again with every object's keys in file order, as the template sees them.
            let OrderedJson(ordered) = serde_json::from_str(line).map_err(|e| bad(path, n, format!("not a JSON object: {e}")))?;
            let messages = ordered.get_item(&minijinja::Value::from(cfg.messages_field.as_str())).unwrap_or_default();
            Body::Messages(Conversation::parse(&messages, &cfg.messages_field).map_err(|reason| bad(path, n, reason))?)
        } else {
            match (field(&cfg.prompt_field)?, field(&cfg.completion_field)?, field(&cfg.text_field)?) {
                (Some(prompt), Some(completion), _) => Body::PromptCompletion { prompt, completion },
                (None, None, Some(t)) => Body::Text(t),
                _ => {
                    return Err(bad(path, n, format!(
                        "needs `{}`, both `{}` and `{}`, or `{}`",
                        cfg.text_field, cfg.prompt_field, cfg.completion_field, cfg.messages_field
                    )))
                }
            }
        };
        let user = match &cfg.user_field {
            None => None,
            Some(uf) => Some(match obj.get(uf) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(x)) => x.to_string(),
                _ => return Err(bad(path, n, format!("user field `{uf}` is missing or not a string/number"))),
            }),
        };
        out.push(RawExample { line: n, user, body });
    }
    if out.is_empty() {
        return Err(bad(path, 0, "the dataset holds no examples"));
    }
    Ok(out)
}

/// Number of privacy units of parsed records: lines, or distinct users.
pub fn count_units(records: &[RawExample]) -> usize {
    if records.iter().any(|r| r.user.is_some()) {
        records.iter().filter_map(|r| r.user.as_deref()).collect::<std::collections::BTreeSet<_>>().len()
    } else {
        records.len()
    }
}

/// Tokenises one parsed record: prompt (no loss) and target with the end-of-text token, or a
/// conversation as its chat template renders it (no special token added: the template writes
/// them, as `apply_chat_template(tokenize=True)` does) with the loss on every token overlapping
/// an assistant content; checked against the vocabulary, truncated at `max_length`. Returns the
/// example and whether it was cut.
fn tokenise(path: &Path, r: &RawExample, enc: &Encoder, eos: Option<i64>, max_length: usize, vocab: i64) -> Result<(Example, bool), TrainError> {
    let n = r.line;
    let encode = |s: &str| -> Result<tokenizers::Encoding, TrainError> { enc.tokenizer.encode(s, false).map_err(|e| bad(path, n, format!("tokenizer: {e}"))) };
    let ids_of = |e: &tokenizers::Encoding| e.get_ids().iter().map(|&i| i64::from(i)).collect::<Vec<i64>>();
    let (mut ids, mut mask) = match &r.body {
        Body::PromptCompletion { prompt, completion } => {
            let (p, c) = (ids_of(&encode(prompt)?), ids_of(&encode(completion)?));
            let mask = std::iter::repeat_n(0, p.len()).chain(std::iter::repeat_n(1, c.len())).collect::<Vec<i64>>();
            ([p, c].concat(), mask)
        }
        Body::Text(text) => {
            let ids = ids_of(&encode(text)?);
            let mask = vec![1; ids.len()];
            (ids, mask)
        }
        Body::Messages(conversation) => {
            let chat = enc.chat_template().map_err(|reason| bad(path, n, reason))?;
            let rendered = chat.render_for_training(conversation).map_err(|reason| bad(path, n, reason))?;
            let encoding = encode(&rendered.text)?;
            (ids_of(&encoding), assistant_mask(encoding.get_offsets(), &rendered.assistant_spans))
        }
    };
    if let (Some(e), false) = (eos, matches!(r.body, Body::Messages(_))) {
        ids.push(e);
        mask.push(1);
    }
    if ids.len() < 2 {
        return Err(bad(path, n, "fewer than two tokens: nothing to predict"));
    }
    if let Some(&bad_id) = ids.iter().find(|&&t| t >= vocab) {
        return Err(bad(path, n, format!("token id {bad_id} is outside the model's vocabulary of {vocab}")));
    }
    let truncated = ids.len() > max_length;
    if truncated {
        ids.truncate(max_length);
        mask.truncate(max_length);
    }
    mask[0] = 0;
    Ok((Example { ids, loss_mask: mask }, truncated))
}

/// 1 for each token (byte offsets `(start, end)`, in order) overlapping one of `spans` (in order,
/// disjoint): a token that straddles a content's edge is trained on, as in transformers'
/// `return_assistant_tokens_mask`.
fn assistant_mask(offsets: &[(usize, usize)], spans: &[std::ops::Range<usize>]) -> Vec<i64> {
    let mut next = 0;
    offsets
        .iter()
        .map(|&(start, end)| {
            while next < spans.len() && start >= spans[next].end {
                next += 1;
            }
            i64::from(next < spans.len() && end > spans[next].start && start < spans[next].end)
        })
        .collect()
}

fn read_text(path: &Path) -> Result<String, TrainError> {
    let text = std::fs::read(path).map_err(|_| TrainError::MissingFile { path: path.to_path_buf() })?;
    String::from_utf8(text).map_err(|e| bad(path, 0, format!("not UTF-8: {e}")))
}

/// Reads, tokenises and counts a JSONL file as [`Dataset::load`] would, keeping nothing but the
/// counts (the daemon's Jobs.Plan: memory stays that of the parsed lines, not of the tokens).
pub fn count<'a>(path: &Path, encoder: impl Into<Encoder<'a>>, cfg: &DataConfig, vocab: i64) -> Result<DataCounts, TrainError> {
    let encoder = encoder.into();
    cfg.validate()?;
    let text = read_text(path)?;
    let eos = if cfg.append_eos { eos_id(encoder.tokenizer) } else { None };
    let records = read_records(path, &text, cfg)?;
    let mut cap = UserCap::default();
    let mut counts = DataCounts { examples: records.len(), units: count_units(&records), ..DataCounts::default() };
    for r in &records {
        if let Some(user) = &r.user {
            if !cap.admit(user, cfg.max_examples_per_user) {
                counts.dropped_examples += 1;
                continue;
            }
        }
        counts.truncated_examples += usize::from(tokenise(path, r, &encoder, eos, cfg.max_length, vocab)?.1);
    }
    Ok(counts)
}

/// Pads `rows` into `[rows, T]` ids and loss mask (pad id 0, mask 0), T the longest row.
pub fn pad(rows: &[&Example], device: Device) -> (Tensor, Tensor) {
    let t = rows.iter().map(|e| e.ids.len()).max().unwrap_or(2);
    let mut ids = vec![0i64; rows.len() * t];
    let mut mask = vec![0i64; rows.len() * t];
    for (r, e) in rows.iter().enumerate() {
        ids[r * t..r * t + e.ids.len()].copy_from_slice(&e.ids);
        mask[r * t..r * t + e.ids.len()].copy_from_slice(&e.loss_mask);
    }
    let shape = [rows.len() as i64, t as i64];
    (Tensor::from_slice(&ids).reshape(shape).to_device(device), Tensor::from_slice(&mask).reshape(shape).to_device(device))
}

impl Dataset {
    /// Reads and tokenises a JSONL file. Every malformed line is an error naming its number
    /// (lines a cap leaves out are parsed, not tokenised). `encoder`: a tokenizer, or
    /// [`Encoder::for_model`] for datasets with `messages` lines.
    pub fn load<'a>(path: &Path, encoder: impl Into<Encoder<'a>>, cfg: &DataConfig, vocab: i64) -> Result<Self, TrainError> {
        let encoder = encoder.into();
        cfg.validate()?;
        let text = read_text(path)?;
        let eos = if cfg.append_eos { eos_id(encoder.tokenizer) } else { None };
        let mut by_user: BTreeMap<String, (usize, Vec<Example>)> = BTreeMap::new();
        let mut units: Vec<Vec<Example>> = Vec::new();
        let mut cap = UserCap::default();
        let (mut dropped, mut truncated) = (0, 0);
        for r in read_records(path, &text, cfg)? {
            if let Some(user) = &r.user {
                if !cap.admit(user, cfg.max_examples_per_user) {
                    dropped += 1;
                    continue;
                }
            }
            let (example, cut) = tokenise(path, &r, &encoder, eos, cfg.max_length, vocab)?;
            truncated += usize::from(cut);
            match r.user {
                None => units.push(vec![example]),
                Some(user) => {
                    let next = by_user.len();
                    by_user.entry(user).or_insert_with(|| (next, Vec::new())).1.push(example);
                }
            }
        }
        if cfg.user_field.is_some() {
            let mut users: Vec<_> = by_user.into_values().collect();
            users.sort_by_key(|(first_seen, _)| *first_seen);
            units = users.into_iter().map(|(_, ex)| ex).collect();
        }
        Ok(Dataset { units, dropped_examples: dropped, truncated_examples: truncated })
    }

    /// The counts of this dataset as loaded: examples read (kept and dropped), units, truncated
    /// and dropped examples. Canaries a job adds later are not data and are not counted.
    pub fn counts(&self) -> DataCounts {
        DataCounts {
            examples: self.units.iter().map(Vec::len).sum::<usize>() + self.dropped_examples,
            units: self.units.len(),
            truncated_examples: self.truncated_examples,
            dropped_examples: self.dropped_examples,
        }
    }

    /// Number of privacy units (the N of the sampling rate q = B / N).
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// True when there are no units.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Pads the examples of `unit_indices` into one micro-batch (pad id 0, mask 0), each unit's
    /// sequences grouped. Its padded size is `units x (largest unit's sequences)`: the DP step
    /// packs units so that this stays within its micro-batch (`sampler::plan_passes`).
    pub fn micro_batch(&self, unit_indices: &[usize], device: Device) -> MicroBatch {
        let mut rows: Vec<&Example> = Vec::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for &u in unit_indices {
            let start = rows.len();
            rows.extend(self.units[u].iter());
            groups.push((start..rows.len()).collect());
        }
        let (ids, loss_mask) = pad(&rows, device);
        let units = if groups.iter().all(|g| g.len() == 1) { Units::per_sequence(rows.len(), device) } else { Units::grouped(&groups, rows.len(), device) };
        MicroBatch { ids, loss_mask, units }
    }

    /// The sequences `range` of unit `unit`, padded (`[range.len(), T]` ids and loss mask): one
    /// pass over part of a unit too large for one micro-batch.
    pub fn unit_sequences(&self, unit: usize, range: std::ops::Range<usize>, device: Device) -> (Tensor, Tensor) {
        let rows: Vec<&Example> = self.units[unit][range].iter().collect();
        pad(&rows, device)
    }
}

/// SHA-256 of a file's bytes, hex (a dataset's identity).
pub fn sha256_file(path: &Path) -> Result<String, TrainError> {
    let bytes = std::fs::read(path).map_err(|_| TrainError::MissingFile { path: PathBuf::from(path) })?;
    Ok(crate::digest::sha256_hex(&bytes))
}
