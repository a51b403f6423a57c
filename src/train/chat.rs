//! Chat templates: a conversation `{"messages": [{"role": ..., "content": ...}, ...]}` rendered
//! as transformers' `apply_chat_template` renders it — the model directory's template
//! (`chat_template.jinja`, else `chat_template` in `tokenizer_config.json`), the special tokens of
//! `tokenizer_config.json` passed as variables, Jinja with `trim_blocks` and `lstrip_blocks`,
//! Python's string methods, `raise_exception`, transformers' `tojson` and `strftime_now` — and
//! where in that text the assistant messages' contents lie (the only tokens trained on).
//!
//! The places are found by difference, not by reading the template: the conversation is rendered
//! once as it is (the text trained on), and once per assistant message with that message's
//! content wrapped in a private-use character it does not contain. The two texts agree up to the
//! content and again after it; what lies between in the first is then checked to be the content,
//! as it is or whitespace-trimmed (as `| trim` templates write it). The marker never reaches the
//! training text, so a template that trims, tests or splits a content renders exactly what
//! transformers renders; a template that rewrites an assistant content (e.g. moves reasoning out
//! of it) is refused by name rather than guessed at.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::ops::Range;
use std::path::Path;

/// The template file transformers 5 writes beside the tokenizer.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
/// The tokenizer's settings: special tokens, and the template in older checkpoints.
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// Older checkpoints' special tokens (read by transformers when the config lists no added tokens).
const SPECIAL_TOKENS_MAP: &str = "special_tokens_map.json";
/// Named templates transformers saves beside the default one.
const TEMPLATE_DIR: &str = "additional_chat_templates";
/// The special tokens transformers always passes to a template when they are set.
const NAMED_SPECIAL_TOKENS: [&str; 7] = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];
/// The names a message's reasoning goes by; transformers fills the other two from the first set.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];
/// The template's name inside its environment.
const NAME: &str = "chat_template";

/// A compiled chat template and the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `(name, token)`: `bos_token`, `eos_token`, ... as transformers passes them.
    special_tokens: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("special_tokens", &self.special_tokens).finish_non_exhaustive()
    }
}

/// A conversation as rendered: the text, and the byte ranges of the assistant contents in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// What the template wrote (`add_generation_prompt = false`).
    pub text: String,
    /// One range per non-empty assistant content, in order, not overlapping.
    pub assistant_spans: Vec<Range<usize>>,
}

/// The messages of one dataset line, checked (each an object with string `role` and `content`,
/// at least one from the assistant) and normalised as transformers does (keys set to null
/// dropped, reasoning copied under the names templates read). Keys keep their order.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    messages: Vec<Value>,
}

impl Conversation {
    /// Checks `value` (the `field` of a dataset line, parsed in key order by [`OrderedJson`]).
    /// The error names the message and key at fault, as `messages[2].content`.
    pub fn parse(value: &Value, field: &str) -> Result<Self, String> {
        if value.kind() != ValueKind::Seq {
            return Err(format!("`{field}` must be a list of messages ({{\"role\": ..., \"content\": ...}}), not {}", kind_name(value)));
        }
        let mut messages = Vec::new();
        let mut assistant = false;
        for (i, m) in value.try_iter().map_err(|e| e.to_string())?.enumerate() {
            if m.kind() != ValueKind::Map {
                return Err(format!("`{field}[{i}]` must be an object with `role` and `content`, not {}", kind_name(&m)));
            }
            let mut out = indexmap::IndexMap::<Value, Value>::new();
            for key in m.try_iter().map_err(|e| e.to_string())? {
                let v = m.get_item(&key).map_err(|e| e.to_string())?;
                if !v.is_none() {
                    out.insert(key, v);
                }
            }
            for key in ["role", "content"] {
                match out.get(&Value::from(key)) {
                    None => return Err(format!("`{field}[{i}]` has no `{key}`")),
                    Some(v) if v.kind() != ValueKind::String => {
                        let hint = if key == "content" && v.kind() == ValueKind::Seq { " (lists of content parts are not supported)" } else { "" };
                        return Err(format!("`{field}[{i}].{key}` must be a string, not {}{hint}", kind_name(v)));
                    }
                    Some(_) => {}
                }
            }
            assistant |= out.get(&Value::from("role")).and_then(Value::as_str) == Some("assistant");
            if let Some(reasoning) = REASONING_FIELDS.iter().find_map(|k| out.get(&Value::from(*k)).cloned()) {
                // transformers: `{"thinking": r, **message, "reasoning_content": r}`.
                let mut aliased = indexmap::IndexMap::new();
                aliased.insert(Value::from("thinking"), reasoning.clone());
                aliased.extend(out);
                aliased.insert(Value::from("reasoning_content"), reasoning);
                out = aliased;
            }
            messages.push(Value::from(out));
        }
        if messages.is_empty() {
            return Err(format!("`{field}` is empty"));
        }
        if !assistant {
            return Err(format!("`{field}` has no message with role `assistant`: nothing to train on"));
        }
        Ok(Conversation { messages })
    }

