//! A trained model's files as ewtune hands them over: the list of them (relative path, size,
//! SHA-256) that the daemon records when a job succeeds, signs in the budget report and streams
//! with `Jobs.GetArtifacts`; the directory they are written into, staged beside its target and
//! renamed into place in one step ([`crate::fs::StagedDir`]), by the trainer and by `ewtune jobs download`;
//! and the download side ([`Download`]), which accepts a stream of chunks only when every file
//! is one the daemon recorded, arrives whole, in order, with the recorded size and SHA-256.
//!
//! Paths are relative to the output directory, `/`-separated, each component a plain name
//! ([`check_path`]): a stream cannot name a file outside the directory it is written into.
//!
//! What this module does not own: which files a model consists of (`train/output.rs`), where
//! the daemon keeps them (`service/scheduler.rs`), streaming them (`service/artifacts.rs`) and the gRPC messages (`api/artifacts.rs`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use crate::fs::{at, sync_dir, Existing, PathError, StagedDir};
use std::path::{Path, PathBuf};

/// Most bytes of a file one `Jobs.GetArtifacts` message carries.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Longest artifact path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Most files one output may hold (a sharded checkpoint of 50 GB shards is far below).
pub const MAX_FILES: usize = 10_000;

/// One file of an output directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative to the output directory, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
}

/// Checks that `path` names a file inside an output directory: 1 to [`MAX_PATH_BYTES`] bytes,
/// `/`-separated components that are plain names (not empty, `.` or `..`, no `\`, NUL or other
/// control character). Says what is wrong otherwise.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return Err(format!("a path must hold 1 to {MAX_PATH_BYTES} bytes, this one has {}", path.len()));
    }
    if path.chars().any(|c| c == '\\' || c.is_control()) {
        return Err("a path may not hold a backslash or a control character".into());
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("a path must be relative, its components plain names (no empty, `.` or `..` component)".into());
    }
    Ok(())
}

/// Whether `sha256` is 64 lower-case hex digits.
pub fn is_sha256_hex(sha256: &str) -> bool {
    sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Size and lower-case hex SHA-256 of the file at `path`, read in [`CHUNK_BYTES`] pieces.
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, crate::digest::hex(ctx.finish().as_ref())))
}

