//! The projector machinery and the timeline read model, on both backends.
//! Two `Store`s on one database stand for two server replicas.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use rapport_domain::timeline::{Role, connection_deltas, timeline_rows};
use rapport_domain::{Event, Identity, Interaction, InteractionKind, Target, Timestamp};
use rapport_projections::scores::NAME as SCORES;
use rapport_projections::timeline::{NAME, Timeline, TimelineQuery};
use rapport_projections::{Projection, Projections, RunnerOptions, Tx};
use rapport_store::{DbPool, EventQuery, Store, StoreOptions};
use rapport_testkit::TestDatabase;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn fresh(backend: Backend, test: &str) -> Option<(TestDatabase, Store)> {
    let db = match backend {
        Backend::Sqlite => TestDatabase::sqlite(),
        Backend::Postgres => TestDatabase::postgres(test).await?,
    };
    let store = connect(&db).await;
    Some((db, store))
}

async fn connect(db: &TestDatabase) -> Store {
    let store = Store::connect(&StoreOptions::new(&db.url).with_master_key(
        rapport_store::MasterKey::from_base64(rapport_testkit::TEST_MASTER_KEY).unwrap(),
    ))
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

const T0: i64 = 1_760_000_000_000_000;

/// Interaction `i` of a small community where ten members reply to each
/// other, with a brand-targeted post now and then.
fn interaction(i: usize) -> Interaction {
    let handle = |n: usize| format!("member{}", n % 10);
    Interaction {
        community_id: "acme".into(),
        interaction_id: format!("i{i}"),
        channel: if i.is_multiple_of(3) {
            "discord"
        } else {
            "forum"
        }
        .into(),
        kind: if i.is_multiple_of(7) {
            InteractionKind::Post
        } else {
            InteractionKind::Reply
        },
        source_type: String::new(),
        actor: Identity {
            channel: "forum".into(),
            handle: handle(i),
        },
        // Not in position order: timelines sort by when things happened.
        occurred_at: Timestamp::from_micros(T0 + ((i * 7919) % 1000) as i64 * 1_000_000),
        target: Some(if i.is_multiple_of(7) {
            Target::Brand
        } else {
            Target::Member(Identity {
                channel: "forum".into(),
                handle: handle(i * 3 + 1),
            })
        }),
        incentivized: false,
        sentiment: None,
        campaign_id: String::new(),
        url: format!("https://forum.example/{i}"),
        excerpt: format!("message {i}"),
        actor_display_name: String::new(),
        attributes: BTreeMap::new(),
    }
}

async fn append(store: &Store, range: std::ops::Range<usize>) {
    for chunk in range.collect::<Vec<_>>().chunks(50) {
        let batch = chunk.iter().map(|&i| vec![interaction(i)]).collect();
        store
            .append_batch(batch, rapport_store::wall_clock())
            .await
            .expect("append");
    }
}

fn options() -> RunnerOptions {
    RunnerOptions {
        batch_size: 64,
        bulk_batch_size: 100,
        poll_interval: Duration::from_millis(10),
        leader_check_interval: Duration::from_millis(200),
        retire_grace: Duration::ZERO,
        ..RunnerOptions::default()
    }
}

/// Projectors that stop when dropped.
struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("projector task");
        }
    }
}

fn start(projections: &Projections, options: RunnerOptions) -> Running {
    let (stop, shutdown) = watch::channel(false);
    // No writer in these tests: the projectors find new events by polling.
    let (_commits_tx, commits) = watch::channel(0);
    let tasks = projections.spawn(commits, options, shutdown);
    Running { stop, tasks }
}

/// Waits until the active generation has applied the whole log.
async fn caught_up(projections: &Projections) -> u64 {
    let head = projections.store().head().await.expect("head");
    projections
        .wait_for(NAME, head, Instant::now() + Duration::from_secs(30))
        .await
        .expect("the projection catches up")
        .generation
}

async fn all_events(store: &Store) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let page = store
            .read_events(&EventQuery {
                after: events.last().map_or(0, |e: &Event| e.position),
                limit: 1000,
                ..EventQuery::default()
            })
            .await
            .expect("read");
        if page.events.is_empty() {
            return events;
        }
        events.extend(page.events);
    }
}

