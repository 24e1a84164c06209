//! What the processes of one server ask of each other over HTTP
//! (spec/cluster.md): a send forwarded to the process holding the room's
//! writer lease. Authenticated by the cluster secret, never by a user token.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use hearth_core::{Error, Hearth, rooms::NewEvent};
use serde_json::json;

use super::{JsonResult, parse_room_id};
use crate::{error::ApiError, extract::JsonBody};

pub(crate) const SEND_PATH: &str = "/_hearth/internal/v1/rooms/{room_id}/send";
/// Answered when this process no longer writes the room: the forwarding
/// process asks the database again who does.
pub(crate) const NOT_WRITER: &str = "HEARTH_NOT_WRITER";

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new().route(SEND_PATH, post(forwarded_send))
}

async fn forwarded_send(
    State(h): State<Arc<Hearth>>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
    JsonBody(event): JsonBody<NewEvent>,
) -> JsonResult {
    let Some(cluster) = &h.config.cluster else {
        return Err(ApiError::unrecognized("Unrecognized request"));
    };
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same_secret(presented.as_bytes(), cluster.secret.as_bytes()) {
        tracing::warn!("forwarded send with a wrong cluster secret");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Wrong cluster secret",
        ));
    }
    let room = parse_room_id(&room_id)?;
    match h.writer.send_forwarded_event(&room, event).await {
        Ok(event_id) => Ok(Json(json!({"event_id": event_id}))),
        Err(Error::LeaseLost | Error::NotWriter { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            NOT_WRITER,
            "This process does not write the room",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
