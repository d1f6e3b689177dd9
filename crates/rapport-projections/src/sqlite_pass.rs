//! Whole-community passes over the scores' activity rows on SQLite, through
//! rusqlite rather than sqlx: a policy change re-folds every member of the
//! community ([`refold_community`]; so does the end of a bulk build), a
//! preview folds every member under a candidate policy; both read through
//! [`for_each_chunk`]. At 10 million
//! interactions each pass reads 10 million rows, and sqlx's SQLite driver
//! hands every row to another thread and copies every value under a mutex,
//! which was most of their time (docs/performance.md, "Re-scoring and previews on SQLite").
//!
//! The re-fold runs on the projector's own connection, inside its open
//! transaction, through the raw handle sqlx lends ([`on_sqlx_connection`]):
//! it must see the batch's uncommitted activity rows and write in the same
//! transaction as the checkpoint. It folds on a second thread while this
//! one reads and writes, so a pass uses both cores.
//!
//! A live batch's lookups and writes go the same way ([`lookup`],
//! [`RowWriter`]), row by row with single-row statements prepared once per
//! call. Multi-row statements (a value list, a row-value `IN` list) were
//! parsed and planned again for nearly every batch, since each batch has
//! lengths of its own and sqlx keeps a hundred statements per connection,
//! and sqlx copied every bound value and every row across to its worker
//! thread (docs/performance.md, "Live projector batches on SQLite, row by row").

use std::sync::mpsc;

use rapport_domain::policy::Policy;
use rusqlite::{Connection, OptionalExtension};
use sqlx::SqliteConnection;

use crate::scores::{
    ACTIVITY_COLUMNS, ActivityTuple, FoldRows, MemberChunk, MemberChunks, Refold, activity_from,
};

/// A rusqlite error as the projector's error type.
pub(crate) fn driver(e: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::AnyDriverError(Box::new(e))
}

/// Runs `work` with a rusqlite connection over `conn`'s handle, in its
/// current transaction.
///
/// `work` runs to completion within this call, on this thread: the handle
/// stays locked out of sqlx's worker thread for as long as the borrowed
/// connection exists, and a cancelled future cannot leave it in use. On a
/// multi-threaded runtime (the server's) the other tasks move to other
/// workers meanwhile; a current-thread runtime (tests) has none to move to.
pub(crate) async fn on_sqlx_connection<T>(
    conn: &mut SqliteConnection,
    work: impl FnOnce(&Connection) -> Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    let mut locked = conn.lock_handle().await?;
    let raw = locked.as_raw_handle();
    let run = || {
        // SAFETY: `locked` guarantees sqlx makes no call on this handle
        // while it lives, and it outlives `borrowed`, which is dropped at
        // the end of this closure. `from_handle` does not take ownership:
        // dropping it finalizes only its own statements, never the handle.
        let borrowed = unsafe { Connection::from_handle(raw.as_ptr()) }.map_err(driver)?;
        work(&borrowed)
    };
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
        _ => run(),
    }
}

/// Calls `each` with every member of `community` and their activities, in
/// the model's canonical order (member, time, position), in chunks of whole
/// members ([`MemberChunks`]): one statement, so one consistent snapshot.
pub(crate) fn for_each_chunk(
    conn: &Connection,
    g: u64,
    community: &str,
    mut each: impl FnMut(MemberChunk) -> Result<(), sqlx::Error>,
) -> Result<(), sqlx::Error> {
    let mut statement = conn
        .prepare(&format!(
            "SELECT {ACTIVITY_COLUMNS} FROM score_activity_g{g} WHERE community_id = ?1 \
             ORDER BY member_id, at, position"
        ))
        .map_err(driver)?;
    let mut rows = statement.query([community]).map_err(driver)?;
    let mut chunks = MemberChunks::default();
    while let Some(row) = rows.next().map_err(driver)? {
        let tuple: ActivityTuple = (
            row.get(0).map_err(driver)?,
            row.get(1).map_err(driver)?,
            row.get(2).map_err(driver)?,
            row.get(3).map_err(driver)?,
            row.get(4).map_err(driver)?,
            row.get(5).map_err(driver)?,
            row.get(6).map_err(driver)?,
            row.get(7).map_err(driver)?,
        );
        let (member, activity) = activity_from(tuple)?;
        if let Some(full) = chunks.push(member, activity) {
            each(full)?;
        }
    }
    match chunks.finish() {
        Some(last) => each(last),
        None => Ok(()),
    }
}

