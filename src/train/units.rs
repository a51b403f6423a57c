//! Stable identities of privacy units, so that a budget can follow the people in the data rather
//! than the bytes of one file. Inside a tenant, each unit gets a keyed hash (HMAC-SHA256 with the
//! tenant's own secret): an example-level unit by its record's canonical form, a user-level unit
//! by its user id. Only these hashes are ever kept, never the text; without the tenant's secret
//! they cannot be recomputed from a guess, and two tenants' hashes of the same record differ.
//!
//! The canonical form is what the model trains on, in fixed field names (`text`, `prompt` and
//! `completion`, or `messages`), keys sorted, every string's whitespace collapsed to single spaces
//! and trimmed. So reordering lines or fields, re-indenting, or adding other fields (ids,
//! metadata) keeps a record's identity; editing one word makes it another record. Repeated data
//! about one person in other words is what user-level units are for (docs/dpsgd.md, Privacy
//! units and large users). The store keeps them with their classes, and the ledger composes
//! per class (`store/units.rs`, `store/ledger.rs`).

use super::data::{Body, RawExample};
use std::collections::hash_map::{Entry, HashMap};

pub use crate::digest::UnitId;

/// Domain separation of the hashed message, and the canonical form's version: a change to the
/// canonical form must change this, or old and new identities of one record would differ.
const VERSION: &str = "ewtune-unit-v1";

/// A tenant's key for unit identities.
pub struct UnitKey(ring::hmac::Key);

impl UnitKey {
    /// The key made from a tenant's secret (32 random bytes, kept in the store).
    pub fn from_secret(secret: &[u8]) -> Self {
        UnitKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    fn identity(&self, kind: &str, canonical: &str) -> UnitId {
        let message = format!("{VERSION}\0{kind}\0{canonical}");
        ring::hmac::sign(&self.0, message.as_bytes()).as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }
}

/// `text` with every run of whitespace one space, and none at either end.
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compact JSON of `value` with object keys sorted and strings' whitespace collapsed.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::String(s) => out.push_str(&Value::String(collapse_whitespace(s)).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A message as JSON (messages were parsed from JSON, so every value is one of JSON's kinds).
fn json_of(value: &minijinja::Value) -> serde_json::Value {
    use minijinja::value::ValueKind;
    use serde_json::Value;
    match value.kind() {
        ValueKind::Bool => Value::Bool(value.is_true()),
        ValueKind::Number => match i64::try_from(value.clone()) {
            Ok(i) => Value::from(i),
            Err(_) => f64::try_from(value.clone()).ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number),
        },
        ValueKind::String => Value::String(value.as_str().unwrap_or_default().to_string()),
        ValueKind::Seq => Value::Array(value.try_iter().map(|items| items.map(|v| json_of(&v)).collect()).unwrap_or_default()),
        ValueKind::Map => Value::Object(
            value
                .try_iter()
                .map(|keys| keys.filter_map(|k| Some((k.as_str()?.to_string(), json_of(&value.get_item(&k).ok()?)))).collect())
                .unwrap_or_default(),
        ),
        _ => Value::Null,
    }
}

/// The canonical form of what a record trains on.
pub fn canonical_record(body: &Body) -> String {
    let value = match body {
        Body::Text(text) => serde_json::json!({ "text": text }),
        Body::PromptCompletion { prompt, completion } => serde_json::json!({ "prompt": prompt, "completion": completion }),
        Body::Messages(conversation) => {
            let messages: Vec<serde_json::Value> = conversation.messages().iter().map(json_of).collect();
            serde_json::json!({ "messages": messages })
        }
    };
    let mut out = String::new();
    write_canonical(&value, &mut out);
    out
}

/// The privacy units of a dataset's records.
#[derive(Debug, Clone, PartialEq)]
pub struct Identities {
    /// Each unit's identity, sorted and distinct.
    pub units: Vec<UnitId>,
    /// For example-level records, the first record that repeats an earlier one: (the earlier
    /// line, its repeat's line). One person's record twice would be trained on twice per pass.
    pub repeated: Option<(usize, usize)>,
}

