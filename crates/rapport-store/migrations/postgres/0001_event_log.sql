-- The global log. Positions are assigned explicitly (head + 1 ...) by a writer
-- holding the transaction-scoped advisory lock of the log, so insert order is
-- commit order across every replica and a rolled-back batch leaves no gap
-- (a bigserial would do both wrong; see ARCHITECTURE.md).
CREATE TABLE events (
    position       BIGINT   PRIMARY KEY,
    community_id   TEXT     NOT NULL,
    stream_id      TEXT     NOT NULL,
    stream_version BIGINT   NOT NULL,
    event_type     SMALLINT NOT NULL,
    channel        TEXT,
    member_id      TEXT     NOT NULL,
    recorded_at    BIGINT   NOT NULL, -- microseconds since the epoch
    payload        BYTEA    NOT NULL, -- non-personal facts (protobuf)
    personal       BYTEA,             -- personal data (protobuf), encrypted per member later
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

CREATE TABLE identities (
    community_id TEXT NOT NULL,
    channel      TEXT NOT NULL,
    handle_key   TEXT NOT NULL,
    member_id    TEXT NOT NULL REFERENCES members (member_id),
    PRIMARY KEY (community_id, channel, handle_key)
);

CREATE TABLE interaction_keys (
    community_id   TEXT   NOT NULL,
    interaction_id TEXT   NOT NULL,
    fingerprint    BYTEA  NOT NULL,
    member_id      TEXT   NOT NULL,
    position       BIGINT NOT NULL,
    PRIMARY KEY (community_id, interaction_id)
);
