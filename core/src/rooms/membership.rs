//! Membership changes made on behalf of local users.

use ruma::{OwnedRoomId, RoomAliasId, RoomId, UserId};
use serde_json::Value;

use super::NewEvent;
use crate::{Error, Hearth, Result};

impl Hearth {
    /// Resolves `!room:server` or `#alias:server` to a room id this server knows.
    pub async fn resolve_room(&self, id_or_alias: &str) -> Result<OwnedRoomId> {
        if id_or_alias.starts_with('#') {
            let alias = RoomAliasId::parse(id_or_alias)
                .map_err(|_| Error::invalid_param("Invalid room alias"))?;
            let (room, _) = self
                .store
                .resolve_alias(alias.as_str())
                .await?
                .ok_or_else(|| Error::not_found("Room alias not found"))?;
            RoomId::parse(room).map_err(Error::internal)
        } else {
            let room =
                RoomId::parse(id_or_alias).map_err(|_| Error::invalid_param("Invalid room id"))?;
            if self.store.room_version(room.as_str()).await?.is_none() {
                return Err(Error::not_found("Unknown room"));
            }
            Ok(room)
        }
    }

    /// A client's join by room id or alias: through this server when it is
    /// in the room, else through another server (`via`, the alias's
    /// servers, the server in a room id), over federation.
    pub async fn join_anywhere(
        &self,
        id_or_alias: &str,
        user: &UserId,
        reason: Option<&str>,
        mut via: Vec<String>,
    ) -> Result<OwnedRoomId> {
        let room_id = if id_or_alias.starts_with('#') {
            let alias = RoomAliasId::parse(id_or_alias)
                .map_err(|_| Error::invalid_param("Invalid room alias"))?;
            if alias.server_name() == self.config.server_name {
                self.resolve_room(id_or_alias).await?
            } else {
                let remote = self
                    .remote
                    .get()
                    .ok_or_else(|| Error::not_found("Room alias not found"))?;
                let answer = remote.query_directory(&alias).await?;
                for s in answer["servers"].as_array().into_iter().flatten() {
                    if let Some(s) = s.as_str() {
                        via.push(s.to_owned());
                    }
                }
                via.push(alias.server_name().to_string());
                let room = answer["room_id"]
                    .as_str()
                    .ok_or_else(|| Error::not_found("Room alias not found"))?;
                RoomId::parse(room).map_err(|_| Error::not_found("Room alias not found"))?
            }
        } else {
            RoomId::parse(id_or_alias).map_err(|_| Error::invalid_param("Invalid room id"))?
        };
        let known = self.store.room_version(room_id.as_str()).await?.is_some();
        if known && self.has_local_member(&room_id).await? {
            self.join_room(&room_id, user, reason).await?;
            return Ok(room_id);
        }
        if let Some(server) = room_id.server_name() {
            via.push(server.to_string());
        }
        if known {
            // Invited from another server: the inviter's server is in.
            for p in self.room_state(&room_id).await? {
                if p.kind.to_string() == "m.room.member" {
                    via.push(p.sender.server_name().to_string());
                }
            }
        }
        via.retain(|s| s != self.config.server_name.as_str());
        let mut seen = std::collections::HashSet::new();
        via.retain(|s| seen.insert(s.clone()));
        match self.remote.get() {
            Some(remote) if !via.is_empty() => {
                remote.join_remote(&room_id, user, &via).await?;
                Ok(room_id)
            }
            _ if known => {
                self.join_room(&room_id, user, reason).await?;
                Ok(room_id)
            }
            _ => Err(Error::not_found("Unknown room")),
        }
    }

    /// Whether any user of this server is joined to the room.
    async fn has_local_member(&self, room_id: &RoomId) -> Result<bool> {
        let ours = self.config.server_name.as_str();
        Ok(self
            .room_state(room_id)
            .await?
            .iter()
            .filter(|p| p.kind.to_string() == "m.room.member" && p.membership() == Some("join"))
            .filter_map(|p| p.state_key.as_deref())
            .filter_map(|u| UserId::parse(u).ok())
            .any(|u| u.server_name() == ours))
    }

    pub async fn join_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        if self.store.room_version(room_id.as_str()).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        let content = self.member_content(user, "join", reason).await?;
        if let Some(m) = self
            .store
            .membership(room_id.as_str(), user.as_str())
            .await?
            && m.membership == "join"
            && let Some(ev) = self.store.get_event(&m.event_id).await?
            && ev.pdu.content_value() == content
        {
            // Already joined with the same profile: nothing to change.
            return Ok(());
        }
        self.send_event(
            room_id,
            NewEvent::state(user.to_owned(), "m.room.member", user.as_str(), content),
        )
        .await?;
        Ok(())
    }

    /// Sets `target`'s membership as `sender` (leave, kick, ban, unban).
    pub async fn set_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut content = serde_json::json!({"membership": membership});
        if let Some(r) = reason {
            content["reason"] = Value::String(r.to_owned());
        }
        self.send_event(
            room_id,
            NewEvent::state(sender.to_owned(), "m.room.member", target.as_str(), content),
        )
        .await?;
        Ok(())
    }

    pub async fn leave_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        match self
            .store
            .membership(room_id.as_str(), user.as_str())
            .await?
        {
            Some(m) if m.membership == "leave" => Ok(()),
            Some(m)
                if m.membership == "join"
                    || m.membership == "invite"
                    || m.membership == "knock" =>
            {
                self.set_membership(room_id, user, user, "leave", reason)
                    .await
            }
            Some(_) => Err(Error::forbidden("You are banned from this room")),
            None => {
                if self.store.room_version(room_id.as_str()).await?.is_none() {
                    Err(Error::not_found("Unknown room"))
                } else {
                    Err(Error::forbidden("You are not in this room"))
                }
            }
        }
    }

    /// Leaves every room and closes the account.
    pub async fn deactivate_account(&self, user: &UserId) -> Result<()> {
        for m in self.store.memberships_of_user(user.as_str()).await? {
            if m.membership == "join" || m.membership == "invite" {
                let Ok(room) = RoomId::parse(&m.room_id) else {
                    continue;
                };
                if let Err(e) = self.set_membership(&room, user, user, "leave", None).await {
                    tracing::warn!(room = %room, user = %user, "leave on deactivation failed: {e}");
                }
            }
        }
        self.store.deactivate_user(user.as_str()).await
    }
}
