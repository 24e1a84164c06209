-- Push (spec/push.md). Both tables live in the main database.
--
-- Pushers a user set with /pushers/set. `last_notification` is the id of the
-- newest notification this pusher has dealt with (sent, or skipped because
-- it was read): a restart resumes after it.
CREATE TABLE pushers (
    user_id             TEXT NOT NULL,
    -- The device that set the pusher: deleting the device (logout included)
    -- deletes its pushers.
    device_id           TEXT NOT NULL DEFAULT '',
    app_id              TEXT NOT NULL,
    pushkey             TEXT NOT NULL,
    kind                TEXT NOT NULL,
    app_display_name    TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag         TEXT,
    lang                TEXT NOT NULL,
    data                TEXT NOT NULL,
    pushkey_ts          INTEGER NOT NULL,
    last_notification   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_by_key ON pushers (app_id, pushkey);

-- Events that notified a local user by their push rules, with the actions;
-- `stream_ordering` is the event's position in its room's shard stream
-- (compared with the user's read receipt in that room).
-- (No AUTOINCREMENT: rows are never deleted, so rowids grow anyway, and
-- AUTOINCREMENT costs a write per row.)
CREATE TABLE push_notifications (
    id              INTEGER PRIMARY KEY,
    user_id         TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    actions         TEXT NOT NULL,
    highlight       INTEGER NOT NULL,
    ts              INTEGER NOT NULL,
    UNIQUE (user_id, event_id)
);
CREATE INDEX push_notifications_by_user ON push_notifications (user_id, id);
CREATE INDEX push_notifications_by_room ON push_notifications (user_id, room_id, stream_ordering);
