//! Server ACLs on requests: a signed request whose path names a room is
//! refused (403 `M_FORBIDDEN`) when that room's `m.room.server_acl` denies
//! its origin. The rule itself is `hearth_core::rooms::acl`; `/event/{id}`
//! (its room is the event's) and `/send` (per PDU and EDU) call it
//! themselves.

use std::sync::Arc;

use axum::{
    extract::{RawPathParams, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hearth_core::Error;
use hearth_http_common::error::ApiError;
use ruma::RoomId;

use crate::{Federation, auth::Origin};

/// Runs after `auth::require_signature`, on every signed route: those
/// without a `{room_id}` pass untouched.
pub(crate) async fn require_room_access(
    State(fed): State<Arc<Federation>>,
    params: RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    let room = params
        .iter()
        .find(|(name, _)| *name == "room_id")
        .map(|(_, value)| value.to_owned());
    let origin = request.extensions().get::<Origin>().cloned();
    if let (Some(room), Some(Origin(origin))) = (room, origin) {
        let Ok(room) = RoomId::parse(&room) else {
            return ApiError::from(Error::invalid_param("Invalid room id")).into_response();
        };
        if let Err(e) = fed.hearth.rooms.check_server_acl(&room, &origin).await {
            return ApiError::from(e).into_response();
        }
    }
    next.run(request).await
}