/// What the model must hold for the log, computed from the log by the pure
/// domain functions: (entries per member, connections as (member, other) →
/// (sent, received)).
type Expected = (
    BTreeMap<String, usize>,
    BTreeMap<(String, String), (u64, u64)>,
);

async fn expected(store: &Store) -> Expected {
    let events = all_events(store).await;
    let mut entries = BTreeMap::new();
    for row in events.iter().flat_map(timeline_rows) {
        *entries.entry(row.member_id).or_default() += 1;
    }
    let rows: Vec<_> = events.iter().flat_map(timeline_rows).collect();
    let connections = connection_deltas(&rows)
        .into_iter()
        .map(|d| ((d.member_id, d.other_member_id), (d.sent, d.received)))
        .collect();
    (entries, connections)
}

/// What the model holds, read through the public queries.
async fn actual(projections: &Projections, g: u64) -> Expected {
    let (members, _) = expected(projections.store()).await;
    let mut entries = BTreeMap::new();
    let mut connections = BTreeMap::new();
    for member in members.keys() {
        let page = projections
            .timeline_page(
                g,
                &TimelineQuery {
                    community_id: "acme".into(),
                    members: vec![member.clone()],
                    limit: 100_000,
                    ..TimelineQuery::default()
                },
            )
            .await
            .expect("timeline");
        entries.insert(member.clone(), page.len());
        for c in projections
            .connections(g, "acme", std::slice::from_ref(member), 1000)
            .await
            .expect("connections")
        {
            connections.insert((member.clone(), c.other_member_id), (c.sent, c.received));
        }
    }
    (entries, connections)
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

on_both_backends!(
    the_timeline_follows_the_log,
    a_failure_between_apply_and_checkpoint_loses_and_duplicates_nothing,
    a_rebuild_is_identical_to_the_live_model,
    new_projection_code_rebuilds_beside_the_live_model_and_switches,
    two_replicas_apply_each_event_once,
    a_late_switch_by_another_process_is_fenced,
    a_lingering_projector_applies_at_once_when_idle_and_gathers_commits_once_caught_up,
    a_read_waiting_for_a_position_ends_the_linger,
    an_interrupted_end_of_a_bulk_build_is_resumed,
);

/// A fresh PostgreSQL store and the timeline's pool, for the tests that
/// look at PostgreSQL's own catalogs.
async fn fresh_postgres(test: &str) -> Option<(TestDatabase, Store, sqlx::PgPool)> {
    let (db, store) = fresh(Backend::Postgres, test).await?;
    let DbPool::Postgres(pool) = store.projection_pool(NAME).await.unwrap() else {
        unreachable!("a PostgreSQL store");
    };
    Some((db, store, pool))
}

/// PostgreSQL only (SQLite plans without statistics): the leader renews
/// the planner statistics of the tables it filled, whether or not
/// autovacuum would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_the_leader_analyzes_the_tables_it_filled() {
    let Some((_db, store, pool)) = fresh_postgres("projection_analyze").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(
        &projections,
        RunnerOptions {
            analyze_interval: Duration::from_millis(100),
            ..options()
        },
    );
    append(&store, 0..300).await;
    let g = caught_up(&projections).await;
    let entries = format!("timeline_entries_g{g}");
    // PostgreSQL counts a backend's row changes in shared statistics only
    // when it flushes them: at most once a second, and an idle backend
    // after 10 s. The projector sees the table stale only then.
    //
    // Done means: analyzed by a command (`last_analyze`; autovacuum's is
    // `last_autoanalyze`), so by the projector, and no staler than the
    // projector's own threshold. Not "fewer than 50 changes since": when
    // statistics were flushed while the projector was still applying, it
    // analyzed a partly filled table, and the changes after that may stay
    // under its threshold for good.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (analyzed, fresh): (bool, bool) = sqlx::query_as(
            "SELECT last_analyze IS NOT NULL, n_mod_since_analyze <= 50 + 0.1 * n_live_tup \
             FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(&entries)
        .fetch_one(&pool)
        .await
        .unwrap();
        if analyzed && fresh {
            break;
        }
        assert!(Instant::now() < deadline, "{entries} never analyzed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
}

/// PostgreSQL only (SQLite's bulk build inserts into the tables
/// `create_tables` made): a bulk build replaces the entries table (the
/// staging table renamed) and the connections table (`CREATE TABLE AS`),
/// and must leave both in the shape `create_tables` gives: the same
/// columns, types, nullability and indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_bulk_build_leaves_the_tables_as_created() {
    let Some((_db, store, pool)) = fresh_postgres("projection_bulk_shape").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(&projections, options());
    append(&store, 0..100).await;
    let built = caught_up(&projections).await;
    running.stop().await;
    let created = 999;
    for sql in Timeline.create_tables(created, true) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    let shape = |g: u64| {
        let pool = pool.clone();
        async move {
            let mut shape = Vec::new();
            for table in ["entries", "connections"] {
                let name = format!("timeline_{table}_g{g}");
                let columns: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT column_name::text, data_type::text, is_nullable::text \
                     FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
                )
                .bind(&name)
                .fetch_all(&pool)
                .await
                .unwrap();
                let mut indexes: Vec<String> =
                    sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE tablename = $1")
                        .bind(&name)
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                // Index names carry the generation.
                for index in &mut indexes {
                    *index = index.replace(&format!("_g{g}"), "_g");
                }
                indexes.sort();
                shape.push((table, columns, indexes));
            }
            shape
        }
    };
    let (built, created) = (shape(built).await, shape(created).await);
    assert!(
        created
            .iter()
            .all(|(_, c, i)| !c.is_empty() && !i.is_empty())
    );
    assert_eq!(built, created);
}

