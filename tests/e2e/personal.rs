//! Personal data at rest: what the server wrote to disk holds none of it in
//! plaintext; PostgreSQL refuses to start without a master key.

use rapport_proto::v1 as pb;

use crate::app::{Backend, spawn_app};
use crate::ingest::{interaction, one, violated_fields};
use crate::on_both_backends;

on_both_backends!(
    no_personal_string_is_stored_in_plaintext,
    an_erased_member_stays_erased_and_nothing_can_read_its_personal_data,
);

/// Personal strings that appear nowhere else: a handle (lowercase, as the
/// identity lookup normalizes it), an excerpt, a display name, a url.
const SECRETS: [&str; 4] = [
    "zq-secret-handle-9",
    "zq-secret-excerpt-7",
    "zq-secret-display-name",
    "zq-secret.example",
];

/// The interaction's id: not personal, stored as it is; finding it shows
/// the scan reads what was stored.
const NOT_PERSONAL: &str = "zq-interaction-1";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Records an interaction carrying every one of [`SECRETS`].
async fn record_secret(app: &crate::app::TestApp) -> pb::RecordInteractionResponse {
    let mut secret = interaction(NOT_PERSONAL, SECRETS[0]);
    secret.excerpt = SECRETS[1].into();
    secret.actor_display_name = SECRETS[2].into();
    secret.url = format!("https://{}/p/1", SECRETS[3]);
    app.interactions()
        .await
        .record_interaction(one(secret))
        .await
        .unwrap()
        .into_inner()
}

async fn no_personal_string_is_stored_in_plaintext(backend: Backend) {
    let Some(app) = spawn_app(backend, "personal_at_rest").await else {
        return;
    };
    let recorded = record_secret(&app).await;
    // Readable through the API (so the test would see it written), and the
    // read models have applied it.
    let timeline = app
        .timelines()
        .await
        .get_timeline(pb::GetTimelineRequest {
            community_id: "acme".into(),
            member_id: recorded.member_id.clone(),
            min_position: recorded.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(timeline.entries.iter().any(|e| e.excerpt == SECRETS[1]));

    let (_, db) = scan_for(app, backend, &SECRETS.map(str::as_bytes)).await;
    drop(db);
}

/// Stops the app and scans what its database stored (every SQLite file;
/// every PostgreSQL row as text) for `needles` (also hex-encoded), failing
/// on any; checks the scan sees the data by finding [`NOT_PERSONAL`].
async fn scan_for(
    app: crate::app::TestApp,
    backend: Backend,
    needles: &[&[u8]],
) -> (bool, rapport_testkit::TestDatabase) {
    let found_in = |haystack: &[u8]| -> Vec<String> {
        needles
            .iter()
            .filter(|n| {
                let hex: String = n.iter().map(|b| format!("{b:02x}")).collect();
                [n.to_vec(), hex.into_bytes()]
                    .iter()
                    .any(|needle| haystack.windows(needle.len()).any(|w| w == &needle[..]))
            })
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    };
    match backend {
        Backend::Sqlite => {
            let url = app.database_url().to_owned();
            // Every file of the database, its WAL and the read models'.
            let (clean, db) = app.terminate().await;
            assert!(clean);
            let dir = std::path::Path::new(url.trim_start_matches("sqlite:"))
                .parent()
                .unwrap()
                .to_owned();
            let mut files = 0;
            let mut id_seen = false;
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(found_in(&bytes), Vec::<String>::new(), "{}", path.display());
                id_seen |= contains(&bytes, NOT_PERSONAL);
                files += 1;
            }
            assert!(files >= 2, "the log and the read models");
            assert!(
                id_seen,
                "the scan reads what was stored: the interaction id is there"
            );
            (clean, db)
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(app.database_url())
                .await
                .unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            assert!(tables.iter().any(|t| t == "events"), "{tables:?}");
            let mut id_seen = false;
            for table in tables {
                // Every row as text (bytea as hex): the table's name is the
                // catalog's, not input.
                let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT CAST(t AS text) FROM \"{table}\" t"
                )))
                .fetch_all(&mut conn)
                .await
                .unwrap();
                for row in rows {
                    assert_eq!(
                        found_in(row.as_bytes()),
                        Vec::<String>::new(),
                        "{table}: {row}"
                    );
                    id_seen |= contains(row.as_bytes(), NOT_PERSONAL);
                }
            }
            assert!(
                id_seen,
                "the scan reads what was stored: the interaction id is there"
            );
            drop(conn);
            app.terminate().await
        }
    }
}

