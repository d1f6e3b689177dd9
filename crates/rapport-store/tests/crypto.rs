//! Personal data at rest: sealed with its member's key, unreadable once the
//! key is gone (what erasure will do), on both backends.

mod common;

use common::{Backend, T0, fresh, interaction};
use rapport_domain::EventBody;
use rapport_store::{DbPool, EventQuery, Store, StoreOptions};

on_both_backends!(
    personal_parts_are_sealed_per_member_and_unreadable_without_its_key,
    identity_lookups_are_keyed_hashes_and_old_ones_are_keyed_at_migrate,
    parts_written_before_encryption_are_sealed_once_at_start,
);

async fn execute(store: &Store, sql: &'static str, binds: &[&str]) {
    match store.pool() {
        DbPool::Sqlite(p) => {
            let mut q = sqlx::query(sql);
            for b in binds {
                q = q.bind(*b);
            }
            q.execute(&p).await.unwrap();
        }
        DbPool::Postgres(p) => {
            let mut q = sqlx::query(sql);
            for b in binds {
                q = q.bind(*b);
            }
            q.execute(&p).await.unwrap();
        }
    }
}

async fn lookups(store: &Store) -> Vec<String> {
    let sql = "SELECT handle_key FROM identities ORDER BY handle_key";
    match store.pool() {
        DbPool::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(&p).await.unwrap(),
        DbPool::Postgres(p) => sqlx::query_scalar(sql).fetch_all(&p).await.unwrap(),
    }
}

async fn identity_lookups_are_keyed_hashes_and_old_ones_are_keyed_at_migrate(backend: Backend) {
    let Some((db, store)) = fresh(backend, "crypto_lookups").await else {
        return;
    };
    let outcomes = store
        .append_batch(vec![vec![interaction("acme", "i-1", "Ana-Handle")]], T0)
        .await
        .unwrap();
    let ana = outcomes[0].as_ref().unwrap()[0].member_id.clone();
    let stored = lookups(&store).await;
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].starts_with("h1:") && !stored[0].contains("ana"),
        "{stored:?}"
    );
    let forum = |handle: &str| rapport_domain::Identity {
        channel: "forum".into(),
        handle: handle.into(),
    };
    assert_eq!(
        store
            .find_member("acme", &forum("ana-handle"))
            .await
            .unwrap(),
        Some(ana)
    );

    // A lookup from before they were keyed: the plain normalized handle.
    let old = store
        .append_batch(vec![vec![interaction("acme", "i-2", "Old-Handle")]], T0)
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap()[0]
        .member_id
        .clone();
    execute(
        &store,
        "UPDATE identities SET handle_key = $1 WHERE member_id = $2",
        &["old-handle", &old],
    )
    .await;
    // Another process (no writer cache) keys it at start, then resolves it.
    let restarted = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .unwrap();
    restarted.migrate().await.unwrap();
    let stored = lookups(&restarted).await;
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|k| k.starts_with("h1:")), "{stored:?}");
    assert_eq!(
        restarted
            .find_member("acme", &forum("OLD-handle"))
            .await
            .unwrap(),
        Some(old.clone())
    );
    let again = restarted
        .append_batch(vec![vec![interaction("acme", "i-3", "old-handle")]], T0)
        .await
        .unwrap();
    assert_eq!(
        again[0].as_ref().unwrap()[0].member_id,
        old,
        "not a new member"
    );
}

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

