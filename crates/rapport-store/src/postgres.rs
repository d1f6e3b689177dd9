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
use rapport_domain::{Command, Interaction, Timestamp};
use sqlx::postgres::{PgListener, PgNotification, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Row};
use tracing::{debug, warn};

use std::sync::{Arc, Mutex};

use crate::BatchKeys;
use crate::cache::{CacheUpdate, WriterCache};
use crate::crypto::Keyring;
use crate::{
    CommandOutcome, Committed, EventPage, EventQuery, StoreError, StoreOptions, from_db, sql, to_db,
};

/// The `NOTIFY` channel: every append notifies it at commit with the new
/// head as payload, so other replicas' subscribers hear of it at once.
const LOG_CHANNEL: &str = "rapport_log";

/// The `NOTIFY` channels between a read model's projector and reads on the
/// other replicas (see [`crate::Store::notify_projector`]), payload
/// "name position": what a read waits for, and what the projector applied.
const WANTED_CHANNEL: &str = "rapport_wanted";
const APPLIED_CHANNEL: &str = "rapport_applied";

/// The advisory lock key of the log: the bytes of "rapport\0" as a BIGINT.
const LOG_LOCK_KEY: i64 = 0x7261_7070_6f72_7400;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Identities and stream versions this replica's writer committed.
    cache: Arc<Mutex<WriterCache>>,
    keyring: Keyring,
}

