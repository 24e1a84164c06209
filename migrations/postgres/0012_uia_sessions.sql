-- User-interactive auth sessions (core/src/uia.rs), in the main database so
-- that every process of a cluster continues a session another one started.
-- `binding` is the SHA-256 (hex) of the operation the session was started
-- for; `completed` the JSON array of stages done.
CREATE TABLE uia_sessions (
    session_id TEXT PRIMARY KEY,
    binding    TEXT NOT NULL,
    completed  TEXT NOT NULL,
    touched_ts BIGINT NOT NULL
);
CREATE INDEX uia_sessions_touched ON uia_sessions (touched_ts);
