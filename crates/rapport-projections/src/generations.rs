//! The `projection_generations` table: which generation of each read model
//! serves reads, which one is being built, and how far each has applied the
//! log.
//!
//! A generation's tables are named after it (`timeline_entries_g3`), so a
//! rebuild writes into fresh tables beside the live ones and the switch is
//! one row update: reads never see a half-built model.

use rapport_store::{DbPool, from_db, to_db, wall_clock};
use sqlx::Row;

use crate::db::{Tx, WriteTx, execute_all, on_pool, on_tx};
use crate::{Projection, ProjectionError};

/// The lifecycle of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Replaying the log into fresh tables; not read.
    Building,
    /// Serves reads. At most one per projection.
    Active,
    /// Replaced; its tables are dropped once in-flight reads are done.
    Retired,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Building => "building",
            State::Active => "active",
            State::Retired => "retired",
        }
    }

    fn parse(text: &str) -> Result<State, ProjectionError> {
        match text {
            "building" => Ok(State::Building),
            "active" => Ok(State::Active),
            "retired" => Ok(State::Retired),
            other => Err(ProjectionError::Corrupt(format!(
                "unknown generation state {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub generation: u64,
    /// The projection code version that builds it.
    pub version: u64,
    pub state: State,
    /// The checkpoint: every event up to here is applied.
    pub position: u64,
    /// When the state or position last changed (µs since the epoch).
    pub changed_at: i64,
    /// A building generation's first phase (see [`Projection::finish_bulk`]).
    pub bulk: bool,
}

/// Every generation of `name`, oldest first.
pub async fn load(pool: &DbPool, name: &str) -> Result<Vec<Generation>, ProjectionError> {
    on_pool!(pool, p => sqlx::query(
        "SELECT generation, version, state, position, changed_at, bulk FROM projection_generations \
         WHERE name = $1 ORDER BY generation",
    )
    .bind(name)
    .fetch_all(p)
    .await?
    .iter()
    .map(|row| {
        Ok(Generation {
            generation: from_db(row.try_get(0)?)?,
            version: from_db(row.try_get(1)?)?,
            state: State::parse(&row.try_get::<String, _>(2)?)?,
            position: from_db(row.try_get(3)?)?,
            changed_at: row.try_get(4)?,
            bulk: row.try_get(5)?,
        })
    })
    .collect::<Result<Vec<_>, ProjectionError>>())
}

/// The active generation and its checkpoint, if the model has been built.
pub async fn active(pool: &DbPool, name: &str) -> Result<Option<(u64, u64)>, ProjectionError> {
    let row: Option<(i64, i64)> = on_pool!(pool, p => sqlx::query_as(
        "SELECT generation, position FROM projection_generations WHERE name = $1 AND state = 'active'",
    )
    .bind(name)
    .fetch_optional(p)
    .await?);
    row.map(|(g, p)| Ok((from_db(g)?, from_db(p)?))).transpose()
}

/// Why a generation is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Asked for: always build a new generation.
    Rebuild,
    /// No generation of this code's version serves reads: build one unless
    /// another process did in the meantime.
    IfOutdated,
}

/// Starts a new generation of `projection` from position 0, with its tables.
/// If one is already building (or, for [`Start::IfOutdated`], one of this
/// version or newer is active), returns it instead, with `false`.
pub async fn start_building(
    pool: &DbPool,
    projection: &dyn Projection,
    start: Start,
) -> Result<(u64, bool), ProjectionError> {
    let mut tx = WriteTx::begin(pool).await?;
    let name = projection.name();
    let now = wall_clock().as_micros();
    let (building, active, active_version, next): (Option<i64>, Option<i64>, Option<i64>, i64) = on_tx!(tx.tx(), c => sqlx::query_as(
            "SELECT (SELECT generation FROM projection_generations WHERE name = $1 AND state = 'building'), \
                    (SELECT generation FROM projection_generations WHERE name = $1 AND state = 'active'), \
                    (SELECT version FROM projection_generations WHERE name = $1 AND state = 'active'), \
                    (SELECT COALESCE(MAX(generation), 0) + 1 FROM projection_generations WHERE name = $1)",
        )
        .bind(name)
        .fetch_one(&mut *c)
        .await?);
    if let Some(existing) = building {
        return Ok((from_db(existing)?, false));
    }
    if let (Start::IfOutdated, Some(active), Some(v)) = (start, active, active_version)
        && from_db(v)? >= projection.version()
    {
        return Ok((from_db(active)?, false));
    }
    let generation = from_db(next)?;
    on_tx!(tx.tx(), c => sqlx::query(
        "INSERT INTO projection_generations (name, generation, version, state, position, created_at, changed_at, bulk) \
         VALUES ($1, $2, $3, 'building', 0, $4, $4, TRUE)",
    )
    .bind(name)
    .bind(next)
    .bind(to_db(projection.version()))
    .bind(now)
    .execute(&mut *c)
    .await
    .map(drop)?);
    let postgres = tx.tx().is_postgres();
    execute_all(tx.tx(), projection.create_tables(generation, postgres)).await?;
    tx.commit().await?;
    Ok((generation, true))
}

/// Ends a building generation's bulk phase, if it is still at `position`:
/// [`Projection::prepare_finish_bulk`] on connections of its own, then
/// [`Projection::finish_bulk`] in the transaction that clears the bulk flag.
pub async fn finish_bulk(
    pool: &DbPool,
    projection: &dyn Projection,
    generation: u64,
    position: u64,
) -> Result<(), ProjectionError> {
    let name = projection.name();
    // The preparation is minutes of work at 10 M: none of it for a
    // generation that another leader moved on or dropped meanwhile. (A
    // deposed leader that passes this check only redoes steps the swap
    // below is fenced against.)
    let current = load(pool, name).await?;
    if !current
        .iter()
        .any(|g| g.generation == generation && g.state == State::Building && g.position == position)
    {
        return Err(ProjectionError::Fenced { name, generation });
    }
    projection.prepare_finish_bulk(pool, generation).await?;
    let mut tx = WriteTx::begin(pool).await?;
    match lock(tx.tx(), name, generation).await? {
        Some((State::Building, p)) if p == position => {}
        _ => return Err(ProjectionError::Fenced { name, generation }),
    }
    projection.finish_bulk(tx.tx(), generation).await?;
    on_tx!(tx.tx(), c => sqlx::query(
        "UPDATE projection_generations SET bulk = FALSE, changed_at = $3 WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(to_db(generation))
    .bind(wall_clock().as_micros())
    .execute(&mut *c)
    .await
    .map(drop)?);
    tx.commit().await?;
    Ok(())
}

/// Makes `building` the active generation and retires the previous one, in
/// one transaction, if `building` is still building at `position`.
///
/// The check fences off a deposed leader (or, on SQLite, a second process
/// on the file) that loaded the generations before another switched: its
/// late switch would otherwise retire the generation just activated and
/// leave no model serving reads.
pub async fn activate(
    pool: &DbPool,
    name: &'static str,
    building: u64,
    position: u64,
) -> Result<(), ProjectionError> {
    let mut tx = WriteTx::begin(pool).await?;
    match lock(tx.tx(), name, building).await? {
        Some((State::Building, p)) if p == position => {}
        _ => {
            return Err(ProjectionError::Fenced {
                name,
                generation: building,
            });
        }
    }
    let now = wall_clock().as_micros();
    on_tx!(tx.tx(), c => sqlx::query(
        "UPDATE projection_generations SET state = 'retired', changed_at = $2 \
         WHERE name = $1 AND state = 'active'",
    )
    .bind(name)
    .bind(now)
    .execute(&mut *c)
    .await
    .map(drop)?);
    on_tx!(tx.tx(), c => sqlx::query(
        "UPDATE projection_generations SET state = 'active', changed_at = $3 \
         WHERE name = $1 AND generation = $2 AND state = 'building' AND NOT bulk",
    )
    .bind(name)
    .bind(to_db(building))
    .bind(now)
    .execute(&mut *c)
    .await
    .map(drop)?);
    tx.commit().await?;
    Ok(())
}

/// Retires a generation that will not be finished (built by older code).
pub async fn retire(pool: &DbPool, name: &str, generation: u64) -> Result<(), ProjectionError> {
    on_pool!(pool, p => sqlx::query(
        "UPDATE projection_generations SET state = 'retired', changed_at = $3 \
         WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(to_db(generation))
    .bind(wall_clock().as_micros())
    .execute(p)
    .await
    .map(drop)?);
    Ok(())
}

/// Drops a retired generation's tables and forgets it.
pub async fn drop_retired(
    pool: &DbPool,
    projection: &dyn Projection,
    generation: u64,
) -> Result<(), ProjectionError> {
    let mut tx = WriteTx::begin(pool).await?;
    execute_all(tx.tx(), projection.drop_tables(generation)).await?;
    on_tx!(tx.tx(), c => sqlx::query(
        "DELETE FROM projection_generations WHERE name = $1 AND generation = $2 AND state = 'retired'",
    )
    .bind(projection.name())
    .bind(to_db(generation))
    .execute(&mut *c)
    .await
    .map(drop)?);
    tx.commit().await?;
    Ok(())
}

/// Locks the generation's row for this transaction and returns its state and
/// checkpoint. The caller applies only if the checkpoint is the one it
/// expected: that fences off a former leader that has not noticed yet.
pub async fn lock(
    tx: Tx<'_>,
    name: &str,
    generation: u64,
) -> Result<Option<(State, u64)>, ProjectionError> {
    // SQLite has no FOR UPDATE: its transaction already holds the one write lock.
    let postgres = tx.is_postgres();
    let sql = if postgres {
        "SELECT state, position FROM projection_generations WHERE name = $1 AND generation = $2 FOR UPDATE"
    } else {
        "SELECT state, position FROM projection_generations WHERE name = $1 AND generation = $2"
    };
    let row: Option<(String, i64)> = on_tx!(tx, c => sqlx::query_as(sql)
        .bind(name)
        .bind(to_db(generation))
        .fetch_optional(&mut *c)
        .await?);
    row.map(|(s, p)| Ok((State::parse(&s)?, from_db(p)?)))
        .transpose()
}

/// Moves the checkpoint, inside the transaction that applied the events.
pub async fn set_position(
    tx: Tx<'_>,
    name: &str,
    generation: u64,
    position: u64,
) -> Result<(), ProjectionError> {
    on_tx!(tx, c => sqlx::query(
        "UPDATE projection_generations SET position = $3, changed_at = $4 WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(to_db(generation))
    .bind(to_db(position))
    .bind(wall_clock().as_micros())
    .execute(&mut *c)
    .await
    .map(drop)?);
    Ok(())
}

impl State {
    /// For status reports.
    pub fn name(self) -> &'static str {
        self.as_str()
    }
}
