//! The data directory at rest: ewtune.db (and its -wal, -shm), datasets/ (raw uploaded text),
//! jobs/ (outputs, checkpoints) and the signing key are readable by the daemon's user only.
//! `ewtuned` sets the process umask to 0o077 ([`private_umask`]) so every file it creates is
//! 0600 and every directory 0700; at start-up [`prepare`] creates the directories 0700, tightens
//! anything a looser earlier daemon left (group or other bits), and removes the temp files a
//! killed process left behind (names starting `.tmp`, or ending `.tmp-<pid>`), before serving.
//!
//! What this file does not own: how files are written (`train/weights.rs`, the API handlers).
//! The models directory is input, not data at rest: it is left as it is.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode of every directory under the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file under the data directory.
pub const FILE_MODE: u32 = 0o600;

/// Sets the process umask to 0o077: files are created 0600 and directories 0700 at most.
pub fn private_umask() {
    // SAFETY: umask takes no pointers and cannot fail; it only changes this process's mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// What start-up changed on disk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Files and directories whose group or other bits were cleared.
    pub tightened: usize,
    /// Stale temp files removed.
    pub removed_temps: usize,
}

/// A failure, with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct DataDirError {
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError { path: path.to_path_buf(), source }
}

/// Start-up: creates `data_dir`, `datasets/` and `jobs/` (0700), removes stale temp files under
/// `datasets/` and `jobs/`, and tightens every file (0600) and directory (0700) under
/// `data_dir` except `skip` (the models directory when it lies inside). Symbolic links are
/// neither followed nor changed.
pub fn prepare(data_dir: &Path, skip: &Path, shared: bool) -> Result<Prepared, DataDirError> {
    for dir in [data_dir.to_path_buf(), data_dir.join("datasets"), data_dir.join("jobs")] {
        std::fs::create_dir_all(&dir).map_err(at(&dir))?;
    }
    let mut done = Prepared::default();
    for dir in [data_dir.join("datasets"), data_dir.join("jobs")] {
        // On a directory several daemons share, a fresh temp file may be another daemon's write
        // in progress: only those older than any write takes are stale.
        let min_age = if shared { SHARED_TEMP_AGE } else { std::time::Duration::ZERO };
        remove_stale_temps(&dir, min_age, &mut done.removed_temps)?;
    }
    tighten(data_dir, skip, &mut done.tightened)?;
    Ok(done)
}

/// Whether `name` is a temp file of an unfinished write: the `tempfile` crate's `.tmp…`, or
/// an older writer's `<name>.tmp-<pid>` (today [`crate::fs`] writes `.tmp-XXXXXX`).
pub fn is_stale_temp(name: &str) -> bool {
    name.starts_with(".tmp") || name.rsplit_once(".tmp-").is_some_and(|(base, pid)| !base.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// How old a temp file on a shared data directory must be to count as stale.
const SHARED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn remove_stale_temps(dir: &Path, min_age: std::time::Duration, removed: &mut usize) -> Result<(), DataDirError> {
    for entry in std::fs::read_dir(dir).map_err(at(dir))? {
        let entry = entry.map_err(at(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(at(&path))?;
        let old_enough = min_age.is_zero() || entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= min_age);
        let stale = old_enough && entry.file_name().to_str().is_some_and(is_stale_temp);
        if kind.is_dir() {
            if stale {
                std::fs::remove_dir_all(&path).map_err(at(&path))?;
                *removed += 1;
            } else {
                remove_stale_temps(&path, min_age, removed)?;
            }
        } else if stale {
            std::fs::remove_file(&path).map_err(at(&path))?;
            *removed += 1;
        }
    }
    Ok(())
}

fn tighten(path: &Path, skip: &Path, tightened: &mut usize) -> Result<(), DataDirError> {
    if path == skip {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(path).map_err(at(path))?;
    let want = if meta.is_dir() {
        DIR_MODE
    } else if meta.is_file() {
        FILE_MODE
    } else {
        return Ok(()); // a link, socket or the like: left alone
    };
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want)).map_err(at(path))?;
        *tightened += 1;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(at(path))? {
            tighten(&entry.map_err(at(path))?.path(), skip, tightened)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temp_names() {
        for stale in [".tmp", ".tmpA1b2C3", ".tmp-42", "notes.jsonl.tmp-123", "trainable.safetensors.tmp-7"] {
            assert!(is_stale_temp(stale), "{stale}");
        }
        for kept in ["notes.jsonl", "tmp", "a.tmp", "a.tmp-", "a.tmp-12x", "tmp-3", "ckpt-00000010", "LATEST"] {
            assert!(!is_stale_temp(kept), "{kept}");
        }
    }

    #[test]
    fn prepare_tightens_and_removes_temps_but_not_models() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let job = data.join("jobs/abc/ckpt-00000001");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::create_dir_all(data.join("models/tiny")).unwrap();
        std::fs::create_dir_all(data.join("datasets")).unwrap();
        std::fs::write(data.join("datasets/d.jsonl"), "{}").unwrap();
        std::fs::write(data.join("datasets/.tmpXYZ"), "half").unwrap();
        std::fs::write(job.join("state.json.tmp-99"), "half").unwrap();
        std::fs::write(job.join("state.json"), "{}").unwrap();
        std::fs::write(data.join("models/tiny/config.json"), "{}").unwrap();
        for p in [&data, &data.join("jobs"), &job] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(data.join("datasets/d.jsonl"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(data.join("models/tiny/config.json"), std::fs::Permissions::from_mode(0o644)).unwrap();

        let done = prepare(&data, &data.join("models"), false).unwrap();
        assert_eq!(done.removed_temps, 2);
        assert!(!data.join("datasets/.tmpXYZ").exists() && !job.join("state.json.tmp-99").exists());
        assert!(job.join("state.json").exists() && data.join("datasets/d.jsonl").exists());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for dir in [&data, &data.join("jobs"), &data.join("jobs/abc"), &job, &data.join("datasets")] {
            assert_eq!(mode(dir), DIR_MODE, "{}", dir.display());
        }
        assert_eq!(mode(&data.join("datasets/d.jsonl")), FILE_MODE);
        assert_eq!(mode(&data.join("models/tiny/config.json")), 0o644, "models are left alone");
        assert_eq!(prepare(&data, &data.join("models"), false).unwrap(), Prepared::default(), "a second start changes nothing");
        // On a shared directory a fresh temp file may be another daemon's write: it stays.
        std::fs::write(data.join("jobs").join(".tmp-other"), b"in progress").unwrap();
        assert_eq!(prepare(&data, &data.join("models"), true).unwrap().removed_temps, 0);
        assert!(data.join("jobs").join(".tmp-other").exists());
    }
}
