//! History visibility: which past events a user may read.

use std::sync::Arc;

use ruma::{RoomId, UserId, events::room::member::MembershipState};
use serde_json::Value;

use super::{Rooms, membership_state};
use crate::{
    Error, Result,
    pdu::{Pdu, StoredEvent},
    store::{MainStore, MembershipRecord, RoomStore},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryVisibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl HistoryVisibility {
    pub fn parse(content: Option<&Value>) -> Self {
        match content
            .and_then(|c| c.get("history_visibility"))
            .and_then(Value::as_str)
        {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// History visibility: what of a room's past a user may read.
pub struct Visibility {
    store: Arc<dyn RoomStore>,
    /// Membership (the main database's index).
    main: Arc<dyn MainStore>,
    /// Current state, for members and world-readable rooms.
    rooms: Arc<Rooms>,
}

impl Visibility {
    pub(crate) fn new(
        store: Arc<dyn RoomStore>,
        main: Arc<dyn MainStore>,
        rooms: Arc<Rooms>,
    ) -> Self {
        Self { store, main, rooms }
    }

    /// The state a user may read: current state while joined; the state when
    /// they left for former members; current state of world-readable rooms.
    pub async fn readable_state(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<Pdu>> {
        let membership = self
            .main
            .membership(room_id.as_str(), user.as_str())
            .await?;
        match membership {
            Some(m) if membership_state(&m) == MembershipState::Join => {
                self.current_state_pdus(room_id).await
            }
            Some(m)
                if matches!(
                    membership_state(&m),
                    MembershipState::Leave | MembershipState::Ban
                ) =>
            {
                Ok(self
                    .state_events_at(room_id.as_str(), m.stream_ordering)
                    .await?
                    .into_iter()
                    .map(|e| e.pdu)
                    .collect())
            }
            _ => {
                if self.world_readable(room_id).await? {
                    self.current_state_pdus(room_id).await
                } else {
                    Err(Error::forbidden("You are not in this room"))
                }
            }
        }
    }

    async fn current_state_pdus(&self, room_id: &RoomId) -> Result<Vec<Pdu>> {
        Ok(self
            .rooms
            .room_state(room_id)
            .await?
            .iter()
            .map(|p| (**p).clone())
            .collect())
    }

    /// Whether the room's current history visibility is `world_readable`.
    pub(crate) async fn world_readable(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .rooms
            .room_state_event(room_id, "m.room.history_visibility", "")
            .await?
            .is_some_and(|e| {
                e.content_value()
                    .get("history_visibility")
                    .and_then(Value::as_str)
                    == Some("world_readable")
            }))
    }

    /// Whether `user` may see an event of `room` at stream position `at`,
    /// given their current membership.
    pub async fn can_see_at(
        &self,
        room_id: &RoomId,
        user: &UserId,
        at: i64,
        current_membership: Option<&str>,
    ) -> Result<bool> {
        let mut hv = self
            .store
            .state_event_at(room_id.as_str(), "m.room.history_visibility", "", at)
            .await?;
        if hv.is_none() && at < 0 {
            // Backfilled history that does not reach back to the setting
            // yet: the room's current one.
            hv = self
                .store
                .state_event_at(room_id.as_str(), "m.room.history_visibility", "", i64::MAX)
                .await?;
        }
        let hv = hv.map(|e| e.pdu.content_value());
        let hv = HistoryVisibility::parse(hv.as_ref());
        if hv == HistoryVisibility::WorldReadable {
            return Ok(true);
        }
        let membership_then = self
            .store
            .state_event_at(room_id.as_str(), "m.room.member", user.as_str(), at)
            .await?
            .and_then(|e| {
                e.pdu
                    .content_value()
                    .get("membership")
                    .and_then(Value::as_str)
                    .map(MembershipState::from)
            });
        Ok(match membership_then {
            Some(MembershipState::Join) => true,
            Some(MembershipState::Invite) if hv != HistoryVisibility::Joined => true,
            _ => {
                hv == HistoryVisibility::Shared
                    && current_membership.map(MembershipState::from) == Some(MembershipState::Join)
            }
        })
    }

    /// Filters events (all from one room) down to those the user may see.
    pub async fn filter_visible(
        &self,
        room_id: &RoomId,
        user: &UserId,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<StoredEvent>> {
        let current = self
            .main
            .membership(room_id.as_str(), user.as_str())
            .await?;
        self.filter_visible_as(room_id, user, current.as_ref(), events)
            .await
    }

    /// `filter_visible` for a caller that already has the user's current
    /// membership record.
    pub async fn filter_visible_as(
        &self,
        room_id: &RoomId,
        user: &UserId,
        current: Option<&MembershipRecord>,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<StoredEvent>> {
        // A member who joined at or before an event was joined when it was
        // sent, and joined members see everything: no per-event state lookup.
        let joined_since = current
            .filter(|m| membership_state(m) == MembershipState::Join)
            .map(|m| m.stream_ordering);
        let current = current.map(|m| m.membership.as_str());
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            if joined_since.is_some_and(|j| j <= ev.stream_ordering)
                || self.can_see_event(room_id, user, &ev, current).await?
            {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// Whether `user` may see `ev`: as `can_see_at` its position, and the
    /// user's own member events also by the membership before them (the
    /// spec's "before *or* after the event"), so a leaver sees their leave,
    /// kick or ban whatever the history visibility.
    pub async fn can_see_event(
        &self,
        room_id: &RoomId,
        user: &UserId,
        ev: &StoredEvent,
        current_membership: Option<&str>,
    ) -> Result<bool> {
        let at = ev.stream_ordering;
        if self
            .can_see_at(room_id, user, at, current_membership)
            .await?
        {
            return Ok(true);
        }
        let own_member_event = ev.pdu.kind.to_string() == "m.room.member"
            && ev.pdu.state_key.as_deref() == Some(user.as_str());
        Ok(own_member_event
            && self
                .can_see_at(room_id, user, at - 1, current_membership)
                .await?)
    }
}

impl Rooms {
    /// Fails with M_FORBIDDEN unless the user is currently joined to the room.
    /// Fails with 404 for a room this server does not know.
    pub(crate) async fn require_known_room(&self, room: &RoomId) -> Result<()> {
        if self.main.room_version(room.as_str()).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        Ok(())
    }

    pub async fn require_joined(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        match self
            .main
            .membership(room_id.as_str(), user.as_str())
            .await?
        {
            Some(m) if membership_state(&m) == MembershipState::Join => Ok(()),
            _ => Err(crate::Error::forbidden(format!(
                "User {user} is not in room {room_id}"
            ))),
        }
    }
}

impl Visibility {
    /// The room's whole state at stream position `at`, as stored events.
    pub(crate) async fn state_events_at(
        &self,
        room_id: &str,
        at: i64,
    ) -> Result<Vec<crate::pdu::StoredEvent>> {
        let ids: Vec<String> = self
            .store
            .state_at(room_id, at)
            .await?
            .into_values()
            .collect();
        self.store.get_events(&ids).await
    }
}
