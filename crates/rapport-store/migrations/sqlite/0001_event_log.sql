-- The global log. `position` is the rowid: assigned by the single writer
-- inside BEGIN IMMEDIATE, so insert order is commit order and there are no gaps.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    community_id   TEXT    NOT NULL,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type     INTEGER NOT NULL,
    channel        TEXT,
    member_id      TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL, -- microseconds since the epoch
    payload        BLOB    NOT NULL, -- non-personal facts (protobuf)
    personal       BLOB,             -- personal data (protobuf), encrypted per member later
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_by_community ON events (community_id, position);

-- Members. A member's stream version is not kept here: the log has it,
-- MAX(stream_version) over the (stream_id, stream_version) index, so an
-- append updates no per-member row (one random page write less per event).
CREATE TABLE members (
    member_id    TEXT PRIMARY KEY,
    community_id TEXT NOT NULL
);

-- Identity resolution: (community, channel, normalized handle) -> member.
CREATE TABLE identities (
    community_id TEXT NOT NULL,
    channel      TEXT NOT NULL,
    handle_key   TEXT NOT NULL,
    member_id    TEXT NOT NULL REFERENCES members (member_id),
    PRIMARY KEY (community_id, channel, handle_key)
) WITHOUT ROWID;

-- Idempotency keys, forever: a retry after any restart is still recognized.
CREATE TABLE interaction_keys (
    community_id   TEXT    NOT NULL,
    interaction_id TEXT    NOT NULL,
    fingerprint    BLOB    NOT NULL,
    member_id      TEXT    NOT NULL,
    position       INTEGER NOT NULL,
    PRIMARY KEY (community_id, interaction_id)
) WITHOUT ROWID;
