//! What this server lacks of a room's event graph. An event another server
//! sends may name `prev_events` that never reached us (we were down and its
//! server only sent the newest event when it caught up, or a transaction was
//! lost). The federation layer asks this module which parents are unknown,
//! fetches them, and hands everything back to the writer in order
//! (spec/federation.md, "Filling gaps").

use std::collections::HashSet;

use ruma::{OwnedEventId, RoomId};

use super::Rooms;
use crate::{Result, pdu::Pdu};

impl Rooms {
    /// The ids among `ids` this server has neither stored nor submitted to
    /// the store for `room`.
    pub async fn unknown_events(
        &self,
        room: &RoomId,
        ids: &[OwnedEventId],
    ) -> Result<Vec<OwnedEventId>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let in_flight: HashSet<OwnedEventId> = self
            .with_view(room.as_str(), |c| {
                ids.iter()
                    .filter(|id| c.submitted_contains(id))
                    .cloned()
                    .collect()
            })
            .await?;
        let ask: Vec<String> = ids
            .iter()
            .filter(|id| !in_flight.contains(*id))
            .map(ToString::to_string)
            .collect();
        if ask.is_empty() {
            return Ok(vec![]);
        }
        let stored: HashSet<String> = self
            .store
            .get_events(&ask)
            .await?
            .into_iter()
            .filter(|e| e.pdu.room_id == room)
            .map(|e| e.pdu.event_id.to_string())
            .collect();
        let mut unknown: Vec<OwnedEventId> = ids
            .iter()
            .filter(|id| !in_flight.contains(*id) && !stored.contains(id.as_str()))
            .cloned()
            .collect();
        unknown.sort();
        unknown.dedup();
        Ok(unknown)
    }

    /// The parents of `pdu` that are unknown here (see `unknown_events`).
    pub async fn unknown_parents(&self, pdu: &Pdu) -> Result<Vec<OwnedEventId>> {
        self.unknown_events(&pdu.room_id, &pdu.prev_events).await
    }

    /// The room's forward extremities: what a server asked for the events
    /// between us and a newer event is told we have.
    pub async fn forward_extremities(&self, room: &RoomId) -> Result<Vec<OwnedEventId>> {
        self.with_view(room.as_str(), |c| {
            c.extremities.iter().map(|(id, _)| id.clone()).collect()
        })
        .await
    }
}

/// An event another server built, on its way into the room's order.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub pdu: Pdu,
    /// Checked against the room's current state too (events submitted to
    /// this server as the room's owner), not only its own auth events.
    pub against_current: bool,
    /// The state before the event as the sending server reported it
    /// (`/state_ids`), for an event whose parents could not be had: the
    /// state after it is resolved from this and the current state.
    pub state_before: Option<Vec<OwnedEventId>>,
}

impl Incoming {
    pub fn new(pdu: Pdu, against_current: bool) -> Self {
        Self {
            pdu,
            against_current,
            state_before: None,
        }
    }
}
