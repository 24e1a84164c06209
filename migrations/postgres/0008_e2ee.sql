-- End-to-end encryption: the server keeps public keys, opaque ciphertext and
-- key-backup blobs only; it never sees a message's plaintext.

-- Each device's signed identity keys (the `device_keys` object as uploaded,
-- signatures merged in as they arrive).
CREATE TABLE e2e_device_keys (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys: each is handed out once, then deleted.
CREATE TABLE e2e_one_time_keys (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    algorithm      TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- One fallback key per device and algorithm, handed out when the one-time
-- keys run out; `used` tells the device to replace it.
CREATE TABLE e2e_fallback_keys (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    algorithm      TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    used           BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: master, self_signing, user_signing.
CREATE TABLE e2e_cross_signing_keys (
    user_id        TEXT NOT NULL,
    key_type       TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures one user made of another user's keys (user-signing key over a
-- master key): shown only to the signer.
CREATE TABLE e2e_user_signatures (
    signer         TEXT NOT NULL,
    target_user    TEXT NOT NULL,
    target_key     TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (signer, target_user, target_key, key_id)
);

-- A user's devices or keys changed at this position of the misc stream
-- (shared with account data): drives sync's device_lists and /keys/changes.
CREATE TABLE device_list_changes (
    user_id        TEXT NOT NULL,
    stream_id      BIGINT NOT NULL,
    PRIMARY KEY (stream_id, user_id)
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_id);

-- To-device messages waiting for their device, in misc stream order; deleted
-- once the device syncs past them.
CREATE TABLE to_device_inbox (
    stream_id      BIGINT NOT NULL,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    message        TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id)
);

-- Makes a retried /sendToDevice a no-op.
CREATE TABLE to_device_txns (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    txn_id         TEXT NOT NULL,
    created_ts     BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- Server-side key backup: versions and the encrypted session keys in them.
CREATE TABLE backup_versions (
    user_id        TEXT NOT NULL,
    version        BIGINT NOT NULL,
    algorithm      TEXT NOT NULL,
    auth_data      TEXT NOT NULL,
    etag           BIGINT NOT NULL DEFAULT 0,
    deleted        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE backup_keys (
    user_id        TEXT NOT NULL,
    version        BIGINT NOT NULL,
    room_id        TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
