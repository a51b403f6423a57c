//! Strict TOML for the files people write by hand (`job.toml`, `ewtuned.toml`): every key must
//! be one the program reads. A misspelt key (`learnin_rate = 0.1`) would otherwise be skipped
//! and its default used without a word, so it is refused, named with its table path, with the
//! closest key that table knows.
//!
//! The ignored keys are collected by `serde_ignored` while the file deserializes; the keys each
//! table knows come from the types themselves (`serde_aux::serde_introspect`). serde cannot see
//! the keys an internally tagged or flattened type ignores (it buffers them first), so the types
//! read here are plain structs, or deserialize through one (see `train::finetune::FineTune`).

use serde::de::DeserializeOwned;

/// The keys one table knows: its dotted path from the top (`""` for the top level, `training`,
/// `training.optimizer`) and its key names.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// Dotted path of the table.
    pub path: &'static str,
    /// Its keys.
    pub keys: &'static [&'static str],
}

impl Table {
    /// The keys `T` reads, as serde names them (renames applied), for the table at `path`.
    pub fn of<T: DeserializeOwned>(path: &'static str) -> Self {
        Table { path, keys: serde_aux::serde_introspection::serde_introspect::<T>() }
    }
}

/// A key no table of the file reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// Its dotted path (`training.learnin_rate`).
    pub path: String,
    /// The closest key its table knows, when one is close.
    pub suggestion: Option<&'static str>,
    /// Every key its table knows (empty when the table itself is unknown to the caller).
    pub known: Vec<&'static str>,
}

/// Why a strict TOML file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrictTomlError {
    /// Keys the program does not read.
    #[error("{}", unknown_message(.file, .keys))]
    UnknownKeys {
        /// The file's name (last component).
        file: String,
        /// The keys, sorted by path.
        keys: Vec<UnknownKey>,
    },
    /// Not valid TOML, or a value of the wrong type or out of its type's range.
    #[error("{file}: {reason}")]
    Invalid {
        /// The file's name (last component).
        file: String,
        /// The parser's message (with line and column).
        reason: String,
    },
}

