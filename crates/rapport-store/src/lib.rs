//! Rapport's event log, on SQLite (the embedded default) or PostgreSQL.
//!
//! # Layout
//!
//! - [`Store`]: one interface over both backends: migrate, append a batch,
//!   read the log, ping.
//! - `sqlite` and `postgres`: each backend's append path (rusqlite on a
//!   blocking thread; sqlx with columns bound as arrays). Every rule about
//!   *what* to write lives in `rapport_domain::ingest`; these modules only
//!   look up, insert and commit.
//! - `sql`: the read path, shared by both backends through sqlx.
//! - `cache`: what the writer remembers between batches, validated by the head.
//! - [`writer`]: the group-commit writer that batches concurrent requests
//!   into one transaction.
//! - `codec`: the stored form of events (non-personal payload + personal part).
//!
//! **Architecture Invariant:** positions are gap-free and in commit order.
//! Each backend serializes its append transactions (SQLite by its single
//! writer, PostgreSQL by a transaction-scoped advisory lock) and assigns
//! positions as `head + 1 ...` inside them.

mod cache;
mod codec;
pub mod crypto;
mod feed;
pub mod follow;
mod postgres;
mod sql;
mod sqlite;
pub mod writer;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rapport_domain::ingest::{Conflict, Recorded};
use rapport_domain::{Command, Event, EventType, Interaction, Timestamp};

pub use crypto::{Keyring, MasterKey};
pub use feed::{Chunk, Encode, Feed};
pub use follow::{Followed, FollowedEvent, Follower};
pub use sql::{SqlParam, bind_params, placeholders, sqlite_rows};
pub use writer::{Writer, WriterConfig};

/// The stored form of a scoring policy (as in the log), for read models
/// that keep the current policy beside their rows.
pub fn encode_policy(policy: &rapport_domain::policy::Policy) -> Vec<u8> {
    codec::encode_policy(policy)
}

pub fn decode_policy(bytes: &[u8]) -> Result<rapport_domain::policy::Policy, StoreError> {
    codec::decode_policy(bytes)
}

/// What went wrong in the store. Mapped to gRPC codes in one place, in the server.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database did not answer or refused: worth retrying later.
    #[error("database unavailable")]
    Unavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored bytes that do not decode: a bug or a damaged database.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database url {0:?}: expected sqlite:PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot create data directory {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The group-commit writer has stopped (the server is shutting down).
    #[error("the writer has shut down")]
    Closed,
    /// The master key is missing, unreadable or not the one that wrapped
    /// the stored data keys.
    #[error("master key: {0}")]
    MasterKey(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(Arc::new(e))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(Arc::new(e))
    }
}

impl StoreError {
    /// The same failure, for another caller of the same failed batch.
    pub(crate) fn share(&self) -> StoreError {
        match self {
            StoreError::Unavailable(e) => StoreError::Unavailable(Arc::clone(e)),
            StoreError::Corrupt(what) => StoreError::Corrupt(what.clone()),
            other => StoreError::Corrupt(format!("batch failed: {other}")),
        }
    }
}

/// What a request of a batch became: its results, or the conflict that
/// rejected it as a whole.
pub type AppendOutcome = Result<Vec<Recorded>, Conflict>;

/// A committed batch: one outcome per request, and the events it wrote in
/// position order (none when every request was a duplicate or a conflict).
#[derive(Debug, Clone)]
pub struct Committed {
    pub outcomes: Vec<AppendOutcome>,
    pub events: Vec<Event>,
}

/// What a command became.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// Committed as this event.
    Appended(Event),
    /// The member it names is not a member of its community: nothing written.
    UnknownMember,
    /// `LinkIdentity`: another member owns the identity (merging them is
    /// the way to join the two): nothing written.
    IdentityOwned { member_id: String },
    /// `LinkIdentity`: the member already owns the identity: nothing written.
    AlreadyLinked,
    /// `UnlinkIdentity`: the member does not own the identity: nothing written.
    NotLinked,
    /// The member's personal data was erased: no command applies to it
    /// any more (nothing written).
    MemberErased,
    /// `EraseMember` of a member erased before: nothing written.
    AlreadyErased,
    /// The member is merged into `into`: only an unmerge applies to it
    /// (nothing written).
    MemberMerged { into: String },
    /// `MergeMembers` (the source) or `EraseMember`: other members are
    /// merged into this one; unmerge them first (nothing written).
    HasMergedMembers,
    /// `MergeMembers`: the target is not a member of the community.
    UnknownTarget,
    /// `MergeMembers`: the target's personal data was erased.
    TargetErased,
    /// `MergeMembers`: the target is itself merged into `into`.
    TargetMerged { into: String },
    /// `UnmergeMember`: the source is not merged into that target (nothing
    /// written).
    NotMerged,
}

