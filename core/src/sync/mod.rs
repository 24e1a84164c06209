//! /sync: what changed for one user between two stream positions, and the
//! long-poll that waits for the next change.

mod key_changes;
mod lazy;
mod pass;
mod rooms;

pub use key_changes::KeyChanges;

use std::{collections::BTreeSet, fmt, str::FromStr, sync::Arc, time::Duration};

use ruma::{UserId, events::room::member::MembershipState};
use serde_json::{Map, Value, json};

use crate::{
    Error, Result, cluster::Streams, e2ee::E2ee, ephemeral::Ephemeral, filter::SyncFilter,
    notifier::Notifier, push::Push, rooms::Rooms, rooms::Visibility, unread::Unread,
};

/// A position in every stream a client syncs: each event shard's stream
/// (its events and receipts), account data, typing, presence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncToken {
    /// Position per event shard, by shard index.
    pub shards: Vec<i64>,
    pub misc: i64,
    pub typing: u64,
    pub presence: u64,
}

impl SyncToken {
    /// The position in one shard's stream (0, the start, for a shard the
    /// token predates).
    pub fn shard(&self, index: usize) -> i64 {
        self.shards.get(index).copied().unwrap_or(0)
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shards: Vec<String> = self.shards.iter().map(i64::to_string).collect();
        write!(
            f,
            "s{}_{}_{}_{}",
            shards.join("."),
            self.misc,
            self.typing,
            self.presence
        )
    }
}

impl FromStr for SyncToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid_param(format!("Invalid sync token {s:?}"));
        let rest = s.strip_prefix('s').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('_').collect();
        if parts.len() != 4 {
            return Err(bad());
        }
        let shards = parts[0]
            .split('.')
            .map(|p| p.parse::<i64>().map_err(|_| bad()))
            .collect::<Result<Vec<_>>>()?;
        if shards.iter().any(|p| *p < 0) {
            return Err(bad());
        }
        Ok(SyncToken {
            shards,
            misc: parts[1].parse().map_err(|_| bad())?,
            typing: parts[2].parse().map_err(|_| bad())?,
            presence: parts[3].parse().map_err(|_| bad())?,
        })
    }
}

/// A pagination token for /messages: a boundary in the order of a room on
/// shard `shard`. Backward reads return events at or before it, forward reads
/// events after it. A sync token is accepted too (its position in that shard).
pub fn parse_pagination_token(s: &str, shard: usize) -> Result<i64> {
    if let Some(n) = s.strip_prefix('t') {
        return n
            .parse()
            .map_err(|_| Error::invalid_param("Invalid pagination token"));
    }
    Ok(s.parse::<SyncToken>()?.shard(shard))
}

pub fn pagination_token(boundary: i64) -> String {
    // Negative positions are backfilled history (rooms/history.rs).
    format!("t{boundary}")
}

pub struct SyncRequest {
    pub since: Option<SyncToken>,
    pub full_state: bool,
    pub filter: SyncFilter,
    pub timeout: Duration,
}

const DEFAULT_TIMELINE_LIMIT: usize = 10;
const MAX_TIMELINE_LIMIT: usize = 1000;
/// How many pages back a filtered timeline reads to fill its limit before
/// answering `limited` and leaving the rest to `/messages`.
const MAX_TIMELINE_PAGES: usize = 6;

/// Sync: the long-poll and one pass of it (`pass.rs`, `rooms.rs`).
pub struct Syncer {
    store: Arc<dyn crate::store::RoomStore>,
    main: Arc<dyn crate::store::MainStore>,
    rooms: Arc<Rooms>,
    visibility: Arc<Visibility>,
    /// Typing and presence, and a sync's `set_presence`.
    ephemeral: Arc<Ephemeral>,
    /// To-device messages and device lists.
    e2ee: Arc<E2ee>,
    unread: Arc<Unread>,
    /// Rule evaluation for a room's highlight and notification counts.
    push: Arc<Push>,
    streams: Arc<Streams>,
    /// What a long-poll waits on.
    notifier: Arc<Notifier>,
    /// Answers long-polls at once when the server drains.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Lazy-loaded member events each device was sent.
    lazy_members: lazy::LazyMembers,
}

/// What `Syncer` is built from (`Hearth::wire`): named, as there are many.
pub(crate) struct SyncDeps {
    pub store: Arc<dyn crate::store::RoomStore>,
    pub main: Arc<dyn crate::store::MainStore>,
    pub rooms: Arc<Rooms>,
    pub visibility: Arc<Visibility>,
    pub ephemeral: Arc<Ephemeral>,
    pub e2ee: Arc<E2ee>,
    pub unread: Arc<Unread>,
    pub push: Arc<Push>,
    pub streams: Arc<Streams>,
    pub notifier: Arc<Notifier>,
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl Syncer {
    pub(crate) fn new(deps: SyncDeps) -> Self {
        Self {
            store: deps.store,
            main: deps.main,
            rooms: deps.rooms,
            visibility: deps.visibility,
            ephemeral: deps.ephemeral,
            e2ee: deps.e2ee,
            unread: deps.unread,
            push: deps.push,
            streams: deps.streams,
            notifier: deps.notifier,
            shutdown: deps.shutdown,
            lazy_members: lazy::LazyMembers::default(),
        }
    }

    pub async fn current_token(&self) -> Result<SyncToken> {
        self.streams.catch_up().await?;
        Ok(SyncToken {
            shards: self.store.stream_positions().await?,
            misc: self.main.max_misc_stream_id().await?,
            typing: self.ephemeral.typing.serial(),
            presence: self.ephemeral.presence.serial(),
        })
    }

    /// Long-poll sync: returns at once when there is something new, otherwise
    /// waits up to `timeout` for it.
    pub async fn sync(&self, user: &UserId, device: &str, req: &SyncRequest) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + req.timeout;
        let mut rx = self.notifier.subscribe(user.as_str());
        let mut draining = self.shutdown.subscribe();
        loop {
            rx.mark_seen();
            let (body, has_data) = self.sync_once(user, device, req).await?;
            let now = tokio::time::Instant::now();
            if has_data
                || req.since.is_none()
                || req.full_state
                || now >= deadline
                || *draining.borrow_and_update()
            {
                return Ok(body);
            }
            let woke = tokio::select! {
                woke = rx.wait(deadline - now) => woke,
                _ = draining.changed() => false,
            };
            if !woke {
                // Timed out: answer with the latest positions.
                let (body, _) = self.sync_once(user, device, req).await?;
                return Ok(body);
            }
        }
    }
}

