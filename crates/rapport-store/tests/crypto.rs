//! Personal data at rest: sealed with its member's key, unreadable once the
//! key is gone (what erasure will do), on both backends.

mod common;

use common::{Backend, T0, fresh, interaction};
use rapport_domain::EventBody;
use rapport_store::{DbPool, EventQuery, Store};

on_both_backends!(personal_parts_are_sealed_per_member_and_unreadable_without_its_key);

async fn raw_personal_parts(store: &Store) -> Vec<(String, Vec<u8>)> {
    let sql = "SELECT member_id, personal FROM events WHERE personal IS NOT NULL";
    match store.pool() {
        DbPool::Sqlite(p) => sqlx::query_as(sql).fetch_all(&p).await.unwrap(),
        DbPool::Postgres(p) => sqlx::query_as(sql).fetch_all(&p).await.unwrap(),
    }
}

async fn shred(store: &Store, member_id: &str) {
    let sql = "DELETE FROM member_keys WHERE owner = $1";
    match store.pool() {
        DbPool::Sqlite(p) => {
            sqlx::query(sql).bind(member_id).execute(&p).await.unwrap();
        }
        DbPool::Postgres(p) => {
            sqlx::query(sql).bind(member_id).execute(&p).await.unwrap();
        }
    }
}

/// (excerpt, display name, handle) of every interaction in the log.
async fn personal_fields(store: &Store) -> Vec<(String, String, String)> {
    let page = store
        .read_events(&EventQuery {
            limit: 100,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    page.events
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::InteractionRecorded { interaction, .. } => Some((
                interaction.excerpt,
                interaction.actor_display_name,
                interaction.actor.handle,
            )),
            _ => None,
        })
        .collect()
}

async fn personal_parts_are_sealed_per_member_and_unreadable_without_its_key(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "crypto_sealed").await else {
        return;
    };
    let mut ana = interaction("acme", "i-1", "ana-handle");
    ana.excerpt = "ana-secret-excerpt".into();
    let mut bob = interaction("acme", "i-2", "bob-handle");
    bob.excerpt = "bob-secret-excerpt".into();
    let outcomes = store
        .append_batch(vec![vec![ana], vec![bob]], T0)
        .await
        .unwrap();
    let ana_id = outcomes[0].as_ref().unwrap()[0].member_id.clone();

    // At rest: every personal part sealed, none of the plaintext.
    let raw = raw_personal_parts(&store).await;
    assert_eq!(raw.len(), 4, "two identities linked, two interactions");
    for (member, personal) in &raw {
        assert_eq!(personal[0], rapport_store::crypto::SEALED, "{member}");
        for secret in [
            &b"secret-excerpt"[..],
            b"ANA-HANDLE",
            b"ana-handle",
            b"forum.example",
        ] {
            assert!(
                !personal.windows(secret.len()).any(|w| w == secret),
                "plaintext in a personal part of {member}"
            );
        }
    }

    // Read: opened with each member's key.
    let mut fields = personal_fields(&store).await;
    fields.sort();
    assert_eq!(
        fields,
        [
            (
                "ana-secret-excerpt".into(),
                "ANA-HANDLE".into(),
                "ana-handle".into()
            ),
            (
                "bob-secret-excerpt".into(),
                "BOB-HANDLE".into(),
                "bob-handle".into()
            ),
        ]
    );

    // Without ana's key, her personal data is gone from every read; bob's
    // is untouched; the non-personal facts stay.
    shred(&store, &ana_id).await;
    let mut fields = personal_fields(&store).await;
    fields.sort();
    assert_eq!(
        fields,
        [
            (String::new(), String::new(), String::new()),
            (
                "bob-secret-excerpt".into(),
                "BOB-HANDLE".into(),
                "bob-handle".into()
            ),
        ]
    );
    let profile = store.member_profile(&ana_id).await.unwrap();
    assert!(profile.display_name.is_empty());
    assert!(profile.identities.iter().all(|i| i.handle.is_empty()));
    let at = store.events_at(&[1, 2, 3, 4]).await.unwrap();
    assert_eq!(at.len(), 4, "the events themselves stay");
}
