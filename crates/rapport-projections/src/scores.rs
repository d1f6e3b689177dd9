//! The scores read model: each member's advocate score kept current, so a
//! ranking is exact for "now" without replaying anyone's history.
//!
//! Per generation `g`:
//!
//! - `score_activity_g{g}`: every interaction as the score sees it
//!   ([`Activity`]: no personal data), keyed in the model's canonical order
//!   (member, time, position). The input of replays: `as_of` reads,
//!   explanations, momentum, a late backfill, a policy change, a preview,
//!   a merge. `member_id` (and `other_member_id`) is the member the row
//!   counts for: the event's member, or the member it is merged into now;
//!   `origin_member_id` (and `other_origin_member_id`) the event's own,
//!   which an unmerge re-keys by.
//! - `score_states_g{g}`: per member, and per member and channel, the folded
//!   [`ScoreState`] (a few sums and at most 26 weeks and 180 days of
//!   marks), its `bound` and its tier. `bound` is the score at the state's
//!   latest interaction. Without new interactions a score never rises (a
//!   property the model's tests check), so `bound` is an upper bound of the
//!   score at any later time: a ranking reads states by decreasing bound,
//!   evaluates each one exactly for "now", and stops as soon as the next
//!   bound cannot beat what it has ([`Projections::rank`]).
//! - `score_pairs_g{g}`: the last day each member exchanged with each other
//!   member, which the fold needs to count distinct members in a window.
//! - `score_tiers_g{g}`: each member's tier changes up to their latest
//!   interaction (promotions at interactions, demotions at midnights), for
//!   the timeline's "became advocate" entries; changes that time alone
//!   makes after the latest interaction are computed from the state when
//!   read.
//! - `score_snapshots_g{g}`: a member's all-channels state as it stood at
//!   the end of each day their latest time left, for momentum (the score
//!   now minus the score 30 days ago as it stood then); maintenance keeps
//!   only the ones momentum can still ask for.
//! - `score_roles_g{g}`, `score_policies_g{g}`: staff and bots; the
//!   community's current policy.
//! - `score_merges_g{g}`: which member each merged member counts for now.
//! - `score_staging_g{g}`: while the generation is built in bulk, its
//!   activity rows in log order; [`Scores::finish_bulk`] moves them into
//!   the activity table in key order and folds every community once (the
//!   pass of a policy change, exchange pairs included), then drops it.
//!
//! Reads are not kept as prepared statements (`persistent(false)`): a
//! PostgreSQL session would otherwise reuse the generic plan it chose while
//! these tables were small (a scan) long after they have grown (see
//! `db::WriteTx`, which plans the projector's statements per execution).
//!
//! States fold interactions in log order, as the model defines (an
//! interaction recorded late counts as already decayed), so each batch only
//! folds its own interactions into the states it touches. A new policy
//! re-folds the whole community from the activity rows: the same fold, so
//! the result is what a replay from position 0 gives. A merge or an
//! unmerge re-keys the activity rows and re-folds the members whose
//! history that changes ([`apply_merge`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use prost::Message;
use rapport_domain::policy::{Policy, Tier};
use rapport_domain::score::{
    Activity, Contribution, ScoreState, TierChange, day_of, fold_all, fold_with, momentum_base,
    momentum_snapshots_to_keep,
};
use rapport_domain::{Event, EventBody, InteractionKind, MemberRole, Timestamp};
use rapport_store::{
    DbPool, SqlParam, bind_params, decode_policy, encode_policy, from_db, placeholders,
    sqlite_rows, to_db,
};
use sqlx::Row as _;
use sqlx::{PgConnection, QueryBuilder};

use crate::db::{Tx, column, execute_all, on_pool, on_tx, push_in};
use crate::sqlite_pass::{driver, on_sqlx_connection};
use crate::{Projection, ProjectionError, Projections};
use crate::{pg_pass, sqlite_pass};

pub const NAME: &str = "scores";

/// The channel key of a member's all-channels state.
pub const ALL_CHANNELS: &str = "";

/// Rows per multi-row statement: far below both databases' parameter limits.
const CHUNK: usize = 500;

/// Members per chunk of a whole-community pass (a policy change's re-fold,
/// a preview): the unit handed to the fold and written back.
pub(crate) const REFOLD_CHUNK: usize = 500;

/// A chunk of a whole-community pass: members with their activities.
pub(crate) type MemberChunk = Vec<(String, Vec<Activity>)>;

/// Groups a community's activity rows, read in canonical order (member,
/// time, position), into chunks of [`REFOLD_CHUNK`] whole members.
#[derive(Default)]
pub(crate) struct MemberChunks {
    chunk: MemberChunk,
}

impl MemberChunks {
    /// Adds the next row; returns the previous chunk once it is full and
    /// its last member complete (this row starts another member).
    pub(crate) fn push(&mut self, member: String, activity: Activity) -> Option<MemberChunk> {
        match self.chunk.last_mut() {
            Some((m, list)) if *m == member => {
                list.push(activity);
                None
            }
            _ => {
                let full = (self.chunk.len() == REFOLD_CHUNK)
                    .then(|| std::mem::replace(&mut self.chunk, Vec::with_capacity(REFOLD_CHUNK)));
                self.chunk.push((member, vec![activity]));
                full
            }
        }
    }

    /// The last chunk, if the read found any row since the previous one.
    pub(crate) fn finish(self) -> Option<MemberChunk> {
        (!self.chunk.is_empty()).then_some(self.chunk)
    }
}

pub struct Scores;

/// The columns of an activity row, in the activity table and in a bulk
/// build's staging table alike.
const ACTIVITY_DDL: &str = "
    community_id    TEXT     NOT NULL,
    member_id       TEXT     NOT NULL,
    at              BIGINT   NOT NULL,
    position        BIGINT   NOT NULL,
    kind            SMALLINT NOT NULL,
    channel         TEXT     NOT NULL,
    incentivized    SMALLINT NOT NULL,
    positive        SMALLINT NOT NULL,
    other_member_id TEXT,
    origin_member_id       TEXT NOT NULL,
    other_origin_member_id TEXT";

impl Projection for Scores {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u64 {
        // 4: activity rows keyed by the member they count for (merges);
        // 5: states know their kinds (`ScoreState::kinds`);
        // 6: a bulk build appends to `score_staging` and folds at its end.
        6
    }

    fn create_tables(&self, g: u64, postgres: bool) -> Vec<String> {
        let (blob, real, without_rowid) = if postgres {
            ("BYTEA", "DOUBLE PRECISION", "")
        } else {
            ("BLOB", "REAL", " WITHOUT ROWID")
        };
        vec![
            format!(
                "CREATE TABLE score_activity_g{g} ({ACTIVITY_DDL},
                    PRIMARY KEY (community_id, member_id, at, position)
                ){without_rowid}"
            ),
            // A bulk build's activity rows, in log order (no key to keep in
            // order row by row): `finish_bulk` moves them into the activity
            // table in key order.
            format!("CREATE TABLE score_staging_g{g} ({ACTIVITY_DDL})"),
            // The rows a merge or an unmerge re-keys as the other member.
            format!(
                "CREATE INDEX score_activity_others_g{g} ON score_activity_g{g} \
                 (community_id, other_origin_member_id) WHERE other_origin_member_id IS NOT NULL"
            ),
            format!(
                "CREATE TABLE score_merges_g{g} (
                    community_id    TEXT NOT NULL,
                    member_id       TEXT NOT NULL,
                    into_member_id  TEXT NOT NULL,
                    PRIMARY KEY (community_id, member_id)
                ){without_rowid}"
            ),
            format!(
                "CREATE TABLE score_states_g{g} (
                    community_id TEXT     NOT NULL,
                    channel      TEXT     NOT NULL,
                    member_id    TEXT     NOT NULL,
                    state        {blob}   NOT NULL,
                    at           BIGINT   NOT NULL,
                    bound        {real}   NOT NULL,
                    tier         SMALLINT NOT NULL,
                    PRIMARY KEY (community_id, channel, member_id)
                ){without_rowid}"
            ),
            format!(
                "CREATE INDEX score_rank_g{g} ON score_states_g{g} \
                 (community_id, channel, bound DESC, member_id)"
            ),
            format!(
                "CREATE TABLE score_pairs_g{g} (
                    community_id    TEXT   NOT NULL,
                    member_id       TEXT   NOT NULL,
                    channel         TEXT   NOT NULL,
                    other_member_id TEXT   NOT NULL,
                    last_day        BIGINT NOT NULL,
                    PRIMARY KEY (community_id, member_id, channel, other_member_id)
                ){without_rowid}"
            ),
            format!(
                "CREATE TABLE score_tiers_g{g} (
                    community_id TEXT     NOT NULL,
                    member_id    TEXT     NOT NULL,
                    at           BIGINT   NOT NULL,
                    position     BIGINT   NOT NULL,
                    from_tier    SMALLINT NOT NULL,
                    to_tier      SMALLINT NOT NULL,
                    PRIMARY KEY (community_id, member_id, at, position)
                ){without_rowid}"
            ),
            format!(
                "CREATE TABLE score_snapshots_g{g} (
                    community_id TEXT   NOT NULL,
                    member_id    TEXT   NOT NULL,
                    day          BIGINT NOT NULL,
                    state        {blob} NOT NULL,
                    PRIMARY KEY (community_id, member_id, day)
                ){without_rowid}"
            ),
            format!(
                "CREATE TABLE score_roles_g{g} (
                    community_id TEXT     NOT NULL,
                    member_id    TEXT     NOT NULL,
                    role         SMALLINT NOT NULL,
                    PRIMARY KEY (community_id, member_id)
                ){without_rowid}"
            ),
            format!(
                "CREATE TABLE score_policies_g{g} (
                    community_id TEXT   PRIMARY KEY,
                    policy       {blob} NOT NULL,
                    position     BIGINT NOT NULL
                )"
            ),
        ]
    }

    /// A bulk build appended activity rows only; now they go into the
    /// activity table in key order, and every community is folded once
    /// under its policy: the pass of a policy change, with exchange pairs.
    /// That is what applying the log batch by batch gives (a policy change
    /// re-folds the whole community the same way; a test compares the two).
    fn finish_bulk<'a>(&'a self, mut tx: Tx<'a>, g: u64) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            move_staging(&mut tx, g, "DROP TABLE").await?;
            for community in communities(&mut tx, g).await? {
                let policy = load_policy(&mut tx, g, &community).await?;
                refold_community(&mut tx, g, &community, &policy, Refold::Everything).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn tables(&self, g: u64) -> Vec<String> {
        [
            "activity",
            "states",
            "pairs",
            "tiers",
            "snapshots",
            "roles",
            "policies",
            "merges",
            "staging",
        ]
        .iter()
        .map(|t| format!("score_{t}_g{g}"))
        .collect()
    }

    fn apply<'a>(
        &'a self,
        mut tx: Tx<'a>,
        g: u64,
        events: &'a [Event],
        bulk: bool,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            // Merges re-key rows the events before them wrote: apply the
            // events between merges as batches, in log order (in bulk, with
            // the rows staged so far moved where a merge re-keys them).
            let mut run_start = 0;
            for (i, event) in events.iter().enumerate() {
                let merge = match &event.body {
                    EventBody::MembersMerged {
                        member_id,
                        source_member_id,
                        ..
                    } => Some((source_member_id, Some(member_id))),
                    EventBody::MemberUnmerged {
                        member_id,
                        source_member_id,
                    } => {
                        let _ = member_id;
                        Some((source_member_id, None))
                    }
                    _ => None,
                };
                if let Some((source, into)) = merge {
                    apply_batch(&mut tx, g, &events[run_start..i], bulk).await?;
                    if bulk {
                        move_staging(&mut tx, g, "DELETE FROM").await?;
                    }
                    apply_merge(&mut tx, g, &event.community_id, source, into, bulk).await?;
                    run_start = i + 1;
                }
            }
            apply_batch(&mut tx, g, &events[run_start..], bulk).await
        }
        .boxed()
    }

    /// Tightens the bounds: a bound is the score at the latest interaction,
    /// and a member who went quiet scores less every day, so rankings would
    /// read more and more states to be sure of their page. Each state's
    /// bound becomes its score a day before `now` (still an upper bound for
    /// every later time; the day is the most a leaderboard page token may
    /// lag behind, see [`BOUND_SLACK_SECONDS`]).
    fn maintain<'a>(
        &'a self,
        mut tx: Tx<'a>,
        g: u64,
        now: Timestamp,
        after: Option<String>,
    ) -> BoxFuture<'a, Result<Option<String>, sqlx::Error>> {
        async move { tighten_bounds(&mut tx, g, now, after, MAINTAIN_BUDGET).await }.boxed()
    }
}

