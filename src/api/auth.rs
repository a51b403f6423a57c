//! Bearer-token authentication: `authorization: Bearer <token>` is looked up (by its SHA-256)
//! in the store and the caller's tenant is put into the request's extensions; every handler
//! reads it from there, so no request reaches a handler without one.

use crate::service::State;
use crate::store::TenantId;
use std::sync::Arc;
use tonic::{Request, Status};

/// The interceptor installed in front of every ewtune service.
#[derive(Clone)]
pub struct Authenticator {
    pub(crate) state: Arc<State>,
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        let value = header.to_str().map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
        let token = value.strip_prefix("Bearer ").ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
        match self.state.store.authenticate(token.trim()) {
            Ok(Some(tenant)) => {
                req.extensions_mut().insert(tenant);
                Ok(req)
            }
            Ok(None) => Err(Status::unauthenticated("unknown or revoked token")),
            // The ledger's database cannot be reached: Unavailable, so a client retries.
            Err(e @ crate::store::StoreError::Unavailable { .. }) => Err(e.into()),
            Err(e) => {
                tracing::error!(error = %e, "token lookup failed");
                Err(Status::internal("authentication is unavailable"))
            }
        }
    }
}

/// The tenant the interceptor attached.
pub fn tenant<T>(req: &Request<T>) -> Result<TenantId, Status> {
    req.extensions().get::<TenantId>().cloned().ok_or_else(|| Status::unauthenticated("no tenant on the request"))
}
