//! The generators of the committed reference files stay true (scripts/reference/README.md lists
//! every file and its generator). The audit fixture's generator runs on the CI venv, so CI runs
//! it: `scripts/reference/audit_reference.py --fixture` rebuilds tests/fixtures/audit in a
//! temporary directory (tokenizer, texts and configs come out byte for byte) and `--scores`
//! scores the rebuilt models; the scores must equal the committed reference_scores.jsonl: texts,
//! labels, token ids and lengths exactly, every float within FLOAT_TOLERANCE. The floats are not
//! compared bit for bit because the one epoch of float32 SGD and the float32 forward passes move
//! the last bits with the CPU's kernels (up to 1e-6 in a score against the committed file on the
//! machine these lines were written on); a changed score, tokenizer, text or model gives 1e-3 or
//! more.

use crate::util::fixture;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const GENERATOR: &str = "scripts/reference/audit_reference.py";

/// |committed - regenerated| <= FLOAT_TOLERANCE * max(1, |committed|).
const FLOAT_TOLERANCE: f64 = 1e-5;

/// Files of tests/fixtures/audit the generator must write byte for byte.
const EXACT: [&str; 8] = [
    "texts.jsonl",
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
    "base/tokenizer.json",
    "base/tokenizer_config.json",
    "base/config.json",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "scripts/setup.sh makes the venv with torch and transformers (requirements-ci.txt)");
    p
}

fn run_generator(args: &[&Path]) {
    let mut cmd = Command::new(python());
    cmd.arg(root().join(GENERATOR)).args(args).env("OMP_NUM_THREADS", "1").env("HF_HUB_OFFLINE", "1");
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {GENERATOR}: {e}"));
    assert!(
        o.status.success(),
        "{GENERATOR} {args:?} failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Where `new` differs from `committed`, as "path: committed X, regenerated Y" lines; floats
/// within tolerance count as equal. `worst` gets the largest float difference seen.
fn diff(path: &str, committed: &Value, new: &Value, out: &mut Vec<String>, worst: &mut f64) {
    match (committed, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut ka: Vec<&String> = a.keys().collect();
            let mut kb: Vec<&String> = b.keys().collect();
            ka.sort();
            kb.sort();
            if ka != kb {
                out.push(format!("{path}: committed keys {ka:?}, regenerated keys {kb:?}"));
                return;
            }
            for k in ka {
                diff(&format!("{path}.{k}"), &a[k], &b[k], out, worst);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(format!("{path}: committed {} entries, regenerated {}", a.len(), b.len()));
                return;
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out, worst);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let d = (x - y).abs();
            *worst = worst.max(d);
            if d > FLOAT_TOLERANCE * x.abs().max(1.0) {
                out.push(format!("{path}: committed {x}, regenerated {y} (|difference| {d:.3e} > {FLOAT_TOLERANCE:e})"));
            }
        }
        (a, b) => {
            if a != b {
                out.push(format!("{path}: committed {a}, regenerated {b}"));
            }
        }
    }
}

/// Compares two JSON-lines texts row by row; returns the differences and the largest float
/// difference.
fn compare_jsonl(committed: &str, regenerated: &str) -> (Vec<String>, f64) {
    let parse = |t: &str| -> Vec<Value> { t.lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect() };
    let (a, b) = (parse(committed), parse(regenerated));
    let mut out = Vec::new();
    let mut worst = 0.0f64;
    if a.len() != b.len() {
        out.push(format!("committed {} rows, regenerated {}", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        diff(&format!("row {}", i + 1), x, y, &mut out, &mut worst);
    }
    (out, worst)
}

#[test]
fn audit_generator_reproduces_the_committed_fixture_and_reference_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let scores = tmp.path().join("reference_scores.jsonl");
    run_generator(&[Path::new("--fixture"), &dir]);
    run_generator(&[Path::new("--scores"), &dir, &scores]);

    let committed_dir = fixture("audit");
    let mut problems = Vec::new();
    for f in EXACT {
        let (a, b) = (std::fs::read(committed_dir.join(f)).unwrap(), std::fs::read(dir.join(f)));
        match b {
            Ok(b) if a == b => {}
            Ok(_) => problems.push(format!("{f}: the regenerated file differs from the committed one")),
            Err(e) => problems.push(format!("{f}: not written ({e})")),
        }
    }
    let committed = std::fs::read_to_string(committed_dir.join("reference_scores.jsonl")).unwrap();
    let regenerated = std::fs::read_to_string(&scores).unwrap();
    let (diffs, worst) = compare_jsonl(&committed, &regenerated);
    eprintln!("reference_scores.jsonl: largest float difference regenerated vs committed {worst:.2e}");
    problems.extend(diffs.into_iter().map(|d| format!("reference_scores.jsonl {d}")));
    assert!(
        problems.is_empty(),
        "{GENERATOR} no longer reproduces tests/fixtures/audit ({} differences; fix the generator, or \
         regenerate the fixture with it and say why in the commit):\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The comparison itself: the committed file equals itself, and a score moved by 1e-4, a changed
/// token id, label or text, a missing key or a missing row are each reported.
#[test]
fn reference_comparison_reports_each_kind_of_change() {
    let committed = std::fs::read_to_string(fixture("audit").join("reference_scores.jsonl")).unwrap();
    assert!(compare_jsonl(&committed, &committed).0.is_empty());
    let rows: Vec<Value> = committed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let render = |rows: &[Value]| rows.iter().map(|r| r.to_string() + "\n").collect::<String>();
    let edits: Vec<(&str, Box<dyn Fn(&mut Vec<Value>)>)> = vec![
        ("row 3.score_zlib", Box::new(|r| r[2]["score_zlib"] = (r[2]["score_zlib"].as_f64().unwrap() + 1e-4).into())),
        ("row 1.ids[4]", Box::new(|r| r[0]["ids"][4] = (r[0]["ids"][4].as_i64().unwrap() + 1).into())),
        ("row 16.label", Box::new(|r| r[15]["label"] = 1.into())),
        ("row 2.input", Box::new(|r| r[1]["input"] = "changed".into())),
        ("row 5: committed keys", Box::new(|r| _ = r[4].as_object_mut().unwrap().remove("min_k_0.2"))),
        ("committed 16 rows, regenerated 15", Box::new(|r| _ = r.pop())),
    ];
    for (expect, edit) in edits {
        let mut changed = rows.clone();
        edit(&mut changed);
        let (diffs, _) = compare_jsonl(&committed, &render(&changed));
        assert!(diffs.iter().any(|d| d.starts_with(expect)), "{expect}: {diffs:?}");
    }
}
