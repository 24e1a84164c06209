//! A room as other servers read it: the state before an event with its
//! auth chain, history walked back through `prev_events`, and events
//! redacted where none of a server's users could see them. Also the room
//! a join through another server brings in. The federation routes parse
//! and serialize; the rules of what a server may read live here.

use std::{
    collections::{BinaryHeap, HashSet},
    sync::Arc,
};

use ruma::{
    CanonicalJsonObject, OwnedServerName, RoomId, RoomVersionId, ServerName,
    events::room::member::MembershipState,
};
use serde_json::Value;

use super::{Rooms, Visibility};
use crate::{
    Error, Result,
    pdu::{Pdu, StoredEvent},
    rooms::{HistoryVisibility, membership_state},
    store::{MainStore, RoomStore},
};

/// What other servers may read of a room.
pub struct FederatedReads {
    store: Arc<dyn RoomStore>,
    /// The room directory and membership index.
    main: Arc<dyn MainStore>,
    server_name: OwnedServerName,
    /// Who is in the room now, and its current state.
    rooms: Arc<Rooms>,
    /// The state at an event.
    visibility: Arc<Visibility>,
}

impl FederatedReads {
    pub(crate) fn new(
        store: Arc<dyn RoomStore>,
        main: Arc<dyn MainStore>,
        server_name: OwnedServerName,
        rooms: Arc<Rooms>,
        visibility: Arc<Visibility>,
    ) -> Self {
        Self {
            store,
            main,
            server_name,
            rooms,
            visibility,
        }
    }

