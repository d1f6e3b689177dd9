//! What the store's test files share: a fresh database per test on each
//! backend, and a valid interaction.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;

use rapport_domain::{Identity, Interaction, InteractionKind, Timestamp};
use rapport_store::{Store, StoreOptions};
use rapport_testkit::TestDatabase;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, migrated database; `None` when PostgreSQL is skipped.
pub async fn fresh(backend: Backend, test: &str) -> Option<(TestDatabase, Store)> {
    let db = match backend {
        Backend::Sqlite => TestDatabase::sqlite(),
        Backend::Postgres => TestDatabase::postgres(test).await?,
    };
    let store = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    Some((db, store))
}

pub fn interaction(community: &str, id: &str, handle: &str) -> Interaction {
    Interaction {
        community_id: community.into(),
        interaction_id: id.into(),
        channel: "forum".into(),
        kind: InteractionKind::Reply,
        source_type: "discourse.post".into(),
        actor: Identity {
            channel: "forum".into(),
            handle: handle.into(),
        },
        occurred_at: Timestamp::from_micros(1_750_000_000_000_000),
        target: None,
        incentivized: false,
        sentiment: Some(0.5),
        campaign_id: String::new(),
        url: format!("https://forum.example/p/{id}"),
        excerpt: "thanks, that fixed it".into(),
        actor_display_name: handle.to_uppercase(),
        attributes: BTreeMap::from([("thread".to_owned(), "42".to_owned())]),
    }
}

pub const T0: Timestamp = Timestamp::from_micros(1_760_000_000_000_000);

/// Runs each test on both backends, as separately named tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name($crate::common::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name($crate::common::Backend::Postgres).await })*
        }
    };
}
