//! /sync: what changed for one user between two stream positions, and the
//! long-poll that waits for the next change.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use crate::{
    Error, Hearth, Result,
    filter::SyncFilter,
    pdu::StoredEvent,
    store::{Direction, MembershipRecord},
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

impl Hearth {
    pub async fn current_token(&self) -> Result<SyncToken> {
        self.catch_up().await?;
        Ok(SyncToken {
            shards: self.store.stream_positions().await?,
            misc: self.store.max_misc_stream_id().await?,
            typing: self.typing.serial(),
            presence: self.presence.serial(),
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

    async fn sync_once(
        &self,
        user: &UserId,
        device: &str,
        req: &SyncRequest,
    ) -> Result<(Value, bool)> {
        let upto = self.current_token().await?;
        let since = req.since.as_ref();
        let f = &req.filter;
        if since == Some(&upto) && !req.full_state {
            // Nothing moved in any stream: the common case for a long-poll
            // that just re-armed after its last answer.
            self.ack_to_device(user, device, upto.misc).await?;
            return Ok((empty_response(&upto), false));
        }
        let misc_moved = since.is_none_or(|s| s.misc != upto.misc);
        let mut has_data = false;
        let mut join = Map::new();
        let mut invite = Map::new();
        let mut knock = Map::new();
        let mut leave = Map::new();
        // Membership changes seen in this answer, for `device_lists`: users
        // who joined a room with us (their devices are news to us) and users
        // who left one (maybe the last room we shared).
        let mut members_joined: BTreeSet<String> = BTreeSet::new();
        let mut members_left: BTreeSet<String> = BTreeSet::new();

        let memberships = self.store.memberships_of_user(user.as_str()).await?;
        let joined: Vec<String> = memberships
            .iter()
            .filter(|m| m.membership == "join")
            .map(|m| m.room_id.clone())
            .collect();
        let start = SyncToken::default();
        let from = since.unwrap_or(&start);
        // Joined rooms with new events, each with its newest ordering.
        let changed_rooms: BTreeMap<String, i64> = match since {
            Some(s) => self
                .store
                .rooms_with_events(&joined, &s.shards, &upto.shards)
                .await?
                .into_iter()
                .collect(),
            None => BTreeMap::new(),
        };
        // Receipts ride in the shard streams, account data in misc.
        let receipts = if from.shards != upto.shards {
            self.store
                .receipts_since(&joined, &from.shards, &upto.shards)
                .await?
        } else {
            vec![]
        };
        let account_data = if misc_moved {
            self.store
                .account_data_since(user.as_str(), from.misc, upto.misc)
                .await?
        } else {
            vec![]
        };

        for m in &memberships {
            if m.forgotten || !f.rooms.allows_room(&m.room_id) {
                continue;
            }
            let room_id = RoomId::parse(&m.room_id).map_err(Error::internal)?;
            // Positions in the stream of the room's shard.
            let shard = self.store.shard_of(&m.room_id).await?;
            let (since_pos, upto_pos) = (since.map(|s| s.shard(shard)), upto.shard(shard));
            let membership_is_new = since_pos.is_none_or(|s| m.stream_ordering > s);
            match m.membership.as_str() {
                "join" => {
                    let mut room = Map::new();
                    let initial = since.is_none() || membership_is_new || req.full_state;
                    let newest = changed_rooms.get(&m.room_id).copied();
                    // The room's new events, from the writer's memory when it
                    // holds them all (the usual case for a woken long-poll).
                    let known = match (since_pos, newest) {
                        (Some(s), Some(n)) if !initial => {
                            self.rooms.recent.range(&m.room_id, s, upto_pos, n)
                        }
                        (Some(_), None) if !initial => Some(vec![]),
                        _ => None,
                    };
                    let (timeline, state) = if initial || newest.is_some() {
                        self.room_timeline_and_state(
                            &room_id,
                            user,
                            m,
                            device,
                            since_pos,
                            upto_pos,
                            initial,
                            known.as_deref(),
                            f,
                        )
                        .await?
                    } else {
                        (
                            json!({"events": [], "limited": false, "prev_batch": pagination_token(upto_pos)}),
                            vec![],
                        )
                    };
                    let mut ephemeral = vec![];
                    if !f.ephemeral.excludes_all() {
                        if let Some(t) = self.typing.event_for(&m.room_id, since.map(|s| s.typing))
                            && f.ephemeral.allows_type("m.typing")
                        {
                            ephemeral.push(t);
                        }
                        if let Some(r) = receipt_event(&m.room_id, user.as_str(), &receipts)
                            && f.ephemeral.allows_type("m.receipt")
                        {
                            ephemeral.push(r);
                        }
                    }
                    let room_data: Vec<Value> = account_data
                        .iter()
                        .filter(|a| {
                            a.room_id == m.room_id && f.room_account_data.allows_type(&a.data_type)
                        })
                        .map(|a| json!({"type": a.data_type, "content": a.content}))
                        .collect();
                    let timeline_nonempty =
                        timeline["events"].as_array().is_some_and(|a| !a.is_empty());
                    let interesting = initial
                        || timeline_nonempty
                        || !state.is_empty()
                        || !ephemeral.is_empty()
                        || !room_data.is_empty();
                    if !interesting {
                        continue;
                    }
                    if since.is_some() {
                        has_data = true;
                    }
                    let (notif, highlight) = self
                        .unread_counts(
                            &room_id,
                            user,
                            m,
                            upto_pos,
                            since_pos.map(|s| (s, own_receipt_in(&receipts, &m.room_id, user))),
                            since_pos.zip(known.as_deref()),
                        )
                        .await?;
                    // Like Synapse, the summary is sent when it may have
                    // changed: first sight of the room or a membership change.
                    let members_changed = initial
                        || has_member_event(&timeline["events"])
                        || state.iter().any(is_member_event);
                    if since.is_some() {
                        if membership_is_new {
                            for member in self.store.room_members(&m.room_id, None).await? {
                                if member.membership == "join" {
                                    members_joined.insert(member.user_id);
                                }
                            }
                        }
                        collect_member_changes(
                            timeline["events"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .chain(&state),
                            &mut members_joined,
                            &mut members_left,
                        );
                    }
                    room.insert("timeline".into(), timeline);
                    room.insert("state".into(), json!({"events": state}));
                    room.insert("ephemeral".into(), json!({"events": ephemeral}));
                    room.insert("account_data".into(), json!({"events": room_data}));
                    room.insert(
                        "unread_notifications".into(),
                        json!({"notification_count": notif, "highlight_count": highlight}),
                    );
                    if members_changed {
                        room.insert("summary".into(), self.room_summary(&room_id, user).await?);
                    }
                    join.insert(m.room_id.clone(), Value::Object(room));
                }
                "invite" if membership_is_new => {
                    has_data |= since.is_some();
                    invite.insert(
                        m.room_id.clone(),
                        json!({"invite_state": {"events": self.invite_state(&room_id, m).await?}}),
                    );
                }
                "knock" if membership_is_new => {
                    has_data |= since.is_some();
                    knock.insert(
                        m.room_id.clone(),
                        json!({"knock_state": {"events": self.invite_state(&room_id, m).await?}}),
                    );
                }
                "leave" | "ban"
                    if (since.is_some() && membership_is_new)
                        || (since.is_none() && f.include_leave) =>
                {
                    has_data |= since.is_some();
                    if since.is_some() {
                        for member in self.store.room_members(&m.room_id, None).await? {
                            if member.membership == "join" {
                                members_left.insert(member.user_id);
                            }
                        }
                    }
                    let (timeline, state) = self
                        .room_timeline_and_state(
                            &room_id,
                            user,
                            m,
                            device,
                            since_pos,
                            m.stream_ordering,
                            true,
                            None,
                            f,
                        )
                        .await?;
                    leave.insert(
                        m.room_id.clone(),
                        json!({"timeline": timeline, "state": {"events": state}}),
                    );
                }
                _ => {}
            }
        }

        let mut global_data: Vec<Value> = account_data
            .iter()
            .filter(|a| a.room_id.is_empty() && f.account_data.allows_type(&a.data_type))
            .map(|a| json!({"type": a.data_type, "content": a.content}))
            .collect();
        // Clients read their push rules from the first sync; a user who never
        // changed them has the server's defaults, which are stored nowhere.
        let has_rules = global_data.iter().any(|e| e["type"] == "m.push_rules");
        if since.is_none() && !has_rules && f.account_data.allows_type("m.push_rules") {
            let rules = self.push_rules(user).await?;
            global_data.push(json!({"type": "m.push_rules", "content": {"global": &*rules}}));
        }
        has_data |= since.is_some() && !global_data.is_empty();

        let presence_moved = since.is_none_or(|s| s.presence != upto.presence);
        let presence = if f.presence.excludes_all() || !presence_moved {
            vec![]
        } else {
            let users = self.store.users_sharing_rooms(user.as_str()).await?;
            self.presence.events_for(&users, since.map(|s| s.presence))
        };
        has_data |= since.is_some() && !presence.is_empty();

        let devices = self
            .device_sync(user, device, since.map(|s| s.misc), upto.misc, misc_moved)
            .await?;
        let mut changed = devices.changed;
        changed.extend(members_joined.into_iter().filter(|u| u != user.as_str()));
        let mut left = BTreeSet::new();
        members_left.retain(|u| u != user.as_str() && !changed.contains(u));
        if !members_left.is_empty() {
            let sharing: BTreeSet<String> = self
                .store
                .users_sharing_rooms(user.as_str())
                .await?
                .into_iter()
                .collect();
            left = members_left
                .into_iter()
                .filter(|u| !sharing.contains(u))
                .collect();
        }
        has_data |= since.is_some()
            && (!devices.to_device.is_empty() || !changed.is_empty() || !left.is_empty());
        // A to-device backlog larger than one answer: the token stops where
        // this answer's messages end.
        let mut next = upto.clone();
        if let Some(misc) = devices.misc_upto {
            next.misc = misc;
        }
        let mut body = empty_response(&next);
        body["to_device"] = json!({"events": devices.to_device});
        body["device_lists"] = json!({"changed": changed, "left": left});
        body["device_one_time_keys_count"] = devices.one_time_key_counts;
        body["device_unused_fallback_key_types"] = json!(devices.unused_fallback);
        body["rooms"] = json!({"join": join, "invite": invite, "leave": leave, "knock": knock});
        body["account_data"] = json!({"events": global_data});
        body["presence"] = json!({"events": presence});
        Ok((body, has_data))
    }

    /// Timeline (newest `limit` events up to `upto`, after `since` unless
    /// initial) and the state to send with it.
    #[allow(clippy::too_many_arguments)]
    async fn room_timeline_and_state(
        &self,
        room_id: &RoomId,
        user: &UserId,
        membership: &MembershipRecord,
        device: &str,
        since: Option<i64>,
        upto: i64,
        initial: bool,
        known: Option<&[Arc<StoredEvent>]>,
        f: &SyncFilter,
    ) -> Result<(Value, Vec<Value>)> {
        let limit = f
            .timeline
            .limit
            .unwrap_or(DEFAULT_TIMELINE_LIMIT)
            .clamp(1, 1000);
        let lower = if initial { None } else { since };
        let (events, limited) = match known.filter(|_| !initial) {
            Some(all) => {
                let skip = all.len().saturating_sub(limit);
                let newest: Vec<StoredEvent> = all[skip..].iter().map(|e| (**e).clone()).collect();
                (newest, skip > 0)
            }
            None => {
                let mut events = self
                    .store
                    .room_events(
                        room_id.as_str(),
                        upto,
                        lower,
                        Direction::Backward,
                        (limit + 1) as i64,
                    )
                    .await?;
                let limited = events.len() > limit;
                events.truncate(limit);
                events.reverse();
                (events, limited)
            }
        };
        let events = self
            .filter_visible_as(room_id, user, Some(membership), events)
            .await?;
        let start = events
            .first()
            .map(|e| e.stream_ordering - 1)
            .unwrap_or(upto);
        let prev_batch = pagination_token(start);

        let state_events: Vec<StoredEvent> = if initial {
            let map = self.store.state_at(room_id.as_str(), start).await?;
            let ids: Vec<String> = map.into_values().collect();
            self.store.get_events(&ids).await?
        } else if limited {
            self.store
                .state_changes(room_id.as_str(), since.unwrap_or(0), start)
                .await?
        } else {
            vec![]
        };
        let timeline_senders: BTreeSet<&str> =
            events.iter().map(|e| e.pdu.sender.as_str()).collect();
        let viewer = Some((user, device));
        let state: Vec<Value> = state_events
            .iter()
            .filter(|e| {
                f.state
                    .allows(e.pdu.kind.to_string().as_str(), e.pdu.sender.as_str(), None)
            })
            .filter(|e| {
                !f.state.lazy_load_members
                    || e.pdu.kind.to_string() != "m.room.member"
                    || e.pdu
                        .state_key
                        .as_deref()
                        .is_some_and(|k| k == user.as_str() || timeline_senders.contains(k))
            })
            .map(|e| e.to_client(viewer))
            .collect();
        let timeline: Vec<Value> = events
            .iter()
            .filter(|e| {
                let content = e.pdu.json.get("content");
                f.timeline.allows(
                    e.pdu.kind.to_string().as_str(),
                    e.pdu.sender.as_str(),
                    content,
                )
            })
            .map(|e| e.to_client(viewer))
            .collect();
        Ok((
            json!({"events": timeline, "limited": limited, "prev_batch": prev_batch}),
            state,
        ))
    }

    /// What an invitee or a knocker is shown of the room.
    async fn invite_state(&self, room_id: &RoomId, m: &MembershipRecord) -> Result<Vec<Value>> {
        let mut out = vec![];
        for kind in crate::rooms::INVITE_STATE_TYPES {
            if let Some(e) = self
                .store
                .state_event_at(room_id.as_str(), kind, "", m.stream_ordering)
                .await?
            {
                out.push(e.pdu.to_stripped());
            }
        }
        if let Some(ev) = self.store.get_event(&m.event_id).await? {
            if let Some(inviter) = self
                .store
                .state_event_at(
                    room_id.as_str(),
                    "m.room.member",
                    ev.pdu.sender.as_str(),
                    m.stream_ordering,
                )
                .await?
                && inviter.pdu.sender != ev.pdu.state_key.clone().unwrap_or_default()
            {
                out.push(inviter.pdu.to_stripped());
            }
            // An invite from another server carries what its server showed
            // of the room (this server knows nothing else of it yet).
            if let Some(stripped) = ev
                .pdu
                .json
                .get("unsigned")
                .and_then(|u| {
                    u.get("invite_room_state")
                        .or_else(|| u.get("knock_room_state"))
                })
                .and_then(Value::as_array)
            {
                for e in stripped {
                    let known = out
                        .iter()
                        .any(|o| o["type"] == e["type"] && o["state_key"] == e["state_key"]);
                    if !known {
                        out.push(e.clone());
                    }
                }
            }
            out.push(ev.to_client(None));
        }
        Ok(out)
    }

    async fn room_summary(&self, room_id: &RoomId, user: &UserId) -> Result<Value> {
        let members = self.store.room_members(room_id.as_str(), None).await?;
        let joined = members.iter().filter(|m| m.membership == "join").count();
        let invited = members.iter().filter(|m| m.membership == "invite").count();
        let heroes: Vec<&str> = members
            .iter()
            .filter(|m| {
                (m.membership == "join" || m.membership == "invite") && m.user_id != user.as_str()
            })
            .map(|m| m.user_id.as_str())
            .take(5)
            .collect();
        Ok(
            json!({"m.heroes": heroes, "m.joined_member_count": joined, "m.invited_member_count": invited}),
        )
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
        match ev["content"]["membership"].as_str() {
            Some("join") => {
                left.remove(who);
                joined.insert(who.to_owned());
            }
            Some("leave" | "ban") => {
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
