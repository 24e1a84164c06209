//! Where the streams stand, kept in memory because every commit to this
//! database passes through this process: the newest position of each stream,
//! and of each room (its newest event and newest receipt). A woken sync asks
//! "which of my rooms moved since position N" of these instead of the
//! database, which on the hot path is the difference between zero and two
//! queries per delivery.
//!
//! The per-room heads only know what was committed after the process started
//! (`floor`); a question about older positions gets `None` and goes to the
//! database.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicI64, Ordering},
};

use parking_lot::Mutex;

#[derive(Clone, Copy, Default)]
struct RoomHead {
    event: i64,
    receipt: i64,
}

pub(crate) struct Positions {
    events: AtomicI64,
    misc: AtomicI64,
    /// Every event and receipt above this position is in `rooms`.
    floor: AtomicI64,
    rooms: Mutex<HashMap<String, RoomHead>>,
}

impl Positions {
    /// Heads as read from the database at start-up.
    pub(crate) fn starting_at(events: i64, misc: i64) -> Self {
        Self {
            events: AtomicI64::new(events),
            misc: AtomicI64::new(misc),
            floor: AtomicI64::new(events),
            rooms: Mutex::default(),
        }
    }

    /// Records a committed event of `room`. Call before `advance_events`
    /// covers it, so a reader that sees the position also sees the room move.
    pub(crate) fn record_event(&self, room: &str, position: i64) {
        self.record(room, |h| h.event = h.event.max(position));
    }

    /// Records a committed receipt in `room`; same rule as `record_event`.
    pub(crate) fn record_receipt(&self, room: &str, position: i64) {
        self.record(room, |h| h.receipt = h.receipt.max(position));
    }

    fn record(&self, room: &str, update: impl FnOnce(&mut RoomHead)) {
        let mut rooms = self.rooms.lock();
        match rooms.get_mut(room) {
            Some(h) => update(h),
            None => update(rooms.entry(room.to_owned()).or_default()),
        }
    }

    /// Called after a commit, never before: a reader that sees a position can
    /// read everything up to it. Returns whether the position moved.
    pub(crate) fn advance_events(&self, to: i64) -> bool {
        self.events.fetch_max(to, Ordering::AcqRel) < to
    }

    pub(crate) fn advance_misc(&self, to: i64) -> bool {
        self.misc.fetch_max(to, Ordering::AcqRel) < to
    }

    /// Other processes commit too, unseen by `record_*`: the per-room heads
    /// can no longer answer.
    pub(crate) fn share(&self) {
        self.floor.store(i64::MAX, Ordering::Release);
    }

    pub(crate) fn events(&self) -> i64 {
        self.events.load(Ordering::Acquire)
    }

    pub(crate) fn misc(&self) -> i64 {
        self.misc.load(Ordering::Acquire)
    }

    /// Of `rooms`, those with events in `(after, upto]` and the newest such
    /// position; `None` when memory cannot tell (older than the process, or a
    /// room already moved past `upto` so its newest event at or below `upto`
    /// is unknown).
    pub(crate) fn rooms_with_events(
        &self,
        rooms: &[String],
        after: i64,
        upto: i64,
    ) -> Option<Vec<(String, i64)>> {
        if after < self.floor.load(Ordering::Acquire) {
            return None;
        }
        let heads = self.rooms.lock();
        let mut out = vec![];
        for room in rooms {
            let Some(h) = heads.get(room) else { continue };
            if h.event > upto {
                return None;
            }
            if h.event > after {
                out.push((room.clone(), h.event));
            }
        }
        Some(out)
    }

    /// Of `rooms`, those that may hold receipts after `after`; `None` when
    /// memory cannot tell.
    pub(crate) fn rooms_with_receipts(&self, rooms: &[String], after: i64) -> Option<Vec<String>> {
        if after < self.floor.load(Ordering::Acquire) {
            return None;
        }
        let heads = self.rooms.lock();
        Some(
            rooms
                .iter()
                .filter(|r| heads.get(*r).is_some_and(|h| h.receipt > after))
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn answers_only_what_it_saw() {
        let p = Positions::starting_at(10, 0);
        p.record_event("!a", 11);
        p.record_event("!b", 12);
        p.record_receipt("!b", 13);
        assert!(p.advance_events(13));
        assert!(!p.advance_events(12));
        let all = rooms(&["!a", "!b", "!c"]);
        // Before the process started: the database must answer.
        assert_eq!(p.rooms_with_events(&all, 9, 13), None);
        assert_eq!(p.rooms_with_receipts(&all, 9), None);
        assert_eq!(
            p.rooms_with_events(&all, 10, 13),
            Some(vec![("!a".into(), 11), ("!b".into(), 12)])
        );
        assert_eq!(
            p.rooms_with_events(&all, 11, 13),
            Some(vec![("!b".into(), 12)])
        );
        assert_eq!(p.rooms_with_receipts(&all, 12), Some(rooms(&["!b"])));
        assert_eq!(p.rooms_with_receipts(&all, 13), Some(vec![]));
        // A room that moved past `upto`: its newest event at or below `upto`
        // is unknown.
        p.record_event("!a", 14);
        assert_eq!(p.rooms_with_events(&all, 10, 13), None);
        // Shared with other processes: never from memory.
        p.share();
        assert_eq!(p.rooms_with_events(&all, 13, 14), None);
        assert_eq!(p.rooms_with_receipts(&all, 13), None);
    }
}
