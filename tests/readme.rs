//! The README walk: every fenced bash block of README.md marked `<!-- runnable -->` runs as
//! pasted (bash with `set -euo pipefail`), in a fresh directory, with the binaries this build
//! made first on PATH. A block that fails, or a marker with no bash block under it, fails here.

use std::path::Path;
use std::process::Command;

/// The blocks of `markdown` marked runnable: the ```` ```bash ```` fence on the line after a
/// `<!-- runnable -->` line, up to its closing fence. A marker not followed by one is an error.
fn runnable_blocks(markdown: &str) -> Result<Vec<String>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "<!-- runnable -->" {
            continue;
        }
        if lines.get(i + 1).map(|l| l.trim()) != Some("```bash") {
            return Err(format!("README.md:{}: a runnable marker must sit right above a ```bash block", i + 1));
        }
        let body: Vec<&str> = lines[i + 2..].iter().take_while(|l| l.trim() != "```").copied().collect();
        if i + 2 + body.len() >= lines.len() {
            return Err(format!("README.md:{}: the runnable block is never closed", i + 2));
        }
        blocks.push(body.join("\n"));
    }
    Ok(blocks)
}

#[test]
fn runnable_markers_find_their_blocks() {
    let md = "text\n<!-- runnable -->\n```bash\necho a\necho b\n```\n```bash\nnot marked\n```\n";
    assert_eq!(runnable_blocks(md).unwrap(), ["echo a\necho b"]);
    assert!(runnable_blocks("<!-- runnable -->\n```text\nx\n```\n").is_err());
    assert!(runnable_blocks("<!-- runnable -->\n```bash\nnever closed\n").is_err());
}

#[test]
fn the_readmes_runnable_blocks_run_as_pasted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let blocks = runnable_blocks(&std::fs::read_to_string(root.join("README.md")).unwrap()).unwrap();
    assert!(!blocks.is_empty(), "README.md marks no block runnable");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_ewtune")).parent().unwrap();
    assert!(bin_dir.join("ewtuned").exists());
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for block in blocks {
        let dir = tempfile::tempdir().unwrap();
        // Bounded: a block that hangs fails (coreutils' timeout).
        let out = Command::new("timeout")
            .args(["600", "bash", "-c", &format!("set -euo pipefail\n{block}")])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env_remove("EWTUNE_ADDR")
            .env_remove("EWTUNE_TOKEN")
            .env_remove("EWTUNE_PUBLIC_KEY")
            .env_remove("EWTUNE_CA_CERT")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README block failed ({:?}):\n{block}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