/// One group of an upkeep chunk's writes, in one hop: the snapshots
/// momentum can no longer ask for (see
/// `rapport_domain::score::momentum_snapshots_to_keep`) of each (member,
/// day of its latest interaction) in `prune`, and the lowered bounds of
/// `community`'s `channel`. A statement per member cost a round trip each,
/// most of an upkeep round (docs/performance.md, "Upkeep's writes in one
/// hop per group").
async fn write_upkeep_group(
    tx: &mut Tx<'_>,
    g: u64,
    (community, channel): (&str, &str),
    prune: &[(&str, i64)],
    lowered: &[(&str, f64)],
) -> Result<(), sqlx::Error> {
    let cutoff = |latest_day: i64| latest_day - rapport_domain::score::MOMENTUM_DAYS;
    match tx {
        Tx::Sqlite(c) => {
            let prune_sql = format!(
                "DELETE FROM score_snapshots_g{g} WHERE community_id = ?1 AND member_id = ?2 \
                 AND day < (SELECT MAX(day) FROM score_snapshots_g{g} \
                 WHERE community_id = ?1 AND member_id = ?2 AND day <= ?3)"
            );
            let lower_sql = format!(
                "UPDATE score_states_g{g} SET bound = ?4 \
                 WHERE community_id = ?1 AND channel = ?2 AND member_id = ?3"
            );
            on_sqlx_connection(c, |conn| {
                if !prune.is_empty() {
                    let mut statement = conn.prepare_cached(&prune_sql).map_err(driver)?;
                    for (member, latest_day) in prune {
                        statement
                            .execute(rusqlite::params![community, member, cutoff(*latest_day)])
                            .map_err(driver)?;
                    }
                }
                if !lowered.is_empty() {
                    let mut statement = conn.prepare_cached(&lower_sql).map_err(driver)?;
                    for (member, bound) in lowered {
                        statement
                            .execute(rusqlite::params![community, channel, member, bound])
                            .map_err(driver)?;
                    }
                }
                Ok(())
            })
            .await
        }
        Tx::Postgres(c) => {
            if !prune.is_empty() {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM score_snapshots_g{g} s \
                     USING UNNEST($2::text[], $3::int8[]) AS k (m, cutoff) \
                     WHERE s.community_id = $1 AND s.member_id = k.m \
                     AND s.day < (SELECT MAX(day) FROM score_snapshots_g{g} \
                     WHERE community_id = $1 AND member_id = k.m AND day <= k.cutoff)"
                )))
                .bind(community)
                .bind(column(prune, |(m, _)| *m))
                .bind(prune.iter().map(|(_, d)| cutoff(*d)).collect::<Vec<_>>())
                .execute(&mut **c)
                .await?;
            }
            if !lowered.is_empty() {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE score_states_g{g} s SET bound = k.bound \
                     FROM UNNEST($3::text[], $4::float8[]) AS k (m, bound) \
                     WHERE s.community_id = $1 AND s.channel = $2 AND s.member_id = k.m"
                )))
                .bind(community)
                .bind(channel)
                .bind(column(lowered, |(m, _)| *m))
                .bind(column(lowered, |(_, b)| *b))
                .execute(&mut **c)
                .await?;
            }
            Ok(())
        }
    }
}

/// How far before "now" maintenance evaluates the bounds: rankings are only
/// exact for times after that (a leaderboard page token older than this is
/// refused as expired).
pub const BOUND_SLACK_SECONDS: i64 = 86_400;

/// States read per maintenance transaction: with the writes of a group in
/// one hop, 1,000 states fit in the budget and made larger commits (chunk
/// p99 69–103 ms against 43–63 ms at 2 M; docs/performance.md, "Upkeep's
/// writes in one hop per group"). Small in tests, so that a test
/// community spans several chunks.
const MAINTAIN_CHUNK: i64 = if cfg!(test) { 3 } else { 500 };

/// How long a maintenance transaction may work before it commits and
/// hands the read model back to the live batches, which wait for it: a
/// chunk of 2,000 states pruning the snapshots of each held the scores for
/// 0.1–2.7 s at 2 M on SQLite (docs/performance.md, "Upkeep in chunks of
/// at most 25 ms").
const MAINTAIN_BUDGET: Duration = Duration::from_millis(25);

/// States whose writes one upkeep hop makes: small enough that a chunk
/// still stops near its budget, large enough that the hops cost little.
const UPKEEP_GROUP: usize = if cfg!(test) { 2 } else { 64 };

/// A bound is lowered only when it drops by more than this: fewer writes
/// for changes that make no difference to a ranking's reads.
const BOUND_EPSILON: f64 = 0.01;

/// One chunk of the bound upkeep: the states after `after` (the key of the
/// last state seen, NUL-separated; an empty member means "from the start of
/// that community and channel"), in key order, up to [`MAINTAIN_CHUNK`] of
/// them and for at most about `budget` (at least one state). Returns where
/// the next chunk starts, or `None` after the last state.
///
/// A chunk reads within one (community, channel) by equality and walks
/// from one to the next with a separate probe. A single row comparison
/// `(community_id, channel, member_id) > (…)` is what it replaces:
/// PostgreSQL estimates such a comparison from its first column alone, so
/// in a community that holds every row (`community_id > 'bench'`: nothing)
/// it expected one row, took the ranking index and sorted the rest of the
/// table after the chunk for each one (up to 1.1 s a chunk at 10 M; see
/// docs/performance.md, "Scores at 10 M on PostgreSQL").
async fn tighten_bounds(
    tx: &mut Tx<'_>,
    g: u64,
    now: Timestamp,
    after: Option<String>,
    budget: Duration,
) -> Result<Option<String>, sqlx::Error> {
    let started = Instant::now();
    let (community, channel, member) = match after {
        Some(key) => {
            let mut parts = key.splitn(3, '\0').map(str::to_owned);
            let mut next = || parts.next().unwrap_or_default();
            (next(), next(), next())
        }
        None => match next_state_group(tx, g, None).await? {
            Some((community, channel)) => (community, channel, String::new()),
            None => return Ok(None),
        },
    };
    let rows: Vec<(String, Vec<u8>, f64)> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT member_id, state, bound FROM score_states_g{g} \
             WHERE community_id = $1 AND channel = $2 AND member_id > $3 \
             ORDER BY member_id LIMIT $4"
        )))
        .bind(&community)
        .bind(&channel)
        .bind(&member)
        .bind(MAINTAIN_CHUNK)
        .fetch_all(&mut **c)
        .await?
    });
    let policy = load_policy(tx, g, &community).await?;
    let at = now.plus_seconds(-BOUND_SLACK_SECONDS);
    let mut seen = 0;
    // The budget is checked after each group, whose writes take one hop.
    for group in rows.chunks(UPKEEP_GROUP) {
        let mut prune = Vec::new();
        let mut lowered = Vec::new();
        for (member, bytes, bound) in group {
            let state = decode_state(bytes)?;
            if channel == ALL_CHANNELS
                && let Some(latest) = state.at
            {
                prune.push((member.as_str(), day_of(latest)));
            }
            let score = state.evaluate(&policy, at).value;
            if score < bound - BOUND_EPSILON {
                lowered.push((member.as_str(), score));
            }
        }
        write_upkeep_group(tx, g, (&community, &channel), &prune, &lowered).await?;
        seen += group.len();
        if started.elapsed() >= budget {
            break;
        }
    }
    // Out of time, or a whole chunk read: the group goes on after the last
    // state seen.
    if seen > 0 && (seen < rows.len() || rows.len() as i64 == MAINTAIN_CHUNK) {
        let last = &rows[seen - 1].0;
        return Ok(Some(format!("{community}\0{channel}\0{last}")));
    }
    Ok(next_state_group(tx, g, Some((&community, &channel)))
        .await?
        .map(|(community, channel)| format!("{community}\0{channel}\0")))
}

/// The first (community, channel) of the states after `after`: one index
/// probe.
async fn next_state_group(
    tx: &mut Tx<'_>,
    g: u64,
    after: Option<(&str, &str)>,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let filter = if after.is_some() {
        "WHERE (community_id, channel) > ($1, $2) "
    } else {
        ""
    };
    let sql = format!(
        "SELECT community_id, channel FROM score_states_g{g} {filter}\
         ORDER BY community_id, channel LIMIT 1"
    );
    Ok(on_tx!(tx, c => {
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        if let Some((community, channel)) = after {
            query = query.bind(community).bind(channel);
        }
        query.fetch_optional(&mut **c).await?
    }))
}

/// One row of `score_activity`.
#[derive(Debug, Clone)]
struct ActivityRow {
    community_id: String,
    /// The member it counts for: the event's member, or the member that
    /// one is merged into.
    member_id: String,
    /// The members the event names (actor, target): what an unmerge
    /// re-keys by.
    origin_member_id: String,
    other_origin_member_id: Option<String>,
    /// The member the other one counts as (itself when both are merged
    /// into one); `activity.other_member` leaves that case out.
    other_member_id: Option<String>,
    activity: Activity,
}

/// (community, channel key, member): one state.
pub(crate) type StateKey = (String, String, String);

/// A state as stored.
#[derive(Debug, Clone)]
pub struct StoredScore {
    pub member_id: String,
    pub state: ScoreState,
    /// The score at the state's latest interaction.
    pub bound: f64,
}

fn activity_of(event: &Event) -> Option<ActivityRow> {
    let EventBody::InteractionRecorded {
        member_id,
        interaction,
        target_member_id,
    } = &event.body
    else {
        return None;
    };
    let other = target_member_id.clone().filter(|t| t != member_id);
    Some(ActivityRow {
        community_id: event.community_id.clone(),
        member_id: member_id.clone(),
        origin_member_id: member_id.clone(),
        other_origin_member_id: other.clone(),
        other_member_id: other.clone(),
        activity: Activity {
            position: event.position,
            at: Activity::effective_time(interaction.occurred_at, event.recorded_at),
            kind: interaction.kind,
            channel: interaction.channel.clone(),
            incentivized: interaction.incentivized,
            positive: interaction.sentiment.is_some_and(|s| s > 0.0),
            other_member: other,
        },
    })
}