/// The `store_tasks` row of sealing the personal parts written before
/// encryption existed.
pub(crate) const SEAL_LEGACY_TASK: &str = "seal-legacy-personal";

/// The members that read as one (see [`Store::member_group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberGroup {
    /// The member reads answer with: the target of a merge, or the member.
    pub member_id: String,
    /// The member the request named, when it was merged into `member_id`.
    pub merged_from: Option<String>,
    /// The members merged into `member_id`, by id.
    pub merged: Vec<String>,
}

impl MemberGroup {
    /// `member_id`, then the members merged into it.
    pub fn all(&self) -> Vec<String> {
        std::iter::once(self.member_id.clone())
            .chain(self.merged.iter().cloned())
            .collect()
    }
}

/// How a request names a member: by id, or by one of its identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRef {
    Id(String),
    Identity(rapport_domain::Identity),
}

/// A [`MemberGroup`] from the rows of [`sql::select_member_group`]: one per
/// member merged into the one read as (or one with none).
fn member_group_of(rows: Vec<(String, String, Option<String>)>) -> Option<MemberGroup> {
    let (named, canonical, _) = rows.first()?.clone();
    Some(MemberGroup {
        merged_from: (canonical != named).then_some(named),
        member_id: canonical,
        merged: rows.into_iter().filter_map(|(_, _, m)| m).collect(),
    })
}

/// A pair of members in a fixed order: the smaller id first.
pub(crate) fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

/// What the commands' preconditions need to know of a member, read under
/// the log's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberFacts {
    pub erased: bool,
    /// The member it was merged into, if it is merged now.
    pub merged_into: Option<String>,
    /// Other members are merged into it.
    pub has_merged: bool,
}

/// Whether a command may go ahead, given what the log knows of the member
/// it names and, for a merge, of the target (`None`: not a member of the
/// command's community); `Some` is the refusal to answer.
pub(crate) fn member_precondition(
    command: &Command,
    member: Option<&MemberFacts>,
    target: Option<&MemberFacts>,
) -> Option<CommandOutcome> {
    let Some(member) = member else {
        return Some(CommandOutcome::UnknownMember);
    };
    match command {
        Command::EraseMember { .. } if member.erased => return Some(CommandOutcome::AlreadyErased),
        _ if member.erased => return Some(CommandOutcome::MemberErased),
        Command::UnmergeMember {
            target_member_id, ..
        } => {
            return (member.merged_into.as_deref() != Some(target_member_id))
                .then_some(CommandOutcome::NotMerged);
        }
        _ => {}
    }
    // A merged member reads as its target; acting on it is acting on a
    // member that, for everyone else, no longer exists on its own.
    if let Some(into) = &member.merged_into {
        return Some(CommandOutcome::MemberMerged { into: into.clone() });
    }
    match command {
        // One person, several members: erasing one of them would leave the
        // others' personal data in a history that reads as theirs.
        Command::EraseMember { .. } if member.has_merged => Some(CommandOutcome::HasMergedMembers),
        // No chains: a merge is undone exactly by one unmerge.
        Command::MergeMembers { .. } if member.has_merged => Some(CommandOutcome::HasMergedMembers),
        Command::MergeMembers { .. } => match target {
            None => Some(CommandOutcome::UnknownTarget),
            Some(t) if t.erased => Some(CommandOutcome::TargetErased),
            Some(MemberFacts {
                merged_into: Some(into),
                ..
            }) => Some(CommandOutcome::TargetMerged { into: into.clone() }),
            Some(_) => None,
        },
        _ => None,
    }
}

