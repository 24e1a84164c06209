//! Room aliases, the public room directory and the user directory.

use std::{collections::BTreeSet, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use hearth_core::{
    Error, Hearth,
    rooms::required_power,
    ruma::{RoomAliasId, RoomId},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonResult, parse_room_id};
use crate::{
    error::{ApiError, ApiResult},
    extract::{Auth, JsonBody, MaybeAuth},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route(
            "/directory/room/{alias}",
            get(get_alias).put(put_alias).delete(delete_alias),
        )
        .route("/rooms/{room_id}/aliases", get(room_aliases))
        .route(
            "/directory/list/room/{room_id}",
            get(get_visibility).put(put_visibility),
        )
        .route(
            "/publicRooms",
            get(public_rooms_get).post(public_rooms_post),
        )
        .route("/user_directory/search", post(search_users))
}

fn parse_local_alias(h: &Hearth, alias: &str) -> ApiResult<hearth_core::ruma::OwnedRoomAliasId> {
    let alias =
        RoomAliasId::parse(alias).map_err(|_| Error::invalid_param("Invalid room alias"))?;
    if alias.server_name() != h.config.server_name {
        return Err(Error::invalid_param("Room alias is not on this server").into());
    }
    Ok(alias)
}

async fn get_alias(State(h): State<Arc<Hearth>>, Path(alias): Path<String>) -> JsonResult {
    let alias =
        RoomAliasId::parse(&alias).map_err(|_| Error::invalid_param("Invalid room alias"))?;
    if alias.server_name() != h.config.server_name {
        // Another server's alias: ask it.
        let remote = h.remote.get().ok_or_else(|| {
            Error::not_found("Room alias not found (this server does not federate)")
        })?;
        let v = remote.query_directory(&alias).await?;
        if !v["room_id"].is_string() {
            return Err(Error::Unavailable(format!(
                "{} answered the alias query without a room_id",
                alias.server_name()
            ))
            .into());
        }
        return Ok(Json(v));
    }
    let (room_id, _) = h
        .resolve_local_alias(alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    Ok(Json(
        json!({"room_id": room_id, "servers": [h.config.server_name]}),
    ))
}

#[derive(Deserialize)]
struct AliasBody {
    room_id: String,
}

async fn put_alias(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(alias): Path<String>,
    JsonBody(b): JsonBody<AliasBody>,
) -> JsonResult {
    let alias = parse_local_alias(&h, &alias)?;
    h.check_alias_claim(alias.as_str(), s.appservice.as_deref())?;
    let room = parse_room_id(&b.room_id)?;
    if h.store.room_version(room.as_str()).await?.is_none() {
        return Err(Error::not_found("Unknown room").into());
    }
    h.require_joined(&room, &s.user_id).await?;
    h.store
        .create_alias(alias.as_str(), room.as_str(), s.user_id.as_str())
        .await
        .map_err(|e| match e {
            Error::RoomInUse => ApiError::new(
                StatusCode::CONFLICT,
                "M_UNKNOWN",
                "Room alias already exists",
            ),
            other => other.into(),
        })?;
    Ok(Json(json!({})))
}

/// Whether the user is a room admin (may manage aliases and visibility).
async fn is_room_admin(
    h: &Hearth,
    room: &RoomId,
    user: &hearth_core::ruma::UserId,
) -> ApiResult<bool> {
    let pl = h
        .room_state_event(room, "m.room.power_levels", "")
        .await?
        .map(|p| p.content_value());
    let needed = pl
        .as_ref()
        .and_then(|p| p.get("events"))
        .and_then(|e| e.get("m.room.canonical_alias"))
        .and_then(Value::as_i64)
        .unwrap_or_else(|| required_power(pl.as_ref(), "state_default", 50));
    Ok(h.power_of(room, user).await? >= needed)
}

async fn delete_alias(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(alias): Path<String>,
) -> JsonResult {
    let alias = parse_local_alias(&h, &alias)?;
    let (room_id, creator) = h
        .store
        .resolve_alias(alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let room = parse_room_id(&room_id)?;
    if creator != s.user_id.as_str() && !is_room_admin(&h, &room, &s.user_id).await? {
        return Err(Error::forbidden("You may not delete this alias").into());
    }
    h.store.delete_alias(alias.as_str()).await?;
    Ok(Json(json!({})))
}

async fn room_aliases(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
) -> JsonResult {
    let room = parse_room_id(&room_id)?;
    h.require_joined(&room, &s.user_id).await?;
    Ok(Json(
        json!({"aliases": h.store.room_aliases(room.as_str()).await?}),
    ))
}

async fn get_visibility(State(h): State<Arc<Hearth>>, Path(room_id): Path<String>) -> JsonResult {
    let room = parse_room_id(&room_id)?;
    if h.store.room_version(room.as_str()).await?.is_none() {
        return Err(Error::not_found("Unknown room").into());
    }
    let public = h.store.is_room_public(room.as_str()).await?;
    Ok(Json(
        json!({"visibility": if public { "public" } else { "private" }}),
    ))
}

#[derive(Deserialize)]
struct VisibilityBody {
    visibility: Option<String>,
}

async fn put_visibility(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
    JsonBody(b): JsonBody<VisibilityBody>,
) -> JsonResult {
    let room = parse_room_id(&room_id)?;
    if h.store.room_version(room.as_str()).await?.is_none() {
        return Err(Error::not_found("Unknown room").into());
    }
    let public = match b.visibility.as_deref() {
        Some("public") => true,
        Some("private") | None => false,
        Some(v) => return Err(Error::invalid_param(format!("Invalid visibility {v}")).into()),
    };
    h.require_joined(&room, &s.user_id).await?;
    if !is_room_admin(&h, &room, &s.user_id).await? {
        return Err(Error::forbidden("You may not change this room's visibility").into());
    }
    h.store.set_room_public(room.as_str(), public).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize, Default)]
struct PublicRoomsQuery {
    limit: Option<usize>,
    since: Option<String>,
    server: Option<String>,
}

#[derive(Deserialize, Default)]
struct PublicRoomsBody {
    limit: Option<usize>,
    since: Option<String>,
    server: Option<String>,
    filter: Option<Value>,
}

async fn public_rooms_get(
    State(h): State<Arc<Hearth>>,
    _a: MaybeAuth,
    Query(q): Query<PublicRoomsQuery>,
) -> JsonResult {
    public_rooms(
        &h,
        PublicRoomsBody {
            limit: q.limit,
            since: q.since,
            server: q.server,
            filter: None,
        },
    )
    .await
}

async fn public_rooms_post(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    JsonBody(b): JsonBody<PublicRoomsBody>,
) -> JsonResult {
    public_rooms(&h, b).await
}

async fn public_rooms(h: &Hearth, b: PublicRoomsBody) -> JsonResult {
    if let Some(server) = &b.server
        && server != h.config.server_name.as_str()
    {
        return Err(Error::not_found("Remote room directories are not available").into());
    }
    let page = h
        .public_rooms(b.limit, b.since.as_deref(), b.filter.as_ref())
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
struct SearchBody {
    search_term: String,
    limit: Option<usize>,
}

async fn search_users(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    JsonBody(b): JsonBody<SearchBody>,
) -> JsonResult {
    let limit = b.limit.unwrap_or(10).clamp(1, 100);
    let mut visible: BTreeSet<String> = h
        .store
        .users_sharing_rooms(s.user_id.as_str())
        .await?
        .into_iter()
        .collect();
    visible.extend(h.store.users_in_public_rooms().await?);
    let candidates = h.store.search_users(b.search_term.trim(), 500).await?;
    let mut results = vec![];
    let mut limited = false;
    for u in candidates
        .into_iter()
        .filter(|u| visible.contains(&u.user_id))
    {
        if results.len() == limit {
            limited = true;
            break;
        }
        results.push(json!({"user_id": u.user_id, "display_name": u.displayname, "avatar_url": u.avatar_url}));
    }
    Ok(Json(json!({"results": results, "limited": limited})))
}
