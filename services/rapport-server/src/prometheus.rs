//! Metrics: recorded through the `metrics` facade wherever they happen (the
//! group-commit writer in rapport-store, the projector runner in
//! rapport-projections, subscriptions, [`RedLayer`] here),
//! exposed in Prometheus text format at `/metrics` on `--admin-listen`.
//!
//! Gauges that describe state rather than events (projection lag, pool
//! usage) are read when Prometheus scrapes, so they are never stale.
//! docs/operations.md lists every series.

use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tonic::codegen::{BoxFuture, Service, http};

use crate::api::AppState;
use crate::auth::{Access, access};

/// Seconds: from 0.5 ms (a cached read) to 60 s (a policy preview).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Interactions per group-commit batch: 1 up to the largest batch.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// The process's recorder, installed once (tests run several servers in one
/// process).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    DURATION_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("rapport_group_commit_batch_size".into()),
                        BATCH_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .install_recorder()
                .expect("one metrics recorder per process")
        })
        .clone()
}

/// Serves `/metrics` on `listener` until `stop` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    state: AppState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = recorder();
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state((state, handle));
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

async fn scrape(
    State((state, handle)): State<(AppState, PrometheusHandle)>,
) -> ([(http::header::HeaderName, &'static str); 1], String) {
    collect(&state).await;
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

/// Reads the state gauges. Bounded, so a slow database cannot hang the
/// scrape; their last values stay until the next one.
async fn collect(state: &AppState) {
    let Ok(ready) = state.ready() else {
        return;
    };
    let pool = ready.store.pool_usage();
    metrics::gauge!("rapport_db_pool_connections", "state" => "open").set(pool.open);
    metrics::gauge!("rapport_db_pool_connections", "state" => "idle").set(pool.idle);
    metrics::gauge!("rapport_db_pool_connections", "state" => "max").set(pool.max);
    metrics::gauge!("rapport_log_head_position").set(*ready.writer.committed().borrow() as f64);
    if let Ok(Ok(projections)) =
        tokio::time::timeout(Duration::from_secs(2), ready.projections.status()).await
    {
        for p in projections {
            metrics::gauge!("rapport_projection_lag_events", "projection" => p.name)
                .set(p.lag() as f64);
            metrics::gauge!("rapport_projection_checkpoint_position", "projection" => p.name)
                .set(p.active.as_ref().map_or(0, |a| a.position) as f64);
            metrics::gauge!("rapport_projection_leading_here", "projection" => p.name)
                .set(if p.leading_here { 1.0 } else { 0.0 });
        }
    }
}

/// RED metrics per gRPC method and status code:
/// `rapport_grpc_requests_total{method, code}` and
/// `rapport_grpc_request_duration_seconds{method, code}`, counted when the
/// response ends (its trailers carry the status; a stream's duration is its
/// whole life).
#[derive(Clone, Copy, Default)]
pub struct RedLayer;

impl<S> tower::Layer<S> for RedLayer {
    type Service = Red<S>;

    fn layer(&self, inner: S) -> Red<S> {
        Red(inner)
    }
}

#[derive(Clone)]
pub struct Red<S>(S);

impl<S, B> Service<http::Request<B>> for Red<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        // Only our own methods become labels: a caller must not be able to
        // mint series by sending made-up paths.
        let method = match access(path) {
            Access::Unknown => "unknown".to_owned(),
            _ => path.trim_start_matches('/').to_owned(),
        };
        // Dropped unfinished (the deadline passed, the client went away):
        // counted as CANCELLED.
        let mut observed = Observed {
            method,
            started: Instant::now(),
            done: false,
        };
        let response = self.0.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                // A layer below refused the call (load shedding): answer
                // with its status here, so it is counted too.
                Err(error) => {
                    let status = tonic::Status::from_error(error.into());
                    observed.finish(status.code());
                    return Ok(status.into_http());
                }
            };
            // An error without a body puts the status in the headers.
            if let Some(code) = grpc_code(response.headers()) {
                observed.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(ObservedBody { body, observed })))
        })
    }
}

struct Observed {
    method: String,
    started: Instant,
    done: bool,
}

impl Observed {
    fn finish(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        let code = code_label(code);
        metrics::counter!("rapport_grpc_requests_total", "method" => self.method.clone(), "code" => code)
            .increment(1);
        metrics::histogram!("rapport_grpc_request_duration_seconds", "method" => self.method.clone(), "code" => code)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Observed {
    /// The client went away before the end (or the body failed): the
    /// server-side view of that is CANCELLED.
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

struct ObservedBody {
    body: tonic::body::Body,
    observed: Observed,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    self.observed.finish(code);
                }
            }
            Poll::Ready(None) => self.observed.finish(tonic::Code::Unknown),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(tonic::Code::from_i32(value))
}

/// The canonical UPPER_SNAKE name of a code, as gRPC's own tooling shows it.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
