-- A rotated-out signing key stays published in old_verify_keys with the time
-- it stopped signing, so events it signed stay verifiable.
ALTER TABLE server_keys ADD COLUMN expired_ts BIGINT;
