//! Lazy-loaded members already sent: per device, the ids of the member
//! events its syncs carried, so an incremental sync does not send them again
//! (the spec's default without `include_redundant_members`).
//!
//! Held in memory only: after a restart, or on another process of a cluster,
//! a member is sent again, which the spec allows (clients must accept
//! redundant members).

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;
use ruma::UserId;
use serde_json::Value;

/// Past these sizes the record starts again (members are sent again once).
const MAX_DEVICES: usize = 10_000;
const MAX_EVENTS_PER_DEVICE: usize = 20_000;

#[derive(Default)]
pub(super) struct LazyMembers {
    sent: Mutex<HashMap<(String, String), HashSet<String>>>,
}

impl LazyMembers {
    /// An initial sync: the device starts over and is sent every member
    /// its timelines need.
    pub fn forget(&self, user: &UserId, device: &str) {
        self.sent
            .lock()
            .remove(&(user.as_str().to_owned(), device.to_owned()));
    }

    /// Drops from `state` the member events the device was sent before
    /// (its own member event is always kept), and records the member events
    /// of `state` and of `timeline_members` (ids) as sent.
    pub fn dedupe(
        &self,
        user: &UserId,
        device: &str,
        state: &mut Vec<Value>,
        timeline_members: impl Iterator<Item = String>,
    ) {
        let mut sent = self.sent.lock();
        if sent.len() >= MAX_DEVICES {
            sent.clear();
        }
        let seen = sent
            .entry((user.as_str().to_owned(), device.to_owned()))
            .or_default();
        if seen.len() >= MAX_EVENTS_PER_DEVICE {
            seen.clear();
        }
        state.retain(|e| {
            e["type"] != "m.room.member"
                || e["state_key"] == user.as_str()
                || !e["event_id"].as_str().is_some_and(|id| seen.contains(id))
        });
        let state_members = state
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| e["event_id"].as_str().map(str::to_owned));
        seen.extend(state_members.chain(timeline_members));
    }
}
