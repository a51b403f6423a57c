//! A tower layer that times every gRPC request into the operators' latency histogram
//! (`ewtune_api_request_duration_seconds{method}`, `service/metrics.rs`): from the request's
//! arrival to its response's headers, which for a unary call is the whole call and for a stream
//! its start.

use crate::service::metrics::method_label;
use crate::service::State;
use tonic::codegen::http;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The layer.
#[derive(Clone)]
pub struct LatencyLayer {
    state: Arc<State>,
}

impl LatencyLayer {
    /// Times into `state.metrics`.
    pub fn new(state: Arc<State>) -> Self {
        LatencyLayer { state }
    }
}

impl<S> tower::Layer<S> for LatencyLayer {
    type Service = Latency<S>;

    fn layer(&self, inner: S) -> Latency<S> {
        Latency { inner, state: self.state.clone() }
    }
}

/// The service of [`LatencyLayer`].
#[derive(Clone)]
pub struct Latency<S> {
    inner: S,
    state: Arc<State>,
}

impl<S, B> tower::Service<http::Request<B>> for Latency<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let histogram = self.state.metrics.api_latency.with_label_values(&[method_label(req.uri().path())]);
        let started = std::time::Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let r = response.await;
            histogram.observe(started.elapsed().as_secs_f64());
            r
        })
    }
}
