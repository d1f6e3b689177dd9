//! Whole-community passes over the scores' activity rows on PostgreSQL: a
//! policy change re-folds every member of the community
//! ([`refold_community`]), a preview folds every member under a candidate
//! policy (read by [`for_each_chunk`]).
//!
//! Both read the community once, in canonical order, in one statement
//! ([`ORDERED_READ`]): no per-chunk `IN` list. The re-fold reads through a cursor of the
//! projector's own transaction (it must see the batch's uncommitted rows and
//! write in the same transaction as the checkpoint), folds each chunk on a
//! blocking thread while the connection writes the previous one, and writes
//! whole columns as arrays. See docs/performance.md, "Re-scoring and
//! previews on PostgreSQL".

use std::sync::Arc;

use futures::TryStreamExt;
use rapport_domain::policy::Policy;
use sqlx::{PgConnection, PgPool};

use crate::db::Tx;
use crate::scores::{
    ACTIVITY_COLUMNS, ActivityTuple, FoldRows, MemberChunk, MemberChunks, Refold, activity_from,
};

/// How both passes read a community's activity rows in member order:
/// the rows (a sequential scan, or a bitmap scan for a community that is
/// a small part of the table), then a sort; never the primary key's index
/// scan, which PostgreSQL prefers (a full sort looks expensive to it) and
/// which visits the heap in key order. Rows arrive in log order, so the
/// heap of a live read model is in log order, and that index scan reads
/// it at random: 31 s for a 10 M community against 11 s for scan and sort
/// (9 s against 7 s where a rebuild left the heap in key order). See
/// docs/performance.md, "Scores at 10 M on PostgreSQL".
const ORDERED_READ: &str = "SET LOCAL enable_indexscan = off";

/// Undoes [`ORDERED_READ`] for the rest of the projector's transaction,
/// whose other statements want their index scans.
const AFTER_ORDERED_READ: &str = "SET LOCAL enable_indexscan TO DEFAULT";

/// Rows per `FETCH` of the re-fold's cursor: about a chunk's worth at the
/// generated community's ~50 rows per member, few round trips. Small in
/// tests, so that a test community spans several fetches.
const FETCH_ROWS: usize = if cfg!(test) { 1_000 } else { 20_000 };

/// Deletes the community's rows `refold` rewrites ([`Refold::tables`]) and
/// folds every member again under `policy`, inside the caller's transaction.
pub(crate) async fn refold_community(
    conn: &mut PgConnection,
    g: u64,
    community: &str,
    policy: &Policy,
    refold: Refold,
) -> Result<(), sqlx::Error> {
    for table in refold.tables() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM score_{table}_g{g} WHERE community_id = $1"
        )))
        .bind(community)
        .execute(&mut *conn)
        .await?;
    }
    // The cursor lives until the transaction ends; closed below so that a
    // second policy in the same batch can declare it again. Its plan is
    // made here, at DECLARE.
    sqlx::raw_sql(ORDERED_READ).execute(&mut *conn).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DECLARE refold NO SCROLL CURSOR FOR SELECT {ACTIVITY_COLUMNS} FROM score_activity_g{g} \
         WHERE community_id = $1 ORDER BY member_id, at, position"
    )))
    .bind(community)
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    sqlx::raw_sql(AFTER_ORDERED_READ)
        .execute(&mut *conn)
        .await?;
    let shared = Arc::new((community.to_owned(), policy.clone()));
    let fold = |chunk: MemberChunk| {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || {
            FoldRows::of_chunk(&shared.0, &chunk, &shared.1, refold.pairs())
        })
    };
    let folded = |handle: tokio::task::JoinHandle<FoldRows>| async move {
        handle
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("the re-fold thread failed: {e}")))
    };
    // One chunk folds while the previous one is written.
    let mut folding = None;
    let mut chunks = MemberChunks::default();
    loop {
        let rows: Vec<ActivityTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "FETCH {FETCH_ROWS} FROM refold"
        )))
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?;
        let last = rows.len() < FETCH_ROWS;
        let mut ready = Vec::new();
        for row in rows {
            let (member, activity) = activity_from(row)?;
            ready.extend(chunks.push(member, activity));
        }
        if last {
            ready.extend(std::mem::take(&mut chunks).finish());
        }
        for chunk in ready {
            if let Some(previous) = folding.replace(fold(chunk)) {
                folded(previous)
                    .await?
                    .write(&mut Tx::Postgres(&mut *conn), g)
                    .await?;
            }
        }
        if last {
            break;
        }
    }
    if let Some(previous) = folding {
        folded(previous)
            .await?
            .write(&mut Tx::Postgres(&mut *conn), g)
            .await?;
    }
    sqlx::query("CLOSE refold").execute(&mut *conn).await?;
    Ok(())
}

