//! Rapport's read models ("projections"): tables derived from the log, kept
//! current by checkpointed projectors, rebuilt from position 0 at will.
//!
//! # Layout
//!
//! - [`Projection`]: what a read model is: a name, a code version, its tables
//!   and how a batch of events changes them. [`timeline::Timeline`] is one.
//! - [`runner`]: the projector loop: leadership, batches applied with their
//!   checkpoint in one transaction, generations built beside the live one
//!   and switched to when caught up.
//! - [`generations`]: the `projection_generations` table.
//! - [`Projections`]: the handle the server holds: start the projectors,
//!   report status and lag, request a rebuild, wait for read-your-writes.
//! - `db`: one transaction type over SQLite and PostgreSQL.
//!
//! **Architecture Invariant:** a batch's read-model rows and the checkpoint
//! that covers them commit in one transaction, and the transaction first
//! checks that the checkpoint is still the one the batch started from. Each
//! event therefore takes effect exactly once, across crashes and even if a
//! deposed leader is still running.
//!
//! **Architecture Invariant:** read models hold no personal data. They keep
//! positions and fetch details from the log, so crypto-shredding the log
//! erases personal data from every read model at once.

mod db;
pub mod generations;
#[cfg(test)]
mod pass_fixtures;
mod pg_copy;
mod pg_pass;
pub mod runner;
pub mod scores;
mod sqlite_pass;
pub mod timeline;
mod timeline_merge;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use rapport_domain::Event;
use rapport_store::{DbPool, ProjectorSignal, Store, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;

pub use db::Tx;
pub use runner::RunnerOptions;

/// A read model derived from the log.
pub trait Projection: Send + Sync + 'static {
    /// Stable name: in table names, the status report and the rebuild command.
    fn name(&self) -> &'static str;
    /// Bump it whenever the rows the code writes change: the projector then
    /// rebuilds a generation with the new code and switches to it.
    fn version(&self) -> u64;
    /// DDL creating a generation's tables, and whatever its bulk phase
    /// appends to.
    fn create_tables(&self, generation: u64, postgres: bool) -> Vec<String>;
    /// Ends the bulk phase inside `tx` (the transaction that also clears the
    /// generation's bulk flag): turns what bulk applies appended into the
    /// generation's indexed tables and aggregates.
    fn finish_bulk<'a>(
        &'a self,
        tx: Tx<'a>,
        generation: u64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    /// The expensive part of [`Projection::finish_bulk`] that can run before
    /// its transaction, on connections of its own and several at once
    /// (sorting for index builds): it builds under names that no read and no
    /// other step uses, each step in a transaction of its own that a later
    /// call repeats or skips, so an interrupted end is resumed by calling
    /// both again. `finish_bulk` then only swaps the results in. Called
    /// right before `finish_bulk`, with the generation caught up and no bulk
    /// batch running. Default: nothing.
    fn prepare_finish_bulk<'a>(
        &'a self,
        _pool: &'a DbPool,
        _generation: u64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }
    /// Every table of a generation, by name.
    fn tables(&self, generation: u64) -> Vec<String>;
    /// DDL dropping every table of a generation.
    fn drop_tables(&self, generation: u64) -> Vec<String> {
        self.tables(generation)
            .into_iter()
            .map(|t| format!("DROP TABLE IF EXISTS {t}"))
            .collect()
    }
    /// Applies `events` (consecutive, in position order) to the generation
    /// inside `tx`. `bulk`: the generation is being built and nobody reads
    /// it; append the cheapest form, for [`Projection::finish_bulk`]. Must be
    /// deterministic, and a bulk build must end with the same rows as
    /// applying every event one batch at a time.
    fn apply<'a>(
        &'a self,
        tx: Tx<'a>,
        generation: u64,
        events: &'a [Event],
        bulk: bool,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Upkeep of the active generation that depends on the time (`now`),
    /// not on the log: run by the leader while the projector is idle, every
    /// [`RunnerOptions::maintain_interval`], one chunk per transaction
    /// (fenced like a batch). `after` is where the previous chunk stopped
    /// (`None`: start); return where this one stopped, or `None` when done.
    /// It must not change what reads answer, only how fast they answer it.
    /// Default: nothing to do.
    fn maintain<'a>(
        &'a self,
        _tx: Tx<'a>,
        _generation: u64,
        _now: rapport_domain::Timestamp,
        _after: Option<String>,
    ) -> BoxFuture<'a, Result<Option<String>, sqlx::Error>> {
        Box::pin(async { Ok(None) })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown projection {0:?}")]
    Unknown(String),
    /// No generation is active yet: the first build is still running.
    #[error("projection {name} is still being built")]
    NotBuilt { name: &'static str },
    /// `min_position` was not reached before the deadline.
    #[error(
        "projection {name} is behind: it has applied the log up to position {applied}, \
         the request needs position {wanted}; retry later"
    )]
    Behind {
        name: &'static str,
        applied: u64,
        wanted: u64,
    },
    /// Another process moved the checkpoint: this one is no longer the leader.
    #[error("projection {name} generation {generation} was moved by another process")]
    Fenced { name: &'static str, generation: u64 },
    #[error("projection state is corrupt: {0}")]
    Corrupt(String),
    /// Injected by tests through [`RunnerOptions::fail_before_checkpoint`].
    #[error("injected failure before the checkpoint")]
    Injected,
}

