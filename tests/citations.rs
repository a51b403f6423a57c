//! The repository explains itself: no tracked file points at the team's internal references
//! (which are not in it), and every `docs/` page a file cites exists.

use std::path::Path;
use std::process::Command;

/// What a clone of this repository does not contain: the team's notes directory, its research
/// folder and its two top-level documents (spelled in pieces so that this file does not cite
/// them itself).
const OUTSIDE: [&str; 5] = [concat!("research", "/"), concat!("..", "/shared"), concat!("shared", "/research"), concat!("DESIGN", ".md"), concat!("STYLE", ".md")];

fn tracked_text_files(root: &Path) -> Vec<String> {
    let out = Command::new("git").arg("-C").arg(root).args(["ls-files", "-z"]).output().expect("git runs");
    assert!(out.status.success(), "git ls-files: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|p| !p.is_empty())
        .filter(|p| [".rs", ".md", ".proto", ".toml", ".txt", ".py", ".sh", ".sql", ".yml", ".yaml"].iter().any(|e| p.ends_with(e)) || p.starts_with(".ci/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn no_tracked_file_cites_what_the_repository_does_not_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for path in tracked_text_files(root) {
        let Ok(text) = std::fs::read_to_string(root.join(&path)) else { continue };
        for (n, line) in text.lines().enumerate() {
            if OUTSIDE.iter().any(|o| line.contains(o)) {
                found.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
            // Every docs/ page cited must exist.
            for (i, _) in line.match_indices("docs/") {
                let rest = &line[i..];
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || "/_-.".contains(c))).unwrap_or(rest.len());
                let cited = rest[..end].trim_end_matches('.');
                if cited.ends_with(".md") && !root.join(cited).exists() {
                    found.push(format!("{path}:{}: cites {cited}, which does not exist", n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "{} lines point outside the repository:\n{}", found.len(), found.join("\n"));
}
