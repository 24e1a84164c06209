pub mod account;
pub mod account_data;
pub mod devices;
pub mod directory;
pub mod discovery;
pub mod ephemeral;
pub mod internal;
pub mod keys;
pub mod media;
pub mod messages;
pub mod openid;
pub mod profile;
pub mod push;
pub mod rooms;
pub mod sync;
pub mod threepid;
pub mod ws;

use axum::Json;
use hearth_core::ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use crate::error::ApiResult;

pub type JsonResult = ApiResult<Json<Value>>;

pub fn parse_room_id(s: &str) -> ApiResult<OwnedRoomId> {
    RoomId::parse(s)
        .map_err(|_| hearth_core::Error::invalid_param(format!("Invalid room id {s:?}")).into())
}

pub fn parse_user_id(s: &str) -> ApiResult<OwnedUserId> {
    UserId::parse(s)
        .map_err(|_| hearth_core::Error::invalid_param(format!("Invalid user id {s:?}")).into())
}

/// An identifier read back from storage, where only valid ones are written:
/// one that does not parse is a server fault, not the client's.
pub fn stored_id<T, E: std::fmt::Display>(id: Result<T, E>) -> Result<T, hearth_core::Error> {
    id.map_err(|e| hearth_core::Error::Internal(format!("invalid identifier in storage: {e}")))
}