impl From<sqlx::Error> for ProjectionError {
    fn from(e: sqlx::Error) -> Self {
        ProjectionError::Store(StoreError::from(e))
    }
}

/// What this process knows about one projection, shared by its runner and
/// the readers.
#[derive(Debug)]
struct Local {
    /// Whether this process runs the projector now.
    leading: AtomicBool,
    /// The active generation and its checkpoint, as this process's projector
    /// last committed them; `None` while another process leads. It wakes
    /// readers waiting for `min_position` without a poll delay, and spares
    /// a read that finds it far enough along the query for it: only the
    /// leader moves the active generation, so what it committed is true.
    applied: watch::Sender<Option<Active>>,
    /// The highest `min_position` a reader in this process has waited for.
    /// A projector that lingers (see [`RunnerOptions::linger`]) stops
    /// lingering once a reader waits for a position it has not applied:
    /// the linger saves CPU when nobody is waiting, and costs a waiting
    /// reader nothing.
    wanted: watch::Sender<u64>,
    /// While this process leads: the latest position a read on another
    /// replica said it waits for (PostgreSQL), 0 once applied. While it is
    /// set, each batch that moves past what was applied before says how far
    /// it got. The latest, not the highest: a read that asks for a position
    /// far past the log is replaced by the next one.
    remote_wanted: AtomicU64,
    /// While another replica leads: the highest position it said it
    /// applied, waking this process's waiting reads before their poll.
    remote_applied: watch::Sender<u64>,
}

/// The read models of one server process.
#[derive(Clone)]
pub struct Projections {
    store: Store,
    projections: Arc<Registry>,
}

/// Each projection by name, with what this process knows of it.
type Registry = BTreeMap<&'static str, (Arc<dyn Projection>, Arc<Local>)>;

/// One projection's state, for the status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub name: &'static str,
    /// The version of this process's projection code.
    pub code_version: u64,
    pub head: u64,
    /// The generation serving reads, if built.
    pub active: Option<generations::Generation>,
    /// A generation being rebuilt beside it.
    pub building: Option<generations::Generation>,
    /// Whether this process runs the projector.
    pub leading_here: bool,
}

impl ProjectionStatus {
    /// How many positions the active generation is behind the log.
    pub fn lag(&self) -> u64 {
        self.head
            .saturating_sub(self.active.as_ref().map_or(0, |g| g.position))
    }
}

/// The generation serving reads, as a read found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    pub generation: u64,
    /// Its checkpoint then: the read sees at least the log up to here.
    pub position: u64,
}

/// Raises a position that only grows to `position`; whether it rose.
fn raise(watched: &watch::Sender<u64>, position: u64) -> bool {
    watched.send_if_modified(|w| {
        let raise = position > *w;
        if raise {
            *w = position;
        }
        raise
    })
}

/// How often readers waiting for `min_position` look at the checkpoint when
/// the projector runs in another process.
const WAIT_POLL: Duration = Duration::from_millis(20);

impl Projections {
    /// Every read model Rapport keeps.
    pub fn new(store: Store) -> Projections {
        let all: Vec<Arc<dyn Projection>> =
            vec![Arc::new(timeline::Timeline), Arc::new(scores::Scores)];
        Projections::with(store, all)
    }

