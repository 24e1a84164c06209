//! Timeline reads for clients: one event, an event's context, and pages of
//! `/messages`, each narrowed to what the reader may see and their filter.

use std::sync::Arc;

use ruma::{RoomId, UserId, events::room::member::MembershipState};
use serde_json::Value;

use super::{Rooms, Visibility, membership_state};
use crate::{
    Error, Links, Result,
    cluster::Streams,
    filter::EventFilter,
    pdu::StoredEvent,
    store::{Direction, MembershipRecord},
    sync::{pagination_token, parse_pagination_token},
};

/// An event with the events around it (`/context`).
#[derive(Debug)]
pub struct EventContext {
    pub event: StoredEvent,
    pub before: Vec<StoredEvent>,
    pub after: Vec<StoredEvent>,
    pub start: String,
    pub end: String,
    /// The room state at `end` in client form (only the senders' member
    /// events for lazy-loading clients).
    pub state: Vec<Value>,
}

/// A `/messages` request, its query parsed.
#[derive(Debug)]
pub struct MessagesRequest {
    pub from: Option<String>,
    pub to: Option<String>,
    pub dir: Direction,
    pub limit: i64,
    pub filter: EventFilter,
}

/// A page of `/messages`.
#[derive(Debug)]
pub struct MessagesPage {
    pub chunk: Vec<StoredEvent>,
    pub start: String,
    /// `None` when the page reached the edge of the timeline.
    pub end: Option<String>,
    /// Member events of the chunk's senders, for lazy-loading clients.
    pub state: Vec<Value>,
}

fn allowed(f: &EventFilter, e: &StoredEvent) -> bool {
    let content = e.pdu.json.get("content");
    f.allows(
        e.pdu.kind.to_string().as_str(),
        e.pdu.sender.as_str(),
        content,
    )
}

/// A room's timeline as clients read it (`/messages`, `/context`, one
/// event), and its history older than held here, backfilled from other
/// servers (`history.rs`).
/// Fields are `pub(super)` for `history.rs` alone, its other half.
pub struct Timeline {
    pub(super) store: Arc<dyn crate::store::RoomStore>,
    pub(super) main: Arc<dyn crate::store::MainStore>,
    pub(super) rooms: Arc<Rooms>,
    visibility: Arc<Visibility>,
    /// Where the room's shard stands: the newest page's `from`.
    streams: Arc<Streams>,
    /// Asks other servers for history (`/backfill`).
    pub(super) links: Arc<Links>,
}

impl Timeline {
    pub(crate) fn new(
        store: Arc<dyn crate::store::RoomStore>,
        main: Arc<dyn crate::store::MainStore>,
        rooms: Arc<Rooms>,
        visibility: Arc<Visibility>,
        streams: Arc<Streams>,
        links: Arc<Links>,
    ) -> Self {
        Self {
            store,
            main,
            rooms,
            visibility,
            streams,
            links,
        }
    }

    /// An event of the room the user may see, or 404 (not revealing
    /// whether it exists).
    pub async fn visible_event(
        &self,
        room_id: &RoomId,
        user: &UserId,
        event_id: &str,
    ) -> Result<StoredEvent> {
        let not_found = || Error::not_found("Event not found");
        let ev = self
            .store
            .get_event(event_id)
            .await?
            .filter(|e| e.pdu.room_id == room_id)
            .ok_or_else(not_found)?;
        let membership = self
            .main
            .membership(room_id.as_str(), user.as_str())
            .await?
            .map(|m| m.membership);
        if !self
            .visibility
            .can_see_event(room_id, user, &ev, membership.as_deref())
            .await?
        {
            return Err(not_found());
        }
        Ok(ev)
    }

    /// The event and up to `limit` (default 10, at most 100) events around
    /// it, half before and half after, those the user may see and the
    /// filter allows.
    pub async fn event_context(
        &self,
        room_id: &RoomId,
        user: &UserId,
        event_id: &str,
        limit: Option<usize>,
        filter: &EventFilter,
    ) -> Result<EventContext> {
        let ev = self.visible_event(room_id, user, event_id).await?;
        let limit = limit.unwrap_or(10).min(100) as i64;
        let before_n = limit / 2;
        let after_n = limit - before_n;
        let room = room_id.as_str();
        let at = ev.stream_ordering;
        let before = self
            .store
            .room_events(room, at - 1, None, Direction::Backward, before_n)
            .await?;
        let after = self
            .store
            .room_events(room, at, None, Direction::Forward, after_n)
            .await?;
        let start = before.last().map_or(at - 1, |e| e.stream_ordering - 1);
        let end = after.last().map_or(at, |e| e.stream_ordering);
        let before = self
            .visibility
            .filter_visible(room_id, user, before)
            .await?;
        let after = self.visibility.filter_visible(room_id, user, after).await?;
        let state = if filter.lazy_load_members {
            let mut all = before.clone();
            all.push(ev.clone());
            all.extend(after.iter().cloned());
            self.member_state_for(room_id, end, &all).await?
        } else {
            self.client_state_at(room_id, end).await?
        };
        Ok(EventContext {
            event: ev,
            before: before.into_iter().filter(|e| allowed(filter, e)).collect(),
            after: after.into_iter().filter(|e| allowed(filter, e)).collect(),
            start: pagination_token(start),
            end: pagination_token(end),
            state,
        })
    }