/// Applies events other than merges. `bulk`: only the activity rows (staged),
/// roles and policies; `finish_bulk` folds the states.
async fn apply_batch(
    tx: &mut Tx<'_>,
    g: u64,
    events: &[Event],
    bulk: bool,
) -> Result<(), sqlx::Error> {
    let mut activities = Vec::new();
    let mut roles: BTreeMap<(String, String), MemberRole> = BTreeMap::new();
    let mut policies: BTreeMap<String, (Policy, u64)> = BTreeMap::new();
    for event in events {
        match &event.body {
            EventBody::InteractionRecorded { .. } => activities.extend(activity_of(event)),
            EventBody::MemberRoleSet { member_id, role } => {
                roles.insert((event.community_id.clone(), member_id.clone()), *role);
            }
            EventBody::ScoringPolicySet { policy } => {
                policies.insert(
                    event.community_id.clone(),
                    ((**policy).clone(), event.position),
                );
            }
            // An erased member's activity stays in the aggregates: only its
            // personal data goes, and scores hold none.
            EventBody::MemberRegistered { .. }
            | EventBody::IdentityLinked { .. }
            | EventBody::IdentityUnlinked { .. }
            | EventBody::MemberErased { .. }
            | EventBody::MergeSuggestionRejected { .. } => {}
            // Split off by `apply`: never in a batch.
            EventBody::MembersMerged { .. } | EventBody::MemberUnmerged { .. } => {}
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    canonicalize(tx, g, &mut activities).await?;
    let table = if bulk { "staging" } else { "activity" };
    insert_activities(tx, g, table, &activities).await?;
    upsert_roles(tx, g, &roles).await?;
    for (community, (policy, position)) in &policies {
        upsert_policy(tx, g, community, policy, *position).await?;
    }
    if bulk {
        return Ok(());
    }

    // A community with a new policy: every member re-folded from the
    // activity rows (which now include this batch's).
    for (community, (policy, _)) in &policies {
        refold_community(tx, g, community, policy, Refold::Policy).await?;
    }

    // Every other touched state: folded forward, or re-folded on a backfill.
    let mut touched: BTreeMap<StateKey, Vec<&Activity>> = BTreeMap::new();
    for row in activities
        .iter()
        .filter(|r| !policies.contains_key(&r.community_id))
    {
        for channel in [ALL_CHANNELS, row.activity.channel.as_str()] {
            touched
                .entry((
                    row.community_id.clone(),
                    channel.to_owned(),
                    row.member_id.clone(),
                ))
                .or_default()
                .push(&row.activity);
        }
    }
    if touched.is_empty() {
        return Ok(());
    }
    let communities: BTreeSet<&str> = touched.keys().map(|k| k.0.as_str()).collect();
    let mut community_policy = HashMap::new();
    for community in communities {
        community_policy.insert(community.to_owned(), load_policy(tx, g, community).await?);
    }
    let keys: Vec<StateKey> = touched.keys().cloned().collect();
    let mut states = load_states(tx, g, &keys).await?;
    let pair_keys: BTreeSet<(StateKey, String)> = touched
        .iter()
        .flat_map(|(key, list)| {
            list.iter()
                .filter_map(|a| a.other_member.clone())
                .map(move |o| (key.clone(), o))
        })
        .collect();
    let mut pairs = load_pairs(tx, g, &pair_keys).await?;

    let mut rows = FoldRows::default();
    for (key, list) in touched {
        // Tier history is kept for the all-channels state only.
        let mut changes = Vec::new();
        let policy = &community_policy[&key.0];
        let mut state = states.remove(&key).unwrap_or_default();
        for a in list {
            if key.1 == ALL_CHANNELS
                && let Some(day) = state.crosses_day(a)
            {
                rows.snapshots
                    .push((key.0.clone(), key.2.clone(), day, encode_state(&state)));
            }
            let pair = a.other_member.as_ref().map(|o| (key.clone(), o.clone()));
            let previous = pair.as_ref().and_then(|p| pairs.get(p).copied());
            if let Some(day) = state.add_recording(a, policy, previous, &mut changes) {
                let pair = pair.expect("an exchange has another member");
                pairs.insert(pair.clone(), day);
                rows.exchanges.push((pair, day));
            }
        }
        if key.1 == ALL_CHANNELS {
            rows.tiers.extend(
                changes
                    .into_iter()
                    .map(|c| (key.0.clone(), key.2.clone(), c)),
            );
        }
        rows.states.push(StateRow::new(key, &state, policy));
    }
    rows.write(tx, g).await
}

/// Keys new activity rows by the members their members are merged into.
async fn canonicalize(
    tx: &mut Tx<'_>,
    g: u64,
    rows: &mut [ActivityRow],
) -> Result<(), sqlx::Error> {
    let mut ids: BTreeSet<(&str, &str)> = BTreeSet::new();
    for r in rows.iter() {
        ids.insert((&r.community_id, &r.origin_member_id));
        if let Some(other) = &r.other_origin_member_id {
            ids.insert((&r.community_id, other));
        }
    }
    let into: HashMap<(String, String), String> = match tx {
        Tx::Sqlite(c) => {
            let sql = format!(
                "SELECT into_member_id FROM score_merges_g{g} \
                 WHERE community_id = ?1 AND member_id = ?2"
            );
            let found = on_sqlx_connection(c, |conn| {
                let keys = ids.iter().map(|&(c, m)| ((c, m), [c, m]));
                sqlite_pass::lookup(conn, &sql, keys, |row| row.get::<_, String>(0))
            })
            .await?;
            found
                .into_iter()
                .map(|((c, m), into)| ((c.to_owned(), m.to_owned()), into))
                .collect()
        }
        Tx::Postgres(c) => {
            let ids: Vec<(&str, &str)> = ids.into_iter().collect();
            let found: Vec<(String, String, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT m.community_id, m.member_id, m.into_member_id \
                     FROM UNNEST($1::text[], $2::text[]) AS k (c, m) \
                     JOIN score_merges_g{g} m ON m.community_id = k.c AND m.member_id = k.m"
                )))
                .bind(column(&ids, |k| k.0))
                .bind(column(&ids, |k| k.1))
                .fetch_all(&mut **c)
                .await?;
            found.into_iter().map(|(c, m, t)| ((c, m), t)).collect()
        }
    };
    if into.is_empty() {
        return Ok(());
    }
    let canonical = |community: &str, member: &str| {
        into.get(&(community.to_owned(), member.to_owned()))
            .cloned()
            .unwrap_or_else(|| member.to_owned())
    };
    for r in rows.iter_mut() {
        r.member_id = canonical(&r.community_id, &r.origin_member_id);
        r.other_member_id = r
            .other_origin_member_id
            .as_deref()
            .map(|o| canonical(&r.community_id, o));
        r.activity.other_member = r.other_member_id.clone().filter(|o| *o != r.member_id);
    }
    Ok(())
}

/// A merge of `source` into `into`, or (`into` = `None`) its unmerge:
/// re-keys the activity rows that count for another member now, then folds
/// again every member whose history that changes: the target, the source,
/// and the members who exchanged with the source (two members they
/// exchanged with may have become one).
async fn apply_merge(
    tx: &mut Tx<'_>,
    g: u64,
    community: &str,
    source: &str,
    into: Option<&String>,
    bulk: bool,
) -> Result<(), sqlx::Error> {
    let target: String = match into {
        Some(target) => target.clone(),
        None => {
            let sql = format!(
                "SELECT into_member_id FROM score_merges_g{g} \
                 WHERE community_id = $1 AND member_id = $2"
            );
            let found: Option<String> = on_tx!(tx, c => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(community)
                    .bind(source)
                    .fetch_optional(&mut **c)
                    .await?
            });
            // The store refuses an unmerge of a member not merged: the log
            // never holds one, but a projection must not stop on it.
            let Some(found) = found else { return Ok(()) };
            found
        }
    };
    // What the source's rows count for from now on.
    let counts_for = into.map_or(source, |t| t.as_str());
    let statements = [
        match into {
            Some(_) => format!(
                "INSERT INTO score_merges_g{g} (community_id, member_id, into_member_id) \
                 VALUES ($1, $2, $3)"
            ),
            None => format!(
                "DELETE FROM score_merges_g{g} WHERE community_id = $1 AND member_id = $2 \
                 AND into_member_id = $3"
            ),
        },
        format!(
            "UPDATE score_activity_g{g} SET member_id = $4 \
             WHERE community_id = $1 AND member_id IN ($2, $3) AND origin_member_id = $2"
        ),
        format!(
            "UPDATE score_activity_g{g} SET other_member_id = $4 \
             WHERE community_id = $1 AND other_origin_member_id = $2"
        ),
    ];
    on_tx!(tx, c => {
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(community)
                .bind(source)
                .bind(&target)
                .bind(counts_for)
                .execute(&mut **c)
                .await?;
        }
    });
    if bulk {
        // No states yet: `finish_bulk` folds everyone.
        return Ok(());
    }
    let exchanged: Vec<String> = on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT member_id FROM score_activity_g{g} \
             WHERE community_id = $1 AND other_origin_member_id = $2"
        )))
        .bind(community)
        .bind(source)
        .fetch_all(&mut **c)
        .await?
    });
    let mut members: BTreeSet<String> = exchanged.into_iter().collect();
    members.insert(target);
    members.insert(source.to_owned());
    let members: Vec<String> = members.into_iter().collect();
    let policy = load_policy(tx, g, community).await?;
    refold_members(tx, g, community, &members, &policy).await
}

/// Folds `members` of `community` again from their activity rows: their
/// states, tier histories, momentum snapshots and exchange pairs replaced.
/// A member with no rows left (merged into another) keeps none.
async fn refold_members(
    tx: &mut Tx<'_>,
    g: u64,
    community: &str,
    members: &[String],
    policy: &Policy,
) -> Result<(), sqlx::Error> {
    for chunk in members.chunks(REFOLD_CHUNK) {
        on_tx!(tx, c => {
            for table in ["states", "tiers", "snapshots", "pairs"] {
                let mut qb = QueryBuilder::new(format!(
                    "DELETE FROM score_{table}_g{g} WHERE community_id = "
                ));
                qb.push_bind(community.to_owned());
                push_in(&mut qb, " AND member_id IN (", chunk);
                qb.build().execute(&mut **c).await?;
            }
        });
        write_folds(tx, g, community, chunk, policy, true).await?;
    }
    Ok(())
}

async fn insert_snapshots(
    c: &mut PgConnection,
    g: u64,
    snapshots: &[(String, String, i64, Vec<u8>)],
) -> Result<(), sqlx::Error> {
    if snapshots.is_empty() {
        return Ok(());
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO score_snapshots_g{g} (community_id, member_id, day, state) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::bytea[])"
    )))
    .bind(column(snapshots, |r| r.0.as_str()))
    .bind(column(snapshots, |r| r.1.as_str()))
    .bind(column(snapshots, |r| r.2))
    .bind(column(snapshots, |r| r.3.as_slice()))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// The tables a policy change rewrites for a community. Pairs stay: the
/// last day of exchange per pair does not depend on the policy (kinds,
/// incentives and windows only).
pub(crate) const POLICY_TABLES: [&str; 3] = ["states", "tiers", "snapshots"];

/// What a whole-community re-fold rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refold {
    /// A policy change: the rows a policy decides ([`POLICY_TABLES`]).
    Policy,
    /// The end of a bulk build: those and the exchange pairs.
    Everything,
}

impl Refold {
    /// The tables it deletes the community's rows of, then writes.
    pub(crate) fn tables(self) -> &'static [&'static str] {
        match self {
            Refold::Policy => &POLICY_TABLES,
            Refold::Everything => &["states", "tiers", "snapshots", "pairs"],
        }
    }

    pub(crate) fn pairs(self) -> bool {
        self == Refold::Everything
    }
}

/// Folds every member of `community` again under `policy`: one ordered
/// read of the community on either backend (see `sqlite_pass`, `pg_pass`).
async fn refold_community(
    tx: &mut Tx<'_>,
    g: u64,
    community: &str,
    policy: &Policy,
    refold: Refold,
) -> Result<(), sqlx::Error> {
    match tx {
        Tx::Sqlite(c) => {
            sqlite_pass::on_sqlx_connection(c, |conn| {
                sqlite_pass::refold_community(conn, g, community, policy, refold)
            })
            .await
        }
        Tx::Postgres(c) => pg_pass::refold_community(c, g, community, policy, refold).await,
    }
}

/// Moves a bulk build's staged activity rows into the activity table, in
/// key order: each lands after the previous one, so the b-tree is written
/// page after page instead of one random page per row. `then` empties the
/// staging table (`DELETE`, before a merge) or drops it (`DROP TABLE`, at
/// the end of the bulk phase: no emptying first).
async fn move_staging(tx: &mut Tx<'_>, g: u64, then: &str) -> Result<(), sqlx::Error> {
    execute_all(
        tx.reborrow(),
        vec![
            format!(
                "INSERT INTO score_activity_g{g} ({ACTIVITY_ROW_COLUMNS}) \
                 SELECT {ACTIVITY_ROW_COLUMNS} FROM score_staging_g{g} \
                 ORDER BY community_id, member_id, at, position"
            ),
            format!("{then} score_staging_g{g}"),
        ],
    )
    .await
}

/// The communities with activity rows: one index probe each (a loose scan
/// of the primary key), not a read of every row.
async fn communities(tx: &mut Tx<'_>, g: u64) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!(
        "WITH RECURSIVE c (id) AS ( \
           SELECT MIN(community_id) FROM score_activity_g{g} \
           UNION ALL \
           SELECT (SELECT MIN(community_id) FROM score_activity_g{g} WHERE community_id > c.id) \
           FROM c WHERE c.id IS NOT NULL) \
         SELECT id FROM c WHERE id IS NOT NULL"
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).persistent(false).fetch_all(&mut **c).await?
    }))
}

/// Folds `members` from their activity rows and writes their states, tier
/// histories and momentum snapshots (their old ones deleted by the caller);
/// with `pairs`, their exchange pairs too (a policy change leaves those).
async fn write_folds(
    tx: &mut Tx<'_>,
    g: u64,
    community: &str,
    members: &[String],
    policy: &Policy,
    pairs: bool,
) -> Result<(), sqlx::Error> {
    let mut rows = FoldRows::default();
    for (member, activities) in load_activity_rows(tx, g, community, members).await? {
        rows.add(
            community,
            &member,
            fold_member(&activities, policy),
            policy,
            pairs,
        );
    }
    rows.write(tx, g).await
}

/// The rows folds write: states, tier changes, momentum snapshots and
/// exchange pairs.
#[derive(Default)]
pub(crate) struct FoldRows {
    pub(crate) states: Vec<StateRow>,
    pub(crate) tiers: Vec<(String, String, TierChange)>,
    pub(crate) snapshots: Vec<(String, String, i64, Vec<u8>)>,
    pub(crate) exchanges: Vec<((StateKey, String), i64)>,
}

impl FoldRows {
    /// The folds of a chunk of a whole-community pass; their exchange
    /// pairs only with `pairs` (they do not depend on the policy: a policy
    /// change and a preview leave them).
    pub(crate) fn of_chunk(
        community: &str,
        chunk: &MemberChunk,
        policy: &Policy,
        pairs: bool,
    ) -> FoldRows {
        let mut rows = FoldRows::default();
        for (member, activities) in chunk {
            rows.add(
                community,
                member,
                fold_member(activities, policy),
                policy,
                pairs,
            );
        }
        rows
    }

