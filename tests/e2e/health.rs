//! Health follows the database: NOT_SERVING until it answers.

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
