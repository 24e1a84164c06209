//! Global and per-room account data, and room tags (stored as `m.tag`).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, put},
};
use hearth_core::{
    Error, Hearth,
    accounts::Session,
    ruma::{UserId, serde::Raw},
};
use ruma_client_api::{
    config::{
        get_global_account_data, get_room_account_data, set_global_account_data,
        set_room_account_data,
    },
    tag::{create_tag, delete_tag, get_tags},
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{parse_room_id, parse_user_id};
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
    typed::{Ruma, RumaResult, json_object_body},
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

fn ensure_self(s: &Session, user: &UserId) -> ApiResult<()> {
    if user != s.user_id {
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

/// Stored content as ruma's raw account data content.
fn raw_content<T>(content: Value) -> ApiResult<Raw<T>> {
    Ok(Raw::new(&content)
        .map_err(hearth_core::Error::from)?
        .cast_unchecked())
}

async fn get_global(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<get_global_account_data::v3::Request>,
) -> RumaResult<get_global_account_data::v3::Response> {
    ensure_self(&s, &req.user_id)?;
    let kind = req.event_type.to_string();
    let content = h.account_data.account_data(&s.user_id, None, &kind).await?;
    Ok(get_global_account_data::v3::Response::new(raw_content(content)?).into())
}

async fn put_global(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<set_global_account_data::v3::Request>,
) -> RumaResult<set_global_account_data::v3::Response> {
    ensure_self(&s, &req.user_id)?;
    let kind = req.event_type.to_string();
    settable(&kind)?;
    let content = json_object_body(&req.data)?;
    h.account_data
        .put_account_data(&s.user_id, None, &kind, content)
        .await?;
    Ok(set_global_account_data::v3::Response::new().into())
}

async fn get_room(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<get_room_account_data::v3::Request>,
) -> RumaResult<get_room_account_data::v3::Response> {
    ensure_self(&s, &req.user_id)?;
    let kind = req.event_type.to_string();
    let content = h
        .account_data
        .account_data(&s.user_id, Some(&req.room_id), &kind)
        .await?;
    Ok(get_room_account_data::v3::Response::new(raw_content(content)?).into())
}

async fn put_room(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<set_room_account_data::v3::Request>,
) -> RumaResult<set_room_account_data::v3::Response> {
    ensure_self(&s, &req.user_id)?;
    let kind = req.event_type.to_string();
    settable(&kind)?;
    let content = json_object_body(&req.data)?;
    h.account_data
        .put_account_data(&s.user_id, Some(&req.room_id), &kind, content)
        .await?;
    Ok(set_room_account_data::v3::Response::new().into())
}

/// The tags go back as stored (Hearth's shape): ruma's `TagInfo` would keep
/// only `order` of what a client put in a tag.
#[derive(Serialize)]
struct Tags {
    tags: Map<String, Value>,
}

async fn get_tags(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<get_tags::v3::Request>,
) -> ApiResult<Json<Tags>> {
    ensure_self(&s, &req.user_id)?;
    let tags = h.account_data.room_tags(&s.user_id, &req.room_id).await?;
    Ok(Json(Tags { tags }))
}

async fn put_tag(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> RumaResult<create_tag::v3::Response> {
    ensure_self(&s, &parse_user_id(&user_id)?)?;
    let room = parse_room_id(&room_id)?;
    h.account_data
        .set_room_tag(&s.user_id, &room, tag, body)
        .await?;
    Ok(create_tag::v3::Response::new().into())
}

async fn delete_tag(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<delete_tag::v3::Request>,
) -> RumaResult<delete_tag::v3::Response> {
    ensure_self(&s, &req.user_id)?;
    h.account_data
        .delete_room_tag(&s.user_id, &req.room_id, &req.tag)
        .await?;
    Ok(delete_tag::v3::Response::new().into())
}
