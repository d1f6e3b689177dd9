//! Logs and traces through `tracing`.
//!
//! - Logs: `RUST_LOG` filters (default `info`); text or JSON lines on
//!   stderr. A call's log lines carry its `trace_id`.
//! - Traces: spans for each gRPC call (continuing the caller's W3C
//!   `traceparent`), each group-commit batch (linked to the calls it
//!   commits), database calls and projector batches, exported over OTLP/gRPC
//!   when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set,
//!   described by `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.
//!   Nothing is exported when it is unset.

use std::io::IsTerminal;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The installed telemetry; [`Telemetry::shutdown`] flushes the spans not
/// yet exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

/// Installs the global subscriber. Call once, from `main`, inside the Tokio
/// runtime (the OTLP exporter's client needs it).
pub fn init(format: LogFormat) -> Telemetry {
    let exporter = otlp_endpoint_configured().then(|| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
    });
    let mut provider = SdkTracerProvider::builder().with_resource(resource());
    let mut problem = None;
    let exporting = match exporter {
        Some(Ok(exporter)) => {
            provider = provider.with_batch_exporter(exporter);
            true
        }
        Some(Err(error)) => {
            problem = Some(error.to_string());
            false
        }
        None => false,
    };
    let provider = provider.build();
    // Without an exporter there is no OpenTelemetry layer at all: building
    // spans nobody exports cost ingest a few percent (docs/performance.md).
    // Logs still carry the caller's trace id (see `grpc_span`).
    let otel = exporting
        .then(|| tracing_opentelemetry::layer().with_tracer(provider.tracer("rapport-server")));

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
    if let Some(problem) = problem {
        tracing::error!(%problem, "cannot export traces over OTLP; continuing without");
    } else if exporting {
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry {
        provider,
        exporting,
    }
}

impl Telemetry {
    /// Exports what is still buffered. Call once the server has stopped.
    pub fn shutdown(self) {
        if self.exporting
            && let Err(error) = self.provider.shutdown()
        {
            tracing::warn!(%error, "flushing traces at exit failed");
        }
    }
}

fn otlp_endpoint_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The SDK's default resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`),
/// named `rapport-server` when neither names the service.
fn resource() -> opentelemetry_sdk::Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let builder = opentelemetry_sdk::Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name("rapport-server").build()
    }
}

/// The span of one gRPC call: named after the method (OpenTelemetry's RPC
/// conventions), a child of the caller's `traceparent` when it sends one,
/// its trace id recorded for the log lines inside it (the caller's when
/// traces are not exported).
pub fn grpc_span<B>(request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or_default();
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        trace_id = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(request.headers()));
    let callers = parent.span().span_context().trace_id();
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let own = span.context().span().span_context().trace_id();
    let trace_id = if own != opentelemetry::TraceId::INVALID {
        own
    } else {
        callers
    };
    if trace_id != opentelemetry::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}
