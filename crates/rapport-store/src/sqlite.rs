//! The embedded default: one SQLite file in WAL mode.
//!
//! Durability: `synchronous=FULL`, so a commit is on disk before the writer
//! acknowledges it. Ordering: one writer connection, and every append runs in
//! `BEGIN IMMEDIATE`, so appends are serialized even if a second process opens
//! the same file by mistake.

use std::time::Duration;

use rapport_domain::{Interaction, Timestamp};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use crate::{AppendOutcome, EventPage, EventQuery, StoreError, StoreOptions, sql};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// A single connection: SQLite has one writer at a time anyway, and
    /// queueing here is cheaper than `SQLITE_BUSY` retries.
    writer: SqlitePool,
    /// Readers see committed snapshots concurrently with the writer (WAL).
    readers: SqlitePool,
}

impl SqliteStore {
    pub(crate) async fn connect(path: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // The default page cache (2 MiB) makes every index insert of a
            // batch a read from disk once the log outgrows it.
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            // Checkpoint every ~40 MiB of WAL instead of every 4 MiB: the
            // checkpoint runs inside the committing write and fsyncs the
            // database file, so fewer, larger ones keep commits short.
            .pragma("wal_autocheckpoint", "10000");
        // No ping before each use: a local file does not go stale, and the
        // ping would be one more round trip to the SQLite thread per batch.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        Ok(SqliteStore { writer, readers })
    }

    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    pub(crate) async fn head(&self) -> Result<u64, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&self.readers)
            .await?;
        crate::from_db(head)
    }

    pub(crate) async fn append_batch(
        &self,
        requests: &[Vec<Interaction>],
        recorded_at: Timestamp,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcomes = sql::append_in_transaction::<Sqlite>(
            sql::Dialect::Sqlite,
            &mut tx,
            requests,
            recorded_at,
        )
        .await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    pub(crate) async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        // One transaction, so the head and the events come from one snapshot.
        let mut tx = self.readers.begin().await?;
        let page = sql::read_events::<Sqlite>(&mut tx, query).await?;
        tx.commit().await?;
        Ok(page)
    }

    pub(crate) async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }
}
