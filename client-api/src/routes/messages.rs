//! Sending, reading and redacting events.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post, put},
};
use hearth_core::{
    Error, Hearth, accounts::Session, filter::EventFilter, pdu::StoredEvent,
    rooms::MessagesRequest, ruma::EventId, store::Direction,
};
use ruma_client_api::{message::send_message_event, redact::redact_event};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{JsonResult, parse_room_id, stored_id};
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
    typed::{Ruma, RumaResult},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/rooms/{room_id}/send/{event_type}/{txn_id}", put(send))
        .route("/rooms/{room_id}/redact/{event_id}/{txn_id}", put(redact))
        // The forms without a transaction id, from before r0 and still
        // served by Synapse (SyTest uses both): each request is a new event.
        .route("/rooms/{room_id}/send/{event_type}", post(send_untracked))
        .route("/rooms/{room_id}/redact/{event_id}", post(redact_untracked))
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
) -> RumaResult<send_message_event::v3::Response> {
    let ts = crate::extract::massaged_ts(&s, query.as_deref())?;
    let event_id = send_message(&h, &s, &room_id, &kind, &txn_id, content, ts).await?;
    let event_id = stored_id(EventId::parse(event_id))?;
    Ok(send_message_event::v3::Response::new(event_id).into())
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
    Ok(h.writer
        .send_client_message(s, &room_id, kind, txn_id, content, ts)
        .await?)
}

/// A transaction id no client can have used: never matches an earlier send.
fn fresh_txn_id() -> String {
    format!("hearth.untracked.{}", hearth_core::ids::random_string(24))
}

async fn send_untracked(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, kind)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> RumaResult<send_message_event::v3::Response> {
    let ts = crate::extract::massaged_ts(&s, query.as_deref())?;
    let txn = fresh_txn_id();
    let event_id = send_message(&h, &s, &room_id, &kind, &txn, content, ts).await?;
    let event_id = stored_id(EventId::parse(event_id))?;
    Ok(send_message_event::v3::Response::new(event_id).into())
}

#[derive(Deserialize)]
struct RedactBody {
    reason: Option<String>,
}

async fn redact_untracked(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<RedactBody>,
) -> RumaResult<redact_event::v3::Response> {
    let room_id = parse_room_id(&room_id)?;
    let event_id = h
        .writer
        .send_client_redaction(&s, &room_id, event_id, fresh_txn_id(), body.reason)
        .await?;
    let event_id = stored_id(EventId::parse(event_id))?;
    Ok(redact_event::v3::Response::new(event_id).into())
}

async fn redact(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(r): Ruma<redact_event::v3::Request>,
) -> RumaResult<redact_event::v3::Response> {
    let (target, txn) = (r.event_id.to_string(), r.txn_id.to_string());
    let event_id = h
        .writer
        .send_client_redaction(&s, &r.room_id, target, txn, r.reason)
        .await?;
    let event_id = stored_id(EventId::parse(event_id))?;
    Ok(redact_event::v3::Response::new(event_id).into())
}

async fn get_event(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    let ev = h
        .timeline
        .visible_event(&room_id, &s.user_id, &event_id)
        .await?;
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

async fn context(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<ContextQuery>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    let filter = parse_filter(q.filter.as_deref())?;
    let c = h
        .timeline
        .event_context(&room_id, &s.user_id, &event_id, q.limit, &filter)
        .await?;
    let viewer = Some((s.user_id.as_ref(), s.device_id.as_str()));
    let client = |events: &[StoredEvent]| -> Vec<Value> {
        events.iter().map(|e| e.to_client(viewer)).collect()
    };
    Ok(Json(json!({
        "event": c.event.to_client(viewer),
        "events_before": client(&c.before),
        "events_after": client(&c.after),
        "start": c.start,
        "end": c.end,
        "state": c.state,
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

impl MessagesQuery {
    fn parse(self) -> ApiResult<MessagesRequest> {
        let dir = match self.dir.as_deref() {
            Some("b") => Direction::Backward,
            Some("f") => Direction::Forward,
            Some(_) => return Err(Error::invalid_param("dir must be 'b' or 'f'").into()),
            None => return Err(Error::MissingParam("Missing dir parameter".into()).into()),
        };
        let limit: i64 = match &self.limit {
            Some(l) => l
                .parse()
                .map_err(|_| Error::invalid_param("limit must be an integer"))?,
            None => 10,
        };
        Ok(MessagesRequest {
            dir,
            limit: limit.clamp(1, 1000),
            filter: parse_filter(self.filter.as_deref())?,
            from: self.from,
            to: self.to,
        })
    }
}

async fn messages(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    let req = q.parse()?;
    let page = h.timeline.messages(&room_id, &s.user_id, &req).await?;
    let viewer = Some((s.user_id.as_ref(), s.device_id.as_str()));
    let mut body = json!({
        "chunk": page.chunk.iter().map(|e| e.to_client(viewer)).collect::<Vec<_>>(),
        "start": page.start,
        "state": page.state,
    });
    // No `end` means the client has reached the edge of the timeline.
    if let Some(end) = page.end {
        body["end"] = json!(end);
    }
    Ok(Json(body))
}