    /// The messages, as the template sees them.
    pub fn messages(&self) -> &[Value] {
        &self.messages
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => "null",
        ValueKind::Bool => "a boolean",
        ValueKind::Number => "a number",
        ValueKind::String => "a string",
        ValueKind::Seq => "a list",
        ValueKind::Map => "an object",
        _ => "a value of another kind",
    }
}

/// A message's string field (checked present by [`Conversation::parse`]).
fn text_of(message: &Value, key: &str) -> String {
    message.get_item(&Value::from(key)).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja chat template as the Hub stores it) for rendering with
    /// `special_tokens` (`("bos_token", "<s>")`, ...). transformers' `{% generation %}` blocks,
    /// which only mark assistant text for its own masks, render their body unchanged.
    pub fn new(source: &str, special_tokens: Vec<(String, String)>) -> Result<Self, Error> {
        let mut env = Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), the
        // loop-controls extension; Jinja's default keeps no trailing newline of the template.
        env.set_syntax(SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).keep_trailing_newline(false).build()?);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, without_generation_tags(source))?;
        Ok(ChatTemplate { env, special_tokens })
    }

    /// The chat template of a model directory as transformers' `AutoTokenizer` would use it, or
    /// `None` when it has none. `Err` says which file cannot be read, parsed or compiled (by its
    /// name in the directory).
    pub fn for_model(dir: &Path) -> Result<Option<Self>, String> {
        let config = read_config(dir, TOKENIZER_CONFIG)?;
        let Some((source, origin)) = template_source(dir, config.as_ref())? else { return Ok(None) };
        let special = special_tokens(dir, config.as_ref())?;
        ChatTemplate::new(&source, special).map(Some).map_err(|e| format!("the model's chat template ({origin}) does not compile: {}", describe(&e)))
    }

    /// The special tokens passed to the template.
    pub fn special_tokens(&self) -> &[(String, String)] {
        &self.special_tokens
    }

    /// Renders `messages` as `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)` does (`tools` and `documents` none).
    pub fn render(&self, messages: &[Value], add_generation_prompt: bool) -> Result<String, Error> {
        let mut ctx: std::collections::BTreeMap<String, Value> = self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        ctx.insert("messages".into(), Value::from(messages.to_vec()));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        self.env.get_template(NAME)?.render(Value::from(ctx))
    }

    /// Renders a conversation for training and finds its assistant contents (module docs: by
    /// difference with a marked rendering, then checked). Errors are sentences for a dataset
    /// line's error.
    pub fn render_for_training(&self, conversation: &Conversation) -> Result<Rendered, String> {
        let messages = conversation.messages();
        let text = self.render(messages, false).map_err(|e| format!("the chat template cannot render this conversation: {}", describe(&e)))?;
        let mut spans: Vec<Range<usize>> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if text_of(m, "role") != "assistant" {
                continue;
            }
            let content = text_of(m, "content");
            if content.is_empty() {
                continue;
            }
            let marker = ('\u{E000}'..='\u{F8FF}').find(|c| !content.contains(*c)).expect("a content lacks one of 6400 characters");
            let mut marked = messages.to_vec();
            marked[i] = with_content(m, &format!("{marker}{content}{marker}"));
            let other = self.render(&marked, false).map_err(|e| format!("the chat template cannot render this conversation: {}", describe(&e)))?;
            let span = differing_span(&text, &other);
            let found = &text[span.clone()];
            let trimmed = [content.trim(), content.trim_start(), content.trim_end()];
            if found != content && !trimmed.contains(&found) {
                return Err(format!(
                    "the chat template does not write the content of assistant message {i} as it is (or whitespace-trimmed), so the tokens to train on cannot be told apart; the messages format needs a template that writes assistant contents unchanged"
                ));
            }
            if spans.last().is_some_and(|last| last.end > span.start) {
                return Err(format!("the chat template writes the content of assistant message {i} before an earlier message's, so the tokens to train on cannot be told apart"));
            }
            if !span.is_empty() {
                spans.push(span);
            }
        }
        Ok(Rendered { text, assistant_spans: spans })
    }
}

