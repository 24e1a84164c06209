//! The rooms part of a sync pass: each room the user is in, invited to,
//! knocking on or has left, with its timeline, state and the rest.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Value, json};

use super::{
    DEFAULT_TIMELINE_LIMIT, MAX_TIMELINE_LIMIT, MAX_TIMELINE_PAGES, collect_member_changes,
    has_member_event, is_member_event, own_receipt_in, pagination_token, pass::Pass, receipt_event,
};
use crate::{
    Error, Result,
    pdu::StoredEvent,
    rooms::membership_state,
    store::{Direction, MembershipRecord},
};

/// Positions in the stream of a room's shard: the request's (none for an
/// initial sync) and the current one.
#[derive(Clone, Copy)]
struct Window {
    since: Option<i64>,
    upto: i64,
}

/// Which events a room's timeline covers.
#[derive(Clone, Copy)]
struct Range {
    since: Option<i64>,
    upto: i64,
    /// The room is new to the client: its newest events and full state.
    initial: bool,
}

impl super::Syncer {
    /// Adds one of the user's rooms to the pass, in the section its
    /// membership puts it.
    pub(super) async fn sync_room(&self, pass: &mut Pass<'_>, m: &MembershipRecord) -> Result<()> {
        let room_id = RoomId::parse(&m.room_id).map_err(Error::internal)?;
        let shard = self.store.shard_of(&m.room_id).await?;
        let w = Window {
            since: pass.since().map(|s| s.shard(shard)),
            upto: pass.upto.shard(shard),
        };
        let is_new = w.since.is_none_or(|s| m.stream_ordering > s);
        let incremental = pass.incremental();
        match membership_state(m) {
            MembershipState::Join => {
                // A member event after `since` that leaves the user joined
                // (a new displayname or avatar) does not make the room new;
                // a join after a leave does.
                let newly_joined = is_new
                    && (!self.joined_at(m, w.since).await?
                        || !self.joined_at(m, Some(m.stream_ordering - 1)).await?);
                self.joined_room(pass, m, &room_id, w, newly_joined).await?
            }
            MembershipState::Invite if is_new => {
                if self.invited_by_ignored(pass, m).await? {
                    return Ok(());
                }
                pass.has_data |= incremental;
                let events = self.invite_state(&room_id, m).await?;
                let room = json!({"invite_state": {"events": events}});
                pass.invite.insert(m.room_id.clone(), room);
            }
            MembershipState::Knock if is_new => {
                pass.has_data |= incremental;
                let events = self.invite_state(&room_id, m).await?;
                let room = json!({"knock_state": {"events": events}});
                pass.knock.insert(m.room_id.clone(), room);
            }
            MembershipState::Leave | MembershipState::Ban
                if (incremental && is_new) || (!incremental && pass.filter().include_leave) =>
            {
                self.left_room(pass, m, &room_id, w).await?
            }
            _ => {}
        }
        Ok(())
    }

    async fn joined_room(
        &self,
        pass: &mut Pass<'_>,
        m: &MembershipRecord,
        room_id: &RoomId,
        w: Window,
        is_new: bool,
    ) -> Result<()> {
        let initial = !pass.incremental() || is_new || pass.req.full_state;
        let newest = pass.changed_rooms.get(&m.room_id).copied();
        // The room's new events, from the writer's memory when it holds them
        // all (the usual case for a woken long-poll).
        let known = match (w.since, newest) {
            (Some(s), Some(n)) if !initial => self.rooms.recent.range(&m.room_id, s, w.upto, n),
            (Some(_), None) if !initial => Some(vec![]),
            _ => None,
        };
        let (timeline, state) = if initial || newest.is_some() {
            let range = Range {
                since: w.since,
                upto: w.upto,
                initial,
            };
            self.room_timeline_and_state(pass, room_id, m, range, known.as_deref())
                .await?
        } else {
            let empty =
                json!({"events": [], "limited": false, "prev_batch": pagination_token(w.upto)});
            (empty, vec![])
        };
        let ephemeral = self.room_ephemeral(pass, &m.room_id);
        let room_data = room_account_data(pass, &m.room_id);
        let timeline_nonempty = timeline["events"].as_array().is_some_and(|a| !a.is_empty());
        let interesting = initial
            || timeline_nonempty
            || !state.is_empty()
            || !ephemeral.is_empty()
            || !room_data.is_empty();
        if !interesting {
            return Ok(());
        }
        pass.has_data |= pass.incremental();
        let receipts = w
            .since
            .map(|s| (s, own_receipt_in(&pass.receipts, &m.room_id, pass.user)));
        let (notif, highlight) = self
            .unread
            .unread_counts(
                room_id,
                pass.user,
                m,
                w.upto,
                receipts,
                w.since.zip(known.as_deref()),
            )
            .await?;
        // Like Synapse, the summary is sent when it may have changed: first
        // sight of the room or a membership change.
        let members_changed =
            initial || has_member_event(&timeline["events"]) || state.iter().any(is_member_event);
        if pass.incremental() {
            self.note_member_changes(pass, m, is_new, &timeline, &state)
                .await?;
        }
        let mut room = json!({
            "timeline": timeline,
            "state": {"events": state},
            "ephemeral": {"events": ephemeral},
            "account_data": {"events": room_data},
            "unread_notifications": {"notification_count": notif, "highlight_count": highlight},
        });
        if members_changed {
            room["summary"] = self.room_summary(room_id, pass.user).await?;
        }
        pass.join.insert(m.room_id.clone(), room);
        Ok(())
    }

