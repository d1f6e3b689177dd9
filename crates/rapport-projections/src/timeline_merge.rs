//! SQLite: the end of a timeline generation's bulk build
//! ([`crate::timeline::Timeline::finish_bulk`]), by merging sorted runs.
//!
//! Each bulk batch appends its rows to the staging table sorted by the
//! entries' key, one run, and records where the run ends in
//! `timeline_runs_g`. Merging the runs yields every row in key order while
//! reading each row once, so the entries' clustered b-tree is written page
//! after page, and a member's connections are summed while its rows go by.
//! SQLite's own sort of the whole staging table (`INSERT … SELECT … ORDER
//! BY`, then a `GROUP BY` over the result) took 106–113 s of a 10 million
//! interaction rebuild where this takes 83–89 s, most of it in its sorter,
//! which spills and re-merges the full rows (docs/performance.md,
//! "Timeline rebuild at 10 M on SQLite, again").
//!
//! A merge reads at most `fan_in` runs at once ([`READ_AHEAD`] rows of
//! each in memory); with more runs than that, groups of runs are first
//! merged into longer runs in a second staging table.
//!
//! The last merge reads the runs on a thread with a connection of its own
//! while the end's transaction inserts what it merged ([`pipeline`]): on
//! two cores, reading and inserting overlap.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use rapport_domain::timeline::{ConnectionDelta, Role, TimelineRow};
use rapport_domain::{EventType, InteractionKind, Timestamp};
use rapport_store::from_db;
use rusqlite::{Connection, OpenFlags, Statement};

use crate::sqlite_pass::driver;
use crate::timeline::{ENTRY_COLUMNS, bind_connection, bind_entry};

/// Runs one merge reads at once: 10 M interactions make about 1,040 runs
/// of a 10,000-event bulk batch, merged in one pass holding at most
/// 4,096 × [`READ_AHEAD`] rows (about 40 MB).
pub(crate) const FAN_IN: usize = 4_096;

/// The staging table where bulk batches append their runs.
pub(crate) fn staging(g: u64) -> String {
    format!("timeline_staging_g{g}")
}

/// The table of the staging runs' ends.
pub(crate) fn runs(g: u64) -> String {
    format!("timeline_runs_g{g}")
}

/// Appends a bulk batch's rows to the staging table as one run, sorted by
/// key, inside the batch's transaction (no rows: no run). Through
/// rusqlite: sqlx's SQLite driver spent a third of the bulk phase binding
/// values and handing them to its worker thread.
pub(crate) fn stage_run(
    conn: &Connection,
    g: u64,
    mut rows: Vec<TimelineRow>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
    let mut insert = Appender::entries(conn, &staging(g))?;
    for row in rows {
        insert.push(row)?;
    }
    insert.flush()?;
    drop(insert);
    conn.execute_batch(&end_run_sql(g)).map_err(driver)
}

/// Records that the staging rows up to the last one appended end a run
/// (inside the batch's transaction, after its rows).
fn end_run_sql(g: u64) -> String {
    format!(
        "INSERT INTO {} (last_rowid) SELECT MAX(rowid) FROM {}",
        runs(g),
        staging(g)
    )
}

