-- Outgoing federation (spec/federation.md): PDUs waiting for a destination
-- server, written in the same transaction as the event they carry, removed
-- once the destination acknowledged the transaction that carried them.
CREATE TABLE federation_queue (
    id          BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    pdu         TEXT NOT NULL
);
CREATE INDEX federation_queue_by_destination ON federation_queue (destination, id);
