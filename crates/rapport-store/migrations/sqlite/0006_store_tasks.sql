-- One-off data tasks the store runs at start, once each (see
-- Store::migrate): e.g. sealing personal parts written before encryption.
CREATE TABLE store_tasks (
    task    TEXT PRIMARY KEY,
    done_at BIGINT NOT NULL
);
