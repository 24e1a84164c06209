//! Rooms: the single writer per room, room creation, and who may see what.
//!
//! Every room's events pass through one `RoomHandle` lock in this process: the
//! lock holder builds the event on top of the room's latest event, authorizes it
//! against current state, commits it, and only then releases. That makes the
//! room's stream ordering its total order.

mod create;
mod membership;
mod recent;
mod visibility;
mod writer;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedEventId, OwnedUserId, RoomVersionId};
use serde_json::Value;

pub use create::CreateRoom;
pub use recent::RecentEvents;
pub use visibility::HistoryVisibility;

use crate::pdu::Pdu;

/// A new event as a local client asks for it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub sender: OwnedUserId,
    pub kind: String,
    pub content: Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
    /// (device_id, txn_id): a retry with the same pair returns the first event id.
    pub txn: Option<(String, String)>,
}

impl NewEvent {
    pub fn message(sender: OwnedUserId, kind: &str, content: Value) -> Self {
        Self {
            sender,
            kind: kind.to_owned(),
            content,
            state_key: None,
            redacts: None,
            txn: None,
        }
    }

    pub fn state(sender: OwnedUserId, kind: &str, state_key: &str, content: Value) -> Self {
        Self {
            sender,
            kind: kind.to_owned(),
            content,
            state_key: Some(state_key.to_owned()),
            redacts: None,
            txn: None,
        }
    }
}

/// What the writer keeps in memory for a room it has loaded.
pub(crate) struct RoomCache {
    pub version: RoomVersionId,
    pub latest: Option<(OwnedEventId, u64)>,
    pub state: HashMap<(String, String), Arc<Pdu>>,
}

#[derive(Default)]
pub struct Rooms {
    handles: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<RoomCache>>>>>,
    pub recent: RecentEvents,
}

impl Rooms {
    pub(crate) fn handle(&self, room_id: &str) -> Arc<tokio::sync::Mutex<Option<RoomCache>>> {
        let mut map = match self.handles.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(room_id.to_owned()).or_default().clone()
    }
}

/// Reads a user's power level and the level an action needs from a
/// power_levels content (absent content means the room-creation defaults).
pub fn user_power(pl: Option<&Value>, creator: Option<&str>, user: &str) -> i64 {
    match pl {
        Some(pl) => pl
            .get("users")
            .and_then(|u| u.get(user))
            .and_then(Value::as_i64)
            .unwrap_or_else(|| pl.get("users_default").and_then(Value::as_i64).unwrap_or(0)),
        None => {
            if creator == Some(user) {
                100
            } else {
                0
            }
        }
    }
}

pub fn required_power(pl: Option<&Value>, key: &str, default: i64) -> i64 {
    pl.and_then(|p| p.get(key))
        .and_then(Value::as_i64)
        .unwrap_or(default)
}