impl PgStore {
    pub(crate) async fn connect(options: &StoreOptions) -> Result<Self, StoreError> {
        let master = options.master_key.clone().ok_or_else(|| {
            StoreError::MasterKey(
                "PostgreSQL needs a master key shared by every replica: \
                 set --master-key-file or RAPPORT_MASTER_KEY"
                    .into(),
            )
        })?;
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
            keyring: Keyring::new(master),
        })
    }

    /// Returns how many identity lookups it keyed and how many personal
    /// parts it sealed (see [`Store::migrate`]).
    pub(crate) async fn migrate(&self) -> Result<(usize, usize), StoreError> {
        // sqlx takes its own advisory lock, so replicas starting together
        // apply each migration once.
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({LOG_LOCK_KEY})");
        let mut tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?;
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT community_id, channel, handle_key FROM identities \
             WHERE handle_key NOT LIKE 'h1:%'",
        )
        .fetch_all(&mut *tx)
        .await?;
        if !rows.is_empty() {
            let master = self.keyring.master();
            sqlx::query(
                "UPDATE identities i SET handle_key = u.keyed \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS u (c, ch, old, keyed) \
                 WHERE i.community_id = u.c AND i.channel = u.ch AND i.handle_key = u.old",
            )
            .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| master.identity_lookup(&r.0, &r.2))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let sealed = self.seal_legacy_personal().await?;
        Ok((rows.len(), sealed))
    }

    /// Seals the personal parts written before encryption existed with
    /// their members' keys (made for members without one), and drops those
    /// of erased members: once, then marked done in `store_tasks`. Chunks
    /// of 5,000 events, each under the log's lock. The old row versions stay
    /// in the table files until vacuum reuses their space.
    async fn seal_legacy_personal(&self) -> Result<usize, StoreError> {
        let done: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM store_tasks WHERE task = $1)")
                .bind(crate::SEAL_LEGACY_TASK)
                .fetch_one(&self.pool)
                .await?;
        if done {
            return Ok(0);
        }
        let mut keys: std::collections::HashMap<String, Option<crate::crypto::DataKey>> =
            std::collections::HashMap::new();
        let (mut sealed, mut after) = (0, 0i64);
        loop {
            let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({LOG_LOCK_KEY})");
            let mut tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?;
            let rows: Vec<(i64, String, String, Vec<u8>, bool)> = sqlx::query_as(
                "SELECT e.position, e.member_id, e.community_id, e.personal, \
                 COALESCE(m.erased, false) FROM events e \
                 LEFT JOIN members m ON m.member_id = e.member_id \
                 WHERE e.position > $1 AND e.personal IS NOT NULL \
                 AND get_byte(e.personal, 0) <> 255 ORDER BY e.position LIMIT 5000",
            )
            .bind(after)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last() else {
                sqlx::query(
                    "INSERT INTO store_tasks (task, done_at) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(crate::SEAL_LEGACY_TASK)
                .bind(crate::wall_clock().as_micros())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(sealed);
            };
            after = last.0;
            let mut positions = Vec::with_capacity(rows.len());
            let mut values = Vec::with_capacity(rows.len());
            for (position, member, community, personal, erased) in &rows {
                if !keys.contains_key(member) {
                    let wrapped: Option<Vec<u8>> =
                        sqlx::query_scalar("SELECT wrapped FROM member_keys WHERE owner = $1")
                            .bind(member)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let key = match (wrapped, erased) {
                        (Some(wrapped), _) => Some(self.keyring.data_key(&wrapped, member)?),
                        // Erased: its personal data goes, as its key went.
                        (None, true) => None,
                        (None, false) => {
                            let (key, wrapped) = self.keyring.master().new_data_key(member);
                            sqlx::query(
                                "INSERT INTO member_keys (owner, community, wrapped) \
                                 VALUES ($1, $2, $3)",
                            )
                            .bind(member)
                            .bind(community)
                            .bind(wrapped)
                            .execute(&mut *tx)
                            .await?;
                            Some(key)
                        }
                    };
                    keys.insert(member.clone(), key);
                }
                positions.push(*position);
                values.push(keys[member].as_ref().map(|k| k.seal(personal, member)));
            }
            sqlx::query(
                "UPDATE events e SET personal = u.personal \
                 FROM UNNEST($1::bigint[], $2::bytea[]) AS u (position, personal) \
                 WHERE e.position = u.position",
            )
            .bind(&positions)
            .bind(&values)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            sealed += rows.len();
        }
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
    ) -> Result<Committed, StoreError> {
        // BEGIN and the lock in one round trip: a simple query may hold
        // several statements.
        let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({LOG_LOCK_KEY})");
        let mut tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?;
        let appended =
            append_in_transaction(&mut tx, &self.cache, &self.keyring, requests, recorded_at).await;
        let committed = match appended {
            Ok((appended, keys)) => tx
                .commit()
                .await
                .map(|()| {
                    keys.committed(&self.keyring);
                    appended
                })
                .map_err(StoreError::from),
            Err(e) => Err(e),
        };
        self.cache.lock().expect("writer cache").settle(committed)
    }

    pub(crate) async fn append_command(
        &self,
        command: &Command,
        recorded_at: Timestamp,
    ) -> Result<CommandOutcome, StoreError> {
        let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({LOG_LOCK_KEY})");
        let mut tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?;
        if let Some(member_id) = command.member_id() {
            let member = member_facts(&mut tx, command.community_id(), member_id).await?;
            let target = match command {
                Command::MergeMembers {
                    target_member_id, ..
                } => member_facts(&mut tx, command.community_id(), target_member_id).await?,
                _ => None,
            };
            if let Some(refused) =
                crate::member_precondition(command, member.as_ref(), target.as_ref())
            {
                return Ok(refused);
            }
        }
        let identity_key = command.identity().map(|i| i.key(command.community_id()));
        if let Some(key) = &identity_key {
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT member_id FROM identities \
                 WHERE community_id = $1 AND channel = $2 AND handle_key = $3",
            )
            .bind(&key.community_id)
            .bind(&key.channel)
            .bind(self.keyring.lookup(key))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(refused) = crate::identity_precondition(command, owner.as_deref()) {
                return Ok(refused);
            }
        }
        let (head, version): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(position), 0) FROM events),              (SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = $1)",
        )
        .bind(command.stream_id())
        .fetch_one(&mut *tx)
        .await?;
        let event = command.event(from_db(head)?, from_db(version)?, recorded_at);
        let events = std::slice::from_ref(&event);
        let keys = batch_keys(&mut tx, &self.keyring, events, &[]).await?;
        let (mut payloads, mut personals) = keys.encode(events);
        let (payload, personal) = (payloads.remove(0), personals.remove(0));
        sqlx::query(
            "WITH e AS (INSERT INTO events (position, community_id, stream_id, stream_version, \
             event_type, member_id, recorded_at, payload, personal, channel) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)) \
             SELECT pg_notify($10, $11)",
        )
        .bind(to_db(event.position))
        .bind(&event.community_id)
        .bind(&event.stream_id)
        .bind(to_db(event.stream_version))
        .bind(event.body.event_type() as i16)
        .bind(event.body.member_id())
        .bind(event.recorded_at.as_micros())
        .bind(payload)
        .bind(personal)
        .bind(LOG_CHANNEL)
        .bind(event.position.to_string())
        .execute(&mut *tx)
        .await?;
        let change = match command {
            Command::LinkIdentity { .. } => Some(
                "INSERT INTO identities (community_id, channel, handle_key, member_id) \
                 VALUES ($1, $2, $3, $4)",
            ),
            Command::UnlinkIdentity { .. } => Some(
                "DELETE FROM identities \
                 WHERE community_id = $1 AND channel = $2 AND handle_key = $3 AND member_id = $4",
            ),
            _ => None,
        };
        if let (Some(sql), Some(key)) = (change, &identity_key) {
            sqlx::query(sql)
                .bind(&key.community_id)
                .bind(&key.channel)
                .bind(self.keyring.lookup(key))
                .bind(event.body.member_id())
                .execute(&mut *tx)
                .await?;
        }
        insert_keys(&mut tx, &keys.new).await?;
        if let Command::RejectMergeSuggestion {
            community_id,
            member_id,
            other_member_id,
        } = command
        {
            let (a, b) = crate::ordered(member_id, other_member_id);
            sqlx::query(
                "INSERT INTO rejected_merge_suggestions (community, member_a, member_b) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(community_id)
            .bind(a)
            .bind(b)
            .execute(&mut *tx)
            .await?;
        }
        match command {
            Command::MergeMembers {
                source_member_id,
                target_member_id,
                ..
            } => {
                sqlx::query("UPDATE members SET merged_into = $2 WHERE member_id = $1")
                    .bind(source_member_id)
                    .bind(target_member_id)
                    .execute(&mut *tx)
                    .await?;
            }
            Command::UnmergeMember {
                source_member_id, ..
            } => {
                sqlx::query("UPDATE members SET merged_into = NULL WHERE member_id = $1")
                    .bind(source_member_id)
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {}
        }
        if let Command::EraseMember { member_id, .. } = command {
            // The key first: with it goes every personal part of the member.
            sqlx::query(
                "WITH k AS (DELETE FROM member_keys WHERE owner = $1), \
                 i AS (DELETE FROM identities WHERE member_id = $1) \
                 UPDATE members SET erased = true WHERE member_id = $1",
            )
            .bind(member_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        keys.committed(&self.keyring);
        if let Command::EraseMember { member_id, .. } = command {
            self.keyring.forget(member_id);
        }
        Ok(CommandOutcome::Appended(event))
    }

    pub(crate) async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        // REPEATABLE READ: the head and the page come from one snapshot.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let page = sql::read_events::<Postgres>(&mut tx, query, &self.keyring).await?;
        tx.commit().await?;
        Ok(page)
    }

    pub(crate) async fn stream_events(
        &self,
        stream_id: &str,
        types: &[rapport_domain::EventType],
        newest_first: bool,
        limit: i64,
    ) -> Result<Vec<rapport_domain::Event>, StoreError> {
        let rows = sql::select_stream_events::<Postgres>(stream_id, types, newest_first, limit)
            .build()
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| sql::event_from_row(row, &self.keyring))
            .collect()
    }

    pub(crate) async fn events_at(
        &self,
        positions: &[u64],
    ) -> Result<Vec<rapport_domain::Event>, StoreError> {
        let (select, params) = sql::select_events_at(positions);
        let rows = sql::bind_params(sqlx::query(sqlx::AssertSqlSafe(select)), params)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| sql::event_from_row(row, &self.keyring))
            .collect()
    }

    /// Blanks the handle of every member target of `events` erased since
    /// (see [`crate::forget_targets`]).
    pub(crate) async fn forget_erased_targets(
        &self,
        events: &mut [rapport_domain::Event],
    ) -> Result<(), StoreError> {
        let targets = crate::member_targets(events);
        if targets.is_empty() {
            return Ok(());
        }
        let (select, params) = sql::select_erased(&targets);
        let erased: std::collections::HashSet<String> =
            sql::bind_params(sqlx::query(sqlx::AssertSqlSafe(select)), params)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
        crate::forget_targets(events, &erased);
        Ok(())
    }

    /// Advances `feed`'s head on every commit notified on [`LOG_CHANNEL`],
    /// by any replica. Returns when the pool closes or listening fails for
    /// good; the caller's poll covers notifications lost meanwhile.
    pub(crate) async fn listen(&self, feed: &crate::Feed) {
        let Some(mut listener) = self.listener(&[LOG_CHANNEL], "commits").await else {
            return;
        };
        while let Some(notification) = next_notification(&mut listener, "commits").await {
            match notification {
                Some(n) => match n.payload().parse::<u64>() {
                    Ok(head) => feed.observe(head),
                    Err(_) => debug!(payload = n.payload(), "unexpected notification"),
                },
                // Reconnected: whatever was notified meanwhile is lost, so look.
                None => {
                    if let Ok(head) = self.head().await {
                        feed.observe(head);
                    }
                }
            }
        }
    }

    pub(crate) async fn notify_projector(
        &self,
        signal: crate::ProjectorSignal,
        name: &str,
        position: u64,
    ) -> Result<(), StoreError> {
        let channel = match signal {
            crate::ProjectorSignal::Wanted => WANTED_CHANNEL,
            crate::ProjectorSignal::Applied => APPLIED_CHANNEL,
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(format!("{name} {position}"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Calls `heard` with each signal any replica's
    /// [`crate::Store::notify_projector`] sends. Returns when the pool
    /// closes or listening fails for good. A signal lost meanwhile costs
    /// its reader the projector's linger or a poll, no more.
    pub(crate) async fn listen_projectors(
        &self,
        heard: &(dyn Fn(crate::ProjectorSignal, &str, u64) + Send + Sync),
    ) {
        let what = "projector signals";
        let channels = [WANTED_CHANNEL, APPLIED_CHANNEL];
        let Some(mut listener) = self.listener(&channels, what).await else {
            return;
        };
        while let Some(notification) = next_notification(&mut listener, what).await {
            let Some(n) = notification else { continue };
            let signal = if n.channel() == WANTED_CHANNEL {
                crate::ProjectorSignal::Wanted
            } else {
                crate::ProjectorSignal::Applied
            };
            let parsed = n
                .payload()
                .split_once(' ')
                .and_then(|(name, position)| Some((name, position.parse().ok()?)));
            match parsed {
                Some((name, position)) => heard(signal, name, position),
                None => debug!(payload = n.payload(), "unexpected notification"),
            }
        }
    }

    /// A connection of its own that `LISTEN`s on `channels`; `None` (and a
    /// warning) when it cannot start.
    async fn listener(&self, channels: &[&str], what: &str) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(listener) => listener,
            Err(error) => {
                warn!(error = %error, "cannot listen for {what}");
                return None;
            }
        };
        if let Err(error) = listener.listen_all(channels.iter().copied()).await {
            warn!(error = %error, "cannot listen for {what}");
            return None;
        }
        Some(listener)
    }

    pub(crate) fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub(crate) fn pool(&self) -> &sqlx::Pool<Postgres> {
        &self.pool
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// The next notification `listener` hears: `Some(None)` after it
/// reconnected (what was notified meanwhile is lost), `None` once the pool
/// closed. Other failures are retried every second.
async fn next_notification(
    listener: &mut PgListener,
    what: &str,
) -> Option<Option<PgNotification>> {
    loop {
        match listener.try_recv().await {
            Ok(notification) => return Some(notification),
            Err(sqlx::Error::PoolClosed) => return None,
            Err(error) => {
                debug!(error = %error, "listening for {what} failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Appends a batch inside `conn`'s open transaction, which the caller has
/// made the only writer of the log (see the backends). Returns one outcome
/// per request; commits nothing.
async fn append_in_transaction(
    conn: &mut PgConnection,
    cache: &std::sync::Mutex<WriterCache>,
    keyring: &Keyring,
    requests: &[Vec<rapport_domain::Interaction>],
    recorded_at: Timestamp,
) -> Result<((Committed, CacheUpdate), BatchKeys), StoreError> {
    // Every statement binds whole columns as arrays and UNNESTs them: one
    // prepared statement per table whatever the batch size.
    //
    // First the head and the known interaction ids, in one round trip; the
    // head is read after BEGIN took the lock, so it is the last commit.
    // LATERAL with LIMIT 1 makes PostgreSQL probe the primary key per key
    // instead of hash-joining against a scan of the whole table.
    let keys = ingest::lookup_keys(requests);
    let (communities, ids): (Vec<&str>, Vec<&str>) = keys
        .interactions
        .iter()
        .map(|(c, i)| (c.as_str(), i.as_str()))
        .unzip();
    let rows = sqlx::query(
        "WITH h AS (SELECT COALESCE(MAX(position), 0) AS head FROM events) \
         SELECT h.head, k.community_id, k.interaction_id, k.fingerprint, k.member_id, k.position \
         FROM h LEFT JOIN LATERAL (SELECT k.* FROM UNNEST($1::text[], $2::text[]) AS q (c, i) \
         CROSS JOIN LATERAL (SELECT * FROM interaction_keys k \
         WHERE k.community_id = q.c AND k.interaction_id = q.i LIMIT 1) k) k ON true",
    )
    .bind(&communities)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let head: i64 = match rows.first() {
        Some(row) => row.try_get(0)?,
        None => return Err(StoreError::Corrupt("the head query returned no row".into())),
    };
    let head = from_db(head)?;

    let mut known = Known::default();
    for row in &rows {
        let Some(fingerprint) = row.try_get::<Option<Vec<u8>>, _>(3)? else {
            continue; // the head alone: no id matched
        };
        known.interactions.insert(
            (row.try_get(1)?, row.try_get(2)?),
            RecordedRef {
                fingerprint: fingerprint
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("fingerprint length".into()))?,
                member_id: row.try_get(4)?,
                position: from_db(row.try_get(5)?)?,
            },
        );
    }
    // Identities this writer resolved in earlier batches need no query.
    let uncached = cache
        .lock()
        .expect("writer cache")
        .resolve(head, keys.identities, &mut known);
    if !uncached.is_empty() {
        let communities: Vec<&str> = uncached.iter().map(|k| k.community_id.as_str()).collect();
        let channels: Vec<&str> = uncached.iter().map(|k| k.channel.as_str()).collect();
        // Looked up by keyed hash; the answers map back to the keys asked.
        let lookups: Vec<String> = uncached.iter().map(|k| keyring.lookup(k)).collect();
        let asked: std::collections::HashMap<(&str, &str, &str), &rapport_domain::IdentityKey> =
            uncached
                .iter()
                .zip(&lookups)
                .map(|(k, l)| ((k.community_id.as_str(), k.channel.as_str(), l.as_str()), k))
                .collect();
        let rows = sqlx::query(
            // The stream id is `rapport_domain::event::member_stream_id`.
            "SELECT x.community_id, x.channel, x.handle_key, x.member_id, \
             (SELECT MAX(e.stream_version) FROM events e WHERE e.stream_id = 'member-' || x.member_id) \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS q (c, ch, h) \
             CROSS JOIN LATERAL (SELECT i.community_id, i.channel, i.handle_key, i.member_id \
             FROM identities i \
             WHERE i.community_id = q.c AND i.channel = q.ch AND i.handle_key = q.h LIMIT 1) x",
        )
        .bind(&communities)
        .bind(&channels)
        .bind(&lookups)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let (community, channel, lookup): (String, String, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let key = asked
                .get(&(community.as_str(), channel.as_str(), lookup.as_str()))
                .ok_or_else(|| StoreError::Corrupt("an identity nobody asked for".into()))?;
            known.identities.insert(
                (*key).clone(),
                KnownMember {
                    member_id: row.try_get(3)?,
                    stream_version: from_db(row.try_get(4)?)?,
                },
            );
        }
    }

    let plan = ingest::plan(requests, &known, head, recorded_at, crate::new_member_id);

    // Every write of the batch in one statement (one round trip): the
    // data-modifying CTEs all run, and the foreign keys of `identities` are
    // checked at the end of the statement, after `members` got its rows.
    let events = &plan.events;
    let new_members: Vec<_> = plan.member_heads.iter().filter(|h| h.is_new).collect();
    let created: Vec<&str> = new_members.iter().map(|h| h.member_id.as_str()).collect();
    let keys = batch_keys(&mut *conn, keyring, events, &created).await?;
    let (payloads, personals) = keys.encode(events);
    let links = &plan.new_identities;
    let records = &plan.new_interactions;
    sqlx::query(
        "WITH new_events AS (
            INSERT INTO events (position, community_id, stream_id, stream_version, event_type,
                                member_id, recorded_at, payload, personal, channel)
            SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int2[],
                                 $6::text[], $7::int8[], $8::bytea[], $9::bytea[], $10::text[])
         ), new_members AS (
            INSERT INTO members (member_id, community_id)
            SELECT * FROM UNNEST($11::text[], $12::text[])
         ), new_identities AS (
            INSERT INTO identities (community_id, channel, handle_key, member_id)
            SELECT * FROM UNNEST($13::text[], $14::text[], $15::text[], $16::text[])
         ), new_keys AS (
            INSERT INTO interaction_keys (community_id, interaction_id, fingerprint, member_id, position)
            SELECT * FROM UNNEST($17::text[], $18::text[], $19::bytea[], $20::text[], $21::int8[])
         ), new_data_keys AS (
            INSERT INTO member_keys (owner, community, wrapped)
            SELECT * FROM UNNEST($24::text[], $25::text[], $26::bytea[])
         )
         SELECT pg_notify($22, $23)",
    )
    .bind(events.iter().map(|e| to_db(e.position)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.community_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| to_db(e.stream_version)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.body.event_type() as i16).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.body.member_id()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.recorded_at.as_micros()).collect::<Vec<_>>())
    .bind(payloads)
    .bind(personals)
    .bind(events.iter().map(|e| e.body.channel()).collect::<Vec<_>>())
    .bind(new_members.iter().map(|h| h.member_id.as_str()).collect::<Vec<_>>())
    .bind(new_members.iter().map(|h| h.community_id.as_str()).collect::<Vec<_>>())
    .bind(links.iter().map(|(k, _)| k.community_id.as_str()).collect::<Vec<_>>())
    .bind(links.iter().map(|(k, _)| k.channel.as_str()).collect::<Vec<_>>())
    .bind(links.iter().map(|(k, _)| keyring.lookup(k)).collect::<Vec<_>>())
    .bind(links.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.community_id.as_str()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.interaction_id.as_str()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.fingerprint.to_vec()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.member_id.as_str()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| to_db(r.position)).collect::<Vec<_>>())
    // Delivered to every listener when the transaction commits.
    .bind(LOG_CHANNEL)
    .bind((head + events.len() as u64).to_string())
    .bind(keys.new.iter().map(|(m, _, _)| m.as_str()).collect::<Vec<_>>())
    .bind(keys.new.iter().map(|(_, c, _)| c.as_str()).collect::<Vec<_>>())
    .bind(keys.new.iter().map(|(_, _, w)| w.as_slice()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok((CacheUpdate::from_plan(head, known, plan), keys))
}

/// The data keys `events` need: known, read from `member_keys`, or new (for
/// `created` members, which cannot have one yet, and members from before
/// encryption), to insert with the events.
async fn batch_keys(
    conn: &mut PgConnection,
    keyring: &Keyring,
    events: &[rapport_domain::Event],
    created: &[&str],
) -> Result<BatchKeys, StoreError> {
    let (mut keys, unknown) = BatchKeys::start(keyring, events);
    let lookup: Vec<&str> = unknown
        .iter()
        .map(|(m, _)| m.as_str())
        .filter(|m| !created.contains(m))
        .collect();
    let mut found = std::collections::HashSet::new();
    if !lookup.is_empty() {
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT owner, wrapped FROM member_keys WHERE owner = ANY($1)")
                .bind(&lookup)
                .fetch_all(&mut *conn)
                .await?;
        for (member, wrapped) in rows {
            keys.found(keyring, &member, &wrapped)?;
            found.insert(member);
        }
    }
    for (member, community) in unknown {
        if !found.contains(&member) {
            keys.create(keyring, member, community);
        }
    }
    Ok(keys)
}

/// Stores new data keys (a command's: batches insert theirs with the events).
async fn insert_keys(
    conn: &mut PgConnection,
    new: &[(String, String, Vec<u8>)],
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO member_keys (owner, community, wrapped) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[])",
    )
    .bind(new.iter().map(|(m, _, _)| m.as_str()).collect::<Vec<_>>())
    .bind(new.iter().map(|(_, c, _)| c.as_str()).collect::<Vec<_>>())
    .bind(new.iter().map(|(_, _, w)| w.as_slice()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What a command's preconditions need to know of a member (see
/// [`crate::member_precondition`]), under the transaction's lock.
async fn member_facts(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    community_id: &str,
    member_id: &str,
) -> Result<Option<crate::MemberFacts>, StoreError> {
    let row: Option<(bool, Option<String>, bool)> = sqlx::query_as(crate::sql::MEMBER_FACTS)
        .bind(member_id)
        .bind(community_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(
        row.map(|(erased, merged_into, has_merged)| crate::MemberFacts {
            erased,
            merged_into,
            has_merged,
        }),
    )
}
