//! `GET /notifications`: the events that notified the user, newest first,
//! each with whether the user has read it (their `m.read`/`m.read.private`
//! receipt in the room is at or after it).
//!
//! The list is evaluated from the timelines of the user's rooms with the
//! user's current rules, as sync's unread counts are (`unread.rs`): stored
//! notification rows exist only for users with pushers (spec/push.md), and a
//! list read from them would miss what sync counts for everyone else.

use std::collections::HashMap;

use ruma::{UserId, events::room::member::MembershipState};
use serde::Serialize;
use serde_json::Value;

use super::Push;
use crate::{
    Error, Result,
    pdu::StoredEvent,
    rooms::membership_state,
    store::{Direction, MembershipRecord},
};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;
/// Events read per store read while walking a room back.
const SCAN_BATCH: i64 = 200;
/// Events looked at per room and page at most: a room's notifications older
/// than this many of its events (from its newest) are not listed.
const SCAN_PER_ROOM: usize = 2000;

/// Where a notification sits in the list: newest first by `ts`, then by
/// position (which orders the events of one room), then by event id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    ts: i64,
    stream_ordering: i64,
    event_id: String,
}

impl Key {
    fn of(e: &StoredEvent) -> Self {
        Self {
            ts: i64::from(e.pdu.origin_server_ts.get()),
            stream_ordering: e.stream_ordering,
            event_id: e.pdu.event_id.to_string(),
        }
    }

    /// `next_token`: the last key of a page.
    fn token(&self) -> String {
        format!("{}_{}_{}", self.ts, self.stream_ordering, self.event_id)
    }

    fn parse(token: &str) -> Result<Self> {
        let bad = || Error::invalid_param(format!("Invalid 'from' token {token:?}"));
        let mut parts = token.splitn(3, '_');
        let ts = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let stream_ordering = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let event_id = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        Ok(Self {
            ts,
            stream_ordering,
            event_id: event_id.to_owned(),
        })
    }
}

/// One notifying event found while walking the user's rooms.
struct Found {
    key: Key,
    event: StoredEvent,
    actions: Value,
}

/// What a page asks for.
struct Page {
    before: Option<Key>,
    limit: usize,
    only_highlight: bool,
}

impl Page {
    fn wants(&self, key: &Key) -> bool {
        self.before.as_ref().is_none_or(|b| key < b)
    }
}