/// Whether `user`'s own read receipts in `room` are among `receipts`.
fn own_receipt_in(receipts: &[crate::store::ReceiptRecord], room: &str, user: &UserId) -> bool {
    receipts.iter().any(|r| {
        r.room_id == room
            && r.user_id == user.as_str()
            && matches!(r.receipt_type.as_str(), "m.read" | "m.read.private")
    })
}

fn empty_response(upto: &SyncToken) -> Value {
    json!({
        "next_batch": upto.to_string(),
        "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
        "account_data": {"events": []},
        "presence": {"events": []},
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {},
        "device_unused_fallback_key_types": [],
    })
}

/// Sorts the membership events among `events` into users who joined and
/// users who left or were banned.
fn collect_member_changes<'a>(
    events: impl Iterator<Item = &'a Value>,
    joined: &mut BTreeSet<String>,
    left: &mut BTreeSet<String>,
) {
    for ev in events.filter(|e| is_member_event(e)) {
        let Some(who) = ev.get("state_key").and_then(Value::as_str) else {
            continue;
        };
        match ev["content"]["membership"]
            .as_str()
            .map(MembershipState::from)
        {
            Some(MembershipState::Join) => {
                left.remove(who);
                joined.insert(who.to_owned());
            }
            Some(MembershipState::Leave | MembershipState::Ban) => {
                joined.remove(who);
                left.insert(who.to_owned());
            }
            _ => {}
        }
    }
}

fn is_member_event(ev: &Value) -> bool {
    ev.get("type").and_then(Value::as_str) == Some("m.room.member")
}

fn has_member_event(events: &Value) -> bool {
    events
        .as_array()
        .is_some_and(|a| a.iter().any(is_member_event))
}

/// Groups receipts for one room into an m.receipt event; private receipts
/// are shown only to their owner.
fn receipt_event(
    room_id: &str,
    viewer: &str,
    receipts: &[crate::store::ReceiptRecord],
) -> Option<Value> {
    let mut content = Map::new();
    for r in receipts.iter().filter(|r| r.room_id == room_id) {
        if r.receipt_type == "m.read.private" && r.user_id != viewer {
            continue;
        }
        let mut entry = json!({"ts": r.ts});
        if !r.thread_id.is_empty() {
            entry["thread_id"] = json!(r.thread_id);
        }
        let ev = content
            .entry(r.event_id.clone())
            .or_insert_with(|| json!({}));
        ev[&r.receipt_type][&r.user_id] = entry;
    }
    if content.is_empty() {
        return None;
    }
    Some(json!({"type": "m.receipt", "content": content}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_token_round_trips() {
        let t = SyncToken {
            shards: vec![42],
            misc: 7,
            typing: 3,
            presence: 9,
        };
        let s = t.to_string();
        assert_eq!(s, "s42_7_3_9");
        assert_eq!(s.parse::<SyncToken>().ok(), Some(t));
        let sharded = SyncToken {
            shards: vec![42, 0, 17],
            misc: 7,
            typing: 3,
            presence: 9,
        };
        assert_eq!(sharded.to_string(), "s42.0.17_7_3_9");
        assert_eq!(
            sharded.to_string().parse::<SyncToken>().ok(),
            Some(sharded.clone())
        );
        // A shard the token predates starts from the beginning.
        assert_eq!(sharded.shard(5), 0);
    }

    #[test]
    fn malformed_sync_tokens_are_invalid_param() {
        for bad in [
            "",
            "42_7_3_9",
            "s1_2_3",
            "s1_2_3_x",
            "t5",
            "s-_1_2_3",
            "s1..2_0_0_0",
            "s-1_0_0_0",
        ] {
            assert!(
                matches!(bad.parse::<SyncToken>(), Err(Error::InvalidParam(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn pagination_accepts_both_token_kinds() {
        assert_eq!(parse_pagination_token("t17", 0).ok(), Some(17));
        assert_eq!(parse_pagination_token("s23_0_0_0", 0).ok(), Some(23));
        assert_eq!(parse_pagination_token("s23.8_0_0_0", 1).ok(), Some(8));
        assert!(parse_pagination_token("tx", 0).is_err());
        // Backfilled history has negative positions, both ways.
        assert_eq!(pagination_token(-1), "t-1");
        assert_eq!(parse_pagination_token("t-7", 0).ok(), Some(-7));
    }
}
