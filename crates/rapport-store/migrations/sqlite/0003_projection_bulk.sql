-- A building generation first applies the log in bulk: rows appended to a
-- staging table, without indexes or aggregates; once it has caught up, one
-- transaction moves them into the generation's tables in key order and
-- derives the aggregates (see rapport-projections). `bulk` says which phase
-- a generation is in.
ALTER TABLE projection_generations ADD COLUMN bulk BOOLEAN NOT NULL DEFAULT FALSE;
