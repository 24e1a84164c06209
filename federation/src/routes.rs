//! The federation listener's routes.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    middleware::from_fn_with_state,
    response::IntoResponse,
    routing::{get, post, put},
};
use hearth_http_common::{
    error::ApiError,
    typed::{Ruma, RumaResult},
};
use ruma::api::federation::discovery::get_server_version;
use serde_json::json;

use crate::{Federation, acl, auth, e2ee, history, membership, queries, server_keys, transactions};

pub fn router(fed: Arc<Federation>) -> Router {
    let signed = Router::new()
        .merge(membership_routes())
        .merge(history_routes())
        .merge(query_routes())
        // Layers run outside in: the signature first, then the room's ACL.
        .route_layer(from_fn_with_state(fed.clone(), acl::require_room_access))
        .route_layer(from_fn_with_state(fed.clone(), auth::require_signature));
    Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/key/v2/server", get(server_keys::own))
        .route(
            "/_matrix/key/v2/server/{key_id}",
            get(server_keys::own_by_id),
        )
        .route("/_matrix/key/v2/query", post(server_keys::query_batch))
        .route(
            "/_matrix/key/v2/query/{server_name}",
            get(server_keys::query_one),
        )
        .route("/.well-known/matrix/server", get(well_known))
        // A third party's check of a user's OpenID token: not signed.
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(openid_userinfo),
        )
        .merge(signed)
        .fallback(unrecognized)
        .layer(DefaultBodyLimit::max(auth::MAX_REQUEST_BYTES))
        .layer(axum::middleware::from_fn(
            hearth_http_common::nul::refuse_nul,
        ))
        .layer(axum::middleware::from_fn(
            hearth_http_common::plain_errors::matrix_errors,
        ))
        .with_state(fed)
}

/// The user an OpenID token names (`Accounts::openid_userinfo`).
async fn openid_userinfo(
    State(fed): State<Arc<Federation>>,
    axum::extract::Query(q): axum::extract::Query<hearth_http_common::openid::UserinfoQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    hearth_http_common::openid::userinfo(&fed.hearth.accounts, q).await
}

/// Joining, leaving, knocking and invites, and the transactions that carry
/// a room's events.
fn membership_routes() -> Router<Arc<Federation>> {
    Router::new()
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(membership::make_join),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            put(membership::send_join),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(membership::make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            put(membership::send_leave),
        )
        .route(
            "/_matrix/federation/v1/make_knock/{room_id}/{user_id}",
            get(membership::make_knock),
        )
        .route(
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            put(membership::send_knock),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            put(membership::invite),
        )
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(transactions::receive),
        )
}

/// A room's past: its state at an event, backfill, missing events, one
/// event.
fn history_routes() -> Router<Arc<Federation>> {
    Router::new()
        .route(
            "/_matrix/federation/v1/event/{event_id}",
            get(queries::event),
        )
        .route(
            "/_matrix/federation/v1/state/{room_id}",
            get(history::state),
        )
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(history::state_ids),
        )
        .route(
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            get(history::event_auth),
        )
        .route(
            "/_matrix/federation/v1/backfill/{room_id}",
            get(history::backfill),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(history::get_missing_events),
        )
}

/// Profiles, aliases, the room directory and end-to-end keys.
fn query_routes() -> Router<Arc<Federation>> {
    Router::new()
        .route(
            "/_matrix/federation/v1/query/profile",
            get(queries::profile),
        )
        .route(
            "/_matrix/federation/v1/query/directory",
            get(queries::directory),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(queries::public_rooms_get).post(queries::public_rooms_post),
        )
        .route("/_matrix/federation/v1/user/keys/query", post(e2ee::query))
        .route("/_matrix/federation/v1/user/keys/claim", post(e2ee::claim))
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(e2ee::devices),
        )
}

async fn version(
    Ruma(_): Ruma<get_server_version::v1::Request>,
) -> RumaResult<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Hearth".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response.into())
}

async fn well_known(State(fed): State<Arc<Federation>>) -> impl IntoResponse {
    match &fed.config.well_known_server {
        Some(s) => Json(json!({"m.server": s})).into_response(),
        None => ApiError::new(
            http::StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "this server does not delegate federation",
        )
        .into_response(),
    }
}

async fn unrecognized() -> ApiError {
    ApiError::unrecognized("Unrecognized request")
}
