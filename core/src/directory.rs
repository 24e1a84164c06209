//! The public room directory (which rooms are published, the listing with
//! its search and paging) and the user directory search.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{RoomId, UserId};
use serde::Serialize;

use crate::{
    Error, Result,
    rooms::Rooms,
    store::{MainStore, RoomStore},
};

/// Which rooms are published, and the user directory.
pub struct Directory {
    store: Arc<dyn MainStore>,
    /// The joined users of public rooms (read from the rooms' state).
    room_store: Arc<dyn RoomStore>,
    /// Membership and power in the room being published.
    rooms: Arc<Rooms>,
}

impl Directory {
    pub(crate) fn new(
        store: Arc<dyn MainStore>,
        room_store: Arc<dyn RoomStore>,
        rooms: Arc<Rooms>,
    ) -> Self {
        Self {
            store,
            room_store,
            rooms,
        }
    }

    /// Whether a known room is published in the directory.
    pub async fn room_is_public(&self, room: &RoomId) -> Result<bool> {
        self.rooms.require_known_room(room).await?;
        self.store.is_room_public(room.as_str()).await
    }

    /// Publishes or unpublishes a room (`public` or `private`, absent meaning
    /// private); a joined room admin may.
    pub async fn set_room_visibility(
        &self,
        room: &RoomId,
        user: &UserId,
        visibility: Option<&str>,
    ) -> Result<()> {
        self.rooms.require_known_room(room).await?;
        let public = match visibility {
            Some("public") => true,
            Some("private") | None => false,
            Some(v) => return Err(Error::invalid_param(format!("Invalid visibility {v}"))),
        };
        self.rooms.require_joined(room, user).await?;
        if !self.rooms.is_room_admin(room, user).await? {
            return Err(Error::forbidden(
                "You may not change this room's visibility",
            ));
        }
        self.store.set_room_public(room.as_str(), public).await
    }

    /// Publishes or withdraws a room in the list the application service
    /// acting in `session` keeps for `network` (spec: application service
    /// room directories); only a service may, and only in its own lists.
    pub async fn set_appservice_room_visibility(
        &self,
        session: &crate::accounts::Session,
        network: &str,
        room: &RoomId,
        visibility: Option<&str>,
    ) -> Result<()> {
        let Some(service) = &session.appservice else {
            return Err(Error::forbidden(
                "Only an application service may change its room lists",
            ));
        };
        self.rooms.require_known_room(room).await?;
        let public = match visibility {
            Some("public") => true,
            Some("private") | None => false,
            Some(v) => return Err(Error::invalid_param(format!("Invalid visibility {v}"))),
        };
        self.store
            .set_appservice_room_public(&service.id, network, room.as_str(), public)
            .await
    }

    /// The user directory: users who share a room with `user` or sit in a
    /// public room, matching `term`, at most `limit` of them.
    pub async fn search_user_directory(
        &self,
        user: &UserId,
        term: &str,
        limit: Option<usize>,
    ) -> Result<UserSearch> {
        crate::input::check_text("search_term", term)?;
        let limit = limit.unwrap_or(10).clamp(1, 100);
        let mut visible: BTreeSet<String> = self
            .store
            .users_sharing_rooms(user.as_str())
            .await?
            .into_iter()
            .collect();
        // One does not share a room with oneself: the searcher is found
        // only as anyone else is, through a public room (as Synapse).
        visible.remove(user.as_str());
        visible.extend(self.room_store.users_in_public_rooms().await?);
        let candidates = self.store.search_users(term.trim(), 500).await?;
        let mut results = vec![];
        let mut limited = false;
        for u in candidates
            .into_iter()
            .filter(|u| visible.contains(&u.user_id))
        {
            if results.len() == limit {
                limited = true;
                break;
            }
            results.push(FoundUser {
                user_id: u.user_id,
                display_name: u.displayname,
                avatar_url: u.avatar_url,
            });
        }
        Ok(UserSearch { results, limited })
    }
}

/// A user directory search's answer. Hearth's own shape rather than ruma's:
/// a user without a display name or avatar is sent with `null` there, as
/// Synapse does, where ruma's type would leave the field out. Fields are in
/// the order `json!` wrote them (sorted), so the bytes sent do not change.
#[derive(Debug, Serialize)]
pub struct UserSearch {
    /// Whether more users matched than were sent.
    pub limited: bool,
    pub results: Vec<FoundUser>,
}

/// One user found by a directory search; what the user has not set is
/// left out (the spec's fields are optional strings, never null).
#[derive(Debug, Serialize)]
pub struct FoundUser {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub user_id: String,
}