/// Whether a link or unlink may go ahead, given who owns its identity now
/// (read under the log's lock); `Some` is the refusal to answer.
pub(crate) fn identity_precondition(
    command: &Command,
    owner: Option<&str>,
) -> Option<CommandOutcome> {
    match (command, owner) {
        (Command::LinkIdentity { member_id, .. }, Some(owner)) if owner == member_id => {
            Some(CommandOutcome::AlreadyLinked)
        }
        (Command::LinkIdentity { .. }, Some(owner)) => Some(CommandOutcome::IdentityOwned {
            member_id: owner.to_owned(),
        }),
        (Command::UnlinkIdentity { member_id, .. }, owner) if owner != Some(member_id.as_str()) => {
            Some(CommandOutcome::NotLinked)
        }
        _ => None,
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite:PATH` or `postgres://...`.
    pub url: String,
    /// Pool size for PostgreSQL, and for SQLite readers.
    pub max_connections: u32,
    /// How long to wait for a connection before answering UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Wraps every member's data key (see [`crypto`]). `None`: on SQLite,
    /// `master.key` beside the database file, created on first use; on
    /// PostgreSQL an error (replicas must share one key: configure it).
    pub master_key: Option<MasterKey>,
    /// SQLite only: the most heap all of SQLite may use in this process
    /// (page caches above all), a soft limit: past it, each connection
    /// reuses its own cached pages instead of taking more. 0: no limit.
    pub sqlite_heap_limit: u64,
}

/// See [`StoreOptions::sqlite_heap_limit`]. Every SQLite connection may cache
/// 64 MiB, and the server opens about a hundred of them (pools and readers
/// of the log and of each read model): without a limit, reads spread over a
/// large database grow the caches past a 1 GiB container limit.
pub const DEFAULT_SQLITE_HEAP_LIMIT: u64 = 256 * 1024 * 1024;

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions {
            url: url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            master_key: None,
            sqlite_heap_limit: DEFAULT_SQLITE_HEAP_LIMIT,
        }
    }

    pub fn with_master_key(mut self, key: MasterKey) -> Self {
        self.master_key = Some(key);
        self
    }
}

/// A filtered read of the log.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Events with a greater position.
    pub after: u64,
    pub limit: u32,
    pub community_id: Option<String>,
    /// Empty: all types.
    pub event_types: Vec<EventType>,
    /// Empty: all; else only interactions on these channels.
    pub channels: Vec<String>,
    /// Leave the personal part out (handles, names, excerpts, urls read as
    /// empty): for readers that keep no personal data, and read faster.
    pub without_personal: bool,
}

impl EventQuery {
    /// Whether `event` passes this query's filters (not its position or
    /// limit): the same rule as the SQL of a read, for events already in
    /// hand.
    pub fn matches(&self, event: &Event) -> bool {
        self.community_id
            .as_ref()
            .is_none_or(|c| *c == event.community_id)
            && (self.event_types.is_empty() || self.event_types.contains(&event.body.event_type()))
            && (self.channels.is_empty()
                || event
                    .body
                    .channel()
                    .is_some_and(|c| self.channels.iter().any(|wanted| wanted == c)))
    }
}

/// A page of the log.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The last committed position when the page was read; the page only
    /// holds events up to it.
    pub head: u64,
}

/// The data keys a batch of events needs, and the rows to add to
/// `member_keys` for members that have none yet.
#[derive(Default)]
pub(crate) struct BatchKeys {
    pub keys: HashMap<String, crypto::DataKey>,
    /// (member, community, wrapped key): to insert with the batch, and to
    /// remember once it commits.
    pub new: Vec<(String, String, Vec<u8>)>,
}

impl BatchKeys {
    /// Which members of `events` need a key (their events carry personal
    /// data), with their community; those `keyring` knows are filled in.
    pub(crate) fn start(keyring: &Keyring, events: &[Event]) -> (BatchKeys, Vec<(String, String)>) {
        let mut batch = BatchKeys::default();
        let mut unknown = Vec::new();
        for event in events {
            if !codec::has_personal(&event.body) {
                continue;
            }
            let member = event.body.member_id();
            if batch.keys.contains_key(member) || unknown.iter().any(|(m, _)| m == member) {
                continue;
            }
            match keyring.write_key(member) {
                Some(key) => {
                    batch.keys.insert(member.to_owned(), key);
                }
                None => unknown.push((member.to_owned(), event.community_id.clone())),
            }
        }
        (batch, unknown)
    }

    /// A member's stored key, read from `member_keys`.
    pub(crate) fn found(
        &mut self,
        keyring: &Keyring,
        member: &str,
        wrapped: &[u8],
    ) -> Result<(), StoreError> {
        let key = keyring.data_key(wrapped, member)?;
        keyring.remember([(member.to_owned(), key.clone())]);
        self.keys.insert(member.to_owned(), key);
        Ok(())
    }