    /// Typing and receipts of a joined room, as the filter allows.
    fn room_ephemeral(&self, pass: &Pass<'_>, room: &str) -> Vec<Value> {
        let f = &pass.filter().ephemeral;
        let mut out = vec![];
        if f.excludes_all() {
            return out;
        }
        if let Some(t) = self
            .ephemeral
            .typing
            .event_for(room, pass.since().map(|s| s.typing))
            && f.allows_type("m.typing")
        {
            out.push(t);
        }
        if let Some(r) = receipt_event(room, pass.user.as_str(), &pass.receipts)
            && f.allows_type("m.receipt")
        {
            out.push(r);
        }
        out
    }

    /// Records whose devices the user may now see or no longer share: a room
    /// joined since the last sync brings all its members; otherwise the
    /// membership events the answer carries.
    async fn note_member_changes(
        &self,
        pass: &mut Pass<'_>,
        m: &MembershipRecord,
        is_new: bool,
        timeline: &Value,
        state: &[Value],
    ) -> Result<()> {
        if is_new {
            for member in self.main.room_members(&m.room_id, None).await? {
                if membership_state(&member) == MembershipState::Join {
                    pass.members_joined.insert(member.user_id);
                }
            }
        }
        let events = timeline["events"].as_array().into_iter().flatten();
        collect_member_changes(
            events.chain(state),
            &mut pass.members_joined,
            &mut pass.members_left,
        );
        Ok(())
    }

    /// A room the user left or was banned from: its timeline up to that
    /// moment.
    async fn left_room(
        &self,
        pass: &mut Pass<'_>,
        m: &MembershipRecord,
        room_id: &RoomId,
        w: Window,
    ) -> Result<()> {
        pass.has_data |= pass.incremental();
        if pass.incremental() {
            for member in self.main.room_members(&m.room_id, None).await? {
                if membership_state(&member) == MembershipState::Join {
                    pass.members_left.insert(member.user_id);
                }
            }
        }
        // A room the client saw joined at `since` continues from there, up
        // to and including the user's leave; one it never saw joined (an
        // invite rejected, a join and leave in one gap) is sent whole.
        let range = Range {
            since: w.since,
            upto: m.stream_ordering,
            initial: pass.req.full_state || !self.joined_at(m, w.since).await?,
        };
        let (timeline, state) = self
            .room_timeline_and_state(pass, room_id, m, range, None)
            .await?;
        let room = json!({"timeline": timeline, "state": {"events": state}});
        pass.leave.insert(m.room_id.clone(), room);
        Ok(())
    }

    /// Whether the user of `m` was joined to its room at stream position
    /// `at` (never, with no position: an initial sync).
    async fn joined_at(&self, m: &MembershipRecord, at: Option<i64>) -> Result<bool> {
        let Some(at) = at else { return Ok(false) };
        Ok(self
            .store
            .state_event_at(&m.room_id, "m.room.member", &m.user_id, at)
            .await?
            .is_some_and(|e| e.pdu.membership_state() == Some(MembershipState::Join)))
    }

