//! PostgreSQL, for production: several replicas may write to one database.
//!
//! Ordering: every append transaction first takes the log's transaction-scoped
//! advisory lock, then reads the head and assigns positions after it. Writers
//! are thus serialized, insert order is commit order, and a rolled-back batch
//! consumes no position. PostgreSQL makes a commit visible before it releases
//! the transaction's locks, so the next writer always sees the previous
//! batch's head. The cost is one writer at a time per database, which group
//! commit amortizes over whole batches.

use rapport_domain::ingest::{self, Known, KnownMember, RecordedRef};
use rapport_domain::{Interaction, Timestamp};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};

use std::sync::{Arc, Mutex};

use crate::cache::{CacheUpdate, WriterCache};
use crate::sql::{EVENT_COLUMNS, ROWS_PER_STATEMENT};
use crate::{
    AppendOutcome, EventPage, EventQuery, StoreError, StoreOptions, codec, from_db, sql, to_db,
};

/// The advisory lock key of the log: the bytes of "rapport\0" as a BIGINT.
const LOG_LOCK_KEY: i64 = 0x7261_7070_6f72_7400;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Identities and stream versions this replica's writer committed.
    cache: Arc<Mutex<WriterCache>>,
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
        Ok(PgStore {
            pool,
            cache: Arc::default(),
        })
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
        let appended = append_in_transaction(&mut tx, &self.cache, requests, recorded_at).await;
        let committed = match appended {
            Ok(appended) => tx
                .commit()
                .await
                .map(|()| appended)
                .map_err(StoreError::from),
            Err(e) => Err(e),
        };
        let mut cache = self.cache.lock().expect("writer cache");
        match committed {
            Ok((outcomes, update)) => {
                cache.apply(update);
                Ok(outcomes)
            }
            Err(e) => {
                // A failed commit may or may not have landed: forget it all.
                cache.reset();
                Err(e)
            }
        }
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

/// Appends a batch inside `conn`'s open transaction, which the caller has
/// made the only writer of the log (see the backends). Returns one outcome
/// per request; commits nothing.
async fn append_in_transaction(
    conn: &mut PgConnection,
    cache: &std::sync::Mutex<WriterCache>,
    requests: &[Vec<rapport_domain::Interaction>],
    recorded_at: Timestamp,
) -> Result<(Vec<crate::AppendOutcome>, CacheUpdate), StoreError> {
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let head = from_db(head)?;
    let keys = ingest::lookup_keys(requests);

    let mut known = Known::default();
    // Identities this writer resolved in earlier batches need no query.
    let uncached = cache
        .lock()
        .expect("writer cache")
        .resolve(head, keys.identities, &mut known);
    for chunk in keys.interactions.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Postgres>::new("WITH q (c, i) AS (");
        qb.push_values(chunk, |mut row, (community, id)| {
            row.push_bind(community.clone()).push_bind(id.clone());
        });
        qb.push(
            ") SELECT k.community_id, k.interaction_id, k.fingerprint, k.member_id, k.position \
             FROM q CROSS JOIN LATERAL (SELECT * FROM interaction_keys k \
             WHERE k.community_id = q.c AND k.interaction_id = q.i LIMIT 1) k",
        );
        for row in qb.build().persistent(false).fetch_all(&mut *conn).await? {
            let fingerprint: Vec<u8> = row.try_get(2)?;
            known.interactions.insert(
                (row.try_get(0)?, row.try_get(1)?),
                RecordedRef {
                    fingerprint: fingerprint
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("fingerprint length".into()))?,
                    member_id: row.try_get(3)?,
                    position: from_db(row.try_get(4)?)?,
                },
            );
        }
    }
    for chunk in uncached.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Postgres>::new("WITH q (c, ch, h) AS (");
        qb.push_values(chunk, |mut row, key| {
            row.push_bind(key.community_id.clone())
                .push_bind(key.channel.clone())
                .push_bind(key.handle_key.clone());
        });
        qb.push(
            // The stream id is `rapport_domain::event::member_stream_id`.
            ") SELECT x.community_id, x.channel, x.handle_key, x.member_id, \
             (SELECT MAX(e.stream_version) FROM events e WHERE e.stream_id = 'member-' || x.member_id) \
             FROM q CROSS JOIN LATERAL (SELECT i.community_id, i.channel, i.handle_key, i.member_id \
             FROM identities i \
             WHERE i.community_id = q.c AND i.channel = q.ch AND i.handle_key = q.h LIMIT 1) x",
        );
        for row in qb.build().persistent(false).fetch_all(&mut *conn).await? {
            known.identities.insert(
                rapport_domain::IdentityKey {
                    community_id: row.try_get(0)?,
                    channel: row.try_get(1)?,
                    handle_key: row.try_get(2)?,
                },
                KnownMember {
                    member_id: row.try_get(3)?,
                    stream_version: from_db(row.try_get(4)?)?,
                },
            );
        }
    }

    let plan = ingest::plan(requests, &known, head, recorded_at, crate::new_member_id);

    for chunk in plan.events.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "INSERT INTO events ({EVENT_COLUMNS}, channel) "
        ));
        qb.push_values(chunk, |mut row, event| {
            let (payload, personal) = codec::encode(&event.body);
            row.push_bind(to_db(event.position))
                .push_bind(event.community_id.clone())
                .push_bind(event.stream_id.clone())
                .push_bind(to_db(event.stream_version))
                .push_bind(event.body.event_type() as i16)
                .push_bind(event.body.member_id().to_owned())
                .push_bind(event.recorded_at.as_micros())
                .push_bind(payload)
                .push_bind(personal)
                .push_bind(event.body.channel().map(str::to_owned));
        });
        qb.build().persistent(false).execute(&mut *conn).await?;
    }
    // Members before identities: identities reference them.
    let new_members: Vec<_> = plan.member_heads.iter().filter(|h| h.is_new).collect();
    for chunk in new_members.chunks(ROWS_PER_STATEMENT) {
        let mut qb =
            QueryBuilder::<Postgres>::new("INSERT INTO members (member_id, community_id) ");
        qb.push_values(chunk, |mut row, head| {
            row.push_bind(head.member_id.clone())
                .push_bind(head.community_id.clone());
        });
        qb.build().persistent(false).execute(&mut *conn).await?;
    }
    for chunk in plan.new_identities.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Postgres>::new(
            "INSERT INTO identities (community_id, channel, handle_key, member_id) ",
        );
        qb.push_values(chunk, |mut row, (key, member_id)| {
            row.push_bind(key.community_id.clone())
                .push_bind(key.channel.clone())
                .push_bind(key.handle_key.clone())
                .push_bind(member_id.clone());
        });
        qb.build().persistent(false).execute(&mut *conn).await?;
    }
    for chunk in plan.new_interactions.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Postgres>::new(
            "INSERT INTO interaction_keys (community_id, interaction_id, fingerprint, member_id, position) ",
        );
        qb.push_values(chunk, |mut row, record| {
            row.push_bind(record.community_id.clone())
                .push_bind(record.interaction_id.clone())
                .push_bind(record.fingerprint.to_vec())
                .push_bind(record.member_id.clone())
                .push_bind(to_db(record.position));
        });
        qb.build().persistent(false).execute(&mut *conn).await?;
    }
    Ok(CacheUpdate::from_plan(head, known, plan))
}
