//! The newest events of each loaded room, kept by its writer, so that syncs
//! woken by a new event read it from memory instead of the database.
//!
//! A room's ring holds *every* event of the room after its `from` position,
//! oldest first. The writer starts a ring when it loads the room (from the
//! room's newest committed event) and appends each event after it commits, so
//! the ring never has gaps. A reader asks for a range and gets `None` whenever
//! the ring cannot prove it holds all of it; it then reads the database.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use parking_lot::Mutex;

use crate::pdu::{Pdu, StoredEvent};

/// Events kept per room: enough for a sync that is a few seconds behind in a
/// busy room.
const PER_ROOM: usize = 256;
/// Rooms with a ring before all are dropped (they restart on the next load).
const MAX_ROOMS: usize = 20_000;

struct Ring {
    /// Every event of the room with a stream ordering above this is held.
    from: i64,
    events: VecDeque<Arc<StoredEvent>>,
}

impl Ring {
    fn last(&self) -> i64 {
        self.events.back().map_or(self.from, |e| e.stream_ordering)
    }
}

#[derive(Default)]
pub struct RecentEvents {
    rooms: Mutex<HashMap<String, Ring>>,
}

impl RecentEvents {
    /// Starts a room's ring right after `latest`, the ordering of its newest
    /// committed event. Only the room's writer calls this, holding the room.
    pub(crate) fn start(&self, room_id: &str, latest: i64) {
        let mut rooms = self.rooms.lock();
        if rooms.len() >= MAX_ROOMS && !rooms.contains_key(room_id) {
            rooms.clear();
        }
        rooms.insert(
            room_id.to_owned(),
            Ring {
                from: latest,
                events: VecDeque::new(),
            },
        );
    }

    /// Appends a just-committed event. Only the room's writer calls this,
    /// holding the room, so events arrive in order; anything else drops the
    /// ring rather than let it hold a gap.
    pub(crate) fn push(&self, event: Arc<StoredEvent>) {
        let mut rooms = self.rooms.lock();
        let room_id = event.pdu.room_id.as_str();
        let Some(ring) = rooms.get_mut(room_id) else {
            return;
        };
        if event.stream_ordering <= ring.last() {
            rooms.remove(room_id);
            return;
        }
        if ring.events.len() >= PER_ROOM
            && let Some(old) = ring.events.pop_front()
        {
            ring.from = old.stream_ordering;
        }
        ring.events.push_back(event);
    }

    /// Replaces a held event's body (after a redaction).
    pub(crate) fn replace(&self, pdu: Pdu) {
        let mut rooms = self.rooms.lock();
        let Some(ring) = rooms.get_mut(pdu.room_id.as_str()) else {
            return;
        };
        if let Some(slot) = ring
            .events
            .iter_mut()
            .find(|e| e.pdu.event_id == pdu.event_id)
        {
            *slot = Arc::new(StoredEvent {
                pdu,
                stream_ordering: slot.stream_ordering,
                txn: slot.txn.clone(),
            });
        }
    }

    /// The room's events with `after < ordering <= upto`, oldest first, if the
    /// ring holds all of them. `newest` is the room's newest committed ordering
    /// at or below `upto` as the database reports it; the writer may not have
    /// appended it yet, and then the ring cannot answer.
    pub fn range(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        newest: i64,
    ) -> Option<Vec<Arc<StoredEvent>>> {
        let rooms = self.rooms.lock();
        let ring = rooms.get(room_id)?;
        if after < ring.from || ring.last() < newest.min(upto) {
            return None;
        }
        Some(
            ring.events
                .iter()
                .filter(|e| e.stream_ordering > after && e.stream_ordering <= upto)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(room: &str, n: i64) -> Arc<StoredEvent> {
        let json = json!({
            "type": "m.room.message", "room_id": room, "sender": "@a:hs",
            "content": {"body": n.to_string()}, "origin_server_ts": 1, "depth": n,
            "prev_events": [], "auth_events": [],
        });
        let serde_json::Value::Object(map) = json else {
            unreachable!()
        };
        let id = ruma::OwnedEventId::try_from(format!("$e{n}")).unwrap();
        Arc::new(StoredEvent {
            pdu: Pdu::from_json(id, map).unwrap(),
            stream_ordering: n,
            txn: None,
        })
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        let r = RecentEvents::default();
        // No ring: the database must answer.
        assert!(r.range("!r:hs", 0, 10, 10).is_none());
        r.start("!r:hs", 5);
        r.push(event("!r:hs", 7));
        r.push(event("!r:hs", 9));
        let got = r.range("!r:hs", 5, 20, 9).unwrap();
        assert_eq!(
            got.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(),
            [7, 9]
        );
        assert_eq!(r.range("!r:hs", 7, 8, 9).unwrap().len(), 0);
        // Before the ring starts.
        assert!(r.range("!r:hs", 4, 20, 9).is_none());
        // Committed but not yet appended.
        assert!(r.range("!r:hs", 5, 20, 11).is_none());
    }

    #[test]
    fn an_out_of_order_push_drops_the_ring() {
        let r = RecentEvents::default();
        r.start("!r:hs", 5);
        r.push(event("!r:hs", 7));
        r.push(event("!r:hs", 6));
        assert!(r.range("!r:hs", 5, 20, 7).is_none());
    }

    #[test]
    fn the_oldest_events_fall_off() {
        let r = RecentEvents::default();
        r.start("!r:hs", 0);
        for n in 1..=(PER_ROOM as i64 + 10) {
            r.push(event("!r:hs", n));
        }
        assert!(r.range("!r:hs", 5, 1000, PER_ROOM as i64 + 10).is_none());
        let tail = r.range("!r:hs", 10, 1000, PER_ROOM as i64 + 10).unwrap();
        assert_eq!(tail.len(), PER_ROOM);
    }
}
