//! The timeline read model: every member's history, newest first, and the
//! exchanges between pairs of members.
//!
//! Tables, per generation `g`:
//!
//! - `timeline_entries_g`: one row per (member, event, role), clustered by
//!   member and time so a page is one index range. Rows hold what filters
//!   and ordering need, never personal data: a page's details are read from
//!   the log by position.
//! - `timeline_connections_g`: per (member, other member) exchange counts
//!   both ways and the first and last exchange, for `ListConnections`.
//! - `timeline_staging_g`: while the generation is built in bulk, entries
//!   are appended here in log order (no index to keep sorted, no aggregate
//!   to update); [`Timeline::finish_bulk`] then moves them into the entries
//!   table in key order and derives the connections from them. On SQLite
//!   each batch appends its rows sorted, as a run whose end
//!   `timeline_runs_g` records, and the end merges the runs
//!   (`timeline_merge`).

use std::collections::HashMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use rapport_domain::timeline::{
    ConnectionDelta, Cursor, Role, TimelineRow, connection_deltas, timeline_rows,
};
use rapport_domain::{Event, InteractionKind, Timestamp};
use rapport_store::{DbPool, SqlParam, bind_params, from_db, placeholders, sqlite_rows, to_db};
use rusqlite::Statement;
use sqlx::{QueryBuilder, Row};

use crate::db::{Tx, column, execute_all, on_pool, push_in};
use crate::pg_copy::{BinaryRows, Value};
use crate::sqlite_pass::{driver, on_sqlx_connection};
use crate::timeline_merge;
use crate::{Projection, ProjectionError, Projections};

pub const NAME: &str = "timeline";

/// An entry's key: a member's page is one range of it.
const ENTRY_KEY: &str = "community_id, member_id, occurred_at, position, role";

/// The index that serves relationships: a member's entries with one other.
const PAIRS: &str = "(community_id, member_id, counterpart, occurred_at, position, role) \
     WHERE counterpart IS NOT NULL";

fn pairs_index(g: u64) -> String {
    format!("CREATE INDEX timeline_pairs_g{g} ON timeline_entries_g{g} {PAIRS}")
}

/// Ranks a member's connections by how much they exchange.
const CONNECTION_RANK: &str = "community_id, member_id, total DESC, other_member_id";

fn connections_rank_index(g: u64) -> String {
    format!(
        "CREATE INDEX timeline_connections_rank_g{g} ON timeline_connections_g{g} ({CONNECTION_RANK})"
    )
}

/// The connections' columns, as `CREATE TABLE` lists them.
const CONNECTION_COLUMNS: &str = "
                    community_id    TEXT   NOT NULL,
                    member_id       TEXT   NOT NULL,
                    other_member_id TEXT   NOT NULL,
                    sent            BIGINT NOT NULL,
                    received        BIGINT NOT NULL,
                    total           BIGINT NOT NULL,
                    first_at        BIGINT NOT NULL,
                    last_at         BIGINT NOT NULL";
const CONNECTION_KEY: &str = "community_id, member_id, other_member_id";

/// PostgreSQL's end of a bulk build makes the entries' key and pairs index
/// on the staging table, and the connections in a table of their own, under
/// these names; `finish_bulk` renames them to the ones above.
fn staging_key(g: u64) -> String {
    format!("timeline_staging_key_g{g}")
}

fn staging_pairs(g: u64) -> String {
    format!("timeline_staging_pairs_g{g}")
}

fn built_connections(g: u64) -> String {
    format!("timeline_connections_built_g{g}")
}

/// Runs `statements` in one transaction on a connection of its own, with
/// the memory for sorting that index builds want and for the connections'
/// aggregate (a hash of every pair: with the default 4 MB PostgreSQL sorts
/// them on disk instead, twice as slow at 10 M). Per build: up to four run
/// at once.
async fn build_pg(pool: &sqlx::PgPool, statements: Vec<String>) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql("SET LOCAL maintenance_work_mem = '256MB'; SET LOCAL work_mem = '256MB'")
        .execute(&mut *tx)
        .await?;
    for sql in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// The entry columns, in the order the inserts bind them.
pub(crate) const ENTRY_COLUMNS: &str =
    "community_id, member_id, occurred_at, position, role, event_type, channel, kind, counterpart";

/// The timeline projection.
pub struct Timeline;

