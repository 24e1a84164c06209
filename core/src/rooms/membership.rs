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
