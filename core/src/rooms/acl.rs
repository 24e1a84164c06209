//! Server access control lists (`m.room.server_acl`): which servers may
//! take part in a room over federation. Requests, PDUs and EDUs of a denied
//! server are refused (server-server API, "Server Access Control Lists"),
//! and nothing of the room is queued for it (spec/federation.md).

use ruma::{RoomId, ServerName, events::room::server_acl::RoomServerAclEventContent};
use serde_json::Value;

use super::{RoomCache, StateMap};
use crate::{Error, Result};

/// The ACL an `m.room.server_acl` content states. A field of the wrong type
/// counts as absent and takes its default (no `allow` list allows nobody),
/// as do entries that are not strings: a malformed ACL still denies.
pub fn acl_of(content: &Value) -> RoomServerAclEventContent {
    let list = |field: &str| -> Vec<String> {
        content[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    RoomServerAclEventContent::new(
        content["allow_ip_literals"].as_bool().unwrap_or(true),
        list("allow"),
        list("deny"),
    )
}

/// Whether a room's state lets `server` take part: a room without an ACL
/// lets everyone; a name that is not a server name is never allowed.
pub(crate) fn allows(state: &StateMap, server: &str) -> bool {
    let Some(acl) = state.get(&("m.room.server_acl".to_owned(), String::new())) else {
        return true;
    };
    ServerName::parse(server).is_ok_and(|s| acl_of(&acl.content_value()).is_allowed(&s))
}

/// `servers` without those the room's ACL denies.
pub(crate) fn allowed_destinations(cache: &RoomCache, servers: Vec<String>) -> Vec<String> {
    servers
        .into_iter()
        .filter(|s| allows(&cache.state, s))
        .collect()
}

impl super::Rooms {
    /// Fails with `Forbidden` when the room's current ACL denies `server`.
    /// A room this server does not know has no ACL to apply here (the
    /// request then fails on the room itself).
    pub async fn check_server_acl(&self, room: &RoomId, server: &ServerName) -> Result<()> {
        if self.main.room_version(room.as_str()).await?.is_none() {
            return Ok(());
        }
        let allowed = self
            .with_view(room.as_str(), |c| allows(&c.state, server.as_str()))
            .await?;
        if allowed {
            return Ok(());
        }
        tracing::info!(room = %room, %server, "refused by the room's server ACL");
        Err(Error::Forbidden(format!(
            "{server} is denied by the server ACL of {room}"
        )))
    }

    /// The other servers with members joined to the room that its ACL
    /// lets take part: where the room's EDUs go.
    pub async fn room_destinations(&self, room: &RoomId) -> Result<Vec<String>> {
        let ours = self.server_name.as_str();
        self.with_view(room.as_str(), |c| {
            let others = super::writer::joined_servers(c)
                .into_iter()
                .filter(|s| s != ours)
                .collect();
            allowed_destinations(c, others)
        })
        .await
    }

    /// Sends an EDU to every other server with members in the room that
    /// the room's ACL does not deny.
    pub(crate) async fn share_with_servers(&self, room: &RoomId, edu: serde_json::Value) {
        let Some(remote) = self.links.remote.get() else {
            return;
        };
        match self.room_destinations(room).await {
            Ok(servers) if !servers.is_empty() => remote.send_edu(&servers, edu),
            Ok(_) => {}
            Err(e) => tracing::warn!(room = %room, "cannot tell the room's servers: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn allowed(content: Value, server: &str) -> bool {
        acl_of(&content).is_allowed(&ServerName::parse(server).expect("server name"))
    }

    #[test]
    fn deny_wins_over_allow_and_wildcards_match_hosts() {
        let acl = json!({"allow": ["*"], "deny": ["evil.*", "*.bad.org"]});
        assert!(allowed(acl.clone(), "good.org"));
        assert!(allowed(acl.clone(), "good.org:8448"));
        assert!(!allowed(acl.clone(), "evil.test"));
        assert!(!allowed(acl.clone(), "EVIL.test"));
        assert!(!allowed(acl, "sub.bad.org:443"));
    }

    #[test]
    fn missing_or_malformed_fields_take_their_defaults() {
        // No allow list: nobody.
        assert!(!allowed(json!({}), "good.org"));
        assert!(!allowed(json!({"allow": "*"}), "good.org"));
        // Entries that are not strings are skipped.
        assert!(allowed(json!({"allow": [1, "good.org"]}), "good.org"));
        // IP literals are allowed unless said otherwise.
        assert!(allowed(json!({"allow": ["*"]}), "1.2.3.4"));
        assert!(!allowed(
            json!({"allow": ["*"], "allow_ip_literals": false}),
            "1.2.3.4:8448"
        ));
        assert!(acl_of(&json!({"allow_ip_literals": "no"})).allow_ip_literals);
    }
}