impl Push {
    /// `from` is a `next_token` from an earlier page; `only` may be
    /// `"highlight"`.
    pub async fn notifications_page(
        &self,
        user: &UserId,
        from: Option<&str>,
        limit: Option<i64>,
        only: Option<&str>,
    ) -> Result<Notifications> {
        let page = Page {
            before: from.filter(|f| !f.is_empty()).map(Key::parse).transpose()?,
            limit: usize::try_from(limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)).unwrap_or(1),
            only_highlight: only.is_some_and(|o| o.contains("highlight")),
        };
        let mut found = vec![];
        for m in self.store.memberships_of_user(user.as_str()).await? {
            match membership_state(&m) {
                MembershipState::Join => {
                    self.joined_room_notifications(user, &m, &page, &mut found)
                        .await?
                }
                MembershipState::Invite => {
                    self.invite_notification(user, &m, &page, &mut found)
                        .await?
                }
                _ => {}
            }
        }
        found.sort_by(|a, b| b.key.cmp(&a.key));
        let more = found.len() > page.limit;
        found.truncate(page.limit);
        let next_token = found.last().filter(|_| more).map(|f| f.key.token());
        let mut read_positions: HashMap<String, i64> = HashMap::new();
        let mut out = Vec::with_capacity(found.len());
        for f in found {
            let room = f.event.pdu.room_id.to_string();
            let read = match read_positions.get(&room) {
                Some(r) => *r,
                None => {
                    let r = self
                        .room_store
                        .read_position(&room, user.as_str())
                        .await?
                        .unwrap_or(i64::MIN);
                    read_positions.insert(room.clone(), r);
                    r
                }
            };
            out.push(Notification {
                actions: f.actions,
                event: f.event.to_client(None),
                profile_tag: None,
                read: f.event.stream_ordering <= read,
                room_id: room,
                ts: f.key.ts,
            });
        }
        Ok(Notifications {
            next_token,
            notifications: out,
        })
    }

    /// The notifications of a room the user is joined to: its events since
    /// the join, newest first, until the page is full for this room, then
    /// the invite that brought the user in (which notified them).
    async fn joined_room_notifications(
        &self,
        user: &UserId,
        m: &MembershipRecord,
        page: &Page,
        found: &mut Vec<Found>,
    ) -> Result<()> {
        let mut from = i64::MAX;
        let mut seen = 0;
        let mut here = 0;
        loop {
            let events = self
                .room_store
                .room_events(
                    &m.room_id,
                    from,
                    Some(m.stream_ordering),
                    Direction::Backward,
                    SCAN_BATCH,
                )
                .await?;
            let reached_join = (events.len() as i64) < SCAN_BATCH;
            seen += events.len();
            from = events.last().map_or(from, |e| e.stream_ordering - 1);
            for e in events {
                here += usize::from(self.consider(user, e, page, found).await?);
            }
            if here >= page.limit || seen >= SCAN_PER_ROOM {
                return Ok(());
            }
            if reached_join {
                break;
            }
        }
        let before_join = self
            .room_store
            .state_event_at(
                &m.room_id,
                "m.room.member",
                user.as_str(),
                m.stream_ordering - 1,
            )
            .await?;
        if let Some(invite) =
            before_join.filter(|e| e.pdu.membership_state() == Some(MembershipState::Invite))
        {
            self.consider(user, invite, page, found).await?;
        }
        Ok(())
    }

    /// A pending invite notified the user. An invite over federation to a
    /// room this server holds no view of has nothing to evaluate with: left
    /// out.
    async fn invite_notification(
        &self,
        user: &UserId,
        m: &MembershipRecord,
        page: &Page,
        found: &mut Vec<Found>,
    ) -> Result<()> {
        let Some(e) = self.room_store.get_event(&m.event_id).await? else {
            return Ok(());
        };
        if let Err(err) = self.consider(user, e, page, found).await {
            tracing::debug!(room = %m.room_id, error = %err, "invite left out of /notifications");
        }
        Ok(())
    }

    /// Adds the event when it belongs on the page and notifies the user;
    /// says whether it did.
    async fn consider(
        &self,
        user: &UserId,
        e: StoredEvent,
        page: &Page,
        found: &mut Vec<Found>,
    ) -> Result<bool> {
        let key = Key::of(&e);
        if e.pdu.sender == user || !page.wants(&key) {
            return Ok(false);
        }
        let Some(room) = self.room_push_ctx(&e.pdu.room_id).await? else {
            return Ok(false);
        };
        let eval = self.evaluate_push(&e, user, &room).await?;
        if !eval.notifies() || (page.only_highlight && !eval.highlights()) {
            return Ok(false);
        }
        found.push(Found {
            key,
            actions: serde_json::to_value(&eval.actions)?,
            event: e,
        });
        Ok(true)
    }
}

/// A page of `GET /notifications`. Hearth's shape: the event goes as the
/// client API shows it and the actions as evaluated, which ruma's typed
/// notification would re-read (and could refuse).
#[derive(Debug, Serialize)]
pub struct Notifications {
    /// Where the next (older) page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    pub notifications: Vec<Notification>,
}

/// One event that notified the user.
#[derive(Debug, Serialize)]
pub struct Notification {
    pub actions: Value,
    pub event: Value,
    /// Never set (Hearth keeps no profile tags), but sent as `null` as
    /// Synapse does: clients and SyTest look for the key.
    pub profile_tag: Option<String>,
    pub read: bool,
    pub room_id: String,
    pub ts: i64,
}
