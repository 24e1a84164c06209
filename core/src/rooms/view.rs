//! The writer's view of each room: loaded from the store on first use
//! (taking the room's writer lease when several processes write rooms), kept
//! behind the room's lock, and read through `with_view` by every domain that
//! needs a room's current state. The writer (`writer.rs`) appends through the
//! same lock.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use ruma::{OwnedEventId, RoomId, RoomVersionId, events::TimelineEventType};
use serde_json::{Value, json};
use tracing::warn;

use super::{
    LEASE_TTL_MS, RoomCache, Rooms,
    writer::{joined_servers, room_audience, room_owner, rules_for},
};
use crate::{
    Error, Result,
    ids::now_ms,
    pdu::Pdu,
    store::{Fence, Lease},
};

impl Rooms {
    /// Reads a room's version, current state and newest event. A writer's
    /// view also starts the room's ring of recent events.
    async fn load_room(&self, room_id: &str, fence: Option<Fence>) -> Result<RoomCache> {
        let version = self
            .main
            .room_version(room_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let version = RoomVersionId::try_from(version.as_str()).map_err(Error::internal)?;
        let newest = self
            .store
            .room_events(
                room_id,
                i64::MAX,
                None,
                crate::store::Direction::Backward,
                super::forks::EXTREMITY_WINDOW,
            )
            .await?;
        let writer = fence.is_some() || self.cluster.is_none();
        if writer {
            self.recent
                .start(room_id, newest.first().map_or(0, |e| e.stream_ordering));
        }
        let extremities = super::forks::extremities_of(&newest);
        let mut state = HashMap::new();
        for ev in self.store.current_state(room_id).await? {
            let key = (
                ev.pdu.kind.to_string(),
                ev.pdu.state_key.clone().unwrap_or_default(),
            );
            state.insert(key, Arc::new(ev.pdu));
        }
        Ok(RoomCache {
            version,
            extremities,
            pending_own: None,
            state_serial: 0,
            state,
            generation: self.next_generation(),
            sent: VecDeque::new(),
            fence,
            submitted: VecDeque::new(),
        })
    }

    /// The room's cache behind its held lock, loaded on first use, for
    /// writing: with several processes this takes the room's writer lease,
    /// or fails with `NotWriter` naming the process that holds it.
    pub(super) async fn writable<'a>(
        &self,
        guard: &'a mut Option<RoomCache>,
        room_id: &str,
    ) -> Result<&'a mut RoomCache> {
        if guard.is_none() {
            let fence = self.take_lease(room_id).await?;
            let held = fence.is_some();
            *guard = Some(self.load_room(room_id, fence).await?);
            if held {
                self.hold(room_id);
            }
        }
        guard
            .as_mut()
            .ok_or_else(|| Error::internal("room cache missing"))
    }

    /// With several processes, takes (or renews) the room's writer lease;
    /// `NotWriter` names the process that holds it. The caller marks the room
    /// held (renewed in the background) once it writes under the lease.
    /// With one process there is no lease: `None`.
    pub(super) async fn take_lease(&self, room_id: &str) -> Result<Option<Fence>> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        if let Some(address) = self.writer_elsewhere(room_id) {
            return Err(Error::NotWriter { address });
        }
        let lease = self
            .store
            .acquire_room_lease(room_id, &self.writer_id, &cluster.address, LEASE_TTL_MS)
            .await?;
        match lease {
            Lease::Held { epoch } => {
                self.forget_writer(room_id);
                Ok(Some(Fence {
                    holder: self.writer_id.clone(),
                    epoch,
                }))
            }
            Lease::HeldBy { address } => {
                self.learn_writer(room_id, &address);
                Err(Error::NotWriter { address })
            }
        }
    }

    /// A view of the room for reading: the writer's cache when this process
    /// writes the room, else (another process writes it) a fresh read.
    pub(crate) async fn with_view<T>(
        &self,
        room_id: &str,
        read: impl FnOnce(&RoomCache) -> T,
    ) -> Result<T> {
        let handle = self.handle(room_id);
        let mut guard = handle.lock().await;
        match self.writable(&mut guard, room_id).await {
            Ok(cache) => Ok(read(cache)),
            Err(Error::NotWriter { .. }) => {
                drop(guard);
                Ok(read(&self.load_room(room_id, None).await?))
            }
            Err(e) => Err(e),
        }
    }

    /// The other servers with members joined to the room.
    pub async fn room_servers(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let ours = self.server_name.to_string();
        self.with_view(room_id.as_str(), |c| {
            let mut servers: Vec<String> = joined_servers(c).into_iter().collect();
            servers.retain(|s| *s != ours);
            servers
        })
        .await
    }

    /// The server that orders the room (its creator's).
    pub async fn room_owner_of(&self, room_id: &RoomId) -> Result<Option<String>> {
        self.with_view(room_id.as_str(), room_owner).await
    }

    /// The membership event (join or leave) another server's user would
    /// send through this server (`make_join`, `make_leave`): built on the
    /// room's newest event, checked against current state. Returns it with
    /// the room version.
    pub async fn member_template(
        &self,
        room_id: &RoomId,
        user: &ruma::UserId,
        membership: &str,
    ) -> Result<(Value, RoomVersionId)> {
        let (version, state, prev) = self
            .with_view(room_id.as_str(), |c| {
                (c.version.clone(), c.state.clone(), c.next_prev_events())
            })
            .await?;
        let rules = rules_for(&version)?;
        let content = json!({"membership": membership});
        let content_raw = serde_json::value::to_raw_value(&content)?;
        let kind = TimelineEventType::RoomMember;
        let auth_types = ruma::state_res::auth_types_for_event(
            &kind,
            user,
            Some(user.as_str()),
            &content_raw,
            &rules.authorization,
        )
        .map_err(Error::BadJson)?;
        let mut auth_events: Vec<String> = auth_types
            .iter()
            .filter_map(|(t, sk)| state.get(&(t.to_string(), sk.clone())))
            .map(|p| p.event_id.to_string())
            .collect();
        auth_events.sort();
        auth_events.dedup();
        let (prev_events, depth) = prev.ok_or_else(|| Error::not_found("Unknown room"))?;
        let template = json!({
            "auth_events": auth_events,
            "content": content,
            "depth": depth,
            "origin_server_ts": now_ms(),
            "prev_events": prev_events,
            "room_id": room_id,
            "sender": user,
            "state_key": user,
            "type": "m.room.member",
        });
        // Would it pass? Checked on a stand-in id: the joining server signs
        // the real one.
        let Value::Object(map) = template.clone() else {
            return Err(Error::internal("template is not an object"));
        };
        let stand_in = OwnedEventId::try_from("$stand-in").map_err(Error::internal)?;
        let probe = Pdu::from_json(stand_in, map)?;
        ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, &probe, |t, sk| {
            state
                .get(&(t.to_string(), sk.to_owned()))
                .map(|p| p.as_ref())
        })
        .map_err(|e| Error::Forbidden(format!("You may not {membership} this room: {e}")))?;
        Ok((template, version))
    }

    /// Current state of a room, from the writer's cache.
    pub async fn room_state(&self, room_id: &RoomId) -> Result<Vec<Arc<Pdu>>> {
        self.with_view(room_id.as_str(), |c| c.state.values().cloned().collect())
            .await
    }

    /// The room as another server's knocking user is shown it (a knock's
    /// answer): its create event, join rules, name, avatar, alias,
    /// encryption, topic, as full PDUs (clients get them stripped).
    pub async fn room_state_shown(&self, room_id: &RoomId) -> Result<Vec<Value>> {
        self.with_view(room_id.as_str(), |c| {
            super::INVITE_STATE_TYPES
                .iter()
                .filter_map(|t| c.state.get(&((*t).to_owned(), String::new())))
                .map(|p| Value::Object(p.as_sent()))
                .collect()
        })
        .await
    }

    pub async fn room_state_event(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<Arc<Pdu>>> {
        self.with_view(room_id.as_str(), |c| {
            c.state
                .get(&(kind.to_owned(), state_key.to_owned()))
                .cloned()
        })
        .await
    }

    pub async fn room_version_of(&self, room_id: &RoomId) -> Result<RoomVersionId> {
        let v = self
            .main
            .room_version(room_id.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        RoomVersionId::try_from(v.as_str()).map_err(Error::internal)
    }

    /// Drops the writer's view of a room if it is still the one an event the
    /// store refused was built on; the next event reloads it.
    pub(crate) async fn forget_room_view(&self, room_id: &RoomId, generation: u64) {
        let handle = self.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        if guard.as_ref().is_some_and(|c| c.generation == generation) {
            *guard = None;
            self.release(room_id.as_str());
        }
    }

    /// Keeps this process's room leases alive; a room whose lease was lost
    /// (this process stalled past it) drops its view, and its next send goes
    /// to the new holder.
    pub(crate) fn spawn_lease_renewal(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            loop {
                if !tasks
                    .sleep(Duration::from_millis(LEASE_TTL_MS as u64 / 3))
                    .await
                {
                    return;
                }
                let Some(h) = weak.upgrade() else { return };
                let rooms = h.held();
                if rooms.is_empty() {
                    continue;
                }
                let kept = match h
                    .store
                    .renew_room_leases(&rooms, &h.writer_id, LEASE_TTL_MS)
                    .await
                {
                    Ok(kept) => kept,
                    Err(e) => {
                        warn!("could not renew room leases: {e}");
                        continue;
                    }
                };
                for room in rooms.iter().filter(|r| !kept.contains(r)) {
                    warn!(room = %room, "room writer lease lost");
                    let handle = h.handle(room);
                    let mut guard = handle.lock().await;
                    *guard = None;
                    h.release(room);
                }
            }
        });
    }

    /// Wakes the syncs of a room's members (typing, receipts).
    pub async fn notify_room(&self, room_id: &RoomId) {
        // A room that cannot be loaded still must not leave syncs asleep.
        match self.with_view(room_id.as_str(), room_audience).await {
            Ok(audience) => self
                .notifier
                .notify_users(audience.iter().map(String::as_str)),
            Err(_) => self.notifier.notify(),
        }
    }

    /// A user's power level in a room, honouring v12's privileged creators.
    pub async fn power_of(&self, room_id: &RoomId, user: &ruma::UserId) -> Result<i64> {
        let rules = rules_for(&self.room_version_of(room_id).await?)?;
        self.with_view(room_id.as_str(), |c| {
            super::redactions::power_in(&c.state, &rules, user)
        })
        .await
    }
}