/// `message` with its `content` replaced (other keys and their order kept).
fn with_content(message: &Value, content: &str) -> Value {
    let mut out = indexmap::IndexMap::<Value, Value>::new();
    if let Ok(keys) = message.try_iter() {
        for k in keys {
            let v = if k.as_str() == Some("content") { Value::from(content) } else { message.get_item(&k).unwrap_or_default() };
            out.insert(k, v);
        }
    }
    Value::from(out)
}

/// The byte range of `a` where it differs from `b`: after their longest common prefix and before
/// their longest common suffix (not overlapping it), both moved to character boundaries.
fn differing_span(a: &str, b: &str) -> Range<usize> {
    let mut start = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(start) {
        start -= 1;
    }
    let room = a.len().min(b.len()) - start;
    let mut suffix = a.bytes().rev().zip(b.bytes().rev()).take(room).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(a.len() - suffix) {
        suffix -= 1;
    }
    start..a.len() - suffix
}

/// A template error as one line: what went wrong (a `raise_exception` message as written) and
/// the template line, when known.
fn describe(e: &Error) -> String {
    let what = match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
        (kind, Some(detail)) => format!("{kind}: {detail}"),
        (kind, None) => kind.to_string(),
    };
    match e.line() {
        Some(line) if e.name().is_some() => format!("{what} (template line {line})"),
        _ => what,
    }
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' assistant-mask extension) as a block
/// that renders its body: `{% if true %}` / `{% endif %}`, whitespace control kept.
fn without_generation_tags(source: &str) -> String {
    let re = regex::Regex::new(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}").expect("valid regex");
    re.replace_all(source, |c: &regex::Captures| {
        let body = if c.get(2).is_some() { "endif" } else { "if true" };
        format!("{{%{} {body} {}%}}", &c[1], &c[3])
    })
    .into_owned()
}

/// transformers' `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `strftime_now(format)`: the local date and time, `datetime.now().strftime`.
fn strftime_now(format: String) -> Result<String, Error> {
    jiff::fmt::strtime::format(format.as_bytes(), &jiff::ZonedDateTime::now())
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("strftime_now({format:?}): {e}")))
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, arguments by position or name, not HTML-escaped.
fn tojson(value: &Value, ensure_ascii: Option<bool>, indent: Option<Value>, separators: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.or(ensure_ascii).unwrap_or(false);
    let indent = kwargs.get::<Option<Value>>("indent")?.or(indent).filter(|v| !v.is_none() && !v.is_undefined());
    let separators = kwargs.get::<Option<Value>>("separators")?.or(separators).filter(|v| !v.is_none() && !v.is_undefined());
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v) => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
    };
    let (item_sep, key_sep) = match separators {
        Some(v) => {
            let parts: Vec<String> = v.try_iter()?.map(|p| p.as_str().map(str::to_string)).collect::<Option<_>>().unwrap_or_default();
            match <[String; 2]>::try_from(parts) {
                Ok([a, b]) => (a, b),
                Err(_) => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = JsonStyle { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    let mut out = String::new();
    style.write(&mut out, value, 0)?;
    Ok(Value::from(out))
}

/// How Python's `json.dumps` was asked to write.
struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonStyle {
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, out: &mut String, v: &Value, level: usize) -> Result<(), Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
            ValueKind::Number => out.push_str(&super::py_json::float_repr(f64::try_from(v.clone())?)),
            ValueKind::String => super::py_json::string(out, v.as_str().unwrap_or_default(), self.ensure_ascii),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    self.write(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push(']');
            }
            ValueKind::Map => {
                let mut entries: Vec<(String, Value)> = Vec::new();
                for k in v.try_iter()? {
                    let key = match k.kind() {
                        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
                        ValueKind::None => "null".into(),
                        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
                        ValueKind::Number if k.is_integer() => k.to_string(),
                        ValueKind::Number => super::py_json::float_repr(f64::try_from(k.clone())?),
                        _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: keys must be strings")),
                    };
                    entries.push((key, v.get_item(&k)?));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                if entries.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, (k, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    super::py_json::string(out, k, self.ensure_ascii);
                    out.push_str(&self.key_sep);
                    self.write(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push('}');
            }
            _ => return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: {} is not JSON serializable", kind_name(v)))),
        }
        Ok(())
    }
}

/// `dir/name` parsed as a JSON object, `None` when absent.
fn read_config(dir: &Path, name: &str) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
    let path = dir.join(name);
    let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("the model's {name} is not a JSON object: {e}"))
}

/// The template transformers would use: `chat_template.jinja` (with `additional_chat_templates/`:
/// the one named `default`), else `chat_template` of the config (a string, or a list of named
/// templates: `default`). Returns the source and where it came from.
fn template_source(dir: &Path, config: Option<&serde_json::Map<String, serde_json::Value>>) -> Result<Option<(String, String)>, String> {
    let read = |rel: &str| std::fs::read_to_string(dir.join(rel)).map_err(|e| format!("the model's {rel} cannot be read: {e}"));
    let mut named: Vec<String> = std::fs::read_dir(dir.join(TEMPLATE_DIR))
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".jinja")).map(str::to_string)).collect())
        .unwrap_or_default();
    named.sort();
    if dir.join(TEMPLATE_FILE).is_file() {
        return Ok(Some((read(TEMPLATE_FILE)?, TEMPLATE_FILE.into())));
    }
    if !named.is_empty() {
        let rel = format!("{TEMPLATE_DIR}/default.jinja");
        return match named.iter().any(|n| n == "default") {
            true => Ok(Some((read(&rel)?, rel))),
            false => Err(format!("the model has named chat templates ({TEMPLATE_DIR}/: {}) and none is `default` or in {TEMPLATE_FILE}", named.join(", "))),
        };
    }
    let origin = format!("`chat_template` of {TOKENIZER_CONFIG}");
    match config.and_then(|c| c.get("chat_template")) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some((s.clone(), origin))),
        Some(serde_json::Value::Array(list)) => {
            let mut names = Vec::new();
            for t in list {
                match (t.get("name").and_then(|n| n.as_str()), t.get("template").and_then(|n| n.as_str())) {
                    (Some("default"), Some(src)) => return Ok(Some((src.to_string(), format!("{origin}, named `default`")))),
                    (Some(name), Some(_)) => names.push(name.to_string()),
                    _ => return Err(format!("{origin} lists an entry without string `name` and `template`")),
                }
            }
            Err(format!("{origin} lists templates ({}) and none is named `default`", names.join(", ")))
        }
        Some(_) => Err(format!("{origin} must be a string or a list of named templates")),
    }
}

