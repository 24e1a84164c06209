-- Hearth schema, SQLite backend. One stream_ordering sequence orders every
-- event of every room; within a room it is the room's total order.

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    password_hash  TEXT,
    is_admin       INTEGER NOT NULL DEFAULT 0,
    deactivated    INTEGER NOT NULL DEFAULT 0,
    displayname    TEXT,
    avatar_url     TEXT,
    created_ts     INTEGER NOT NULL
);

CREATE TABLE devices (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    display_name   TEXT,
    last_seen_ip   TEXT,
    last_seen_ts   INTEGER,
    PRIMARY KEY (user_id, device_id)
);

-- Tokens are stored as SHA-256 hashes: a leaked database yields no usable token.
CREATE TABLE access_tokens (
    token_hash     TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    created_ts     INTEGER NOT NULL
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE filters (
    filter_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id        TEXT NOT NULL,
    filter_json    TEXT NOT NULL
);

CREATE TABLE rooms (
    room_id        TEXT PRIMARY KEY,
    room_version   TEXT NOT NULL,
    creator        TEXT NOT NULL,
    is_public      INTEGER NOT NULL DEFAULT 0,
    created_ts     INTEGER NOT NULL
);

CREATE TABLE events (
    stream_ordering INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,
    room_id        TEXT NOT NULL,
    sender         TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    state_key      TEXT,
    depth          INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    json           TEXT NOT NULL,
    -- set when redacted; json then holds the pruned event
    redacted_by    TEXT,
    txn_id         TEXT,
    txn_device     TEXT,
    relates_to     TEXT
);
CREATE INDEX events_room ON events (room_id, stream_ordering);

-- Every state event ever accepted, so that state at any point of the room's
-- linear order is "the latest row per (type, state_key) at or before it".
CREATE TABLE state_events (
    room_id        TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    state_key      TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key, stream_ordering)
);

CREATE TABLE current_state (
    room_id        TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    state_key      TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key)
);

-- The membership index: current membership of each user in each room.
CREATE TABLE memberships (
    room_id        TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    membership     TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    forgotten      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, membership);

CREATE TABLE txn_ids (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    txn_id         TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE room_aliases (
    alias          TEXT PRIMARY KEY,
    room_id        TEXT NOT NULL,
    creator        TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Account data and receipts share one stream id sequence.
CREATE TABLE account_data (
    user_id        TEXT NOT NULL,
    room_id        TEXT NOT NULL DEFAULT '',
    data_type      TEXT NOT NULL,
    content        TEXT NOT NULL,
    stream_id      INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);

CREATE TABLE receipts (
    room_id        TEXT NOT NULL,
    receipt_type   TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    thread_id      TEXT NOT NULL DEFAULT '',
    event_id       TEXT NOT NULL,
    ts             INTEGER NOT NULL,
    stream_id      INTEGER NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_id);

CREATE TABLE stream_ids (
    name           TEXT PRIMARY KEY,
    value          INTEGER NOT NULL
);
INSERT INTO stream_ids (name, value) VALUES ('misc', 0);

CREATE TABLE media (
    media_id       TEXT PRIMARY KEY,
    content_type   TEXT,
    filename       TEXT,
    size           INTEGER NOT NULL,
    uploader       TEXT,
    created_ts     INTEGER NOT NULL
);

CREATE TABLE server_keys (
    key_id         TEXT PRIMARY KEY,
    pkcs8          BLOB NOT NULL,
    created_ts     INTEGER NOT NULL
);