/// SQLite: a bulk build drops the secondary indexes before its merge and
/// builds them after it; the generation must end with exactly the tables
/// and indexes `create_tables` gives (the staging tables gone). SQLite
/// keeps each statement's text, so the schema is compared as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_bulk_build_leaves_the_tables_as_created() {
    let Some((_db, store)) = fresh(Backend::Sqlite, "projection_bulk_shape").await else {
        return;
    };
    // Events before the projector starts: its first build is a bulk one
    // with rows to merge.
    append(&store, 0..100).await;
    let projections = Projections::new(store.clone());
    let running = start(&projections, options());
    let built = caught_up(&projections).await;
    running.stop().await;
    let suffix = format!("%_g{built}");
    let mut schema: Vec<String> = store
        .read_projections_sqlite(NAME, move |conn| {
            let mut statement = conn.prepare(
                "SELECT sql FROM sqlite_master \
                 WHERE name LIKE ?1 AND name LIKE 'timeline%' AND sql IS NOT NULL",
            )?;
            let rows = statement.query_map([&suffix], |row| row.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
        .expect("a SQLite store")
        .expect("the schema");
    schema.sort();
    let staging = |sql: &String| sql.contains("_staging_g") || sql.contains("_runs_g");
    let mut created: Vec<String> = Timeline
        .create_tables(built, false)
        .into_iter()
        .filter(|sql| !staging(sql))
        .collect();
    created.sort();
    assert!(created.iter().any(|sql| sql.contains("CREATE INDEX")));
    assert_eq!(schema, created);
}

/// Where each projection's active generation has got to, read the way a
/// read without `min_position` sees it (no waiting, so no wake-up).
async fn checkpoints(projections: &Projections) -> BTreeMap<&'static str, u64> {
    projections
        .status()
        .await
        .expect("status")
        .into_iter()
        .map(|s| (s.name, s.active.map_or(0, |g| g.position)))
        .collect()
}

/// A store with 21 events, its projectors running with `linger` and
/// caught up, the last event applied by idle projectors (which do not
/// wait): each projector is now lingering.
async fn lingering(backend: Backend, test: &str, linger: Duration) -> Option<Lingering> {
    let (db, store) = fresh(backend, test).await?;
    let projections = Projections::new(store.clone());
    let running = start(
        &projections,
        RunnerOptions {
            linger,
            ..options()
        },
    );
    append(&store, 0..20).await;
    let head = store.head().await.expect("head");
    // The first build ends with a switch, after which the projectors wait
    // out a linger and are then idle.
    for name in [NAME, SCORES] {
        projections
            .wait_for(name, head, Instant::now() + Duration::from_secs(30))
            .await
            .expect("built");
    }
    tokio::time::sleep(linger + Duration::from_millis(500)).await;

    // Idle: applied at once; then caught up, so the linger starts.
    append(&store, 20..21).await;
    let first = store.head().await.expect("head");
    applied_at_once(&projections, first).await;
    Some(Lingering {
        _db: db,
        store,
        projections,
        running,
        caught_up: Instant::now(),
    })
}

struct Lingering {
    _db: TestDatabase,
    store: Store,
    projections: Projections,
    running: Running,
    /// A moment just after both projectors caught up.
    caught_up: Instant,
}

/// `RunnerOptions::linger`: an idle projector applies a commit at once;
/// once it has caught up, the next commit waits for the linger to end
/// (as a read without `min_position` sees it); nothing is lost.
async fn a_lingering_projector_applies_at_once_when_idle_and_gathers_commits_once_caught_up(
    backend: Backend,
) {
    let linger = Duration::from_secs(3);
    let Some(l) = lingering(backend, "linger", linger).await else {
        return;
    };
    append(&l.store, 21..22).await;
    let second = l.store.head().await.expect("head");
    let mut applied_after = BTreeMap::new();
    while applied_after.len() < 2 {
        assert!(
            l.caught_up.elapsed() < linger + Duration::from_secs(5),
            "not applied after the linger"
        );
        for (name, position) in checkpoints(&l.projections).await {
            if position >= second {
                applied_after
                    .entry(name)
                    .or_insert_with(|| l.caught_up.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The linger began when the first commit was applied, a little before
    // `caught_up`: allow a second of slack.
    for (name, waited) in applied_after {
        assert!(
            waited >= linger - Duration::from_secs(1),
            "{name} applied {second} after {waited:?}, within its linger"
        );
    }
    assert_eq!(
        actual(&l.projections, caught_up(&l.projections).await).await,
        expected(&l.store).await
    );
    l.running.stop().await;
}

/// A read with `min_position` ends a projector's linger: a long linger
/// saves CPU under many small commits without making read-your-writes
/// wait for it.
async fn a_read_waiting_for_a_position_ends_the_linger(backend: Backend) {
    let linger = Duration::from_secs(10);
    let Some(l) = lingering(backend, "linger_wake", linger).await else {
        return;
    };
    append(&l.store, 21..22).await;
    let second = l.store.head().await.expect("head");
    for name in [NAME, SCORES] {
        let asked = Instant::now();
        l.projections
            .wait_for(name, second, asked + Duration::from_secs(10))
            .await
            .expect("applied for the waiting read");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{name} kept lingering for {:?} with a reader waiting",
            asked.elapsed()
        );
    }
    // Nobody waits for the next one: it waits for the linger.
    let third = waits_for_the_linger(&l, 22, "with nobody waiting").await;

    // A read for a position nobody wrote gives up; the linger it ended
    // does not stay ended after it.
    for name in [NAME, SCORES] {
        let never = third + 1_000_000;
        let asked = l
            .projections
            .wait_for(name, never, Instant::now() + Duration::from_millis(300))
            .await;
        assert!(asked.is_err(), "{name} reached {never}");
    }
    // Idle again: the next commit is applied at once, and the linger
    // after it is whole.
    tokio::time::sleep(Duration::from_millis(500)).await;
    append(&l.store, 23..24).await;
    let fourth = l.store.head().await.expect("head");
    applied_at_once(&l.projections, fourth).await;
    waits_for_the_linger(&l, 24, "after the read that gave up").await;
    l.running.stop().await;
}

/// Checks that both projectors apply `position` within 2 s, as idle
/// projectors do (watching checkpoints, so without ending a linger).
async fn applied_at_once(projections: &Projections, position: u64) {
    let idle = Instant::now();
    loop {
        let at = checkpoints(projections).await;
        if at.values().all(|p| *p >= position) {
            return;
        }
        assert!(
            idle.elapsed() < Duration::from_secs(2),
            "an idle projector applies a commit at once: {at:?}, head {position}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends interaction `n` and checks that, 2 s later, neither projector
/// has applied it: they are lingering. Returns its position.
async fn waits_for_the_linger(l: &Lingering, n: usize, when: &str) -> u64 {
    append(&l.store, n..n + 1).await;
    let position = l.store.head().await.expect("head");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at = checkpoints(&l.projections).await;
    assert!(
        at.values().all(|p| *p < position),
        "{when}, {position} was applied within the linger: {at:?}"
    );
    position
}

async fn the_timeline_follows_the_log(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "timeline_follows").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(&projections, options());
    append(&store, 0..300).await;
    let g = caught_up(&projections).await;

    assert_eq!(actual(&projections, g).await, expected(&store).await);

    // A member's page: newest first, each entry the event it came from.
    let member = all_events(&store).await[0].body.member_id().to_owned();
    let page = projections
        .timeline_page(
            g,
            &TimelineQuery {
                community_id: "acme".into(),
                members: vec![member.clone()],
                limit: 1000,
                ..TimelineQuery::default()
            },
        )
        .await
        .expect("timeline");
    assert!(page.len() > 30, "member has a history: {}", page.len());
    let keys: Vec<_> = page.iter().map(|e| e.cursor()).collect();
    let mut sorted = keys.clone();
    sorted.sort_by_key(|c| std::cmp::Reverse((c.occurred_at, c.position, c.role)));
    assert_eq!(keys, sorted, "newest first");
    for entry in &page {
        match entry.role {
            Role::Target => assert_ne!(entry.event.body.member_id(), member),
            _ => assert_eq!(entry.event.body.member_id(), member),
        }
    }

    // Other communities see nothing of it.
    let elsewhere = projections
        .timeline_page(
            g,
            &TimelineQuery {
                community_id: "other".into(),
                members: vec![member],
                limit: 1000,
                ..TimelineQuery::default()
            },
        )
        .await
        .expect("timeline");
    assert!(elsewhere.is_empty());
    running.stop().await;
}

async fn a_failure_between_apply_and_checkpoint_loses_and_duplicates_nothing(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "projection_failure").await else {
        return;
    };
    append(&store, 0..400).await;
    let projections = Projections::new(store.clone());
    let options = options();
    // Three batches fail after writing their rows, before their checkpoint:
    // here in the bulk phase of the first build (the log is written before
    // the projector starts).
    options.fail_before_checkpoint.store(3, Ordering::SeqCst);
    let running = start(&projections, options.clone());
    let g = caught_up(&projections).await;
    assert_eq!(
        options.fail_before_checkpoint.load(Ordering::SeqCst),
        0,
        "the failures happened"
    );
    // Counts are sums: an event applied twice would show, one lost too.
    assert_eq!(actual(&projections, g).await, expected(&store).await);

    // The same once built, batch by batch with live updates.
    options.fail_before_checkpoint.store(3, Ordering::SeqCst);
    append(&store, 400..800).await;
    let g = caught_up(&projections).await;
    assert_eq!(options.fail_before_checkpoint.load(Ordering::SeqCst), 0);
    assert_eq!(actual(&projections, g).await, expected(&store).await);
    running.stop().await;
}

async fn a_rebuild_is_identical_to_the_live_model(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "projection_rebuild").await else {
        return;
    };
    let projections = Projections::new(store.clone());
    let running = start(&projections, options());
    append(&store, 0..300).await;
    let live = caught_up(&projections).await;
    let live_rows = projections.timeline_dump(live).await.expect("dump");

    let (rebuilt, started) = projections.rebuild(NAME).await.expect("rebuild");
    assert!(started);
    assert_ne!(rebuilt, live);
    // Asking again while it builds points at the same build.
    let (again, _) = projections.rebuild(NAME).await.expect("rebuild");
    assert_eq!(again, rebuilt);
    wait_until_active(&projections, rebuilt).await;
    let rebuilt_rows = projections.timeline_dump(rebuilt).await.expect("dump");
    assert_eq!(rebuilt_rows.len(), live_rows.len());
    assert_eq!(rebuilt_rows, live_rows);

    // Rebuilding while writes go on: the new generation takes over and
    // keeps following the log.
    let (next, _) = projections.rebuild(NAME).await.expect("rebuild");
    append(&store, 300..600).await;
    wait_until_active(&projections, next).await;
    let g = caught_up(&projections).await;
    assert_eq!(g, next);
    assert_eq!(actual(&projections, g).await, expected(&store).await);

    // The replaced generations' tables are dropped (no grace in this test).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = projections.status().await.expect("status");
        if projections.timeline_dump(live).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "retired tables stay: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
}

async fn wait_until_active(projections: &Projections, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = projections.status().await.expect("status");
        let timeline = status.iter().find(|s| s.name == NAME).expect("timeline");
        if timeline.active.as_ref().map(|a| a.generation) == Some(generation) {
            return;
        }
        assert!(Instant::now() < deadline, "never switched: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The timeline as another code version would be (`version`), whose
/// `finish_bulk` waits inside its transaction for the test to let it go
/// once `hold` is set, and then fails if `fail` is set (once: it clears
/// it), as an end cut short by a crash would.
#[derive(Default)]
struct TestTimeline {
    version: Option<u64>,
    hold: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
    fail: std::sync::atomic::AtomicBool,
}

impl Projection for TestTimeline {
    fn name(&self) -> &'static str {
        Timeline.name()
    }
    fn version(&self) -> u64 {
        self.version.unwrap_or_else(|| Timeline.version())
    }
    fn create_tables(&self, generation: u64, postgres: bool) -> Vec<String> {
        Timeline.create_tables(generation, postgres)
    }
    fn finish_bulk<'a>(
        &'a self,
        tx: Tx<'a>,
        generation: u64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if self.hold.load(Ordering::SeqCst) {
                self.entered.notify_one();
                self.release.notified().await;
            }
            if self.fail.swap(false, Ordering::SeqCst) {
                return Err(sqlx::Error::Protocol(
                    "injected: the end of the bulk phase".into(),
                ));
            }
            Timeline.finish_bulk(tx, generation).await
        })
    }
    fn prepare_finish_bulk<'a>(
        &'a self,
        pool: &'a DbPool,
        generation: u64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Timeline.prepare_finish_bulk(pool, generation)
    }
    fn tables(&self, generation: u64) -> Vec<String> {
        Timeline.tables(generation)
    }
    fn apply<'a>(
        &'a self,
        tx: Tx<'a>,
        generation: u64,
        events: &'a [Event],
        bulk: bool,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Timeline.apply(tx, generation, events, bulk)
    }
}