    /// Timeline (the newest `limit` events up to `range.upto`, after
    /// `range.since` unless initial) and the state to send with it.
    async fn room_timeline_and_state(
        &self,
        pass: &Pass<'_>,
        room_id: &RoomId,
        membership: &MembershipRecord,
        range: Range,
        known: Option<&[Arc<StoredEvent>]>,
    ) -> Result<(Value, Vec<Value>)> {
        let (events, mut limited) = self
            .timeline_events(pass, room_id, membership, range, known)
            .await?;
        if range.initial && pass.incremental() && !pass.req.full_state {
            // Like Synapse: a room new to the client since its last sync
            // has history it never had before the timeline, a gap.
            limited |= events
                .first()
                .is_some_and(|e| e.pdu.kind.to_string() != "m.room.create");
        }
        let start = events
            .first()
            .map(|e| e.stream_ordering - 1)
            .unwrap_or(range.upto);
        let state_events: Vec<StoredEvent> = if range.initial {
            self.visibility
                .state_events_at(room_id.as_str(), start)
                .await?
        } else if limited {
            self.store
                .state_changes(room_id.as_str(), range.since.unwrap_or(0), start)
                .await?
        } else {
            vec![]
        };
        let state = self
            .room_state_part(pass, room_id, range, start, &events, state_events)
            .await?;
        let viewer = Some((pass.user, pass.device));
        let ignored = match events.is_empty() {
            true => None,
            false => Some(self.ignored(pass).await?),
        };
        let timeline: Vec<Value> = events
            .iter()
            .filter(|e| !from_ignored(e, ignored))
            .map(|e| e.to_client(viewer))
            .collect();
        let prev_batch = pagination_token(start);
        Ok((
            json!({"events": timeline, "limited": limited, "prev_batch": prev_batch}),
            state,
        ))
    }

    /// The newest `limit` events of the range the user may see and the
    /// timeline filter allows, oldest first, and whether older such events
    /// were left out: the limit counts what the filter keeps, so older
    /// pages are read until it is reached. From `known` (the writer's
    /// memory) when given.
    async fn timeline_events(
        &self,
        pass: &Pass<'_>,
        room_id: &RoomId,
        membership: &MembershipRecord,
        range: Range,
        known: Option<&[Arc<StoredEvent>]>,
    ) -> Result<(Vec<StoredEvent>, bool)> {
        let limit = pass
            .filter()
            .timeline
            .limit
            .unwrap_or(DEFAULT_TIMELINE_LIMIT)
            .min(MAX_TIMELINE_LIMIT);
        if let Some(all) = known.filter(|_| !range.initial) {
            let all = all.iter().map(|e| (**e).clone()).collect();
            let mut kept = self.readable(pass, room_id, membership, all).await?;
            let skip = kept.len().saturating_sub(limit);
            kept.drain(..skip);
            return Ok((kept, skip > 0));
        }
        let lower = if range.initial { None } else { range.since };
        // Newest first while reading back.
        let mut kept = vec![];
        let (mut from, mut batch, mut more) = (range.upto, limit + 1, true);
        for _ in 0..MAX_TIMELINE_PAGES {
            let page = self
                .store
                .room_events(
                    room_id.as_str(),
                    from,
                    lower,
                    Direction::Backward,
                    batch as i64,
                )
                .await?;
            let exhausted = page.len() < batch;
            if let Some(oldest) = page.last() {
                from = oldest.stream_ordering - 1;
            }
            kept.extend(self.readable(pass, room_id, membership, page).await?);
            more = !exhausted;
            if kept.len() > limit || exhausted {
                break;
            }
            batch = (batch * 2).min(MAX_TIMELINE_LIMIT);
        }
        // Pages left unread (the loop's bound) count as left out too.
        let limited = kept.len() > limit || more;
        kept.truncate(limit);
        kept.reverse();
        Ok((kept, limited))
    }

    /// The room's `state` part: the state events the filter allows; with
    /// lazy-loading, the members of the timeline's senders as of its start,
    /// each sent once per device unless the filter asks for redundant ones.
    async fn room_state_part(
        &self,
        pass: &Pass<'_>,
        room_id: &RoomId,
        range: Range,
        start: i64,
        timeline: &[StoredEvent],
        mut state: Vec<StoredEvent>,
    ) -> Result<Vec<Value>> {
        let f = &pass.filter().state;
        if !f.lazy_load_members {
            return Ok(visible_state(pass, timeline, &state, range.initial));
        }
        if !range.initial {
            // `state` holds the gap's changes, members included (the client
            // was sent none of them). The timeline's senders the client may
            // never have been sent: their member events at its start.
            let known: BTreeSet<String> = state
                .iter()
                .filter(|e| e.pdu.kind.to_string() == "m.room.member")
                .filter_map(|e| e.pdu.state_key.clone())
                .collect();
            let senders: BTreeSet<&str> = timeline.iter().map(|e| e.pdu.sender.as_str()).collect();
            for sender in senders.into_iter().filter(|s| !known.contains(*s)) {
                if let Some(e) = self
                    .store
                    .state_event_at(room_id.as_str(), "m.room.member", sender, start)
                    .await?
                {
                    state.push(e);
                }
            }
        }
        let mut state = visible_state(pass, timeline, &state, range.initial);
        if !f.include_redundant_members {
            let sent_members = timeline
                .iter()
                .filter(|e| e.pdu.kind.to_string() == "m.room.member")
                .map(|e| e.pdu.event_id.to_string());
            self.lazy_members
                .dedupe(pass.user, pass.device, &mut state, sent_members);
        }
        Ok(state)
    }

