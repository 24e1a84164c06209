-- OpenID tokens (client-server API "OpenID", server-server `openid/userinfo`):
-- a user asks for one to prove who they are to a third party (an integration
-- manager, a widget), which checks it with this server. Kept only as the
-- SHA-256 (hex) of the token, like access tokens; valid until `expires_ts`.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expires ON openid_tokens (expires_ts);