impl Projection for Timeline {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u64 {
        // 2: SQLite's bulk build stages sorted runs (a build begun by
        // version 1 staged none, and is started over).
        2
    }

    fn create_tables(&self, g: u64, postgres: bool) -> Vec<String> {
        // SQLite: WITHOUT ROWID stores rows in primary-key order, so a
        // member's page is read from one contiguous range of one b-tree.
        let clustered = if postgres { "" } else { " WITHOUT ROWID" };
        let mut tables = vec![
            format!(
                "CREATE TABLE timeline_entries_g{g} (
                    community_id TEXT     NOT NULL,
                    member_id    TEXT     NOT NULL,
                    occurred_at  BIGINT   NOT NULL,
                    position     BIGINT   NOT NULL,
                    role         SMALLINT NOT NULL,
                    event_type   SMALLINT NOT NULL,
                    channel      TEXT,
                    kind         SMALLINT,
                    counterpart  TEXT,
                    PRIMARY KEY ({ENTRY_KEY})
                ){clustered}"
            ),
            pairs_index(g),
            format!(
                "CREATE TABLE timeline_connections_g{g} ({CONNECTION_COLUMNS},
                    PRIMARY KEY ({CONNECTION_KEY})
                ){clustered}"
            ),
            connections_rank_index(g),
            format!(
                "CREATE TABLE timeline_staging_g{g} (
                    community_id TEXT     NOT NULL,
                    member_id    TEXT     NOT NULL,
                    occurred_at  BIGINT   NOT NULL,
                    position     BIGINT   NOT NULL,
                    role         SMALLINT NOT NULL,
                    event_type   SMALLINT NOT NULL,
                    channel      TEXT,
                    kind         SMALLINT,
                    counterpart  TEXT
                )"
            ),
        ];
        if !postgres {
            tables.push(format!(
                "CREATE TABLE {} (last_rowid INTEGER PRIMARY KEY)",
                timeline_merge::runs(g)
            ));
        }
        tables
    }

    fn finish_bulk<'a>(&'a self, tx: Tx<'a>, g: u64) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        let c = match tx {
            // SQLite's entries table is clustered by key (WITHOUT ROWID):
            // the staged runs merged in key order land each row after the
            // previous one, so the b-tree is written page after page. The
            // secondary indexes are not in that order (a heavy member's
            // pairs span far more pages than the cache holds): they are
            // built afterwards, by SQLite's sorter.
            Tx::Sqlite(c) => {
                return on_sqlx_connection(c, move |conn| {
                    conn.execute_batch(&format!(
                        "DROP INDEX timeline_pairs_g{g}; DROP INDEX timeline_connections_rank_g{g}"
                    ))
                    .map_err(driver)?;
                    let started = std::time::Instant::now();
                    let finished = timeline_merge::finish(conn, g, timeline_merge::FAN_IN)?;
                    let merged = started.elapsed();
                    conn.execute_batch(&pairs_index(g)).map_err(driver)?;
                    let pairs = started.elapsed() - merged;
                    conn.execute_batch(&connections_rank_index(g))
                        .map_err(driver)?;
                    tracing::debug!(
                        generation = g,
                        rows = finished.rows,
                        pipelined = finished.pipelined,
                        merge_ms = merged.as_millis() as u64,
                        pairs_index_ms = pairs.as_millis() as u64,
                        rank_index_ms = (started.elapsed() - merged - pairs).as_millis() as u64,
                        "timeline bulk build indexed"
                    );
                    Ok(())
                })
                .boxed();
            }
            Tx::Postgres(c) => c,
        };
        // What `prepare_finish_bulk` built, swapped in under the names
        // `create_tables` gives (catalog changes only: the empty tables
        // that held the names go).
        let built = built_connections(g);
        let sql = vec![
            format!("DROP TABLE timeline_entries_g{g}"),
            format!("ALTER TABLE timeline_staging_g{g} RENAME TO timeline_entries_g{g}"),
            format!(
                "ALTER TABLE timeline_entries_g{g} ADD CONSTRAINT timeline_entries_g{g}_pkey \
                 PRIMARY KEY USING INDEX {}",
                staging_key(g)
            ),
            format!(
                "ALTER INDEX {} RENAME TO timeline_pairs_g{g}",
                staging_pairs(g)
            ),
            format!("DROP TABLE timeline_connections_g{g}"),
            format!("ALTER TABLE {built} RENAME TO timeline_connections_g{g}"),
            format!(
                "ALTER TABLE timeline_connections_g{g} ADD CONSTRAINT timeline_connections_g{g}_pkey \
                 PRIMARY KEY USING INDEX {built}_key"
            ),
            format!("ALTER INDEX {built}_rank RENAME TO timeline_connections_rank_g{g}"),
        ];
        execute_all(Tx::Postgres(c), sql).boxed()
    }

    fn prepare_finish_bulk<'a>(
        &'a self,
        pool: &'a DbPool,
        g: u64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        // SQLite has one writer per file: its end runs whole in
        // `finish_bulk`.
        let DbPool::Postgres(pool) = pool else {
            return futures::future::ready(Ok(())).boxed();
        };
        async move {
            // A heap is in no order anyway: the staging table becomes the
            // entries table, and its indexes are built by sorting once,
            // which is far cheaper than inserting into them row by row.
            // Each build sorts with parallel workers but ends in a
            // single-threaded write of the index: builds at once, on
            // connections of their own, overlap one's write with another's
            // sort. Against the same builds one after the other with the
            // same memory, that made the end 1.16× faster at 10 M on two
            // cores (docs/performance.md, "The overlap, apart from the
            // memory"); it also makes an end whose finished builds survive
            // a crash, and a swap transaction that holds its locks for
            // milliseconds.
            //
            // The indexes on staging are made `IF NOT EXISTS`: one built by
            // an interrupted end stays right, as later bulk batches keep
            // it. The connections are derived from the staged rows, so an
            // interrupted end's table (and its indexes with it) is made
            // again.
            let key = format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {} ON timeline_staging_g{g} ({ENTRY_KEY})",
                staging_key(g)
            );
            let pairs = format!(
                "CREATE INDEX IF NOT EXISTS {} ON timeline_staging_g{g} {PAIRS}",
                staging_pairs(g)
            );
            let built = built_connections(g);
            // The same sums, minima and maxima the live path accumulates
            // batch by batch (`connection_deltas`): an exchange is an entry
            // with a counterpart, ACTOR (1) rows sent, TARGET (2) received.
            // One pass of a hash aggregate (with the memory `build_pg`
            // gives it), into a table declared as `create_tables` declares
            // it; its key and ranking index are built after, at once.
            let connections = vec![
                format!("DROP TABLE IF EXISTS {built}"),
                format!("CREATE TABLE {built} ({CONNECTION_COLUMNS})"),
                format!(
                    "INSERT INTO {built} \
                     SELECT community_id, member_id, counterpart, \
                     SUM(CASE WHEN role = 1 THEN 1 ELSE 0 END), \
                     SUM(CASE WHEN role = 2 THEN 1 ELSE 0 END), \
                     COUNT(*), MIN(occurred_at), MAX(occurred_at) \
                     FROM timeline_staging_g{g} WHERE counterpart IS NOT NULL \
                     GROUP BY community_id, member_id, counterpart"
                ),
            ];
            let connections_key =
                format!("CREATE UNIQUE INDEX {built}_key ON {built} ({CONNECTION_KEY})");
            let connections_rank =
                format!("CREATE INDEX {built}_rank ON {built} ({CONNECTION_RANK})");
            let connections = async {
                build_pg(pool, connections).await?;
                futures::try_join!(
                    build_pg(pool, vec![connections_key]),
                    build_pg(pool, vec![connections_rank]),
                )
            };
            futures::try_join!(
                build_pg(pool, vec![key]),
                build_pg(pool, vec![pairs]),
                connections,
            )?;
            Ok(())
        }
        .boxed()
    }

    fn tables(&self, g: u64) -> Vec<String> {
        vec![
            format!("timeline_entries_g{g}"),
            format!("timeline_connections_g{g}"),
            format!("timeline_staging_g{g}"),
            built_connections(g),
            timeline_merge::runs(g),
        ]
    }

    fn apply<'a>(
        &'a self,
        tx: Tx<'a>,
        g: u64,
        events: &'a [Event],
        bulk: bool,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            let rows: Vec<TimelineRow> = events.iter().flat_map(timeline_rows).collect();
            let table = if bulk { "staging" } else { "entries" };
            // Bulk: the connections are derived at the end (`finish_bulk`).
            let deltas = if bulk {
                Vec::new()
            } else {
                connection_deltas(&rows)
            };
            match tx {
                Tx::Postgres(c) if bulk => {
                    copy_entries_pg(c, &format!("timeline_{table}_g{g}"), &rows).await
                }
                Tx::Postgres(c) => {
                    insert_entries_pg(c, &format!("timeline_{table}_g{g}"), &rows).await?;
                    upsert_connections_pg(c, g, &deltas).await
                }
                Tx::Sqlite(c) if bulk => {
                    on_sqlx_connection(c, move |conn| timeline_merge::stage_run(conn, g, rows))
                        .await
                }
                Tx::Sqlite(c) => {
                    let table = format!("timeline_{table}_g{g}");
                    on_sqlx_connection(c, |conn| write_sqlite(conn, &table, g, &rows, &deltas))
                        .await
                }
            }
        }
        .boxed()
    }
}