/// Moves the staged runs into the entries table in key order, fills the
/// connections, and drops the staging tables.
pub(crate) fn finish(conn: &Connection, g: u64, fan_in: usize) -> Result<Finished, sqlx::Error> {
    let staging = staging(g);
    let mut ends: Vec<i64> = {
        let mut statement = conn
            .prepare(&format!(
                "SELECT last_rowid FROM {} ORDER BY last_rowid",
                runs(g)
            ))
            .map_err(driver)?;
        statement
            .query_map([], |r| r.get(0))
            .map_err(driver)?
            .collect::<Result<_, _>>()
            .map_err(driver)?
    };
    // Rows are only ever appended (rowids 1, 2, …), each batch's as a run:
    // the last run must end at the last row, or rows would be left out.
    let last: Option<i64> = conn
        .query_row(&format!("SELECT MAX(rowid) FROM {staging}"), [], |r| {
            r.get(0)
        })
        .map_err(driver)?;
    if last != ends.last().copied() {
        return Err(sqlx::Error::Protocol(format!(
            "{staging}: its rows end at {last:?} but its runs at {:?}",
            ends.last()
        )));
    }

    let mut premerged = false;
    while ends.len() > fan_in {
        premerged = true;
        let merged = format!("timeline_merged_g{g}");
        conn.execute_batch(&format!(
            "CREATE TABLE {merged} AS SELECT {ENTRY_COLUMNS} FROM {staging} WHERE 0"
        ))
        .map_err(driver)?;
        let mut longer = Vec::with_capacity(ends.len().div_ceil(fan_in));
        {
            let mut insert = Appender::entries(conn, &merged)?;
            let mut start = 0;
            for group in ends.chunks(fan_in) {
                let bounds = run_bounds(start, group);
                merge(conn, &staging, &bounds, |row| insert.push(row))?;
                insert.flush()?;
                longer.push(conn.last_insert_rowid());
                start = *group.last().expect("chunks are not empty");
            }
        }
        conn.execute_batch(&format!(
            "DROP TABLE {staging}; ALTER TABLE {merged} RENAME TO {staging}"
        ))
        .map_err(driver)?;
        ends = longer;
    }

    let bounds = run_bounds(0, &ends);
    let mut insert = Appender::entries(conn, &format!("timeline_entries_g{g}"))?;
    let mut connections = Appender::new(
        conn,
        &format!(
            "timeline_connections_g{g} (community_id, member_id, other_member_id, \
             sent, received, total, first_at, last_at)"
        ),
        8,
        bind_connection,
    )?;
    let mut moved = 0;
    let mut write = |chunk: Chunk| -> Result<(), sqlx::Error> {
        moved += chunk.entries.len() as i64;
        for row in chunk.entries {
            insert.push(row)?;
        }
        for delta in chunk.connections {
            connections.push(delta)?;
        }
        Ok(())
    };
    // Longer runs made above are this transaction's own: only the
    // committed staging table can be read on another connection.
    let pipelined = match reader_path(conn).filter(|_| !premerged) {
        Some(path) => {
            pipeline(&path, &staging, &bounds, &mut write)?;
            true
        }
        None => {
            chunks(conn, &staging, &bounds, &mut write)?;
            false
        }
    };
    insert.flush()?;
    connections.flush()?;
    if moved != last.unwrap_or(0) {
        return Err(sqlx::Error::Protocol(format!(
            "{staging}: merged {moved} rows of {last:?}"
        )));
    }
    drop((insert, connections));
    conn.execute_batch(&format!("DROP TABLE {staging}; DROP TABLE {}", runs(g)))
        .map_err(driver)?;
    Ok(Finished {
        rows: moved,
        pipelined,
    })
}

/// What [`finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finished {
    /// Rows moved into the entries table.
    pub rows: i64,
    /// Whether the runs were read and merged on a thread of their own.
    pub pipelined: bool,
}

/// Merged rows on their way to the writer, and the connections of the
/// members whose rows they end.
#[derive(Default)]
struct Chunk {
    entries: Vec<TimelineRow>,
    connections: Vec<ConnectionDelta>,
}

/// Chunks in flight between the merging thread and the writer: enough
/// that neither waits on the other's hiccups, a few MB at most.
const PIPELINE_DEPTH: usize = 16;

/// The file `conn`'s main database lives in, if it has one another
/// connection can open (not an in-memory database).
fn reader_path(conn: &Connection) -> Option<String> {
    conn.path().filter(|p| !p.is_empty()).map(str::to_owned)
}