    /// A member without a key yet: a new one, stored with the batch.
    pub(crate) fn create(&mut self, keyring: &Keyring, member: String, community: String) {
        let (key, wrapped) = keyring.master().new_data_key(&member);
        self.keys.insert(member.clone(), key);
        self.new.push((member, community, wrapped));
    }

    /// The events' stored columns, personal parts sealed.
    pub(crate) fn encode(&self, events: &[Event]) -> (Vec<Vec<u8>>, Vec<Option<Vec<u8>>>) {
        events
            .iter()
            .map(|event| {
                let member = event.body.member_id();
                let (payload, personal) = codec::encode(&event.body);
                let sealed = personal.map(|p| {
                    self.keys
                        .get(member)
                        .expect("BatchKeys holds a key for every member with personal data")
                        .seal(&p, member)
                });
                (payload, sealed)
            })
            .unzip()
    }

    /// After the commit: the new keys are stored, use them from now on.
    pub(crate) fn committed(mut self, keyring: &Keyring) {
        let new = self.new.into_iter().filter_map(|(member, _, _)| {
            let key = self.keys.remove(&member)?;
            Some((member, key))
        });
        keyring.remember(new);
    }
}

/// What merge suggestions are computed from (see [`Store::merge_candidates`]).
pub struct MergeCandidates {
    pub handles: Vec<rapport_domain::suggest::HandleRow>,
    pub emails: Vec<rapport_domain::suggest::EmailRow>,
    /// Rejected pairs, the smaller member id first.
    pub rejected: std::collections::BTreeSet<(String, String)>,
}

/// How many of a member's latest interactions [`Store::member_profile`]
/// looks through for a display name.
pub const DISPLAY_NAME_LOOKBACK: i64 = 50;

/// A member as its own stream describes it (see [`Store::member_profile`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemberProfile {
    pub identities: Vec<rapport_domain::Identity>,
    pub display_name: String,
    /// Erased: no identities, no display name.
    pub erased: bool,
}

/// How busy a connection pool is, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// A sqlx pool on the log's database, for the read models beside it.
#[derive(Debug, Clone)]
pub enum DbPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// The event log on one of the two backends.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// What a read model's projector and the reads on other replicas tell each
/// other ([`Store::notify_projector`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorSignal {
    /// A read waits for the read model to reach a position.
    Wanted,
    /// The projector applied the log up to a position.
    Applied,
}

impl Store {
    /// Opens the database at `options.url`, creating a SQLite file (and its
    /// directory) if missing. Does not migrate.
    pub async fn connect(options: &StoreOptions) -> Result<Store, StoreError> {
        let url = options.url.as_str();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(postgres::PgStore::connect(options).await?))
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            Ok(Store::Sqlite(
                sqlite::SqliteStore::connect(path, options).await?,
            ))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Where the embedded default keeps its master key for a `sqlite:PATH`
    /// url (`master.key` beside the file); `None` for PostgreSQL.
    pub fn embedded_master_key_path(url: &str) -> Option<std::path::PathBuf> {
        let path = url.strip_prefix("sqlite:")?.trim_start_matches("//");
        Some(sqlite::master_key_path(path))
    }

    /// The master key and the data keys in use.
    pub fn keyring(&self) -> &Keyring {
        match self {
            Store::Sqlite(s) => s.keyring(),
            Store::Postgres(s) => s.keyring(),
        }
    }