    /// Fails with 404 for an unknown room, 403 unless `server` has users in
    /// the room or its history is world-readable.
    pub async fn require_server_reader(&self, room: &RoomId, server: &ServerName) -> Result<()> {
        self.rooms.require_known_room(room).await?;
        if self
            .rooms
            .room_servers(room)
            .await?
            .iter()
            .any(|s| s == server.as_str())
        {
            return Ok(());
        }
        let world_readable = self
            .rooms
            .room_state_event(room, "m.room.history_visibility", "")
            .await?
            .is_some_and(|p| p.content_value()["history_visibility"] == "world_readable");
        if world_readable {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("{server} is not in room {room}")))
        }
    }

    /// An event by id, or 404.
    pub async fn event_by_id(&self, id: &str) -> Result<StoredEvent> {
        self.store
            .get_event(id)
            .await?
            .ok_or_else(|| Error::not_found("Event not found"))
    }

    async fn event_in_room(&self, room: &RoomId, id: &str) -> Result<StoredEvent> {
        match self.store.get_event(id).await? {
            Some(ev) if ev.pdu.room_id == *room => Ok(ev),
            _ => Err(Error::not_found(format!("Event {id} not found in {room}"))),
        }
    }

    /// The state at (before) an event of `room`, as the spec's `/state`
    /// means it, and the auth chain of that state.
    pub async fn state_before_event(
        &self,
        room: &RoomId,
        event_id: &str,
    ) -> Result<(Vec<Pdu>, Vec<Pdu>)> {
        let ev = self.event_in_room(room, event_id).await?;
        // Built on one event: the state after it. Built on several (joining
        // branches of the graph): the state this server settled on for them,
        // which is the state just before the event here.
        let at = match ev.pdu.prev_events.as_slice() {
            [parent] => match self.store.get_event(parent.as_str()).await? {
                Some(p) => p.stream_ordering,
                None => ev.stream_ordering - 1,
            },
            _ => ev.stream_ordering - 1,
        };
        let state: Vec<Pdu> = self
            .visibility
            .state_events_at(room.as_str(), at)
            .await?
            .into_iter()
            .map(|e| e.pdu)
            .collect();
        let start = state
            .iter()
            .flat_map(|p| p.auth_events.iter().map(ToString::to_string))
            .collect();
        let chain = self.auth_chain(start).await?;
        Ok((state, chain))
    }

    /// The auth chain of one of the room's events (`/event_auth`): every
    /// event its auth events reach, itself excluded.
    pub async fn event_auth_chain(&self, room: &RoomId, event_id: &str) -> Result<Vec<Pdu>> {
        let ev = self.event_in_room(room, event_id).await?;
        let start = ev.pdu.auth_events.iter().map(ToString::to_string).collect();
        self.auth_chain(start).await
    }

    /// What a server joining through us needs after its join `join_id`:
    /// the room's state before the join (with the membership the join
    /// replaced: an invite, a knock), and every event their auth chains
    /// reach.
    pub async fn state_for_joiner(
        &self,
        room: &RoomId,
        join_id: &ruma::EventId,
    ) -> Result<(Vec<Arc<Pdu>>, Vec<Pdu>)> {
        let mut state: Vec<Arc<Pdu>> = self
            .rooms
            .room_state(room)
            .await?
            .into_iter()
            .filter(|p| p.event_id != join_id)
            .collect();
        let mut wanted: Vec<String> = vec![];
        if let Some(join) = self.store.get_event(join_id.as_str()).await? {
            wanted.extend(join.pdu.auth_events.iter().map(ToString::to_string));
            let replaced = join
                .pdu
                .json
                .get("unsigned")
                .and_then(|u| u.get("replaces_state"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(replaced) = replaced
                && let Some(before) = self.store.get_event(&replaced).await?
            {
                state.push(Arc::new(before.pdu));
            }
        }
        wanted.extend(
            state
                .iter()
                .flat_map(|p| p.auth_events.iter().map(ToString::to_string)),
        );
        let chain = self.auth_chain(wanted).await?;
        Ok((state, chain))
    }

    /// Every event reachable through `auth_events` from `start`.
    pub async fn auth_chain(&self, start: Vec<String>) -> Result<Vec<Pdu>> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut todo = start;
        let mut out = vec![];
        while !todo.is_empty() {
            todo.retain(|id| seen.insert(id.clone()));
            if todo.is_empty() {
                break;
            }
            let found = self.store.get_events(&todo).await?;
            todo = found
                .iter()
                .flat_map(|e| e.pdu.auth_events.iter().map(ToString::to_string))
                .collect();
            out.extend(found.into_iter().map(|e| e.pdu));
        }
        Ok(out)
    }

    /// Ancestors of `latest` (events of `room`) that a server lacks,
    /// stopping at `earliest` and `min_depth`; at most `limit`, deepest
    /// first.
    pub async fn missing_events(
        &self,
        room: &RoomId,
        earliest: Vec<String>,
        latest: &[String],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<StoredEvent>> {
        let stop: HashSet<String> = earliest.into_iter().collect();
        // The asking server has the latest events: start from their parents.
        let latest = self.store.get_events(latest).await?;
        if latest.iter().any(|e| e.pdu.room_id != room) {
            return Err(Error::invalid_param(
                "latest_events are not all in this room",
            ));
        }
        let parents: Vec<String> = latest
            .iter()
            .flat_map(|e| e.pdu.prev_events.iter().map(ToString::to_string))
            .collect();
        self.walk_back(room, parents, &stop, limit, min_depth).await
    }

    /// Breadth-first through `prev_events` from `start`, deepest first, never
    /// into `stop` or below `min_depth`; at most `limit` events of `room`.
    pub async fn walk_back(
        &self,
        room: &RoomId,
        start: Vec<String>,
        stop: &HashSet<String>,
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<StoredEvent>> {
        let mut seen: HashSet<String> = stop.clone();
        let mut frontier: BinaryHeap<Frontier> = BinaryHeap::new();
        let mut todo = start;
        let mut out = Vec::new();
        loop {
            todo.retain(|id| seen.insert(id.clone()));
            if !todo.is_empty() {
                for ev in self.store.get_events(&todo).await? {
                    if ev.pdu.room_id == *room && ev.pdu.depth >= min_depth {
                        frontier.push(Frontier(ev));
                    }
                }
            }
            let Some(Frontier(next)) = frontier.pop() else {
                break;
            };
            if out.len() >= limit {
                break;
            }
            todo = next
                .pdu
                .prev_events
                .iter()
                .map(ToString::to_string)
                .collect();
            out.push(next);
        }
        Ok(out)
    }

    /// The events as `server` may have them: whole where one of its users
    /// could see them by the history visibility of their time, otherwise
    /// redacted.
    pub async fn events_as_seen_by(
        &self,
        room: &RoomId,
        server: &ServerName,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<Value>> {
        let version = self
            .main
            .room_version(room.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let version = RoomVersionId::try_from(version.as_str()).map_err(Error::internal)?;
        let rules = version
            .rules()
            .ok_or_else(|| Error::internal(format!("unsupported room version {version}")))?;
        let currently_in = self
            .rooms
            .room_servers(room)
            .await?
            .iter()
            .any(|s| s == server.as_str());
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let sent = ev.pdu.as_sent();
            if self
                .server_could_see(room, server, ev.stream_ordering, currently_in)
                .await?
            {
                out.push(Value::Object(sent));
                continue;
            }
            let obj: CanonicalJsonObject =
                serde_json::from_value(Value::Object(sent)).map_err(Error::internal)?;
            let redacted = ruma::canonical_json::redact(obj, &rules.redaction, None)
                .map_err(Error::internal)?;
            out.push(serde_json::to_value(redacted)?);
        }
        Ok(out)
    }

    /// Whether any user of `server` could read the event at stream position
    /// `at`.
    async fn server_could_see(
        &self,
        room: &RoomId,
        server: &ServerName,
        at: i64,
        currently_in: bool,
    ) -> Result<bool> {
        let hv = self
            .store
            .state_event_at(room.as_str(), "m.room.history_visibility", "", at)
            .await?
            .map(|e| e.pdu.content_value());
        let hv = HistoryVisibility::parse(hv.as_ref());
        match hv {
            HistoryVisibility::WorldReadable => return Ok(true),
            HistoryVisibility::Shared if currently_in => return Ok(true),
            _ => {}
        }
        let suffix = format!(":{server}");
        let state = self.store.state_at(room.as_str(), at).await?;
        let members: Vec<String> = state
            .into_iter()
            .filter(|((kind, key), _)| kind == "m.room.member" && key.ends_with(&suffix))
            .map(|(_, id)| id)
            .collect();
        Ok(self
            .store
            .get_events(&members)
            .await?
            .iter()
            .any(|m| match m.pdu.membership_state() {
                Some(MembershipState::Join) => true,
                Some(MembershipState::Invite) => hv != HistoryVisibility::Joined,
                _ => false,
            }))
    }

    /// Makes a room known here before a join through another server stores
    /// its state: `version` as the resident server gave it, `creator` the
    /// sender of its create event. A room already known is left as it is.
    pub async fn adopt_remote_room(
        &self,
        room: &RoomId,
        version: &RoomVersionId,
        creator: &str,
    ) -> Result<()> {
        if self.main.room_version(room.as_str()).await?.is_none() {
            self.store
                .create_room(room.as_str(), version.as_str(), creator)
                .await?;
        }
        Ok(())
    }

    /// The room's version, or `None` when the room is not known here.
    pub async fn known_room_version(&self, room: &RoomId) -> Result<Option<RoomVersionId>> {
        Ok(self
            .main
            .room_version(room.as_str())
            .await?
            .and_then(|v| RoomVersionId::try_from(v.as_str()).ok()))
    }

    /// Whether `user` is joined to `room` here (`false` when that cannot
    /// be read).
    pub async fn is_joined(&self, room: &RoomId, user: &str) -> bool {
        matches!(
            self.main.membership(room.as_str(), user).await,
            Ok(Some(m)) if membership_state(&m) == MembershipState::Join
        )
    }

    /// Other servers with users in a room `user` is in.
    pub async fn servers_sharing_rooms_with(&self, user: &str) -> Result<Vec<String>> {
        let ours = self.server_name.as_str();
        let servers: std::collections::BTreeSet<String> = self
            .main
            .users_sharing_rooms(user)
            .await?
            .iter()
            .filter_map(|u| ruma::UserId::parse(u.as_str()).ok())
            .map(|u| u.server_name().to_string())
            .filter(|s| s != ours)
            .collect();
        Ok(servers.into_iter().collect())
    }
}

/// Orders the walk's frontier: deepest event first, later stream position
/// breaking ties.
struct Frontier(StoredEvent);

impl PartialEq for Frontier {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Frontier {}
impl PartialOrd for Frontier {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Frontier {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.pdu.depth, self.0.stream_ordering)
            .cmp(&(other.0.pdu.depth, other.0.stream_ordering))
    }
}
