//! A succeeded job's output files as `Jobs.GetArtifacts` streams them: the ones recorded when
//! it succeeded, in path order, each in chunks of at most [`artifacts::CHUNK_BYTES`]. [`open`]
//! checks the job (the caller's, succeeded, with recorded outputs: NotFound otherwise) and takes
//! one of the tenant's `downloads_per_tenant` slots before the stream starts; the stream's task
//! reads each file as it sends it, hashing on the way, and ends with DataLoss instead of a
//! file's last chunk when the file no longer has its recorded size or SHA-256 (logged whole on
//! the daemon). At most [`BUFFERED_CHUNKS`] chunks wait for a slow client. The stream ends with
//! Unavailable when the daemon stops.
//!
//! What this file does not own: what the files are (`train/output.rs`), their recording
//! (`store/jobs.rs`) and the client's checks (`crate::artifacts::Download`).

use super::error::{Kind, ServiceError};
use super::jobs::output_dir;
use super::tenant_slots::TenantSlot;
use super::State;
use crate::artifacts::{self, OutputFile};
use crate::store::{JobId, JobState, TenantId};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Chunks read ahead of a slow client, per stream.
pub const BUFFERED_CHUNKS: usize = 2;

/// A piece of one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The file's path in the output directory.
    pub path: String,
    /// The file's recorded size.
    pub size: u64,
    /// The file's recorded SHA-256.
    pub sha256: String,
    /// Where `data` starts in the file.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The chunks of job `id`'s recorded outputs, as a channel the stream's task fills.
pub async fn open(state: &Arc<State>, tenant: &TenantId, id: JobId) -> Result<mpsc::Receiver<Result<Chunk, ServiceError>>, ServiceError> {
    let (t, i) = (tenant.clone(), id.clone());
    let (job, files) = super::blocking(state, move |s| Ok::<_, ServiceError>(s.store.job_outputs(&t, &i)?)).await?;
    if job.state != JobState::Succeeded {
        return Err(ServiceError::new(Kind::NotFound, format!("job {id} has no artifacts: it is {} (only a succeeded job has)", job.state)));
    }
    if files.is_empty() {
        return Err(ServiceError::new(Kind::NotFound, format!("job {id} has no recorded artifacts: it succeeded before this daemon recorded outputs")));
    }
    let slot = state.downloads.try_open(tenant).ok_or_else(|| {
        ServiceError::new(
            Kind::ResourceExhausted,
            format!("this tenant already has {} GetArtifacts streams open (downloads_per_tenant); let one finish first", state.downloads.cap()),
        )
    })?;
    let (tx, rx) = mpsc::channel(BUFFERED_CHUNKS);
    tokio::spawn(send_files(output_dir(state, &id), id, files, state.stopping.subscribe(), tx, slot));
    Ok(rx)
}

/// The stream's task: every file in turn; ends when the client goes away, on the first error
/// (sent to the client), or when the daemon stops. Holds `_slot` while it runs.
async fn send_files(
    dir: PathBuf,
    job: JobId,
    files: Vec<OutputFile>,
    stopping: tokio::sync::watch::Receiver<bool>,
    tx: mpsc::Sender<Result<Chunk, ServiceError>>,
    _slot: TenantSlot,
) {
    for f in &files {
        match send_file(&dir, &job, f, &stopping, &tx).await {
            Ok(true) => {}
            Ok(false) => return, // the client hung up
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }
}

/// Sends one file; `Ok(false)` when the client went away.
async fn send_file(
    dir: &Path,
    job: &JobId,
    f: &OutputFile,
    stopping: &tokio::sync::watch::Receiver<bool>,
    tx: &mpsc::Sender<Result<Chunk, ServiceError>>,
) -> Result<bool, ServiceError> {
    // The path was checked when it was recorded: a plain relative path inside `dir`.
    let path = dir.join(&f.path);
    let lost = |what: String| {
        tracing::error!(job = %job.as_str(), path = %path.display(), problem = %what, "a recorded artifact is not what the job wrote");
        ServiceError::new(Kind::DataLoss, format!("artifact {} of job {job} on the daemon no longer matches what was recorded when the job succeeded; tell the daemon's operator", f.path))
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| lost(format!("cannot open it: {e}")))?;
    let on_disk = file.metadata().await.map_err(|e| lost(format!("cannot stat it: {e}")))?.len();
    if on_disk != f.size {
        return Err(lost(format!("{on_disk} bytes, {} recorded", f.size)));
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut offset = 0u64;
    loop {
        if *stopping.borrow() {
            return Err(ServiceError::new(Kind::Unavailable, "the daemon is stopping; download again when it is back"));
        }
        let len = (f.size - offset).min(artifacts::CHUNK_BYTES as u64) as usize;
        let mut data = vec![0u8; len];
        file.read_exact(&mut data).await.map_err(|e| lost(format!("cannot read bytes {offset}..{}: {e}", offset + len as u64)))?;
        ctx.update(&data);
        let last = offset + len as u64 == f.size;
        if last {
            let got = crate::digest::hex(ctx.clone().finish().as_ref());
            if got != f.sha256 {
                return Err(lost(format!("its SHA-256 is {got}, {} recorded", f.sha256)));
            }
        }
        let chunk = Chunk { path: f.path.clone(), size: f.size, sha256: f.sha256.clone(), offset, data };
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(false);
        }
        offset += len as u64;
        if last {
            return Ok(true);
        }
    }
}
