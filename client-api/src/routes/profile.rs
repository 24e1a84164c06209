//! Display names and avatars; a change is mirrored into every joined room.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::get,
};
use hearth_core::{Error, Hearth, rooms::NewEvent, ruma::RoomId};
use serde_json::{Map, Value, json};

use super::{JsonResult, parse_user_id};
use crate::extract::{Auth, JsonBody};

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

async fn profile(
    h: &Hearth,
    user_id: &str,
    field: Option<&str>,
) -> Result<(Option<String>, Option<String>), crate::error::ApiError> {
    let user = parse_user_id(user_id)?;
    if user.server_name() != h.config.server_name {
        // Another server's user: ask it.
        let remote = h
            .remote
            .get()
            .ok_or_else(|| Error::not_found("Profile not found (this server does not federate)"))?;
        let v = remote.query_profile(&user, field).await?;
        let text = |k: &str| v[k].as_str().map(str::to_owned);
        return Ok((text("displayname"), text("avatar_url")));
    }
    if !h.local_user_exists(&user).await? {
        return Err(Error::not_found("Profile not found").into());
    }
    match h.store.get_user(user.as_str()).await? {
        Some(u) if !u.deactivated => Ok((u.displayname, u.avatar_url)),
        _ => Err(Error::not_found("Profile not found").into()),
    }
}

async fn get_profile(State(h): State<Arc<Hearth>>, Path(user_id): Path<String>) -> JsonResult {
    let (name, avatar) = profile(&h, &user_id, None).await?;
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
    let (name, _) = profile(&h, &user_id, Some("displayname")).await?;
    match name {
        Some(n) => Ok(Json(json!({"displayname": n}))),
        None => Err(Error::not_found("No display name set").into()),
    }
}

async fn get_avatar(State(h): State<Arc<Hearth>>, Path(user_id): Path<String>) -> JsonResult {
    let (_, avatar) = profile(&h, &user_id, Some("avatar_url")).await?;
    match avatar {
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

/// Re-sends the user's join event in every joined room with the new profile.
async fn update_memberships(h: &Hearth, user: &hearth_core::ruma::UserId) -> Result<(), Error> {
    for m in h.store.memberships_of_user(user.as_str()).await? {
        if m.membership != "join" {
            continue;
        }
        let Ok(room) = RoomId::parse(&m.room_id) else {
            continue;
        };
        let content = h.member_content(user, "join", None).await?;
        if let Err(e) = h
            .send_event(
                &room,
                NewEvent::state(user.to_owned(), "m.room.member", user.as_str(), content),
            )
            .await
        {
            tracing::warn!(room = %room, user = %user, "profile update not applied to room: {e}");
        }
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
    if name.as_ref().is_some_and(|n| n.len() > 256) {
        return Err(Error::invalid_param("displayname is too long").into());
    }
    h.store
        .set_displayname(s.user_id.as_str(), name.as_deref())
        .await?;
    update_memberships(&h, &s.user_id).await?;
    Ok(Json(json!({})))
}

async fn set_avatar(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> JsonResult {
    ensure_self(&s, &user_id).await?;
    let url = string_field(&body, "avatar_url")?.filter(|u| !u.is_empty());
    if let Some(u) = &url
        && !u.starts_with("mxc://")
    {
        return Err(Error::invalid_param("avatar_url must be an mxc:// URI").into());
    }
    h.store
        .set_avatar_url(s.user_id.as_str(), url.as_deref())
        .await?;
    update_memberships(&h, &s.user_id).await?;
    Ok(Json(json!({})))
}
