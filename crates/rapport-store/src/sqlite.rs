//! The embedded default: one SQLite file in WAL mode.
//!
//! Migrations and most reads go through sqlx pools; reads of the log by
//! position (followers, projectors: thousands of rows a call) go through
//! rusqlite connections on blocking threads ([`Readers`]), since sqlx's
//! driver hands every row across threads and copies every value, which held
//! a follower to about 100,000 events/s. Appends go through one
//! rusqlite connection on a blocking thread: a whole batch (lookups, plan,
//! inserts, commit) runs in one hop, with cached prepared statements, instead
//! of one hop to sqlx's SQLite thread per statement, which cost a fixed
//! several milliseconds per batch in thread wake-ups.
//!
//! Durability: `synchronous=FULL`, so a commit is on disk before the writer
//! acknowledges it. Ordering: one writer connection, and every append runs in
//! `BEGIN IMMEDIATE`, so appends are serialized even if a second process opens
//! the same file by mistake.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rapport_domain::ingest::{self, Known, KnownMember, Plan, RecordedRef};
use rapport_domain::{Command, Interaction, Timestamp};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use crate::BatchKeys;
use crate::cache::{CacheUpdate, WriterCache};
use crate::crypto::{Keyring, MasterKey};
use crate::{
    CommandOutcome, Committed, EventPage, EventQuery, StoreError, StoreOptions, from_db, sql, to_db,
};

/// Pragmas of every connection, reader or writer.
///
/// - `cache_size`: the default page cache (2 MiB) makes every index insert of
///   a batch a read from disk once the log outgrows it.
/// - `wal_autocheckpoint`: every ~40 MiB of WAL instead of every 4 MiB. The
///   checkpoint runs inside the committing write; the checkpointer thread
///   (see [`spawn_checkpointer`]) has copied most frames by then, so it is
///   short, and it is what lets the WAL start over. A read model's file
///   waits longer ([`READ_MODEL_AUTOCHECKPOINT_PAGES`]).
/// - `journal_size_limit`: the WAL file is cut back to 64 MiB after a
///   checkpoint instead of keeping its largest size forever. A read
///   model's file keeps more ([`READ_MODEL_JOURNAL_SIZE_LIMIT`]).
const PRAGMAS: [(&str, &str); 4] = [
    ("cache_size", "-65536"),
    ("temp_store", "memory"),
    ("wal_autocheckpoint", "10000"),
    ("journal_size_limit", "67108864"),
];

/// How long a write to a read model's file waits for another transaction
/// on it (see [`ReadModelFiles::open`]).
const PROJECTIONS_BUSY_TIMEOUT: Duration = Duration::from_secs(120);

/// `wal_autocheckpoint` of a read model's file: a WAL of [`WAL_RESET_BYTES`]
/// (in 4 KiB pages), where the checkpointer would empty it anyway.
///
/// A projector's commit (a catch-up batch of 2,000 events rewrites 10,000
/// pages or more of the scores' file) passed the log's 10,000 pages nearly
/// every time, so the checkpoint ran inside it, on the projector's path,
/// copying what the checkpointer thread had not yet, and fsyncing: 43% of
/// the scores projector's commit time in a catch-up. By the time the WAL is
/// this large the checkpointer has copied most of it. The commit's
/// checkpoint is kept for what it alone does: it lets the WAL start over
/// while the projector writes without pause (without it the WAL grew past
/// 800 MB in a 150,000-event catch-up; the emptying checkpoint never found
/// a gap between batches). See docs/performance.md, "A read model's WAL
/// left to its checkpointer".
const READ_MODEL_AUTOCHECKPOINT_PAGES: u64 = WAL_RESET_BYTES / 4096;

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// WAL size past which the checkpointer empties the WAL (see [`spawn_checkpointer`]).
const WAL_RESET_BYTES: u64 = 256 * 1024 * 1024;

/// How long an emptying checkpoint may wait for readers, holding writers back.
const WAL_RESET_PATIENCE: Duration = Duration::from_millis(100);

/// `journal_size_limit` of a read model's file: above the size at which its
/// WAL starts over ([`WAL_RESET_BYTES`], and what a batch adds before a
/// checkpoint sees it), so the WAL keeps its blocks when it starts over.
/// Cut back to 64 MiB, as the log's is, it grew back by ~200 MiB after
/// every reset, and every frame written past the old end made the file
/// system allocate and zero a block: about a tenth of the server's CPU in
/// a catch-up of the scores, which now takes 0.85× the CPU
/// (docs/performance.md, "A read model's WAL kept at its size").
const READ_MODEL_JOURNAL_SIZE_LIMIT: u64 = WAL_RESET_BYTES + WAL_RESET_BYTES / 4;

/// How the checkpointer empties a WAL that grew past [`WAL_RESET_BYTES`].
#[derive(Debug, Clone, Copy)]
enum WalReset {
    /// Cut the file to nothing: the log's WAL holds older page images of
    /// what an erasure overwrote (a member's wrapped key), which must not
    /// stay in the file.
    Truncate,
    /// Start over from its beginning and keep the file: read models hold
    /// no personal data, and writing over blocks the file already has
    /// costs less than growing it again. A file past twice the reset size
    /// (the end of a rebuild writes a whole read model in one transaction:
    /// gigabytes at 10 M) is cut all the same, so that it does not stay on
    /// disk until the next write.
    Restart,
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Runs migrations: sqlx's migrator wants a pool.
    admin: SqlitePool,
    /// Readers see committed snapshots concurrently with the writer (WAL).
    readers: SqlitePool,
    /// Each read model's database file, opened on first use.
    read_models: Arc<ReadModelFiles>,
    /// The one writer connection (see the module doc).
    writer: Arc<Mutex<rusqlite::Connection>>,
    /// Identities and stream versions this process's writer committed.
    cache: Arc<Mutex<WriterCache>>,
    /// Reads the log by position (see the module doc).
    log_readers: Arc<Readers>,
    keyring: Keyring,
}

