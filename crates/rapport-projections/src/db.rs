//! One write transaction on either backend, and the macro that runs the same
//! sqlx code on both (the SQL text is shared; sqlx picks the placeholders).

use rapport_store::DbPool;
use sqlx::{PgConnection, Postgres, QueryBuilder, Sqlite, SqliteConnection, Transaction};

/// A connection inside an open transaction.
pub enum Tx<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl Tx<'_> {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Tx::Postgres(_))
    }

    /// The same transaction, lent again to a call that takes a `Tx`.
    pub fn reborrow(&mut self) -> Tx<'_> {
        match self {
            Tx::Sqlite(c) => Tx::Sqlite(c),
            Tx::Postgres(c) => Tx::Postgres(c),
        }
    }
}

/// Runs `$body` with `$conn` bound to the transaction's connection, whichever
/// the backend: the body is compiled once per backend.
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite($conn) => $body,
            $crate::db::Tx::Postgres($conn) => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the backend's pool.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            rapport_store::DbPool::Sqlite($p) => $body,
            rapport_store::DbPool::Postgres($p) => $body,
        }
    };
}

pub(crate) use {on_pool, on_tx};

/// Runs SQL statements without parameters (DDL, whole-table moves) in order.
pub(crate) async fn execute_all(tx: Tx<'_>, statements: Vec<String>) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => {
        for sql in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *c).await?;
        }
    });
    Ok(())
}

/// A write transaction of a read model, on the store's projections pool.
///
/// On SQLite it starts with `BEGIN IMMEDIATE`, taking the write lock up
/// front: a deferred transaction that reads and then writes can fail at once
/// with SQLITE_BUSY instead of waiting its turn. On PostgreSQL it turns off
/// `synchronous_commit`: a read model's rows and checkpoint commit together,
/// so a crash can only lose whole recent transactions, which the projector
/// then applies again; not waiting for the WAL flush makes each batch cheaper.
/// It also plans every statement for its parameters: a read model's tables
/// grow from nothing, and a generic plan PostgreSQL settles on while a
/// table is empty (a scan) stays in the session's statement cache long
/// after the table has grown (a lookup of 500 keys then scanned the table
/// 500 times).
pub enum WriteTx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl WriteTx {
    pub async fn begin(pool: &DbPool) -> Result<WriteTx, sqlx::Error> {
        Ok(match pool {
            DbPool::Sqlite(p) => WriteTx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            DbPool::Postgres(p) => WriteTx::Postgres(
                p.begin_with(
                    "BEGIN; SET LOCAL synchronous_commit TO OFF; \
                     SET LOCAL plan_cache_mode TO force_custom_plan",
                )
                .await?,
            ),
        })
    }

    pub fn tx(&mut self) -> Tx<'_> {
        match self {
            WriteTx::Sqlite(t) => Tx::Sqlite(t),
            WriteTx::Postgres(t) => Tx::Postgres(t),
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            WriteTx::Sqlite(t) => t.commit().await,
            WriteTx::Postgres(t) => t.commit().await,
        }
    }
}

/// Appends `prefix` then `values` bound as a list, then `)`.
pub(crate) fn push_in<DB>(qb: &mut QueryBuilder<DB>, prefix: &str, values: &[String])
where
    DB: sqlx::Database,
    for<'e> String: sqlx::Encode<'e, DB> + sqlx::Type<DB>,
{
    qb.push(prefix);
    let mut list = qb.separated(", ");
    for v in values {
        list.push_bind(v.clone());
    }
    qb.push(")");
}

/// One column of `rows`, to bind as a PostgreSQL array: a multi-row
/// statement with one parameter per column instead of one per value, which
/// PostgreSQL parses and plans in the same time whatever the row count.
pub(crate) fn column<'r, R, T>(rows: &'r [R], get: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(get).collect()
}
