//! Health follows the database: NOT_SERVING until it answers.

use sqlx::Connection;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use crate::app::start_on;
use crate::ingest::{interaction, one};

#[tokio::test]
async fn without_a_database_health_is_not_serving_and_writes_are_unavailable() {
    // Nothing listens on port 1: the server keeps retrying in the background.
    let app = start_on("postgres://postgres@127.0.0.1:1/nowhere", None, &[]);
    assert_eq!(app.health("").await, ServingStatus::NotServing);
    assert_eq!(
        app.health("rapport.v1.InteractionService").await,
        ServingStatus::NotServing
    );
    // Alive all the same: the liveness probe must not restart it.
    assert_eq!(app.health("liveness").await, ServingStatus::Serving);
    let status = app
        .interactions()
        .await
        .record_interaction(one(interaction("x", "ana")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "DATABASE_NOT_READY"
    );
    // Validation does not need the database: bad input is still INVALID_ARGUMENT.
    let mut bad = interaction("x", "ana");
    bad.channel.clear();
    let status = app
        .interactions()
        .await
        .record_interaction(one(bad))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let (clean_exit, _) = app.terminate_without_database().await;
    assert!(
        clean_exit,
        "a server that never reached its database still stops cleanly"
    );
}

/// PostgreSQL drops every connection of the server (a restart, a failover):
/// calls answer UNAVAILABLE or succeed, never anything else, and the server
/// recovers without a restart of its own.
#[tokio::test]
async fn lost_database_connections_are_unavailable_then_recover() {
    let Some(app) = crate::app::spawn_app(crate::app::Backend::Postgres, "lost_connections").await
    else {
        return;
    };
    let mut client = app.interactions().await;
    client
        .record_interaction(one(interaction("before", "ana")))
        .await
        .unwrap();

    let database = app.database_url().rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(&rapport_testkit::postgres_admin_url())
        .await
        .unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(&database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "the server had connections to drop");

    let mut recovered = false;
    for n in 0..20 {
        match client
            .record_interaction(one(interaction(&format!("after-{n}"), "ana")))
            .await
        {
            Ok(_) => {
                eprintln!("recovered after {n} failed attempts");
                recovered = true;
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "writes succeed again once connections are re-established"
    );
}