/// The read models' databases: a file for each beside the log's (see
/// [`read_model_path`]), each with its own `projection_generations`.
///
/// Files of their own, because SQLite has one write lock per file: a read
/// model's long transactions (indexing a rebuilt generation, re-folding a
/// community after a policy change, dropping a retired generation: a minute
/// or more at 10 million interactions) would otherwise hold back every
/// append, and every other read model's projector. `synchronous=NORMAL`: a
/// read model's rows and checkpoint commit together, so a power loss can
/// only roll both back, and the projector applies those events again.
#[derive(Debug)]
struct ReadModelFiles {
    log_path: String,
    connect: SqliteConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
    /// Keeps each file's checkpointer running while the store lives.
    writer: std::sync::Weak<Mutex<rusqlite::Connection>>,
    files: Mutex<std::collections::HashMap<String, Arc<tokio::sync::OnceCell<ReadModelFile>>>>,
}

/// One read model's file: a pool for its projector and queries, rusqlite
/// readers for whole-community passes (a preview reads every activity row
/// of a community), for the reason the log has them (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct ReadModelFile {
    pub(crate) pool: SqlitePool,
    readers: Arc<Readers>,
}

impl ReadModelFiles {
    /// `name`'s file, opened (created, migrated) the first time it is asked for.
    async fn get(&self, name: &str) -> Result<ReadModelFile, StoreError> {
        // A file name, not a path: names come from code, but a slip must
        // not write outside the data directory.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(StoreError::Corrupt(format!(
                "read model name {name:?} is not lowercase letters and underscores"
            )));
        }
        let cell = Arc::clone(
            self.files
                .lock()
                .expect("read model files")
                .entry(name.to_owned())
                .or_default(),
        );
        cell.get_or_try_init(|| self.open(name)).await.cloned()
    }

    async fn open(&self, name: &str) -> Result<ReadModelFile, StoreError> {
        let path = read_model_path(&self.log_path, name);
        let pool = SqlitePoolOptions::new()
            .max_connections(self.max_connections.max(2))
            .test_before_acquire(false)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(
                self.connect
                    .clone()
                    .filename(&path)
                    .synchronous(SqliteSynchronous::Normal)
                    .pragma(
                        "wal_autocheckpoint",
                        READ_MODEL_AUTOCHECKPOINT_PAGES.to_string(),
                    )
                    .pragma(
                        "journal_size_limit",
                        READ_MODEL_JOURNAL_SIZE_LIMIT.to_string(),
                    )
                    // Its projector writes the file, and now and then an
                    // admin's rebuild request: that one should wait its
                    // turn behind a long batch (a 10 M re-fold), not fail.
                    .busy_timeout(PROJECTIONS_BUSY_TIMEOUT),
            )
            .await?;
        sqlx::migrate!("./migrations/sqlite-projections")
            .run(&pool)
            .await?;
        spawn_checkpointer(
            &path,
            self.writer.clone(),
            WalReset::Restart,
            WAL_RESET_BYTES,
        )?;
        let readers = Readers::new(&path, self.max_connections.max(1) as usize);
        Ok(ReadModelFile { pool, readers })
    }

    async fn close(&self) {
        let open: Vec<_> = self
            .files
            .lock()
            .expect("read model files")
            .values()
            .filter_map(|cell| cell.get().cloned())
            .collect();
        for file in open {
            file.pool.close().await;
        }
    }
}

/// rusqlite connections for reading one file, opened on demand, at most
/// `permits` in use at once, the idle ones kept for the next read (so there
/// are never more than `permits` of them).
#[derive(Debug)]
struct Readers {
    path: String,
    idle: Mutex<Vec<rusqlite::Connection>>,
    permits: tokio::sync::Semaphore,
}

impl Readers {
    fn new(path: &str, permits: usize) -> Arc<Self> {
        Arc::new(Readers {
            path: path.to_owned(),
            idle: Mutex::default(),
            permits: tokio::sync::Semaphore::new(permits),
        })
    }

    /// Runs `read` on a connection, on a blocking thread.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let idle = readers.idle.lock().expect("log readers").pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => open_reader(&readers.path)?,
            };
            let result = read(&mut conn);
            // A connection whose read failed is dropped, not reused.
            if result.is_ok() {
                readers.idle.lock().expect("log readers").push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("a sqlite reader panicked: {e}")))?
    }
}

