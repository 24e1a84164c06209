//! Unread notification counts per (room, user).
//!
//! Counting from the read receipt on every sync rescans the whole unread
//! backlog each time a busy room moves. Instead each (room, user) keeps a tally
//! of the events it has already counted; a sync counts only the events that
//! arrived since, and starts over when the read position moves.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{RoomId, UserId};

use crate::{
    Result,
    pdu::StoredEvent,
    push::{Push, RoomCtx},
    store::{Direction, MembershipRecord, RoomStore},
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
}

impl UnreadCache {
    /// Call after a user's push rules changed: their counts start over.
    pub fn forget_user(&self, user: &str) {
        self.tallies.lock().retain(|(_, u), _| u != user);
    }

    fn get(&self, room: &str, user: &str) -> Option<Tally> {
        let map = self.tallies.lock();
        map.get(&(room.to_owned(), user.to_owned())).copied()
    }

    fn put(&self, room: &str, user: &str, t: Tally) {
        let mut map = self.tallies.lock();
        if map.len() >= MAX_TALLIES {
            map.clear();
        }
        map.insert((room.to_owned(), user.to_owned()), t);
    }
}

/// Sync's unread counts, tallied by the users' push rules.
pub struct Unread {
    store: Arc<dyn RoomStore>,
    /// Shared with push, which forgets a user's tallies when their rules
    /// change.
    unread: Arc<UnreadCache>,
    /// Evaluates each event against the user's rules.
    push: Arc<Push>,
}

impl Unread {
    pub(crate) fn new(
        store: Arc<dyn RoomStore>,
        unread: Arc<UnreadCache>,
        push: Arc<Push>,
    ) -> Self {
        Self {
            store,
            unread,
            push,
        }
    }

    /// Events after the user's read receipt (or their join, before any
    /// receipt) up to stream position `upto` that the user's push rules
    /// notify, and those of them the rules highlight.
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
        let counter = Counter {
            store: &*self.store,
            cache: &self.unread,
            push: &self.push,
        };
        counter
            .unread_counts(room_id, user, membership, upto, receipts, known)
            .await
    }
}

/// Counts unread notifications into the shared tallies: for sync (through
/// [`Unread`]) and for push's badge, so both say the same.
pub(crate) struct Counter<'a> {
    pub store: &'a dyn RoomStore,
    pub cache: &'a UnreadCache,
    pub push: &'a Push,
}

impl Counter<'_> {
    /// See [`Unread::unread_counts`].
    pub(crate) async fn unread_counts(
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
            .cache
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
            let mut ctx = None;
            let from = tally.scanned_to;
            for e in events.iter().filter(|e| e.stream_ordering > from) {
                self.tally_event(&mut tally, e, user, &mut ctx).await?;
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
            let mut ctx = None;
            for e in &events {
                self.tally_event(&mut tally, e, user, &mut ctx).await?;
            }
        }
        if cached != Some(tally) {
            self.cache.put(room, who, tally);
        }
        Ok((tally.notifications, tally.highlights))
    }

    /// Counts one event into a tally by the user's push rules. The room's
    /// context is fetched once per batch, and only if someone else sent
    /// something.
    async fn tally_event(
        &self,
        tally: &mut Tally,
        e: &StoredEvent,
        user: &UserId,
        ctx: &mut Option<Option<Arc<RoomCtx>>>,
    ) -> Result<()> {
        if e.pdu.sender == user {
            return Ok(());
        }
        if ctx.is_none() {
            *ctx = Some(self.push.room_push_ctx(&e.pdu.room_id).await?);
        }
        let Some(Some(room)) = ctx.as_ref() else {
            return Ok(());
        };
        let eval = self.push.evaluate_push(e, user, room).await?;
        if eval.notifies() {
            tally.notifications += 1;
            if eval.highlights() {
                tally.highlights += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