/// The identities of `records`' privacy units under `key`: one per distinct user id when the
/// records name users, else one per record.
pub fn unit_identities(records: &[RawExample], key: &UnitKey) -> Identities {
    let mut first_line = HashMap::with_capacity(records.len());
    let mut repeated = None;
    for r in records {
        let id = match &r.user {
            Some(user) => key.identity("user", user),
            None => key.identity("example", &canonical_record(&r.body)),
        };
        match first_line.entry(id) {
            Entry::Vacant(e) => {
                e.insert(r.line);
            }
            Entry::Occupied(e) if r.user.is_none() && repeated.is_none() => repeated = Some((*e.get(), r.line)),
            Entry::Occupied(_) => {}
        }
    }
    let mut units: Vec<UnitId> = first_line.into_keys().collect();
    units.sort_unstable();
    Identities { units, repeated }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data::{read_records, DataConfig};
    use std::path::Path;

    fn identities(text: &str, cfg: &DataConfig, key: &UnitKey) -> Identities {
        unit_identities(&read_records(Path::new("t"), text, cfg).unwrap(), key)
    }

    fn ids(text: &str, cfg: &DataConfig, key: &UnitKey) -> Vec<UnitId> {
        identities(text, cfg, key).units
    }

    #[test]
    fn canonical_form_sorts_keys_and_collapses_whitespace() {
        assert_eq!(canonical_record(&Body::Text("  Patient\n reports\tpain. ".into())), r#"{"text":"Patient reports pain."}"#);
        assert_eq!(canonical_record(&Body::PromptCompletion { prompt: "Q: x ".into(), completion: " y".into() }), r#"{"completion":"y","prompt":"Q: x"}"#);
        let cfg = DataConfig::default();
        let line = r#"{"messages": [{"content": " hi  there", "role": "user"}, {"role": "assistant", "content": "hello"}]}"#;
        let r = read_records(Path::new("t"), line, &cfg).unwrap();
        assert_eq!(canonical_record(&r[0].body), r#"{"messages":[{"content":"hi there","role":"user"},{"content":"hello","role":"assistant"}]}"#);
    }

    /// Shuffled lines, other field order, other whitespace, extra fields and a trailing newline
    /// keep every identity; an edited word, or a text split into prompt and completion, does not.
    #[test]
    fn identities_survive_reformatting_but_not_editing() {
        let key = UnitKey::from_secret(&[7; 32]);
        let cfg = DataConfig::default();
        let a = "{\"text\": \"Alice has a fever.\"}\n{\"text\": \"Bob broke an arm.\"}\n{\"prompt\": \"Q\", \"completion\": \"A\"}";
        let b = "{\"completion\": \"A\",   \"prompt\": \"Q\", \"id\": 9}\n{\"text\": \"Bob  broke an arm.\\n\"}\n\n{\"note\": 1, \"text\": \" Alice has a fever.\"}\n\n";
        assert_eq!(ids(a, &cfg, &key), ids(b, &cfg, &key));
        let edited = "{\"text\": \"Alice has a cough.\"}\n{\"text\": \"Bob broke an arm.\"}\n{\"text\": \"Q A\"}";
        assert_eq!(ids(a, &cfg, &key).iter().filter(|k| ids(edited, &cfg, &key).contains(k)).count(), 1);
        let repeated = identities("{\"text\": \"x\"}\n{\"text\": \"y\"}\n{\"text\": \"x \"}", &cfg, &key);
        assert_eq!((repeated.units.len(), repeated.repeated), (2, Some((1, 3))), "one record, twice");
        assert_eq!(identities(a, &cfg, &key).repeated, None);
    }

    #[test]
    fn user_units_are_identified_by_user_id_only() {
        let key = UnitKey::from_secret(&[7; 32]);
        let cfg = DataConfig { user_field: Some("patient".into()), ..DataConfig::default() };
        let both = identities("{\"patient\": 42, \"text\": \"a\"}\n{\"patient\": \"7\", \"text\": \"b\"}\n{\"patient\": 42, \"text\": \"a\"}", &cfg, &key);
        assert_eq!((both.units.len(), both.repeated), (2, None), "a user's records are one unit, repeated or not");
        let a = both.units;
        let b = ids("{\"patient\": \"42\", \"text\": \"other words\"}", &cfg, &key);
        assert!(b.iter().all(|k| a.contains(k)), "user 42 is one unit in both datasets");
        let example_level = ids("{\"text\": \"42\"}", &DataConfig::default(), &key);
        assert!(example_level.iter().all(|k| !a.contains(k)), "user and example identities never collide");
    }

    #[test]
    fn tenants_keys_give_unrelated_identities() {
        let cfg = DataConfig::default();
        let text = "{\"text\": \"Alice has a fever.\"}";
        let (one, two) = (ids(text, &cfg, &UnitKey::from_secret(&[1; 32])), ids(text, &cfg, &UnitKey::from_secret(&[2; 32])));
        assert!(one.iter().all(|k| !two.contains(k)));
    }

    /// The identity is HMAC-SHA256 over `ewtune-unit-v1 NUL kind NUL canonical form`, checked
    /// against Python's `hmac.new(bytes(range(32)), msg, sha256)` for the record `{"text": "Alice
    /// has a fever."}`: stored identities must never change meaning between versions.
    #[test]
    fn identity_matches_an_independent_hmac() {
        let key = UnitKey::from_secret(&(0u8..32).collect::<Vec<_>>());
        let got = ids("{\"text\": \"Alice has a fever.\"}", &DataConfig::default(), &key);
        let hex: Vec<String> = got.iter().map(|k| crate::digest::hex(k)).collect();
        assert_eq!(hex, [PYTHON_HMAC]);
    }

    const PYTHON_HMAC: &str = "04c89782349540628d677536f8305192ef0bf855dc086d078b2968587f948f62";
}