    /// Adds a member's folds ([`fold_member`]); their exchange pairs only
    /// with `pairs`.
    pub(crate) fn add(
        &mut self,
        community: &str,
        member: &str,
        folds: Vec<(String, rapport_domain::score::Folded)>,
        policy: &Policy,
        pairs: bool,
    ) {
        for (channel, folded) in folds {
            if channel == ALL_CHANNELS {
                self.tiers.extend(
                    folded
                        .changes
                        .iter()
                        .map(|c| (community.to_owned(), member.to_owned(), *c)),
                );
                self.snapshots
                    .extend(folded.snapshots.iter().map(|(day, state)| {
                        (
                            community.to_owned(),
                            member.to_owned(),
                            *day,
                            encode_state(state),
                        )
                    }));
            }
            let key = (community.to_owned(), channel, member.to_owned());
            if pairs {
                self.exchanges.extend(
                    folded
                        .last_exchange
                        .iter()
                        .map(|(other, day)| ((key.clone(), other.clone()), *day)),
                );
            }
            self.states.push(StateRow::new(key, &folded.state, policy));
        }
    }

    pub(crate) async fn write(&self, tx: &mut Tx<'_>, g: u64) -> Result<(), sqlx::Error> {
        match tx {
            Tx::Sqlite(c) => {
                on_sqlx_connection(c, |conn| sqlite_pass::RowWriter::new(conn, g)?.write(self))
                    .await
            }
            Tx::Postgres(c) => {
                upsert_pairs(c, g, &self.exchanges).await?;
                insert_tiers(c, g, &self.tiers).await?;
                insert_snapshots(c, g, &self.snapshots).await?;
                upsert_states(c, g, &self.states).await
            }
        }
    }
}

/// A `score_states` row as written.
pub(crate) struct StateRow {
    pub(crate) key: StateKey,
    pub(crate) state: Vec<u8>,
    pub(crate) at: i64,
    pub(crate) bound: f64,
    pub(crate) tier: i16,
}

impl StateRow {
    pub(crate) fn new(key: StateKey, state: &ScoreState, policy: &Policy) -> Self {
        let at = state.at.unwrap_or(0);
        StateRow {
            key,
            state: encode_state(state),
            at,
            bound: state.evaluate(policy, Timestamp::from_micros(at)).value,
            tier: state.tier.as_i32() as i16,
        }
    }
}

/// A member's states: all channels, then each channel on its own.
/// A member's folds: all channels (with its tier history and momentum
/// snapshots), then each channel on its own.
pub fn fold_member(
    activities: &[Activity],
    policy: &Policy,
) -> Vec<(String, rapport_domain::score::Folded)> {
    let mut by_channel: BTreeMap<&str, Vec<&Activity>> = BTreeMap::new();
    for a in activities {
        by_channel.entry(a.channel.as_str()).or_default().push(a);
    }
    let mut out = vec![(ALL_CHANNELS.to_owned(), fold_all(activities, policy))];
    for (channel, list) in by_channel {
        // Tier history and momentum are kept for all channels only.
        let mut folded = fold_with(list, policy, false);
        folded.changes.clear();
        out.push((channel.to_owned(), folded));
    }
    out
}

async fn insert_tiers(
    c: &mut PgConnection,
    g: u64,
    changes: &[(String, String, TierChange)],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO score_tiers_g{g} (community_id, member_id, at, position, from_tier, \
         to_tier) SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], \
         $5::int2[], $6::int2[])"
    )))
    .bind(column(changes, |r| r.0.as_str()))
    .bind(column(changes, |r| r.1.as_str()))
    .bind(column(changes, |r| r.2.at.as_micros()))
    .bind(column(changes, |r| to_db(r.2.position)))
    .bind(column(changes, |r| r.2.from.as_i32() as i16))
    .bind(column(changes, |r| r.2.to.as_i32() as i16))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Every column of an activity row, as written (`insert_activities`) and
/// moved from staging (`move_staging`).
const ACTIVITY_ROW_COLUMNS: &str = "community_id, member_id, at, position, kind, channel, \
    incentivized, positive, other_member_id, origin_member_id, other_origin_member_id";

/// Inserts activity rows into `score_{table}_g{g}`: the activity table, or
/// a bulk build's staging table.
async fn insert_activities(
    tx: &mut Tx<'_>,
    g: u64,
    table: &str,
    rows: &[ActivityRow],
) -> Result<(), sqlx::Error> {
    let c = match tx {
        Tx::Sqlite(c) => {
            let sql = format!(
                "INSERT INTO score_{table}_g{g} ({ACTIVITY_ROW_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            );
            return on_sqlx_connection(c, |conn| {
                let mut insert = conn.prepare_cached(&sql).map_err(driver)?;
                for r in rows {
                    let a = &r.activity;
                    insert
                        .execute(rusqlite::params![
                            r.community_id,
                            r.member_id,
                            a.at.as_micros(),
                            to_db(a.position),
                            a.kind.as_i32() as i16,
                            a.channel,
                            i16::from(a.incentivized),
                            i16::from(a.positive),
                            r.other_member_id,
                            r.origin_member_id,
                            r.other_origin_member_id,
                        ])
                        .map_err(driver)?;
                }
                Ok(())
            })
            .await;
        }
        Tx::Postgres(c) => c,
    };
    if rows.is_empty() {
        return Ok(());
    }
    // Every row in one statement, each column bound as an array: a VALUES
    // list of 500 rows (5,500 parameters) per statement took PostgreSQL
    // several times as long to parse and plan.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO score_{table}_g{g} ({ACTIVITY_ROW_COLUMNS}) SELECT * FROM UNNEST(\
         $1::text[], $2::text[], $3::int8[], $4::int8[], $5::int2[], $6::text[], $7::int2[], \
         $8::int2[], $9::text[], $10::text[], $11::text[])"
    )))
    .bind(column(rows, |r| r.community_id.as_str()))
    .bind(column(rows, |r| r.member_id.as_str()))
    .bind(column(rows, |r| r.activity.at.as_micros()))
    .bind(column(rows, |r| to_db(r.activity.position)))
    .bind(column(rows, |r| r.activity.kind.as_i32() as i16))
    .bind(column(rows, |r| r.activity.channel.as_str()))
    .bind(column(rows, |r| i16::from(r.activity.incentivized)))
    .bind(column(rows, |r| i16::from(r.activity.positive)))
    .bind(column(rows, |r| r.other_member_id.as_deref()))
    .bind(column(rows, |r| r.origin_member_id.as_str()))
    .bind(column(rows, |r| r.other_origin_member_id.as_deref()))
    .execute(&mut **c)
    .await?;
    Ok(())
}

async fn upsert_roles(
    tx: &mut Tx<'_>,
    g: u64,
    roles: &BTreeMap<(String, String), MemberRole>,
) -> Result<(), sqlx::Error> {
    let rows: Vec<_> = roles.iter().collect();
    for chunk in rows.chunks(CHUNK) {
        on_tx!(tx, c => {
            let mut qb = QueryBuilder::new(format!(
                "INSERT INTO score_roles_g{g} (community_id, member_id, role) "
            ));
            qb.push_values(chunk, |mut b, ((community, member), role)| {
                b.push_bind(community.clone())
                    .push_bind(member.clone())
                    .push_bind(**role as i16);
            });
            qb.push(" ON CONFLICT (community_id, member_id) DO UPDATE SET role = excluded.role");
            qb.build().execute(&mut **c).await?;
        });
    }
    Ok(())
}

async fn upsert_policy(
    tx: &mut Tx<'_>,
    g: u64,
    community: &str,
    policy: &Policy,
    position: u64,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO score_policies_g{g} (community_id, policy, position) VALUES ($1, $2, $3) \
         ON CONFLICT (community_id) DO UPDATE SET policy = excluded.policy, \
         position = excluded.position"
    );
    on_tx!(tx, c => {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(community)
            .bind(encode_policy(policy))
            .bind(to_db(position))
            .execute(&mut **c)
            .await?;
    });
    Ok(())
}

async fn load_policy(tx: &mut Tx<'_>, g: u64, community: &str) -> Result<Policy, sqlx::Error> {
    let sql = format!("SELECT policy FROM score_policies_g{g} WHERE community_id = $1");
    let bytes: Option<Vec<u8>> = on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(community)
            .fetch_optional(&mut **c)
            .await?
    });
    match bytes {
        None => Ok(Policy::default()),
        Some(bytes) => decode_policy(&bytes).map_err(|e| sqlx::Error::Decode(Box::new(e))),
    }
}

async fn load_states(
    tx: &mut Tx<'_>,
    g: u64,
    keys: &[StateKey],
) -> Result<HashMap<StateKey, ScoreState>, sqlx::Error> {
    let c = match tx {
        Tx::Sqlite(c) => {
            let sql = format!(
                "SELECT state FROM score_states_g{g} \
                 WHERE community_id = ?1 AND channel = ?2 AND member_id = ?3"
            );
            let found = on_sqlx_connection(c, |conn| {
                let keys = keys
                    .iter()
                    .map(|k| (k, [k.0.as_str(), k.1.as_str(), k.2.as_str()]));
                sqlite_pass::lookup(conn, &sql, keys, |row| row.get::<_, Vec<u8>>(0))
            })
            .await?;
            return found
                .into_iter()
                .map(|(key, bytes)| Ok((key.clone(), decode_state(&bytes)?)))
                .collect();
        }
        Tx::Postgres(c) => c,
    };
    // PostgreSQL plans a long row-value IN list badly (a scan per batch):
    // join the keys bound as arrays instead, one probe each, all in one
    // statement (arrays have no parameter limit to chunk for).
    let rows: Vec<(String, String, String, Vec<u8>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT s.community_id, s.channel, s.member_id, s.state \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k (c, ch, m) \
             JOIN score_states_g{g} s \
             ON s.community_id = k.c AND s.channel = k.ch AND s.member_id = k.m"
        )))
        .bind(column(keys, |k| k.0.as_str()))
        .bind(column(keys, |k| k.1.as_str()))
        .bind(column(keys, |k| k.2.as_str()))
        .fetch_all(&mut **c)
        .await?;
    rows.into_iter()
        .map(|(community, channel, member, bytes)| {
            Ok(((community, channel, member), decode_state(&bytes)?))
        })
        .collect()
}

/// Appends `(a, b), (c, d), ...` with every value bound: the row-value lists
/// of SQLite lookups (PostgreSQL joins arrays instead).
fn push_tuples<'a, const N: usize, DB>(
    qb: &mut QueryBuilder<DB>,
    tuples: impl IntoIterator<Item = [&'a str; N]>,
) where
    DB: sqlx::Database,
    for<'e> String: sqlx::Encode<'e, DB> + sqlx::Type<DB>,
{
    let mut list = qb.separated(", ");
    for tuple in tuples {
        list.push("(");
        for (i, value) in tuple.into_iter().enumerate() {
            if i > 0 {
                list.push_unseparated(", ");
            }
            list.push_bind_unseparated(value.to_owned());
        }
        list.push_unseparated(")");
    }
}

async fn load_pairs(
    tx: &mut Tx<'_>,
    g: u64,
    keys: &BTreeSet<(StateKey, String)>,
) -> Result<HashMap<(StateKey, String), i64>, sqlx::Error> {
    let keys: Vec<_> = keys.iter().collect();
    let c = match tx {
        Tx::Sqlite(c) => {
            let sql = format!(
                "SELECT last_day FROM score_pairs_g{g} WHERE community_id = ?1 \
                 AND member_id = ?2 AND channel = ?3 AND other_member_id = ?4"
            );
            let found = on_sqlx_connection(c, |conn| {
                let keys = keys.iter().map(|key| {
                    let ((community, channel, member), other) = *key;
                    (
                        *key,
                        [
                            community.as_str(),
                            member.as_str(),
                            channel.as_str(),
                            other.as_str(),
                        ],
                    )
                });
                sqlite_pass::lookup(conn, &sql, keys, |row| row.get::<_, i64>(0))
            })
            .await?;
            return Ok(found
                .into_iter()
                .map(|(key, day)| (key.clone(), day))
                .collect());
        }
        Tx::Postgres(c) => c,
    };
    // As in `load_states`: arrays joined on PostgreSQL, in one statement.
    let rows: Vec<(String, String, String, String, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT p.community_id, p.channel, p.member_id, p.other_member_id, p.last_day \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS k (c, m, ch, o) \
             JOIN score_pairs_g{g} p ON p.community_id = k.c AND p.member_id = k.m \
             AND p.channel = k.ch AND p.other_member_id = k.o"
        )))
        .bind(column(&keys, |k| k.0.0.as_str()))
        .bind(column(&keys, |k| k.0.2.as_str()))
        .bind(column(&keys, |k| k.0.1.as_str()))
        .bind(column(&keys, |k| k.1.as_str()))
        .fetch_all(&mut **c)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(community, channel, member, other, day)| {
            (((community, channel, member), other), day)
        })
        .collect())
}

