//! Room creation, membership, state and member lists.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post},
};
use hearth_core::{
    Error, Hearth,
    pdu::Pdu,
    rooms::{CreateRoom, MemberAction, NewEvent},
};
use ruma::events::room::member::MembershipState;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{JsonResult, parse_room_id, parse_user_id};
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/createRoom", post(create_room))
        .route("/join/{room}", post(join_by_id_or_alias))
        .route("/knock/{room}", post(knock))
        .route("/rooms/{room_id}/join", post(join))
        .route("/rooms/{room_id}/leave", post(leave))
        .route("/rooms/{room_id}/invite", post(invite))
        .route("/rooms/{room_id}/kick", post(kick))
        .route("/rooms/{room_id}/ban", post(ban))
        .route("/rooms/{room_id}/unban", post(unban))
        .route("/rooms/{room_id}/forget", post(forget))
        .route("/joined_rooms", get(joined_rooms))
        .route("/rooms/{room_id}/state", get(all_state))
        .route(
            "/rooms/{room_id}/state/{event_type}",
            get(get_state_empty_key).put(put_state_empty_key),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}/",
            get(get_state_empty_key).put(put_state_empty_key),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}/{state_key}",
            get(get_state).put(put_state),
        )
        .route("/rooms/{room_id}/members", get(members))
        .route("/rooms/{room_id}/joined_members", get(joined_members))
}

#[derive(Deserialize)]
struct InitialState {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    state_key: String,
    content: Map<String, Value>,
}

#[derive(Deserialize)]
struct CreateRoomBody {
    visibility: Option<String>,
    room_alias_name: Option<String>,
    name: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    invite: Vec<String>,
    #[serde(default)]
    invite_3pid: Vec<Value>,
    room_version: Option<String>,
    creation_content: Option<Map<String, Value>>,
    #[serde(default)]
    initial_state: Vec<InitialState>,
    preset: Option<String>,
    #[serde(default)]
    is_direct: bool,
    power_level_content_override: Option<Map<String, Value>>,
}

async fn create_room(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    JsonBody(b): JsonBody<CreateRoomBody>,
) -> JsonResult {
    let visibility_public = match b.visibility.as_deref() {
        None | Some("private") => false,
        Some("public") => true,
        Some(v) => return Err(Error::invalid_param(format!("Invalid visibility {v}")).into()),
    };
    if !b.invite_3pid.is_empty() {
        return Err(Error::invalid_param("Third-party invites are not supported").into());
    }
    let invite = b
        .invite
        .iter()
        .map(|u| parse_user_id(u))
        .collect::<ApiResult<Vec<_>>>()?;
    if let Some(local) = &b.room_alias_name {
        let alias = format!("#{local}:{}", h.config.server_name);
        h.check_alias_claim(&alias, s.appservice.as_deref())?;
    }
    let req = CreateRoom {
        preset: b.preset,
        visibility_public,
        name: b.name,
        topic: b.topic,
        invite,
        is_direct: b.is_direct,
        initial_state: b
            .initial_state
            .into_iter()
            .map(|s| (s.kind, s.state_key, Value::Object(s.content)))
            .collect(),
        room_alias_name: b.room_alias_name,
        power_level_content_override: b.power_level_content_override,
        room_version: b.room_version,
        creation_content: b.creation_content,
    };
    let room_id = h.create_room(&s.user_id, req).await?;
    tracing::info!(room = %room_id, creator = %s.user_id, "room created");
    Ok(Json(json!({"room_id": room_id})))
}

#[derive(Deserialize, Default)]
struct ReasonBody {
    reason: Option<String>,
}

async fn join_by_id_or_alias(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(b): JsonBody<ReasonBody>,
) -> JsonResult {
    let room_id = h
        .join_anywhere(
            &room,
            &s.user_id,
            b.reason.as_deref(),
            via_servers(query.as_deref()),
        )
        .await?;
    Ok(Json(json!({"room_id": room_id})))
}

async fn knock(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(b): JsonBody<ReasonBody>,
) -> JsonResult {
    let room_id = h
        .knock_anywhere(
            &room,
            &s.user_id,
            b.reason.as_deref(),
            via_servers(query.as_deref()),
        )
        .await?;
    Ok(Json(json!({"room_id": room_id})))
}

/// The servers a client names to join through (`via`, and the older
/// `server_name`), each possibly repeated.
fn via_servers(query: Option<&str>) -> Vec<String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "via" || *k == "server_name")
        .filter_map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned())
        })
        .filter(|v| hearth_core::ruma::ServerName::parse(v).is_ok())
        .collect()
}

async fn join(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
    JsonBody(b): JsonBody<ReasonBody>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    let room_id = h
        .join_anywhere(room_id.as_str(), &s.user_id, b.reason.as_deref(), vec![])
        .await?;
    Ok(Json(json!({"room_id": room_id})))
}