/// Reads and merges the committed runs of `table` on a thread with a
/// connection of its own, while `write` inserts on this one.
///
/// The end of a bulk build is the longest single step of a rebuild (a
/// minute at 10 M interactions) and ran on one core of two: reading the
/// runs, decoding their rows and merging them took about a third of the
/// merge (43 s → 28 s at 10 M on two threads; docs/performance.md, "The
/// timeline's merge on two threads"). The reader sees the staging table as the bulk batches
/// committed it; nothing else writes to a generation while it is built.
fn pipeline(
    path: &str,
    table: &str,
    runs: &[(i64, i64)],
    mut write: impl FnMut(Chunk) -> Result<(), sqlx::Error>,
) -> Result<(), sqlx::Error> {
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Chunk>(PIPELINE_DEPTH);
        let reader = std::thread::Builder::new()
            .name("timeline-merge".into())
            .spawn_scoped(scope, move || -> Result<(), sqlx::Error> {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(driver)?;
                // A checkpoint resetting the WAL can hold a new reader off
                // for a moment: wait, as every other connection does.
                conn.busy_timeout(std::time::Duration::from_secs(30))
                    .map_err(driver)?;
                // Runs are read a few pages at a time each, a thousand of
                // them in turn: keep their pages (the writer's size; the
                // process's SQLite heap limit bounds all caches together).
                conn.pragma_update(None, "cache_size", -65_536)
                    .map_err(driver)?;
                // One snapshot for the whole merge.
                conn.execute_batch("BEGIN").map_err(driver)?;
                chunks(&conn, table, runs, |chunk| {
                    send.send(chunk).map_err(|_| {
                        sqlx::Error::Protocol("the timeline merge's writer stopped".into())
                    })
                })
            })
            .map_err(sqlx::Error::Io)?;
        let mut written = Ok(());
        for chunk in &receive {
            written = write(chunk);
            if written.is_err() {
                break;
            }
        }
        // Hang up first: a reader blocked on a full channel then fails
        // instead of waiting for a writer that has stopped.
        drop(receive);
        let read = reader.join().unwrap_or_else(|_| {
            Err(sqlx::Error::Protocol(
                "the timeline merge's reader panicked".into(),
            ))
        });
        // The writer's own error says more than the reader's "stopped".
        written.and(read)
    })
}

/// Merges `runs` of `table` and passes the rows on in chunks of
/// [`APPEND_CHUNK`], each with the connections of the members whose last
/// row it holds (a member's rows come together, in key order).
fn chunks(
    conn: &Connection,
    table: &str,
    runs: &[(i64, i64)],
    mut each: impl FnMut(Chunk) -> Result<(), sqlx::Error>,
) -> Result<(), sqlx::Error> {
    let mut connections = Connections::default();
    let mut chunk = Chunk::default();
    merge(conn, table, runs, |row| {
        connections.add(&row, &mut chunk.connections);
        chunk.entries.push(row);
        if chunk.entries.len() == APPEND_CHUNK {
            each(std::mem::take(&mut chunk))?;
        }
        Ok(())
    })?;
    connections.flush(&mut chunk.connections);
    if !chunk.entries.is_empty() || !chunk.connections.is_empty() {
        each(chunk)?;
    }
    Ok(())
}

/// (first rowid, last rowid) of each run, the first starting after `start`.
fn run_bounds(start: i64, ends: &[i64]) -> Vec<(i64, i64)> {
    let mut first = start + 1;
    ends.iter()
        .map(|&end| {
            let bounds = (first, end);
            first = end + 1;
            bounds
        })
        .collect()
}

/// Calls `each` with the rows of `runs` (each sorted by key) in key order.
///
/// Each run is read [`READ_AHEAD`] rows at a time by a statement that is
/// done before the next one starts, not through a cursor of its own kept
/// open: SQLite walks every open cursor of the connection whenever a
/// statement opens one (each insert does), and with a thousand runs that
/// walk made the merge four times slower than SQLite's own sort.
fn merge(
    conn: &Connection,
    table: &str,
    runs: &[(i64, i64)],
    mut each: impl FnMut(TimelineRow) -> Result<(), sqlx::Error>,
) -> Result<(), sqlx::Error> {
    let mut read = conn
        .prepare(&format!(
            "SELECT rowid, {ENTRY_COLUMNS} FROM {table} WHERE rowid BETWEEN ?1 AND ?2 \
             ORDER BY rowid LIMIT {READ_AHEAD}"
        ))
        .map_err(driver)?;
    let mut runs: Vec<Run> = runs
        .iter()
        .map(|&(first, last)| Run {
            next: first,
            last,
            ahead: VecDeque::new(),
        })
        .collect();
    // The smallest row of every run not yet passed on; ties (none in a
    // valid model: keys are unique) go to the earlier run.
    let mut heads = BinaryHeap::with_capacity(runs.len());
    for (i, run) in runs.iter_mut().enumerate() {
        if let Some(row) = run.pop(&mut read)? {
            heads.push(Reverse(Head { row, run: i }));
        }
    }
    while let Some(Reverse(Head { row, run })) = heads.pop() {
        each(row)?;
        if let Some(row) = runs[run].pop(&mut read)? {
            heads.push(Reverse(Head { row, run }));
        }
    }
    Ok(())
}

/// Rows a merge reads from a run at a time: at most this many rows of
/// each run are held in memory.
const READ_AHEAD: usize = 64;