    /// The events the user may see and the timeline filter allows, in the
    /// order given.
    async fn readable(
        &self,
        pass: &Pass<'_>,
        room_id: &RoomId,
        membership: &MembershipRecord,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<StoredEvent>> {
        let f = &pass.filter().timeline;
        let visible = self
            .visibility
            .filter_visible_as(room_id, pass.user, Some(membership), events)
            .await?;
        Ok(visible
            .into_iter()
            .filter(|e| {
                let content = e.pdu.json.get("content");
                f.allows(
                    e.pdu.kind.to_string().as_str(),
                    e.pdu.sender.as_str(),
                    content,
                )
            })
            .collect())
    }

    /// Whether the user's pending invite came from someone they ignore
    /// (the spec: such invites are not sent to clients).
    async fn invited_by_ignored(&self, pass: &Pass<'_>, m: &MembershipRecord) -> Result<bool> {
        let Some(invite) = self.store.get_event(&m.event_id).await? else {
            return Ok(false);
        };
        Ok(self
            .ignored(pass)
            .await?
            .contains(invite.pdu.sender.as_str()))
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
        let members = self.main.room_members(room_id.as_str(), None).await?;
        let joined = members
            .iter()
            .filter(|m| membership_state(m) == MembershipState::Join)
            .count();
        let invited = members
            .iter()
            .filter(|m| membership_state(m) == MembershipState::Invite)
            .count();
        let heroes: Vec<&str> = members
            .iter()
            .filter(|m| {
                (membership_state(m) == MembershipState::Join
                    || membership_state(m) == MembershipState::Invite)
                    && m.user_id != user.as_str()
            })
            .map(|m| m.user_id.as_str())
            .take(5)
            .collect();
        let mut summary =
            json!({"m.joined_member_count": joined, "m.invited_member_count": invited});
        // Heroes name a room that has no name of its own (spec: required
        // when m.room.name and m.room.canonical_alias are unset or empty);
        // a named room goes without, as Synapse sends it.
        if !self.room_is_named(room_id).await? {
            summary["m.heroes"] = json!(heroes);
        }
        Ok(summary)
    }

    /// Whether the room has a non-empty name or canonical alias.
    async fn room_is_named(&self, room_id: &RoomId) -> Result<bool> {
        for (kind, field) in [("m.room.name", "name"), ("m.room.canonical_alias", "alias")] {
            let event = self.rooms.room_state_event(room_id, kind, "").await?;
            let named = event.is_some_and(|e| {
                e.json
                    .get("content")
                    .and_then(|c| c.get(field))
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty())
            });
            if named {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A timeline event from someone the user ignores; state events still go
/// (the spec), so the room's state stays the same for everyone.
fn from_ignored(e: &StoredEvent, ignored: Option<&BTreeSet<String>>) -> bool {
    e.pdu.state_key.is_none() && ignored.is_some_and(|i| i.contains(e.pdu.sender.as_str()))
}

/// The room's account data the filter allows.
fn room_account_data(pass: &Pass<'_>, room: &str) -> Vec<Value> {
    let f = &pass.filter().room_account_data;
    pass.account_data
        .iter()
        .filter(|a| a.room_id == room && f.allows_type(&a.data_type))
        .map(|a| json!({"type": a.data_type, "content": a.content}))
        .collect()
}

/// The state events the filter allows; with lazy-loading of a whole room's
/// state (`whole`), only the members who sent something in the timeline
/// and the user (a gap's member changes are all kept).
fn visible_state(
    pass: &Pass<'_>,
    timeline: &[StoredEvent],
    state: &[StoredEvent],
    whole: bool,
) -> Vec<Value> {
    let f = &pass.filter().state;
    let user = pass.user.as_str();
    let senders: BTreeSet<&str> = timeline.iter().map(|e| e.pdu.sender.as_str()).collect();
    let viewer: Option<(&UserId, &str)> = Some((pass.user, pass.device));
    state
        .iter()
        .filter(|e| f.allows(e.pdu.kind.to_string().as_str(), e.pdu.sender.as_str(), None))
        .filter(|e| {
            !f.lazy_load_members
                || !whole
                || e.pdu.kind.to_string() != "m.room.member"
                || e.pdu
                    .state_key
                    .as_deref()
                    .is_some_and(|k| k == user || senders.contains(k))
        })
        .map(|e| e.to_client(viewer))
        .collect()
}
