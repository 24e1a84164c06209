//! Sending, reading and redacting events.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, put},
};
use hearth_core::{
    Error, Hearth,
    accounts::Session,
    filter::EventFilter,
    pdu::StoredEvent,
    ratelimit::Action,
    rooms::NewEvent,
    ruma::{OwnedEventId, RoomId, UserId},
    store::Direction,
    sync::{pagination_token, parse_pagination_token},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{JsonResult, parse_room_id};
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/rooms/{room_id}/send/{event_type}/{txn_id}", put(send))
        .route("/rooms/{room_id}/redact/{event_id}/{txn_id}", put(redact))
        .route("/rooms/{room_id}/event/{event_id}", get(get_event))
        .route("/rooms/{room_id}/context/{event_id}", get(context))
        .route("/rooms/{room_id}/messages", get(messages))
}

async fn send(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, kind, txn_id)): Path<(String, String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> JsonResult {
    let ts = crate::extract::massaged_ts(&s, query.as_deref())?;
    let event_id = send_message(&h, &s, &room_id, &kind, &txn_id, content, ts).await?;
    Ok(Json(json!({"event_id": event_id})))
}

/// A client send, shared by PUT /send and the WebSocket: idempotent per
/// (user, device, txn_id), answered only once the event is durable.
pub(crate) async fn send_message(
    h: &Hearth,
    s: &Session,
    room_id: &str,
    kind: &str,
    txn_id: &str,
    content: Map<String, Value>,
    ts: Option<u64>,
) -> ApiResult<String> {
    let room_id = parse_room_id(room_id)?;
    // A retry must not count against the rate limit. Without limits the
    // writer's own duplicate check is enough, so skip the extra read.
    if h.config.rate_limits.enabled
        && let Some(existing) = h
            .store
            .txn_event(room_id.as_str(), s.user_id.as_str(), &s.device_id, txn_id)
            .await?
    {
        return Ok(existing);
    }
    if s.appservice.as_ref().is_none_or(|a| a.rate_limited) {
        h.rate_limit(Action::Message, s.user_id.as_str())?;
    }
    let mut ev = NewEvent::message(s.user_id.clone(), kind, Value::Object(content));
    ev.txn = Some((s.device_id.clone(), txn_id.to_owned()));
    ev.ts = ts;
    let event_id = h.send_event(&room_id, ev).await?;
    h.presence_active(s.user_id.as_str());
    Ok(event_id.to_string())
}

#[derive(Deserialize, Default)]
struct RedactBody {
    reason: Option<String>,
}

async fn redact(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, event_id, txn_id)): Path<(String, String, String)>,
    JsonBody(b): JsonBody<RedactBody>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    if let Some(existing) = h
        .store
        .txn_event(room_id.as_str(), s.user_id.as_str(), &s.device_id, &txn_id)
        .await?
    {
        return Ok(Json(json!({"event_id": existing})));
    }
    let target_id =
        OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event id"))?;
    // Who may redact what is the room writer's rule (core/rooms/redactions.rs).
    let mut content = json!({});
    if let Some(r) = b.reason {
        content["reason"] = json!(r);
    }
    let mut ev = NewEvent::message(s.user_id.clone(), "m.room.redaction", content);
    ev.redacts = Some(target_id);
    ev.txn = Some((s.device_id.clone(), txn_id));
    let event_id = h.send_event(&room_id, ev).await?;
    Ok(Json(json!({"event_id": event_id})))
}

/// Fetches an event the user may see, or 404 (not revealing whether it exists).
async fn visible_event(
    h: &Hearth,
    room_id: &RoomId,
    user: &UserId,
    event_id: &str,
) -> ApiResult<StoredEvent> {
    let not_found = || Error::not_found("Event not found");
    let ev = h
        .store
        .get_event(event_id)
        .await?
        .filter(|e| e.pdu.room_id == room_id)
        .ok_or_else(not_found)?;
    let membership = h
        .store
        .membership(room_id.as_str(), user.as_str())
        .await?
        .map(|m| m.membership);
    if !h
        .can_see_at(room_id, user, ev.stream_ordering, membership.as_deref())
        .await?
    {
        return Err(not_found().into());
    }
    Ok(ev)
}

async fn get_event(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    let ev = visible_event(&h, &room_id, &s.user_id, &event_id).await?;
    Ok(Json(ev.to_client(Some((&s.user_id, &s.device_id)))))
}

#[derive(Deserialize)]
struct ContextQuery {
    limit: Option<usize>,
    filter: Option<String>,
}

fn parse_filter(f: Option<&str>) -> ApiResult<EventFilter> {
    match f {
        None => Ok(EventFilter::default()),
        Some(s) => {
            let v: Value = serde_json::from_str(s)
                .map_err(|_| Error::invalid_param("filter is not valid JSON"))?;
            if !v.is_object() {
                return Err(Error::invalid_param("filter must be a JSON object").into());
            }
            Ok(EventFilter::parse(Some(&v)))
        }
    }
}

fn allowed(f: &EventFilter, e: &StoredEvent) -> bool {
    let content = e.pdu.json.get("content");
    f.allows(
        e.pdu.kind.to_string().as_str(),
        e.pdu.sender.as_str(),
        content,
    )
}

/// Member events for the senders of `events`, for lazy-loading clients.
async fn member_state_for(
    h: &Hearth,
    room_id: &RoomId,
    at: i64,
    events: &[StoredEvent],
) -> ApiResult<Vec<Value>> {
    let mut senders: Vec<&str> = events.iter().map(|e| e.pdu.sender.as_str()).collect();
    senders.sort_unstable();
    senders.dedup();
    let mut out = vec![];
    for s in senders {
        if let Some(m) = h
            .store
            .state_event_at(room_id.as_str(), "m.room.member", s, at)
            .await?
        {
            out.push(m.to_client(None));
        }
    }
    Ok(out)
}

