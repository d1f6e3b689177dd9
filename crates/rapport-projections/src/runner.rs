//! The projector loop of one read model.
//!
//! Only the leader runs it: on PostgreSQL the replica holding a session
//! advisory lock named after the projection (released by PostgreSQL when
//! that replica's connection dies, so a standby takes over within a poll);
//! on SQLite the one process that owns the file.
//!
//! Each step reads a batch of events after a generation's checkpoint and, in
//! one transaction, locks the generation's row, checks the checkpoint is
//! still the one it read, applies the batch and moves the checkpoint. A
//! crash anywhere before the commit leaves nothing behind; a deposed leader
//! that wakes up finds the checkpoint moved and stops (fencing).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rapport_store::{DbPool, EventQuery, ProjectorSignal, Store, StoreError};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::db::WriteTx;
use crate::generations::{self, Generation, Start, State};
use crate::{Active, Local, Projection, ProjectionError};

#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Events per transaction.
    pub batch_size: u32,
    /// Events per transaction while a generation is built in bulk: larger,
    /// as nobody waits for them and each transaction has a fixed cost.
    pub bulk_batch_size: u32,
    /// Batches a generation may apply before the projector looks at the
    /// others (and at its leadership) again.
    pub batches_per_step: usize,
    /// How often to look for events committed by other processes (this
    /// process's own commits wake the projector at once).
    pub poll_interval: Duration,
    /// Once caught up with the head, how long the projector lets new commits
    /// gather before it applies the next batch. A read model's transaction
    /// costs about the same whatever its size (the generation lookup, the
    /// log read, the checkpoint, the commit; for the scores the lookups of
    /// the states they fold): following a stream of small commits (unary
    /// calls) one by one, the projectors took a large share of the CPU of
    /// the ingest they followed, and on two cores ingest paid for it
    /// (docs/performance.md, "Projectors that let commits gather"). An
    /// idle projector still applies a commit at once, one that is behind
    /// does not wait, and a read with `min_position` that the projector has
    /// not reached ends the linger (a read in this process, or on PostgreSQL
    /// one on another replica, through [`Store::notify_projector`]): only reads
    /// without `min_position` see the read model up to this much later.
    /// Zero here (tests see every commit applied at once); the server's
    /// default is 25 ms.
    pub linger: Duration,
    /// How often a standby tries to become the leader, and the leader checks
    /// its lock connection.
    pub leader_check_interval: Duration,
    /// How long a replaced generation's tables stay for reads in flight.
    pub retire_grace: Duration,
    /// How often the leader runs [`crate::Projection::maintain`] while idle.
    pub maintain_interval: Duration,
    /// PostgreSQL: how often the leader looks for tables of its generations
    /// whose planner statistics are stale, and analyzes them.
    pub analyze_interval: Duration,
    /// Test hook: fail this many batches after applying their rows and
    /// before moving the checkpoint, as a crash there would.
    pub fail_before_checkpoint: Arc<AtomicU32>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            batch_size: 2_000,
            bulk_batch_size: 10_000,
            batches_per_step: 16,
            poll_interval: Duration::from_millis(50),
            linger: Duration::ZERO,
            leader_check_interval: Duration::from_secs(1),
            retire_grace: Duration::from_secs(30),
            maintain_interval: Duration::from_secs(600),
            analyze_interval: Duration::from_secs(60),
            fail_before_checkpoint: Arc::default(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Runner {
    pub(crate) store: Store,
    pub(crate) projection: Arc<dyn Projection>,
    pub(crate) local: Arc<Local>,
    pub(crate) options: RunnerOptions,
}

/// What a step of the projector did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing to apply: wait for a commit (or the poll).
    Idle,
    /// Applied the active generation up to the head, nothing else running:
    /// let the next commits gather for [`RunnerOptions::linger`].
    CaughtUp,
    /// More to do at once (a backlog, a rebuild, a generation's switch).
    Behind,
}

/// Proof of leadership.
enum Lease {
    /// SQLite: one process owns the file.
    Local,
    /// PostgreSQL: this connection holds the projection's session lock.
    Postgres(sqlx::PgConnection),
}