/// A special token's text: a string, or an `AddedToken` object's `content`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

/// The special tokens transformers passes to a template (`tokenizer.special_tokens_map`): the
/// seven named ones, every other `*_token` key with a token value, and `extra_special_tokens` given
/// by name; from `special_tokens_map.json` over the config when the config lists no added tokens
/// (transformers' legacy path).
fn special_tokens(dir: &Path, config: Option<&serde_json::Map<String, serde_json::Value>>) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &serde_json::Value| {
        if let Some(t) = token_text(v) {
            match out.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = t,
                None => out.push((k.to_string(), t)),
            }
        }
    };
    let mut take = |map: &serde_json::Map<String, serde_json::Value>| {
        for k in NAMED_SPECIAL_TOKENS {
            if let Some(v) = map.get(k) {
                set(k, v);
            }
        }
        for (k, v) in map {
            if k.ends_with("_token") && !NAMED_SPECIAL_TOKENS.contains(&k.as_str()) {
                set(k, v);
            }
        }
        for key in ["extra_special_tokens", "additional_special_tokens"] {
            if let Some(serde_json::Value::Object(named)) = map.get(key) {
                for (k, v) in named {
                    set(k, v);
                }
            }
        }
    };
    if let Some(c) = config {
        take(c);
    }
    if config.is_none_or(|c| !c.contains_key("added_tokens_decoder")) {
        if let Some(legacy) = read_config(dir, SPECIAL_TOKENS_MAP)? {
            take(&legacy);
        }
    }
    Ok(out)
}

/// The bytes a model directory's chat template depends on, hashed (SHA-256, hex): for caches
/// keyed by how a dataset reads with that model.
pub fn template_digest(dir: &Path) -> String {
    let mut bytes = Vec::new();
    let mut names = vec![TEMPLATE_FILE.to_string(), TOKENIZER_CONFIG.to_string(), SPECIAL_TOKENS_MAP.to_string()];
    if let Ok(rd) = std::fs::read_dir(dir.join(TEMPLATE_DIR)) {
        let mut extra: Vec<String> = rd.filter_map(|e| e.ok()).map(|e| format!("{TEMPLATE_DIR}/{}", e.file_name().to_string_lossy())).collect();
        extra.sort();
        names.extend(extra);
    }
    for name in names {
        if let Ok(b) = std::fs::read(dir.join(&name)) {
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&(b.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&b);
        }
    }
    crate::digest::sha256_hex(&bytes)
}

