-- Room writer leases (spec/cluster.md): the one process allowed to append to
-- a room, until `expires_at` (unix ms, database clock). `epoch` grows with each
-- new holder; a commit checks its epoch under a row lock, so a writer that
-- lost its lease cannot commit.
CREATE TABLE room_writers (
    room_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    address TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
