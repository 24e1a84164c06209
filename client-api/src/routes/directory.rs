//! Room aliases, the public room directory and the user directory.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use hearth_core::{Error, Hearth, ruma::RoomAliasId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonResult, parse_room_id};
use crate::{
    error::ApiError,
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

async fn get_alias(State(h): State<Arc<Hearth>>, Path(alias): Path<String>) -> JsonResult {
    let alias =
        RoomAliasId::parse(&alias).map_err(|_| Error::invalid_param("Invalid room alias"))?;
    if alias.server_name() != h.config.server_name {
        // Another server's alias: ask it.
        let remote = h.links.remote.get().ok_or_else(|| {
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
        .to_appservices
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
    h.aliases
        .create_room_alias(&alias, &b.room_id, &s.user_id, s.appservice.as_deref())
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

async fn delete_alias(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(alias): Path<String>,
) -> JsonResult {
    h.aliases.delete_room_alias(&alias, &s.user_id).await?;
    Ok(Json(json!({})))
}

async fn room_aliases(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
) -> JsonResult {
    let room = parse_room_id(&room_id)?;
    Ok(Json(
        json!({"aliases": h.aliases.room_aliases(&room, &s.user_id).await?}),
    ))
}

async fn get_visibility(State(h): State<Arc<Hearth>>, Path(room_id): Path<String>) -> JsonResult {
    let room = parse_room_id(&room_id)?;
    let public = h.directory.room_is_public(&room).await?;
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
    h.directory
        .set_room_visibility(&room, &s.user_id, b.visibility.as_deref())
        .await?;
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
        .room_list
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
    Ok(Json(
        h.directory
            .search_user_directory(&s.user_id, &b.search_term, b.limit)
            .await?,
    ))
}
