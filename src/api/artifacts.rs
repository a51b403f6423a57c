//! `ewtune.v1.Jobs/GetArtifacts`: a succeeded job's output files as a server stream of chunks,
//! read and checked by the service (`service/artifacts.rs`).

use super::auth::tenant;
use super::jobs::job_id;
use super::pb;
use crate::service::artifacts;
use crate::service::State;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The stream type of `Jobs/GetArtifacts`.
pub type ArtifactStream = Pin<Box<dyn Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

/// The handler.
pub(super) async fn get_artifacts(state: &Arc<State>, req: Request<pb::GetArtifactsRequest>) -> Result<Response<ArtifactStream>, Status> {
    let tenant = tenant(&req)?;
    let id = job_id(&req.get_ref().job_id)?;
    let chunks = artifacts::open(state, &tenant, id).await?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(chunks).map(|chunk| {
        chunk
            .map(|c| pb::ArtifactChunk { path: c.path, size: c.size, sha256: c.sha256, offset: c.offset, data: c.data })
            .map_err(Status::from)
    });
    Ok(Response::new(Box::pin(stream)))
}
