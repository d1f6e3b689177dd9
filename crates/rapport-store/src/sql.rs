//! SQL shared by both backends: the event columns, the filtered read, and
//! decoding an event row. Both dialects accept this SQL; `QueryBuilder` picks
//! the placeholder style.

use rapport_domain::{Event, Timestamp};
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};

use crate::{EventQuery, StoreError, codec, from_db, to_db};

/// The columns `event_from_row` expects, in order.
pub(crate) const EVENT_COLUMNS: &str = "position, community_id, stream_id, stream_version, event_type, member_id, recorded_at, payload, personal";

/// Most rows one multi-row statement carries: under both databases'
/// parameter limits (32,766 on SQLite, 65,535 on PostgreSQL) at 10 columns.
/// These statements vary in size with every batch, so they are not kept in
/// the prepared-statement caches (`persistent(false)`).
pub(crate) const ROWS_PER_STATEMENT: usize = 1_000;

/// `SELECT` of the events matching `query`, after `query.after` and up to `head`.
pub(crate) fn select_events<DB>(query: &EventQuery, head: u64) -> QueryBuilder<DB>
where
    DB: Database,
    for<'e> i64: Encode<'e, DB> + Type<DB>,
    for<'e> i16: Encode<'e, DB> + Type<DB>,
    for<'e> String: Encode<'e, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE position > "
    ));
    qb.push_bind(to_db(query.after));
    qb.push(" AND position <= ");
    qb.push_bind(to_db(head));
    if let Some(community) = &query.community_id {
        qb.push(" AND community_id = ");
        qb.push_bind(community.clone());
    }
    if !query.event_types.is_empty() {
        qb.push(" AND event_type IN (");
        let mut list = qb.separated(", ");
        for t in &query.event_types {
            list.push_bind(*t as i16);
        }
        qb.push(")");
    }
    if !query.channels.is_empty() {
        qb.push(" AND channel IN (");
        let mut list = qb.separated(", ");
        for c in &query.channels {
            list.push_bind(c.clone());
        }
        qb.push(")");
    }
    qb.push(" ORDER BY position LIMIT ");
    qb.push_bind(i64::from(query.limit));
    qb
}

/// Decodes a row selected with [`EVENT_COLUMNS`].
pub(crate) fn event_from_row<R>(row: &R) -> Result<Event, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i16: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let community_id: String = row.try_get(1)?;
    let event_type: i16 = row.try_get(4)?;
    let payload: Vec<u8> = row.try_get(7)?;
    let personal: Option<Vec<u8>> = row.try_get(8)?;
    let body = codec::decode(
        i32::from(event_type),
        &community_id,
        row.try_get(5)?,
        &payload,
        personal.as_deref(),
    )?;
    Ok(Event {
        position: from_db(row.try_get(0)?)?,
        community_id,
        stream_id: row.try_get(2)?,
        stream_version: from_db(row.try_get(3)?)?,
        recorded_at: Timestamp::from_micros(row.try_get(6)?),
        body,
    })
}

/// How the key lookups are joined. PostgreSQL plans a join against a
/// thousand-row VALUES list as a hash join over a sequential scan of the
/// whole table, which grows with the log; a LATERAL subquery with LIMIT 1
/// forces one primary-key probe per key. SQLite probes the index either way
/// and has no LATERAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn interaction_lookup(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                ") SELECT k.community_id, k.interaction_id, k.fingerprint, k.member_id, k.position \
                 FROM q JOIN interaction_keys k ON k.community_id = q.c AND k.interaction_id = q.i"
            }
            Dialect::Postgres => {
                ") SELECT k.community_id, k.interaction_id, k.fingerprint, k.member_id, k.position \
                 FROM q CROSS JOIN LATERAL (SELECT * FROM interaction_keys k \
                 WHERE k.community_id = q.c AND k.interaction_id = q.i LIMIT 1) k"
            }
        }
    }

    fn identity_lookup(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                ") SELECT i.community_id, i.channel, i.handle_key, i.member_id, m.stream_version \
                 FROM q JOIN identities i ON i.community_id = q.c AND i.channel = q.ch AND i.handle_key = q.h \
                 JOIN members m ON m.member_id = i.member_id"
            }
            Dialect::Postgres => {
                ") SELECT x.community_id, x.channel, x.handle_key, x.member_id, x.stream_version \
                 FROM q CROSS JOIN LATERAL (SELECT i.community_id, i.channel, i.handle_key, i.member_id, m.stream_version \
                 FROM identities i JOIN members m ON m.member_id = i.member_id \
                 WHERE i.community_id = q.c AND i.channel = q.ch AND i.handle_key = q.h LIMIT 1) x"
            }
        }
    }
}