/// A building generation's bulk phase running beside the projector loop
/// (PostgreSQL; see [`Runner::build_beside`]). Dropping it (the loop
/// ends: shutdown, lost leadership) aborts the task, which rolls back the
/// transaction it was in.
struct Builder {
    generation: u64,
    task: tokio::task::JoinHandle<Result<(), ProjectionError>>,
}

impl Drop for Builder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Runner {
    pub(crate) async fn run(
        self,
        mut commits: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let name = self.projection.name();
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(lease) = self.lead(&mut shutdown).await else {
                return;
            };
            self.local.leading.store(true, Ordering::Relaxed);
            info!(projection = name, "running the projector");
            let followed = self.follow(lease, &mut commits, &mut shutdown).await;
            self.local.leading.store(false, Ordering::Relaxed);
            // Another process may lead now: readers ask the database again.
            self.local.applied.send_replace(None);
            match followed {
                Ok(()) => return,
                Err(error) => {
                    warn!(projection = name, error = %error_chain(&error), retry_in_ms = backoff.as_millis() as u64, "projector stopped");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Tells this process's readers the active generation and checkpoint the
    /// projector has committed (waking those that wait for a position), and
    /// the other replicas too, while a read there waits for a position past
    /// what was applied before (see [`Store::notify_projector`]).
    fn publish(&self, active: Option<(u64, u64)>) {
        let active = active.map(|(generation, position)| Active {
            generation,
            position,
        });
        let mut before = 0;
        self.local.applied.send_if_modified(|known| {
            before = known.map_or(0, |k| k.position);
            let changed = *known != active;
            *known = active;
            changed
        });
        let remote = self.local.remote_wanted.load(Ordering::SeqCst);
        if let Some(a) = active
            && remote > before
            && a.position > before
        {
            if remote <= a.position {
                // Done; a newer wish since the load stays.
                let _ = self.local.remote_wanted.compare_exchange(
                    remote,
                    0,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
            // Off the projector's path: a lost signal costs the reader a
            // poll (20 ms), no more.
            let store = self.store.clone();
            let name = self.projection.name();
            tokio::spawn(async move {
                if let Err(error) = store
                    .notify_projector(ProjectorSignal::Applied, name, a.position)
                    .await
                {
                    debug!(%error, "cannot tell the other replicas what was applied");
                }
            });
        }
    }

    /// Waits until this process leads the projection; `None` on shutdown.
    async fn lead(&self, shutdown: &mut watch::Receiver<bool>) -> Option<Lease> {
        let DbPool::Postgres(pool) = self.store.pool() else {
            return Some(Lease::Local);
        };
        let key = lock_key(self.projection.name());
        loop {
            if *shutdown.borrow() {
                return None;
            }
            // A connection of its own, outside the pool: the lock lives as
            // long as this session.
            let options = pool.connect_options();
            match sqlx::PgConnection::connect_with(&options).await {
                Ok(mut conn) => {
                    match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                        .bind(key)
                        .fetch_one(&mut conn)
                        .await
                    {
                        Ok(true) => return Some(Lease::Postgres(conn)),
                        Ok(false) => {}
                        Err(error) => {
                            warn!(projection = self.projection.name(), %error, "cannot try the leader lock")
                        }
                    }
                }
                Err(error) => {
                    warn!(projection = self.projection.name(), %error, "cannot connect for the leader lock")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.options.leader_check_interval) => {}
                _ = shutdown.wait_for(|s| *s) => return None,
            }
        }
    }

    /// Applies the log while leading; `Ok` on shutdown, `Err` when leadership
    /// or the database is lost.
    async fn follow(
        &self,
        mut lease: Lease,
        commits: &mut watch::Receiver<u64>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let mut next_check = Instant::now() + self.options.leader_check_interval;
        let mut next_report = Instant::now() + Duration::from_secs(10);
        // Upkeep: due at once after taking the lead, then every interval;
        // `Some(cursor)` while a round is under way.
        let mut next_upkeep = Instant::now();
        let mut upkeep: Option<(rapport_domain::Timestamp, Option<String>)> = None;
        let mut next_analyze = Instant::now() + self.options.analyze_interval;
        let mut builder: Option<Builder> = None;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if Instant::now() >= next_check {
                if let Lease::Postgres(conn) = &mut lease {
                    conn.ping().await?;
                }
                next_check = Instant::now() + self.options.leader_check_interval;
            }
            let report = Instant::now() >= next_report;
            if report {
                next_report = Instant::now() + Duration::from_secs(10);
            }
            if Instant::now() >= next_analyze {
                self.analyze_stale().await?;
                next_analyze = Instant::now() + self.options.analyze_interval;
            }
            let step = self.step(report, &mut builder).await?;
            let progressed = step != Step::Idle;
            if !progressed && (upkeep.is_some() || Instant::now() >= next_upkeep) {
                let (now, after) = upkeep
                    .take()
                    .unwrap_or_else(|| (rapport_store::wall_clock(), None));
                let first = after.is_none();
                match self.maintain(now, after).await? {
                    Some(next) => upkeep = Some((now, Some(next))),
                    None => {
                        next_upkeep = Instant::now() + self.options.maintain_interval;
                        // A round of many chunks took the projector's idle
                        // time for a while: say when it is over, and how
                        // long it took in wall time.
                        if !first {
                            let took = rapport_store::wall_clock().as_micros() - now.as_micros();
                            tracing::info!(
                                projection = self.projection.name(),
                                seconds = took / 1_000_000,
                                "upkeep round done"
                            );
                        }
                    }
                }
                // One chunk per step: the live batches come first, and a
                // chunk holds them up for 25 ms at most (the scores'
                // `MAINTAIN_BUDGET`); while nothing else is to be done,
                // the next chunk follows at once.
            }
            if step == Step::CaughtUp && !self.options.linger.is_zero() {
                // What was just applied: a reader waiting for more ends
                // the linger.
                let applied = self.local.applied.borrow().map_or(0, |a| a.position);
                // A position past every commit known here is no reason to
                // hurry (a reader may ask for any number, and leave): it is
                // forgotten, and a reader still waiting raises it again at
                // its next poll.
                let head = *commits.borrow();
                self.local.wanted.send_if_modified(|w| {
                    let past = *w > head.max(applied);
                    if past {
                        *w = 0;
                    }
                    past
                });
                let mut wanted = self.local.wanted.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(self.options.linger) => {}
                    _ = wanted.wait_for(|w| *w > applied) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            } else if !progressed && upkeep.is_none() {
                tokio::select! {
                    _ = async {
                        // A writer that stopped stops notifying; polling goes on.
                        if commits.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    } => {}
                    _ = tokio::time::sleep(self.options.poll_interval) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
        }
    }

    /// One round: settle the generations, apply one batch to each generation
    /// this code builds, switch to a rebuilt generation that caught up, drop
    /// retired ones. Returns whether anything moved.
    async fn step(
        &self,
        report: bool,
        builder: &mut Option<Builder>,
    ) -> Result<Step, ProjectionError> {
        let pool = self.store.projection_pool(self.projection.name()).await?;
        let name = self.projection.name();
        let version = self.projection.version();
        let gens = generations::load(&pool, name).await?;
        let find = |s| gens.iter().find(|g: &&Generation| g.state == s).cloned();
        let active = find(State::Active);
        let building = find(State::Building);
        self.publish(active.as_ref().map(|a| (a.generation, a.position)));

        match (&active, &building) {
            (None, None) => {
                let (generation, started) =
                    generations::start_building(&pool, self.projection.as_ref(), Start::IfOutdated)
                        .await?;
                if started {
                    info!(
                        projection = name,
                        generation, version, "building the read model from position 0"
                    );
                }
                return Ok(Step::Behind);
            }
            (Some(a), None) if a.version < version => {
                let (generation, started) =
                    generations::start_building(&pool, self.projection.as_ref(), Start::IfOutdated)
                        .await?;
                if started {
                    info!(
                        projection = name,
                        generation,
                        version,
                        old_version = a.version,
                        "projection code changed: rebuilding into a new generation"
                    );
                }
                return Ok(Step::Behind);
            }
            (_, Some(b)) if b.version < version => {
                // Started by older code: it would never match this code's rows.
                generations::retire(&pool, name, b.generation).await?;
                return Ok(Step::Behind);
            }
            _ => {}
        }

        let mut progressed = false;
        let mut caught_up = false;
        // A bulk phase running beside the loop leaves it to the active
        // generation, which may then linger as usual.
        let beside = matches!(pool, DbPool::Postgres(_))
            && building
                .as_ref()
                .is_some_and(|b| b.bulk && b.version == version);
        let rebuilding = building.is_some() && !beside;
        // Newer code (a rolling upgrade's other half) owns generations of a
        // higher version: leave them alone.
        if let Some(a) = active.filter(|a| a.version == version) {
            let (position, head) = self.advance(&a, self.options.batches_per_step).await?;
            progressed |= position > a.position;
            caught_up = position > a.position && position >= head;
            if position > a.position {
                self.publish(Some((a.generation, position)));
            }
            if report && head > position {
                info!(
                    projection = name,
                    generation = a.generation,
                    position,
                    head,
                    lag = head - position,
                    "projection lag"
                );
            }
        }
        if let Some(b) = building.clone().filter(|_| beside) {
            progressed |= self.build_beside(b, builder).await?;
        } else if let Some(b) = building.filter(|b| b.version == version) {
            let (position, head) = self.advance(&b, self.options.batches_per_step).await?;
            progressed |= position > b.position;
            if position < head {
                if report {
                    info!(
                        projection = name,
                        generation = b.generation,
                        position,
                        head,
                        bulk = b.bulk,
                        "rebuilding"
                    );
                }
            } else if b.bulk {
                // Caught up in bulk: index what was appended. Events
                // committed meanwhile are applied normally afterwards.
                self.finish_bulk(&pool, &b, position).await?;
                progressed = true;
            } else {
                generations::activate(&pool, name, b.generation, position).await?;
                self.publish(Some((b.generation, position)));
                info!(
                    projection = name,
                    generation = b.generation,
                    position,
                    "rebuilt generation caught up: now serving reads"
                );
                progressed = true;
            }
        }

        let grace = i64::try_from(self.options.retire_grace.as_micros()).unwrap_or(i64::MAX);
        let now = rapport_store::wall_clock().as_micros();
        for retired in gens.iter().filter(|g| g.state == State::Retired) {
            if now.saturating_sub(retired.changed_at) >= grace {
                generations::drop_retired(&pool, self.projection.as_ref(), retired.generation)
                    .await?;
                info!(
                    projection = name,
                    generation = retired.generation,
                    "dropped a retired generation"
                );
            }
        }
        Ok(if !progressed {
            Step::Idle
        } else if caught_up && !rebuilding {
            Step::CaughtUp
        } else {
            Step::Behind
        })
    }

    /// PostgreSQL: a building generation's bulk phase runs in a task of its
    /// own beside this loop, which meanwhile keeps the active generation
    /// following the log. Inline, its batches (up to `batches_per_step` of
    /// `bulk_batch_size` events per step) and above all `finish_bulk` (a
    /// minute or more at 10 M) held the active generation back, and reads
    /// with `min_position` failed for as long. Both run on connections of
    /// their own and lock only their own generation's row. (SQLite has one
    /// write lock per file: the two would only queue for it.) Starts the
    /// task, or reaps it once it ended; returns whether either happened.
    async fn build_beside(
        &self,
        b: Generation,
        builder: &mut Option<Builder>,
    ) -> Result<bool, ProjectionError> {
        match builder.take() {
            Some(running) if running.generation == b.generation => {
                if !running.task.is_finished() {
                    *builder = Some(running);
                    return Ok(false);
                }
                let mut running = running;
                // Finished: awaiting the handle returns at once.
                match (&mut running.task).await {
                    Ok(result) => result?,
                    Err(e) => {
                        return Err(ProjectionError::Corrupt(format!(
                            "the bulk build task failed: {e}"
                        )));
                    }
                }
                Ok(true)
            }
            // None, or one for a generation no longer building (dropped:
            // aborted).
            _ => {
                let runner = self.clone();
                let span = tracing::info_span!(
                    "bulk_build",
                    projection = self.projection.name(),
                    generation = b.generation
                );
                *builder = Some(Builder {
                    generation: b.generation,
                    task: tokio::spawn(runner.build_bulk(b).instrument(span)),
                });
                Ok(true)
            }
        }
    }

    /// A building generation's bulk phase: its batches up to the head, then
    /// `finish_bulk`. The projector loop applies what follows.
    async fn build_bulk(self, mut b: Generation) -> Result<(), ProjectionError> {
        let name = self.projection.name();
        let pool = self.store.projection_pool(name).await?;
        let mut next_report = Instant::now() + Duration::from_secs(10);
        loop {
            let (position, head) = self.advance(&b, self.options.batches_per_step).await?;
            b.position = position;
            if position < head {
                if Instant::now() >= next_report {
                    next_report = Instant::now() + Duration::from_secs(10);
                    info!(
                        projection = name,
                        generation = b.generation,
                        position,
                        head,
                        bulk = true,
                        "rebuilding"
                    );
                }
                continue;
            }
            return self.finish_bulk(&pool, &b, position).await;
        }
    }

    /// Ends `b`'s bulk phase, caught up at `position` (see
    /// [`generations::finish_bulk`]), and says how long it took.
    async fn finish_bulk(
        &self,
        pool: &DbPool,
        b: &Generation,
        position: u64,
    ) -> Result<(), ProjectionError> {
        let started = std::time::Instant::now();
        generations::finish_bulk(pool, self.projection.as_ref(), b.generation, position).await?;
        info!(
            projection = self.projection.name(),
            generation = b.generation,
            position,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "bulk phase finished: tables indexed"
        );
        Ok(())
    }

    /// Applies up to `batches` batches after `generation`'s checkpoint,
    /// reading each next batch while the current one is applied (the read
    /// and the write run on different connections, so on two cores they
    /// overlap). Returns the new checkpoint and the head last read under.
    async fn advance(
        &self,
        generation: &Generation,
        batches: usize,
    ) -> Result<(u64, u64), ProjectionError> {
        let limit = if generation.bulk {
            self.options.bulk_batch_size
        } else {
            self.options.batch_size
        };
        let mut position = generation.position;
        let mut next = self.read_after(position, limit);
        let mut head = position;
        for _ in 0..batches.max(1) {
            let page = next.await.map_err(|e| {
                ProjectionError::Corrupt(format!("the projector's read task failed: {e}"))
            })??;
            head = page.head;
            let Some(last) = page.events.last() else {
                break;
            };
            let to = last.position;
            // A short page reached the head: read again only in a later step.
            let full = page.events.len() as u32 == limit;
            let prefetch = full.then(|| self.read_after(to, limit));
            let span = tracing::info_span!(
                "projector_batch",
                projection = self.projection.name(),
                generation = generation.generation,
                after = position,
                to,
                events = page.events.len(),
            );
            self.apply(generation, position, &page.events)
                .instrument(span)
                .await?;
            position = to;
            match prefetch {
                Some(read) => next = read,
                None => break,
            }
        }
        Ok((position, head))
    }

    /// Reads the batch after `position`, in a task of its own.
    fn read_after(
        &self,
        position: u64,
        limit: u32,
    ) -> tokio::task::JoinHandle<Result<rapport_store::EventPage, StoreError>> {
        let store = self.store.clone();
        tokio::spawn(async move {
            store
                .read_events(&EventQuery {
                    after: position,
                    limit,
                    // Read models keep no personal data (see the crate doc).
                    without_personal: true,
                    ..EventQuery::default()
                })
                .await
        })
    }

    /// PostgreSQL: analyzes the tables of this projection's generations
    /// that changed by more than autovacuum's default threshold (50 rows
    /// and 10%) since they were last analyzed. A read model grows from
    /// empty, and a plan made with the statistics of an empty table (a
    /// bitmap scan and a sort of a member's every row, where the primary
    /// key gives the page in order) stays wrong until they are renewed:
    /// the projector does not leave that to an autovacuum that may be off
    /// or behind. ANALYZE blocks neither reads nor writes.
    async fn analyze_stale(&self) -> Result<(), ProjectionError> {
        let DbPool::Postgres(pool) = self.store.projection_pool(self.projection.name()).await?
        else {
            return Ok(());
        };
        let name = self.projection.name();
        let gens = generations::load(&DbPool::Postgres(pool.clone()), name).await?;
        // A generation in its bulk phase is left alone: nobody reads it
        // yet, and its bulk task's `finish_bulk` renames and drops tables
        // that an ANALYZE would wait for, then fail on.
        let tables: Vec<String> = gens
            .iter()
            .filter(|g| {
                g.state != State::Retired && !g.bulk && g.version == self.projection.version()
            })
            .flat_map(|g| self.projection.tables(g.generation))
            .collect();
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_stat_user_tables WHERE relname = ANY($1) \
             AND n_mod_since_analyze > 50 + 0.1 * n_live_tup",
        )
        .bind(&tables)
        .fetch_all(&pool)
        .await
        .map_err(StoreError::from)?;
        for table in stale {
            let started = Instant::now();
            sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
                .execute(&pool)
                .await
                .map_err(StoreError::from)?;
            debug!(projection = name, table = %table, took = ?started.elapsed(), "analyzed");
        }
        Ok(())
    }

    /// One chunk of the active generation's upkeep, in a transaction that
    /// first checks the generation is still active at the checkpoint it
    /// was loaded at. Returns where to continue, `None` when done.
    async fn maintain(
        &self,
        now: rapport_domain::Timestamp,
        after: Option<String>,
    ) -> Result<Option<String>, ProjectionError> {
        let pool = self.store.projection_pool(self.projection.name()).await?;
        let name = self.projection.name();
        let gens = generations::load(&pool, name).await?;
        let Some(active) = gens
            .iter()
            .find(|g| g.state == State::Active && g.version == self.projection.version())
        else {
            return Ok(None);
        };
        let started = Instant::now();
        let mut tx = WriteTx::begin(&pool).await?;
        match generations::lock(tx.tx(), name, active.generation).await? {
            Some((State::Active, position)) if position == active.position => {}
            _ => {
                return Err(ProjectionError::Fenced {
                    name,
                    generation: active.generation,
                });
            }
        }
        let next = self
            .projection
            .maintain(tx.tx(), active.generation, now, after)
            .await?;
        tx.commit().await?;
        // A live batch waits for as long as a chunk holds the read model.
        debug!(
            projection = name,
            took_us = started.elapsed().as_micros() as u64,
            "upkeep chunk"
        );
        Ok(next)
    }

    /// Applies `events`, which follow `from`, to `generation` and moves its
    /// checkpoint, in one transaction that first checks the checkpoint is
    /// still `from`.
    async fn apply(
        &self,
        generation: &Generation,
        from: u64,
        events: &[rapport_domain::Event],
    ) -> Result<(), ProjectionError> {
        let started = std::time::Instant::now();
        let to = events.last().map_or(from, |e| e.position);
        let name = self.projection.name();
        let pool = self.store.projection_pool(self.projection.name()).await?;
        let mut tx = WriteTx::begin(&pool).await?;
        match generations::lock(tx.tx(), name, generation.generation).await? {
            Some((state, position)) if state != State::Retired && position == from => {}
            _ => {
                return Err(ProjectionError::Fenced {
                    name,
                    generation: generation.generation,
                });
            }
        }
        self.projection
            .apply(tx.tx(), generation.generation, events, generation.bulk)
            .await?;
        let inject = &self.options.fail_before_checkpoint;
        if inject
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            // Dropping the transaction rolls it back, rows and all.
            return Err(ProjectionError::Injected);
        }
        let applied = started.elapsed();
        generations::set_position(tx.tx(), name, generation.generation, to).await?;
        tx.commit().await?;
        // Counted once committed: a batch rolled back and retried is not
        // counted twice. The histogram's sum grows by the seconds spent
        // applying, so its rate is how busy the projector is: near 1, it
        // cannot keep up with the log whatever its lag says right now.
        metrics::counter!("rapport_projection_events_applied_total", "projection" => name)
            .increment(events.len() as u64);
        metrics::histogram!("rapport_projection_batch_duration_seconds", "projection" => name)
            .record(started.elapsed().as_secs_f64());
        debug!(
            projection = name,
            generation = generation.generation,
            events = events.len(),
            apply_us = applied.as_micros() as u64,
            commit_us = (started.elapsed() - applied).as_micros() as u64,
            "batch applied"
        );
        Ok(())
    }
}

/// The session advisory lock key of a projection's leader: the first eight
/// bytes of a hash of its name, so every replica derives the same key.
fn lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("rapport projector {name}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