async fn upsert_pairs(
    c: &mut PgConnection,
    g: u64,
    pairs: &[((StateKey, String), i64)],
) -> Result<(), sqlx::Error> {
    // One statement may not touch a row twice (PostgreSQL refuses): keep
    // the last day per pair.
    let unique: BTreeMap<&(StateKey, String), i64> = pairs.iter().map(|(k, d)| (k, *d)).collect();
    let rows: Vec<_> = unique.into_iter().collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO score_pairs_g{g} (community_id, member_id, channel, other_member_id, \
         last_day) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
         $5::int8[]) ON CONFLICT (community_id, member_id, channel, other_member_id) \
         DO UPDATE SET last_day = excluded.last_day"
    )))
    .bind(column(&rows, |(((community, _, _), _), _)| {
        community.as_str()
    }))
    .bind(column(&rows, |(((_, _, member), _), _)| member.as_str()))
    .bind(column(&rows, |(((_, channel, _), _), _)| channel.as_str()))
    .bind(column(&rows, |((_, other), _)| other.as_str()))
    .bind(column(&rows, |(_, day)| *day))
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn upsert_states(
    c: &mut PgConnection,
    g: u64,
    states: &[StateRow],
) -> Result<(), sqlx::Error> {
    if states.is_empty() {
        return Ok(());
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO score_states_g{g} (community_id, channel, member_id, state, at, bound, \
         tier) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], \
         $5::int8[], $6::float8[], $7::int2[]) \
         ON CONFLICT (community_id, channel, member_id) DO UPDATE SET \
         state = excluded.state, at = excluded.at, bound = excluded.bound, \
         tier = excluded.tier"
    )))
    .bind(column(states, |r| r.key.0.as_str()))
    .bind(column(states, |r| r.key.1.as_str()))
    .bind(column(states, |r| r.key.2.as_str()))
    .bind(column(states, |r| r.state.as_slice()))
    .bind(column(states, |r| r.at))
    .bind(column(states, |r| r.bound))
    .bind(column(states, |r| r.tier))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// A `score_states` row as the dump reads it: without the bound, a cache
/// that maintenance tightens as time passes.
type StateTuple = (String, String, String, Vec<u8>, i64, i16);

pub(crate) type ActivityTuple = (String, i64, i64, i16, String, i16, i16, Option<String>);

pub(crate) fn activity_from(row: ActivityTuple) -> Result<(String, Activity), sqlx::Error> {
    let (member, at, position, kind, channel, incentivized, positive, other) = row;
    let kind = InteractionKind::from_i32(i32::from(kind))
        .ok_or_else(|| sqlx::Error::Decode(format!("interaction kind {kind}").into()))?;
    let position = from_db(position).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    // Two members merged into one: their exchanges are with itself.
    let other = other.filter(|o| *o != member);
    Ok((
        member,
        Activity {
            position,
            at: Timestamp::from_micros(at),
            kind,
            channel,
            incentivized: incentivized != 0,
            positive: positive != 0,
            other_member: other,
        },
    ))
}

pub(crate) const ACTIVITY_COLUMNS: &str =
    "member_id, at, position, kind, channel, incentivized, positive, other_member_id";

fn activities_query<DB: sqlx::Database>(
    g: u64,
    community: &str,
    member: &str,
    channel: Option<&str>,
    until: Option<Timestamp>,
) -> QueryBuilder<DB>
where
    DB::Arguments: Default,
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut qb = QueryBuilder::new(format!(
        "SELECT {ACTIVITY_COLUMNS} FROM score_activity_g{g} WHERE community_id = "
    ));
    qb.push_bind(community.to_owned());
    qb.push(" AND member_id = ");
    qb.push_bind(member.to_owned());
    if let Some(channel) = channel {
        qb.push(" AND channel = ");
        qb.push_bind(channel.to_owned());
    }
    if let Some(until) = until {
        qb.push(" AND at <= ");
        qb.push_bind(until.as_micros());
    }
    qb.push(" ORDER BY at, position");
    qb
}

/// The activities of several members of a community, grouped by member.
async fn load_activity_rows(
    tx: &mut Tx<'_>,
    g: u64,
    community: &str,
    members: &[String],
) -> Result<BTreeMap<String, Vec<Activity>>, sqlx::Error> {
    let rows: Vec<ActivityTuple> = on_tx!(tx, c => {
        let mut qb = QueryBuilder::new(format!(
            "SELECT {ACTIVITY_COLUMNS} FROM score_activity_g{g} WHERE community_id = "
        ));
        qb.push_bind(community.to_owned());
        push_in(&mut qb, " AND member_id IN (", members);
        qb.push(" ORDER BY member_id, at, position");
        qb.build_query_as().fetch_all(&mut **c).await?
    });
    let mut out: BTreeMap<String, Vec<Activity>> = BTreeMap::new();
    for row in rows {
        let (member, activity) = activity_from(row)?;
        out.entry(member).or_default().push(activity);
    }
    Ok(out)
}

/// The stored form of a [`ScoreState`] (protobuf: compact, and fields can
/// be added; a change of meaning bumps the projection's version instead).
///
/// The weeks and days are packed runs (`repeated sint64` keys, each the
/// difference from the one before, beside `repeated uint32` values): about
/// two bytes a day where a map entry took eight. A busy member's state
/// (180 days, 26 weeks) is then ~500 bytes instead of ~1,700, under the
/// 1,002 bytes a SQLite index page of 4 KiB keeps in the row: a larger row
/// spills to an overflow page, and every write of the state rewrote both
/// (the busiest members, whose states are the largest, take a third of all
/// events; docs/performance.md, "Score states in packed runs").
///
/// States written before as protobuf maps (tags 4 and 5) are read as they
/// are, so no rebuild is needed: each is written in the packed form the
/// next time it changes. Maps were read as their repeated entries: a
/// ranking decodes hundreds of states per call, and inserting 180 days one
/// by one into a map was most of that (docs/performance.md, "Scores
/// rebuilds in bulk, and the leaderboard at 10 M"); entries come in key
/// order, so the maps are built from sorted runs.
#[derive(Clone, PartialEq, Message)]
struct StoredState {
    #[prost(double, tag = "1")]
    engagement: f64,
    #[prost(double, tag = "2")]
    advocacy: f64,
    #[prost(int64, optional, tag = "3")]
    at: Option<i64>,
    /// Read only: the weeks of a state written as a map.
    #[prost(message, repeated, tag = "4")]
    map_weeks: Vec<DayEntry>,
    /// Read only: the days of a state written as a map.
    #[prost(message, repeated, tag = "5")]
    map_exchange_days: Vec<DayEntry>,
    #[prost(message, repeated, tag = "6")]
    channels: Vec<ChannelEntry>,
    #[prost(bool, tag = "7")]
    organic: bool,
    #[prost(int32, tag = "8")]
    tier: i32,
    #[prost(int64, tag = "9")]
    tier_day: i64,
    #[prost(uint64, tag = "10")]
    interactions: u64,
    #[prost(uint32, tag = "11")]
    kinds: u32,
    #[prost(sint64, repeated, tag = "12")]
    week_steps: Vec<i64>,
    #[prost(uint32, repeated, tag = "13")]
    week_marks: Vec<u32>,
    #[prost(sint64, repeated, tag = "14")]
    exchange_day_steps: Vec<i64>,
    #[prost(uint32, repeated, tag = "15")]
    exchange_day_counts: Vec<u32>,
}

/// An entry of a `map<int64, uint32>`: a week or a day and its count.
#[derive(Clone, PartialEq, Message)]
struct DayEntry {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(uint32, tag = "2")]
    value: u32,
}

/// An entry of a `map<string, int64>`: a channel and its last day.
#[derive(Clone, PartialEq, Message)]
struct ChannelEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(int64, tag = "2")]
    value: i64,
}

/// Sorted keys as the differences between neighbours (the first from 0).
fn steps(keys: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut previous = 0;
    keys.map(|key| {
        let step = key - previous;
        previous = key;
        step
    })
    .collect()
}

/// The keys of [`steps`] beside their values; `None` if the runs differ in
/// length or a key overflows (a corrupt row).
fn unstep<V: Copy>(steps: &[i64], values: &[V]) -> Option<Vec<(i64, V)>> {
    if steps.len() != values.len() {
        return None;
    }
    let mut key = 0i64;
    steps
        .iter()
        .zip(values)
        .map(|(step, value)| {
            key = key.checked_add(*step)?;
            Some((key, *value))
        })
        .collect()
}

fn encode_state(s: &ScoreState) -> Vec<u8> {
    StoredState {
        engagement: s.engagement,
        advocacy: s.advocacy,
        at: s.at,
        map_weeks: Vec::new(),
        map_exchange_days: Vec::new(),
        channels: s
            .channels
            .iter()
            .map(|(key, value)| ChannelEntry {
                key: key.clone(),
                value: *value,
            })
            .collect(),
        organic: s.organic,
        tier: s.tier.as_i32(),
        tier_day: s.tier_day,
        interactions: s.interactions,
        kinds: s.kinds,
        week_steps: steps(s.weeks.keys().copied()),
        week_marks: s.weeks.values().map(|m| u32::from(*m)).collect(),
        exchange_day_steps: steps(s.exchange_days.keys().copied()),
        exchange_day_counts: s.exchange_days.values().copied().collect(),
    }
    .encode_to_vec()
}

fn decode_state(bytes: &[u8]) -> Result<ScoreState, sqlx::Error> {
    let corrupt = |what: &str| sqlx::Error::Decode(format!("stored score state: {what}").into());
    let s = StoredState::decode(bytes).map_err(|_| corrupt("not protobuf"))?;
    let weeks = unstep(&s.week_steps, &s.week_marks).ok_or_else(|| corrupt("weeks"))?;
    let days = unstep(&s.exchange_day_steps, &s.exchange_day_counts)
        .ok_or_else(|| corrupt("exchange days"))?;
    Ok(ScoreState {
        engagement: s.engagement,
        advocacy: s.advocacy,
        at: s.at,
        // A state has one form or the other; `collect` sorts (a no-op on
        // these sorted runs) and builds each map in one pass.
        weeks: s
            .map_weeks
            .into_iter()
            .map(|e| (e.key, e.value))
            .chain(weeks)
            .map(|(week, mark)| u8::try_from(mark).map(|m| (week, m)))
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt("week mark"))?,
        exchange_days: s
            .map_exchange_days
            .into_iter()
            .map(|e| (e.key, e.value))
            .chain(days)
            .collect(),
        channels: s.channels.into_iter().map(|e| (e.key, e.value)).collect(),
        organic: s.organic,
        tier: Tier::from_i32(s.tier).ok_or_else(|| corrupt("tier"))?,
        tier_day: s.tier_day,
        interactions: s.interactions,
        kinds: s.kinds,
    })
}

/// A ranked member, exact for the ranking's time.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub member_id: String,
    pub score: f64,
    pub tier: Tier,
    /// The member's latest interaction counted.
    pub last_active_at: Timestamp,
    /// The folded state the score came from.
    pub state: ScoreState,
}

/// Which members a ranking considers.
#[derive(Debug, Clone)]
pub struct RankQuery {
    pub community_id: String,
    /// [`ALL_CHANNELS`] or one channel.
    pub channel: String,
    pub min_tier: Tier,
    /// The time the ranking is exact for.
    pub as_of: Timestamp,
}