async fn leave(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
    JsonBody(b): JsonBody<ReasonBody>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    h.leave_room(&room_id, &s.user_id, b.reason.as_deref())
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct TargetBody {
    user_id: String,
    reason: Option<String>,
}

async fn invite(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
    JsonBody(b): JsonBody<TargetBody>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    let target = parse_user_id(&b.user_id)?;
    h.invite_user(&room_id, &s.user_id, &target, b.reason.as_deref())
        .await?;
    Ok(Json(json!({})))
}

async fn membership_change(
    h: &Hearth,
    sender: &Auth,
    room_id: &str,
    b: &TargetBody,
    action: MemberAction,
) -> JsonResult {
    let room_id = parse_room_id(room_id)?;
    let target = parse_user_id(&b.user_id)?;
    h.moderate_member(
        &room_id,
        &sender.0.user_id,
        &target,
        action,
        b.reason.as_deref(),
    )
    .await?;
    Ok(Json(json!({})))
}

async fn kick(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Path(r): Path<String>,
    JsonBody(b): JsonBody<TargetBody>,
) -> JsonResult {
    membership_change(&h, &a, &r, &b, MemberAction::Kick).await
}

async fn ban(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Path(r): Path<String>,
    JsonBody(b): JsonBody<TargetBody>,
) -> JsonResult {
    membership_change(&h, &a, &r, &b, MemberAction::Ban).await
}

async fn unban(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Path(r): Path<String>,
    JsonBody(b): JsonBody<TargetBody>,
) -> JsonResult {
    membership_change(&h, &a, &r, &b, MemberAction::Unban).await
}

async fn forget(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
) -> JsonResult {
    let room_id = parse_room_id(&room_id)?;
    h.forget_room(&room_id, &s.user_id).await?;
    Ok(Json(json!({})))
}

async fn joined_rooms(State(h): State<Arc<Hearth>>, Auth(s): Auth) -> JsonResult {
    let rooms = h.joined_rooms(&s.user_id).await?;
    Ok(Json(json!({"joined_rooms": rooms})))
}

async fn readable_state(
    h: &Hearth,
    room: &str,
    user: &hearth_core::ruma::UserId,
) -> ApiResult<Vec<Pdu>> {
    let room_id = parse_room_id(room)?;
    Ok(h.readable_state(&room_id, user).await?)
}

async fn all_state(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
) -> JsonResult {
    let state = readable_state(&h, &room_id, &s.user_id).await?;
    let events: Vec<Value> = state.iter().map(|p| p.to_client(None, None)).collect();
    Ok(Json(Value::Array(events)))
}

#[derive(Deserialize)]
struct StateQuery {
    format: Option<String>,
}

async fn state_event(
    h: &Hearth,
    user: &hearth_core::ruma::UserId,
    room: &str,
    kind: &str,
    sk: &str,
    q: &StateQuery,
) -> JsonResult {
    let state = readable_state(h, room, user).await?;
    let ev = state
        .into_iter()
        .find(|p| p.kind.to_string() == kind && p.state_key.as_deref() == Some(sk))
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if q.format.as_deref() == Some("event") {
        Ok(Json(ev.to_client(None, None)))
    } else {
        Ok(Json(ev.content_value()))
    }
}

async fn get_state(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, kind, sk)): Path<(String, String, String)>,
    Query(q): Query<StateQuery>,
) -> JsonResult {
    state_event(&h, &s.user_id, &room_id, &kind, &sk, &q).await
}

async fn get_state_empty_key(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room_id, kind)): Path<(String, String)>,
    Query(q): Query<StateQuery>,
) -> JsonResult {
    state_event(&h, &s.user_id, &room_id, &kind, "", &q).await
}

async fn send_state(
    h: &Hearth,
    s: &Auth,
    room: &str,
    kind: &str,
    sk: &str,
    content: Map<String, Value>,
    query: Option<&str>,
) -> JsonResult {
    let room_id = parse_room_id(room)?;
    if kind == "m.room.member" {
        parse_user_id(sk)?;
    }
    let mut ev = NewEvent::state(s.0.user_id.clone(), kind, sk, Value::Object(content));
    ev.ts = crate::extract::massaged_ts(&s.0, query)?;
    let event_id = h.send_event(&room_id, ev).await?;
    Ok(Json(json!({"event_id": event_id})))
}

async fn put_state(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Path((room_id, kind, sk)): Path<(String, String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> JsonResult {
    send_state(&h, &a, &room_id, &kind, &sk, content, query.as_deref()).await
}

async fn put_state_empty_key(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Path((room_id, kind)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> JsonResult {
    send_state(&h, &a, &room_id, &kind, "", content, query.as_deref()).await
}

#[derive(Deserialize)]
struct MembersQuery {
    membership: Option<String>,
    not_membership: Option<String>,
}

async fn members(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MembersQuery>,
) -> JsonResult {
    let state = readable_state(&h, &room_id, &s.user_id).await?;
    let chunk: Vec<Value> = state
        .iter()
        .filter(|p| p.kind.to_string() == "m.room.member")
        .filter(|p| {
            let m = p
                .content_value()
                .get("membership")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            q.membership.as_ref().is_none_or(|w| *w == m)
                && q.not_membership.as_ref().is_none_or(|n| *n != m)
        })
        .map(|p| p.to_client(None, None))
        .collect();
    Ok(Json(json!({"chunk": chunk})))
}

async fn joined_members(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room_id): Path<String>,
) -> JsonResult {
    let state = readable_state(&h, &room_id, &s.user_id).await?;
    let mut joined = Map::new();
    for p in state
        .iter()
        .filter(|p| p.kind.to_string() == "m.room.member")
    {
        let c = p.content_value();
        if c.get("membership")
            .and_then(Value::as_str)
            .map(MembershipState::from)
            == Some(MembershipState::Join)
            && let Some(sk) = &p.state_key
        {
            joined.insert(
                sk.clone(),
                json!({"display_name": c.get("displayname"), "avatar_url": c.get("avatar_url")}),
            );
        }
    }
    Ok(Json(json!({"joined": joined})))
}
