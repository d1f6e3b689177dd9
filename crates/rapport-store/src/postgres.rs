//! PostgreSQL, for production: several replicas may write to one database.
//!
//! Ordering: every append transaction first takes the log's transaction-scoped
//! advisory lock, then reads the head and assigns positions after it. Writers
//! are thus serialized, insert order is commit order, and a rolled-back batch
//! consumes no position. PostgreSQL makes a commit visible before it releases
//! the transaction's locks, so the next writer always sees the previous
//! batch's head. The cost is one writer at a time per database, which group
//! commit amortizes over whole batches.

use rapport_domain::{Interaction, Timestamp};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use crate::{AppendOutcome, EventPage, EventQuery, StoreError, StoreOptions, sql};

/// The advisory lock key of the log: the bytes of "rapport\0" as a BIGINT.
const LOG_LOCK_KEY: i64 = 0x7261_7070_6f72_7400;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub(crate) async fn connect(options: &StoreOptions) -> Result<Self, StoreError> {
        // No ping before each use: it would add a round trip to every batch.
        // A connection that broke fails its batch with UNAVAILABLE (callers
        // retry, idempotently) and is dropped from the pool.
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect(&options.url)
            .await?;
        Ok(PgStore { pool })
    }

    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx takes its own advisory lock, so replicas starting together
        // apply each migration once.
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn head(&self) -> Result<u64, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        crate::from_db(head)
    }

    pub(crate) async fn append_batch(
        &self,
        requests: &[Vec<Interaction>],
        recorded_at: Timestamp,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOG_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        let outcomes = sql::append_in_transaction::<Postgres>(
            sql::Dialect::Postgres,
            &mut tx,
            requests,
            recorded_at,
        )
        .await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    pub(crate) async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        // REPEATABLE READ: the head and the page come from one snapshot.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let page = sql::read_events::<Postgres>(&mut tx, query).await?;
        tx.commit().await?;
        Ok(page)
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}
