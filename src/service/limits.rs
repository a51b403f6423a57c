//! The ranges every number and string a client sends must lie in, checked at the edge before
//! any math, allocation or file is touched. One table, so the README, the errors and the checks
//! cannot disagree: a value outside its range is InvalidArgument naming the field and the range.
//!
//! The ranges are wide enough for every real job (a million-step job at sigma 0.3 is fine) and
//! narrow enough that nothing a client sends can make the accountant, the trainer or the store
//! allocate or compute without bound.

use super::error::{Kind, ServiceError};

/// Noise multiplier sigma, when given instead of a target epsilon.
pub const NOISE_MULTIPLIER: (f64, f64) = (0.1, 1000.0);
/// Target epsilon, when given instead of a noise multiplier.
pub const TARGET_EPSILON: (f64, f64) = (0.01, 100.0);
/// Training steps, given or derived from epochs.
pub const MAX_STEPS: u64 = 10_000_000;
/// Epochs, when steps are not given.
pub const EPOCHS: (f64, f64) = (1e-3, 1e4);
/// Per-unit clipping norm C.
pub const CLIP_NORM: (f64, f64) = (1e-6, 1e4);
/// Learning rate.
pub const LEARNING_RATE: (f64, f64) = (1e-9, 10.0);
/// LoRA rank r.
pub const MAX_LORA_RANK: u32 = 1024;
/// LoRA alpha (the update is scaled by alpha / r).
pub const LORA_ALPHA: (f64, f64) = (1e-6, 1e6);
/// Examples per micro-batch (memory on the training device).
pub const MAX_MICRO_BATCH: u32 = 4096;
/// Smallest max_length (a prompt token and a target token); the largest is the model's context.
pub const MIN_MAX_LENGTH: u32 = 2;
/// Largest max_length for a model whose config states no context length.
pub const MAX_MAX_LENGTH: u32 = 32_768;
/// Bytes in a name (datasets): printable text only.
pub const MAX_NAME_BYTES: usize = 256;
/// Bytes in a user field name, a target module name, a model name.
pub const MAX_KEY_BYTES: usize = 256;
/// LoRA target modules listed in one spec.
pub const MAX_TARGET_MODULES: usize = 64;
/// Characters of a client's input quoted back in an error message.
pub const QUOTE_CHARS: usize = 40;
/// Items per page of a List call: the default and the most a client may ask for.
pub const PAGE_SIZE: (u32, u32) = (50, 1000);

/// InvalidArgument naming `field`.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> ServiceError {
    ServiceError::new(Kind::InvalidArgument, format!("{field}: {reason}"))
}

/// `value` if finite and in `[lo, hi]`, InvalidArgument naming `field` and the range otherwise.
pub fn in_range(field: &str, value: f64, (lo, hi): (f64, f64)) -> Result<f64, ServiceError> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(field, format!("must be a finite number in [{lo}, {hi}], got {value}")))
    }
}

/// `value` if in `[lo, hi]`, InvalidArgument naming `field` and the range otherwise.
pub fn count_in_range(field: &str, value: u64, lo: u64, hi: u64) -> Result<u64, ServiceError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(field, format!("must lie in [{lo}, {hi}], got {value}")))
    }
}

/// Control characters and the Unicode bidirectional controls, which can make text read other
/// than it is.
fn unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// At most [`QUOTE_CHARS`] characters of `input`, control characters escaped, for an error
/// message: a client's input is never echoed whole.
pub fn quote(input: &str) -> String {
    let mut out: String = input.chars().take(QUOTE_CHARS).flat_map(char::escape_default).collect();
    if input.chars().nth(QUOTE_CHARS).is_some() {
        out.push('…');
    }
    format!("`{out}`")
}

/// A name for people: trimmed of nothing, 1 to [`MAX_NAME_BYTES`] bytes, no control characters
/// (so it cannot move a terminal's cursor or forge a line in a listing).
pub fn name(field: &str, value: &str) -> Result<String, ServiceError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(invalid(field, format!("must be at most {MAX_NAME_BYTES} bytes, got {}", value.len())));
    }
    if value.chars().any(unprintable) {
        return Err(invalid(field, format!("must be printable text (no control or bidirectional characters), got {}", quote(value))));
    }
    Ok(value.to_string())
}

/// A key (a JSON field name, a module name): 1 to [`MAX_KEY_BYTES`] bytes, no control characters.
pub fn key(field: &str, value: &str) -> Result<String, ServiceError> {
    if value.is_empty() || value.len() > MAX_KEY_BYTES || value.chars().any(unprintable) {
        return Err(invalid(field, format!("must be 1 to {MAX_KEY_BYTES} bytes of printable text, got {}", quote(value))));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_refuse_non_finite_and_outside() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -1.0, 0.099, 1000.5, f64::MAX, f64::MIN_POSITIVE] {
            let e = in_range("noise_multiplier", v, NOISE_MULTIPLIER).unwrap_err();
            assert!(e.to_string().starts_with("noise_multiplier: must be a finite number in [0.1, 1000]"), "{}", e.to_string());
        }
        assert_eq!(in_range("noise_multiplier", 0.1, NOISE_MULTIPLIER).unwrap(), 0.1);
        assert!(count_in_range("steps", MAX_STEPS + 1, 1, MAX_STEPS).is_err());
        assert!(count_in_range("steps", u64::MAX, 1, MAX_STEPS).is_err());
        assert_eq!(count_in_range("steps", 7, 1, MAX_STEPS).unwrap(), 7);
    }

    #[test]
    fn quotes_are_short_and_escaped() {
        let long = "x".repeat(10_000);
        assert_eq!(quote(&long).chars().count(), QUOTE_CHARS + 3);
        assert_eq!(quote("a\x1b[2Jb\n"), "`a\\u{1b}[2Jb\\n`");
    }

    #[test]
    fn names_are_short_printable_text() {
        assert_eq!(name("name", "clinic notes 2026").unwrap(), "clinic notes 2026");
        assert!(name("name", "").is_err() && name("name", "   ").is_err());
        assert!(name("name", &"n".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(name("name", "evil\x1b[31mred").unwrap_err().to_string().contains("\\u{1b}"));
        assert!(name("name", "two\nlines").is_err());
        assert!(name("name", "invoice\u{202e}fdp.exe").is_err());
        assert_eq!(name("name", &"é".repeat(128)).unwrap().len(), 256);
    }
}
