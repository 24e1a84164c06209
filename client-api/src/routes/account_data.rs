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

/// Types the server manages itself must go through their own endpoints
/// (the spec's answer is 405 with `M_BAD_JSON`).
fn settable(kind: &str) -> ApiResult<()> {
    if kind == "m.fully_read" || kind == "m.push_rules" {
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
    let v = h
        .store
        .get_account_data(s.user_id.as_str(), "", &kind)
        .await?
        .ok_or_else(|| Error::not_found("Account data not found"))?;
    Ok(Json(v))
}

async fn put_global(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, kind)): Path<(String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    settable(&kind)?;
    h.store
        .put_account_data(s.user_id.as_str(), "", &kind, &Value::Object(content))
        .await?;
    h.notifier.notify_users([s.user_id.as_str()]);
    Ok(Json(json!({})))
}

async fn get_room(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, room_id, kind)): Path<(String, String, String)>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    let room = parse_room_id(&room_id)?;
    let v = h
        .store
        .get_account_data(s.user_id.as_str(), room.as_str(), &kind)
        .await?
        .ok_or_else(|| Error::not_found("Account data not found"))?;
    Ok(Json(v))
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
    h.store
        .put_account_data(
            s.user_id.as_str(),
            room.as_str(),
            &kind,
            &Value::Object(content),
        )
        .await?;
    h.notifier.notify_users([s.user_id.as_str()]);
    Ok(Json(json!({})))
}

async fn tags_of(h: &Hearth, user: &str, room: &str) -> ApiResult<Map<String, Value>> {
    let v = h.store.get_account_data(user, room, "m.tag").await?;
    Ok(
        v.and_then(|v| v.get("tags").and_then(Value::as_object).cloned())
            .unwrap_or_default(),
    )
}

async fn get_tags(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, room_id)): Path<(String, String)>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    let room = parse_room_id(&room_id)?;
    Ok(Json(
        json!({"tags": tags_of(&h, s.user_id.as_str(), room.as_str()).await?}),
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
    if let Some(order) = body.get("order")
        && !order.is_number()
    {
        return Err(Error::bad_json("order must be a number").into());
    }
    let mut tags = tags_of(&h, s.user_id.as_str(), room.as_str()).await?;
    tags.insert(tag, Value::Object(body));
    h.store
        .put_account_data(
            s.user_id.as_str(),
            room.as_str(),
            "m.tag",
            &json!({"tags": tags}),
        )
        .await?;
    h.notifier.notify_users([s.user_id.as_str()]);
    Ok(Json(json!({})))
}

async fn delete_tag(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
) -> JsonResult {
    ensure_self(&s, &user_id)?;
    let room = parse_room_id(&room_id)?;
    let mut tags = tags_of(&h, s.user_id.as_str(), room.as_str()).await?;
    if tags.remove(&tag).is_some() {
        h.store
            .put_account_data(
                s.user_id.as_str(),
                room.as_str(),
                "m.tag",
                &json!({"tags": tags}),
            )
            .await?;
        h.notifier.notify_users([s.user_id.as_str()]);
    }
    Ok(Json(json!({})))
}
