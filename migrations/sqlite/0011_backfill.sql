-- History older than what this server holds (spec/federation.md, "Filling
-- gaps"): the events a room's oldest events here name in prev_events that
-- were never had, the points /backfill continues from when a client pages
-- past the oldest event. Backfilled events get negative stream orderings,
-- below everything, so they never show as new in a sync.
CREATE TABLE backfill_frontier (
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    depth    BIGINT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);
