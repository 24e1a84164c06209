//! History older than the oldest events this server holds of a room. A room
//! joined over federation arrives as its state and our join; the messages
//! before the join stay on the servers that were there. When a client pages
//! backwards past the oldest event held, the missing history is asked for
//! with `/backfill` from where the held events' unknown parents point (the
//! room's backfill frontier), checked, and stored below every position, so
//! it reads as the room's past and never shows as new in a sync
//! (spec/federation.md, "Filling gaps").

use std::collections::{HashMap, HashSet};

use ruma::{OwnedEventId, RoomId};

use super::{
    Timeline,
    writer::{check_auth_events, rules_for},
};
use crate::{
    Result,
    pdu::{Pdu, StoredEvent},
    store::Direction,
};

/// Frontier points asked from per `/backfill` (the deepest ones).
const POINTS_PER_REQUEST: usize = 20;
/// Most events asked for per `/backfill` (the spec's servers cap at 100).
const MAX_PER_REQUEST: usize = 100;

/// What a server answered to `/backfill`.
#[derive(Debug, Default)]
pub struct Backfilled {
    /// The room's events, as sent.
    pub events: Vec<Pdu>,
    /// Auth events they name that this server lacked, fetched to check them
    /// (not stored: they take their place when the history reaches them).
    pub auth: Vec<Pdu>,
}

impl Timeline {
    /// A page of the room's timeline from `from` (as
    /// `RoomStore::room_events`). A backward page that reaches the oldest
    /// event held is first completed from other servers, when the room has
    /// history there that this server never had.
    pub async fn timeline_page(
        &self,
        room: &RoomId,
        from: i64,
        to: Option<i64>,
        dir: Direction,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let events = self
            .store
            .room_events(room.as_str(), from, to, dir, limit)
            .await?;
        if dir != Direction::Backward || to.is_some() || events.len() as i64 >= limit {
            return Ok(events);
        }
        match self.backfill(room, limit as usize).await {
            Ok(0) => Ok(events),
            Ok(_) => {
                self.store
                    .room_events(room.as_str(), from, to, dir, limit)
                    .await
            }
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "cannot backfill the room's history");
                Ok(events)
            }
        }
    }

    /// Fetches up to `limit` events of the room's history older than held
    /// here and stores them; how many were new.
    pub async fn backfill(&self, room: &RoomId, limit: usize) -> Result<usize> {
        let frontier = self.store.backfill_frontier(room.as_str()).await?;
        let Some(remote) = self.links.remote.get() else {
            return Ok(0);
        };
        if frontier.is_empty() {
            return Ok(0);
        }
        // Not a server the room's ACL shuts out.
        let servers = self.rooms.room_destinations(room).await?;
        if servers.is_empty() {
            return Ok(0);
        }
        let mut points = frontier.clone();
        points.sort_by_key(|(_, depth)| std::cmp::Reverse(*depth));
        points.truncate(POINTS_PER_REQUEST);
        let from: Vec<OwnedEventId> = points
            .iter()
            .filter_map(|(id, _)| OwnedEventId::try_from(id.as_str()).ok())
            .collect();
        let got = remote
            .backfill(room, &servers, &from, limit.min(MAX_PER_REQUEST))
            .await?;
        let fresh = self.authorized_history(room, got).await?;
        let asked: HashSet<&str> = points.iter().map(|(id, _)| id.as_str()).collect();
        let kept: Vec<(String, i64)> = frontier
            .iter()
            .filter(|(id, _)| !asked.contains(id.as_str()))
            .cloned()
            .collect();
        let next = self.next_frontier(room, &fresh, kept).await?;
        tracing::info!(room = %room, events = fresh.len(), frontier = next.len(), "backfilled history");
        self.store
            .store_history(room.as_str(), &fresh, &next)
            .await?;
        Ok(fresh.len())
    }

    /// The events of `got` not held here that pass the room's rules against
    /// their own auth events, newest first. Refused ones are logged and left.
    async fn authorized_history(&self, room: &RoomId, got: Backfilled) -> Result<Vec<Pdu>> {
        let rules = rules_for(&self.rooms.room_version_of(room).await?)?;
        let mut events: Vec<Pdu> = got
            .events
            .into_iter()
            .filter(|p| p.room_id == room)
            .collect();
        let ids: Vec<OwnedEventId> = events.iter().map(|p| p.event_id.clone()).collect();
        let unknown: HashSet<OwnedEventId> = self
            .rooms
            .unknown_events(room, &ids)
            .await?
            .into_iter()
            .collect();
        events.retain(|p| unknown.contains(&p.event_id));
        let mut known: HashMap<String, Pdu> = events
            .iter()
            .chain(got.auth.iter())
            .map(|p| (p.event_id.to_string(), p.clone()))
            .collect();
        let wanted: Vec<String> = events
            .iter()
            .flat_map(|p| p.auth_events.iter().map(ToString::to_string))
            .filter(|id| !known.contains_key(id))
            .collect();
        for e in self.store.get_events(&wanted).await? {
            known.insert(e.pdu.event_id.to_string(), e.pdu);
        }
        // Room version 12 leaves the create event out of auth_events.
        let create = self
            .rooms
            .room_state_event(room, "m.room.create", "")
            .await?
            .map(|e| e.as_ref().clone());
        events.retain(|pdu| {
            let auth: HashMap<String, Pdu> = pdu
                .auth_events
                .iter()
                .filter_map(|id| known.get(id.as_str()))
                .chain(create.iter())
                .map(|p| (p.event_id.to_string(), p.clone()))
                .collect();
            match check_auth_events(&rules, pdu, &auth) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(event = %pdu.event_id, error = %e, "a backfilled event was refused");
                    false
                }
            }
        });
        events.sort_by(|a, b| {
            (b.depth, b.origin_server_ts, &b.event_id).cmp(&(
                a.depth,
                a.origin_server_ts,
                &a.event_id,
            ))
        });
        Ok(events)
    }

    /// Where history continues after storing `fresh`: the parents it names
    /// that are neither held nor in it, with the points not asked this time.
    async fn next_frontier(
        &self,
        room: &RoomId,
        fresh: &[Pdu],
        mut kept: Vec<(String, i64)>,
    ) -> Result<Vec<(String, i64)>> {
        let batch: HashSet<&OwnedEventId> = fresh.iter().map(|p| &p.event_id).collect();
        let mut depth_of: HashMap<OwnedEventId, i64> = HashMap::new();
        for pdu in fresh {
            for parent in &pdu.prev_events {
                if !batch.contains(parent) {
                    let d = (pdu.depth as i64 - 1).max(0);
                    depth_of.entry(parent.clone()).or_insert(d);
                }
            }
        }
        let parents: Vec<OwnedEventId> = depth_of.keys().cloned().collect();
        for id in self.rooms.unknown_events(room, &parents).await? {
            if !kept.iter().any(|(k, _)| k == id.as_str()) {
                kept.push((id.to_string(), depth_of.get(&id).copied().unwrap_or(0)));
            }
        }
        Ok(kept)
    }

    /// After joining a room over federation: what the events it brought
    /// (its state, auth chain and our join) name as parents without this
    /// server having them is where its history continues.
    pub async fn start_frontier(&self, room: &RoomId, brought: &[Pdu]) -> Result<()> {
        let frontier = self.next_frontier(room, brought, vec![]).await?;
        self.store
            .store_history(room.as_str(), &[], &frontier)
            .await
    }
}