    /// A chosen set of read models (tests use other versions).
    pub fn with(store: Store, projections: Vec<Arc<dyn Projection>>) -> Projections {
        let projections = projections
            .into_iter()
            .map(|p| {
                let local = Arc::new(Local {
                    leading: AtomicBool::new(false),
                    applied: watch::channel(None).0,
                    wanted: watch::channel(0).0,
                    remote_wanted: AtomicU64::new(0),
                    remote_applied: watch::channel(0).0,
                });
                (p.name(), (p, local))
            })
            .collect();
        Projections {
            store,
            projections: Arc::new(projections),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The pool of read model `name`'s tables and checkpoints (see
    /// [`Store::projection_pool`]).
    pub async fn pool(&self, name: &str) -> Result<DbPool, ProjectionError> {
        Ok(self.store.projection_pool(name).await?)
    }

    /// Runs `read` on a rusqlite reader of read model `name`'s file, for a
    /// caller whose pool said SQLite (see [`Store::read_projections_sqlite`]).
    pub(crate) async fn read_sqlite<T: Send + 'static>(
        &self,
        name: &str,
        read: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        let read = self.store.read_projections_sqlite(name, read).await;
        Ok(read.unwrap_or_else(|| {
            Err(StoreError::Corrupt(
                "a SQLite read on a PostgreSQL store".into(),
            ))
        })?)
    }

    /// Starts one projector task per read model, and the listener for reads
    /// on other replicas that wait for them. They stop when `shutdown`
    /// turns true; await the handles to know they have.
    pub fn spawn(
        &self,
        commits: watch::Receiver<u64>,
        options: RunnerOptions,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.projections
            .values()
            .map(|(projection, local)| {
                let runner = runner::Runner {
                    store: self.store.clone(),
                    projection: Arc::clone(projection),
                    local: Arc::clone(local),
                    options: options.clone(),
                };
                tokio::spawn(runner.run(commits.clone(), shutdown.clone()))
            })
            .chain([self.spawn_signal_listener(shutdown.clone())])
            .collect()
    }

    /// Listens, until `shutdown`, for what other replicas say of the read
    /// models ([`Store::notify_projector`]). While this process leads a
    /// projector, a position a read elsewhere waits for is handed to it as
    /// a read of its own would be (a lingering projector applies at once),
    /// and remembered so the projector says when it has applied it. While
    /// another process leads, what it applied wakes the reads waiting here.
    fn spawn_signal_listener(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let projections = Arc::clone(&self.projections);
        tokio::spawn(async move {
            let heard = move |signal: ProjectorSignal, name: &str, position: u64| {
                let Some((_, local)) = projections.get(name) else {
                    return;
                };
                let leading = local.leading.load(Ordering::SeqCst);
                match signal {
                    ProjectorSignal::Wanted if leading => {
                        local.remote_wanted.store(position, Ordering::SeqCst);
                        raise(&local.wanted, position);
                    }
                    ProjectorSignal::Applied if !leading => {
                        raise(&local.remote_applied, position);
                    }
                    _ => {}
                }
            };
            tokio::select! {
                _ = store.listen_projectors(&heard) => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        })
    }

    fn get(&self, name: &str) -> Result<&(Arc<dyn Projection>, Arc<Local>), ProjectionError> {
        self.projections
            .get(name)
            .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))
    }

    /// Every projection's generations, checkpoints and lag.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        let head = self.store.head().await?;
        let mut out = Vec::new();
        for (name, (projection, local)) in self.projections.iter() {
            let pool = self.pool(name).await?;
            let gens = generations::load(&pool, name).await?;
            let find = |s| gens.iter().find(|g| g.state == s).cloned();
            out.push(ProjectionStatus {
                name,
                code_version: projection.version(),
                head,
                active: find(generations::State::Active),
                building: find(generations::State::Building),
                leading_here: local.leading.load(Ordering::Relaxed),
            });
        }
        Ok(out)
    }

    /// Asks for `name` to be rebuilt from position 0 into a new generation;
    /// the leader builds it and switches to it once caught up. Returns the
    /// generation and whether this call started it (false: one was already
    /// building).
    pub async fn rebuild(&self, name: &str) -> Result<(u64, bool), ProjectionError> {
        let (projection, _) = self.get(name)?;
        generations::start_building(
            &self.pool(name).await?,
            projection.as_ref(),
            generations::Start::Rebuild,
        )
        .await
    }

    /// The active generation of `name` once it has applied the log up to
    /// `min_position`, waiting until `deadline` at most. Read-your-writes: a
    /// writer passes the position its write returned.
    pub async fn wait_for(
        &self,
        name: &'static str,
        min_position: u64,
        deadline: Instant,
    ) -> Result<Active, ProjectionError> {
        let (_, local) = self.get(name)?;
        let mut applied = local.applied.subscribe();
        let mut remote_applied = local.remote_applied.subscribe();
        let mut told = false;
        let pool = self.pool(name).await?;
        loop {
            let known = *applied.borrow_and_update();
            let active = match known {
                Some(a) if a.position >= min_position => Some((a.generation, a.position)),
                _ => generations::active(&pool, name).await?,
            };
            if let Some((generation, position)) = active
                && position >= min_position
            {
                return Ok(Active {
                    generation,
                    position,
                });
            }
            // Not there yet: a lingering projector of this process applies
            // what it has at once, and so does one of another replica once
            // told (PostgreSQL). Each waiting read tells it once: a
            // position remembered across reads would let one read that
            // asks for a position far past the log silence the others.
            raise(&local.wanted, min_position);
            if !told && !local.leading.load(Ordering::SeqCst) {
                told = true;
                if let Err(error) = self
                    .store
                    .notify_projector(ProjectorSignal::Wanted, name, min_position)
                    .await
                {
                    tracing::debug!(%error, "cannot tell the other replicas what a read waits for");
                }
            }
            if Instant::now() >= deadline {
                return Err(match active {
                    None => ProjectionError::NotBuilt { name },
                    Some((_, applied)) => ProjectionError::Behind {
                        name,
                        applied,
                        wanted: min_position,
                    },
                });
            }
            let poll = (Instant::now() + WAIT_POLL).min(deadline);
            tokio::select! {
                _ = applied.changed() => {}
                _ = remote_applied.changed() => {}
                _ = tokio::time::sleep_until(poll) => {}
            }
        }
    }
}