/// Appends a batch inside `conn`'s open transaction, which the caller has
/// made the only writer of the log (see the backends). Returns one outcome
/// per request; commits nothing.
pub(crate) async fn append_in_transaction<DB>(
    dialect: Dialect,
    conn: &mut DB::Connection,
    requests: &[Vec<rapport_domain::Interaction>],
    recorded_at: Timestamp,
) -> Result<Vec<crate::AppendOutcome>, StoreError>
where
    DB: Database + sqlx::database::HasStatementCache,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'a> <DB as Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> i64: Encode<'e, DB> + Type<DB> + Decode<'e, DB>,
    for<'e> i16: Encode<'e, DB> + Type<DB>,
    for<'e> String: Encode<'e, DB> + Type<DB> + Decode<'e, DB>,
    for<'e> Option<String>: Encode<'e, DB>,
    for<'e> Vec<u8>: Encode<'e, DB> + Type<DB> + Decode<'e, DB>,
    for<'e> Option<Vec<u8>>: Encode<'e, DB>,
    usize: ColumnIndex<DB::Row>,
{
    use rapport_domain::ingest::{self, Known, KnownMember, RecordedRef};

    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let keys = ingest::lookup_keys(requests);

    let mut known = Known::default();
    for chunk in keys.interactions.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<DB>::new("WITH q (c, i) AS (");
        qb.push_values(chunk, |mut row, (community, id)| {
            row.push_bind(community.clone()).push_bind(id.clone());
        });
        qb.push(dialect.interaction_lookup());
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
    for chunk in keys.identities.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<DB>::new("WITH q (c, ch, h) AS (");
        qb.push_values(chunk, |mut row, key| {
            row.push_bind(key.community_id.clone())
                .push_bind(key.channel.clone())
                .push_bind(key.handle_key.clone());
        });
        qb.push(dialect.identity_lookup());
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

    let plan = ingest::plan(
        requests,
        &known,
        from_db(head)?,
        recorded_at,
        crate::new_member_id,
    );

    for chunk in plan.events.chunks(ROWS_PER_STATEMENT) {
        let mut qb =
            QueryBuilder::<DB>::new(format!("INSERT INTO events ({EVENT_COLUMNS}, channel) "));
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
    for chunk in plan.member_heads.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<DB>::new(
            "INSERT INTO members (member_id, community_id, stream_version) ",
        );
        qb.push_values(chunk, |mut row, head| {
            row.push_bind(head.member_id.clone())
                .push_bind(head.community_id.clone())
                .push_bind(to_db(head.stream_version));
        });
        qb.push(" ON CONFLICT (member_id) DO UPDATE SET stream_version = excluded.stream_version");
        qb.build().persistent(false).execute(&mut *conn).await?;
    }
    for chunk in plan.new_identities.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<DB>::new(
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
        let mut qb = QueryBuilder::<DB>::new(
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
    Ok(plan.outcomes)
}

/// Reads a page of the log on `conn`: the head first, then the events up to it,
/// so the page never includes an event committed after the head it reports.
pub(crate) async fn read_events<DB>(
    conn: &mut DB::Connection,
    query: &EventQuery,
) -> Result<crate::EventPage, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'a> <DB as Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> i64: Encode<'e, DB> + Type<DB> + Decode<'e, DB>,
    for<'e> i16: Encode<'e, DB> + Type<DB> + Decode<'e, DB>,
    for<'e> String: Encode<'e, DB> + Type<DB> + Decode<'e, DB>,
    for<'e> Vec<u8>: Type<DB> + Decode<'e, DB>,
    usize: ColumnIndex<DB::Row>,
{
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let head = from_db(head)?;
    let rows = select_events::<DB>(query, head)
        .build()
        .fetch_all(&mut *conn)
        .await?;
    let events = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
    Ok(crate::EventPage { events, head })
}
