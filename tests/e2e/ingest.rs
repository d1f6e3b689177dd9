//! Recording interactions: results, idempotency, and all-or-nothing validation.

use rapport_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::app::{Backend, spawn_app};
use crate::on_both_backends;

/// A valid interaction by `handle` on the forum. The same arguments always
/// give the same payload, so a second call is a retry.
pub fn interaction(id: &str, handle: &str) -> pb::Interaction {
    pb::Interaction {
        community_id: "acme".into(),
        interaction_id: id.into(),
        channel: "forum".into(),
        kind: pb::InteractionKind::Answer as i32,
        actor: Some(pb::Identity {
            channel: String::new(),
            handle: handle.into(),
        }),
        // 2026-01-01T00:00:00Z
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 0,
        }),
        excerpt: "have you tried turning it off and on again".into(),
        ..Default::default()
    }
}

pub fn one(interaction: pb::Interaction) -> pb::RecordInteractionRequest {
    pb::RecordInteractionRequest {
        interaction: Some(interaction),
    }
}

/// The field paths of a status's BadRequest violations.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

on_both_backends!(
    a_first_interaction_registers_its_member,
    a_retry_is_a_duplicate_and_a_changed_payload_already_exists,
    one_bad_item_rejects_the_whole_batch_and_writes_nothing,
    batches_are_limited_to_a_thousand_items,
    a_batch_reports_duplicates_per_item,
);

async fn a_first_interaction_registers_its_member(backend: Backend) {
    let Some(app) = spawn_app(backend, "first_interaction").await else {
        return;
    };
    let mut client = app.interactions().await;
    let first = client
        .record_interaction(one(interaction("q-1", "ana")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.position, 3,
        "registered, linked, then the interaction"
    );
    assert!(!first.duplicate);
    let again = client
        .record_interaction(one(interaction("q-2", "ANA")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.member_id, first.member_id,
        "handles match case-insensitively"
    );
    assert_eq!(again.position, 4);
}

async fn a_retry_is_a_duplicate_and_a_changed_payload_already_exists(backend: Backend) {
    let Some(app) = spawn_app(backend, "retry").await else {
        return;
    };
    let mut client = app.interactions().await;
    let original = client
        .record_interaction(one(interaction("q-1", "ana")))
        .await
        .unwrap()
        .into_inner();
    let retry = client
        .record_interaction(one(interaction("q-1", "ana")))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.member_id, retry.position),
        (original.member_id, original.position)
    );

    let mut changed = interaction("q-1", "ana");
    changed.kind = pb::InteractionKind::Reaction as i32;
    let status = client.record_interaction(one(changed)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "INTERACTION_ID_CONFLICT");
    assert_eq!(info.metadata["interaction_id"], "q-1");
}

async fn one_bad_item_rejects_the_whole_batch_and_writes_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend, "bad_batch").await else {
        return;
    };
    let mut client = app.interactions().await;
    let mut items: Vec<_> = (0..5)
        .map(|n| interaction(&format!("b-{n}"), &format!("user{n}")))
        .collect();
    items[3].kind = pb::InteractionKind::Unspecified as i32;
    items[4].occurred_at = Some(prost_types::Timestamp {
        seconds: 100,
        nanos: 0,
    });
    let status = client
        .record_interactions(pb::RecordInteractionsRequest {
            interactions: items,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["interactions[3].kind", "interactions[4].occurred_at"]
    );

    let head = app
        .event_log()
        .await
        .read_events(pb::ReadEventsRequest::default())
        .await
        .unwrap();
    assert_eq!(head.into_inner().head_position, 0, "nothing was written");

    // Nothing is required twice: a missing interaction is a violation too.
    let status = client
        .record_interaction(pb::RecordInteractionRequest { interaction: None })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["interaction"]);
}

async fn batches_are_limited_to_a_thousand_items(backend: Backend) {
    let Some(app) = spawn_app(backend, "batch_limit").await else {
        return;
    };
    let mut client = app.interactions().await;
    let items: Vec<_> = (0..1001)
        .map(|n| interaction(&format!("b-{n}"), &format!("user{}", n % 50)))
        .collect();
    let status = client
        .record_interactions(pb::RecordInteractionsRequest {
            interactions: items[..1001].to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["interactions"]);
    let ok = client
        .record_interactions(pb::RecordInteractionsRequest {
            interactions: items[..1000].to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results.len(), 1000);
    let positions: Vec<u64> = ok.results.iter().map(|r| r.position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "results come in request order"
    );
}

async fn a_batch_reports_duplicates_per_item(backend: Backend) {
    let Some(app) = spawn_app(backend, "batch_duplicates").await else {
        return;
    };
    let mut client = app.interactions().await;
    client
        .record_interaction(one(interaction("b-1", "ana")))
        .await
        .unwrap();
    let results = client
        .record_interactions(pb::RecordInteractionsRequest {
            interactions: vec![
                interaction("b-0", "bob"),
                interaction("b-1", "ana"),
                interaction("b-2", "bob"),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let duplicates: Vec<bool> = results.iter().map(|r| r.duplicate).collect();
    assert_eq!(duplicates, [false, true, false]);
    assert_eq!(results[0].member_id, results[2].member_id);
}

#[tokio::test]
async fn an_oversized_request_is_refused_whole() {
    let Some(app) = spawn_app(Backend::Sqlite, "oversized").await else {
        return;
    };
    let mut client = app.interactions().await;
    // 1,000 items of 9 KiB each: over the 8 MiB request limit.
    let items: Vec<_> = (0..1000)
        .map(|n| {
            let mut item = interaction(&format!("big-{n}"), "ana");
            item.excerpt = "x".repeat(4_096);
            item.url = "u".repeat(2_048);
            item.actor_display_name = "n".repeat(256);
            item.attributes = (0..3).map(|k| (format!("k{k}"), "v".repeat(900))).collect();
            item
        })
        .collect();
    let status = client
        .record_interactions(pb::RecordInteractionsRequest {
            interactions: items,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let head = app
        .event_log()
        .await
        .read_events(pb::ReadEventsRequest::default())
        .await
        .unwrap();
    assert_eq!(head.into_inner().head_position, 0, "nothing was written");
}
