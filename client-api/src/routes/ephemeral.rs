//! Typing, receipts, read markers and presence.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, State},
    routing::{get, post, put},
};
use hearth_core::{
    Error, Hearth, accounts::Session, ids::now_ms, receipts::ReceiptUpdate,
    ruma::presence::PresenceState,
};
use ruma_client_api::{
    presence::{get_presence, set_presence},
    read_marker::set_read_marker,
    receipt::create_receipt,
    typing::create_typing_event,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{parse_room_id, parse_user_id};
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
    typed::{Ruma, RumaResult},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/rooms/{room_id}/typing/{user_id}", put(typing))
        .route(
            "/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
            post(receipt),
        )
        .route("/rooms/{room_id}/read_markers", post(read_markers))
        .route(
            "/presence/{user_id}/status",
            get(get_presence).put(set_presence),
        )
}

#[derive(Deserialize)]
struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

async fn typing(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, user_id)): Path<(String, String)>,
    JsonBody(b): JsonBody<TypingBody>,
) -> RumaResult<create_typing_event::v3::Response> {
    if parse_user_id(&user_id)? != s.user_id {
        return Err(Error::forbidden("You cannot set another user's typing state").into());
    }
    set_typing(&h, &s, &room_id, b.typing, b.timeout).await?;
    Ok(create_typing_event::v3::Response::new().into())
}

/// Typing on or off for the requester (HTTP and WebSocket).
pub(crate) async fn set_typing(
    h: &Hearth,
    s: &Session,
    room_id: &str,
    typing: bool,
    timeout: Option<u64>,
) -> ApiResult<()> {
    let room = parse_room_id(room_id)?;
    h.rooms.require_joined(&room, &s.user_id).await?;
    let timeout = typing.then(|| Duration::from_millis(timeout.unwrap_or(30_000)));
    h.ephemeral
        .set_typing(&room, s.user_id.as_str(), timeout)
        .await;
    if typing {
        h.ephemeral.presence_active(s.user_id.as_str());
    }
    Ok(())
}

async fn receipt(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, kind, event_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> RumaResult<create_receipt::v3::Response> {
    let thread_id = match body.get("thread_id") {
        None => None,
        Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
        Some(_) => return Err(Error::invalid_param("thread_id must be a non-empty string").into()),
    };
    post_receipt(&h, &s, &room_id, &kind, &event_id, thread_id.as_deref()).await?;
    Ok(create_receipt::v3::Response::new().into())
}

/// A read receipt or fully-read marker from the requester (HTTP and WebSocket).
pub(crate) async fn post_receipt(
    h: &Hearth,
    s: &Session,
    room_id: &str,
    kind: &str,
    event_id: &str,
    thread_id: Option<&str>,
) -> ApiResult<()> {
    let room = parse_room_id(room_id)?;
    let update = ReceiptUpdate {
        kind,
        event_id,
        thread_id,
    };
    h.receipts.set_receipt(&room, &s.user_id, update).await?;
    Ok(())
}

async fn read_markers(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> RumaResult<set_read_marker::v3::Response> {
    let room = parse_room_id(&room_id)?;
    let mut updates = vec![];
    for kind in ["m.fully_read", "m.read", "m.read.private"] {
        match body.get(kind) {
            None | Some(Value::Null) => {}
            Some(Value::String(id)) => updates.push(ReceiptUpdate {
                kind,
                event_id: id,
                thread_id: None,
            }),
            Some(_) => return Err(Error::bad_json(format!("{kind} must be an event id")).into()),
        }
    }
    h.receipts.set_receipts(&room, &s.user_id, &updates).await?;
    Ok(set_read_marker::v3::Response::new().into())
}

async fn get_presence(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    Ruma(req): Ruma<get_presence::v3::Request>,
) -> RumaResult<get_presence::v3::Response> {
    let Some(p) = h.ephemeral.user_presence(&req.user_id).await? else {
        return Ok(get_presence::v3::Response::new(PresenceState::Offline).into());
    };
    let mut response = get_presence::v3::Response::new(p.presence.as_str().into());
    response.last_active_ago = Some(Duration::from_millis(
        now_ms().saturating_sub(p.last_active_ms),
    ));
    response.currently_active = Some(p.presence == "online");
    response.status_msg = p.status_msg;
    Ok(response.into())
}

async fn set_presence(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<set_presence::v3::Request>,
) -> RumaResult<set_presence::v3::Response> {
    if req.user_id != s.user_id {
        return Err(Error::forbidden("You cannot set another user's presence").into());
    }
    set_own_presence(&h, &s, req.presence.as_str(), req.status_msg).await?;
    Ok(set_presence::v3::Response::new().into())
}

/// Sets the requester's presence (HTTP and WebSocket heartbeats).
pub(crate) async fn set_own_presence(
    h: &Hearth,
    s: &Session,
    presence: &str,
    status_msg: Option<String>,
) -> ApiResult<()> {
    if !matches!(presence, "online" | "offline" | "unavailable") {
        return Err(Error::invalid_param(format!("Invalid presence state {presence}")).into());
    }
    h.ephemeral
        .set_presence(s.user_id.as_str(), presence, Some(status_msg));
    Ok(())
}
