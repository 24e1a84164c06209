//! Reading a room's past for another server: `/state`, `/state_ids`,
//! `/backfill` and `/get_missing_events`. A server asks only about rooms it
//! has users in (or world-readable ones); events its users could not see by
//! history visibility are returned redacted, so the event graph stays whole.

use std::{
    collections::{BinaryHeap, HashSet},
    sync::Arc,
};

use axum::{
    Extension, Json,
    extract::{Path, RawQuery, State},
};
use hearth_core::{
    Error,
    ids::now_ms,
    pdu::{Pdu, StoredEvent},
    rooms::HistoryVisibility,
};
use hearth_http_common::error::ApiError;
use ruma::{CanonicalJsonObject, RoomId, ServerName};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Federation, auth::Origin, pdu::rules_of};

/// Most events one `/backfill` or `/get_missing_events` returns.
const MAX_EVENTS: usize = 100;
/// `/get_missing_events` without a limit.
const DEFAULT_MISSING: usize = 10;

/// `GET /state_ids/{roomId}?event_id=`: the ids of the room's state before
/// the event, and of their auth chain.
pub(crate) async fn state_ids(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (state, chain) = state_before(&fed, &origin, &room_id, query).await?;
    Ok(Json(json!({
        "pdu_ids": state.iter().map(|p| p.event_id.as_str()).collect::<Vec<_>>(),
        "auth_chain_ids": chain.iter().map(|p| p.event_id.as_str()).collect::<Vec<_>>(),
    })))
}

/// `GET /state/{roomId}?event_id=`: `/state_ids` with the events themselves.
pub(crate) async fn state(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (state, chain) = state_before(&fed, &origin, &room_id, query).await?;
    Ok(Json(json!({
        "pdus": state.iter().map(|p| Value::Object(p.as_sent())).collect::<Vec<_>>(),
        "auth_chain": chain.iter().map(|p| Value::Object(p.as_sent())).collect::<Vec<_>>(),
    })))
}

/// The state at (before) an event, as the spec's `/state` means it, and the
/// auth chain of that state.
async fn state_before(
    fed: &Federation,
    origin: &ServerName,
    room_id: &str,
    query: Option<String>,
) -> Result<(Vec<Pdu>, Vec<Pdu>), ApiError> {
    let room = parse_room(room_id)?;
    let event_id = query_values(query.as_deref(), "event_id")
        .into_iter()
        .next()
        .ok_or_else(|| Error::MissingParam("event_id is required".into()))?;
    require_reader(fed, &room, origin).await?;
    let ev = event_in_room(fed, &room, &event_id).await?;
    // Built on one event: the state after it. Built on several (joining
    // branches of the graph): the state this server settled on for them,
    // which is the state just before the event here.
    let at = match ev.pdu.prev_events.as_slice() {
        [parent] => match fed.hearth.store.get_event(parent.as_str()).await? {
            Some(p) => p.stream_ordering,
            None => ev.stream_ordering - 1,
        },
        _ => ev.stream_ordering - 1,
    };
    let ids = fed.hearth.store.state_at(room.as_str(), at).await?;
    let ids: Vec<String> = ids.into_values().collect();
    let state: Vec<Pdu> = fed
        .hearth
        .store
        .get_events(&ids)
        .await?
        .into_iter()
        .map(|e| e.pdu)
        .collect();
    let start = state
        .iter()
        .flat_map(|p| p.auth_events.iter().map(ToString::to_string))
        .collect();
    let chain = crate::membership::auth_chain(fed, start).await?;
    Ok((state, chain))
}

/// `GET /backfill/{roomId}?v=…&limit=`: the named events and their
/// ancestors through `prev_events`, newest (deepest) first.
pub(crate) async fn backfill(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let room = parse_room(&room_id)?;
    let from = query_values(query.as_deref(), "v");
    if from.is_empty() {
        return Err(Error::MissingParam("at least one v (event id) is required".into()).into());
    }
    let limit = query_values(query.as_deref(), "limit")
        .first()
        .map(|l| l.parse::<usize>())
        .transpose()
        .map_err(|_| Error::invalid_param("limit must be a number"))?
        .ok_or_else(|| Error::MissingParam("limit is required".into()))?
        .min(MAX_EVENTS);
    require_reader(&fed, &room, &origin).await?;
    let found = walk_back(&fed, &room, from, &HashSet::new(), limit, 0).await?;
    let pdus = as_seen_by(&fed, &room, &origin, found).await?;
    tracing::debug!(room = %room, %origin, events = pdus.len(), "backfill");
    Ok(Json(json!({
        "origin": fed.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
    })))
}

#[derive(Deserialize)]
pub(crate) struct MissingEvents {
    #[serde(default)]
    earliest_events: Vec<String>,
    latest_events: Vec<String>,
    limit: Option<usize>,
    #[serde(default)]
    min_depth: u64,
}