impl SqliteStore {
    pub(crate) async fn connect(path: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let master = match &options.master_key {
            Some(key) => key.clone(),
            // The embedded default keeps its key beside its data.
            None => MasterKey::load_or_create(&master_key_path(path), true)?,
        };
        let mut connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        for (name, value) in PRAGMAS {
            connect = connect.pragma(name, value);
        }
        // No ping before each use: a local file does not go stale.
        let admin = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await?;
        // The file exists and is in WAL mode now (sqlx created it).
        let path = path.to_owned();
        let path_for_checkpoints = path.clone();
        let heap_limit = i64::try_from(options.sqlite_heap_limit).unwrap_or(i64::MAX);
        let writer = tokio::task::spawn_blocking(move || {
            let conn = open_writer(&path)?;
            // Process-wide: it bounds every connection's cache, sqlx's too
            // (both link the one bundled SQLite).
            conn.pragma_update(None, "soft_heap_limit", heap_limit)?;
            Ok::<_, StoreError>(conn)
        })
        .await
        .expect("open the writer")?;
        let writer = Arc::new(Mutex::new(writer));
        spawn_checkpointer(
            &path_for_checkpoints,
            Arc::downgrade(&writer),
            WalReset::Truncate,
            WAL_RESET_BYTES,
        )?;
        let permits = options.max_connections.max(1) as usize;
        let log_readers = Readers::new(&path_for_checkpoints, permits);
        let legacy = legacy_projections_path(&path_for_checkpoints);
        if std::path::Path::new(&legacy).exists() {
            tracing::warn!(
                file = %legacy,
                "this file is no longer used: each read model has a file of its own now, \
                 rebuilt from the log; delete it (and its -wal and -shm) to reclaim the space"
            );
        }
        let read_models = Arc::new(ReadModelFiles {
            log_path: path_for_checkpoints,
            connect,
            max_connections: options.max_connections,
            acquire_timeout: options.acquire_timeout,
            writer: Arc::downgrade(&writer),
            files: Mutex::default(),
        });
        Ok(SqliteStore {
            admin,
            readers,
            read_models,
            writer,
            cache: Arc::default(),
            log_readers,
            keyring: Keyring::new(master),
        })
    }

    /// Returns how many identity lookups it keyed and how many personal
    /// parts it sealed (see [`Store::migrate`]).
    pub(crate) async fn migrate(&self) -> Result<(usize, usize), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.admin)
            .await?;
        let writer = Arc::clone(&self.writer);
        let keyring = self.keyring.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().expect("sqlite writer");
            let keyed = key_identity_lookups(&mut conn, &keyring)?;
            let sealed = seal_legacy_personal(&mut conn, &keyring)?;
            Ok((keyed, sealed))
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the sqlite writer panicked: {e}")))?
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    pub(crate) async fn head(&self) -> Result<u64, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&self.readers)
            .await?;
        from_db(head)
    }

    pub(crate) async fn append_batch(
        &self,
        requests: Vec<Vec<Interaction>>,
        recorded_at: Timestamp,
    ) -> Result<Committed, StoreError> {
        let writer = Arc::clone(&self.writer);
        let cache = Arc::clone(&self.cache);
        let keyring = self.keyring.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().expect("sqlite writer");
            let appended = append_blocking(&mut conn, &cache, &keyring, &requests, recorded_at);
            cache.lock().expect("writer cache").settle(appended)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the sqlite writer panicked: {e}")))?
    }

    pub(crate) async fn append_command(
        &self,
        command: Command,
        recorded_at: Timestamp,
    ) -> Result<CommandOutcome, StoreError> {
        let writer = Arc::clone(&self.writer);
        let keyring = self.keyring.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().expect("sqlite writer");
            command_blocking(&mut conn, &keyring, &command, recorded_at)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the sqlite writer panicked: {e}")))?
    }

    pub(crate) async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        let query = query.clone();
        let keyring = self.keyring.clone();
        self.log_readers
            .read(move |conn| read_events_blocking(conn, &query, &keyring))
            .await
    }

    pub(crate) async fn stream_events(
        &self,
        stream_id: &str,
        types: &[rapport_domain::EventType],
        newest_first: bool,
        limit: i64,
    ) -> Result<Vec<rapport_domain::Event>, StoreError> {
        let rows = sql::select_stream_events::<Sqlite>(stream_id, types, newest_first, limit)
            .build()
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|row| sql::event_from_row(row, &self.keyring))
            .collect()
    }

    /// Rows of a statement built as text (see [`crate::SqlParam`]), from a
    /// log reader in one hop rather than one sqlx message per row.
    pub(crate) async fn log_rows<T: Send + 'static>(
        &self,
        select: String,
        params: Vec<crate::SqlParam>,
        row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.log_readers
            .read(move |conn| Ok(sql::sqlite_rows(conn, &select, params, row)?))
            .await
    }

    /// The events at `positions`, in one hop to a log reader: the events and
    /// the erased-target check (see [`crate::forget_targets`]) in one read
    /// transaction, rows decoded on the reader's thread.
    pub(crate) async fn events_at(
        &self,
        positions: &[u64],
    ) -> Result<Vec<rapport_domain::Event>, StoreError> {
        let positions = positions.to_vec();
        let keyring = self.keyring.clone();
        self.log_readers
            .read(move |conn| {
                let tx = conn.transaction()?;
                let (select, params) = sql::select_events_at(&positions);
                let mut events = Vec::with_capacity(positions.len());
                {
                    let mut statement = tx.prepare_cached(&select)?;
                    let params = params.into_iter().map(rusqlite::types::Value::from);
                    let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                    while let Some(row) = rows.next()? {
                        events.push(event_from_row(row, &keyring)?);
                    }
                }
                forget_erased_targets(&tx, &mut events)?;
                tx.commit()?;
                Ok(events)
            })
            .await
    }

    /// `events` with the handle of every member target erased since blanked
    /// (see [`crate::forget_targets`]), for events read otherwise.
    pub(crate) async fn forget_erased_targets(
        &self,
        mut events: Vec<rapport_domain::Event>,
    ) -> Result<Vec<rapport_domain::Event>, StoreError> {
        self.log_readers
            .read(move |conn| {
                let tx = conn.transaction()?;
                forget_erased_targets(&tx, &mut events)?;
                tx.commit()?;
                Ok(events)
            })
            .await
    }

    pub(crate) fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub(crate) fn pool(&self) -> &sqlx::Pool<Sqlite> {
        &self.readers
    }

    pub(crate) async fn read_model(&self, name: &str) -> Result<ReadModelFile, StoreError> {
        self.read_models.get(name).await
    }

    pub(crate) async fn read_projections<T: Send + 'static>(
        &self,
        name: &str,
        read: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_models.get(name).await?.readers.read(read).await
    }

    pub(crate) async fn close(&self) {
        self.admin.close().await;
        self.readers.close().await;
        self.read_models.close().await;
    }
}

