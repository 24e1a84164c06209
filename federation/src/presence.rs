//! Presence across servers: `m.presence` EDUs for our users' changes, sent
//! to every server sharing a room with them and repeated while they stay
//! online; other servers' announcements of their own users taken in.

use std::sync::Arc;

use hearth_core::ephemeral::REMOTE_PRESENCE_REPEAT;
use serde_json::{Value, json};

use crate::Federation;

impl Federation {
    /// Queues a local user's presence for the servers of everyone who
    /// shares a room with them.
    pub(crate) fn share_presence(self: &Arc<Self>, user: &str, content: Value) {
        let fed = self.clone();
        let user = user.to_owned();
        self.hearth.tasks.spawn(async move {
            let servers = match fed.servers_sharing_with(&user).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%user, error = %e, "cannot tell whom to send presence");
                    return;
                }
            };
            if servers.is_empty() {
                return;
            }
            let mut entry = content;
            entry["user_id"] = json!(user);
            fed.queue_edu(
                &servers,
                json!({"edu_type": "m.presence", "content": {"push": [entry]}}),
            );
        });
    }

    /// Other servers with users in a room `user` is in.
    pub(crate) async fn servers_sharing_with(
        &self,
        user: &str,
    ) -> hearth_core::Result<Vec<String>> {
        self.hearth.federated.servers_sharing_rooms_with(user).await
    }

    /// Takes an `m.presence` EDU: each entry about a user of the sending
    /// server (others are ignored; a server speaks only for its own).
    pub(crate) fn receive_presence(&self, origin: &str, content: &Value) {
        for entry in content["push"].as_array().into_iter().flatten() {
            let Some(user) = entry["user_id"].as_str() else {
                continue;
            };
            let from_origin = ruma::UserId::parse(user).is_ok_and(|u| u.server_name() == origin);
            let presence = entry["presence"].as_str().unwrap_or_default();
            if !from_origin || !matches!(presence, "online" | "unavailable" | "offline") {
                tracing::debug!(%origin, %user, "presence entry ignored");
                continue;
            }
            let status_msg = entry["status_msg"].as_str().map(str::to_owned);
            let ago = entry["last_active_ago"].as_u64().unwrap_or(0);
            self.hearth
                .ephemeral
                .set_remote_presence(user, presence, status_msg, ago);
        }
    }

    /// Repeats our online users' presence to other servers, which otherwise
    /// time them out (`REMOTE_PRESENCE_TIMEOUT`).
    pub(crate) async fn repeat_presence(self: Arc<Self>) {
        let mut every = tokio::time::interval(REMOTE_PRESENCE_REPEAT);
        every.tick().await;
        let tasks = self.hearth.tasks.clone();
        loop {
            if tasks.until_stopped(every.tick()).await.is_none() {
                return;
            }
            for (user, state) in self.hearth.ephemeral.presence.live() {
                if !state.remote && self.hearth.is_local(&user) {
                    self.share_presence(&user, hearth_core::ephemeral::presence_content(&state));
                }
            }
        }
    }
}
