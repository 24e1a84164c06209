//! Unread notification counts per (room, user).
//!
//! Counting from the read receipt on every sync rescans the whole unread
//! backlog each time a busy room moves. Instead each (room, user) keeps a tally
//! of the events it has already counted; a sync counts only the events that
//! arrived since, and starts over when the read position moves.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{RoomId, UserId};
use serde_json::Value;

use crate::{
    Hearth, Result,
    pdu::StoredEvent,
    store::{Direction, MembershipRecord},
};

/// Events counted per store read; a larger backlog is counted over later syncs.
const SCAN_BATCH: i64 = 1000;
/// Tallies kept before the cache starts over (each is a few dozen bytes).
const MAX_TALLIES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// The read position the counts start after.
    after: i64,
    /// `after` is known to hold up to this position of the room's shard
    /// stream, for this membership.
    checked_to: i64,
    joined_at: i64,
    /// Events up to here are counted.
    scanned_to: i64,
    notifications: u64,
    highlights: u64,
}

#[derive(Default)]
pub struct UnreadCache {
    tallies: Mutex<HashMap<(String, String), Tally>>,
    /// Display names, for highlight matching; forgotten when one changes.
    names: Mutex<HashMap<String, Option<String>>>,
}

impl UnreadCache {
    /// Call after a user's display name changed.
    pub fn forget_name(&self, user: &str) {
        if let Ok(mut names) = self.names.lock() {
            names.remove(user);
        }
    }

    fn name(&self, user: &str) -> Option<Option<String>> {
        self.names.lock().ok()?.get(user).cloned()
    }

    fn put_name(&self, user: &str, name: Option<String>) {
        if let Ok(mut names) = self.names.lock() {
            if names.len() >= MAX_TALLIES {
                names.clear();
            }
            names.insert(user.to_owned(), name);
        }
    }

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
    ///
    /// `upto` is a position in the room's shard stream. `receipts` is the
    /// caller's position before this sync and whether the user's own receipts
    /// in the room moved since; `known`, every event of the room after some
    /// position, when the caller has them.
    pub async fn unread_counts(
        &self,
        room_id: &RoomId,
        user: &UserId,
        membership: &MembershipRecord,
        upto: i64,
        receipts: Option<(i64, bool)>,
        known: Option<(i64, &[Arc<StoredEvent>])>,
    ) -> Result<(u64, u64)> {
        let (room, who) = (room_id.as_str(), user.as_str());
        let joined_at = membership.stream_ordering;
        let cached = self
            .unread
            .get(room, who)
            .filter(|t| t.joined_at == joined_at && t.scanned_to <= upto);
        let still_read_up_to = cached
            .filter(|t| receipts.is_some_and(|(since, moved)| !moved && t.checked_to >= since));
        let after = match still_read_up_to {
            Some(t) => t.after,
            // Events from before the user (re)joined are not theirs to read.
            None => self
                .store
                .read_position(room, who)
                .await?
                .map_or(joined_at, |read| read.max(joined_at)),
        };
        let mut tally = match cached.filter(|t| t.after == after) {
            Some(t) => t,
            None => Tally {
                after,
                checked_to: upto,
                joined_at,
                scanned_to: after,
                notifications: 0,
                highlights: 0,
            },
        };
        tally.checked_to = tally.checked_to.max(upto);
        // The caller may hold every event of the room after some position:
        // then nothing needs reading.
        let held = known.filter(|(from, _)| *from <= tally.scanned_to);
        if let Some((_, events)) = held
            && tally.scanned_to < upto
        {
            let mut displayname = None;
            let from = tally.scanned_to;
            for e in events.iter().filter(|e| e.stream_ordering > from) {
                self.tally_event(&mut tally, e, user, &mut displayname)
                    .await?;
            }
            tally.scanned_to = upto;
        } else if tally.scanned_to < upto {
            let events = self
                .store
                .room_events(
                    room,
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
            let mut displayname = None;
            for e in &events {
                self.tally_event(&mut tally, e, user, &mut displayname)
                    .await?;
            }
        }
        if cached != Some(tally) {
            self.unread.put(room, who, tally);
        }
        Ok((tally.notifications, tally.highlights))
    }
}

impl Hearth {
    /// Counts one event into a tally. The display name is looked up once per
    /// batch, and only if some event notifies.
    async fn tally_event(
        &self,
        tally: &mut Tally,
        e: &StoredEvent,
        user: &UserId,
        displayname: &mut Option<Option<String>>,
    ) -> Result<()> {
        if e.pdu.sender == user || !notifies(&e.pdu.kind.to_string()) {
            return Ok(());
        }
        tally.notifications += 1;
        if displayname.is_none() {
            *displayname = Some(self.displayname_for_highlights(user).await?);
        }
        let name = displayname.as_ref().and_then(Option::as_deref);
        if mentions(&e.pdu.content_value(), user, name) {
            tally.highlights += 1;
        }
        Ok(())
    }

    async fn displayname_for_highlights(&self, user: &UserId) -> Result<Option<String>> {
        if let Some(name) = self.unread.name(user.as_str()) {
            return Ok(name);
        }
        let name = self
            .store
            .get_user(user.as_str())
            .await?
            .and_then(|u| u.displayname);
        self.unread.put_name(user.as_str(), name.clone());
        Ok(name)
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
            checked_to: 0,
            joined_at: 1,
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
