//! Local room aliases: who may create, list and delete them.

use std::sync::Arc;

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, UserId};
use serde_json::Value;

use super::{Rooms, required_power};
use crate::{
    Error, Result,
    appservice::{AppService, AppServices},
    store::MainStore,
};

/// A room id named by a client, refused as the client API refuses any.
pub(crate) fn parse_room_id(s: &str) -> Result<OwnedRoomId> {
    RoomId::parse(s).map_err(|_| Error::invalid_param(format!("Invalid room id {s:?}")))
}

/// Local room aliases.
pub struct Aliases {
    store: Arc<dyn MainStore>,
    server_name: OwnedServerName,
    /// Application services' exclusive alias namespaces.
    appservices: Arc<AppServices>,
    /// Membership and power in the aliased room.
    rooms: Arc<Rooms>,
}

impl Aliases {
    pub(crate) fn new(
        store: Arc<dyn MainStore>,
        server_name: OwnedServerName,
        appservices: Arc<AppServices>,
        rooms: Arc<Rooms>,
    ) -> Self {
        Self {
            store,
            server_name,
            appservices,
            rooms,
        }
    }

    /// An alias of this server; another server's alias cannot be managed here.
    pub fn parse_local_alias(&self, alias: &str) -> Result<OwnedRoomAliasId> {
        let alias =
            RoomAliasId::parse(alias).map_err(|_| Error::invalid_param("Invalid room alias"))?;
        if alias.server_name() != self.server_name {
            return Err(Error::invalid_param("Room alias is not on this server"));
        }
        Ok(alias)
    }

    /// Points a new local alias at a room the user is joined to; an
    /// application service may only claim aliases of its namespaces, for
    /// any room. An
    /// alias already taken is `Error::RoomInUse`.
    pub async fn create_room_alias(
        &self,
        alias: &str,
        room_id: &str,
        user: &UserId,
        appservice: Option<&AppService>,
    ) -> Result<()> {
        let alias = self.parse_local_alias(alias)?;
        self.appservices
            .check_alias_claim(alias.as_str(), appservice)?;
        let room = parse_room_id(room_id)?;
        self.rooms.require_known_room(&room).await?;
        // A service names rooms of its network (its namespace checked
        // above) that its users need not have joined; a user names rooms
        // they are in.
        if appservice.is_none() {
            self.rooms.require_joined(&room, user).await?;
        }
        self.store
            .create_alias(alias.as_str(), room.as_str(), user.as_str())
            .await
    }

    /// Deletes a local alias: its creator or a room admin may.
    pub async fn delete_room_alias(&self, alias: &str, user: &UserId) -> Result<()> {
        let alias = self.parse_local_alias(alias)?;
        let (room_id, creator) = self
            .store
            .resolve_alias(alias.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        let room = parse_room_id(&room_id)?;
        if creator != user.as_str() && !self.rooms.is_room_admin(&room, user).await? {
            return Err(Error::forbidden("You may not delete this alias"));
        }
        self.store.delete_alias(alias.as_str()).await?;
        Ok(())
    }

    /// The local aliases of a room, for its joined members.
    pub async fn room_aliases(&self, room: &RoomId, user: &UserId) -> Result<Vec<String>> {
        self.rooms.require_joined(room, user).await?;
        self.store.room_aliases(room.as_str()).await
    }
}

impl Rooms {
    /// Whether the user is a room admin (may manage aliases and visibility):
    /// has the power to send `m.room.canonical_alias`.
    pub(crate) async fn is_room_admin(&self, room: &RoomId, user: &UserId) -> Result<bool> {
        let pl = self
            .room_state_event(room, "m.room.power_levels", "")
            .await?
            .map(|p| p.content_value());
        let needed = pl
            .as_ref()
            .and_then(|p| p.get("events"))
            .and_then(|e| e.get("m.room.canonical_alias"))
            .and_then(Value::as_i64)
            .unwrap_or_else(|| required_power(pl.as_ref(), "state_default", 50));
        Ok(self.power_of(room, user).await? >= needed)
    }
}
