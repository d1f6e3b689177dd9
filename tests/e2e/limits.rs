//! Robustness: load shedding past the concurrency limit, the default
//! deadline, health that follows the database.

use std::time::{Duration, Instant};

use rapport_proto::v1 as pb;
use sqlx::Connection;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::app::{Backend, fresh_database, start};
use crate::ingest::{interaction, one};

/// A timeline read that waits for a position the log will not reach for
/// `wait`: a call that stays in flight that long.
fn waiting_read(wait: Duration) -> tonic::Request<pb::GetTimelineRequest> {
    let mut request = tonic::Request::new(pb::GetTimelineRequest {
        community_id: "acme".into(),
        identity: Some(pb::Identity {
            channel: "forum".into(),
            handle: "ana".into(),
        }),
        min_position: 1_000_000_000,
        ..Default::default()
    });
    request.set_timeout(wait);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_concurrency_limit_are_shed_at_once() {
    let db = fresh_database(Backend::Sqlite, "load_shedding")
        .await
        .unwrap();
    let app = start(db, &["--max-concurrent-requests", "2"]).await;
    app.wait_serving().await;
    app.interactions()
        .await
        .record_interaction(one(interaction("m-1", "ana")))
        .await
        .unwrap();

    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut client = app.timelines().await;
        busy.push(tokio::spawn(async move {
            client
                .get_timeline(waiting_read(Duration::from_secs(3)))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let status = app
        .interactions()
        .await
        .record_interaction(one(interaction("m-2", "ana")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shed, not queued"
    );

    for call in busy {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "the waits end as the projection being behind"
        );
    }
    app.interactions()
        .await
        .record_interaction(one(interaction("m-2", "ana")))
        .await
        .expect("accepted again once the load is gone");
    let text = app.metrics().await;
    assert_eq!(
        crate::metrics::sample(
            &text,
            "rapport_grpc_requests_total",
            &[
                ("method", "rapport.v1.InteractionService/RecordInteraction"),
                ("code", "RESOURCE_EXHAUSTED")
            ]
        ),
        Some(1.0),
        "shed calls are counted: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_deadline_gets_the_default_one() {
    let db = fresh_database(Backend::Sqlite, "default_deadline")
        .await
        .unwrap();
    let app = start(db, &["--request-timeout-secs", "1"]).await;
    app.wait_serving().await;
    app.interactions()
        .await
        .record_interaction(one(interaction("m-1", "ana")))
        .await
        .unwrap();
    let mut request = waiting_read(Duration::from_secs(30));
    request.metadata_mut().remove("grpc-timeout");
    let started = Instant::now();
    let status = app
        .timelines()
        .await
        .get_timeline(request)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "ended after {took:?}, not at the 1 s default"
    );
    assert_ne!(status.code(), Code::Ok);
}

/// PostgreSQL stops accepting the server's connections: health turns
/// NOT_SERVING within the check interval, and SERVING again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_and_recovers_by_itself() {
    let Some(db) = fresh_database(Backend::Postgres, "health_follows").await else {
        return;
    };
    let app = start(db, &["--health-check-secs", "1"]).await;
    app.wait_serving().await;
    let database = app.database_url().rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(&rapport_testkit::postgres_admin_url())
        .await
        .unwrap();
    // The name is the test harness's own, not input.
    let allow =
        |allowed: bool| format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS {allowed}");

    sqlx::query(sqlx::AssertSqlSafe(allow(false)))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&database)
        .execute(&mut admin)
        .await
        .unwrap();
    let wait_for = async |want: ServingStatus| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while app.health("rapport.v1.TimelineService").await != want {
            assert!(Instant::now() < deadline, "health never became {want:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_for(ServingStatus::NotServing).await;
    assert_eq!(app.health("").await, ServingStatus::NotServing);

    sqlx::query(sqlx::AssertSqlSafe(allow(true)))
        .execute(&mut admin)
        .await
        .unwrap();
    wait_for(ServingStatus::Serving).await;
    app.interactions()
        .await
        .record_interaction(one(interaction("after", "ana")))
        .await
        .expect("writes work again");
}

/// Reads are limited to 64 KiB per request (writes to 8 MiB, see ingest.rs):
/// a larger one is refused before anything reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_read_request_is_out_of_range() {
    let db = fresh_database(Backend::Sqlite, "oversized_read")
        .await
        .unwrap();
    let app = start(db, &[]).await;
    app.wait_serving().await;
    let status = app
        .timelines()
        .await
        .get_timeline(pb::GetTimelineRequest {
            community_id: "acme".into(),
            member_id: "m".into(),
            page_token: "t".repeat(100 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}