/// A database from before encryption: its personal parts in plaintext (made
/// here by opening sealed ones and writing them back, and by erasing a
/// member the way the old version could not). The next start seals them
/// with their members' keys, drops the erased member's, reads the same,
/// and does it once.
async fn parts_written_before_encryption_are_sealed_once_at_start(backend: Backend) {
    let Some((db, store)) = fresh(backend, "crypto_legacy").await else {
        return;
    };
    let mut ana = interaction("acme", "i-1", "ana-legacy");
    ana.excerpt = "ana-legacy-excerpt".into();
    let mut bob = interaction("acme", "i-2", "bob-legacy");
    bob.excerpt = "bob-legacy-excerpt".into();
    let outcomes = store
        .append_batch(vec![vec![ana], vec![bob]], T0)
        .await
        .unwrap();
    let ana_id = outcomes[0].as_ref().unwrap()[0].member_id.clone();
    let bob_id = outcomes[1].as_ref().unwrap()[0].member_id.clone();
    let before = personal_fields(&store).await;
    let master = rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap();
    let keyring = rapport_store::Keyring::new(master.clone());

    // Back to plaintext, as the version before encryption wrote it.
    let sql = "SELECT e.position, e.member_id, e.personal, k.wrapped FROM events e \
               JOIN member_keys k ON k.owner = e.member_id WHERE e.personal IS NOT NULL";
    let rows: Vec<(i64, String, Vec<u8>, Vec<u8>)> = match store.pool() {
        DbPool::Sqlite(p) => sqlx::query_as(sql).fetch_all(&p).await.unwrap(),
        DbPool::Postgres(p) => sqlx::query_as(sql).fetch_all(&p).await.unwrap(),
    };
    assert_eq!(rows.len(), 4);
    for (position, member, personal, wrapped) in rows {
        let plain = keyring
            .open_personal(Some(personal), Some(&wrapped), &member)
            .unwrap()
            .unwrap();
        let sql = "UPDATE events SET personal = $1 WHERE position = $2";
        match store.pool() {
            DbPool::Sqlite(p) => {
                sqlx::query(sql)
                    .bind(plain)
                    .bind(position)
                    .execute(&p)
                    .await
                    .unwrap();
            }
            DbPool::Postgres(p) => {
                sqlx::query(sql)
                    .bind(plain)
                    .bind(position)
                    .execute(&p)
                    .await
                    .unwrap();
            }
        }
    }
    // Bob was erased by a version that only deleted keys; nobody had one.
    execute(&store, "DELETE FROM member_keys", &[]).await;
    execute(&store, "DELETE FROM store_tasks", &[]).await;
    match store.pool() {
        DbPool::Sqlite(p) => {
            sqlx::query("UPDATE members SET erased = 1 WHERE member_id = $1")
                .bind(&bob_id)
                .execute(&p)
                .await
                .unwrap();
        }
        DbPool::Postgres(p) => {
            sqlx::query("UPDATE members SET erased = true WHERE member_id = $1")
                .bind(&bob_id)
                .execute(&p)
                .await
                .unwrap();
        }
    }
    let plaintext = raw_personal_parts(&store).await;
    assert!(
        plaintext
            .iter()
            .any(|(_, p)| p.windows(10).any(|w| w == b"ana-legacy")),
        "the setup wrote plaintext"
    );
    drop(store);

    let restart = || async {
        let store = Store::connect(&StoreOptions::new(&db.url).with_master_key(master.clone()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    };
    let store = restart().await;
    let raw = raw_personal_parts(&store).await;
    assert_eq!(raw.len(), 2, "ana's two parts; bob's dropped");
    for (member, personal) in &raw {
        assert_eq!(member, &ana_id);
        assert_eq!(personal[0], rapport_store::crypto::SEALED);
        assert!(!personal.windows(10).any(|w| w == b"ana-legacy"));
    }
    let mut after = personal_fields(&store).await;
    after.sort();
    let mut expected: Vec<_> = before
        .into_iter()
        .map(|f| {
            if f.0.starts_with("bob") {
                Default::default()
            } else {
                f
            }
        })
        .collect();
    expected.sort();
    assert_eq!(after, expected, "ana reads as before; bob is erased");
    if let DbPool::Sqlite(_) = store.pool() {
        let path = db.url.trim_start_matches("sqlite:").to_owned();
        drop(store);
        for file in [path.clone(), format!("{path}-wal")] {
            let bytes = std::fs::read(&file).unwrap_or_default();
            for secret in [&b"ana-legacy"[..], b"bob-legacy"] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret),
                    "plaintext left in {file}"
                );
            }
        }
    } else {
        drop(store);
    }

    // Once: marked done, so later starts do not scan the log again.
    let store = restart().await;
    let sql = "SELECT task FROM store_tasks";
    let tasks: Vec<String> = match store.pool() {
        DbPool::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(&p).await.unwrap(),
        DbPool::Postgres(p) => sqlx::query_scalar(sql).fetch_all(&p).await.unwrap(),
    };
    assert_eq!(tasks, ["seal-legacy-personal"]);
}
