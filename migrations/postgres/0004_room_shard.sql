-- The event shard holding each room (always 0 with one database). Recorded at
-- creation, so adding a shard later moves no existing room.
ALTER TABLE rooms ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