fn unknown_message(file: &str, keys: &[UnknownKey]) -> String {
    keys.iter()
        .map(|k| {
            let hint = match (k.suggestion, k.known.is_empty()) {
                (Some(s), _) => format!("; did you mean `{s}`?"),
                (None, false) => format!("; the keys there are {}", k.known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")),
                (None, true) => String::new(),
            };
            format!("unknown key `{}` in {file}{hint}", k.path)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The closest of `known` to `key` (normalised Damerau-Levenshtein similarity at least 0.5, or
/// one contains the other), if any.
pub fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .map(|&k| {
            let score = strsim::normalized_damerau_levenshtein(&lower, k);
            let contains = k.len() >= 3 && lower.len() >= 3 && (k.contains(lower.as_str()) || lower.contains(k));
            (k, if contains { score.max(0.5) } else { score })
        })
        .filter(|&(_, s)| s >= 0.5)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

/// The dotted key path of a `serde_ignored` path (options and newtypes add no segment).
fn dotted(path: &serde_ignored::Path) -> Vec<String> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut v = dotted(parent);
            v.push(index.to_string());
            v
        }
        Path::Map { parent, key } => {
            let mut v = dotted(parent);
            v.push(key.clone());
            v
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => dotted(parent),
    }
}

/// Deserializes `text` (the contents of the file called `file`) into `T`, refusing every key
/// `T` does not read. `tables` lists the keys of each table for the suggestions. When the file
/// both has unknown keys and fails to deserialize (a misspelt required key is also missing),
/// the unknown keys are the error: they are the likelier cause.
pub fn from_str<T: DeserializeOwned>(text: &str, file: &str, tables: &[Table]) -> Result<T, StrictTomlError> {
    let invalid = |e: toml::de::Error| StrictTomlError::Invalid { file: file.to_string(), reason: e.to_string().trim_end().to_string() };
    let de = toml::Deserializer::parse(text).map_err(invalid)?;
    let mut ignored: Vec<Vec<String>> = Vec::new();
    let result: Result<T, _> = serde_ignored::deserialize(de, |p| ignored.push(dotted(&p)));
    if !ignored.is_empty() {
        ignored.sort();
        ignored.dedup();
        let keys = ignored
            .into_iter()
            .map(|segments| {
                let (parent, key) = segments.split_at(segments.len().saturating_sub(1));
                let parent = parent.join(".");
                let key = key.first().cloned().unwrap_or_default();
                let known = tables.iter().find(|t| t.path == parent).map(|t| t.keys.to_vec()).unwrap_or_default();
                UnknownKey { path: segments.join("."), suggestion: closest(&key, &known), known }
            })
            .collect();
        return Err(StrictTomlError::UnknownKeys { file: file.to_string(), keys });
    }
    result.map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default)]
    struct Inner {
        learning_rate: f64,
        batch_size: usize,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        name: String,
        #[serde(default)]
        training: Inner,
        #[serde(default, rename = "data_format")]
        data: Option<Inner>,
    }

    fn tables() -> Vec<Table> {
        vec![Table::of::<Outer>(""), Table::of::<Inner>("training"), Table::of::<Inner>("data_format")]
    }

    #[test]
    fn a_misspelt_key_is_named_with_its_table_and_the_closest_key() {
        let err = from_str::<Outer>("name = \"x\"\n[training]\nlearnin_rate = 0.1\n", "job.toml", &tables()).unwrap_err();
        assert_eq!(err.to_string(), "unknown key `training.learnin_rate` in job.toml; did you mean `learning_rate`?");
        // Inside an optional, renamed table too, and at the top level.
        let err = from_str::<Outer>("nmae = \"x\"\n[data_format]\nbatchsize = 3\n", "job.toml", &tables()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown key `data_format.batchsize` in job.toml; did you mean `batch_size`?\nunknown key `nmae` in job.toml; did you mean `name`?"
        );
        // A misspelt table is one unknown key.
        let err = from_str::<Outer>("name = \"x\"\n[trainig]\nbatch_size = 3\n", "job.toml", &tables()).unwrap_err();
        assert_eq!(err.to_string(), "unknown key `trainig` in job.toml; did you mean `training`?");
    }

    #[test]
    fn nothing_close_lists_the_tables_keys() {
        let err = from_str::<Outer>("name = \"x\"\n[training]\nzzz = 1\n", "job.toml", &tables()).unwrap_err();
        assert_eq!(err.to_string(), "unknown key `training.zzz` in job.toml; the keys there are `learning_rate`, `batch_size`");
    }

    #[test]
    fn unknown_keys_win_over_the_missing_key_they_hide() {
        let err = from_str::<Outer>("nam = \"x\"\n", "job.toml", &tables()).unwrap_err();
        assert!(matches!(&err, StrictTomlError::UnknownKeys { keys, .. } if keys[0].suggestion == Some("name")), "{err}");
    }

    #[test]
    fn known_keys_parse_and_type_errors_stay_parse_errors() {
        let ok = from_str::<Outer>("name = \"x\"\n[training]\nlearning_rate = 0.5\n", "job.toml", &tables()).unwrap();
        assert_eq!(ok.training, Inner { learning_rate: 0.5, batch_size: 0 });
        let err = from_str::<Outer>("name = 3\n", "job.toml", &tables()).unwrap_err();
        assert!(matches!(&err, StrictTomlError::Invalid { reason, .. } if reason.contains("name")), "{err}");
    }

    #[test]
    fn closest_prefers_near_names_and_declines_far_ones() {
        let known = ["learning_rate", "batch_size", "micro_batch", "steps"];
        assert_eq!(closest("learnin_rate", &known), Some("learning_rate"));
        assert_eq!(closest("microbatch", &known), Some("micro_batch"));
        assert_eq!(closest("Steps", &known), Some("steps"));
        assert_eq!(closest("lr", &known), None);
        assert_eq!(closest("anything", &[]), None);
    }
}