/// Sends every member of `community` with their activities to `chunks`, in
/// canonical order, in chunks of whole members ([`MemberChunks`]): one
/// statement, so one consistent snapshot, streamed as PostgreSQL sends it.
pub(crate) async fn for_each_chunk(
    pool: &PgPool,
    g: u64,
    community: &str,
    chunks: tokio::sync::mpsc::Sender<MemberChunk>,
) -> Result<(), sqlx::Error> {
    let cancelled = |_| sqlx::Error::Protocol("the preview was cancelled".into());
    let sql = format!(
        "SELECT {ACTIVITY_COLUMNS} FROM score_activity_g{g} WHERE community_id = $1 \
         ORDER BY member_id, at, position"
    );
    // A read-only transaction of its own, for `SET LOCAL`.
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(ORDERED_READ).execute(&mut *tx).await?;
    let mut rows = sqlx::query_as::<_, ActivityTuple>(sqlx::AssertSqlSafe(sql))
        .bind(community)
        .persistent(false)
        .fetch(&mut *tx);
    let mut members = MemberChunks::default();
    while let Some(row) = rows.try_next().await? {
        let (member, activity) = activity_from(row)?;
        if let Some(full) = members.push(member, activity) {
            chunks.send(full).await.map_err(cancelled)?;
        }
    }
    if let Some(last) = members.finish() {
        chunks.send(last).await.map_err(cancelled)?;
    }
    drop(rows);
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use rapport_domain::score::Activity;
    use rapport_testkit::TestDatabase;
    use sqlx::{Connection, PgConnection};

    use super::*;
    use crate::Projection;
    use crate::pass_fixtures::{Rows, community, expected};
    use crate::scores::{REFOLD_CHUNK, Scores};

    /// A connection to a fresh database with generation 1 of the scores'
    /// tables, or `None` when PostgreSQL is unreachable and not required.
    async fn database(test: &str) -> Option<(TestDatabase, PgConnection)> {
        let db = TestDatabase::postgres(test).await?;
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        for sql in Scores.create_tables(1, true) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("create");
        }
        Some((db, conn))
    }

    async fn insert(
        conn: &mut PgConnection,
        community: &str,
        members: &BTreeMap<String, Vec<Activity>>,
    ) {
        for (member, activities) in members {
            for a in activities {
                sqlx::query(
                    "INSERT INTO score_activity_g1 (community_id, member_id, at, position, kind, \
                     channel, incentivized, positive, other_member_id, origin_member_id, \
                     other_origin_member_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $2, $9)",
                )
                .bind(community)
                .bind(member)
                .bind(a.at.as_micros())
                .bind(a.position as i64)
                .bind(a.kind.as_i32() as i16)
                .bind(&a.channel)
                .bind(i16::from(a.incentivized))
                .bind(i16::from(a.positive))
                .bind(&a.other_member)
                .execute(&mut *conn)
                .await
                .expect("insert");
            }
        }
    }

    /// A `score_states` row as PostgreSQL returns it.
    type StateRow = (String, String, String, Vec<u8>, i64, f64, i16);

    async fn stored(conn: &mut PgConnection) -> Rows {
        let states: Vec<StateRow> = sqlx::query_as(
            "SELECT community_id, channel, member_id, state, at, bound, tier FROM score_states_g1",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("states");
        let tiers: Vec<(String, String, i64, i64, i16, i16)> = sqlx::query_as(
            "SELECT community_id, member_id, at, position, from_tier, to_tier FROM score_tiers_g1",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("tiers");
        let snapshots: Vec<(String, String, i64, Vec<u8>)> =
            sqlx::query_as("SELECT community_id, member_id, day, state FROM score_snapshots_g1")
                .fetch_all(&mut *conn)
                .await
                .expect("snapshots");
        (
            states
                .into_iter()
                .map(|(c, ch, m, s, at, bound, tier)| {
                    (c, ch, m, s, at, bound.to_bits(), i64::from(tier))
                })
                .collect(),
            tiers
                .into_iter()
                .map(|(c, m, at, p, from, to)| (c, m, at, p, i64::from(from), i64::from(to)))
                .collect(),
            snapshots.into_iter().collect(),
        )
    }

    /// Every member folded once, across chunk boundaries, cursor fetches
    /// that end inside a member, and the fold running beside the writes,
    /// with exactly the rows the folds give; stale rows of the community
    /// gone, another community's untouched. Twice in one transaction, as
    /// when one batch sets two communities' policies: the cursor is closed,
    /// and the planner setting its read needs is undone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refold_writes_every_members_folds_and_only_the_communitys() {
        let Some((_db, mut conn)) =
            database("a_refold_writes_every_members_folds_and_only_the_communitys").await
        else {
            return;
        };
        // More rows than one fetch, so some member straddles two.
        let acme = community(2 * REFOLD_CHUNK + 37);
        assert!(acme.values().map(Vec::len).sum::<usize>() > FETCH_ROWS);
        let other = community(3);
        insert(&mut conn, "acme", &acme).await;
        insert(&mut conn, "other", &other).await;
        sqlx::query("INSERT INTO score_states_g1 VALUES ('acme', '', 'gone', '\\x00', 0, 99.0, 4)")
            .execute(&mut conn)
            .await
            .expect("a stale state");

        let policy = Policy::default();
        let mut candidate = Policy {
            half_life_days: 20.0,
            ..Policy::default()
        };
        candidate.thresholds.participant = 5.0;
        let mut tx = conn.begin().await.expect("begin");
        refold_community(&mut tx, 1, "other", &policy, Refold::Policy)
            .await
            .expect("refold other");
        refold_community(&mut tx, 1, "acme", &candidate, Refold::Policy)
            .await
            .expect("refold acme");
        // The rest of the projector's transaction plans as before.
        let index_scans: String = sqlx::query_scalar("SHOW enable_indexscan")
            .fetch_one(&mut *tx)
            .await
            .expect("show");
        assert_eq!(index_scans, "on");
        tx.commit().await.expect("commit");

        let mut want = expected("acme", &acme, &candidate);
        let theirs = expected("other", &other, &policy);
        want.0.extend(theirs.0);
        want.1.extend(theirs.1);
        want.2.extend(theirs.2);
        assert!(
            !want.1.is_empty() && !want.2.is_empty(),
            "tiers and snapshots are exercised"
        );
        assert_eq!(stored(&mut conn).await, want);
    }

    /// The preview's read: the members in canonical order, each once with
    /// all its activities, and no other community's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_come_whole_and_in_order() {
        let Some((db, mut conn)) = database("members_come_whole_and_in_order").await else {
            return;
        };
        let acme = community(2 * REFOLD_CHUNK + 37);
        insert(&mut conn, "acme", &acme).await;
        insert(&mut conn, "other", &community(5)).await;
        let pool = PgPool::connect(&db.url).await.expect("pool");
        let (chunks, mut received) = tokio::sync::mpsc::channel(2);
        let read = tokio::spawn(async move { for_each_chunk(&pool, 1, "acme", chunks).await });
        let mut seen = BTreeMap::new();
        let mut order = Vec::new();
        let mut sizes = BTreeSet::new();
        while let Some(chunk) = received.recv().await {
            sizes.insert(chunk.len());
            for (member, activities) in chunk {
                order.push(member.clone());
                seen.insert(member, activities);
            }
        }
        read.await.expect("join").expect("read");
        assert!(order.is_sorted() && order.len() == seen.len());
        assert_eq!(sizes, BTreeSet::from([37, REFOLD_CHUNK]));
        let mut want = acme.clone();
        for list in want.values_mut() {
            list.sort_by_key(|a| (a.at, a.position));
        }
        assert_eq!(seen, want);
    }
}
