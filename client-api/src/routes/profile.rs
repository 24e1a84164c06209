//! Display names and avatars; a change is mirrored into every joined room.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::get,
};
use hearth_core::{Error, Hearth, profile::Profile};
use serde_json::{Map, Value, json};

use super::{JsonResult, parse_user_id};
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/profile/{user_id}", get(get_profile))
        .route(
            "/profile/{user_id}/displayname",
            get(get_displayname).put(set_displayname),
        )
        .route(
            "/profile/{user_id}/avatar_url",
            get(get_avatar).put(set_avatar),
        )
}

async fn profile(h: &Hearth, user_id: &str, field: Option<&str>) -> ApiResult<Profile> {
    let user = parse_user_id(user_id)?;
    Ok(h.profile(&user, field).await?)
}

async fn get_profile(State(h): State<Arc<Hearth>>, Path(user_id): Path<String>) -> JsonResult {
    let Profile {
        displayname: name,
        avatar_url: avatar,
    } = profile(&h, &user_id, None).await?;
    let mut body = Map::new();
    if let Some(n) = name {
        body.insert("displayname".into(), json!(n));
    }
    if let Some(a) = avatar {
        body.insert("avatar_url".into(), json!(a));
    }
    Ok(Json(Value::Object(body)))
}

async fn get_displayname(State(h): State<Arc<Hearth>>, Path(user_id): Path<String>) -> JsonResult {
    let p = profile(&h, &user_id, Some("displayname")).await?;
    match p.displayname {
        Some(n) => Ok(Json(json!({"displayname": n}))),
        None => Err(Error::not_found("No display name set").into()),
    }
}

async fn get_avatar(State(h): State<Arc<Hearth>>, Path(user_id): Path<String>) -> JsonResult {
    let p = profile(&h, &user_id, Some("avatar_url")).await?;
    match p.avatar_url {
        Some(a) => Ok(Json(json!({"avatar_url": a}))),
        None => Err(Error::not_found("No avatar set").into()),
    }
}

/// Reads an optional string field: absent or null clears it, a non-string is M_BAD_JSON.
fn string_field(body: &Map<String, Value>, key: &str) -> Result<Option<String>, Error> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::bad_json(format!("{key} must be a string"))),
    }
}

async fn ensure_self(
    s: &hearth_core::accounts::Session,
    user_id: &str,
) -> Result<(), crate::error::ApiError> {
    let user = parse_user_id(user_id)?;
    if user != s.user_id {
        return Err(Error::forbidden("You cannot change another user's profile").into());
    }
    Ok(())
}

async fn set_displayname(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> JsonResult {
    ensure_self(&s, &user_id).await?;
    let name = string_field(&body, "displayname")?;
    h.set_displayname(&s.user_id, name.as_deref()).await?;
    Ok(Json(json!({})))
}

async fn set_avatar(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> JsonResult {
    ensure_self(&s, &user_id).await?;
    let url = string_field(&body, "avatar_url")?;
    h.set_avatar_url(&s.user_id, url.as_deref()).await?;
    Ok(Json(json!({})))
}
