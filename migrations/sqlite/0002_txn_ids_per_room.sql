-- A transaction id is idempotent per room, as the send path (which names the
-- room) is: the same txn id sent to two rooms makes two events.
CREATE TABLE txn_ids_per_room (
    room_id        TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    txn_id         TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id, device_id, txn_id)
);
INSERT INTO txn_ids_per_room (room_id, user_id, device_id, txn_id, event_id)
    SELECT e.room_id, t.user_id, t.device_id, t.txn_id, t.event_id
    FROM txn_ids t JOIN events e ON e.event_id = t.event_id;
DROP TABLE txn_ids;
ALTER TABLE txn_ids_per_room RENAME TO txn_ids;