/// Where the embedded default keeps its master key: `master.key` beside
/// the log's file.
pub(crate) fn master_key_path(log: &str) -> std::path::PathBuf {
    std::path::Path::new(log)
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("master.key")
}

/// A read model's database file beside the log's: `rapport.db` →
/// `rapport-timeline.db` for the timeline.
pub(crate) fn read_model_path(log: &str, name: &str) -> String {
    match log.strip_suffix(".db") {
        Some(stem) => format!("{stem}-{name}.db"),
        None => format!("{log}-{name}"),
    }
}

/// Where every read model lived before each had a file of its own.
fn legacy_projections_path(log: &str) -> String {
    read_model_path(log, "projections")
}

fn open_reader(path: &str) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "query_only", "ON")?;
    for (name, value) in PRAGMAS {
        conn.pragma_update(None, name, value)?;
    }
    Ok(conn)
}

/// A page of the log: the head, then the events up to it, in one read
/// transaction, so the page never holds an event committed after the head.
fn read_events_blocking(
    conn: &mut rusqlite::Connection,
    query: &EventQuery,
    keyring: &Keyring,
) -> Result<EventPage, StoreError> {
    let tx = conn.transaction()?;
    let head: i64 = tx.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
        r.get(0)
    })?;
    let head = from_db(head)?;
    let (select, params) = sql::select_events(query, head);
    let mut events = Vec::with_capacity(query.limit.min(10_000) as usize);
    {
        let mut statement = tx.prepare_cached(&select)?;
        let params = params.into_iter().map(rusqlite::types::Value::from);
        let mut rows = statement.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            events.push(event_from_row(row, keyring)?);
        }
    }
    if !query.without_personal {
        forget_erased_targets(&tx, &mut events)?;
    }
    tx.commit()?;
    Ok(EventPage { events, head })
}

/// Decodes a row selected with [`sql::EVENT_COLUMNS`].
fn event_from_row(
    row: &rusqlite::Row<'_>,
    keyring: &Keyring,
) -> Result<rapport_domain::Event, StoreError> {
    let blob = |e: rusqlite::types::FromSqlError| StoreError::Corrupt(e.to_string());
    let payload = row.get_ref(7)?.as_blob().map_err(blob)?;
    let personal = row.get_ref(8)?.as_blob_or_null().map_err(blob)?;
    let wrapped = row.get_ref(9)?.as_blob_or_null().map_err(blob)?;
    sql::event_from_columns(
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        payload,
        personal.map(<[u8]>::to_vec),
        wrapped,
        keyring,
    )
}

/// Blanks the handle of every member target of `events` erased since (see
/// [`crate::forget_targets`]), read in the caller's transaction: the same
/// snapshot as the events.
fn forget_erased_targets(
    tx: &rusqlite::Transaction<'_>,
    events: &mut [rapport_domain::Event],
) -> Result<(), StoreError> {
    let targets = crate::member_targets(events);
    if targets.is_empty() {
        return Ok(());
    }
    let (select, params) = sql::select_erased(&targets);
    let erased: std::collections::HashSet<String> =
        sql::sqlite_rows(tx, &select, params, |row| row.get(0))?
            .into_iter()
            .collect();
    crate::forget_targets(events, &erased);
    Ok(())
}

fn open_writer(path: &str) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // What this connection deletes is overwritten with zeros, not left in
    // the file: an erased member's wrapped key must not be recoverable.
    // It deletes only on unlinks and erasures.
    conn.pragma_update(None, "secure_delete", "ON")?;
    for (name, value) in PRAGMAS {
        conn.pragma_update(None, name, value)?;
    }
    Ok(conn)
}