/// Which tier changes a timeline page reads.
#[derive(Debug, Clone, Default)]
pub struct TierRange {
    /// Only changes with a smaller `(at, position)`: the page cursor.
    pub before: Option<(Timestamp, u64)>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// What [`Projections::timeline_tiers`] reads, from one snapshot.
#[derive(Debug, Clone, Default)]
pub struct TierReads {
    /// The community's policy; `None` while the default applies.
    pub policy: Option<Policy>,
    /// The member's all-channels state; `None` before any interaction.
    pub state: Option<ScoreState>,
    /// Stored changes in the range, newest first.
    pub stored: Vec<TierChange>,
}

/// A stored tier change's columns: at, position, from, to.
type TierTuple = (i64, i64, i16, i16);

/// A member's stored tier changes, newest first: those with a key
/// `(at, position)` below `before`, at or after `since`, before `until`;
/// as text and values.
fn tier_changes_sql(
    g: u64,
    community_id: &str,
    member_id: &str,
    range: &TierRange,
    limit: u32,
) -> (String, Vec<SqlParam>) {
    let mut params = Vec::new();
    let mut sql = format!(
        "SELECT at, position, from_tier, to_tier FROM score_tiers_g{g} \
         WHERE community_id = {} AND member_id = {}",
        placeholders(vec![SqlParam::Text(community_id.to_owned())], &mut params),
        placeholders(vec![SqlParam::Text(member_id.to_owned())], &mut params),
    );
    if let Some((at, position)) = range.before {
        let values = vec![
            SqlParam::Int(at.as_micros()),
            SqlParam::Int(to_db(position)),
        ];
        sql.push_str(&format!(
            " AND (at, position) < ({})",
            placeholders(values, &mut params)
        ));
    }
    if let Some(since) = range.since {
        let p = placeholders(vec![SqlParam::Int(since.as_micros())], &mut params);
        sql.push_str(&format!(" AND at >= {p}"));
    }
    if let Some(until) = range.until {
        let p = placeholders(vec![SqlParam::Int(until.as_micros())], &mut params);
        sql.push_str(&format!(" AND at < {p}"));
    }
    let p = placeholders(vec![SqlParam::Int(i64::from(limit))], &mut params);
    sql.push_str(&format!(" ORDER BY {TIER_ORDER} LIMIT {p}"));
    (sql, params)
}

/// The order of a member's stored tier changes as a page reads them:
/// newest first.
const TIER_ORDER: &str = "at DESC, position DESC";

/// PostgreSQL: the community's policy, the member's all-channels state and
/// its stored tier changes (`tiers`, from [`tier_changes_sql`], whose first
/// two parameters are the community and the member) in one row of one
/// statement, the changes as arrays in the order `tiers` gives them.
fn tiers_in_one_statement(g: u64, tiers: (String, Vec<SqlParam>)) -> (String, Vec<SqlParam>) {
    let (tiers, mut params) = tiers;
    let channel = placeholders(vec![SqlParam::Text(ALL_CHANNELS.to_owned())], &mut params);
    let order = format!("ORDER BY {TIER_ORDER}");
    let sql = format!(
        "SELECT p.policy, p.position, s.state, t.ats, t.positions, t.froms, t.tos \
         FROM (SELECT 1) AS one \
         LEFT JOIN score_policies_g{g} p ON p.community_id = $1 \
         LEFT JOIN score_states_g{g} s \
           ON s.community_id = $1 AND s.channel = {channel} AND s.member_id = $2 \
         CROSS JOIN (SELECT array_agg(at {order}) AS ats, array_agg(position {order}) AS positions, \
           array_agg(from_tier {order}) AS froms, array_agg(to_tier {order}) AS tos \
           FROM ({tiers}) AS changes) AS t"
    );
    (sql, params)
}

fn tier_change_from((at, position, from, to): TierTuple) -> Result<TierChange, ProjectionError> {
    let tier = |t: i16| {
        Tier::from_i32(i32::from(t)).ok_or_else(|| ProjectionError::Corrupt(format!("tier {t}")))
    };
    Ok(TierChange {
        at: Timestamp::from_micros(at),
        position: from_db(position)?,
        from: tier(from)?,
        to: tier(to)?,
    })
}

/// Activities read per round of [`Projections::top_contributions`].
const TOP_SCAN_PAGE: i64 = 256;

/// States the first read of [`Projections::rank`] takes beyond the `want`
/// it needs: with bounds kept tight by upkeep, a page settles within a few
/// states past it. Each later read takes twice as many as the one before.
/// Every state read is decoded and evaluated (about 30 µs at 10 M), so
/// reading 256 for a top 100 cost more than the ranking needed.
const RANK_SLACK: usize = 32;

/// The most states one read of [`Projections::rank`] takes.
const RANK_PAGE_MAX: usize = 4096;

/// Reads of the active scores generation.
impl Projections {
    /// The policy of `community_id` and the position of the event that set
    /// it; `None` while the default applies.
    pub async fn scoring_policy(
        &self,
        g: u64,
        community_id: &str,
    ) -> Result<Option<(Policy, u64)>, ProjectionError> {
        let pool = self.pool(NAME).await?;
        let sql =
            format!("SELECT policy, position FROM score_policies_g{g} WHERE community_id = $1");
        let row: Option<(Vec<u8>, i64)> = on_pool!(&pool, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(community_id)
                .persistent(false).fetch_optional(p)
                .await?
        });
        row.map(|(bytes, position)| Ok((decode_policy(&bytes)?, from_db(position)?)))
            .transpose()
    }

