//! Membership changes made on behalf of local users.

use ruma::{OwnedRoomId, RoomAliasId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::Value;

use super::NewEvent;
use super::RoomWriter;
use crate::{Error, Result, store::MembershipRecord};

/// Where a local user's membership change is made (`membership_route`).
enum Route {
    Here(OwnedRoomId),
    /// Through one of these servers, over federation.
    Through(OwnedRoomId, Vec<String>),
}

/// A stored membership as ruma's type, so rules match on it rather than on
/// strings.
pub(crate) fn membership_state(record: &MembershipRecord) -> MembershipState {
    MembershipState::from(record.membership.as_str())
}

/// What a moderator does to another member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberAction {
    Kick,
    Ban,
    Unban,
}

impl RoomWriter {
    /// Resolves `!room:server` or `#alias:server` to a room id this server knows.
    pub async fn resolve_room(&self, id_or_alias: &str) -> Result<OwnedRoomId> {
        if id_or_alias.starts_with('#') {
            let alias = RoomAliasId::parse(id_or_alias)
                .map_err(|_| Error::invalid_param("Invalid room alias"))?;
            let (room, _) = self
                .to_appservices
                .resolve_local_alias(alias.as_str())
                .await?
                .ok_or_else(|| Error::not_found("Room alias not found"))?;
            RoomId::parse(room).map_err(Error::internal)
        } else {
            let room =
                RoomId::parse(id_or_alias).map_err(|_| Error::invalid_param("Invalid room id"))?;
            self.rooms.require_known_room(&room).await?;
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
        via: Vec<String>,
    ) -> Result<OwnedRoomId> {
        match self.membership_route(id_or_alias, via).await? {
            Route::Here(room_id) => {
                self.join_room(&room_id, user, reason).await?;
                Ok(room_id)
            }
            Route::Through(room_id, servers) => {
                self.remote_for(&servers)?
                    .join_remote(&room_id, user, &servers)
                    .await?;
                Ok(room_id)
            }
        }
    }

    /// A client's knock (`POST /knock/{roomIdOrAlias}`): asks to be let
    /// into a room whose join rule is `knock`, here or over federation.
    pub async fn knock_anywhere(
        &self,
        id_or_alias: &str,
        user: &UserId,
        reason: Option<&str>,
        via: Vec<String>,
    ) -> Result<OwnedRoomId> {
        match self.membership_route(id_or_alias, via).await? {
            Route::Here(room_id) => {
                match self
                    .main
                    .membership(room_id.as_str(), user.as_str())
                    .await?
                {
                    Some(m) if membership_state(&m) == MembershipState::Join => {
                        return Err(Error::forbidden("You are already in this room"));
                    }
                    Some(m) if membership_state(&m) == MembershipState::Ban => {
                        return Err(Error::forbidden("You are banned from this room"));
                    }
                    _ => {}
                }
                let content = self.member_content(user, "knock", reason).await?;
                self.send_event(
                    &room_id,
                    NewEvent::state(user.to_owned(), "m.room.member", user.as_str(), content),
                )
                .await?;
                Ok(room_id)
            }
            Route::Through(room_id, servers) => {
                self.remote_for(&servers)?
                    .knock_remote(&room_id, user, &servers, reason)
                    .await?;
                Ok(room_id)
            }
        }
    }

    fn remote_for(&self, servers: &[String]) -> Result<&std::sync::Arc<dyn crate::Remote>> {
        match self.links.remote.get() {
            Some(remote) if !servers.is_empty() => Ok(remote),
            _ => Err(Error::not_found("Unknown room")),
        }
    }

    /// Where a local user's membership change in a room is made: here, when
    /// this server orders the room or has members in it (it holds the whole
    /// state), else through the other servers that may be in it.
    async fn membership_route(&self, id_or_alias: &str, mut via: Vec<String>) -> Result<Route> {
        let room_id = if id_or_alias.starts_with('#') {
            let alias = RoomAliasId::parse(id_or_alias)
                .map_err(|_| Error::invalid_param("Invalid room alias"))?;
            if alias.server_name() == self.config.server_name {
                self.resolve_room(id_or_alias).await?
            } else {
                let remote = self
                    .links
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
        let known = self.main.room_version(room_id.as_str()).await?.is_some();
        if known && self.holds_room(&room_id).await? {
            return Ok(Route::Here(room_id));
        }
        if known {
            via.extend(self.servers_heard_from(&room_id).await?);
        }
        if let Some(server) = room_id.server_name() {
            via.push(server.to_string());
        }
        via.retain(|s| s != self.config.server_name.as_str());
        let mut seen = std::collections::HashSet::new();
        via.retain(|s| seen.insert(s.clone()));
        if via.is_empty() && known {
            return Ok(Route::Here(room_id));
        }
        Ok(Route::Through(room_id, via))
    }

    /// Whether this server has the room's whole state: it orders the room,
    /// or one of its users is joined.
    async fn holds_room(&self, room_id: &RoomId) -> Result<bool> {
        let ours = self.config.server_name.as_str();
        Ok(
            self.rooms.room_owner_of(room_id).await?.as_deref() == Some(ours)
                || self.has_local_member(room_id).await?,
        )
    }

    /// For a room known only by an invite or a knock: the servers that
    /// told us of it (the inviter's, and the senders of the room state the
    /// invite or knock carried).
    async fn servers_heard_from(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let mut out = vec![];
        for p in self.rooms.room_state(room_id).await? {
            out.push(p.sender.server_name().to_string());
            let stripped = p.json.get("unsigned").and_then(|u| {
                u.get("invite_room_state")
                    .or_else(|| u.get("knock_room_state"))
            });
            for e in stripped.and_then(Value::as_array).into_iter().flatten() {
                if let Some(server) = e["sender"]
                    .as_str()
                    .and_then(|s| UserId::parse(s).ok())
                    .map(|u| u.server_name().to_string())
                {
                    out.push(server);
                }
            }
        }
        Ok(out)
    }

    /// Whether any user of this server is joined to the room.
    async fn has_local_member(&self, room_id: &RoomId) -> Result<bool> {
        let ours = self.config.server_name.as_str();
        Ok(self
            .rooms
            .room_state(room_id)
            .await?
            .iter()
            .filter(|p| {
                p.kind.to_string() == "m.room.member"
                    && p.membership_state() == Some(MembershipState::Join)
            })
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
        self.rooms.require_known_room(room_id).await?;
        let content = self.member_content(user, "join", reason).await?;
        if let Some(m) = self
            .main
            .membership(room_id.as_str(), user.as_str())
            .await?
            && membership_state(&m) == MembershipState::Join
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
            .main
            .membership(room_id.as_str(), user.as_str())
            .await?
        {
            Some(m) if membership_state(&m) == MembershipState::Leave => Ok(()),
            Some(m) if membership_state(&m) == MembershipState::Join => {
                self.set_membership(room_id, user, user, "leave", reason)
                    .await
            }
            // Declining an invite or withdrawing a knock of a room this
            // server is not in goes through a server that is.
            Some(m)
                if membership_state(&m) == MembershipState::Invite
                    || membership_state(&m) == MembershipState::Knock =>
            {
                match self.membership_route(room_id.as_str(), vec![]).await? {
                    Route::Here(_) => {
                        self.set_membership(room_id, user, user, "leave", reason)
                            .await
                    }
                    Route::Through(_, servers) => {
                        self.remote_for(&servers)?
                            .leave_remote(room_id, user, &servers, reason)
                            .await
                    }
                }
            }
            Some(_) => Err(Error::forbidden("You are banned from this room")),
            None => {
                if self.main.room_version(room_id.as_str()).await?.is_none() {
                    Err(Error::not_found("Unknown room"))
                } else {
                    Err(Error::forbidden("You are not in this room"))
                }
            }
        }
    }

    /// A client's invite: the sender must be joined, and the target neither
    /// joined nor banned.
    pub async fn invite_user(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        self.rooms.require_joined(room_id, sender).await?;
        if let Some(m) = self
            .main
            .membership(room_id.as_str(), target.as_str())
            .await?
        {
            match membership_state(&m) {
                MembershipState::Join => {
                    return Err(Error::forbidden(format!("{target} is already in the room")));
                }
                MembershipState::Ban => {
                    return Err(Error::forbidden(format!(
                        "{target} is banned from the room"
                    )));
                }
                _ => {}
            }
        }
        self.invite(room_id, sender, target, reason, false).await
    }

    /// A kick, ban or unban by `sender`: a kick needs the target in the room
    /// (joined, invited or knocking), an unban a banned target; the room's
    /// power levels are the writer's check.
    pub async fn moderate_member(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        action: MemberAction,
        reason: Option<&str>,
    ) -> Result<()> {
        let current = self
            .main
            .membership(room_id.as_str(), target.as_str())
            .await?
            .map(|m| membership_state(&m));
        match (action, current) {
            (
                MemberAction::Kick,
                Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock),
            ) => {}
            (MemberAction::Kick, _) => {
                return Err(Error::forbidden(format!("{target} is not in the room")));
            }
            (MemberAction::Unban, Some(MembershipState::Ban)) => {}
            (MemberAction::Unban, _) => {
                return Err(Error::forbidden(format!("{target} is not banned")));
            }
            (MemberAction::Ban, _) => {}
        }
        let new_membership = match action {
            MemberAction::Ban => "ban",
            MemberAction::Kick | MemberAction::Unban => "leave",
        };
        self.set_membership(room_id, sender, target, new_membership, reason)
            .await
    }

    /// Forgets a room the user has left (400 while joined or invited).
    pub async fn forget_room(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        match self
            .main
            .membership(room_id.as_str(), user.as_str())
            .await?
        {
            Some(m)
                if matches!(
                    membership_state(&m),
                    MembershipState::Join | MembershipState::Invite
                ) =>
            {
                Err(Error::Unknown(
                    "You must leave the room before forgetting it".into(),
                ))
            }
            Some(_) => self.main.forget_room(room_id.as_str(), user.as_str()).await,
            None => Err(Error::not_found("You have never been in this room")),
        }
    }

    /// The rooms the user is joined to.
    pub async fn joined_rooms(&self, user: &UserId) -> Result<Vec<String>> {
        Ok(self
            .main
            .memberships_of_user(user.as_str())
            .await?
            .into_iter()
            .filter(|m| membership_state(m) == MembershipState::Join)
            .map(|m| m.room_id)
            .collect())
    }

    /// Leaves every room and closes the account.
    pub async fn deactivate_account(&self, user: &UserId) -> Result<()> {
        for m in self.main.memberships_of_user(user.as_str()).await? {
            if membership_state(&m) == MembershipState::Join
                || membership_state(&m) == MembershipState::Invite
            {
                let Ok(room) = RoomId::parse(&m.room_id) else {
                    continue;
                };
                if let Err(e) = self.set_membership(&room, user, user, "leave", None).await {
                    tracing::warn!(room = %room, user = %user, "leave on deactivation failed: {e}");
                }
            }
        }
        self.main.deactivate_user(user.as_str()).await
    }
}