/// Checkpoints the WAL off the writer's path. A PASSIVE checkpoint copies
/// frames back into the database file (and fsyncs it) without blocking the
/// writer. Under continuous writes it never quite catches up, so the writer's
/// own automatic checkpoint still runs every `wal_autocheckpoint` pages and
/// starts the WAL over, but finds almost everything already copied.
///
/// The WAL can only start over at a moment when no reader still uses it.
/// With projectors and API reads there is almost always one, so the WAL
/// would grow without bound (gigabytes a minute under bulk ingest). Past
/// [`WAL_RESET_BYTES`] the thread runs a TRUNCATE or RESTART checkpoint
/// instead ([`WalReset`]), which holds new writers back for as long as the
/// current readers take to finish (milliseconds: reads are short
/// transactions), then empties the WAL. It
/// gives up after [`WAL_RESET_PATIENCE`] and tries again next round, so a
/// long read never holds writers back for longer than that.
///
/// The thread ends once the store (and so the writer connection) is gone.
fn spawn_checkpointer(
    path: &str,
    writer: std::sync::Weak<Mutex<rusqlite::Connection>>,
    reset: WalReset,
    reset_bytes: u64,
) -> Result<(), StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(WAL_RESET_PATIENCE)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let wal = format!("{path}-wal");
    // The database file itself, to write back what a round copied into it
    // (below). Opened read-only: `fdatasync` needs no write access.
    let db_file = std::fs::File::open(path).map_err(|e| StoreError::Unavailable(Arc::new(e)))?;
    // A WAL frame: the page and its 24-byte header.
    let frame_bytes: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))? + 24;
    // The WAL's frames copied back so far, as the last checkpoint reported.
    let mut copied = 0;
    // The WAL's size in bytes of frames, once the checkpoint has finished.
    let mut checkpoint = move |mode: &str| {
        let sql = format!("PRAGMA wal_checkpoint({mode})");
        // (busy, frames in the WAL, frames copied back)
        let row = |r: &rusqlite::Row| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get(2)?));
        match conn.query_row(&sql, [], row) {
            Ok((busy, frames, done)) => {
                // The copies sit in the page cache until a sync. Left there,
                // the checkpoint inside a commit synced them all on the
                // writer's path: ~200 ms for a projector at 256 MiB of WAL,
                // and the tail of the log's commits (docs/performance.md,
                // "The checkpointer writes back what it copied"). Written
                // back here instead, after a checkpoint that copied
                // anything: a sync with nothing to write still flushes the
                // disk's cache, which the log's commits wait for.
                if done > 0
                    && done != copied
                    && let Err(error) = db_file.sync_data()
                {
                    tracing::warn!(%error, "database file sync failed");
                }
                copied = done;
                // Busy: readers outlasted the busy timeout; next round.
                if busy == 1 {
                    tracing::debug!(mode, "wal checkpoint could not finish");
                } else {
                    return Some(frames.max(0) as u64 * frame_bytes as u64);
                }
            }
            Err(error) => tracing::warn!(%error, mode, "wal checkpoint failed"),
        }
        None
    };
    // The WAL's size when a RESTART last finished: it starts over at the
    // next write, and until then still reports that size, which must not
    // set off another RESTART (each one holds new readers back while it
    // waits for the current ones).
    let mut restarted = None;
    std::thread::Builder::new()
        .name("rapport-checkpoint".into())
        .spawn(move || {
            while writer.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_EVERY);
                match reset {
                    // The file is what is emptied: its size says when.
                    WalReset::Truncate => {
                        checkpoint(if file_bytes(&wal) > reset_bytes {
                            "TRUNCATE"
                        } else {
                            "PASSIVE"
                        });
                    }
                    WalReset::Restart if file_bytes(&wal) > 2 * reset_bytes => {
                        checkpoint("TRUNCATE");
                    }
                    // The file keeps its size when the WAL starts over:
                    // what counts is the frames it holds.
                    WalReset::Restart => {
                        let held = checkpoint("PASSIVE");
                        if held.is_some_and(|bytes| bytes > reset_bytes) && held != restarted {
                            restarted = checkpoint("RESTART").and(held);
                        }
                    }
                }
            }
        })
        .map_err(|e| StoreError::Corrupt(format!("cannot start the checkpointer: {e}")))?;
    Ok(())
}

fn file_bytes(path: &str) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// One batch in one `BEGIN IMMEDIATE` transaction, committed before returning.
fn append_blocking(
    conn: &mut rusqlite::Connection,
    cache: &Mutex<WriterCache>,
    keyring: &Keyring,
    requests: &[Vec<Interaction>],
    recorded_at: Timestamp,
) -> Result<(Committed, CacheUpdate), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let head: i64 = tx.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
        r.get(0)
    })?;
    let head = from_db(head)?;
    let keys = ingest::lookup_keys(requests);

    let mut known = Known::default();
    {
        let mut lookup = tx.prepare_cached(
            "SELECT fingerprint, member_id, position FROM interaction_keys \
             WHERE community_id = ?1 AND interaction_id = ?2",
        )?;
        for (community, id) in keys.interactions {
            let row = lookup
                .query_row(params![community, id], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .optional()?;
            if let Some((fingerprint, member_id, position)) = row {
                let fingerprint = fingerprint
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("fingerprint length".into()))?;
                let position = from_db(position)?;
                known.interactions.insert(
                    (community, id),
                    RecordedRef {
                        fingerprint,
                        member_id,
                        position,
                    },
                );
            }
        }
    }
    let uncached = cache
        .lock()
        .expect("writer cache")
        .resolve(head, keys.identities, &mut known);
    {
        let mut lookup = tx.prepare_cached(
            "SELECT i.member_id FROM identities i \
             WHERE i.community_id = ?1 AND i.channel = ?2 AND i.handle_key = ?3",
        )?;
        let mut version = tx.prepare_cached(
            "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?1",
        )?;
        for key in uncached {
            let member_id = lookup
                .query_row(
                    params![key.community_id, key.channel, keyring.lookup(&key)],
                    |r| r.get::<_, String>(0),
                )
                .optional()?;
            if let Some(member_id) = member_id {
                let stream = rapport_domain::event::member_stream_id(&member_id);
                let stream_version = from_db(version.query_row([stream], |r| r.get(0))?)?;
                known.identities.insert(
                    key,
                    KnownMember {
                        member_id,
                        stream_version,
                    },
                );
            }
        }
    }

    let plan = ingest::plan(requests, &known, head, recorded_at, crate::new_member_id);
    let keys = write_plan(&tx, keyring, &plan)?;
    tx.commit()?;
    keys.committed(keyring);
    Ok(CacheUpdate::from_plan(head, known, plan))
}

