//! Global and per-room account data, and room tags (stored as `m.tag`).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, put},
};
use hearth_core::{Error, Hearth, accounts::Session};
use serde_json::{Map, Value, json};

use super::{JsonResult, parse_room_id, parse_user_id};
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route(
            "/user/{user_id}/account_data/{kind}",
            get(get_global).put(put_global),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/account_data/{kind}",
            get(get_room).put(put_room),
        )
        .route("/user/{user_id}/rooms/{room_id}/tags", get(get_tags))
        .route(
            "/user/{user_id}/rooms/{room_id}/tags/{tag}",
            put(put_tag).delete(delete_tag),
        )
}

fn ensure_self(s: &Session, user_id: &str) -> ApiResult<()> {
    if parse_user_id(user_id)? != s.user_id {
        return Err(Error::forbidden("You cannot access another user's account data").into());
    }
    Ok(())
}

/// Server-managed types go through their own endpoints (the spec's answer
/// is 405 with `M_BAD_JSON`).
fn settable(kind: &str) -> ApiResult<()> {
    if hearth_core::account_data::server_managed(kind) {
        tracing::info!(
            kind,
            "refused a client write of server-managed account data"
        );
        return Err(crate::error::ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("Cannot set {kind} through this API"),
        ));
    }
    Ok(())
}

async fn get_global(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, kind)): Path<(String, String)>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    Ok(Json(
        h.account_data.account_data(&s.user_id, None, &kind).await?,
    ))
}

async fn put_global(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, kind)): Path<(String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    settable(&kind)?;
    h.account_data
        .put_account_data(&s.user_id, None, &kind, content)
        .await?;
    Ok(Json(json!({})))
}

async fn get_room(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, room_id, kind)): Path<(String, String, String)>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    let room = parse_room_id(&room_id)?;
    Ok(Json(
        h.account_data
            .account_data(&s.user_id, Some(&room), &kind)
            .await?,
    ))
}

async fn put_room(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, room_id, kind)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    let room = parse_room_id(&room_id)?;
    settable(&kind)?;
    h.account_data
        .put_account_data(&s.user_id, Some(&room), &kind, content)
        .await?;
    Ok(Json(json!({})))
}

async fn get_tags(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, room_id)): Path<(String, String)>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    let room = parse_room_id(&room_id)?;
    Ok(Json(
        json!({"tags": h.account_data.room_tags(&s.user_id, &room).await?}),
    ))
}

async fn put_tag(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    let room = parse_room_id(&room_id)?;
    h.account_data
        .set_room_tag(&s.user_id, &room, tag, body)
        .await?;
    Ok(Json(json!({})))
}

async fn delete_tag(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    let room = parse_room_id(&room_id)?;
    h.account_data
        .delete_room_tag(&s.user_id, &room, &tag)
        .await?;
    Ok(Json(json!({})))
}
