-- Each member's data key, wrapped by the master key (see src/crypto.rs).
-- The personal part of the member's events is sealed with it; deleting the
-- row crypto-shreds them. Column names differ from `events`' so that reads
-- can join this table without qualifying every column.
CREATE TABLE member_keys (
    owner     TEXT PRIMARY KEY, -- member_id
    community TEXT NOT NULL,
    wrapped   BYTEA NOT NULL
);