/// Identity lookups written before they were keyed, keyed now.
fn key_identity_lookups(
    conn: &mut rusqlite::Connection,
    keyring: &Keyring,
) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let rows: Vec<(String, String, String)> = {
        let mut select = tx.prepare(
            "SELECT community_id, channel, handle_key FROM identities \
             WHERE handle_key NOT LIKE 'h1:%'",
        )?;
        select
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?
    };
    {
        let mut update = tx.prepare(
            "UPDATE identities SET handle_key = ?4 \
             WHERE community_id = ?1 AND channel = ?2 AND handle_key = ?3",
        )?;
        for (community, channel, handle) in &rows {
            let keyed = keyring.master().identity_lookup(community, handle);
            update.execute(params![community, channel, handle, keyed])?;
        }
    }
    tx.commit()?;
    Ok(rows.len())
}

/// Seals the personal parts written before encryption existed with their
/// members' keys (made for members without one), and drops those of erased
/// members: once, then marked done in `store_tasks`. On the writer's
/// connection, whose `secure_delete` overwrites the old pages; the WAL is
/// emptied after.
fn seal_legacy_personal(
    conn: &mut rusqlite::Connection,
    keyring: &Keyring,
) -> Result<usize, StoreError> {
    let done: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM store_tasks WHERE task = ?1)",
        [crate::SEAL_LEGACY_TASK],
        |r| r.get(0),
    )?;
    if done {
        return Ok(0);
    }
    let mut keys: std::collections::HashMap<String, Option<crate::crypto::DataKey>> =
        std::collections::HashMap::new();
    let (mut sealed, mut after) = (0, 0i64);
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<(i64, String, String, Vec<u8>, bool)> = {
            let mut select = tx.prepare(
                "SELECT e.position, e.member_id, e.community_id, e.personal, \
                 COALESCE(m.erased, 0) FROM events e \
                 LEFT JOIN members m ON m.member_id = e.member_id \
                 WHERE e.position > ?1 AND e.personal IS NOT NULL \
                 AND substr(e.personal, 1, 1) <> x'FF' ORDER BY e.position LIMIT 5000",
            )?;
            select
                .query_map([after], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<Result<_, _>>()?
        };
        let Some(last) = rows.last() else {
            tx.execute(
                "INSERT INTO store_tasks (task, done_at) VALUES (?1, ?2)",
                params![crate::SEAL_LEGACY_TASK, crate::wall_clock().as_micros()],
            )?;
            tx.commit()?;
            break;
        };
        after = last.0;
        for (position, member, community, personal, erased) in &rows {
            if !keys.contains_key(member) {
                let wrapped: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT wrapped FROM member_keys WHERE owner = ?1",
                        [member],
                        |r| r.get(0),
                    )
                    .optional()?;
                let key = match (wrapped, erased) {
                    (Some(wrapped), _) => Some(keyring.data_key(&wrapped, member)?),
                    // Erased: its personal data goes, as its key went.
                    (None, true) => None,
                    (None, false) => {
                        let (key, wrapped) = keyring.master().new_data_key(member);
                        tx.execute(
                            "INSERT INTO member_keys (owner, community, wrapped) \
                             VALUES (?1, ?2, ?3)",
                            params![member, community, wrapped],
                        )?;
                        Some(key)
                    }
                };
                keys.insert(member.clone(), key);
            }
            let value = keys[member].as_ref().map(|k| k.seal(personal, member));
            tx.execute(
                "UPDATE events SET personal = ?2 WHERE position = ?1",
                params![position, value],
            )?;
        }
        tx.commit()?;
        sealed += rows.len();
    }
    if sealed > 0 {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(sealed)
}