/// A run being merged: the rows read ahead, and the rowids left.
struct Run {
    next: i64,
    last: i64,
    ahead: VecDeque<TimelineRow>,
}

impl Run {
    fn pop(&mut self, read: &mut Statement<'_>) -> Result<Option<TimelineRow>, sqlx::Error> {
        if self.ahead.is_empty() && self.next <= self.last {
            let mut rows = read.query([self.next, self.last]).map_err(driver)?;
            while let Some(r) = rows.next().map_err(driver)? {
                let rowid: i64 = r.get(0).map_err(driver)?;
                self.ahead.push_back(row_from(r, 1)?);
                self.next = rowid + 1;
            }
            if self.ahead.is_empty() {
                // Nothing left in the range (rowids need not be dense).
                self.next = self.last + 1;
            }
        }
        Ok(self.ahead.pop_front())
    }
}

/// A run's next row, ordered by key, then by run.
struct Head {
    row: TimelineRow,
    run: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.row.key(), self.run).cmp(&(other.row.key(), other.run))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

/// The row of [`ENTRY_COLUMNS`] starting at column `at`.
fn row_from(r: &rusqlite::Row<'_>, at: usize) -> Result<TimelineRow, sqlx::Error> {
    let decode = |what: String| sqlx::Error::Decode(what.into());
    let role: i16 = r.get(at + 4).map_err(driver)?;
    let event_type: i16 = r.get(at + 5).map_err(driver)?;
    let kind: Option<i16> = r.get(at + 7).map_err(driver)?;
    Ok(TimelineRow {
        community_id: r.get(at).map_err(driver)?,
        member_id: r.get(at + 1).map_err(driver)?,
        occurred_at: Timestamp::from_micros(r.get(at + 2).map_err(driver)?),
        position: from_db(r.get(at + 3).map_err(driver)?)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        role: Role::from_i16(role).ok_or_else(|| decode(format!("timeline role {role}")))?,
        event_type: EventType::from_i32(event_type.into())
            .ok_or_else(|| decode(format!("event type {event_type}")))?,
        channel: r.get(at + 6).map_err(driver)?,
        kind: kind
            .map(|k| {
                InteractionKind::from_i32(k.into())
                    .ok_or_else(|| decode(format!("interaction kind {k}")))
            })
            .transpose()?,
        counterpart: r.get(at + 8).map_err(driver)?,
    })
}

/// Rows inserted [`APPEND_CHUNK`] to a statement. A statement opens its
/// b-tree cursor once, and an insert just after that cursor's last one
/// appends without a search from the root; one statement per row would
/// search every time.
struct Appender<'c, T> {
    conn: &'c Connection,
    /// `table (columns)`.
    into: String,
    columns: usize,
    bind: fn(&mut Statement<'_>, usize, &T) -> rusqlite::Result<()>,
    full: Statement<'c>,
    pending: Vec<T>,
}

/// Rows per insert statement: 1,000 × 9 parameters, within SQLite's limit
/// of 32,766.
const APPEND_CHUNK: usize = 1_000;

impl<'c> Appender<'c, TimelineRow> {
    fn entries(conn: &'c Connection, table: &str) -> Result<Self, sqlx::Error> {
        Appender::new(conn, &format!("{table} ({ENTRY_COLUMNS})"), 9, bind_entry)
    }
}