    /// `"sqlite"` or `"postgres"`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Applies pending migrations. Safe to run from several replicas at once.
    ///
    /// Then turns identity lookups written before they were keyed (plain
    /// normalized handles) into keyed hashes, under the log's lock; and,
    /// once per database, seals the personal parts of events written before
    /// encryption existed with their members' keys (those of erased members
    /// are dropped), so an erasure shreds them too.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let (rehashed, sealed) = match self {
            Store::Sqlite(s) => s.migrate().await?,
            Store::Postgres(s) => s.migrate().await?,
        };
        if rehashed > 0 {
            tracing::info!(identities = rehashed, "identity lookups keyed");
        }
        if sealed > 0 {
            tracing::info!(
                events = sealed,
                "personal parts written before encryption sealed"
            );
        }
        Ok(())
    }

    /// One round trip to the database.
    #[tracing::instrument(name = "db.ping", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ping().await,
            Store::Postgres(s) => s.ping().await,
        }
    }

    /// Tells the other replicas about read model `name`: a read here waits
    /// for `position` (the replica that runs its projector stops
    /// lingering), or this replica's projector applied up to `position`
    /// (reads waiting on the others look at once instead of at their next
    /// poll). See [`Store::listen_projectors`]. On PostgreSQL a `NOTIFY`;
    /// on SQLite nothing (one process serves a data directory).
    pub async fn notify_projector(
        &self,
        signal: ProjectorSignal,
        name: &str,
        position: u64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.notify_projector(signal, name, position).await,
        }
    }

    /// Calls `heard` with what every replica's [`Store::notify_projector`]
    /// says, until the pool closes. On SQLite it never returns and never
    /// calls.
    pub async fn listen_projectors(
        &self,
        heard: &(dyn Fn(ProjectorSignal, &str, u64) + Send + Sync),
    ) {
        match self {
            Store::Sqlite(_) => std::future::pending().await,
            Store::Postgres(s) => {
                s.listen_projectors(heard).await;
                // The pool closed or LISTEN failed for good: reads on other
                // replicas then wait out the linger and poll.
                tracing::warn!("stopped listening for projector signals");
                std::future::pending().await
            }
        }
    }

    /// The last committed position (0 for an empty log).
    #[tracing::instrument(name = "db.head", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn head(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.head().await,
            Store::Postgres(s) => s.head().await,
        }
    }

    /// Appends a batch of requests in one transaction and returns one outcome
    /// per request. Either the whole transaction commits or nothing does.
    /// Prefer [`Writer`], which batches concurrent callers.
    pub async fn append_batch(
        &self,
        requests: Vec<Vec<Interaction>>,
        recorded_at: Timestamp,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        Ok(self.append(requests, recorded_at).await?.outcomes)
    }

    /// [`Store::append_batch`], also returning the events written, for the
    /// writer to publish.
    #[tracing::instrument(name = "db.append", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn append(
        &self,
        requests: Vec<Vec<Interaction>>,
        recorded_at: Timestamp,
    ) -> Result<Committed, StoreError> {
        match self {
            Store::Sqlite(s) => s.append_batch(requests, recorded_at).await,
            Store::Postgres(s) => s.append_batch(&requests, recorded_at).await,
        }
    }

    /// Appends a command's event in a transaction of its own, serialized
    /// with the batches like any append. Prefer [`Writer::command`], which
    /// orders it with the batches of this process.
    #[tracing::instrument(name = "db.append_command", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn append_command(
        &self,
        command: Command,
        recorded_at: Timestamp,
    ) -> Result<CommandOutcome, StoreError> {
        match self {
            Store::Sqlite(s) => s.append_command(command, recorded_at).await,
            Store::Postgres(s) => s.append_command(&command, recorded_at).await,
        }
    }

    /// Events after `query.after`, oldest first, up to the head at read time.
    #[tracing::instrument(name = "db.read_events", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        match self {
            // SQLite checks the targets in the read's own transaction.
            Store::Sqlite(s) => s.read_events(query).await,
            Store::Postgres(s) => {
                let mut page = s.read_events(query).await?;
                if !query.without_personal {
                    s.forget_erased_targets(&mut page.events).await?;
                }
                Ok(page)
            }
        }
    }

    /// What a member's stream says about the member now: its identities (in
    /// link order) and the display name of its latest interaction that
    /// carried one (among its last [`DISPLAY_NAME_LOOKBACK`]).
    #[tracing::instrument(name = "db.member_profile", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn member_profile(&self, member_id: &str) -> Result<MemberProfile, StoreError> {
        let (identities, erased) = self.member_identities(member_id).await?;
        if erased {
            return Ok(MemberProfile {
                erased,
                ..MemberProfile::default()
            });
        }
        let interactions = self
            .stream_events(
                member_id,
                &[EventType::InteractionRecorded],
                true,
                DISPLAY_NAME_LOOKBACK,
            )
            .await?;
        let display_name = interactions
            .iter()
            .find_map(|e| match &e.body {
                rapport_domain::EventBody::InteractionRecorded { interaction, .. }
                    if !interaction.actor_display_name.is_empty() =>
                {
                    Some(interaction.actor_display_name.clone())
                }
                _ => None,
            })
            .unwrap_or_default();
        Ok(MemberProfile {
            identities,
            display_name,
            erased,
        })
    }

    /// A member's identities now (the fold of its link and unlink events),
    /// and whether it was erased (then none).
    async fn member_identities(
        &self,
        member_id: &str,
    ) -> Result<(Vec<rapport_domain::Identity>, bool), StoreError> {
        let events = self
            .stream_events(
                member_id,
                &[
                    EventType::IdentityLinked,
                    EventType::IdentityUnlinked,
                    EventType::MemberErased,
                ],
                false,
                i64::MAX,
            )
            .await?;
        if events
            .iter()
            .any(|e| matches!(e.body, rapport_domain::EventBody::MemberErased { .. }))
        {
            return Ok((Vec::new(), true));
        }
        Ok((
            rapport_domain::current_identities(events.iter().map(|e| &e.body)),
            false,
        ))
    }

    /// Events of some types from a member's own stream (see the backends'
    /// `stream_events`).
    async fn stream_events(
        &self,
        member_id: &str,
        types: &[EventType],
        newest_first: bool,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let stream = rapport_domain::member_stream_id(member_id);
        match self {
            Store::Sqlite(s) => s.stream_events(&stream, types, newest_first, limit).await,
            Store::Postgres(s) => s.stream_events(&stream, types, newest_first, limit).await,
        }
    }

    /// What merge suggestions are computed from, for one community: its
    /// identities other than emails, by keyed lookup; its email addresses
    /// (decrypted from their members' streams) with the lookup their local
    /// part would have as a handle; the pairs rejected before.
    #[tracing::instrument(name = "db.merge_candidates", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn merge_candidates(
        &self,
        community_id: &str,
    ) -> Result<MergeCandidates, StoreError> {
        use rapport_domain::suggest::{EmailRow, HandleRow, canonical_email};
        // Members merged into another count as that one: their identities
        // are the target's, and a pair inside one merge is no suggestion.
        const IDENTITIES: &str = "SELECT i.channel, i.handle_key, i.member_id, \
             COALESCE(m.merged_into, i.member_id) FROM identities i \
             JOIN members m ON m.member_id = i.member_id WHERE i.community_id = $1";
        const REJECTED: &str = "SELECT member_a, member_b FROM rejected_merge_suggestions \
             WHERE community = $1";
        let rows: Vec<(String, String, String, String)> = match self {
            Store::Sqlite(s) => {
                sqlx::query_as(IDENTITIES)
                    .bind(community_id)
                    .fetch_all(s.pool())
                    .await?
            }
            Store::Postgres(s) => {
                sqlx::query_as(IDENTITIES)
                    .bind(community_id)
                    .fetch_all(s.pool())
                    .await?
            }
        };
        let rejected: Vec<(String, String)> = match self {
            Store::Sqlite(s) => {
                sqlx::query_as(REJECTED)
                    .bind(community_id)
                    .fetch_all(s.pool())
                    .await?
            }
            Store::Postgres(s) => {
                sqlx::query_as(REJECTED)
                    .bind(community_id)
                    .fetch_all(s.pool())
                    .await?
            }
        };
        let mut handles = Vec::new();
        let mut with_email = std::collections::BTreeMap::new();
        for (channel, lookup, owner, member_id) in rows {
            if channel == "email" {
                with_email.insert(owner, member_id);
            } else {
                handles.push(HandleRow {
                    member_id,
                    channel,
                    lookup,
                });
            }
        }
        let mut emails = Vec::new();
        for (owner, member_id) in with_email {
            for identity in self.member_identities(&owner).await?.0 {
                if identity.channel == "email" {
                    let local = canonical_email(&identity.handle).1;
                    emails.push(EmailRow {
                        local_part_lookup: self
                            .keyring()
                            .master()
                            .identity_lookup(community_id, &local),
                        member_id: member_id.clone(),
                        address: identity.handle,
                    });
                }
            }
        }
        Ok(MergeCandidates {
            handles,
            emails,
            rejected: rejected.into_iter().collect(),
        })
    }

    /// Every event of a member's own stream, in stream order, personal
    /// parts opened (for a data export).
    #[tracing::instrument(name = "db.member_stream", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn member_stream(&self, member_id: &str) -> Result<Vec<Event>, StoreError> {
        let every = [
            EventType::MemberRegistered,
            EventType::IdentityLinked,
            EventType::InteractionRecorded,
            EventType::MemberRoleSet,
            EventType::ScoringPolicySet,
            EventType::IdentityUnlinked,
            EventType::MemberErased,
            EventType::MergeSuggestionRejected,
            EventType::MembersMerged,
            EventType::MemberUnmerged,
        ];
        let mut events = self
            .stream_events(member_id, &every, false, i64::MAX)
            .await?;
        match self {
            Store::Sqlite(s) => s.forget_erased_targets(events).await,
            Store::Postgres(s) => {
                s.forget_erased_targets(&mut events).await?;
                Ok(events)
            }
        }
    }

    /// The events at these positions, in position order; positions that do
    /// not exist are left out. Read models keep positions and fetch the
    /// events' details (personal data included) from the log through this.
    #[tracing::instrument(name = "db.events_at", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn events_at(&self, positions: &[u64]) -> Result<Vec<Event>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            // SQLite checks the targets in the read's own transaction.
            Store::Sqlite(s) => s.events_at(positions).await,
            Store::Postgres(s) => {
                let mut events = s.events_at(positions).await?;
                s.forget_erased_targets(&mut events).await?;
                Ok(events)
            }
        }
    }

    /// Whether `member_id` is a member of `community_id`. Members are written
    /// with the log, so a member is known as soon as its first write is
    /// acknowledged, on every replica.
    #[tracing::instrument(name = "db.member_exists", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn member_exists(
        &self,
        community_id: &str,
        member_id: &str,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT 1 FROM members WHERE member_id = $1 AND community_id = $2";
        let found: Option<i32> = match self {
            Store::Sqlite(s) => {
                sqlx::query_scalar(SQL)
                    .bind(member_id)
                    .bind(community_id)
                    .fetch_optional(s.pool())
                    .await?
            }
            Store::Postgres(s) => {
                sqlx::query_scalar(SQL)
                    .bind(member_id)
                    .bind(community_id)
                    .fetch_optional(s.pool())
                    .await?
            }
        };
        Ok(found.is_some())
    }

    /// The member a read names (by id, or by one of its identities) reads
    /// as, and every member that reads as it: itself, or the member it was
    /// merged into, and the members merged into that one. `None` unless it
    /// is a member of `community_id`. One statement (one hop on SQLite, to a
    /// log reader), the identity lookup included.
    #[tracing::instrument(name = "db.member_group", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn member_group(
        &self,
        community_id: &str,
        member: &MemberRef,
    ) -> Result<Option<MemberGroup>, StoreError> {
        use sqlx::Row as _;
        let (select, params) = sql::select_member_group(community_id, member, self.keyring());
        // (the named member, the member it reads as, a member merged into that one)
        let rows: Vec<(String, String, Option<String>)> = match self {
            Store::Sqlite(s) => {
                s.log_rows(select, params, |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .await?
            }
            Store::Postgres(s) => bind_params(sqlx::query(sqlx::AssertSqlSafe(select)), params)
                .fetch_all(s.pool())
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
                .collect::<Result<_, sqlx::Error>>()?,
        };
        Ok(member_group_of(rows))
    }

    /// Of `member_ids`, those merged into another member now, with that
    /// member: how reads show a counterpart that was merged.
    #[tracing::instrument(name = "db.merged_into", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn merged_into(
        &self,
        member_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        let mut out = HashMap::new();
        for chunk in member_ids.chunks(500) {
            macro_rules! fetch {
                ($pool:expr) => {{
                    let mut qb = sqlx::QueryBuilder::new(
                        "SELECT member_id, merged_into FROM members \
                         WHERE merged_into IS NOT NULL AND member_id IN (",
                    );
                    let mut list = qb.separated(", ");
                    for id in chunk {
                        list.push_bind(id.clone());
                    }
                    qb.push(")");
                    let rows: Vec<(String, String)> = qb.build_query_as().fetch_all($pool).await?;
                    rows
                }};
            }
            let rows = match self {
                Store::Sqlite(s) => fetch!(s.pool()),
                Store::Postgres(s) => fetch!(s.pool()),
            };
            out.extend(rows);
        }
        Ok(out)
    }

    /// The member an identity belongs to in `community_id`, matching the
    /// handle as identity resolution does (see `normalize_handle`).
    #[tracing::instrument(name = "db.find_member", level = "info", skip_all, fields(db.system = self.backend()))]
    pub async fn find_member(
        &self,
        community_id: &str,
        identity: &rapport_domain::Identity,
    ) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT member_id FROM identities \
             WHERE community_id = $1 AND channel = $2 AND handle_key = $3";
        let key = identity.key(community_id);
        let lookup = self.keyring().lookup(&key);
        Ok(match self {
            Store::Sqlite(s) => {
                sqlx::query_scalar(SQL)
                    .bind(&key.community_id)
                    .bind(&key.channel)
                    .bind(&lookup)
                    .fetch_optional(s.pool())
                    .await?
            }
            Store::Postgres(s) => {
                sqlx::query_scalar(SQL)
                    .bind(&key.community_id)
                    .bind(&key.channel)
                    .bind(&lookup)
                    .fetch_optional(s.pool())
                    .await?
            }
        })
    }

    /// The log's connection pool (for reads; appends go through
    /// [`Store::append_batch`]).
    pub fn pool(&self) -> DbPool {
        match self {
            Store::Sqlite(s) => DbPool::Sqlite(s.pool().clone()),
            Store::Postgres(s) => DbPool::Postgres(s.pool().clone()),
        }
    }

    /// Connections of the log's pool: open, idle, and the most allowed.
    pub fn pool_usage(&self) -> PoolUsage {
        fn usage<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> PoolUsage {
            PoolUsage {
                open: pool.size(),
                idle: pool.num_idle() as u32,
                max: pool.options().get_max_connections(),
            }
        }
        match self {
            Store::Sqlite(s) => usage(s.pool()),
            Store::Postgres(s) => usage(s.pool()),
        }
    }

    /// The pool of read model `name`'s tables (and its checkpoints, in
    /// `projection_generations`). On SQLite each read model lives in a
    /// database file of its own beside the log's, opened and migrated the
    /// first time it is asked for, whose commits do not wait for the disk
    /// (see `sqlite::ReadModelFiles`); on PostgreSQL in the log's database
    /// (their transactions turn off `synchronous_commit` themselves). The
    /// log's tables are not reachable through it.
    pub async fn projection_pool(&self, name: &str) -> Result<DbPool, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(DbPool::Sqlite(s.read_model(name).await?.pool)),
            Store::Postgres(s) => Ok(DbPool::Postgres(s.pool().clone())),
        }
    }

    /// Runs `read` on a rusqlite connection to read model `name`'s file, on
    /// a blocking thread; `None` on PostgreSQL. For passes over a whole
    /// community's rows, which sqlx's SQLite driver would hand across
    /// threads one copied value at a time (see the `sqlite` module doc).
    pub async fn read_projections_sqlite<T: Send + 'static>(
        &self,
        name: &str,
        read: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<Result<T, StoreError>> {
        match self {
            Store::Sqlite(s) => Some(s.read_projections(name, read).await),
            Store::Postgres(_) => None,
        }
    }

    /// Closes every connection, waiting for those in use.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