    /// A page of the room's timeline from `from` (or the newest event going
    /// back, the oldest going forward), for members, former members up to
    /// their leave, and anyone in a world-readable room.
    pub async fn messages(
        &self,
        room_id: &RoomId,
        user: &UserId,
        req: &MessagesRequest,
    ) -> Result<MessagesPage> {
        let ceiling = self.read_ceiling(room_id, user).await?;
        // Tokens are positions in the stream of the room's shard.
        let shard = self.store.shard_of(room_id.as_str()).await?;
        let newest = self
            .streams
            .stream_positions()
            .await?
            .get(shard)
            .copied()
            .unwrap_or(0);
        let from = match &req.from {
            Some(t) => parse_pagination_token(t, shard)?,
            None => match req.dir {
                Direction::Backward => newest,
                // Backfilled history sits below zero.
                Direction::Forward => i64::MIN,
            },
        };
        let to = req
            .to
            .as_deref()
            .map(|t| parse_pagination_token(t, shard))
            .transpose()?;
        let (from, to) = match req.dir {
            Direction::Backward => (from.min(ceiling), to),
            Direction::Forward => (from, Some(to.unwrap_or(i64::MAX).min(ceiling))),
        };
        let events = self
            .timeline_page(room_id, from, to, req.dir, req.limit)
            .await?;
        // No `end` means the client has reached the edge of the timeline.
        let end = match (req.dir, events.last()) {
            (Direction::Backward, Some(e)) => Some(e.stream_ordering - 1),
            (Direction::Forward, Some(e)) => Some(e.stream_ordering),
            _ => None,
        }
        .filter(|_| events.len() as i64 == req.limit);
        let visible = self
            .visibility
            .filter_visible(room_id, user, events)
            .await?;
        let chunk: Vec<StoredEvent> = visible
            .into_iter()
            .filter(|e| allowed(&req.filter, e))
            .collect();
        let state = if req.filter.lazy_load_members {
            self.member_state_for(room_id, from.min(newest), &chunk)
                .await?
        } else {
            vec![]
        };
        Ok(MessagesPage {
            chunk,
            start: pagination_token(from),
            end: end.map(pagination_token),
            state,
        })
    }

    /// How far into the timeline the user may page: everything for members
    /// and invitees, up to their leave for former members, everything of a
    /// world-readable room for others; 403 otherwise.
    async fn read_ceiling(&self, room_id: &RoomId, user: &UserId) -> Result<i64> {
        let membership: Option<MembershipRecord> = self
            .main
            .membership(room_id.as_str(), user.as_str())
            .await?;
        Ok(match membership {
            None if self.visibility.world_readable(room_id).await? => i64::MAX,
            None => return Err(Error::forbidden("You are not in this room")),
            Some(m) => match membership_state(&m) {
                MembershipState::Join | MembershipState::Invite => i64::MAX,
                _ => m.stream_ordering,
            },
        })
    }

    /// Member events at `at` for the senders of `events`, for lazy-loading
    /// clients.
    async fn member_state_for(
        &self,
        room_id: &RoomId,
        at: i64,
        events: &[StoredEvent],
    ) -> Result<Vec<Value>> {
        let mut senders: Vec<&str> = events.iter().map(|e| e.pdu.sender.as_str()).collect();
        senders.sort_unstable();
        senders.dedup();
        let mut out = vec![];
        for s in senders {
            if let Some(m) = self
                .store
                .state_event_at(room_id.as_str(), "m.room.member", s, at)
                .await?
            {
                out.push(m.to_client(None));
            }
        }
        Ok(out)
    }

    /// The room's whole state at `at`, in client form.
    async fn client_state_at(&self, room_id: &RoomId, at: i64) -> Result<Vec<Value>> {
        Ok(self
            .visibility
            .state_events_at(room_id.as_str(), at)
            .await?
            .iter()
            .map(|e| e.to_client(None))
            .collect())
    }
}