/// A JSON value parsed into a template value with every object's keys in file order (transformers
/// hands templates Python dicts, which keep it; `tojson` and `items()` show it).
pub struct OrderedJson(pub Value);

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = OrderedJson;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(())))
    }
    fn visit_bool<E>(self, v: bool) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<OrderedJson, E> {
        Ok(OrderedJson(Value::from(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedJson, A::Error> {
        let mut items = Vec::new();
        while let Some(OrderedJson(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(OrderedJson(Value::from(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedJson, A::Error> {
        let mut out = indexmap::IndexMap::<Value, Value>::new();
        while let Some((k, OrderedJson(v))) = map.next_entry::<String, OrderedJson>()? {
            out.insert(Value::from(k), v);
        }
        Ok(OrderedJson(Value::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(json: &str) -> Conversation {
        let OrderedJson(v) = serde_json::from_str(json).unwrap();
        Conversation::parse(&v, "messages").unwrap()
    }

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn spans_are_the_assistant_contents() {
        let t = ChatTemplate::new(CHATML, vec![]).unwrap();
        // The assistant's reply also occurs in the user's message: the span is the reply's.
        let c = conv(r#"[{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "Again: é"}, {"role": "assistant", "content": "é"}]"#);
        let r = t.render_for_training(&c).unwrap();
        let found: Vec<&str> = r.assistant_spans.iter().map(|s| &r.text[s.clone()]).collect();
        assert_eq!(found, ["hello", "é"]);
        assert_eq!(r.assistant_spans[0].start, "<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n".len());
        // A private-use character in the content is not mistaken for the marker.
        let c = conv(r#"[{"role": "user", "content": "x"}, {"role": "assistant", "content": "\ue000a\ue000"}]"#);
        let r = t.render_for_training(&c).unwrap();
        assert_eq!(&r.text[r.assistant_spans[0].clone()], "\u{e000}a\u{e000}");
    }

    #[test]
    fn trimmed_contents_are_found_and_rewritten_ones_refused() {
        let trim = ChatTemplate::new("{% for m in messages %}[{{ m.role }}] {{ m.content | trim }}\n{% endfor %}", vec![]).unwrap();
        let r = trim.render_for_training(&conv(r#"[{"role": "user", "content": "q"}, {"role": "assistant", "content": "  a b \n"}]"#)).unwrap();
        assert_eq!(&r.text[r.assistant_spans[0].clone()], "a b");
        let upper = ChatTemplate::new("{% for m in messages %}{{ m.content.upper() }}\n{% endfor %}", vec![]).unwrap();
        let e = upper.render_for_training(&conv(r#"[{"role": "user", "content": "q"}, {"role": "assistant", "content": "abc"}]"#)).unwrap_err();
        assert!(e.contains("assistant message 1") && e.contains("unchanged"), "{e}");
    }

    #[test]
    fn raise_exception_generation_tags_and_special_tokens() {
        let src = "{{ bos_token }}{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}{% if m.role == 'assistant' %}{%- generation -%} {{ m.content }}{{ eos_token }}{%- endgeneration -%}{% else %}[INST] {{ m.content }} [/INST]{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, vec![("bos_token".into(), "<s>".into()), ("eos_token".into(), "</s>".into())]).unwrap();
        let r = t.render_for_training(&conv(r#"[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]"#)).unwrap();
        assert_eq!(r.text, "<s>[INST] hi [/INST]yo</s>");
        let e = t.render_for_training(&conv(r#"[{"role": "assistant", "content": "yo"}]"#)).unwrap_err();
        assert_eq!(e, "the chat template cannot render this conversation: Conversation roles must alternate user/assistant (template line 1)");
    }

    #[test]
    fn malformed_messages_are_named() {
        let err = |json: &str| {
            let OrderedJson(v) = serde_json::from_str(json).unwrap();
            Conversation::parse(&v, "msgs").unwrap_err()
        };
        assert!(err(r#""hi""#).contains("`msgs` must be a list"));
        assert!(err("[]").contains("`msgs` is empty"));
        assert!(err(r#"[{"role": "user", "content": "a"}, 3]"#).contains("`msgs[1]` must be an object"));
        assert!(err(r#"[{"content": "a"}]"#).contains("`msgs[0]` has no `role`"));
        assert!(err(r#"[{"role": "user"}]"#).contains("`msgs[0]` has no `content`"));
        assert!(err(r#"[{"role": "user", "content": null}]"#).contains("`msgs[0]` has no `content`"));
        assert!(err(r#"[{"role": "user", "content": [{"type": "text"}]}]"#).contains("`msgs[0].content` must be a string, not a list (lists of content parts"));
        assert!(err(r#"[{"role": 1, "content": "a"}]"#).contains("`msgs[0].role` must be a string, not a number"));
        assert!(err(r#"[{"role": "user", "content": "a"}]"#).contains("no message with role `assistant`"));
    }

    #[test]
    fn tojson_writes_as_python_json_dumps() {
        let t = ChatTemplate::new("{{ messages[0].x | tojson }}|{{ messages[0].x | tojson(indent=2) }}|{{ messages[0].s | tojson(ensure_ascii=True) }}|{{ messages[0].x | tojson(separators=(',', ':'), sort_keys=True) }}", vec![]).unwrap();
        let c = conv(r#"[{"role": "assistant", "content": "", "x": {"z": [1, 2.5, 1e20, 1e-5, true, null, "<a>\n"], "a": {}}, "s": "é😀\u007f"}]"#);
        let out = t.render(c.messages(), false).unwrap();
        let parts: Vec<&str> = out.split('|').collect();
        assert_eq!(parts[0], r#"{"z": [1, 2.5, 1e+20, 1e-05, true, null, "<a>\n"], "a": {}}"#);
        assert_eq!(parts[1], "{\n  \"z\": [\n    1,\n    2.5,\n    1e+20,\n    1e-05,\n    true,\n    null,\n    \"<a>\\n\"\n  ],\n  \"a\": {}\n}");
        assert_eq!(parts[2], r#""\u00e9\ud83d\ude00\u007f""#);
        assert_eq!(parts[3], r#"{"a":{},"z":[1,2.5,1e+20,1e-05,true,null,"<a>\n"]}"#);
        assert_eq!(super::super::py_json::float_repr(100.0), "100.0");
        assert_eq!(super::super::py_json::float_repr(1e16), "1e+16");
        assert_eq!(super::super::py_json::float_repr(123456789012345.6), "123456789012345.6");
        assert_eq!(super::super::py_json::float_repr(-0.0001), "-0.0001");
        assert_eq!(super::super::py_json::float_repr(0.1), "0.1");
    }

    #[test]
    fn template_lookup_follows_transformers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(ChatTemplate::for_model(d).unwrap().is_none());
        let list = r#"{"bos_token": {"content": "<s>", "__type": "AddedToken"}, "eos_token": "</s>", "image_token": "<img>", "add_bos_token": true,
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D{{ image_token }}"}]}"#;
        std::fs::write(d.join(TOKENIZER_CONFIG), list).unwrap();
        let t = ChatTemplate::for_model(d).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "<s>D<img>");
        assert_eq!(t.special_tokens(), [("bos_token".to_string(), "<s>".to_string()), ("eos_token".into(), "</s>".into()), ("image_token".into(), "<img>".into())]);
        std::fs::write(d.join(TOKENIZER_CONFIG), r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#).unwrap();
        assert!(ChatTemplate::for_model(d).unwrap_err().contains("none is named `default`"));
        std::fs::write(d.join(TOKENIZER_CONFIG), r#"{"chat_template": "C{% if true %}"}"#).unwrap();
        let e = ChatTemplate::for_model(d).unwrap_err();
        assert!(e.starts_with("the model's chat template (`chat_template` of tokenizer_config.json) does not compile: syntax error: "), "{e}");
        // The file wins over the config's key, as in transformers.
        std::fs::write(d.join(TEMPLATE_FILE), "F\n").unwrap();
        assert_eq!(ChatTemplate::for_model(d).unwrap().unwrap().render(&[], false).unwrap(), "F");
    }

    #[test]
    fn differing_span_stays_on_character_boundaries() {
        // The texts differ in the second byte of a three-byte character: the span holds all of it.
        assert_eq!(differing_span("a\u{e123}b", "a\u{e000}xb"), 1..4);
        assert_eq!(differing_span("abc", "abc"), 3..3);
        assert_eq!(differing_span("ab", "aXXb"), 1..1);
    }
}