/// Every regular file under `dir` (recursively), sorted by path, with its size and SHA-256. A
/// symbolic link or other special file is an error: an output holds plain files only.
pub fn list_files(dir: &Path) -> Result<Vec<OutputFile>, PathError> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<OutputFile>) -> Result<(), PathError> {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
        for entry in std::fs::read_dir(&dir).map_err(at(&dir))? {
            let entry = entry.map_err(at(&dir))?;
            let path = entry.path();
            let name = entry.file_name().into_string().map_err(|_| PathError { path: path.clone(), source: io::Error::other("the name is not UTF-8") })?;
            let rel_name = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let kind = entry.file_type().map_err(at(&path))?;
            if kind.is_dir() {
                walk(root, &rel_name, out)?;
            } else if kind.is_file() {
                check_path(&rel_name).map_err(|reason| PathError { path: path.clone(), source: io::Error::other(reason) })?;
                let (size, sha256) = sha256_file(&path).map_err(at(&path))?;
                out.push(OutputFile { path: rel_name, size, sha256 });
            } else {
                return Err(PathError { path, source: io::Error::other("not a regular file or directory (an output holds plain files only)") });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

/// Why a download was refused. Nothing of it is left on disk.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The target exists and is not an empty directory.
    #[error("{} exists and is not an empty directory; give a new or empty one (nothing was written)", dir.display())]
    NotEmpty {
        /// The target.
        dir: PathBuf,
    },
    /// A path the daemon's list or stream gave is not a plain relative path.
    #[error("the daemon sent a bad path {path:?}: {reason}")]
    BadPath {
        /// The path as sent.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file the job's recorded list does not hold, or one sent twice.
    #[error("the daemon sent {path:?}, which is not among the job's recorded files or was already received")]
    Unexpected {
        /// The path as sent.
        path: String,
    },
    /// A chunk disagrees with the recorded size or SHA-256 of its file.
    #[error("the daemon sent {path:?} as {got}, but the job recorded {recorded}")]
    Disagrees {
        /// The file.
        path: String,
        /// What the job recorded (`size N, sha256 H`).
        recorded: String,
        /// What the chunk says.
        got: String,
    },
    /// A chunk out of place: not at the offset where the file stands, or another file begun
    /// before this one ended.
    #[error("{path:?} arrived out of order: a chunk at byte {got} where byte {expected} was due")]
    OutOfOrder {
        /// The file.
        path: String,
        /// Bytes received so far.
        expected: u64,
        /// The chunk's offset.
        got: u64,
    },
    /// A file ended before its recorded size.
    #[error("{path:?} was cut short: {received} of its {size} bytes arrived")]
    Truncated {
        /// The file.
        path: String,
        /// Bytes received.
        received: u64,
        /// Its recorded size.
        size: u64,
    },
    /// More bytes than the recorded size.
    #[error("{path:?} is longer than its recorded {size} bytes")]
    TooLong {
        /// The file.
        path: String,
        /// Its recorded size.
        size: u64,
    },
    /// The bytes received do not hash to the recorded SHA-256.
    #[error("{path:?} is corrupt: its SHA-256 is {got}, the job recorded {recorded}")]
    Checksum {
        /// The file.
        path: String,
        /// The recorded SHA-256.
        recorded: String,
        /// The SHA-256 of what arrived.
        got: String,
    },
    /// The stream ended without some recorded files.
    #[error("the stream ended without {} of the job's files: {missing:?}", missing.len())]
    Missing {
        /// Their paths.
        missing: Vec<String>,
    },
    /// Writing failed.
    #[error("cannot write {0}")]
    Io(#[from] PathError),
}

/// A file being received.
struct Receiving {
    file: OutputFile,
    handle: std::fs::File,
    ctx: ring::digest::Context,
    received: u64,
}

/// A download in progress: files are written into a staging directory beside the target, each
/// checked against the job's recorded list as it arrives, and the directory becomes the target
/// only when every recorded file arrived whole with its recorded SHA-256 ([`Download::finish`]).
/// Any error, or dropping it unfinished, removes everything it wrote.
pub struct Download {
    staged: StagedDir,
    expected: BTreeMap<String, OutputFile>,
    done: BTreeSet<String>,
    current: Option<Receiving>,
}

impl Download {
    /// Starts a download into `out`, which must not exist or be an empty directory, of exactly
    /// the files `expected` lists (the job's recorded artifacts).
    pub fn start(out: &Path, expected: &[OutputFile]) -> Result<Self, DownloadError> {
        match std::fs::read_dir(out) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(DownloadError::NotEmpty { dir: out.to_path_buf() });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) if out.exists() && !out.is_dir() => return Err(DownloadError::NotEmpty { dir: out.to_path_buf() }),
            Err(e) => return Err(DownloadError::Io(PathError { path: out.to_path_buf(), source: e })),
        }
        let mut map = BTreeMap::new();
        for f in expected {
            check_path(&f.path).map_err(|reason| DownloadError::BadPath { path: f.path.clone(), reason })?;
            if !is_sha256_hex(&f.sha256) {
                return Err(DownloadError::BadPath { path: f.path.clone(), reason: format!("its recorded SHA-256 {:?} is not 64 lower-case hex digits", f.sha256) });
            }
            if map.insert(f.path.clone(), f.clone()).is_some() {
                return Err(DownloadError::Unexpected { path: f.path.clone() });
            }
        }
        Ok(Download { staged: StagedDir::new(out)?, expected: map, done: BTreeSet::new(), current: None })
    }

    /// Accepts one chunk: `data` at `offset` of the file `path`, which the chunk says has `size`
    /// bytes and SHA-256 `sha256`. The file it completes is checked against its recorded
    /// SHA-256 at once.
    pub fn accept(&mut self, path: &str, size: u64, sha256: &str, offset: u64, data: &[u8]) -> Result<(), DownloadError> {
        if self.current.as_ref().is_none_or(|c| c.file.path != path) {
            if let Some(c) = &self.current {
                return Err(DownloadError::Truncated { path: c.file.path.clone(), received: c.received, size: c.file.size });
            }
            check_path(path).map_err(|reason| DownloadError::BadPath { path: path.to_string(), reason })?;
            let file = match self.expected.get(path) {
                Some(f) if !self.done.contains(path) => f.clone(),
                _ => return Err(DownloadError::Unexpected { path: path.to_string() }),
            };
            if offset != 0 {
                return Err(DownloadError::OutOfOrder { path: path.to_string(), expected: 0, got: offset });
            }
            let target = self.staged.path().join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(at(parent))?;
            }
            let handle = std::fs::OpenOptions::new().write(true).create_new(true).open(&target).map_err(at(&target))?;
            self.current = Some(Receiving { file, handle, ctx: ring::digest::Context::new(&ring::digest::SHA256), received: 0 });
        }
        let c = self.current.as_mut().expect("set above");
        if size != c.file.size || sha256 != c.file.sha256 {
            return Err(DownloadError::Disagrees {
                path: path.to_string(),
                recorded: format!("size {}, sha256 {}", c.file.size, c.file.sha256),
                got: format!("size {size}, sha256 {sha256}"),
            });
        }
        if offset != c.received {
            return Err(DownloadError::OutOfOrder { path: path.to_string(), expected: c.received, got: offset });
        }
        if c.received + data.len() as u64 > c.file.size {
            return Err(DownloadError::TooLong { path: path.to_string(), size: c.file.size });
        }
        let target = self.staged.path().join(path);
        c.handle.write_all(data).map_err(at(&target))?;
        c.ctx.update(data);
        c.received += data.len() as u64;
        if c.received == c.file.size {
            let c = self.current.take().expect("set above");
            let got = crate::digest::hex(c.ctx.finish().as_ref());
            if got != c.file.sha256 {
                return Err(DownloadError::Checksum { path: c.file.path, recorded: c.file.sha256, got });
            }
            c.handle.sync_all().map_err(at(&target))?;
            self.done.insert(c.file.path);
        }
        Ok(())
    }

    /// Ends the download: every recorded file must have arrived whole; then the staging
    /// directory becomes `out` in one rename. Returns the files written.
    pub fn finish(mut self) -> Result<Vec<OutputFile>, DownloadError> {
        if let Some(c) = self.current.take() {
            return Err(DownloadError::Truncated { path: c.file.path, received: c.received, size: c.file.size });
        }
        let missing: Vec<String> = self.expected.keys().filter(|p| !self.done.contains(*p)).cloned().collect();
        if !missing.is_empty() {
            return Err(DownloadError::Missing { missing });
        }
        // Subdirectories hold entries too: sync them before the rename publishes them.
        let dirs: BTreeSet<PathBuf> = self.expected.keys().filter_map(|p| Path::new(p).parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf)).collect();
        for d in dirs {
            sync_dir(&self.staged.path().join(d))?;
        }
        let files: Vec<OutputFile> = std::mem::take(&mut self.expected).into_values().collect();
        self.staged.commit(Existing::KeepUnlessEmpty)?;
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside_the_directory() {
        for ok in ["adapter_config.json", "a/b.safetensors", "model-00001-of-00002.safetensors"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/", "a\\b", "a\nb", "a\0b", &"x".repeat(MAX_PATH_BYTES + 1)] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_files_hashes_every_file_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), b"abc").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), b"").unwrap();
        let files = list_files(dir.path()).unwrap();
        assert_eq!(
            files,
            [
                OutputFile { path: "b".into(), size: 3, sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into() },
                OutputFile { path: "sub/a".into(), size: 0, sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into() },
            ]
        );
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        assert!(list_files(dir.path()).is_err(), "links are refused");
    }
}
