//! The crate's modules depend in one direction only (docs/architecture.md, The layers):
//! the bottom (`fs`, `digest`, `strict_toml`, `artifacts`, `stats`, and the accountant crate) <- `train`
//! and `store` (which do not use each other) <- `audit` <- `service` <- `api` <- the binaries.
//! Every `crate::<module>` path in `src/` outside the binaries is checked against that order.

use std::path::Path;

/// A top-level module's layer; a module may use only lower layers (the bottom modules may use
/// each other).
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "fs" | "digest" | "strict_toml" | "artifacts" | "stats" | "accountant" => 0,
        "train" | "store" => 1,
        "audit" => 2,
        "service" => 3,
        "pages" => 4,
        "api" => 5,
        _ => return None,
    })
}

/// The top-level modules a line of code names through `crate::` (comments are not code).
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut names = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(group.split(',').map(|n| n.trim().split("::").next().unwrap_or("").to_string()));
        } else {
            names.push(rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect());
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

/// Every `(file, line number, used module, line)` that imports against the order.
fn violations(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
            if path.is_dir() {
                if rel != "bin" {
                    stack.push(path);
                }
                continue;
            }
            if !rel.ends_with(".rs") || rel == "lib.rs" {
                continue;
            }
            let own = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
            let Some(own_layer) = layer(&own) else {
                found.push(format!("{rel}: module `{own}` has no layer; add it to tests/layers.rs and docs/architecture.md"));
                continue;
            };
            for (n, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
                for used in crate_paths(line) {
                    let allowed = used == own || layer(&used).is_some_and(|l| l < own_layer || (l == 0 && own_layer == 0));
                    if !allowed {
                        found.push(format!("src/{rel}:{}: `{own}` uses `{used}`: {}", n + 1, line.trim()));
                    }
                }
            }
        }
    }
    found.sort();
    found
}

#[test]
fn modules_import_only_downwards() {
    let found = violations(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(found.is_empty(), "imports against the layering (docs/architecture.md):\n{}", found.join("\n"));
}

/// The check sees each way of naming a module, and ignores comments.
#[test]
fn crate_paths_are_read_from_code_only() {
    assert_eq!(crate_paths("use crate::service::State;"), ["service"]);
    assert_eq!(crate_paths("use crate::{fs, store::Store};"), ["fs", "store"]);
    assert_eq!(crate_paths("    let x = crate::api::server::run(a); // crate::audit"), ["api"]);
    assert!(crate_paths("/// see [`crate::api`]").is_empty());
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("train")).unwrap();
    std::fs::write(tmp.path().join("train/job.rs"), "use crate::audit::canary::CanarySpec;\nuse crate::fs::write_atomic;\n").unwrap();
    std::fs::write(tmp.path().join("store.rs"), "use crate::train::Weights;\n").unwrap();
    let found = violations(tmp.path());
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("src/store.rs:1: `store` uses `train`") && found[1].starts_with("src/train/job.rs:1: `train` uses `audit`"), "{found:?}");
}