/// Deletes the community's rows `refold` rewrites ([`Refold::tables`]) and
/// folds every member again under `policy`: the rows of the folds
/// (`FoldRows::of_chunk`), as on PostgreSQL (`pg_pass`); a test of each
/// holds them to the folds.
pub(crate) fn refold_community(
    conn: &Connection,
    g: u64,
    community: &str,
    policy: &Policy,
    refold: Refold,
) -> Result<(), sqlx::Error> {
    for table in refold.tables() {
        conn.execute(
            &format!("DELETE FROM score_{table}_g{g} WHERE community_id = ?1"),
            [community],
        )
        .map_err(driver)?;
    }
    let mut writer = RowWriter::new(conn, g)?;
    std::thread::scope(|scope| {
        // Two chunks in flight at most: memory stays bounded by the
        // chunk size whichever side is slower.
        let (jobs, queued) = mpsc::sync_channel::<MemberChunk>(2);
        let (fold_done, folded) = mpsc::channel::<FoldRows>();
        scope.spawn(move || {
            for chunk in queued {
                let rows = FoldRows::of_chunk(community, &chunk, policy, refold.pairs());
                if fold_done.send(rows).is_err() {
                    return;
                }
            }
        });
        let folder_gone = || sqlx::Error::Protocol("the re-fold thread stopped".into());
        for_each_chunk(conn, g, community, |chunk| {
            jobs.send(chunk).map_err(|_| folder_gone())?;
            while let Ok(rows) = folded.try_recv() {
                writer.write(&rows)?;
            }
            Ok(())
        })?;
        drop(jobs);
        for rows in folded {
            writer.write(&rows)?;
        }
        Ok(())
    })
}

/// Looks each key up with one single-row statement, `sql` with the key's
/// values as `?1, ?2, ...`; keys without a row are left out.
pub(crate) fn lookup<'a, K, V, const N: usize>(
    conn: &Connection,
    sql: &str,
    keys: impl IntoIterator<Item = (K, [&'a str; N])>,
    value: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<V>,
) -> Result<Vec<(K, V)>, sqlx::Error> {
    let mut statement = conn.prepare_cached(sql).map_err(driver)?;
    let mut found = Vec::new();
    for (key, params) in keys {
        if let Some(v) = statement
            .query_row(rusqlite::params_from_iter(params), &value)
            .optional()
            .map_err(driver)?
        {
            found.push((key, v));
        }
    }
    Ok(found)
}

/// Writes [`FoldRows`] with cached single-row statements: SQLite runs a
/// prepared insert in microseconds, and there are no binds to build. States
/// and exchange pairs are upserts (a live batch moves existing ones; a
/// re-fold has deleted the community's rows first); tier changes and
/// snapshots are only ever added.
pub(crate) struct RowWriter<'c> {
    states: rusqlite::CachedStatement<'c>,
    tiers: rusqlite::CachedStatement<'c>,
    snapshots: rusqlite::CachedStatement<'c>,
    pairs: rusqlite::CachedStatement<'c>,
}

impl<'c> RowWriter<'c> {
    pub(crate) fn new(conn: &'c Connection, g: u64) -> Result<Self, sqlx::Error> {
        let prepare = |sql: String| conn.prepare_cached(&sql).map_err(driver);
        Ok(RowWriter {
            states: prepare(format!(
                "INSERT INTO score_states_g{g} (community_id, channel, member_id, state, at, \
                 bound, tier) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (community_id, channel, member_id) DO UPDATE SET \
                 state = excluded.state, at = excluded.at, bound = excluded.bound, \
                 tier = excluded.tier"
            ))?,
            tiers: prepare(format!(
                "INSERT INTO score_tiers_g{g} (community_id, member_id, at, position, from_tier, \
                 to_tier) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ))?,
            snapshots: prepare(format!(
                "INSERT INTO score_snapshots_g{g} (community_id, member_id, day, state) \
                 VALUES (?1, ?2, ?3, ?4)"
            ))?,
            pairs: prepare(format!(
                "INSERT INTO score_pairs_g{g} (community_id, member_id, channel, \
                 other_member_id, last_day) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (community_id, member_id, channel, other_member_id) \
                 DO UPDATE SET last_day = excluded.last_day"
            ))?,
        })
    }

    pub(crate) fn write(&mut self, rows: &FoldRows) -> Result<(), sqlx::Error> {
        // In order: a pair named twice keeps its last day.
        for (((community, channel, member), other), day) in &rows.exchanges {
            self.pairs
                .execute(rusqlite::params![community, member, channel, other, day])
                .map_err(driver)?;
        }
        for (community, member, change) in &rows.tiers {
            self.tiers
                .execute(rusqlite::params![
                    community,
                    member,
                    change.at.as_micros(),
                    rapport_store::to_db(change.position),
                    change.from.as_i32() as i16,
                    change.to.as_i32() as i16,
                ])
                .map_err(driver)?;
        }
        for (community, member, day, state) in &rows.snapshots {
            self.snapshots
                .execute(rusqlite::params![community, member, day, state])
                .map_err(driver)?;
        }
        for row in &rows.states {
            let (community, channel, member) = &row.key;
            self.states
                .execute(rusqlite::params![
                    community, channel, member, row.state, row.at, row.bound, row.tier
                ])
                .map_err(driver)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use rapport_domain::policy::Policy;
    use rapport_domain::score::Activity;
    use rusqlite::Connection;

    use super::*;
    use crate::Projection;
    use crate::pass_fixtures::{Rows, community, expected};
    use crate::scores::{ALL_CHANNELS, REFOLD_CHUNK, Scores};

    fn insert(conn: &Connection, community: &str, members: &BTreeMap<String, Vec<Activity>>) {
        let mut insert = conn
            .prepare(
                "INSERT INTO score_activity_g1 (community_id, member_id, at, position, kind, \
                 channel, incentivized, positive, other_member_id, origin_member_id, \
                 other_origin_member_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?2, ?9)",
            )
            .expect("prepare");
        for (member, activities) in members {
            for a in activities {
                insert
                    .execute(rusqlite::params![
                        community,
                        member,
                        a.at.as_micros(),
                        a.position as i64,
                        a.kind.as_i32(),
                        a.channel,
                        a.incentivized as i64,
                        a.positive as i64,
                        a.other_member,
                    ])
                    .expect("insert");
            }
        }
    }

    fn stored(conn: &Connection) -> Rows {
        let all = |sql: &str| conn.prepare(sql).expect("prepare");
        let states = all(
            "SELECT community_id, channel, member_id, state, at, bound, tier \
             FROM score_states_g1",
        )
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get::<_, f64>(5)?.to_bits(),
                r.get(6)?,
            ))
        })
        .expect("states")
        .collect::<Result<_, _>>()
        .expect("states");
        let tiers = all(
            "SELECT community_id, member_id, at, position, from_tier, to_tier \
             FROM score_tiers_g1",
        )
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .expect("tiers")
        .collect::<Result<_, _>>()
        .expect("tiers");
        let snapshots = all("SELECT community_id, member_id, day, state FROM score_snapshots_g1")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("snapshots")
            .collect::<Result<_, _>>()
            .expect("snapshots");
        (states, tiers, snapshots)
    }