/// PostgreSQL: the end of a rebuild's bulk phase (`finish_bulk`: a minute
/// or more at 10 M interactions) runs beside the live model, which keeps
/// following the log meanwhile: a read with `min_position` does not wait
/// for the rebuild. (On SQLite both write one file, one writer at a time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_the_live_model_follows_the_log_while_a_rebuild_is_indexed() {
    let Some((_db, store, pool)) = fresh_postgres("projection_live_during_finish").await else {
        return;
    };
    let timeline = Arc::new(TestTimeline::default());
    let projections = Projections::with(store.clone(), vec![timeline.clone()]);
    let running = start(
        &projections,
        RunnerOptions {
            analyze_interval: Duration::from_millis(20),
            ..options()
        },
    );
    append(&store, 0..300).await;
    let old = caught_up(&projections).await;

    timeline.hold.store(true, Ordering::SeqCst);
    projections.rebuild(NAME).await.expect("rebuild");
    tokio::time::timeout(Duration::from_secs(30), timeline.entered.notified())
        .await
        .expect("the rebuild reaches the end of its bulk phase");

    // The new generation's finish is held, in its transaction: the live
    // generation applies what is written meanwhile.
    append(&store, 300..400).await;
    let head = store.head().await.expect("head");
    let active = projections
        .wait_for(NAME, head, Instant::now() + Duration::from_secs(10))
        .await
        .expect("the live model follows the log while the rebuild is indexed");
    assert_eq!(active.generation, old);

    // Meanwhile the loop renews the planner statistics of the tables it
    // applies to, but not those of the generation in its bulk phase:
    // `finish_bulk` renames and drops them, and an ANALYZE would wait for
    // it (holding the loop back) and then fail. Once PostgreSQL shows the
    // staging table stale (statistics are flushed within 10 s), the loop
    // has had a hundred rounds to analyze it.
    let status = projections.status().await.expect("status");
    let building = status[0].building.clone().expect("the rebuild").generation;
    let staging = format!("timeline_staging_g{building}");
    let analyzed = || {
        sqlx::query_as::<_, (bool, bool)>(
            "SELECT n_mod_since_analyze > 50 + 0.1 * n_live_tup, last_analyze IS NOT NULL \
             FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(&staging)
        .fetch_one(&pool)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (stale, analyzed_yet) = analyzed().await.unwrap();
        assert!(
            !analyzed_yet,
            "the loop analyzed {staging} in its bulk phase"
        );
        if stale {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (_, analyzed_yet) = analyzed().await.unwrap();
            assert!(
                !analyzed_yet,
                "the loop analyzed {staging} in its bulk phase"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{staging} never showed stale");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    timeline.release.notify_one();
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let status = projections.status().await.expect("status");
        let active = status[0].active.clone().expect("an active generation");
        if active.generation != old && active.position >= head {
            break active.generation;
        }
        assert!(Instant::now() < deadline, "never switched: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(actual(&projections, new).await, expected(&store).await);
    running.stop().await;
}

/// An end of the bulk phase cut short after its preparation (on
/// PostgreSQL the indexes and the connections, built beforehand on
/// connections of their own) is resumed: the generation takes the events
/// written meanwhile in bulk into what was prepared, prepares again and
/// ends with the model the log gives.
async fn an_interrupted_end_of_a_bulk_build_is_resumed(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "projection_resumed_end").await else {
        return;
    };
    let timeline = Arc::new(TestTimeline::default());
    timeline.hold.store(true, Ordering::SeqCst);
    timeline.fail.store(true, Ordering::SeqCst);
    let projections = Projections::with(store.clone(), vec![timeline.clone()]);
    append(&store, 0..300).await;
    let running = start(&projections, options());
    tokio::time::timeout(Duration::from_secs(30), timeline.entered.notified())
        .await
        .expect("the first build reaches the end of its bulk phase");
    // Staged after the preparation: the prepared connections no longer
    // cover them, the prepared indexes must take them.
    append(&store, 300..450).await;
    timeline.hold.store(false, Ordering::SeqCst);
    timeline.release.notify_one();
    let built = caught_up(&projections).await;
    running.stop().await;
    assert!(
        !timeline.fail.load(Ordering::SeqCst),
        "the end never failed"
    );
    assert_eq!(actual(&projections, built).await, expected(&store).await);
    if let DbPool::Postgres(pool) = store.projection_pool(NAME).await.unwrap() {
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_class \
             WHERE relname LIKE '%staging%' OR relname LIKE '%built%'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(left, Vec::<String>::new());
    }
}

async fn new_projection_code_rebuilds_beside_the_live_model_and_switches(backend: Backend) {
    let Some((_db, store)) = fresh(backend, "projection_version").await else {
        return;
    };
    append(&store, 0..500).await;
    let v1 = Projections::new(store.clone());
    let running = start(&v1, options());
    let old = caught_up(&v1).await;
    let old_rows = v1.timeline_dump(old).await.expect("dump");
    running.stop().await;

    let next = Timeline.version() + 1;
    let v2 = Projections::with(
        store.clone(),
        vec![Arc::new(TestTimeline {
            version: Some(next),
            ..TestTimeline::default()
        })],
    );
    let mut slow = options();
    slow.batch_size = 16;
    slow.bulk_batch_size = 16;
    let running = start(&v2, slow);
    // While version 2 builds, reads are served by version 1's tables.
    let mut served_by_old = 0;
    let new = loop {
        let status = v2.status().await.expect("status");
        let active = status[0]
            .active
            .clone()
            .expect("always an active generation");
        if active.version == next {
            break active.generation;
        }
        assert_eq!(active.generation, old);
        let g = v2
            .wait_for(NAME, 0, Instant::now() + Duration::from_secs(1))
            .await
            .expect("readable during the rebuild")
            .generation;
        // (The switch may happen between the two reads.)
        served_by_old += u32::from(g == old);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(served_by_old > 0, "the rebuild was observed in progress");
    assert_ne!(new, old);
    assert_eq!(v2.timeline_dump(new).await.expect("dump"), old_rows);
    running.stop().await;
}

async fn two_replicas_apply_each_event_once(backend: Backend) {
    let Some((db, store)) = fresh(backend, "projection_replicas").await else {
        return;
    };
    let replica = connect(&db).await;
    let a = Projections::new(store.clone());
    let b = Projections::new(replica.clone());
    let running_a = start(&a, options());
    let running_b = start(&b, options());
    let writer_a = append(&store, 0..300);
    let writer_b = append(&replica, 300..600);
    tokio::join!(writer_a, writer_b);
    let g = caught_up(&a).await;
    assert_eq!(actual(&a, g).await, expected(&store).await);

    if let Backend::Postgres = backend {
        // Exactly one replica leads; when it stops, the other takes over.
        let leaders = |s: &Vec<rapport_projections::ProjectionStatus>| {
            s.iter()
                .find(|p| p.name == NAME)
                .expect("timeline")
                .leading_here
        };
        let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
        assert!(leaders(&sa) != leaders(&sb), "one leader: {sa:?} {sb:?}");
        let (leader, follower, running_follower) = if leaders(&sa) {
            running_a.stop().await;
            (store, b, running_b)
        } else {
            running_b.stop().await;
            (replica, a, running_a)
        };
        append(&leader, 600..700).await;
        let g = caught_up(&follower).await;
        assert!(leaders(&follower.status().await.unwrap()));
        assert_eq!(actual(&follower, g).await, expected(&leader).await);
        running_follower.stop().await;
    } else {
        running_a.stop().await;
        running_b.stop().await;
    }
}

/// Two processes that both saw a generation catch up may both try to switch
/// to it (on SQLite two processes on one file, on PostgreSQL a deposed
/// leader that has not noticed): the later switch must change nothing,
/// where it once retired the generation just activated and left no model
/// serving reads.
async fn a_late_switch_by_another_process_is_fenced(backend: Backend) {
    use rapport_projections::ProjectionError;
    use rapport_projections::generations::{self, Start, State};
    let Some((_db, store)) = fresh(backend, "projection_late_switch").await else {
        return;
    };
    let pool = store.projection_pool(NAME).await.unwrap();
    let states = || async {
        generations::load(&pool, NAME)
            .await
            .unwrap()
            .iter()
            .map(|g| (g.generation, g.state))
            .collect::<Vec<_>>()
    };
    let build = || async {
        let (g, started) = generations::start_building(&pool, &Timeline, Start::Rebuild)
            .await
            .unwrap();
        assert!(started);
        generations::finish_bulk(&pool, &Timeline, g, 0)
            .await
            .unwrap();
        g
    };

    let first = build().await;
    generations::activate(&pool, NAME, first, 0).await.unwrap();
    let late = generations::activate(&pool, NAME, first, 0).await;
    assert!(
        matches!(late, Err(ProjectionError::Fenced { .. })),
        "{late:?}"
    );
    assert_eq!(states().await, [(first, State::Active)]);

    let second = build().await;
    generations::activate(&pool, NAME, second, 0).await.unwrap();
    let late = generations::activate(&pool, NAME, first, 0).await;
    assert!(
        matches!(late, Err(ProjectionError::Fenced { .. })),
        "{late:?}"
    );
    assert_eq!(
        states().await,
        [(first, State::Retired), (second, State::Active)]
    );
}

/// SQLite has one write lock per file: each read model has a file of its
/// own, so a long transaction of one (a policy change's re-fold of a whole
/// community) holds back neither appends nor the other's projector.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_read_models_write_side_by_side() {
    let Some((db, store)) = fresh(Backend::Sqlite, "read_model_files").await else {
        return;
    };
    let DbPool::Sqlite(scores) = store.projection_pool("scores").await.unwrap() else {
        unreachable!("a SQLite store");
    };
    let DbPool::Sqlite(timeline) = store.projection_pool(NAME).await.unwrap() else {
        unreachable!("a SQLite store");
    };
    let mut long = scores.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("CREATE TABLE busy (x INTEGER)")
        .execute(&mut *long)
        .await
        .unwrap();

    let write = async {
        let mut tx = timeline.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("CREATE TABLE beside (x INTEGER)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        append(&store, 0..10).await;
    };
    tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("the timeline's file and the log are written while the scores' is locked");
    long.rollback().await.unwrap();

    let log = db.url.strip_prefix("sqlite:").unwrap();
    let dir = std::path::Path::new(log).parent().unwrap();
    for file in ["rapport.db", "rapport-timeline.db", "rapport-scores.db"] {
        assert!(dir.join(file).exists(), "{file} in {}", dir.display());
    }
}
