//! SQL shared by both backends: the event columns, the filtered read, and
//! decoding an event row. Both dialects accept this SQL; `QueryBuilder` picks
//! the placeholder style, or SQL built as text takes `$n` placeholders and
//! its values as [`SqlParam`]s (for sqlx and rusqlite alike).

use std::collections::BTreeSet;

use rapport_domain::{Event, Timestamp};
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};

use crate::crypto::Keyring;
use crate::{EventQuery, MemberRef, StoreError, codec, from_db, to_db};

/// The columns `event_from_row` expects, in order, from [`EVENTS_WITH_KEYS`]:
/// the last is the member's wrapped data key, to open the personal part.
pub(crate) const EVENT_COLUMNS: &str = "position, community_id, stream_id, stream_version, event_type, member_id, recorded_at, payload, personal, wrapped";

/// Events with their member's wrapped data key: NULL once the member is
/// erased, so nobody reads its personal data from then on.
pub(crate) const EVENTS_WITH_KEYS: &str = "events LEFT JOIN member_keys ON owner = member_id";

/// What the commands' preconditions read of a member (`$1`) in its
/// community (`$2`): erased, merged into whom, whether others are merged
/// into it. Both dialects.
pub(crate) const MEMBER_FACTS: &str = "SELECT erased, merged_into, \
     EXISTS (SELECT 1 FROM members o WHERE o.merged_into = members.member_id) \
     FROM members WHERE member_id = $1 AND community_id = $2";

/// A value bound to a `$n` placeholder of SQL built as text (see
/// [`placeholders`]): the same text and values run through sqlx on either
/// backend ([`bind_params`]) and through rusqlite on SQLite, which takes
/// `$1` as a named parameter, bound by position.
#[derive(Debug, Clone)]
pub enum SqlParam {
    Int(i64),
    /// A `SMALLINT` column's value: PostgreSQL compares it as one.
    Small(i16),
    Text(String),
}

impl From<SqlParam> for rusqlite::types::Value {
    fn from(param: SqlParam) -> Self {
        match param {
            SqlParam::Int(n) => rusqlite::types::Value::Integer(n),
            SqlParam::Small(n) => rusqlite::types::Value::Integer(n.into()),
            SqlParam::Text(t) => rusqlite::types::Value::Text(t),
        }
    }
}

/// The rows of SQL built as text, on a rusqlite connection (SQLite's side
/// of [`bind_params`]): the statement cached on the connection, each row
/// mapped by `map`.
pub fn sqlite_rows<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: Vec<SqlParam>,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let params = params.into_iter().map(rusqlite::types::Value::from);
    conn.prepare_cached(sql)?
        .query_map(rusqlite::params_from_iter(params), map)?
        .collect()
}

/// Binds `params` to `query`, in order.
pub fn bind_params<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, <DB as Database>::Arguments>,
    params: Vec<SqlParam>,
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments>
where
    DB: Database,
    for<'e> i64: Encode<'e, DB> + Type<DB>,
    for<'e> i16: Encode<'e, DB> + Type<DB>,
    for<'e> String: Encode<'e, DB> + Type<DB>,
{
    for param in params {
        query = match param {
            SqlParam::Int(n) => query.bind(n),
            SqlParam::Small(n) => query.bind(n),
            SqlParam::Text(t) => query.bind(t),
        };
    }
    query
}

/// `SELECT` of the events matching `query`, after `query.after` and up to
/// `head`, with `$1, $2, ...` placeholders and their values in order. Both
/// PostgreSQL and SQLite (which takes `$1` as a named parameter, bound by
/// position) accept it, so sqlx and rusqlite run the same text.
pub(crate) fn select_events(query: &EventQuery, head: u64) -> (String, Vec<SqlParam>) {
    // Read models take no personal data: no key to join either.
    let (columns, from) = if query.without_personal {
        (
            EVENT_COLUMNS
                .replace("personal", "NULL")
                .replace("wrapped", "NULL"),
            "events",
        )
    } else {
        (EVENT_COLUMNS.to_owned(), EVENTS_WITH_KEYS)
    };
    let mut params = vec![
        SqlParam::Int(to_db(query.after)),
        SqlParam::Int(to_db(head)),
    ];
    let mut sql = format!("SELECT {columns} FROM {from} WHERE position > $1 AND position <= $2");
    if let Some(community) = &query.community_id {
        let p = placeholders(vec![SqlParam::Text(community.clone())], &mut params);
        sql.push_str(&format!(" AND community_id = {p}"));
    }
    if !query.event_types.is_empty() {
        let values = query
            .event_types
            .iter()
            .map(|t| SqlParam::Int(*t as i64))
            .collect();
        let list = placeholders(values, &mut params);
        sql.push_str(&format!(" AND event_type IN ({list})"));
    }
    if !query.channels.is_empty() {
        let values = query
            .channels
            .iter()
            .map(|c| SqlParam::Text(c.clone()))
            .collect();
        let list = placeholders(values, &mut params);
        sql.push_str(&format!(" AND channel IN ({list})"));
    }
    params.push(SqlParam::Int(i64::from(query.limit)));
    sql.push_str(&format!(" ORDER BY position LIMIT ${}", params.len()));
    (sql, params)
}

/// Appends `values` to `params` and returns their placeholders, `$3, $4`.
pub fn placeholders(values: Vec<SqlParam>, params: &mut Vec<SqlParam>) -> String {
    let list: Vec<String> = values
        .into_iter()
        .map(|v| {
            params.push(v);
            format!("${}", params.len())
        })
        .collect();
    list.join(", ")
}