/// The current time, for `recorded_at` and for validating `occurred_at`
/// (the domain reads no clock itself).
pub fn wall_clock() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_micros(since_epoch.as_micros() as i64)
}

/// A new member id: a UUIDv7, so ids sort by creation time and index well.
fn new_member_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Numeric conversions at the database boundary: positions and versions are
/// `u64` in the domain and BIGINT in both databases.
pub fn to_db(n: u64) -> i64 {
    i64::try_from(n).expect("positions fit in a BIGINT")
}

pub fn from_db(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative position or version {n}")))
}

/// The members that `events` name as their targets: whose erasure since
/// [`forget_targets`] must account for.
pub(crate) fn member_targets(events: &[Event]) -> BTreeSet<String> {
    use rapport_domain::{EventBody, Target};
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::InteractionRecorded {
                interaction,
                target_member_id: Some(target),
                ..
            } if matches!(interaction.target, Some(Target::Member(_))) => Some(target.clone()),
            _ => None,
        })
        .collect()
}

/// Blanks the handle of every target in `erased`: it sits in the author's
/// personal part, sealed with the author's key, so erasing the target
/// cannot shred it; reads leave it out instead.
pub(crate) fn forget_targets(events: &mut [Event], erased: &HashSet<String>) {
    use rapport_domain::{EventBody, Target};
    if erased.is_empty() {
        return;
    }
    for event in events {
        if let EventBody::InteractionRecorded {
            interaction,
            target_member_id: Some(target),
            ..
        } = &mut event.body
            && erased.contains(target.as_str())
            && let Some(Target::Member(identity)) = &mut interaction.target
        {
            identity.handle.clear();
        }
    }
}