/// `POST /get_missing_events/{roomId}`: ancestors of `latest_events` the
/// asking server lacks, stopping at `earliest_events`, oldest first.
pub(crate) async fn get_missing_events(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room_id): Path<String>,
    Json(body): Json<MissingEvents>,
) -> Result<Json<Value>, ApiError> {
    let room = parse_room(&room_id)?;
    require_reader(&fed, &room, &origin).await?;
    let limit = body.limit.unwrap_or(DEFAULT_MISSING).min(MAX_EVENTS);
    let stop: HashSet<String> = body.earliest_events.into_iter().collect();
    // The asking server has the latest events: start from their parents.
    let latest = fed.hearth.store.get_events(&body.latest_events).await?;
    if latest.iter().any(|e| e.pdu.room_id != room) {
        return Err(Error::invalid_param("latest_events are not all in this room").into());
    }
    let parents: Vec<String> = latest
        .iter()
        .flat_map(|e| e.pdu.prev_events.iter().map(ToString::to_string))
        .collect();
    let mut found = walk_back(&fed, &room, parents, &stop, limit, body.min_depth).await?;
    found.reverse();
    let events = as_seen_by(&fed, &room, &origin, found).await?;
    Ok(Json(json!({"events": events})))
}

/// Breadth-first through `prev_events` from `start`, deepest first, never
/// into `stop` or below `min_depth`; at most `limit` events of `room`.
async fn walk_back(
    fed: &Federation,
    room: &RoomId,
    start: Vec<String>,
    stop: &HashSet<String>,
    limit: usize,
    min_depth: u64,
) -> Result<Vec<StoredEvent>, Error> {
    let mut seen: HashSet<String> = stop.clone();
    let mut frontier: BinaryHeap<Frontier> = BinaryHeap::new();
    let mut todo = start;
    let mut out = Vec::new();
    loop {
        todo.retain(|id| seen.insert(id.clone()));
        if !todo.is_empty() {
            for ev in fed.hearth.store.get_events(&todo).await? {
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

/// The events as `server` may have them: whole where one of its users could
/// see them by the history visibility of their time, otherwise redacted.
async fn as_seen_by(
    fed: &Federation,
    room: &RoomId,
    server: &ServerName,
    events: Vec<StoredEvent>,
) -> Result<Vec<Value>, Error> {
    let version = fed
        .hearth
        .store
        .room_version(room.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    let version = ruma::RoomVersionId::try_from(version.as_str()).map_err(Error::internal)?;
    let rules = rules_of(&version).map_err(|e| Error::internal(e.to_string()))?;
    let currently_in = fed
        .hearth
        .room_servers(room)
        .await?
        .iter()
        .any(|s| s == server.as_str());
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let sent = ev.pdu.as_sent();
        if server_could_see(fed, room, server, ev.stream_ordering, currently_in).await? {
            out.push(Value::Object(sent));
            continue;
        }
        let obj: CanonicalJsonObject =
            serde_json::from_value(Value::Object(sent)).map_err(Error::internal)?;
        let redacted =
            ruma::canonical_json::redact(obj, &rules.redaction, None).map_err(Error::internal)?;
        out.push(serde_json::to_value(redacted)?);
    }
    Ok(out)
}

/// Whether any user of `server` could read the event at stream position `at`.
async fn server_could_see(
    fed: &Federation,
    room: &RoomId,
    server: &ServerName,
    at: i64,
    currently_in: bool,
) -> Result<bool, Error> {
    let store = &fed.hearth.store;
    let hv = store
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
    let state = store.state_at(room.as_str(), at).await?;
    let members: Vec<String> = state
        .into_iter()
        .filter(|((kind, key), _)| kind == "m.room.member" && key.ends_with(&suffix))
        .map(|(_, id)| id)
        .collect();
    Ok(store
        .get_events(&members)
        .await?
        .iter()
        .any(|m| match m.pdu.membership() {
            Some("join") => true,
            Some("invite") => hv != HistoryVisibility::Joined,
            _ => false,
        }))
}

/// Fails with 403 unless `server` has users in the room or its history is
/// world-readable.
pub(crate) async fn require_reader(
    fed: &Federation,
    room: &RoomId,
    server: &ServerName,
) -> Result<(), Error> {
    if fed
        .hearth
        .store
        .room_version(room.as_str())
        .await?
        .is_none()
    {
        return Err(Error::not_found("Unknown room"));
    }
    if fed
        .hearth
        .room_servers(room)
        .await?
        .iter()
        .any(|s| s == server.as_str())
    {
        return Ok(());
    }
    let world_readable = fed
        .hearth
        .room_state_event(room, "m.room.history_visibility", "")
        .await?
        .is_some_and(|p| p.content_value()["history_visibility"] == "world_readable");
    if world_readable {
        Ok(())
    } else {
        Err(Error::Forbidden(format!("{server} is not in room {room}")))
    }
}

async fn event_in_room(fed: &Federation, room: &RoomId, id: &str) -> Result<StoredEvent, Error> {
    match fed.hearth.store.get_event(id).await? {
        Some(ev) if ev.pdu.room_id == *room => Ok(ev),
        _ => Err(Error::not_found(format!("Event {id} not found in {room}"))),
    }
}

fn parse_room(room_id: &str) -> Result<ruma::OwnedRoomId, Error> {
    RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room id"))
}

/// Every value of a query parameter that may repeat (`v=…&v=…`).
pub(crate) fn query_values(query: Option<&str>, name: &str) -> Vec<String> {
    let Some(query) = query else {
        return vec![];
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == name)
        .filter_map(|(_, v)| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned())
        })
        .collect()
}
