//! Reading a room's past for another server: `/state`, `/state_ids`,
//! `/event_auth`, `/backfill` and `/get_missing_events`. A server asks only about rooms it
//! has users in (or world-readable ones); events its users could not see by
//! history visibility are returned redacted, so the event graph stays whole.

use std::{collections::HashSet, sync::Arc};

use axum::{
    Extension, Json,
    extract::{Path, RawQuery, State},
};
use hearth_core::{Error, ids::now_ms, pdu::Pdu};
use hearth_http_common::error::ApiError;
use ruma::{RoomId, ServerName};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Federation, auth::Origin, query::query_values};

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

/// `GET /event_auth/{roomId}/{eventId}`: the event's auth chain, for a
/// server that may read the room.
pub(crate) async fn event_auth(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let room = parse_room(&room_id)?;
    let federated = &fed.hearth.federated;
    federated.require_server_reader(&room, &origin).await?;
    let chain = federated.event_auth_chain(&room, &event_id).await?;
    Ok(Json(json!({
        "auth_chain": chain.iter().map(|p| Value::Object(p.as_sent())).collect::<Vec<_>>(),
    })))
}

/// The state at (before) the event `?event_id=` names, and the auth chain
/// of that state.
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
    fed.hearth
        .federated
        .require_server_reader(&room, origin)
        .await?;
    Ok(fed
        .hearth
        .federated
        .state_before_event(&room, &event_id)
        .await?)
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
    let h = &fed.hearth;
    h.federated.require_server_reader(&room, &origin).await?;
    let found = h
        .federated
        .walk_back(&room, from, &HashSet::new(), limit, 0)
        .await?;
    let pdus = h.federated.events_as_seen_by(&room, &origin, found).await?;
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
    let h = &fed.hearth;
    h.federated.require_server_reader(&room, &origin).await?;
    let limit = body.limit.unwrap_or(DEFAULT_MISSING).min(MAX_EVENTS);
    let mut found = h
        .federated
        .missing_events(
            &room,
            body.earliest_events,
            &body.latest_events,
            limit,
            body.min_depth,
        )
        .await?;
    found.reverse();
    let events = h.federated.events_as_seen_by(&room, &origin, found).await?;
    Ok(Json(json!({"events": events})))
}

fn parse_room(room_id: &str) -> Result<ruma::OwnedRoomId, Error> {
    RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room id"))
}
