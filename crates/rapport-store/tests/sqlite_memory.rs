//! The SQLite heap limit (`StoreOptions::sqlite_heap_limit`) is process-wide,
//! so this file holds the one test that sets it: the other test binaries
//! run in processes of their own.

use rapport_store::{MasterKey, Store, StoreOptions};
use rapport_testkit::{TEST_MASTER_KEY, TestDatabase};

/// What SQLite reports as the process's soft heap limit, from a connection
/// of its own: the limit covers every connection, not the store's alone.
fn soft_heap_limit() -> i64 {
    rusqlite::Connection::open_in_memory()
        .unwrap()
        .query_row("PRAGMA soft_heap_limit", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test]
async fn opening_a_sqlite_store_bounds_all_of_sqlites_memory() {
    let db = TestDatabase::sqlite();
    let mut options = StoreOptions::new(&db.url)
        .with_master_key(MasterKey::from_base64(TEST_MASTER_KEY).unwrap());
    assert_eq!(
        options.sqlite_heap_limit,
        rapport_store::DEFAULT_SQLITE_HEAP_LIMIT
    );

    options.sqlite_heap_limit = 48 << 20;
    let store = Store::connect(&options).await.expect("connect");
    assert_eq!(soft_heap_limit(), 48 << 20);
    store.close().await;

    // 0 lifts it.
    options.sqlite_heap_limit = 0;
    let store = Store::connect(&options).await.expect("connect");
    assert_eq!(soft_heap_limit(), 0);
    store.close().await;
}
