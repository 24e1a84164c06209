//! Room aliases, the public room directory and the user directory.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use hearth_core::{
    Error, Hearth,
    directory::UserSearch,
    rooms::{PublicRooms, RoomListScope},
    ruma::{RoomAliasId, RoomId, ServerName},
};
use ruma_client_api::{
    alias::{create_alias, delete_alias, get_alias},
    directory::{get_room_visibility, set_room_visibility},
    room::{Visibility, aliases},
    user_directory::search_users,
};
use serde::Deserialize;
use serde_json::Value;

use super::{parse_room_id, stored_id};
use crate::{
    error::{ApiError, ApiResult},
    extract::{Auth, JsonBody, MaybeAuth},
    typed::{Ruma, RumaResult},
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
            "/directory/list/appservice/{network_id}/{room_id}",
            axum::routing::put(put_appservice_listing).delete(delete_appservice_listing),
        )
        .route(
            "/publicRooms",
            get(public_rooms_get).post(public_rooms_post),
        )
        .route("/user_directory/search", post(search_users))
}

async fn get_alias(
    State(h): State<Arc<Hearth>>,
    Ruma(req): Ruma<get_alias::v3::Request>,
) -> RumaResult<get_alias::v3::Response> {
    let alias = req.room_alias;
    if alias.server_name() != h.config.server_name {
        // Another server's alias: ask it.
        let remote = h.links.remote.get().ok_or_else(|| {
            Error::not_found("Room alias not found (this server does not federate)")
        })?;
        let v = remote.query_directory(&alias).await?;
        return Ok(remote_alias(&alias, &v)?.into());
    }
    let (room_id, _) = h
        .to_appservices
        .resolve_local_alias(alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let room_id = stored_id(RoomId::parse(room_id))?;
    let servers = vec![h.config.server_name.clone()];
    Ok(get_alias::v3::Response::new(room_id, servers).into())
}

/// Another server's answer to an alias query: its room and the servers it
/// names (a name that is not a server name is left out).
fn remote_alias(alias: &RoomAliasId, v: &Value) -> Result<get_alias::v3::Response, Error> {
    let room_id = v["room_id"]
        .as_str()
        .and_then(|r| RoomId::parse(r).ok())
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "{} answered the alias query without a room_id",
                alias.server_name()
            ))
        })?;
    let servers = v["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| ServerName::parse(s.as_str()?).ok())
        .collect();
    Ok(get_alias::v3::Response::new(room_id, servers))
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
) -> RumaResult<create_alias::v3::Response> {
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
    Ok(create_alias::v3::Response::new().into())
}

async fn delete_alias(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<delete_alias::v3::Request>,
) -> RumaResult<delete_alias::v3::Response> {
    h.aliases
        .delete_room_alias(req.room_alias.as_str(), &s.user_id)
        .await?;
    Ok(delete_alias::v3::Response::new().into())
}

async fn room_aliases(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<aliases::v3::Request>,
) -> RumaResult<aliases::v3::Response> {
    let aliases = h.aliases.room_aliases(&req.room_id, &s.user_id).await?;
    let aliases = aliases
        .into_iter()
        .map(|a| stored_id(RoomAliasId::parse(a)))
        .collect::<Result<_, _>>()?;
    Ok(aliases::v3::Response::new(aliases).into())
}

async fn get_visibility(
    State(h): State<Arc<Hearth>>,
    Ruma(req): Ruma<get_room_visibility::v3::Request>,
) -> RumaResult<get_room_visibility::v3::Response> {
    let public = h.directory.room_is_public(&req.room_id).await?;
    let visibility = if public {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(get_room_visibility::v3::Response::new(visibility).into())
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
) -> RumaResult<set_room_visibility::v3::Response> {
    let room = parse_room_id(&room_id)?;
    h.directory
        .set_room_visibility(&room, &s.user_id, b.visibility.as_deref())
        .await?;
    Ok(set_room_visibility::v3::Response::new().into())
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
    third_party_instance_id: Option<String>,
    #[serde(default)]
    include_all_networks: bool,
}

/// Read by hand rather than as ruma's request: a `server` that is not a
/// server name is answered as any other remote directory (404), where ruma's
/// type would refuse it (400); the POST's filter likewise ignores a
/// non-string search term ruma's would refuse. The page is Hearth's shape
/// (see `PublicRoom`).
async fn public_rooms_get(
    State(h): State<Arc<Hearth>>,
    _a: MaybeAuth,
    Query(q): Query<PublicRoomsQuery>,
) -> ApiResult<Json<PublicRooms>> {
    public_rooms(
        &h,
        PublicRoomsBody {
            limit: q.limit,
            since: q.since,
            server: q.server,
            filter: None,
            // Only the POST chooses another list (spec).
            third_party_instance_id: None,
            include_all_networks: false,
        },
    )
    .await
}

async fn public_rooms_post(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    JsonBody(b): JsonBody<PublicRoomsBody>,
) -> ApiResult<Json<PublicRooms>> {
    public_rooms(&h, b).await
}

async fn public_rooms(h: &Hearth, b: PublicRoomsBody) -> ApiResult<Json<PublicRooms>> {
    if let Some(server) = &b.server
        && server != h.config.server_name.as_str()
    {
        return Err(Error::not_found("Remote room directories are not available").into());
    }
    let list =
        RoomListScope::from_request(b.third_party_instance_id.as_deref(), b.include_all_networks)?;
    let page = h
        .room_list
        .public_rooms(b.limit, b.since.as_deref(), b.filter.as_ref(), &list)
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
struct ListingBody {
    visibility: Option<String>,
}

/// An application service publishes a room in its list for a network.
async fn put_appservice_listing(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((network, room_id)): Path<(String, String)>,
    JsonBody(b): JsonBody<ListingBody>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    h.directory
        .set_appservice_room_visibility(&s, &network, &room, b.visibility.as_deref())
        .await?;
    Ok(Json(serde_json::json!({})))
}

/// An application service withdraws a room from its list for a network.
async fn delete_appservice_listing(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((network, room_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    h.directory
        .set_appservice_room_visibility(&s, &network, &room, Some("private"))
        .await?;
    Ok(Json(serde_json::json!({})))
}

/// The answer keeps Hearth's shape (see `UserSearch`), so it is not ruma's
/// response type.
async fn search_users(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<search_users::v3::Request>,
) -> ApiResult<Json<UserSearch>> {
    let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
    Ok(Json(
        h.directory
            .search_user_directory(&s.user_id, &req.search_term, Some(limit))
            .await?,
    ))
}
