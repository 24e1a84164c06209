//! Room creation, membership, state and member lists.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post},
};
use hearth_core::{
    Error, Hearth,
    rooms::{CreateRoom, MemberAction, NewEvent},
    ruma::{RoomId, UserId, serde::Raw},
};
use ruma::events::room::member::MembershipState;
use ruma_client_api::{
    knock::knock_room,
    membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
        join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
    room::{Visibility, create_room},
    state::{
        get_state_event_for_key::{self, v3::StateEventFormat},
        get_state_events, send_state_event,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, value::RawValue as RawJsonValue};

use super::{parse_room_id, parse_user_id, stored_id};
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
    typed::{Ruma, RumaResult},
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
            get(get_state).put(put_state_empty_key),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}/",
            get(get_state).put(put_state_empty_key),
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

async fn create_room(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(b): Ruma<create_room::v3::Request>,
) -> RumaResult<create_room::v3::Response> {
    let visibility_public = match b.visibility {
        Visibility::Private => false,
        Visibility::Public => true,
        v => return Err(Error::invalid_param(format!("Invalid visibility {v}")).into()),
    };
    if !b.invite_3pid.is_empty() {
        return Err(Error::invalid_param("Third-party invites are not supported").into());
    }
    if let Some(local) = &b.room_alias_name {
        let alias = format!("#{local}:{}", h.config.server_name);
        h.appservices
            .check_alias_claim(&alias, s.appservice.as_deref())?;
    }
    let req = CreateRoom {
        preset: b.preset.map(|p| p.as_str().to_owned()),
        visibility_public,
        name: b.name,
        topic: b.topic,
        invite: b.invite,
        is_direct: b.is_direct,
        initial_state: b
            .initial_state
            .iter()
            .map(initial_state_event)
            .collect::<Result<_, _>>()?,
        room_alias_name: b.room_alias_name,
        power_level_content_override: b
            .power_level_content_override
            .map(|c| object(c.json(), "power_level_content_override"))
            .transpose()?,
        room_version: b.room_version.map(|v| v.to_string()),
        creation_content: b
            .creation_content
            .map(|c| object(c.json(), "creation_content"))
            .transpose()?,
    };
    let room_id = h.writer.create_room(&s.user_id, req).await?;
    tracing::info!(room = %room_id, creator = %s.user_id, "room created");
    Ok(create_room::v3::Response::new(room_id).into())
}

/// One event of createRoom's `initial_state`: its type, state key (empty
/// when absent) and content object.
fn initial_state_event<T>(raw: &Raw<T>) -> Result<(String, String, Value), Error> {
    let e: InitialState = raw
        .deserialize_as_unchecked()
        .map_err(|e| Error::bad_json(format!("Invalid initial_state event: {e}")))?;
    Ok((e.kind, e.state_key, Value::Object(e.content)))
}

/// A body field ruma keeps raw that Hearth reads as a JSON object.
fn object(raw: &RawJsonValue, field: &str) -> Result<Map<String, Value>, Error> {
    serde_json::from_str(raw.get())
        .map_err(|e| Error::bad_json(format!("{field} must be an object: {e}")))
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
) -> RumaResult<join_room_by_id_or_alias::v3::Response> {
    let room_id = h
        .writer
        .join_anywhere(
            &room,
            &s.user_id,
            b.reason.as_deref(),
            via_servers(query.as_deref()),
        )
        .await?;
    let room_id = stored_id(RoomId::parse(room_id))?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id).into())
}

async fn knock(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(b): JsonBody<ReasonBody>,
) -> RumaResult<knock_room::v3::Response> {
    let room_id = h
        .writer
        .knock_anywhere(
            &room,
            &s.user_id,
            b.reason.as_deref(),
            via_servers(query.as_deref()),
        )
        .await?;
    let room_id = stored_id(RoomId::parse(room_id))?;
    Ok(knock_room::v3::Response::new(room_id).into())
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
    Ruma(req): Ruma<join_room_by_id::v3::Request>,
) -> RumaResult<join_room_by_id::v3::Response> {
    let room_id = h
        .writer
        .join_anywhere(
            req.room_id.as_str(),
            &s.user_id,
            req.reason.as_deref(),
            vec![],
        )
        .await?;
    let room_id = stored_id(RoomId::parse(room_id))?;
    Ok(join_room_by_id::v3::Response::new(room_id).into())
}

async fn leave(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<leave_room::v3::Request>,
) -> RumaResult<leave_room::v3::Response> {
    h.writer
        .leave_room(&req.room_id, &s.user_id, req.reason.as_deref())
        .await?;
    Ok(leave_room::v3::Response::new().into())
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
) -> RumaResult<invite_user::v3::Response> {
    let room_id = parse_room_id(&room_id)?;
    let target = parse_user_id(&b.user_id)?;
    h.writer
        .invite_user(&room_id, &s.user_id, &target, b.reason.as_deref())
        .await?;
    Ok(invite_user::v3::Response::new().into())
}

/// A kick, ban or unban: the room, its target and the reason.
async fn moderate(
    h: &Hearth,
    sender: &Auth,
    (room_id, target, reason): (&RoomId, &UserId, Option<&str>),
    action: MemberAction,
) -> ApiResult<()> {
    h.writer
        .moderate_member(room_id, &sender.0.user_id, target, action, reason)
        .await?;
    Ok(())
}

async fn kick(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Ruma(r): Ruma<kick_user::v3::Request>,
) -> RumaResult<kick_user::v3::Response> {
    let target = (&*r.room_id, &*r.user_id, r.reason.as_deref());
    moderate(&h, &a, target, MemberAction::Kick).await?;
    Ok(kick_user::v3::Response::new().into())
}