impl<'c, T> Appender<'c, T> {
    fn new(
        conn: &'c Connection,
        into: &str,
        columns: usize,
        bind: fn(&mut Statement<'_>, usize, &T) -> rusqlite::Result<()>,
    ) -> Result<Self, sqlx::Error> {
        Ok(Appender {
            conn,
            into: into.to_owned(),
            columns,
            bind,
            full: conn
                .prepare(&insert_sql(into, columns, APPEND_CHUNK))
                .map_err(driver)?,
            pending: Vec::with_capacity(APPEND_CHUNK),
        })
    }

    fn push(&mut self, row: T) -> Result<(), sqlx::Error> {
        self.pending.push(row);
        if self.pending.len() == APPEND_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), sqlx::Error> {
        let mut short;
        let statement = match self.pending.len() {
            0 => return Ok(()),
            APPEND_CHUNK => &mut self.full,
            n => {
                short = self
                    .conn
                    .prepare(&insert_sql(&self.into, self.columns, n))
                    .map_err(driver)?;
                &mut short
            }
        };
        for (i, row) in self.pending.iter().enumerate() {
            (self.bind)(statement, i * self.columns + 1, row).map_err(driver)?;
        }
        statement.raw_execute().map_err(driver)?;
        self.pending.clear();
        Ok(())
    }
}

fn insert_sql(into: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!("INSERT INTO {into} VALUES {}", vec![row; rows].join(", "))
}

/// One member's connections, summed while its rows go by (they come
/// together, in key order), passed on when the next member's rows begin.
#[derive(Default)]
struct Connections {
    member: Option<(String, String)>,
    pending: BTreeMap<String, ConnectionDelta>,
}

impl Connections {
    fn add(&mut self, row: &TimelineRow, done: &mut Vec<ConnectionDelta>) {
        let same = self
            .member
            .as_ref()
            .is_some_and(|(c, m)| *c == row.community_id && *m == row.member_id);
        if !same {
            self.flush(done);
            self.member = Some((row.community_id.clone(), row.member_id.clone()));
        }
        if let Some(delta) = ConnectionDelta::of_row(row) {
            match self.pending.get_mut(&delta.other_member_id) {
                Some(d) => d.absorb(&delta),
                None => {
                    self.pending.insert(delta.other_member_id.clone(), delta);
                }
            }
        }
    }

    /// Passes on the current member's connections, in key order.
    fn flush(&mut self, done: &mut Vec<ConnectionDelta>) {
        done.extend(std::mem::take(&mut self.pending).into_values());
    }
}

#[cfg(test)]
mod tests {
    use rapport_domain::timeline::connection_deltas;
    use rapport_store::to_db;

    use super::*;
    use crate::Projection;
    use crate::timeline::Timeline;

    const G: u64 = 7;

    /// A generation's tables, as a bulk build creates them on SQLite.
    fn tables() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for ddl in Timeline.create_tables(G, false) {
            conn.execute_batch(&ddl).unwrap();
        }
        conn
    }

    /// Rows spread over members, times and roles, keys unique (one position
    /// each), from a fixed seed.
    fn rows(n: u64) -> Vec<TimelineRow> {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        (1..=n)
            .map(|position| {
                let member = next(9);
                let (role, counterpart) = match next(3) {
                    0 => (
                        Role::Actor,
                        Some(format!("m{}", (member + 1 + next(8)) % 9)),
                    ),
                    1 => (
                        Role::Target,
                        Some(format!("m{}", (member + 1 + next(8)) % 9)),
                    ),
                    _ => (Role::Subject, None),
                };
                TimelineRow {
                    community_id: format!("c{}", next(2)),
                    member_id: format!("m{member}"),
                    occurred_at: Timestamp::from_micros(next(50) as i64),
                    position,
                    role,
                    event_type: EventType::InteractionRecorded,
                    channel: Some("forum".into()),
                    kind: counterpart.as_ref().map(|_| InteractionKind::Reply),
                    counterpart,
                }
            })
            .collect()
    }

    /// Appends `rows` as bulk batches do, each chunk a run.
    fn stage(conn: &Connection, rows: &[TimelineRow], run: usize) {
        for chunk in rows.chunks(run) {
            stage_run(conn, G, chunk.to_vec()).unwrap();
        }
    }