    /// Every member folded once, across chunk boundaries and the pipeline's
    /// two threads, with exactly the rows the folds give; stale rows of the
    /// community gone, another community's untouched.
    #[test]
    fn a_refold_writes_every_members_folds_and_only_the_communitys() {
        let conn = Connection::open_in_memory().expect("open");
        for sql in Scores.create_tables(1, false) {
            conn.execute(&sql, []).expect("create");
        }
        let acme = community(2 * REFOLD_CHUNK + 37);
        let other = community(3);
        insert(&conn, "acme", &acme);
        insert(&conn, "other", &other);
        let policy = Policy::default();
        refold_community(&conn, 1, "other", &policy, Refold::Policy).expect("refold other");
        conn.execute(
            "INSERT INTO score_states_g1 VALUES ('acme', '', 'gone', x'00', 0, 99.0, 4)",
            [],
        )
        .expect("a stale state");

        let mut candidate = Policy {
            half_life_days: 20.0,
            ..Policy::default()
        };
        candidate.thresholds.participant = 5.0;
        refold_community(&conn, 1, "acme", &candidate, Refold::Policy).expect("refold acme");

        let mut want = expected("acme", &acme, &candidate);
        let theirs = expected("other", &other, &policy);
        want.0.extend(theirs.0);
        want.1.extend(theirs.1);
        want.2.extend(theirs.2);
        let got = stored(&conn);
        let members: BTreeSet<&str> = got
            .0
            .iter()
            .filter(|s| s.0 == "acme" && s.1 == ALL_CHANNELS)
            .map(|s| s.2.as_str())
            .collect();
        assert_eq!(
            members.len(),
            acme.len(),
            "one all-channels state per member"
        );
        assert!(
            !want.1.is_empty() && !want.2.is_empty(),
            "tiers and snapshots are exercised"
        );
        assert_eq!(got, want);
    }

    /// The members in canonical order, each once with all its activities.
    #[test]
    fn members_come_whole_and_in_order() {
        let conn = Connection::open_in_memory().expect("open");
        for sql in Scores.create_tables(1, false) {
            conn.execute(&sql, []).expect("create");
        }
        let acme = community(50);
        insert(&conn, "acme", &acme);
        insert(&conn, "other", &community(5));
        let mut seen = BTreeMap::new();
        let mut order = Vec::new();
        for_each_chunk(&conn, 1, "acme", |chunk| {
            for (member, activities) in chunk {
                order.push(member.clone());
                seen.insert(member, activities);
            }
            Ok(())
        })
        .expect("read");
        assert!(order.is_sorted() && order.len() == seen.len());
        let mut want = acme.clone();
        for list in want.values_mut() {
            list.sort_by_key(|a| (a.at, a.position));
        }
        assert_eq!(seen, want);
    }
}
