-- The event a redaction names (its `redacts`), kept for every redaction so
-- that one arriving over federation before its target is applied when the
-- target arrives.
ALTER TABLE events ADD COLUMN redacts TEXT;
CREATE INDEX events_redacts ON events (redacts) WHERE redacts IS NOT NULL;
