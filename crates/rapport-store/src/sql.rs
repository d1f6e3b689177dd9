//! SQL shared by both backends: the event columns, the filtered read, and
//! decoding an event row. Both dialects accept this SQL; `QueryBuilder` picks
//! the placeholder style.

use rapport_domain::{Event, Timestamp};
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};

use crate::{EventQuery, StoreError, codec, from_db, to_db};

/// The columns `event_from_row` expects, in order.
pub(crate) const EVENT_COLUMNS: &str = "position, community_id, stream_id, stream_version, event_type, member_id, recorded_at, payload, personal";

/// `SELECT` of the events matching `query`, after `query.after` and up to `head`.
pub(crate) fn select_events<DB>(query: &EventQuery, head: u64) -> QueryBuilder<DB>
where
    DB: Database,
    for<'e> i64: Encode<'e, DB> + Type<DB>,
    for<'e> i16: Encode<'e, DB> + Type<DB>,
    for<'e> String: Encode<'e, DB> + Type<DB>,
{
    let columns = if query.without_personal {
        EVENT_COLUMNS.replace("personal", "NULL")
    } else {
        EVENT_COLUMNS.to_owned()
    };
    let mut qb = QueryBuilder::new(format!("SELECT {columns} FROM events WHERE position > "));
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

/// `SELECT` of the events at `positions`, in position order.
pub(crate) fn select_events_at<DB>(positions: &[u64]) -> QueryBuilder<DB>
where
    DB: Database,
    for<'e> i64: Encode<'e, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE position IN ("
    ));
    let mut list = qb.separated(", ");
    for p in positions {
        list.push_bind(to_db(*p));
    }
    qb.push(") ORDER BY position");
    qb
}