/// The upsert that adds a batch's deltas to the connections, on either
/// backend (`excluded` is the row that was to be inserted).
fn connections_upsert(g: u64) -> String {
    let t = format!("timeline_connections_g{g}");
    format!(
        " ON CONFLICT (community_id, member_id, other_member_id) DO UPDATE SET \
         sent = {t}.sent + excluded.sent, \
         received = {t}.received + excluded.received, \
         total = {t}.total + excluded.total, \
         first_at = CASE WHEN excluded.first_at < {t}.first_at THEN excluded.first_at ELSE {t}.first_at END, \
         last_at = CASE WHEN excluded.last_at > {t}.last_at THEN excluded.last_at ELSE {t}.last_at END"
    )
}

/// PostgreSQL, bulk: a batch's rows appended to the staging table by a
/// binary `COPY` (see [`crate::pg_copy`]).
async fn copy_entries_pg(
    c: &mut sqlx::PgConnection,
    table: &str,
    rows: &[TimelineRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // About 110 bytes a row: two ids of 36, a channel, nine lengths.
    let mut copy = BinaryRows::with_capacity(rows.len() * 128);
    for r in rows {
        copy.push(&[
            Value::Text(Some(&r.community_id)),
            Value::Text(Some(&r.member_id)),
            Value::Int8(Some(r.occurred_at.as_micros())),
            Value::Int8(Some(to_db(r.position))),
            Value::Int2(Some(r.role as i16)),
            Value::Int2(Some(r.event_type as i16)),
            Value::Text(r.channel.as_deref()),
            Value::Int2(r.kind.map(|k| k.as_i32() as i16)),
            Value::Text(r.counterpart.as_deref()),
        ])?;
    }
    copy.copy(c, &format!("{table} ({ENTRY_COLUMNS})")).await
}

/// PostgreSQL: every row in one statement, each column bound as an array.
async fn insert_entries_pg(
    c: &mut sqlx::PgConnection,
    table: &str,
    rows: &[TimelineRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {table} ({ENTRY_COLUMNS}) SELECT * FROM UNNEST($1::text[], $2::text[], \
         $3::int8[], $4::int8[], $5::int2[], $6::int2[], $7::text[], $8::int2[], $9::text[])"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(column(rows, |r| r.community_id.as_str()))
        .bind(column(rows, |r| r.member_id.as_str()))
        .bind(column(rows, |r| r.occurred_at.as_micros()))
        .bind(column(rows, |r| to_db(r.position)))
        .bind(column(rows, |r| r.role as i16))
        .bind(column(rows, |r| r.event_type as i16))
        .bind(column(rows, |r| r.channel.as_deref()))
        .bind(column(rows, |r| r.kind.map(|k| k.as_i32() as i16)))
        .bind(column(rows, |r| r.counterpart.as_deref()))
        .execute(c)
        .await
        .map(drop)
}

async fn upsert_connections_pg(
    c: &mut sqlx::PgConnection,
    g: u64,
    deltas: &[ConnectionDelta],
) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    // Deltas are summed per pair already: one statement may not touch a
    // row twice (PostgreSQL refuses).
    let sql = format!(
        "INSERT INTO timeline_connections_g{g} (community_id, member_id, other_member_id, \
         sent, received, total, first_at, last_at) SELECT * FROM UNNEST($1::text[], $2::text[], \
         $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[]){}",
        connections_upsert(g)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(column(deltas, |d| d.community_id.as_str()))
        .bind(column(deltas, |d| d.member_id.as_str()))
        .bind(column(deltas, |d| d.other_member_id.as_str()))
        .bind(column(deltas, |d| to_db(d.sent)))
        .bind(column(deltas, |d| to_db(d.received)))
        .bind(column(deltas, |d| to_db(d.sent + d.received)))
        .bind(column(deltas, |d| d.first_at.as_micros()))
        .bind(column(deltas, |d| d.last_at.as_micros()))
        .execute(c)
        .await
        .map(drop)
}

/// SQLite: a batch's entries and connection deltas, row by row with
/// statements prepared once per batch, in one hop (the reasons are in
/// `sqlite_pass`'s doc: a multi-row statement was parsed again for nearly
/// every batch, and sqlx copies every value across threads).
fn write_sqlite(
    conn: &rusqlite::Connection,
    table: &str,
    g: u64,
    rows: &[TimelineRow],
    deltas: &[ConnectionDelta],
) -> Result<(), sqlx::Error> {
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT INTO {table} ({ENTRY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))
        .map_err(driver)?;
    for r in rows {
        bind_entry(&mut insert, 1, r).map_err(driver)?;
        insert.raw_execute().map_err(driver)?;
    }
    let mut upsert = conn
        .prepare_cached(&format!(
            "INSERT INTO timeline_connections_g{g} (community_id, member_id, other_member_id, \
             sent, received, total, first_at, last_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8){}",
            connections_upsert(g)
        ))
        .map_err(driver)?;
    for d in deltas {
        bind_connection(&mut upsert, 1, d).map_err(driver)?;
        upsert.raw_execute().map_err(driver)?;
    }
    Ok(())
}

/// Binds an entry's [`ENTRY_COLUMNS`] from parameter `at` on (SQLite).
pub(crate) fn bind_entry(
    s: &mut Statement<'_>,
    at: usize,
    r: &TimelineRow,
) -> rusqlite::Result<()> {
    s.raw_bind_parameter(at, &r.community_id)?;
    s.raw_bind_parameter(at + 1, &r.member_id)?;
    s.raw_bind_parameter(at + 2, r.occurred_at.as_micros())?;
    s.raw_bind_parameter(at + 3, to_db(r.position))?;
    s.raw_bind_parameter(at + 4, r.role as i16)?;
    s.raw_bind_parameter(at + 5, r.event_type as i16)?;
    s.raw_bind_parameter(at + 6, &r.channel)?;
    s.raw_bind_parameter(at + 7, r.kind.map(|k| k.as_i32() as i16))?;
    s.raw_bind_parameter(at + 8, &r.counterpart)
}

/// Binds a connection delta's columns (community, member, other member,
/// sent, received, total, first, last) from parameter `at` on (SQLite).
pub(crate) fn bind_connection(
    s: &mut Statement<'_>,
    at: usize,
    d: &ConnectionDelta,
) -> rusqlite::Result<()> {
    s.raw_bind_parameter(at, &d.community_id)?;
    s.raw_bind_parameter(at + 1, &d.member_id)?;
    s.raw_bind_parameter(at + 2, &d.other_member_id)?;
    s.raw_bind_parameter(at + 3, to_db(d.sent))?;
    s.raw_bind_parameter(at + 4, to_db(d.received))?;
    s.raw_bind_parameter(at + 5, to_db(d.sent + d.received))?;
    s.raw_bind_parameter(at + 6, d.first_at.as_micros())?;
    s.raw_bind_parameter(at + 7, d.last_at.as_micros())
}

/// Which entries of a member's timeline a page reads.
#[derive(Debug, Clone, Default)]
pub struct TimelineQuery {
    pub community_id: String,
    /// The member and the members merged into it: their entries read as
    /// one timeline (exchanges among them left out, as with oneself).
    pub members: Vec<String>,
    /// Only exchanges with these members (a relationship: the other member
    /// and the members merged into it); empty: every entry.
    pub counterparts: Vec<String>,
    /// Empty: every channel.
    pub channels: Vec<String>,
    /// Empty: every kind; else only interactions of these kinds.
    pub kinds: Vec<InteractionKind>,
    /// Entries at or after this time.
    pub since: Option<Timestamp>,
    /// Entries before this time.
    pub until: Option<Timestamp>,
    /// Continue after this entry.
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// An entry of a page: the row and the event it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub role: Role,
    pub occurred_at: Timestamp,
    pub event: Event,
}

impl TimelineEntry {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            occurred_at: self.occurred_at,
            position: self.event.position,
            role: self.role,
        }
    }
}

