//! `/metrics` on the admin port: the series an SRE watches move with the
//! calls made.

use std::time::{Duration, Instant};

use rapport_proto::v1 as pb;

use crate::app::{Backend, spawn_app};
use crate::ingest::{interaction, one};
use crate::on_both_backends;

/// The value of the sample `name{labels...}` (labels in any order; a sample
/// with more labels matches too), if the text has it.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let all = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|l| l == format!("{k}=\"{v}\""))
            });
            (series_name == name && all).then(|| value.parse().ok())?
        })
}

on_both_backends!(the_metrics_follow_calls_commits_subscribers_and_projections);

async fn the_metrics_follow_calls_commits_subscribers_and_projections(backend: Backend) {
    let Some(app) = spawn_app(backend, "metrics").await else {
        return;
    };
    const RECORD: &str = "rapport.v1.InteractionService/RecordInteraction";
    let before = app.metrics().await;
    let count = |text: &str, code: &str| {
        sample(
            text,
            "rapport_grpc_requests_total",
            &[("method", RECORD), ("code", code)],
        )
        .unwrap_or(0.0)
    };
    let batches =
        |text: &str| sample(text, "rapport_group_commit_batch_size_count", &[]).unwrap_or(0.0);
    let appended = |text: &str| sample(text, "rapport_events_appended_total", &[]).unwrap_or(0.0);

    let mut client = app.interactions().await;
    let mut head = 0;
    for n in 0..3 {
        head = client
            .record_interaction(one(interaction(&format!("m-{n}"), "ana")))
            .await
            .unwrap()
            .into_inner()
            .position;
    }
    let mut bad = interaction("bad", "ana");
    bad.kind = 0;
    client.record_interaction(one(bad)).await.unwrap_err();
    let mut stream = app
        .event_log()
        .await
        .subscribe_events(pb::SubscribeEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    stream
        .message()
        .await
        .unwrap()
        .expect("the subscription is open");

    let after = app.metrics().await;
    assert_eq!(count(&after, "OK") - count(&before, "OK"), 3.0, "{after}");
    assert_eq!(
        count(&after, "INVALID_ARGUMENT") - count(&before, "INVALID_ARGUMENT"),
        1.0
    );
    assert!(
        sample(
            &after,
            "rapport_grpc_request_duration_seconds_count",
            &[("method", RECORD), ("code", "OK")]
        )
        .is_some_and(|n| n >= 3.0),
        "{after}"
    );
    assert!(batches(&after) - batches(&before) >= 1.0, "{after}");
    assert!(sample(&after, "rapport_group_commit_duration_seconds_count", &[]).is_some());
    // Every event the log gained (a new member's first interaction brings
    // its registration too) was counted.
    let head_before = sample(&before, "rapport_log_head_position", &[]).unwrap_or(0.0);
    assert_eq!(
        appended(&after) - appended(&before),
        head as f64 - head_before,
        "{after}"
    );
    assert_eq!(
        sample(&after, "rapport_subscriptions_open", &[]),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "rapport_log_head_position", &[]),
        Some(head as f64)
    );
    assert_eq!(
        sample(&after, "rapport_db_pool_connections", &[("state", "max")]),
        Some(16.0),
        "{after}"
    );
    // Projection lag reaches 0 once the projectors catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = app.metrics().await;
        let lag = sample(
            &text,
            "rapport_projection_lag_events",
            &[("projection", "timeline")],
        );
        let checkpoint = sample(
            &text,
            "rapport_projection_checkpoint_position",
            &[("projection", "timeline")],
        );
        if lag == Some(0.0) && checkpoint == Some(head as f64) {
            // Every event was applied once (a new server: one generation),
            // in batches whose time is counted.
            let timeline = [("projection", "timeline")];
            assert_eq!(
                sample(&text, "rapport_projection_events_applied_total", &timeline),
                Some(head as f64),
                "{text}"
            );
            let batches = sample(
                &text,
                "rapport_projection_batch_duration_seconds_count",
                &timeline,
            );
            assert!(batches.is_some_and(|n| n >= 1.0), "{text}");
            let busy = sample(
                &text,
                "rapport_projection_batch_duration_seconds_sum",
                &timeline,
            );
            assert!(busy.is_some_and(|s| s > 0.0), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timeline lag {lag:?}, checkpoint {checkpoint:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&app.metrics().await, "rapport_subscriptions_open", &[]) != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the closed subscription is still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The subscription's stream ends as CANCELLED from the server's side.
    let text = app.metrics().await;
    assert_eq!(
        sample(
            &text,
            "rapport_grpc_requests_total",
            &[
                ("method", "rapport.v1.EventLogService/SubscribeEvents"),
                ("code", "CANCELLED")
            ]
        ),
        Some(1.0),
        "{text}"
    );
}
