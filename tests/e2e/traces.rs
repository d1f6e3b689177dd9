//! Traces over OTLP: a real OTLP/gRPC receiver in the test, the server
//! exporting to it, spans that continue the caller's `traceparent`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use rapport_proto::v1 as pb;
use tonic::transport::server::TcpIncoming;

use crate::app::{Backend, fresh_database, start_with_env};
use crate::ingest::{interaction, one};

/// What the receiver was sent: each span with its resource's service.name.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_as_children_of_the_callers_trace() {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let db = fresh_database(Backend::Sqlite, "traces").await.unwrap();
    let url = db.url.clone();
    let app = start_with_env(
        &url,
        Some(db),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "rapport-e2e"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    app.wait_serving().await;

    app.interactions()
        .await
        .record_interaction(traced(one(interaction("traced-1", "ana"))))
        .await
        .unwrap();
    // A call that logs inside its span, to find the trace id in the log.
    set_the_policy_again_traced(&app).await;

    let trace_id = hex(TRACE_ID);
    let find = |name: &str| -> Option<(String, Span)> {
        received
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, s)| s.name == name && s.trace_id == trace_id)
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (service, rpc) = loop {
        if let Some(found) = find("rapport.v1.InteractionService/RecordInteraction") {
            break found;
        }
        assert!(Instant::now() < deadline, "the call's span never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        service, "rapport-e2e",
        "OTEL_SERVICE_NAME names the service"
    );
    assert_eq!(
        rpc.parent_span_id,
        hex(PARENT_SPAN_ID),
        "a child of the caller's span"
    );
    assert_eq!(rpc.kind, 2, "SPAN_KIND_SERVER");

    // The group-commit batch that committed the call links to it, and the
    // database call is the batch's child.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (batch, append) = loop {
        let spans = received.0.lock().unwrap().clone();
        let batch = spans.iter().map(|(_, s)| s).find(|s| {
            s.name == "group_commit"
                && s.links
                    .iter()
                    .any(|l| l.trace_id == trace_id && l.span_id == rpc.span_id)
        });
        if let Some(batch) = batch
            && let Some(append) = spans
                .iter()
                .map(|(_, s)| s)
                .find(|s| s.name == "db.append" && s.parent_span_id == batch.span_id)
        {
            break (batch.clone(), append.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no group_commit span linked to the call: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(append.trace_id, batch.trace_id);

    // A projector batch span, for the projector that applied the write.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !received
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|(_, s)| s.name == "projector_batch")
    {
        assert!(Instant::now() < deadline, "no projector_batch span");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The log line written inside the traced call carries its trace id.
    wait_for_traced_log_line(&app).await;
    receiver.abort();
}

/// SetScoringPolicy (with the current policy) under the caller's trace: a
/// call that logs inside its span.
async fn set_the_policy_again_traced(app: &crate::app::TestApp) {
    let policy = app
        .advocacy()
        .await
        .get_scoring_policy(pb::GetScoringPolicyRequest {
            community_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    app.advocacy()
        .await
        .set_scoring_policy(traced(pb::SetScoringPolicyRequest {
            community_id: "acme".into(),
            policy,
        }))
        .await
        .unwrap();
}

/// The server's log line of the traced SetScoringPolicy, with the trace id.
/// The log arrives through a pipe read by another thread: give it time.
async fn wait_for_traced_log_line(app: &crate::app::TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = app.log.lock().unwrap().join("\n");
        if log.lines().any(|l| {
            l.contains("scoring policy set") && l.contains(&format!("trace_id={TRACE_ID}"))
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "no traced log line: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Without a collector nothing is exported, and log lines still carry the
/// caller's trace id, to find them from the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_logs_still_carry_the_callers_trace_id() {
    let db = fresh_database(Backend::Sqlite, "traces_off").await.unwrap();
    let url = db.url.clone();
    let app = start_with_env(&url, Some(db), &[], &[]);
    app.wait_serving().await;
    set_the_policy_again_traced(&app).await;
    wait_for_traced_log_line(&app).await;
    let log = app.log.lock().unwrap().join("\n");
    assert!(!log.contains("exporting traces"), "{log}");
}