/// Exchange counts of one kind between two members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindCount {
    pub kind: InteractionKind,
    /// By the member to the other member.
    pub sent: u64,
    /// By the other member to the member.
    pub received: u64,
}

/// One member's exchanges with another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub other_member_id: String,
    pub sent: u64,
    pub received: u64,
    pub first_at: Timestamp,
    pub last_at: Timestamp,
}

/// The SQL of a page of a member's timeline (or of a relationship), newest
/// first, as text with `$n` placeholders, which both backends read, and the
/// values to bind to them.
fn page_sql(g: u64, query: &TimelineQuery) -> (String, Vec<SqlParam>) {
    let mut params = Vec::new();
    let texts = |values: &[String]| values.iter().cloned().map(SqlParam::Text).collect();
    let community = placeholders(
        vec![SqlParam::Text(query.community_id.clone())],
        &mut params,
    );
    let members = placeholders(texts(&query.members), &mut params);
    let mut sql = format!(
        "SELECT occurred_at, position, role FROM timeline_entries_g{g} \
         WHERE community_id = {community} AND member_id IN ({members})"
    );
    if !query.counterparts.is_empty() {
        let list = placeholders(texts(&query.counterparts), &mut params);
        sql += &format!(" AND counterpart IN ({list})");
    }
    if query.members.len() > 1 {
        // An exchange between two merged members is one entry, the
        // actor's, as an interaction with oneself is.
        let target = placeholders(vec![SqlParam::Small(Role::Target as i16)], &mut params);
        let list = placeholders(texts(&query.members), &mut params);
        sql += &format!(" AND NOT (role = {target} AND counterpart IN ({list}))");
    }
    if !query.channels.is_empty() {
        let list = placeholders(texts(&query.channels), &mut params);
        sql += &format!(" AND channel IN ({list})");
    }
    if !query.kinds.is_empty() {
        let kinds = query
            .kinds
            .iter()
            .map(|k| SqlParam::Small(k.as_i32() as i16))
            .collect();
        let list = placeholders(kinds, &mut params);
        sql += &format!(" AND kind IN ({list})");
    }
    if let Some(since) = query.since {
        let since = placeholders(vec![SqlParam::Int(since.as_micros())], &mut params);
        sql += &format!(" AND occurred_at >= {since}");
    }
    if let Some(until) = query.until {
        let until = placeholders(vec![SqlParam::Int(until.as_micros())], &mut params);
        sql += &format!(" AND occurred_at < {until}");
    }
    if let Some(after) = query.after {
        let cursor = vec![
            SqlParam::Int(after.occurred_at.as_micros()),
            SqlParam::Int(to_db(after.position)),
            SqlParam::Small(after.role as i16),
        ];
        let cursor = placeholders(cursor, &mut params);
        sql += &format!(" AND (occurred_at, position, role) < ({cursor})");
    }
    let limit = placeholders(vec![SqlParam::Int(i64::from(query.limit))], &mut params);
    sql += &format!(" ORDER BY occurred_at DESC, position DESC, role DESC LIMIT {limit}");
    (sql, params)
}

