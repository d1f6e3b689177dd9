//! Personal data at rest: what the server wrote to disk holds none of it in
//! plaintext; PostgreSQL refuses to start without a master key.

use rapport_proto::v1 as pb;

use crate::app::{Backend, spawn_app};
use crate::ingest::{interaction, one};
use crate::on_both_backends;

on_both_backends!(no_personal_string_is_stored_in_plaintext);

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

fn found_in(haystack: &[u8]) -> Vec<&'static str> {
    SECRETS
        .into_iter()
        .filter(|s| {
            let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
            [s.as_bytes(), hex.as_bytes()]
                .iter()
                .any(|needle| haystack.windows(needle.len()).any(|w| w == *needle))
        })
        .collect()
}

async fn no_personal_string_is_stored_in_plaintext(backend: Backend) {
    let Some(app) = spawn_app(backend, "personal_at_rest").await else {
        return;
    };
    let mut secret = interaction(NOT_PERSONAL, SECRETS[0]);
    secret.excerpt = SECRETS[1].into();
    secret.actor_display_name = SECRETS[2].into();
    secret.url = format!("https://{}/p/1", SECRETS[3]);
    let recorded = app
        .interactions()
        .await
        .record_interaction(one(secret))
        .await
        .unwrap()
        .into_inner();
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
                assert_eq!(found_in(&bytes), Vec::<&str>::new(), "{}", path.display());
                id_seen |= contains(&bytes, NOT_PERSONAL);
                files += 1;
            }
            assert!(files >= 2, "the log and the read models");
            assert!(
                id_seen,
                "the scan reads what was stored: the interaction id is there"
            );
            drop(db);
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
                        Vec::<&str>::new(),
                        "{table}: {row}"
                    );
                    id_seen |= contains(row.as_bytes(), NOT_PERSONAL);
                }
            }
            assert!(
                id_seen,
                "the scan reads what was stored: the interaction id is there"
            );
        }
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