/// A command's event in its own `BEGIN IMMEDIATE` transaction. The writer
/// cache notices the moved head at the next batch and starts over.
fn command_blocking(
    conn: &mut rusqlite::Connection,
    keyring: &Keyring,
    command: &Command,
    recorded_at: Timestamp,
) -> Result<CommandOutcome, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(member_id) = command.member_id() {
        let facts = |member_id: &str| {
            tx.query_row(
                crate::sql::MEMBER_FACTS,
                params![member_id, command.community_id()],
                |r| {
                    Ok(crate::MemberFacts {
                        erased: r.get(0)?,
                        merged_into: r.get(1)?,
                        has_merged: r.get(2)?,
                    })
                },
            )
            .optional()
        };
        let member = facts(member_id)?;
        let target = match command {
            Command::MergeMembers {
                target_member_id, ..
            } => facts(target_member_id)?,
            _ => None,
        };
        if let Some(refused) = crate::member_precondition(command, member.as_ref(), target.as_ref())
        {
            return Ok(refused);
        }
    }
    let identity_key = command.identity().map(|i| i.key(command.community_id()));
    if let Some(key) = &identity_key {
        let owner: Option<String> = tx
            .query_row(
                "SELECT member_id FROM identities \
                 WHERE community_id = ?1 AND channel = ?2 AND handle_key = ?3",
                params![key.community_id, key.channel, keyring.lookup(key)],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(refused) = crate::identity_precondition(command, owner.as_deref()) {
            return Ok(refused);
        }
    }
    let (head, version): (i64, i64) = tx.query_row(
        "SELECT (SELECT COALESCE(MAX(position), 0) FROM events), \
         (SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?1)",
        [command.stream_id()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let event = command.event(from_db(head)?, from_db(version)?, recorded_at);
    let keys = insert_events(&tx, keyring, std::slice::from_ref(&event), &[])?;
    match (command, &identity_key) {
        (Command::LinkIdentity { member_id, .. }, Some(key)) => {
            tx.execute(
                "INSERT INTO identities (community_id, channel, handle_key, member_id) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    key.community_id,
                    key.channel,
                    keyring.lookup(key),
                    member_id
                ],
            )?;
        }
        (Command::UnlinkIdentity { .. }, Some(key)) => {
            tx.execute(
                "DELETE FROM identities \
                 WHERE community_id = ?1 AND channel = ?2 AND handle_key = ?3",
                params![key.community_id, key.channel, keyring.lookup(key)],
            )?;
        }
        (
            Command::RejectMergeSuggestion {
                community_id,
                member_id,
                other_member_id,
            },
            _,
        ) => {
            let (a, b) = crate::ordered(member_id, other_member_id);
            tx.execute(
                "INSERT OR IGNORE INTO rejected_merge_suggestions (community, member_a, member_b) \
                 VALUES (?1, ?2, ?3)",
                params![community_id, a, b],
            )?;
        }
        (
            Command::MergeMembers {
                source_member_id,
                target_member_id,
                ..
            },
            _,
        ) => {
            tx.execute(
                "UPDATE members SET merged_into = ?2 WHERE member_id = ?1",
                params![source_member_id, target_member_id],
            )?;
        }
        (
            Command::UnmergeMember {
                source_member_id, ..
            },
            _,
        ) => {
            tx.execute(
                "UPDATE members SET merged_into = NULL WHERE member_id = ?1",
                [source_member_id],
            )?;
        }
        (Command::EraseMember { member_id, .. }, _) => {
            // The key first: with it goes every personal part of the member.
            tx.execute("DELETE FROM member_keys WHERE owner = ?1", [member_id])?;
            tx.execute("DELETE FROM identities WHERE member_id = ?1", [member_id])?;
            tx.execute(
                "UPDATE members SET erased = 1 WHERE member_id = ?1",
                [member_id],
            )?;
        }
        _ => {}
    }
    tx.commit()?;
    keys.committed(keyring);
    if let Command::EraseMember { member_id, .. } = command {
        keyring.forget(member_id);
        // Older page images in the WAL still hold the key: empty the WAL
        // now if no reader holds it (else the checkpointer will, later).
        let done: (i64, i64, i64) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        if done.0 != 0 {
            tracing::warn!(member = %member_id, "readers kept the WAL from being emptied after an erasure");
        }
    }
    Ok(CommandOutcome::Appended(event))
}

/// Inserts `events`, their personal parts sealed with their members' keys,
/// and the keys members did not have yet (`created` members cannot have
/// one). Returns the keys, to remember once the transaction commits.
fn insert_events(
    tx: &rusqlite::Transaction<'_>,
    keyring: &Keyring,
    events: &[rapport_domain::Event],
    created: &[&str],
) -> Result<BatchKeys, StoreError> {
    let (mut keys, unknown) = BatchKeys::start(keyring, events);
    {
        let mut lookup = tx.prepare_cached("SELECT wrapped FROM member_keys WHERE owner = ?1")?;
        let mut store = tx.prepare_cached(
            "INSERT INTO member_keys (owner, community, wrapped) VALUES (?1, ?2, ?3)",
        )?;
        for (member, community) in unknown {
            let wrapped: Option<Vec<u8>> = if created.contains(&member.as_str()) {
                None
            } else {
                lookup.query_row([&member], |r| r.get(0)).optional()?
            };
            match wrapped {
                Some(wrapped) => keys.found(keyring, &member, &wrapped)?,
                None => keys.create(keyring, member, community),
            }
        }
        for (member, community, wrapped) in &keys.new {
            store.execute(params![member, community, wrapped])?;
        }
    }
    let (payloads, personals) = keys.encode(events);
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (position, community_id, stream_id, stream_version, event_type, \
         member_id, recorded_at, payload, personal, channel) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for ((event, payload), personal) in events.iter().zip(payloads).zip(personals) {
        insert.execute(params![
            to_db(event.position),
            event.community_id,
            event.stream_id,
            to_db(event.stream_version),
            event.body.event_type() as i16,
            event.body.member_id(),
            event.recorded_at.as_micros(),
            payload,
            personal,
            event.body.channel(),
        ])?;
    }
    Ok(keys)
}

fn write_plan(
    tx: &rusqlite::Transaction<'_>,
    keyring: &Keyring,
    plan: &Plan,
) -> Result<BatchKeys, StoreError> {
    let created: Vec<&str> = plan
        .member_heads
        .iter()
        .filter(|h| h.is_new)
        .map(|h| h.member_id.as_str())
        .collect();
    let keys = insert_events(tx, keyring, &plan.events, &created)?;
    // Members before identities: identities reference them.
    let mut register =
        tx.prepare_cached("INSERT INTO members (member_id, community_id) VALUES (?1, ?2)")?;
    for head in plan.member_heads.iter().filter(|h| h.is_new) {
        register.execute(params![head.member_id, head.community_id])?;
    }
    let mut link = tx.prepare_cached(
        "INSERT INTO identities (community_id, channel, handle_key, member_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (key, member_id) in &plan.new_identities {
        link.execute(params![
            key.community_id,
            key.channel,
            keyring.lookup(key),
            member_id
        ])?;
    }
    let mut remember = tx.prepare_cached(
        "INSERT INTO interaction_keys (community_id, interaction_id, fingerprint, member_id, position) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for record in &plan.new_interactions {
        remember.execute(params![
            record.community_id,
            record.interaction_id,
            &record.fingerprint[..],
            record.member_id,
            to_db(record.position),
        ])?;
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn autocheckpoint(pool: &SqlitePool) -> u64 {
        let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(pool)
            .await
            .unwrap();
        pages as u64
    }

    /// A read model's projector leaves the checkpoints to the checkpointer
    /// until its WAL reaches the size at which the checkpointer would empty
    /// it; the log keeps its own, shorter interval.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_model_commits_checkpoint_only_past_the_reset_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rapport.db");
        let options = StoreOptions::new(format!("sqlite:{}", path.display()));
        let store = SqliteStore::connect(path.to_str().unwrap(), &options)
            .await
            .unwrap();

        let timeline = store.read_model("timeline").await.unwrap();
        assert_eq!(autocheckpoint(&timeline.pool).await, 65_536);
        assert_eq!(READ_MODEL_AUTOCHECKPOINT_PAGES * 4096, WAL_RESET_BYTES);
        assert_eq!(autocheckpoint(&store.readers).await, 10_000);
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&timeline.pool)
            .await
            .unwrap();
        assert_eq!(page_size, 4096, "the page count above assumes 4 KiB pages");
    }

    /// A file written as a projector writes: WAL mode, no automatic
    /// checkpoint (the checkpointer alone empties its WAL), the checkpointer
    /// of `reset` running with a 1 MiB reset size.
    fn written_file(
        dir: &tempfile::TempDir,
        name: &str,
        reset: WalReset,
    ) -> (Arc<Mutex<rusqlite::Connection>>, String) {
        let path = dir.path().join(name).display().to_string();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.pragma_update(
            None,
            "journal_size_limit",
            READ_MODEL_JOURNAL_SIZE_LIMIT as i64,
        )
        .unwrap();
        conn.execute("CREATE TABLE t (b BLOB)", []).unwrap();
        let writer = Arc::new(Mutex::new(conn));
        spawn_checkpointer(&path, Arc::downgrade(&writer), reset, 1 << 20).unwrap();
        (writer, format!("{path}-wal"))
    }

    /// Writes `bytes` in one transaction.
    fn write(writer: &Mutex<rusqlite::Connection>, bytes: usize) {
        let conn = writer.lock().unwrap();
        conn.execute("INSERT INTO t VALUES (zeroblob(?1))", [bytes as i64])
            .unwrap();
    }

    /// The WAL header's salts: SQLite draws new ones each time the WAL
    /// starts over.
    fn salts(wal: &str) -> Vec<u8> {
        std::fs::read(wal).unwrap()[16..24].to_vec()
    }

    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Past the reset size, a read model's WAL starts over at its beginning
    /// and keeps its file (writing over blocks it has is cheaper than
    /// growing it), unless the file grew past twice that; the log's is cut
    /// to nothing (it may hold page images of an erased member's key).
    #[test]
    fn a_read_models_wal_starts_over_in_place_and_the_logs_is_cut() {
        let dir = tempfile::tempdir().unwrap();

        let (model, model_wal) = written_file(&dir, "model.db", WalReset::Restart);
        // 1.5 MiB: past the reset size, below twice that.
        write(&model, 3 << 19);
        let (grown, first) = (file_bytes(&model_wal), salts(&model_wal));
        assert!(grown > 3 << 19);
        // Once the checkpointer has copied the WAL back, a write starts it
        // over at its beginning, and the file is not cut (the small writes
        // before that may have grown it a little).
        until("the read model's WAL starts over", || {
            write(&model, 1_000);
            salts(&model_wal) != first
        });
        assert!(file_bytes(&model_wal) >= grown);

        // Past twice the reset size (a rebuild's end), it is cut all the same.
        write(&model, 3 << 20);
        until("a read model's outsized WAL is cut", || {
            file_bytes(&model_wal) == 0
        });

        let (log, log_wal) = written_file(&dir, "log.db", WalReset::Truncate);
        write(&log, 3 << 20);
        until("the log's WAL is cut", || file_bytes(&log_wal) == 0);
        // Below the reset size, the file stays.
        write(&log, 200_000);
        std::thread::sleep(CHECKPOINT_EVERY * 3);
        assert!(file_bytes(&log_wal) > 200_000);
    }
}
