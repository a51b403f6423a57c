//! Test fixtures of the membership statistics and scores (test builds only): `tests/fixtures/audit_test_vectors.json`
//! (values computed by the Python reference implementation) and the HF fixture's
//! `tests/fixtures/audit/reference_scores.jsonl` (scores from Hugging Face models).
//!
//! Floats are read correctly rounded: serde_json's default parser (without its
//! `float_roundtrip` feature) can be an ulp or two off, which breaks the "exact" comparisons of
//! the tests. So every number literal, and the bare `NaN` / `Infinity` that Python's `json.dumps`
//! writes, is quoted before parsing and read back with `str::parse::<f64>`.

use serde_json::Value;

const VECTORS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/audit_test_vectors.json"));
const REFERENCE_SCORES: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/audit/reference_scores.jsonl"));

/// Quotes every number literal (and NaN, Infinity, -Infinity) outside strings.
fn quote_numbers(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut chars = json.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => out.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if c == '-' || c.is_ascii_digit() || c == 'N' || c == 'I' {
            out.push('"');
            out.push(c);
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || matches!(d, '+' | '-' | '.') {
                    out.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push('"');
        } else {
            out.push(c);
        }
    }
    out
}

fn parse(json: &str) -> Value {
    serde_json::from_str(&quote_numbers(json)).expect("fixture is valid JSON")
}

/// `audit_test_vectors.json`, numbers as strings (read them with [`f`], [`fs`], [`u`]).
pub fn vectors() -> Value {
    parse(VECTORS)
}

/// The 16 rows of `reference_scores.jsonl`, numbers as strings.
pub fn reference_rows() -> Vec<Value> {
    REFERENCE_SCORES.lines().filter(|l| !l.trim().is_empty()).map(parse).collect()
}

/// A quoted number, correctly rounded; `"NaN"` and null (how `auc_ties` writes its NaN) give NaN.
pub fn f(v: &Value) -> f64 {
    if v.is_null() {
        return f64::NAN;
    }
    v.as_str().unwrap_or_else(|| panic!("not a number: {v}")).parse().unwrap()
}

/// An array of quoted numbers.
pub fn fs(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(f).collect()
}

/// A quoted non-negative integer.
pub fn u(v: &Value) -> u64 {
    v.as_str().unwrap_or_else(|| panic!("not an integer: {v}")).parse().unwrap()
}

/// 0/1 labels as member flags.
pub fn labels(v: &Value) -> Vec<bool> {
    v.as_array().unwrap().iter().map(|x| u(x) == 1).collect()
}

#[test]
fn quoting_reads_python_json() {
    let v = parse(r#"{"a": [1, -2.5e-3, NaN, -Infinity], "s": "x \"1\" -2", "n": null, "t": true}"#);
    assert_eq!(f(&v["a"][0]), 1.0);
    assert_eq!(f(&v["a"][1]), -2.5e-3);
    assert!(f(&v["a"][2]).is_nan());
    assert_eq!(f(&v["a"][3]), f64::NEG_INFINITY);
    assert_eq!(v["s"], "x \"1\" -2");
    assert!(v["n"].is_null() && v["t"] == true);
    // The literal serde_json's default parser gets 2 ulps wrong.
    assert_eq!(f(&parse("[0.9166666666666667]")[0]), 0.9166666666666667);
}
