-- SQLite keeps the read models in a database file of their own, beside the
-- log's (`rapport.db` → `rapport-projections.db`): SQLite has one write lock
-- per file, and a read model's long transactions (building a generation's
-- indexes, dropping a retired one) must not hold back the log's writer.
--
-- Read models ("projections") are built in generations: each generation has
-- its own tables (named by the projection, e.g. timeline_entries_g3) and its
-- own checkpoint. Exactly one generation per projection is 'active' (serves
-- reads); a 'building' one replays the log beside it and takes over when it
-- has caught up; a 'retired' one waits for in-flight reads to finish before
-- its tables are dropped.
CREATE TABLE projection_generations (
    name        TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    -- The projection code's version that builds this generation's tables.
    version     INTEGER NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('building', 'active', 'retired')),
    -- Every event up to here has been applied, in the same transaction as
    -- the rows it produced.
    position    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL, -- microseconds since the epoch
    changed_at  INTEGER NOT NULL,
    -- A building generation's first phase: rows appended to a staging table
    -- without indexes or aggregates (see rapport-projections).
    bulk        BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (name, generation)
);
CREATE UNIQUE INDEX projection_one_active ON projection_generations (name) WHERE state = 'active';
CREATE UNIQUE INDEX projection_one_building ON projection_generations (name) WHERE state = 'building';