async fn an_erased_member_stays_erased_and_nothing_can_read_its_personal_data(backend: Backend) {
    let Some(app) = spawn_app(backend, "erasure").await else {
        return;
    };
    let members =
        || async { pb::member_service_client::MemberServiceClient::new(app.channel().await) };
    let zoe = record_secret(&app).await.member_id;
    // Bob answers her: her handle sits in his event, under his key.
    let mut reply = interaction("bob-reply-1", "bob-the-replier");
    reply.target = Some(pb::Target {
        target: Some(pb::target::Target::Member(pb::Identity {
            channel: "forum".into(),
            handle: SECRETS[0].into(),
        })),
    });
    let bob_reply = app
        .interactions()
        .await
        .record_interaction(one(reply))
        .await
        .unwrap()
        .into_inner()
        .position;
    members()
        .await
        .link_identity(pb::LinkIdentityRequest {
            community_id: "acme".into(),
            member_id: zoe.clone(),
            email: "zq-secret-mail@example.org".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Her wrapped data key, as stored: after erasure it must be nowhere.
    let wrapped = wrapped_key(&app, &zoe).await.expect("a data key");

    let erase = |reason: &str| {
        let request = pb::EraseMemberRequest {
            community_id: "acme".into(),
            member_id: zoe.clone(),
            reason: reason.into(),
            ..Default::default()
        };
        async { members().await.erase_member(request).await }
    };
    let erased = erase("GDPR request 7").await.unwrap().into_inner();
    assert!(!erased.already_erased);
    assert!(
        erase("GDPR request 7")
            .await
            .unwrap()
            .into_inner()
            .already_erased
    );
    assert_eq!(
        violated_fields(&erase(" ").await.unwrap_err()),
        ["reason"],
        "a reason is required"
    );

    // Shown as an erased member; her history stays, without personal data.
    let member = members()
        .await
        .get_member(pb::GetMemberRequest {
            community_id: "acme".into(),
            member_id: zoe.clone(),
            min_position: erased.position,
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert!(member.erased);
    assert_eq!(member.display_name, "erased member");
    assert!(member.identities.is_empty());
    assert_eq!(member.interactions, 1, "counts stay");
    let timeline = app
        .timelines()
        .await
        .get_timeline(pb::GetTimelineRequest {
            community_id: "acme".into(),
            member_id: zoe.clone(),
            min_position: erased.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        timeline.entries[0].r#type,
        pb::EventType::MemberErased as i32
    );
    let interaction = timeline
        .entries
        .iter()
        .find(|e| e.interaction_id == NOT_PERSONAL)
        .expect("the interaction stays");
    assert_eq!(interaction.kind, pb::InteractionKind::Answer as i32);
    assert!(interaction.excerpt.is_empty() && interaction.url.is_empty());
    assert_eq!(
        interaction.actor.as_ref().map(|a| a.handle.as_str()),
        Some("")
    );
    // Bob's answer to her, in her timeline: aimed at her member id,
    // without her handle (read with the entries' events, on SQLite in the
    // same read transaction).
    let reply = timeline
        .entries
        .iter()
        .find(|e| e.position == bob_reply)
        .expect("bob's answer in her timeline");
    assert_eq!(reply.target_member_id, zoe);
    assert_eq!(
        reply.target.clone().and_then(|t| t.target),
        Some(pb::target::Target::Member(pb::Identity {
            channel: "forum".into(),
            handle: String::new(),
        }))
    );

    // Bob's answer stays his, aimed at her member id, without her handle.
    let events = app
        .event_log()
        .await
        .read_events(pb::ReadEventsRequest {
            community_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let answer = events
        .iter()
        .find(|e| e.position == bob_reply)
        .and_then(|e| match &e.payload {
            Some(pb::event::Payload::InteractionRecorded(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("bob's answer");
    assert_eq!(answer.target_member_id, zoe);
    let target = answer.interaction.unwrap().target.unwrap().target.unwrap();
    assert_eq!(
        target,
        pb::target::Target::Member(pb::Identity {
            channel: "forum".into(),
            handle: String::new(),
        })
    );

    // Her handle seen again is somebody new; she stays erased.
    let mut again = interaction_of(SECRETS[0]);
    again.interaction_id = "after-erasure".into();
    let newcomer = app
        .interactions()
        .await
        .record_interaction(one(again))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(newcomer.member_id, zoe);
    let status = members()
        .await
        .set_member_role(pb::SetMemberRoleRequest {
            community_id: "acme".into(),
            member_id: zoe.clone(),
            role: pb::MemberRole::Staff as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);

    // On disk: none of her strings, and not her wrapped key either.
    let mut needles: Vec<&[u8]> = SECRETS.iter().map(|s| s.as_bytes()).collect();
    needles.push(b"zq-secret-mail");
    needles.push(&wrapped);
    scan_for(app, backend, &needles).await;
}

fn interaction_of(handle: &str) -> pb::Interaction {
    interaction("unused", handle)
}

/// A member's wrapped data key, read from the database directly.
async fn wrapped_key(app: &crate::app::TestApp, member_id: &str) -> Option<Vec<u8>> {
    let url = app.database_url();
    let sql = "SELECT wrapped FROM member_keys WHERE owner = $1";
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let key = sqlx::query_scalar(sql)
            .bind(member_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
        pool.close().await;
        key
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let key = sqlx::query_scalar(sql)
            .bind(member_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
        pool.close().await;
        key
    }
}

#[tokio::test]
async fn postgresql_without_a_master_key_refuses_to_start_and_says_why() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rapport-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/nowhere",
        ])
        .env_remove("RAPPORT_MASTER_KEY")
        .env_remove("RAPPORT_MASTER_KEY_FILE")
        .output()
        .await
        .expect("run rapport-server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PostgreSQL needs a master key"), "{stderr}");
}
