//! Unread notification counts per (room, user).
//!
//! Counting from the read receipt on every sync rescans the whole unread
//! backlog each time a busy room moves. Instead each (room, user) keeps a tally
//! of the events it has already counted; a sync counts only the events that
//! arrived since, and starts over when the read position moves.

use std::{collections::HashMap, sync::Mutex};

use ruma::{RoomId, UserId};
use serde_json::Value;

use crate::{Hearth, Result, store::Direction};

/// Events counted per store read; a larger backlog is counted over later syncs.
const SCAN_BATCH: i64 = 1000;
/// Tallies kept before the cache starts over (each is a few dozen bytes).
const MAX_TALLIES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// The read position the counts start after.
    after: i64,
    /// Events up to here are counted.
    scanned_to: i64,
    notifications: u64,
    highlights: u64,
}

#[derive(Default)]
pub struct UnreadCache {
    tallies: Mutex<HashMap<(String, String), Tally>>,
}

impl UnreadCache {
    fn get(&self, room: &str, user: &str) -> Option<Tally> {
        let map = self.tallies.lock().ok()?;
        map.get(&(room.to_owned(), user.to_owned())).copied()
    }

    fn put(&self, room: &str, user: &str, t: Tally) {
        if let Ok(mut map) = self.tallies.lock() {
            if map.len() >= MAX_TALLIES {
                map.clear();
            }
            map.insert((room.to_owned(), user.to_owned()), t);
        }
    }
}

impl Hearth {
    /// Messages from others after the user's read receipt (or their join,
    /// before any receipt) up to stream position `upto`; highlights are those
    /// that mention the user (m.mentions, or their id or display name in the
    /// body).
    pub async fn unread_counts(
        &self,
        room_id: &RoomId,
        user: &UserId,
        upto: i64,
    ) -> Result<(u64, u64)> {
        let after = match self
            .store
            .read_position(room_id.as_str(), user.as_str())
            .await?
        {
            Some(pos) => pos,
            None => match self
                .store
                .membership(room_id.as_str(), user.as_str())
                .await?
            {
                Some(m) => m.stream_ordering,
                None => return Ok((0, 0)),
            },
        };
        let fresh = Tally {
            after,
            scanned_to: after,
            notifications: 0,
            highlights: 0,
        };
        let mut tally = self
            .unread
            .get(room_id.as_str(), user.as_str())
            .filter(|t| t.after == after && t.scanned_to <= upto)
            .unwrap_or(fresh);
        if tally.scanned_to < upto {
            let events = self
                .store
                .room_events(
                    room_id.as_str(),
                    tally.scanned_to,
                    Some(upto),
                    Direction::Forward,
                    SCAN_BATCH,
                )
                .await?;
            tally.scanned_to = match events.last() {
                Some(last) if events.len() as i64 == SCAN_BATCH => last.stream_ordering,
                _ => upto,
            };
            if !events.is_empty() {
                let displayname = self
                    .store
                    .get_user(user.as_str())
                    .await?
                    .and_then(|u| u.displayname);
                for e in &events {
                    let kind = e.pdu.kind.to_string();
                    if e.pdu.sender == user || !notifies(&kind) {
                        continue;
                    }
                    tally.notifications += 1;
                    if mentions(&e.pdu.content_value(), user, displayname.as_deref()) {
                        tally.highlights += 1;
                    }
                }
            }
            self.unread.put(room_id.as_str(), user.as_str(), tally);
        }
        Ok((tally.notifications, tally.highlights))
    }
}

fn notifies(kind: &str) -> bool {
    matches!(kind, "m.room.message" | "m.room.encrypted" | "m.sticker")
}

fn mentions(content: &Value, user: &UserId, displayname: Option<&str>) -> bool {
    let listed = content
        .get("m.mentions")
        .and_then(|m| m.get("user_ids"))
        .and_then(Value::as_array)
        .is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(user.as_str())));
    let body = content
        .get("body")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_lowercase();
    listed
        || body.contains(&user.as_str().to_lowercase())
        || displayname.is_some_and(|d| !d.is_empty() && body.contains(&d.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mentions_by_list_id_or_name() {
        let u = ruma::user_id!("@alice:hs");
        assert!(mentions(
            &json!({"m.mentions": {"user_ids": ["@alice:hs"]}}),
            u,
            None
        ));
        assert!(mentions(&json!({"body": "hi @ALICE:hs"}), u, None));
        assert!(mentions(&json!({"body": "hey Ally!"}), u, Some("ally")));
        assert!(!mentions(&json!({"body": "hello"}), u, Some("ally")));
        assert!(!mentions(&json!({"body": "hello"}), u, Some("")));
    }

    #[test]
    fn cache_forgets_everything_when_full() {
        let c = UnreadCache::default();
        let t = Tally {
            after: 1,
            scanned_to: 2,
            notifications: 1,
            highlights: 0,
        };
        for i in 0..MAX_TALLIES {
            c.put(&format!("!{i}:hs"), "@a:hs", t);
        }
        assert_eq!(c.get("!0:hs", "@a:hs"), Some(t));
        c.put("!new:hs", "@a:hs", t);
        assert_eq!(c.get("!0:hs", "@a:hs"), None);
        assert_eq!(c.get("!new:hs", "@a:hs"), Some(t));
    }
}
