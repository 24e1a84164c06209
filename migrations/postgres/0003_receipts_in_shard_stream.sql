-- Receipts now take their stream ids from the room's shard stream (the events
-- sequence) instead of the account-data sequence, so one position per shard
-- covers both. Existing receipts take the position of the event they mark.
UPDATE receipts SET stream_id = COALESCE(
    (SELECT e.stream_ordering FROM events e WHERE e.event_id = receipts.event_id), 1);