async fn context(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<ContextQuery>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    let filter = parse_filter(q.filter.as_deref())?;
    let ev = visible_event(&h, &room_id, &s.user_id, &event_id).await?;
    let limit = q.limit.unwrap_or(10).min(100) as i64;
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let before = h
        .store
        .room_events(
            room_id.as_str(),
            ev.stream_ordering - 1,
            None,
            Direction::Backward,
            before_n,
        )
        .await?;
    let after = h
        .store
        .room_events(
            room_id.as_str(),
            ev.stream_ordering,
            None,
            Direction::Forward,
            after_n,
        )
        .await?;
    let start = before
        .last()
        .map_or(ev.stream_ordering - 1, |e| e.stream_ordering - 1);
    let end = after
        .last()
        .map_or(ev.stream_ordering, |e| e.stream_ordering);
    let before = h.filter_visible(&room_id, &s.user_id, before).await?;
    let after = h.filter_visible(&room_id, &s.user_id, after).await?;
    let viewer = Some((s.user_id.as_ref(), s.device_id.as_str()));
    let state: Vec<Value> = if filter.lazy_load_members {
        let mut all = before.clone();
        all.push(ev.clone());
        all.extend(after.iter().cloned());
        member_state_for(&h, &room_id, end, &all).await?
    } else {
        let ids: Vec<String> = h
            .store
            .state_at(room_id.as_str(), end)
            .await?
            .into_values()
            .collect();
        h.store
            .get_events(&ids)
            .await?
            .iter()
            .map(|e| e.to_client(None))
            .collect()
    };
    Ok(Json(json!({
        "event": ev.to_client(viewer),
        "events_before": before.iter().filter(|e| allowed(&filter, e)).map(|e| e.to_client(viewer)).collect::<Vec<_>>(),
        "events_after": after.iter().filter(|e| allowed(&filter, e)).map(|e| e.to_client(viewer)).collect::<Vec<_>>(),
        "start": pagination_token(start),
        "end": pagination_token(end),
        "state": state,
    })))
}

#[derive(Deserialize)]
struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
    filter: Option<String>,
}

async fn messages(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    let dir = match q.dir.as_deref() {
        Some("b") => Direction::Backward,
        Some("f") => Direction::Forward,
        Some(_) => return Err(Error::invalid_param("dir must be 'b' or 'f'").into()),
        None => return Err(Error::MissingParam("Missing dir parameter".into()).into()),
    };
    let limit: i64 = match &q.limit {
        Some(l) => l
            .parse()
            .map_err(|_| Error::invalid_param("limit must be an integer"))?,
        None => 10,
    };
    let limit = limit.clamp(1, 1000);
    let filter = parse_filter(q.filter.as_deref())?;
    let membership = h
        .store
        .membership(room_id.as_str(), s.user_id.as_str())
        .await?;
    if membership.is_none() {
        let readable = h
            .room_state_event(&room_id, "m.room.history_visibility", "")
            .await?
            .is_some_and(|e| {
                e.content_value()
                    .get("history_visibility")
                    .and_then(Value::as_str)
                    == Some("world_readable")
            });
        if !readable {
            return Err(Error::forbidden("You are not in this room").into());
        }
    }
    // A member who left reads only up to their leave.
    let ceiling = match &membership {
        Some(m) if m.membership != "join" && m.membership != "invite" => m.stream_ordering,
        _ => i64::MAX,
    };
    // Tokens are positions in the stream of the room's shard.
    let shard = h.store.shard_of(room_id.as_str()).await?;
    let newest = h.stream_positions().await?.get(shard).copied().unwrap_or(0);
    let from = match &q.from {
        Some(t) => parse_pagination_token(t, shard)?,
        None => match dir {
            Direction::Backward => newest,
            // Backfilled history sits below zero.
            Direction::Forward => i64::MIN,
        },
    };
    let to =
        q.to.as_deref()
            .map(|t| parse_pagination_token(t, shard))
            .transpose()?;
    let (from, to) = match dir {
        Direction::Backward => (from.min(ceiling), to),
        Direction::Forward => (from, Some(to.unwrap_or(i64::MAX).min(ceiling))),
    };
    // Over-fetch so that filtered-out events don't end pagination early.
    let events = h.timeline_page(&room_id, from, to, dir, limit).await?;
    let end = match (dir, events.last()) {
        (Direction::Backward, Some(e)) => Some(e.stream_ordering - 1),
        (Direction::Forward, Some(e)) => Some(e.stream_ordering),
        _ => None,
    };
    let full_page = events.len() as i64 == limit;
    let visible = h.filter_visible(&room_id, &s.user_id, events).await?;
    let visible: Vec<StoredEvent> = visible
        .into_iter()
        .filter(|e| allowed(&filter, e))
        .collect();
    let viewer = Some((s.user_id.as_ref(), s.device_id.as_str()));
    let state = if filter.lazy_load_members {
        member_state_for(&h, &room_id, from.min(newest), &visible).await?
    } else {
        vec![]
    };
    let mut body = json!({
        "chunk": visible.iter().map(|e| e.to_client(viewer)).collect::<Vec<_>>(),
        "start": pagination_token(from),
        "state": state,
    });
    // No `end` means the client has reached the edge of the timeline.
    if let Some(end) = end
        && full_page
    {
        body["end"] = json!(pagination_token(end));
    }
    Ok(Json(body))
}