    pub async fn member_role(
        &self,
        g: u64,
        community_id: &str,
        member_id: &str,
    ) -> Result<MemberRole, ProjectionError> {
        let pool = self.pool(NAME).await?;
        let sql =
            format!("SELECT role FROM score_roles_g{g} WHERE community_id = $1 AND member_id = $2");
        let role: Option<i16> = on_pool!(&pool, p => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(community_id)
                .bind(member_id)
                .persistent(false).fetch_optional(p)
                .await?
        });
        match role {
            None => Ok(MemberRole::Member),
            Some(r) => MemberRole::from_i32(i32::from(r))
                .ok_or_else(|| ProjectionError::Corrupt(format!("member role {r}"))),
        }
    }

    /// A member's activities on one channel or all, up to `until`, in
    /// canonical order: the input of a replay.
    pub async fn score_activities(
        &self,
        g: u64,
        community_id: &str,
        member_id: &str,
        channel: Option<&str>,
        until: Option<Timestamp>,
    ) -> Result<Vec<Activity>, ProjectionError> {
        let pool = self.pool(NAME).await?;
        let rows: Vec<ActivityTuple> = on_pool!(&pool, p => {
            activities_query(g, community_id, member_id, channel, until)
                .build_query_as()
                .persistent(false).fetch_all(p)
                .await?
        });
        rows.into_iter()
            .map(|r| {
                activity_from(r)
                    .map(|(_, a)| a)
                    .map_err(ProjectionError::from)
            })
            .collect()
    }

    /// A member's folded state on one channel or all (`ALL_CHANNELS`).
    pub async fn score_state(
        &self,
        g: u64,
        community_id: &str,
        member_id: &str,
        channel: &str,
    ) -> Result<Option<ScoreState>, ProjectionError> {
        let pool = self.pool(NAME).await?;
        let sql = format!(
            "SELECT state FROM score_states_g{g} \
             WHERE community_id = $1 AND channel = $2 AND member_id = $3"
        );
        let bytes: Option<Vec<u8>> = on_pool!(&pool, p => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(community_id)
                .bind(channel)
                .bind(member_id)
                .persistent(false).fetch_optional(p)
                .await?
        });
        Ok(bytes.map(|b| decode_state(&b)).transpose()?)
    }

    /// Ranked members (staff and bots left out), highest score first, ties
    /// by member id: the first `limit` after skipping `offset`, exact for
    /// `query.as_of`.
    ///
    /// Reads states by decreasing bound, evaluates each for `as_of`, and
    /// stops once the members it holds at or above the next bound fill the
    /// page: nobody unread can score higher (see the module doc).
    pub async fn rank(
        &self,
        g: u64,
        query: &RankQuery,
        policy: &Policy,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Ranked>, ProjectionError> {
        let want = offset + limit;
        // A tier at or above `min_tier` needs a score within the margin of
        // its start, and the score is at most the bound.
        let min_bound = (policy.thresholds.start(query.min_tier) - policy.demotion_margin).max(0.0);
        // The best `want` so far, in ranking order: (score, member, state).
        let mut best: Vec<(f64, String, ScoreState)> = Vec::with_capacity(want + 1);
        let order = |a: &(f64, String, ScoreState), score: f64, member: &str| {
            score.total_cmp(&a.0).then_with(|| a.1.as_str().cmp(member))
        };
        let mut after: Option<(f64, String)> = None;
        let mut read = 0usize;
        // Pages are separate reads: upkeep may lower a member's bound
        // between two (`tighten_bounds`), and the member comes again after
        // the cursor. Its state is the same; count it once.
        let mut seen = std::collections::HashSet::new();
        let mut page_size = (want + want / 4 + RANK_SLACK).min(RANK_PAGE_MAX);
        loop {
            let page = self
                .states_by_bound(g, query, min_bound, after.as_ref(), page_size as i64)
                .await?;
            read += page.len();
            let exhausted = page.len() < page_size;
            page_size = (page_size * 2).min(RANK_PAGE_MAX);
            for stored in page.iter() {
                if !seen.insert(stored.member_id.clone()) {
                    continue;
                }
                // The score needs no tier: evaluate without replaying checks.
                let score = stored.state.evaluate(policy, query.as_of).value;
                // Behind the worst of a full list: cannot make the page.
                if best.len() == want
                    && best
                        .last()
                        .is_some_and(|worst| order(worst, score, &stored.member_id).is_lt())
                {
                    continue;
                }
                if query.min_tier > Tier::Observer
                    && stored.state.at_time(policy, query.as_of).1 < query.min_tier
                {
                    continue;
                }
                let at = best
                    .binary_search_by(|probe| order(probe, score, &stored.member_id))
                    .unwrap_or_else(|i| i);
                best.insert(at, (score, stored.member_id.clone(), stored.state.clone()));
                best.truncate(want);
            }
            if let Some(last) = page.last() {
                after = Some((last.bound, last.member_id.clone()));
            }
            // Settled once the page's last member is safe from everyone
            // unread: they score at most the last bound read, and one
            // scoring exactly that comes later by member id.
            let settled = best.len() == want
                && after.as_ref().is_some_and(|(bound, last_id)| {
                    let (score, member, _) = best.last().expect("a full page");
                    *score > *bound || (*score == *bound && member <= last_id)
                });
            if exhausted || settled {
                break;
            }
        }
        tracing::debug!(read, want, "ranked");
        Ok(best
            .into_iter()
            .skip(offset)
            .map(|(score, member_id, state)| {
                let tier = state.at_time(policy, query.as_of).1;
                Ranked {
                    member_id,
                    score,
                    tier,
                    last_active_at: Timestamp::from_micros(state.at.unwrap_or(0)),
                    state,
                }
            })
            .collect())
    }

    /// Every ranked member's state (staff and bots left out) with a bound of
    /// at least `min_bound`: for orderings the bound cannot guide.
    pub async fn ranked_states(
        &self,
        g: u64,
        query: &RankQuery,
        min_bound: f64,
    ) -> Result<Vec<StoredScore>, ProjectionError> {
        self.states_by_bound(g, query, min_bound, None, i64::MAX)
            .await
    }

    async fn states_by_bound(
        &self,
        g: u64,
        query: &RankQuery,
        min_bound: f64,
        after: Option<&(f64, String)>,
        limit: i64,
    ) -> Result<Vec<StoredScore>, ProjectionError> {
        let pool = self.pool(NAME).await?;
        // Decoded as they arrive: the driver steps through the next rows
        // meanwhile (on SQLite, on its own thread).
        let mut out = Vec::new();
        on_pool!(&pool, p => {
            let mut qb = QueryBuilder::new(format!(
                "SELECT s.member_id, s.state, s.bound FROM score_states_g{g} s \
                 WHERE s.community_id = "
            ));
            qb.push_bind(query.community_id.clone());
            qb.push(" AND s.channel = ");
            qb.push_bind(query.channel.clone());
            qb.push(" AND s.bound >= ");
            qb.push_bind(min_bound);
            if let Some((bound, member)) = after {
                qb.push(" AND (s.bound < ");
                qb.push_bind(*bound);
                qb.push(" OR (s.bound = ");
                qb.push_bind(*bound);
                qb.push(" AND s.member_id > ");
                qb.push_bind(member.clone());
                qb.push("))");
            }
            qb.push(format!(
                " AND NOT EXISTS (SELECT 1 FROM score_roles_g{g} r \
                 WHERE r.community_id = s.community_id AND r.member_id = s.member_id \
                 AND r.role <> {})",
                MemberRole::Member as i16
            ));
            qb.push(" ORDER BY s.bound DESC, s.member_id LIMIT ");
            qb.push_bind(limit);
            let mut rows = qb.build_query_as::<(String, Vec<u8>, f64)>().persistent(false).fetch(p);
            while let Some((member_id, bytes, bound)) = rows.try_next().await? {
                out.push(StoredScore {
                    member_id,
                    state: decode_state(&bytes)?,
                    bound,
                });
            }
        });
        Ok(out)
    }

    /// Every member of a community with their activities, grouped by member
    /// and in canonical order, in chunks of whole members: for previews. One
    /// ordered read on another thread (a blocking one through rusqlite on
    /// SQLite, see `sqlite_pass`; a task streaming the rows on PostgreSQL,
    /// see `pg_pass`) hands chunks over while `each` runs here.
    pub async fn for_each_member_activities(
        &self,
        g: u64,
        community_id: &str,
        mut each: impl FnMut(&str, &[Activity]),
    ) -> Result<(), ProjectionError> {
        // Two chunks in flight at most: memory stays bounded whichever
        // side is slower. Only a cancelled caller stops receiving.
        let (chunks, mut received) = tokio::sync::mpsc::channel::<MemberChunk>(2);
        let cancelled = || sqlx::Error::Protocol("the preview was cancelled".into());
        let community = community_id.to_owned();
        let read: BoxFuture<'_, Result<(), ProjectionError>> = match self.pool(NAME).await? {
            DbPool::Sqlite(_) => self
                .read_sqlite(NAME, move |conn| {
                    sqlite_pass::for_each_chunk(conn, g, &community, |chunk| {
                        chunks.blocking_send(chunk).map_err(|_| cancelled())
                    })?;
                    Ok(())
                })
                .boxed(),
            DbPool::Postgres(pool) => {
                let read = tokio::spawn(async move {
                    pg_pass::for_each_chunk(&pool, g, &community, chunks).await
                });
                async move {
                    read.await.map_err(|e| {
                        ProjectionError::Corrupt(format!("the preview's read failed: {e}"))
                    })??;
                    Ok(())
                }
                .boxed()
            }
        };
        let consume = async {
            while let Some(chunk) = received.recv().await {
                for (member, activities) in chunk {
                    each(&member, &activities);
                }
            }
        };
        let (read, ()) = futures::join!(read, consume);
        read
    }

    /// What a timeline page shows of a member's tiers, from one snapshot
    /// of the scores: the community's policy, the member's all-channels
    /// state (for the demotions time has made since its latest
    /// interaction) and its stored changes in `range`, newest first.
    /// Read apart, a batch committed between the reads could leave a
    /// change out of the page. On SQLite one hop to a reader of the scores
    /// file; on PostgreSQL one statement (a statement reads one snapshot):
    /// one round trip on a page's critical path, where a transaction of
    /// three reads took five.
    pub async fn timeline_tiers(
        &self,
        g: u64,
        community_id: &str,
        member_id: &str,
        range: &TierRange,
        limit: u32,
    ) -> Result<TierReads, ProjectionError> {
        let tiers = tier_changes_sql(g, community_id, member_id, range, limit);
        type Raw = (Option<(Vec<u8>, i64)>, Option<Vec<u8>>, Vec<TierTuple>);
        let (policy, state, stored): Raw = match self.pool(NAME).await? {
            // SQLite has no arrays to return the changes in one row with the
            // rest: three reads in one read transaction, in one hop.
            DbPool::Sqlite(_) => {
                let community = || SqlParam::Text(community_id.to_owned());
                let policy = (
                    format!(
                        "SELECT policy, position FROM score_policies_g{g} WHERE community_id = $1"
                    ),
                    vec![community()],
                );
                let state = (
                    format!(
                        "SELECT state FROM score_states_g{g} \
                         WHERE community_id = $1 AND channel = $2 AND member_id = $3"
                    ),
                    vec![
                        community(),
                        SqlParam::Text(ALL_CHANNELS.to_owned()),
                        SqlParam::Text(member_id.to_owned()),
                    ],
                );
                self.read_sqlite(NAME, move |conn| {
                    let tx = conn.transaction()?;
                    // Keyed reads: one row or none.
                    let (sql, params) = policy;
                    let policy =
                        sqlite_rows(&tx, &sql, params, |row| Ok((row.get(0)?, row.get(1)?)))?.pop();
                    let (sql, params) = state;
                    let state = sqlite_rows(&tx, &sql, params, |row| row.get(0))?.pop();
                    let (sql, params) = tiers;
                    let stored = sqlite_rows(&tx, &sql, params, |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })?;
                    tx.commit()?;
                    Ok((policy, state, stored))
                })
                .await?
            }
            DbPool::Postgres(pool) => {
                let (sql, params) = tiers_in_one_statement(g, tiers);
                let row = bind_params(sqlx::query(sqlx::AssertSqlSafe(sql)), params)
                    .fetch_one(&pool)
                    .await?;
                let policy: Option<Vec<u8>> = row.try_get(0)?;
                let position: Option<i64> = row.try_get(1)?;
                let state: Option<Vec<u8>> = row.try_get(2)?;
                let bigints = |i| row.try_get::<Option<Vec<i64>>, _>(i);
                let (ats, positions) = (bigints(3)?, bigints(4)?);
                let smallints = |i| row.try_get::<Option<Vec<i16>>, _>(i);
                let (froms, tos) = (smallints(5)?, smallints(6)?);
                // array_agg of no rows is NULL: no stored change.
                let stored = ats
                    .unwrap_or_default()
                    .into_iter()
                    .zip(positions.unwrap_or_default())
                    .zip(
                        froms
                            .unwrap_or_default()
                            .into_iter()
                            .zip(tos.unwrap_or_default()),
                    )
                    .map(|((at, position), (from, to))| (at, position, from, to))
                    .collect();
                (policy.zip(position), state, stored)
            }
        };
        Ok(TierReads {
            policy: policy.map(|(bytes, _)| decode_policy(&bytes)).transpose()?,
            state: state.map(|b| decode_state(&b)).transpose()?,
            stored: stored
                .into_iter()
                .map(tier_change_from)
                .collect::<Result<_, _>>()?,
        })
    }

    /// A member's momentum at `as_of` (not before their latest interaction)
    /// from their all-channels state and the snapshot it stood at 30 days
    /// before: the same as `rapport_domain::score::momentum`, without a
    /// replay.
    pub async fn momentum_now(
        &self,
        g: u64,
        community_id: &str,
        member_id: &str,
        state: &ScoreState,
        policy: &Policy,
        as_of: Timestamp,
    ) -> Result<f64, ProjectionError> {
        let momenta = self
            .momentum_many(g, community_id, &[(member_id, state)], policy, as_of)
            .await?;
        Ok(momenta[0])
    }

    /// [`Projections::momentum_now`] for many members of one community at
    /// once, from their all-channels states: one query for the snapshots.
    pub async fn momentum_many(
        &self,
        g: u64,
        community_id: &str,
        members: &[(&str, &ScoreState)],
        policy: &Policy,
        as_of: Timestamp,
    ) -> Result<Vec<f64>, ProjectionError> {
        let base = momentum_base(as_of);
        let base_day = day_of(base.as_micros());
        let needed: Vec<&str> = members
            .iter()
            .filter(|(_, state)| state.at.is_some_and(|latest| day_of(latest) > base_day))
            .map(|(member, _)| *member)
            .collect();
        let pool = self.pool(NAME).await?;
        let mut snapshots: HashMap<String, ScoreState> = HashMap::new();
        for chunk in needed.chunks(CHUNK) {
            // Per member, only the newest snapshot not after the base day:
            // one index probe each (a correlated subquery per listed
            // member), whatever maintenance has pruned yet.
            on_pool!(&pool, p => {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT m.column1, \
                     (SELECT x.state FROM score_snapshots_g{g} x WHERE x.community_id = "
                ));
                qb.push_bind(community_id.to_owned());
                qb.push(" AND x.member_id = m.column1 AND x.day <= ");
                qb.push_bind(base_day);
                qb.push(" ORDER BY x.day DESC LIMIT 1) FROM (VALUES ");
                push_tuples(&mut qb, chunk.iter().map(|m| [*m]));
                qb.push(") AS m");
                // Decoded as they arrive, while the driver reads on.
                let mut rows = qb
                    .build_query_as::<(String, Option<Vec<u8>>)>()
                    .persistent(false)
                    .fetch(p);
                while let Some((member, state)) = rows.try_next().await? {
                    if let Some(state) = state {
                        snapshots.insert(member, decode_state(&state)?);
                    }
                }
            });
        }
        members
            .iter()
            .map(|(member, state)| {
                let then = if state.at.is_none_or(|latest| day_of(latest) <= base_day) {
                    (*state).clone()
                } else {
                    snapshots.remove(*member).unwrap_or_default()
                };
                let now = as_of.max(Timestamp::from_micros(state.at.unwrap_or(i64::MIN)));
                Ok(state.evaluate(policy, now).value - then.evaluate(policy, base).value)
            })
            .collect()
    }

    /// The `n` interactions that contribute most to the engagement of a
    /// member whose state is `state`, at `as_of` (not before the latest):
    /// read newest first, stopping once no older interaction could beat
    /// the n-th (a value is at most the largest weight among the kinds the
    /// member has, decayed: `ScoreState::max_value`).
    /// The same choice as `rapport_domain::score::assess`, without reading
    /// the whole history.
    #[allow(clippy::too_many_arguments)]
    pub async fn top_contributions(
        &self,
        g: u64,
        community_id: &str,
        member_id: &str,
        channel: Option<&str>,
        state: &ScoreState,
        policy: &Policy,
        as_of: Timestamp,
        n: usize,
    ) -> Result<Vec<Contribution>, ProjectionError> {
        if n == 0 || state.at.is_none() {
            return Ok(Vec::new());
        }
        // No older interaction of this member can be worth more than the
        // most its kinds are worth: a member who only answers stops after
        // the first page instead of half a year of rows.
        let max_value = state.max_value(policy).unwrap_or_else(|| {
            policy
                .kind_weights
                .values()
                .copied()
                .chain([policy.positive_mention_weight])
                .fold(0.0, f64::max)
                * policy.incentive_factor.max(1.0)
        });
        let decay = |at: Timestamp| {
            let age_days = (as_of.as_micros() - at.as_micros()).max(0) as f64 / 86_400e6;
            0.5f64.powf(age_days / policy.half_life_days)
        };
        let pool = self.pool(NAME).await?;
        let mut top: Vec<Contribution> = Vec::new();
        let mut before: Option<(i64, i64)> = None;
        loop {
            let rows: Vec<ActivityTuple> = on_pool!(&pool, p => {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {ACTIVITY_COLUMNS} FROM score_activity_g{g} WHERE community_id = "
                ));
                qb.push_bind(community_id.to_owned());
                qb.push(" AND member_id = ");
                qb.push_bind(member_id.to_owned());
                if let Some(channel) = channel {
                    qb.push(" AND channel = ");
                    qb.push_bind(channel.to_owned());
                }
                if let Some((at, position)) = before {
                    qb.push(" AND (at, position) < (");
                    qb.push_bind(at);
                    qb.push(", ");
                    qb.push_bind(position);
                    qb.push(")");
                }
                qb.push(" ORDER BY at DESC, position DESC LIMIT ");
                qb.push_bind(TOP_SCAN_PAGE);
                qb.build_query_as().persistent(false).fetch_all(p).await?
            });
            let full = rows.len() as i64 == TOP_SCAN_PAGE;
            let mut oldest = None;
            for row in rows {
                let (_, a) = activity_from(row)?;
                oldest = Some(a.at);
                before = Some((a.at.as_micros(), to_db(a.position)));
                let decayed_value = a.value(policy) * decay(a.at);
                if decayed_value <= 0.0 {
                    continue;
                }
                top.push(Contribution {
                    position: a.position,
                    kind: a.kind,
                    channel: a.channel,
                    at: a.at,
                    decayed_value,
                    points: 0.0,
                });
            }
            top.sort_by(|a, b| {
                b.decayed_value
                    .total_cmp(&a.decayed_value)
                    .then(b.position.cmp(&a.position))
            });
            top.truncate(n);
            let beaten =
                |at: Timestamp| top.len() == n && max_value * decay(at) < top[n - 1].decayed_value;
            if !full || oldest.is_some_and(beaten) {
                break;
            }
        }
        // Each one's share of the engagement points.
        let total = state.engagement * decay(Timestamp::from_micros(state.at.unwrap_or(0)));
        let score = state.evaluate(policy, as_of);
        let points = 100.0 * policy.component_weights.engagement * score.components.engagement;
        for c in &mut top {
            c.points = if total > 0.0 {
                points * c.decayed_value / total
            } else {
                0.0
            };
        }
        Ok(top)
    }

    /// The staff and bots of a community.
    pub async fn unranked_members(
        &self,
        g: u64,
        community_id: &str,
    ) -> Result<BTreeSet<String>, ProjectionError> {
        let pool = self.pool(NAME).await?;
        let sql = format!(
            "SELECT member_id FROM score_roles_g{g} WHERE community_id = $1 AND role <> {}",
            MemberRole::Member as i16
        );
        let rows: Vec<String> = on_pool!(&pool, p => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(community_id)
                .persistent(false).fetch_all(p)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Sorted rows of every scores table of generation `g`, for equality tests.
    pub async fn scores_dump(&self, g: u64) -> Result<Vec<String>, ProjectionError> {
        let pool = self.pool(NAME).await?;
        let mut out = Vec::new();
        let states: Vec<StateTuple> = on_pool!(&pool, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT community_id, channel, member_id, state, at, tier \
                 FROM score_states_g{g} ORDER BY community_id, channel, member_id"
            )))
            .persistent(false).fetch_all(p)
            .await?
        });
        // Decoded: a state written as maps and one written as packed runs
        // are the same state (see `StoredState`).
        for (community, channel, member, bytes, at, tier) in states {
            let state = decode_state(&bytes)?;
            out.push(format!(
                "state {community} {channel:?} {member} {state:?} {at} {tier}"
            ));
        }
        let pairs: Vec<(String, String, String, String, i64)> = on_pool!(&pool, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT community_id, member_id, channel, other_member_id, last_day \
                 FROM score_pairs_g{g} ORDER BY community_id, member_id, channel, other_member_id"
            )))
            .persistent(false).fetch_all(p)
            .await?
        });
        out.extend(pairs.into_iter().map(|r| format!("pair {r:?}")));
        let tiers: Vec<(String, String, i64, i64, i16, i16)> = on_pool!(&pool, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT community_id, member_id, at, position, from_tier, to_tier \
                 FROM score_tiers_g{g} ORDER BY community_id, member_id, at, position"
            )))
            .persistent(false).fetch_all(p)
            .await?
        });
        out.extend(tiers.into_iter().map(|r| format!("tier {r:?}")));
        let snapshots: Vec<(String, String, i64, Vec<u8>)> = on_pool!(&pool, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT community_id, member_id, day, state FROM score_snapshots_g{g} \
                 ORDER BY community_id, member_id, day"
            )))
            .persistent(false).fetch_all(p)
            .await?
        });
        // Only the snapshots momentum can still ask for: maintenance prunes
        // the others when it gets to them, at a time no log decides.
        let mut by_member: BTreeMap<(String, String), BTreeMap<i64, ScoreState>> = BTreeMap::new();
        for (community, member, day, bytes) in snapshots {
            by_member
                .entry((community, member))
                .or_default()
                .insert(day, decode_state(&bytes)?);
        }
        for ((community, member), days) in by_member {
            let latest = self
                .score_state(g, &community, &member, ALL_CHANNELS)
                .await?
                .and_then(|s| s.at)
                .map_or(i64::MAX, day_of);
            let keep_from = momentum_snapshots_to_keep(&days, latest);
            for (day, state) in days.range(keep_from..) {
                out.push(format!("snapshot {community} {member} {day} {state:?}"));
            }
        }
        let activity: Vec<ActivityTuple> = on_pool!(&pool, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {ACTIVITY_COLUMNS} FROM score_activity_g{g} \
                 ORDER BY community_id, member_id, at, position"
            )))
            .persistent(false).fetch_all(p)
            .await?
        });
        out.extend(activity.into_iter().map(|r| format!("activity {r:?}")));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;
    use crate::pass_fixtures::community;

    /// The stored state as it was declared before its maps were read as
    /// entries: what every stored row was written with.
    #[derive(Clone, PartialEq, Message)]
    struct MapState {
        #[prost(double, tag = "1")]
        engagement: f64,
        #[prost(double, tag = "2")]
        advocacy: f64,
        #[prost(int64, optional, tag = "3")]
        at: Option<i64>,
        #[prost(btree_map = "int64, uint32", tag = "4")]
        weeks: BTreeMap<i64, u32>,
        #[prost(btree_map = "int64, uint32", tag = "5")]
        exchange_days: BTreeMap<i64, u32>,
        #[prost(btree_map = "string, int64", tag = "6")]
        channels: BTreeMap<String, i64>,
        #[prost(bool, tag = "7")]
        organic: bool,
        #[prost(int32, tag = "8")]
        tier: i32,
        #[prost(int64, tag = "9")]
        tier_day: i64,
        #[prost(uint64, tag = "10")]
        interactions: u64,
        #[prost(uint32, tag = "11")]
        kinds: u32,
    }

    /// States of real folds, with zero keys and values (which protobuf
    /// leaves out of a map entry) among them.
    fn states() -> Vec<ScoreState> {
        let policy = Policy::default();
        let mut out: Vec<ScoreState> = community(20)
            .into_values()
            .map(|activities| fold_all(&activities, &policy).state)
            .collect();
        let mut zeros = out[0].clone();
        zeros.exchange_days.insert(0, 0);
        zeros.exchange_days.insert(-3, 7);
        zeros.weeks.insert(0, 1);
        zeros.channels.insert(String::new(), 0);
        out.push(zeros);
        // A busy member's: every day of the window and every week marked.
        let mut busy = out[0].clone();
        busy.exchange_days = (20_000..20_180)
            .map(|day| (day, (day % 5) as u32))
            .collect();
        busy.weeks = (2_800..2_826)
            .map(|week| (week, (week % 2 + 1) as u8))
            .collect();
        out.push(busy);
        out.push(ScoreState::default());
        out
    }

    /// A state as it was written before the packed runs: protobuf maps.
    fn map_form(state: &ScoreState) -> Vec<u8> {
        MapState {
            engagement: state.engagement,
            advocacy: state.advocacy,
            at: state.at,
            weeks: state
                .weeks
                .iter()
                .map(|(w, m)| (*w, u32::from(*m)))
                .collect(),
            exchange_days: state.exchange_days.clone(),
            channels: state.channels.clone(),
            organic: state.organic,
            tier: state.tier.as_i32(),
            tier_day: state.tier_day,
            interactions: state.interactions,
            kinds: state.kinds,
        }
        .encode_to_vec()
    }

    /// What is written reads back as it was, and states written as maps
    /// before the packed runs still read the same: no rebuild is needed.
    #[test]
    fn stored_states_read_back_in_either_form() {
        for state in states() {
            let packed = encode_state(&state);
            assert_eq!(decode_state(&packed).expect("packed"), state);
            assert_eq!(decode_state(&map_form(&state)).expect("maps"), state);
        }
    }

    /// SQLite keeps at most 1,002 bytes of a row in a 4 KiB page of a
    /// `WITHOUT ROWID` table and spills the rest to an overflow page that
    /// every rewrite of the row writes again. A busy member's state (every
    /// day of the window, every week) now fits; as maps it did not.
    #[test]
    fn a_busy_members_state_fits_in_its_page() {
        let busy = states()
            .into_iter()
            .max_by_key(|s| s.exchange_days.len())
            .expect("states");
        assert_eq!((busy.exchange_days.len(), busy.weeks.len()), (180, 26));
        let (packed, maps) = (encode_state(&busy).len(), map_form(&busy).len());
        assert!(packed <= 600, "packed: {packed} bytes");
        assert!(maps > 1_002, "maps: {maps} bytes");
    }

    /// Packed runs that do not pair up are a corrupt row, not a panic.
    #[test]
    fn packed_runs_of_different_lengths_are_corrupt() {
        let mut stored = StoredState::decode(encode_state(&states()[0]).as_slice()).expect("state");
        stored.exchange_day_counts.push(1);
        let err = decode_state(&stored.encode_to_vec()).expect_err("corrupt");
        assert!(err.to_string().contains("exchange days"), "{err}");
        let stored = StoredState {
            week_steps: vec![i64::MAX, 1],
            week_marks: vec![1, 1],
            ..StoredState::default()
        };
        let err = decode_state(&stored.encode_to_vec()).expect_err("overflow");
        assert!(err.to_string().contains("weeks"), "{err}");
    }

    /// Snapshot days written for each member, relative to the day of its
    /// latest interaction: the first member has none as old as
    /// [`MOMENTUM_DAYS`](rapport_domain::score::MOMENTUM_DAYS), the others
    /// three.
    fn snapshot_days(first: bool) -> &'static [i64] {
        if first {
            &[-29, 0]
        } else {
            &[-40, -35, -31, -29, 0]
        }
    }

    /// Writes the states of two small communities (all channels and one
    /// channel: four groups, each longer than an upkeep chunk) and momentum
    /// snapshots for each member, lets a year pass, runs the bound upkeep
    /// to its end with chunks of `budget` and returns (bound before, bound
    /// after, the score a year later) per state, how many chunks it took,
    /// and the snapshots left as (community, member, days before the
    /// member's latest interaction).
    async fn upkeep_a_year_later(
        mut tx: Tx<'_>,
        budget: Duration,
    ) -> (Vec<(f64, f64, f64)>, usize, Vec<(String, String, i64)>) {
        let ddl = Scores.create_tables(1, tx.is_postgres());
        execute_all(tx.reborrow(), ddl).await.expect("create");
        let policy = Policy::default();
        let mut states = Vec::new();
        let mut snapshots = Vec::new();
        let mut latest_days = HashMap::new();
        let mut latest = Timestamp::from_micros(0);
        for id in ["acme", "beta"] {
            for channel in [ALL_CHANNELS, "forum"] {
                for (i, (member, activities)) in community(5).into_iter().enumerate() {
                    let state = fold_all(&activities, &policy).state;
                    let at = state.at.expect("folded");
                    latest = latest.max(Timestamp::from_micros(at));
                    if channel == ALL_CHANNELS {
                        latest_days.insert((id.to_owned(), member.clone()), day_of(at));
                        for day in snapshot_days(i == 0) {
                            let row = (id.into(), member.clone(), day_of(at) + day);
                            snapshots.push((row.0, row.1, row.2, encode_state(&state)));
                        }
                    }
                    states.push(StateRow::new(
                        (id.into(), channel.into(), member),
                        &state,
                        &policy,
                    ));
                }
            }
        }
        let mut rows = FoldRows {
            states,
            snapshots,
            ..FoldRows::default()
        };
        rows.write(&mut tx, 1).await.expect("states");
        let mut states = std::mem::take(&mut rows.states);
        let later = latest.plus_seconds(365 * 86_400);
        let mut after = None;
        let mut rounds = 0;
        loop {
            rounds += 1;
            after = tighten_bounds(&mut tx, 1, later, after, budget)
                .await
                .expect("upkeep");
            if after.is_none() {
                break;
            }
            assert!(rounds < 100, "the upkeep ends");
        }
        let bounds: Vec<(String, String, String, f64)> = on_tx!(&mut tx, c => sqlx::query_as(
            "SELECT community_id, channel, member_id, bound FROM score_states_g1 \
             ORDER BY community_id, channel, member_id",
        )
        .fetch_all(&mut **c)
        .await)
        .expect("bounds");
        states.sort_by(|a, b| a.key.cmp(&b.key));
        let at = later.plus_seconds(-BOUND_SLACK_SECONDS);
        let bounds = states
            .iter()
            .zip(bounds)
            .map(|(row, (community, channel, member, bound))| {
                assert_eq!(row.key, (community, channel, member));
                let state = decode_state(&row.state).expect("state");
                (row.bound, bound, state.evaluate(&policy, at).value)
            })
            .collect();
        let left: Vec<(String, String, i64)> = on_tx!(&mut tx, c => sqlx::query_as(
            "SELECT community_id, member_id, day FROM score_snapshots_g1 \
             ORDER BY community_id, member_id, day",
        )
        .fetch_all(&mut **c)
        .await)
        .expect("snapshots");
        let left = left
            .into_iter()
            .map(|(community, member, day)| {
                let latest = latest_days[&(community.clone(), member.clone())];
                (community, member, day - latest)
            })
            .collect();
        (bounds, rounds, left)
    }

    /// What momentum can still ask for: per member, the newest snapshot
    /// at least [`MOMENTUM_DAYS`](rapport_domain::score::MOMENTUM_DAYS)
    /// old and every later one.
    fn assert_pruned(left: &[(String, String, i64)]) {
        let mut per_member: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
        for (community, member, day) in left {
            per_member
                .entry((community, member))
                .or_default()
                .push(*day);
        }
        assert_eq!(per_member.len(), 10, "{left:?}");
        let untouched = per_member
            .values()
            .filter(|days| days.as_slice() == snapshot_days(true))
            .count();
        assert_eq!(untouched, 2, "{per_member:?}");
        let pruned = per_member
            .values()
            .filter(|days| days.as_slice() == [-31, -29, 0])
            .count();
        assert_eq!(pruned, 8, "{per_member:?}");
    }

    /// Every bound decays to the score a day before "now" (and never below
    /// it): a year after the last interaction, each one is lowered.
    fn assert_lowered(bounds: &[(f64, f64, f64)]) {
        assert_eq!(bounds.len(), 20);
        for &(before, after, score) in bounds {
            assert!(after < before - BOUND_EPSILON, "{after} not below {before}");
            assert_eq!(after, score);
        }
    }

    /// With time to spare, two chunks of at most three states per group of
    /// five; out of time at once, one group of pruned states per chunk
    /// (never none; groups of two in tests: three chunks per group of
    /// five), and the same bounds and snapshots in the end.
    async fn upkeep_lowers_bounds(mut tx: Tx<'_>) {
        let (bounds, rounds, left) =
            upkeep_a_year_later(tx.reborrow(), Duration::from_secs(60)).await;
        assert_lowered(&bounds);
        assert_pruned(&left);
        assert_eq!(rounds, 8);
        let drops = Scores
            .tables(1)
            .into_iter()
            .map(|table| format!("DROP TABLE {table}"))
            .collect();
        execute_all(tx.reborrow(), drops).await.expect("drop");
        let (bounds, rounds, left) = upkeep_a_year_later(tx, Duration::ZERO).await;
        assert_lowered(&bounds);
        assert_pruned(&left);
        assert_eq!(rounds, 12);
    }

    #[tokio::test]
    async fn upkeep_lowers_bounds_on_sqlite() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("open");
        upkeep_lowers_bounds(Tx::Sqlite(&mut conn)).await;
    }

    #[tokio::test]
    async fn upkeep_lowers_bounds_on_postgres() {
        let Some(db) = rapport_testkit::TestDatabase::postgres("upkeep_lowers_bounds").await else {
            return;
        };
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        upkeep_lowers_bounds(Tx::Postgres(&mut conn)).await;
    }
}
