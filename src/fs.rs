//! Durable file writes, at the bottom of the crate: a file written atomically (a unique temp
//! file beside it from `tempfile`, fsynced, renamed over the target, the directory fsynced), a
//! directory staged beside its target and renamed into place in one step ([`StagedDir`]), and
//! the error that names the path. A crash at any instant leaves the old file or directory or
//! the complete new one, and at worst a `.tmp-*` entry that the daemon removes at start-up.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An error about one path: the path and what happened.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PathError {
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

pub(crate) fn at(path: &Path) -> impl FnOnce(io::Error) -> PathError + '_ {
    move |source| PathError { path: path.to_path_buf(), source }
}

/// Prefix of every temp file and staged directory written beside its target.
pub const TEMP_PREFIX: &str = ".tmp-";

/// The directory `path` is in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PathError> {
    write_atomic_with(path, |file, _| file.write_all(bytes))
}

/// Writes `path` atomically through `write`, which fills the temp file (given open and by its
/// path, for writers that take a path).
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut std::fs::File, &Path) -> io::Result<()>) -> Result<(), PathError> {
    let dir = parent_dir(path);
    // A unique name (`.tmp-XXXXXX`), mode 0600: two writers never share one.
    let mut tmp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir).map_err(at(dir))?;
    let tmp_path = tmp.path().to_path_buf();
    write(tmp.as_file_mut(), &tmp_path).and_then(|()| tmp.as_file().sync_all()).map_err(at(&tmp_path))?;
    tmp.persist(path).map_err(|e| PathError { path: path.to_path_buf(), source: e.error })?;
    sync_dir(dir)
}

/// A directory being filled beside its target, `.tmp-<target name>-<16 hex>` in the target's
/// parent, that becomes the target in one rename ([`StagedDir::commit`]): readers see the old
/// directory or the complete new one, never a mix. Dropped uncommitted, it is removed with
/// everything in it.
#[derive(Debug)]
pub struct StagedDir {
    path: PathBuf,
    target: PathBuf,
}

/// What [`StagedDir::commit`] does with an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it, whatever it holds (a model written again when a finished job re-runs).
    Replace,
    /// Only an empty directory may be replaced; anything else is left and the commit refused.
    KeepUnlessEmpty,
}

impl StagedDir {
    /// Creates the staging directory for `target` (its parent is created when absent). Files
    /// and directories in it get the process umask's modes, as the target would.
    pub fn new(target: &Path) -> Result<Self, PathError> {
        let name = target.file_name().ok_or_else(|| PathError { path: target.to_path_buf(), source: io::Error::other("names no directory") })?;
        let parent = parent_dir(target).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(at(&parent))?;
        for _ in 0..16 {
            let path = parent.join(format!("{TEMP_PREFIX}{}-{:016x}", name.to_string_lossy(), rand::random::<u64>()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(StagedDir { path, target: target.to_path_buf() }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(PathError { path, source: e }),
            }
        }
        Err(PathError { path: parent, source: io::Error::other("no unused staging directory name after 16 tries") })
    }

    /// The staging directory, to write into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fsyncs the staging directory (its files must be synced already: [`write_synced`]) and
    /// renames it onto the target, then fsyncs the parent. An existing target is handled as
    /// `existing` says; a replaced one is exchanged with the new directory in one atomic
    /// `renameat2(RENAME_EXCHANGE)` and then removed, so at no instant is there no target.
    pub fn commit(self, existing: Existing) -> Result<(), PathError> {
        sync_dir(&self.path)?;
        match std::fs::rename(&self.path, &self.target) {
            Ok(()) => {}
            // rename(2) replaces an empty directory only: the target holds files.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => match existing {
                Existing::KeepUnlessEmpty => {
                    return Err(PathError { path: self.target.clone(), source: io::Error::other("exists and is not empty; it was left as it was") })
                }
                Existing::Replace => {
                    exchange(&self.path, &self.target)?;
                    // self.path now holds the old directory: dropping self removes it.
                }
            },
            Err(e) => return Err(PathError { path: self.target.clone(), source: e }),
        }
        sync_dir(parent_dir(&self.path))
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if self.path.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a staging directory");
            }
        }
    }
}

/// Swaps two directories atomically (Linux `renameat2` with `RENAME_EXCHANGE`). Elsewhere, or
/// where the file system does not support it, `b` is moved aside first, then `a` onto it, and the old `b`
/// left at `a`'s name: a crash between the two renames leaves no target but both directories,
/// under names the daemon's start-up removes or the next run replaces.
fn exchange(a: &Path, b: &Path) -> Result<(), PathError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| PathError { path: p.to_path_buf(), source: io::Error::other(e) });
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: both pointers are NUL-terminated strings that outlive the call.
        let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP)) {
            return Err(PathError { path: b.to_path_buf(), source: err });
        }
    }
    let aside = a.with_file_name(format!("{}-old", a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    std::fs::rename(b, &aside).map_err(at(b))?;
    std::fs::rename(a, b).map_err(at(b))?;
    std::fs::rename(&aside, a).map_err(at(a))
}

/// fsync of a directory (its entries are durable).
pub fn sync_dir(dir: &Path) -> Result<(), PathError> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(at(dir))
}

/// Writes `bytes` to a new file at `path` (in a staging directory: the directory's rename is
/// what makes it visible) and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PathError> {
    let mut f = std::fs::File::create(path).map_err(at(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_and_leave_no_temp_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let failed = write_atomic_with(&path, |_, _| Err(io::Error::other("disk full")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"two", "a failed write leaves the old file");
        let names: Vec<String> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["state.json"], "no temp file is left");
    }

    #[test]
    fn staged_dirs_replace_or_refuse_and_leave_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("model");
        let s = StagedDir::new(&target).unwrap();
        write_synced(&s.path().join("a"), b"one").unwrap();
        s.commit(Existing::Replace).unwrap();
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"one");
        // Replaced whole: the old file is gone, the new one there.
        let s = StagedDir::new(&target).unwrap();
        write_synced(&s.path().join("b"), b"two").unwrap();
        s.commit(Existing::Replace).unwrap();
        assert!(!target.join("a").exists());
        assert_eq!(std::fs::read(target.join("b")).unwrap(), b"two");
        // A non-empty target is kept when asked.
        let s = StagedDir::new(&target).unwrap();
        write_synced(&s.path().join("c"), b"three").unwrap();
        assert!(s.commit(Existing::KeepUnlessEmpty).is_err());
        assert_eq!(std::fs::read(target.join("b")).unwrap(), b"two");
        // Dropped uncommitted: removed.
        let s = StagedDir::new(&target).unwrap();
        write_synced(&s.path().join("d"), b"four").unwrap();
        drop(s);
        let names: Vec<String> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["model"], "no staging directory is left");
    }

}