    /// A generation's tables in a database file (WAL, as the server keeps
    /// it), with `rows` staged and committed in runs of 37.
    fn staged_file(path: &std::path::Path, rows: &[TimelineRow]) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        for ddl in Timeline.create_tables(G, false) {
            conn.execute_batch(&ddl).unwrap();
        }
        stage(&conn, rows, 37);
        conn
    }

    fn entries(conn: &Connection) -> Vec<TimelineRow> {
        let mut statement = conn
            .prepare(&format!(
                "SELECT {ENTRY_COLUMNS} FROM timeline_entries_g{G}"
            ))
            .unwrap();
        let mut rows = statement.query([]).unwrap();
        let mut all = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            all.push(row_from(r, 0).unwrap());
        }
        all
    }

    /// (community, member, other member, [sent, received, total, first, last]).
    type ConnectionRow = (String, String, String, [i64; 5]);

    fn connections(conn: &Connection) -> Vec<ConnectionRow> {
        let mut statement = conn
            .prepare(&format!(
                "SELECT community_id, member_id, other_member_id, sent, received, total, \
                 first_at, last_at FROM timeline_connections_g{G}"
            ))
            .unwrap();
        statement
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?],
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn merged_runs_are_the_entries_in_key_order_and_their_connections() {
        let all = rows(1_000);
        // Runs of 37 rows (28 of them) merged 3 at a time: two passes
        // through longer runs before the last one.
        for (run, fan_in) in [(37, 3), (37, FAN_IN), (1_000, 3)] {
            let conn = tables();
            stage(&conn, &all, run);
            finish(&conn, G, fan_in).unwrap();

            let mut expected = all.clone();
            expected.sort_by(|a, b| a.key().cmp(&b.key()));
            assert_eq!(entries(&conn), expected, "runs of {run}, fan-in {fan_in}");
            let expected: Vec<_> = connection_deltas(&all)
                .into_iter()
                .map(|d| {
                    (
                        d.community_id,
                        d.member_id,
                        d.other_member_id,
                        [
                            to_db(d.sent),
                            to_db(d.received),
                            to_db(d.sent + d.received),
                            d.first_at.as_micros(),
                            d.last_at.as_micros(),
                        ],
                    )
                })
                .collect();
            assert!(!expected.is_empty());
            assert_eq!(
                connections(&conn),
                expected,
                "runs of {run}, fan-in {fan_in}"
            );
            // Only the generation's read tables are left.
            let left: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(
                left,
                [
                    format!("timeline_connections_g{G}"),
                    format!("timeline_entries_g{G}")
                ]
            );
        }
    }

    #[test]
    fn staged_rows_outside_every_run_are_refused_not_dropped() {
        let all = rows(100);
        let conn = tables();
        stage(&conn, &all[..90], 30);
        // Appended without ending a run (as a build begun by code that
        // staged no runs would have left them).
        let mut insert = Appender::entries(&conn, &staging(G)).unwrap();
        for row in &all[90..] {
            insert.push(row.clone()).unwrap();
        }
        insert.flush().unwrap();
        let error = finish(&conn, G, FAN_IN).unwrap_err().to_string();
        assert!(
            error.contains("its rows end at Some(100) but its runs at Some(90)"),
            "{error}"
        );
    }

    #[test]
    fn a_file_database_merges_on_a_thread_of_its_own_with_the_same_result() {
        let all = rows(5_000);
        let expected = |conn: &Connection| (entries(conn), connections(conn));
        // The same runs finished in memory (inline) and in a file (the
        // runs read on another connection), each as the runner does: the
        // bulk batches committed, the end in a transaction of its own.
        let memory = tables();
        stage(&memory, &all, 37);
        let inline = finish(&memory, G, FAN_IN).unwrap();
        assert_eq!(
            inline,
            Finished {
                rows: 5_000,
                pipelined: false
            }
        );

        let dir = tempfile::tempdir().unwrap();
        let conn = staged_file(&dir.path().join("timeline.db"), &all);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let piped = finish(&conn, G, FAN_IN).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        assert_eq!(
            piped,
            Finished {
                rows: 5_000,
                pipelined: true
            }
        );
        assert_eq!(expected(&conn), expected(&memory));

        // Runs merged into longer ones first are this transaction's own:
        // read on the writer's connection.
        let conn = staged_file(&dir.path().join("premerged.db"), &all);
        let premerged = finish(&conn, G, 3).unwrap();
        assert_eq!(
            premerged,
            Finished {
                rows: 5_000,
                pipelined: false
            }
        );
        assert_eq!(expected(&conn), expected(&memory));
    }

    #[test]
    fn a_writer_that_fails_stops_the_merging_thread() {
        let all = rows(5_000);
        let dir = tempfile::tempdir().unwrap();
        let conn = staged_file(&dir.path().join("timeline.db"), &all);
        let runs: Vec<i64> = conn
            .prepare(&format!("SELECT last_rowid FROM {} ORDER BY 1", runs(G)))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut chunks = 0;
        let error = pipeline(
            conn.path().unwrap(),
            &staging(G),
            &run_bounds(0, &runs),
            |_| {
                chunks += 1;
                Err(sqlx::Error::Protocol("disk full".into()))
            },
        )
        .unwrap_err();
        // The writer's error, after one chunk, and no thread left waiting
        // on a full channel (this returned).
        assert_eq!(
            error.to_string(),
            "encountered unexpected or invalid data: disk full"
        );
        assert_eq!(chunks, 1);
    }
}