/// Reads of the active timeline generation.
impl Projections {
    /// A page of a member's timeline (or of a relationship), newest first,
    /// from generation `g` (see [`Projections::wait_for`]).
    pub async fn timeline_page(
        &self,
        g: u64,
        query: &TimelineQuery,
    ) -> Result<Vec<TimelineEntry>, ProjectionError> {
        let (sql, params) = page_sql(g, query);
        let rows: Vec<(i64, i64, i16)> = match self.pool(NAME).await? {
            // A page is up to 501 rows: on SQLite they come from a rusqlite
            // reader in one hop, not one sqlx message per row.
            DbPool::Sqlite(_) => {
                self.read_sqlite(NAME, move |conn| {
                    Ok(sqlite_rows(conn, &sql, params, |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?)
                })
                .await?
            }
            DbPool::Postgres(pool) => bind_params(sqlx::query(sqlx::AssertSqlSafe(sql)), params)
                .fetch_all(&pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
                .collect::<Result<_, sqlx::Error>>()?,
        };
        let positions: Vec<u64> = rows
            .iter()
            .map(|r| from_db(r.1))
            .collect::<Result<_, _>>()?;
        let events: HashMap<u64, Event> = self
            .store
            .events_at(&positions)
            .await?
            .into_iter()
            .map(|e| (e.position, e))
            .collect();
        rows.into_iter()
            .map(|(occurred_at, position, role)| {
                let position = from_db(position)?;
                let role = Role::from_i16(role)
                    .ok_or_else(|| ProjectionError::Corrupt(format!("timeline role {role}")))?;
                let event = events.get(&position).cloned().ok_or_else(|| {
                    ProjectionError::Corrupt(format!("timeline entry for missing event {position}"))
                })?;
                Ok(TimelineEntry {
                    role,
                    occurred_at: Timestamp::from_micros(occurred_at),
                    event,
                })
            })
            .collect()
    }

    /// Every timeline row of a member, oldest first: (occurred_at micros,
    /// position, role, event type, channel, kind, counterpart).
    #[allow(clippy::type_complexity)]
    pub async fn member_timeline_rows(
        &self,
        g: u64,
        community_id: &str,
        members: &[String],
    ) -> Result<
        Vec<(
            i64,
            i64,
            i16,
            i16,
            Option<String>,
            Option<i16>,
            Option<String>,
        )>,
        ProjectionError,
    > {
        let pool = self.pool(NAME).await?;
        Ok(on_pool!(&pool, p => {
            let mut qb = QueryBuilder::new(format!(
                "SELECT occurred_at, position, role, event_type, channel, kind, counterpart \
                 FROM timeline_entries_g{g} WHERE community_id = "
            ));
            qb.push_bind(community_id.to_owned());
            push_in(&mut qb, " AND member_id IN (", members);
            qb.push(" ORDER BY occurred_at, position, role");
            qb.build_query_as().fetch_all(p).await?
        }))
    }

    /// A member's interactions as the actor: how many, the first's and the
    /// latest's times (microseconds; `None` before any).
    pub async fn member_activity(
        &self,
        g: u64,
        community_id: &str,
        members: &[String],
    ) -> Result<(u64, Option<i64>, Option<i64>), ProjectionError> {
        let pool = self.pool(NAME).await?;
        let (count, first, last): (i64, Option<i64>, Option<i64>) = on_pool!(&pool, p => {
            let mut qb = QueryBuilder::new(format!(
                "SELECT COUNT(*), MIN(occurred_at), MAX(occurred_at) FROM timeline_entries_g{g} \
                 WHERE community_id = "
            ));
            qb.push_bind(community_id.to_owned());
            push_in(&mut qb, " AND member_id IN (", members);
            qb.push(" AND role = ");
            qb.push_bind(Role::Actor as i16);
            qb.build_query_as().fetch_one(p).await?
        });
        Ok((from_db(count)?, first, last))
    }

    /// Exchange counts per kind between `members` (a member and the
    /// members merged into it) and `others` (another such group).
    pub async fn relationship_counts(
        &self,
        g: u64,
        community_id: &str,
        members: &[String],
        others: &[String],
    ) -> Result<Vec<KindCount>, ProjectionError> {
        let pool = self.pool(NAME).await?;
        let rows: Vec<(Option<i16>, i16, i64)> = on_pool!(&pool, p => {
            let mut qb = QueryBuilder::new(format!(
                "SELECT kind, role, COUNT(*) FROM timeline_entries_g{g} WHERE community_id = "
            ));
            qb.push_bind(community_id.to_owned());
            push_in(&mut qb, " AND member_id IN (", members);
            push_in(&mut qb, " AND counterpart IN (", others);
            qb.push(" GROUP BY kind, role ORDER BY kind");
            qb.build_query_as().fetch_all(p).await?
        });
        let mut counts: Vec<KindCount> = Vec::new();
        for (kind, role, count) in rows {
            let kind = kind
                .and_then(|k| InteractionKind::from_i32(i32::from(k)))
                .ok_or_else(|| ProjectionError::Corrupt(format!("timeline kind {kind:?}")))?;
            let count = from_db(count)?;
            let entry = match counts.iter_mut().find(|c| c.kind == kind) {
                Some(entry) => entry,
                None => {
                    counts.push(KindCount {
                        kind,
                        sent: 0,
                        received: 0,
                    });
                    counts.last_mut().expect("just pushed")
                }
            };
            match Role::from_i16(role) {
                Some(Role::Actor) => entry.sent += count,
                Some(Role::Target) => entry.received += count,
                _ => return Err(ProjectionError::Corrupt(format!("exchange role {role}"))),
            }
        }
        Ok(counts)
    }

    /// The members `members` (a member and the members merged into it)
    /// exchange with most, most exchanges first, ties by id. A member merged
    /// into another counts as that one: merges are read from the log's
    /// `members` (not from this model), so every connection is read and
    /// summed per member it reads as.
    pub async fn connections(
        &self,
        g: u64,
        community_id: &str,
        members: &[String],
        limit: u32,
    ) -> Result<Vec<Connection>, ProjectionError> {
        let pool = self.pool(NAME).await?;
        let rows: Vec<(String, i64, i64, i64, i64)> = on_pool!(&pool, p => {
            let mut qb = QueryBuilder::new(format!(
                "SELECT other_member_id, sent, received, first_at, last_at \
                 FROM timeline_connections_g{g} WHERE community_id = "
            ));
            qb.push_bind(community_id.to_owned());
            push_in(&mut qb, " AND member_id IN (", members);
            qb.build_query_as().fetch_all(p).await?
        });
        let others: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        let merged = self.store.merged_into(&others).await?;
        let mut by_other: HashMap<String, Connection> = HashMap::new();
        for (other, sent, received, first_at, last_at) in rows {
            let other = merged.get(&other).cloned().unwrap_or(other);
            if members.contains(&other) {
                continue;
            }
            let c = Connection {
                other_member_id: other.clone(),
                sent: from_db(sent)?,
                received: from_db(received)?,
                first_at: Timestamp::from_micros(first_at),
                last_at: Timestamp::from_micros(last_at),
            };
            by_other
                .entry(other)
                .and_modify(|e| {
                    e.sent += c.sent;
                    e.received += c.received;
                    e.first_at = e.first_at.min(c.first_at);
                    e.last_at = e.last_at.max(c.last_at);
                })
                .or_insert(c);
        }
        let mut out: Vec<Connection> = by_other.into_values().collect();
        out.sort_by(|a, b| {
            (b.sent + b.received)
                .cmp(&(a.sent + a.received))
                .then_with(|| a.other_member_id.cmp(&b.other_member_id))
        });
        out.truncate(limit as usize);
        Ok(out)
    }

    /// Every row of generation `g`'s tables in a canonical order, as text:
    /// for comparing a rebuilt model with the live one.
    pub async fn timeline_dump(&self, g: u64) -> Result<Vec<String>, ProjectionError> {
        let pool = self.pool(NAME).await?;
        let entries = format!(
            "SELECT community_id, member_id, occurred_at, position, role, event_type, channel, kind, counterpart \
             FROM timeline_entries_g{g} ORDER BY community_id, member_id, occurred_at, position, role"
        );
        let connections = format!(
            "SELECT community_id, member_id, other_member_id, sent, received, total, first_at, last_at \
             FROM timeline_connections_g{g} ORDER BY community_id, member_id, other_member_id"
        );
        let mut out = Vec::new();
        on_pool!(&pool, p => {
            for row in sqlx::query(sqlx::AssertSqlSafe(entries)).fetch_all(p).await? {
                out.push(format!(
                    "entry {} {} {} {} {} {} {:?} {:?} {:?}",
                    row.try_get::<String, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    row.try_get::<i64, _>(2)?,
                    row.try_get::<i64, _>(3)?,
                    row.try_get::<i16, _>(4)?,
                    row.try_get::<i16, _>(5)?,
                    row.try_get::<Option<String>, _>(6)?,
                    row.try_get::<Option<i16>, _>(7)?,
                    row.try_get::<Option<String>, _>(8)?,
                ));
            }
            for row in sqlx::query(sqlx::AssertSqlSafe(connections)).fetch_all(p).await? {
                out.push(format!(
                    "connection {} {} {} {} {} {} {} {}",
                    row.try_get::<String, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    row.try_get::<String, _>(2)?,
                    row.try_get::<i64, _>(3)?,
                    row.try_get::<i64, _>(4)?,
                    row.try_get::<i64, _>(5)?,
                    row.try_get::<i64, _>(6)?,
                    row.try_get::<i64, _>(7)?,
                ));
            }
        });
        Ok(out)
    }
}