async fn ban(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Ruma(r): Ruma<ban_user::v3::Request>,
) -> RumaResult<ban_user::v3::Response> {
    let target = (&*r.room_id, &*r.user_id, r.reason.as_deref());
    moderate(&h, &a, target, MemberAction::Ban).await?;
    Ok(ban_user::v3::Response::new().into())
}

async fn unban(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Ruma(r): Ruma<unban_user::v3::Request>,
) -> RumaResult<unban_user::v3::Response> {
    let target = (&*r.room_id, &*r.user_id, r.reason.as_deref());
    moderate(&h, &a, target, MemberAction::Unban).await?;
    Ok(unban_user::v3::Response::new().into())
}

async fn forget(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<forget_room::v3::Request>,
) -> RumaResult<forget_room::v3::Response> {
    h.writer.forget_room(&req.room_id, &s.user_id).await?;
    Ok(forget_room::v3::Response::new().into())
}

async fn joined_rooms(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(_): Ruma<joined_rooms::v3::Request>,
) -> RumaResult<joined_rooms::v3::Response> {
    let rooms = h.writer.joined_rooms(&s.user_id).await?;
    let rooms = rooms
        .iter()
        .map(|r| stored_id(RoomId::parse(r)))
        .collect::<Result<_, _>>()?;
    Ok(joined_rooms::v3::Response::new(rooms).into())
}

async fn all_state(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<get_state_events::v3::Request>,
) -> RumaResult<get_state_events::v3::Response> {
    let state = h
        .visibility
        .readable_state(&req.room_id, &s.user_id)
        .await?;
    let events = state
        .iter()
        .map(|p| raw(&p.to_client(None, None)))
        .collect::<Result<_, _>>()?;
    Ok(get_state_events::v3::Response::new(events).into())
}

/// A JSON value Hearth built, as ruma's raw JSON of a given type.
fn raw<T>(value: &Value) -> Result<Raw<T>, Error> {
    Ok(Raw::new(value)?.cast_unchecked())
}

/// One state event's content, or the whole event with `?format=event`
/// (served under both `/state/{type}` and `/state/{type}/{state_key}`).
async fn get_state(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<get_state_event_for_key::v3::Request>,
) -> RumaResult<get_state_event_for_key::v3::Response> {
    let state = h
        .visibility
        .readable_state(&req.room_id, &s.user_id)
        .await?;
    let (kind, sk) = (req.event_type.to_string(), req.state_key.as_str());
    let ev = state
        .into_iter()
        .find(|p| p.kind.to_string() == kind && p.state_key.as_deref() == Some(sk))
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let value = if req.format == StateEventFormat::Event {
        ev.to_client(None, None)
    } else {
        ev.content_value()
    };
    let json = serde_json::value::to_raw_value(&value).map_err(Error::from)?;
    Ok(get_state_event_for_key::v3::Response::new(json).into())
}

async fn send_state(
    h: &Hearth,
    s: &Auth,
    room: &str,
    kind: &str,
    sk: &str,
    content: Map<String, Value>,
    query: Option<&str>,
) -> RumaResult<send_state_event::v3::Response> {
    let room_id = parse_room_id(room)?;
    if kind == "m.room.member" {
        parse_user_id(sk)?;
    }
    let mut ev = NewEvent::state(s.0.user_id.clone(), kind, sk, Value::Object(content));
    ev.ts = crate::extract::massaged_ts(&s.0, query)?;
    let event_id = h.writer.send_event(&room_id, ev).await?;
    Ok(send_state_event::v3::Response::new(event_id).into())
}

async fn put_state(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Path((room_id, kind, sk)): Path<(String, String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> RumaResult<send_state_event::v3::Response> {
    send_state(&h, &a, &room_id, &kind, &sk, content, query.as_deref()).await
}

async fn put_state_empty_key(
    State(h): State<Arc<Hearth>>,
    a: Auth,
    Path((room_id, kind)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> RumaResult<send_state_event::v3::Response> {
    send_state(&h, &a, &room_id, &kind, "", content, query.as_deref()).await
}

async fn members(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(q): Ruma<get_member_events::v3::Request>,
) -> RumaResult<get_member_events::v3::Response> {
    let state = h.visibility.readable_state(&q.room_id, &s.user_id).await?;
    let (wanted, unwanted) = (q.membership.as_ref(), q.not_membership.as_ref());
    let chunk = state
        .iter()
        .filter(|p| p.kind.to_string() == "m.room.member")
        .filter(|p| {
            let c = p.content_value();
            let m = c
                .get("membership")
                .and_then(Value::as_str)
                .unwrap_or_default();
            wanted.is_none_or(|w| w.as_str() == m) && unwanted.is_none_or(|n| n.as_str() != m)
        })
        .map(|p| raw(&p.to_client(None, None)))
        .collect::<Result<_, _>>()?;
    Ok(get_member_events::v3::Response::new(chunk).into())
}

/// `/joined_members`' answer. Hearth's shape rather than ruma's: a member
/// without a display name or avatar is sent with `null` there (as Synapse
/// does), and the values go as the member event has them.
#[derive(Serialize)]
struct JoinedMembers {
    joined: BTreeMap<String, JoinedMember>,
}

#[derive(Serialize)]
struct JoinedMember {
    avatar_url: Option<Value>,
    display_name: Option<Value>,
}

async fn joined_members(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<joined_members::v3::Request>,
) -> ApiResult<Json<JoinedMembers>> {
    let state = h
        .visibility
        .readable_state(&req.room_id, &s.user_id)
        .await?;
    let mut joined = BTreeMap::new();
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
            let member = JoinedMember {
                avatar_url: c.get("avatar_url").cloned(),
                display_name: c.get("displayname").cloned(),
            };
            joined.insert(sk.clone(), member);
        }
    }
    Ok(Json(JoinedMembers { joined }))
}