/// An event from its stored columns (see [`EVENT_COLUMNS`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn event_from_columns(
    position: i64,
    community_id: String,
    stream_id: String,
    stream_version: i64,
    event_type: i16,
    member_id: String,
    recorded_at: i64,
    payload: &[u8],
    personal: Option<Vec<u8>>,
    wrapped: Option<&[u8]>,
    keyring: &Keyring,
) -> Result<Event, StoreError> {
    let personal = keyring.open_personal(personal, wrapped, &member_id)?;
    let body = codec::decode(
        i32::from(event_type),
        &community_id,
        member_id,
        payload,
        personal.as_deref(),
    )?;
    Ok(Event {
        position: from_db(position)?,
        community_id,
        stream_id,
        stream_version: from_db(stream_version)?,
        recorded_at: Timestamp::from_micros(recorded_at),
        body,
    })
}

/// Decodes a row selected with [`EVENT_COLUMNS`].
pub(crate) fn event_from_row<R>(row: &R, keyring: &Keyring) -> Result<Event, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i16: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let payload: Vec<u8> = row.try_get(7)?;
    let personal: Option<Vec<u8>> = row.try_get(8)?;
    let wrapped: Option<Vec<u8>> = row.try_get(9)?;
    event_from_columns(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(6)?,
        &payload,
        personal,
        wrapped.as_deref(),
        keyring,
    )
}

/// Reads a page of the log on `conn`: the head first, then the events up to it,
/// so the page never includes an event committed after the head it reports.
pub(crate) async fn read_events<DB>(
    conn: &mut DB::Connection,
    query: &EventQuery,
    keyring: &Keyring,
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
    let (sql, params) = select_events(query, head);
    let rows = bind_params(sqlx::query(sqlx::AssertSqlSafe(sql)), params)
        .fetch_all(&mut *conn)
        .await?;
    let events = rows
        .iter()
        .map(|row| event_from_row(row, keyring))
        .collect::<Result<_, _>>()?;
    Ok(crate::EventPage { events, head })
}

/// `SELECT` of a stream's events of some types, in stream order (or
/// newest first), at most `limit`.
pub(crate) fn select_stream_events<DB>(
    stream_id: &str,
    types: &[rapport_domain::EventType],
    newest_first: bool,
    limit: i64,
) -> QueryBuilder<DB>
where
    DB: Database,
    for<'e> i64: Encode<'e, DB> + Type<DB>,
    for<'e> String: Encode<'e, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(format!(
        "SELECT {EVENT_COLUMNS} FROM {EVENTS_WITH_KEYS} WHERE stream_id = "
    ));
    qb.push_bind(stream_id.to_owned());
    qb.push(" AND event_type IN (");
    let mut list = qb.separated(", ");
    for t in types {
        list.push_bind(*t as i64);
    }
    qb.push(format!(
        ") ORDER BY stream_version {} LIMIT ",
        if newest_first { "DESC" } else { "ASC" }
    ));
    qb.push_bind(limit);
    qb
}

/// `SELECT` of the events at `positions`, in position order.
pub(crate) fn select_events_at(positions: &[u64]) -> (String, Vec<SqlParam>) {
    let mut params = Vec::new();
    let values = positions.iter().map(|p| SqlParam::Int(to_db(*p))).collect();
    let list = placeholders(values, &mut params);
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM {EVENTS_WITH_KEYS} WHERE position IN ({list}) ORDER BY position"
    );
    (sql, params)
}

/// `SELECT` of the members among `targets` that are erased.
pub(crate) fn select_erased(targets: &BTreeSet<String>) -> (String, Vec<SqlParam>) {
    let mut params = Vec::new();
    let values = targets.iter().cloned().map(SqlParam::Text).collect();
    let list = placeholders(values, &mut params);
    let sql = format!("SELECT member_id FROM members WHERE erased AND member_id IN ({list})");
    (sql, params)
}

/// The member `member` names in `community_id` (by id, or by an identity
/// through its lookup key), the member it reads as, and the members merged
/// into that one: a row per merged member, ordered by id (one row with
/// NULL when none). No row unless the member is in the community.
pub(crate) fn select_member_group(
    community_id: &str,
    member: &MemberRef,
    keyring: &Keyring,
) -> (String, Vec<SqlParam>) {
    let (named, params) = match member {
        MemberRef::Id(id) => (
            "SELECT member_id AS named, COALESCE(merged_into, member_id) AS canonical \
             FROM members WHERE member_id = $1 AND community_id = $2",
            vec![
                SqlParam::Text(id.clone()),
                SqlParam::Text(community_id.to_owned()),
            ],
        ),
        MemberRef::Identity(identity) => {
            let key = identity.key(community_id);
            let lookup = keyring.lookup(&key);
            (
                "SELECT n.member_id AS named, COALESCE(n.merged_into, n.member_id) AS canonical \
                 FROM identities i JOIN members n ON n.member_id = i.member_id \
                 WHERE i.community_id = $1 AND i.channel = $2 AND i.handle_key = $3",
                vec![
                    SqlParam::Text(key.community_id),
                    SqlParam::Text(key.channel),
                    SqlParam::Text(lookup),
                ],
            )
        }
    };
    let sql = format!(
        "WITH m AS ({named}) SELECT m.named, m.canonical, o.member_id FROM m \
         LEFT JOIN members o ON o.merged_into = m.canonical ORDER BY o.member_id"
    );
    (sql, params)
}
