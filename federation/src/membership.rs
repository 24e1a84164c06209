//! Joining rooms across servers: `make_join` / `send_join` (v2) answered
//! for other servers' users, and asked of other servers for ours.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Extension, Json,
    extract::{Path, RawQuery, State},
};
use hearth_core::{CoreConfig, Error, ids::now_ms, pdu::Pdu};
use hearth_http_common::{
    error::ApiError,
    typed::{Ruma, RumaResult},
};
use ruma::{
    CanonicalJsonValue, RoomId, RoomVersionId, UserId,
    api::federation::membership::{
        RawStrippedState, create_invite, create_knock_event, create_leave_event,
        prepare_join_event, prepare_leave_event,
    },
    events::room::member::MembershipState,
    signatures::hash_and_sign_event,
};
use serde_json::{Value, json, value::RawValue as RawJsonValue};

use crate::{
    FedError, Federation,
    auth::Origin,
    enc,
    pdu::{event_id_of, pdu_object, rules_of},
    query::query_values,
};

/// `GET /make_join/{roomId}/{userId}?ver=…`: a join template, for a server
/// that supports the room's version (none named: only "1", ruma's default).
pub(crate) async fn make_join(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Ruma(req): Ruma<prepare_join_event::v1::Request>,
) -> RumaResult<prepare_join_event::v1::Response> {
    let (room, user) = (req.room_id.as_str(), req.user_id.as_str());
    let (template, version) = template(&fed, &origin, room, user, "join").await?;
    if !req.ver.contains(&version) {
        return Err(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("the room is version {version}, which {origin} does not support"),
        ));
    }
    let mut response = prepare_join_event::v1::Response::new(raw_event(&template)?);
    response.room_version = Some(version);
    Ok(response.into())
}

/// An event Hearth built or stored, as the raw event ruma's answers carry.
fn raw_event(template: &Value) -> Result<Box<RawJsonValue>, ApiError> {
    Ok(serde_json::value::to_raw_value(template).map_err(Error::from)?)
}

/// `GET /make_knock/{roomId}/{userId}?ver=…`: a knock template, for a room
/// whose version has knocking and a server that supports that version.
pub(crate) async fn make_knock(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, user_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let room = RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let version = fed.hearth.rooms.room_version_of(&room).await?;
    let supported = query_values(query.as_deref(), "ver");
    let knocking = rules_of(&version).is_ok_and(|r| r.authorization.knocking);
    if !knocking || !supported.iter().any(|v| v == version.as_str()) {
        return Err(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("the room is version {version}: no knocking there, or not for {origin}"),
        ));
    }
    let (template, version) = template(&fed, &origin, &room_id, &user_id, "knock").await?;
    Ok(Json(json!({"event": template, "room_version": version})))
}

/// `PUT /send_knock/{roomId}/{eventId}`: stores the knock and answers with
/// what the knocker may see of the room.
pub(crate) async fn send_knock(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> RumaResult<create_knock_event::v1::Response> {
    let pdu = membership_event(&fed, &origin, &room_id, &event_id, &body, "knock").await?;
    let room = pdu.room_id.clone();
    let user = pdu.sender.to_string();
    fed.hearth.writer.accept_remote_event(pdu, true).await?;
    let state = fed.hearth.rooms.room_state_shown(&room).await?;
    tracing::info!(room = %room, %user, %origin, "remote user knocked");
    let state = state
        .iter()
        .map(|pdu| raw_event(pdu).map(RawStrippedState::Pdu))
        .collect::<Result<_, _>>()?;
    Ok(create_knock_event::v1::Response::new(state).into())
}

pub(crate) async fn make_leave(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Ruma(req): Ruma<prepare_leave_event::v1::Request>,
) -> RumaResult<prepare_leave_event::v1::Response> {
    let (room, user) = (req.room_id.as_str(), req.user_id.as_str());
    let (template, version) = template(&fed, &origin, room, user, "leave").await?;
    let response = prepare_leave_event::v1::Response::new(Some(version), raw_event(&template)?);
    Ok(response.into())
}

/// A membership template for a user of the requesting server.
async fn template(
    fed: &Federation,
    origin: &ruma::ServerName,
    room_id: &str,
    user_id: &str,
    membership: &str,
) -> Result<(Value, RoomVersionId), ApiError> {
    let room = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let user = UserId::parse(user_id).map_err(|_| Error::invalid_param("Invalid user id"))?;
    if user.server_name() != origin {
        return Err(Error::Forbidden(format!(
            "{origin} cannot {membership} for users of other servers"
        ))
        .into());
    }
    Ok(fed
        .hearth
        .rooms
        .member_template(&room, &user, membership)
        .await?)
}

pub(crate) async fn send_leave(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> RumaResult<create_leave_event::v2::Response> {
    let pdu = membership_event(&fed, &origin, &room_id, &event_id, &body, "leave").await?;
    fed.hearth.writer.accept_remote_event(pdu, true).await?;
    Ok(create_leave_event::v2::Response::new().into())
}

/// A received membership event of `origin`'s user about themselves, with
/// the id and room its path names.
async fn membership_event(
    fed: &Federation,
    origin: &ruma::ServerName,
    room_id: &str,
    event_id: &str,
    body: &Value,
    membership: &str,
) -> Result<Pdu, ApiError> {
    let room = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let version = fed.hearth.rooms.room_version_of(&room).await?;
    let pdu = fed.check_pdu(body, &version).await?;
    if pdu.event_id.as_str() != event_id {
        return Err(Error::bad_json(format!(
            "the event's id is {}, not {event_id}",
            pdu.event_id
        ))
        .into());
    }
    if pdu.room_id != room
        || pdu.kind.to_string() != "m.room.member"
        || pdu.membership() != Some(membership)
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
    {
        return Err(
            Error::bad_json(format!("not a {membership} of its sender in this room")).into(),
        );
    }
    if pdu.sender.server_name() != origin {
        return Err(Error::Forbidden(format!(
            "{origin} cannot {membership} for users of other servers"
        ))
        .into());
    }
    Ok(pdu)
}

pub(crate) async fn send_join(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let pdu = membership_event(&fed, &origin, &room_id, &event_id, &body, "join").await?;
    let room = pdu.room_id.clone();
    let join_id = pdu.event_id.clone();
    let user = pdu.sender.to_string();
    fed.hearth.writer.accept_remote_event(pdu, true).await?;

    // The state the joining server needs: the room's state before the join
    // and every event its auth chains reach.
    let (state, auth_chain) = fed
        .hearth
        .federated
        .state_for_joiner(&room, &join_id)
        .await?;
    tracing::info!(room = %room, %user, %origin, "remote user joined through this server");
    Ok(Json(json!({
        "origin": fed.server_name(),
        "state": state.iter().map(|p| Value::Object(p.as_sent())).collect::<Vec<_>>(),
        "auth_chain": auth_chain.iter().map(|p| Value::Object(p.as_sent())).collect::<Vec<_>>(),
        "members_omitted": false,
    })))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: another server
/// invites one of our users. The invite is checked, countersigned, stored
/// for the user's sync and returned.
pub(crate) async fn invite(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> RumaResult<create_invite::v2::Response> {
    let version = body["room_version"]
        .as_str()
        .and_then(|v| RoomVersionId::try_from(v).ok())
        .filter(|v| CoreConfig::supported_room_versions().contains(v))
        .ok_or_else(|| {
            ApiError::new(
                http::StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!(
                    "room version {} is not supported here",
                    body["room_version"]
                ),
            )
        })?;
    let room = RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let pdu = fed.check_pdu(&body["event"], &version).await?;
    let invitee = pdu.state_key.clone().unwrap_or_default();
    if pdu.event_id.as_str() != event_id
        || pdu.room_id != room
        || pdu.kind.to_string() != "m.room.member"
        || pdu.membership_state() != Some(MembershipState::Invite)
    {
        return Err(Error::bad_json("not an invite with the id and room its path names").into());
    }
    if pdu.sender.server_name() != origin {
        return Err(Error::Forbidden(format!("{origin} cannot invite for other servers")).into());
    }
    if !fed.hearth.is_local(&invitee) {
        return Err(Error::invalid_param(format!("{invitee} is not a user of this server")).into());
    }
    if fed.hearth.accounts.active_user(&invitee).await?.is_none() {
        return Err(Error::not_found(format!("{invitee} does not exist")).into());
    }
    let rules = rules_of(&version)?;
    let mut event = pdu_object(&body["event"])?;
    hash_and_sign_event(
        fed.server_name().as_str(),
        &fed.hearth.keys.key_pair,
        &mut event,
        &rules.redaction,
    )
    .map_err(|e| FedError::Remote(format!("countersigning the invite: {e}")))?;
    let signed: Value = CanonicalJsonValue::Object(event).into();
    let Value::Object(mut stored) = signed.clone() else {
        return Err(Error::internal("invite is not an object").into());
    };
    // Full PDUs (spec v1.16) or, from older servers, stripped events: kept
    // stripped, as the invitee's client is shown them.
    let stripped: Vec<Value> = body["invite_room_state"]
        .as_array()
        .into_iter()
        .flatten()
        .map(Pdu::strip_json)
        .collect();
    let creator = stripped
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .and_then(|e| e["sender"].as_str())
        .unwrap_or(pdu.sender.as_str())
        .to_owned();
    stored.insert("unsigned".into(), json!({"invite_room_state": stripped}));
    let invite = Pdu::from_json(pdu.event_id.clone(), stored)
        .map_err(|e| Error::bad_json(format!("invite: {e}")))?;
    fed.hearth
        .writer
        .accept_remote_membership(invite, &version, &creator)
        .await?;
    tracing::info!(room = %room, %invitee, %origin, "invited from another server");
    Ok(create_invite::v2::Response::new(raw_event(&signed)?).into())
}

impl Federation {
    /// Asks `server` for a membership event template (`make_join`,
    /// `make_leave`, `make_knock`), fills in our user's content and signs
    /// it. Returns the event, its id and the room's version.
    async fn make_membership(
        &self,
        server: &str,
        room: &RoomId,
        user: &UserId,
        membership: &str,
        content: Value,
    ) -> Result<(Value, ruma::OwnedEventId, RoomVersionId), FedError> {
        let versions: Vec<String> = CoreConfig::supported_room_versions()
            .iter()
            .map(|v| format!("ver={v}"))
            .collect();
        let path = format!(
            "/_matrix/federation/v1/make_{membership}/{}/{}?{}",
            enc(room.as_str()),
            enc(user.as_str()),
            versions.join("&")
        );
        let made = self.request(server, http::Method::GET, &path, None).await?;
        let version = made["room_version"]
            .as_str()
            .and_then(|v| RoomVersionId::try_from(v).ok())
            .filter(|v| CoreConfig::supported_room_versions().contains(v))
            .ok_or_else(|| {
                FedError::Remote(format!("make_{membership}: unsupported room version"))
            })?;
        let rules = rules_of(&version)?;
        let mut event = pdu_object(&made["event"])?;
        for field in ["signatures", "hashes"] {
            event.remove(field);
        }
        let expect =
            |field: &str, want: &str| event.get(field).and_then(|v| v.as_str()) == Some(want);
        if !(expect("type", "m.room.member")
            && expect("sender", user.as_str())
            && expect("state_key", user.as_str())
            && expect("room_id", room.as_str()))
        {
            return Err(FedError::Remote(format!(
                "make_{membership} answered with another event"
            )));
        }
        event.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer((now_ms() as i64).try_into().unwrap_or_default()),
        );
        let content: CanonicalJsonValue = serde_json::from_value(content)
            .map_err(|e| FedError::Remote(format!("membership content: {e}")))?;
        event.insert("content".into(), content);
        hash_and_sign_event(
            self.server_name().as_str(),
            &self.hearth.keys.key_pair,
            &mut event,
            &rules.redaction,
        )
        .map_err(|e| FedError::Remote(format!("signing the {membership}: {e}")))?;
        let event_id = event_id_of(&event, &version)?;
        Ok((CanonicalJsonValue::Object(event).into(), event_id, version))
    }

    /// The whole handshake through `server`: `make_membership`, then
    /// `send_join`/`send_leave` (v2) or `send_knock` (v1) with the signed
    /// event. Returns the event, its id, the room's version and the answer.
    async fn exchange_membership(
        &self,
        server: &str,
        room: &RoomId,
        user: &UserId,
        membership: &str,
        content: Value,
    ) -> Result<(Value, ruma::OwnedEventId, RoomVersionId, Value), FedError> {
        let (signed, event_id, version) = self
            .make_membership(server, room, user, membership, content)
            .await?;
        let knock = MembershipState::from(membership) == MembershipState::Knock;
        let api = if knock { "v1" } else { "v2" };
        let path = format!(
            "/_matrix/federation/{api}/send_{membership}/{}/{}",
            enc(room.as_str()),
            enc(event_id.as_str())
        );
        let answer = self
            .request(server, http::Method::PUT, &path, Some(&signed))
            .await?;
        Ok((signed, event_id, version, answer))
    }

    /// Tries `attempt` through each of `servers` in turn until one succeeds;
    /// else the last failure. `what` names the step in logs.
    async fn through_first<F, Fut>(
        room: &RoomId,
        servers: &[String],
        what: &str,
        attempt: F,
    ) -> Result<(), FedError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), FedError>>,
    {
        let mut last = FedError::Remote(format!("no server to {what} through"));
        for server in servers {
            match attempt(server.clone()).await {
                Ok(()) => {
                    tracing::info!(room = %room, %server, "{what} through another server");
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(%server, room = %room, error = %e, "{what} through this server failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// `make_leave`/`send_leave` for a room this server is not in (an
    /// invite declined, a knock withdrawn); the leave is stored here.
    pub(crate) async fn leave_remote(
        &self,
        room: &RoomId,
        user: &UserId,
        servers: &[String],
        reason: Option<&str>,
    ) -> Result<(), FedError> {
        let content = self
            .hearth
            .writer
            .member_content(user, "leave", reason)
            .await?;
        Self::through_first(room, servers, "leave", |server| {
            let content = content.clone();
            async move {
                let (signed, event_id, version, _) = self
                    .exchange_membership(&server, room, user, "leave", content)
                    .await?;
                self.store_own_membership(signed, event_id, &version, None)
                    .await
            }
        })
        .await
    }

    /// `make_knock`/`send_knock` through the first of `servers` that
    /// accepts; the knock is stored with the room state the server gave.
    pub(crate) async fn knock_remote(
        &self,
        room: &RoomId,
        user: &UserId,
        servers: &[String],
        reason: Option<&str>,
    ) -> Result<(), FedError> {
        let content = self
            .hearth
            .writer
            .member_content(user, "knock", reason)
            .await?;
        Self::through_first(room, servers, "knock", |server| {
            let content = content.clone();
            async move {
                let (signed, event_id, version, answer) = self
                    .exchange_membership(&server, room, user, "knock", content)
                    .await?;
                let state: Vec<Value> = answer["knock_room_state"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(Pdu::strip_json)
                    .collect();
                self.store_own_membership(
                    signed,
                    event_id,
                    &version,
                    Some(("knock_room_state", Value::Array(state))),
                )
                .await
            }
        })
        .await
    }

    /// Stores our user's own membership event of a room this server is not
    /// in, with what the other server showed of the room in `unsigned`.
    async fn store_own_membership(
        &self,
        signed: Value,
        event_id: ruma::OwnedEventId,
        version: &RoomVersionId,
        shown: Option<(&str, Value)>,
    ) -> Result<(), FedError> {
        let Value::Object(mut map) = signed else {
            return Err(FedError::Remote("membership event is not an object".into()));
        };
        let mut creator = map
            .get("sender")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some((key, state)) = shown {
            if let Some(c) = state
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["type"] == "m.room.create")
                .and_then(|e| e["sender"].as_str())
            {
                creator = c.to_owned();
            }
            let mut unsigned = serde_json::Map::new();
            unsigned.insert(key.to_owned(), state);
            map.insert("unsigned".into(), Value::Object(unsigned));
        }
        let pdu = Pdu::from_json(event_id, map)
            .map_err(|e| FedError::Remote(format!("own membership event: {e}")))?;
        self.hearth
            .writer
            .accept_remote_membership(pdu, version, &creator)
            .await?;
        Ok(())
    }

    /// Has the invitee's server countersign an invite; the event with both
    /// signatures.
    pub(crate) async fn send_invite(
        &self,
        version: &RoomVersionId,
        event: &serde_json::Map<String, Value>,
        invite_room_state: Vec<Value>,
    ) -> Result<serde_json::Map<String, Value>, FedError> {
        let invitee = event
            .get("state_key")
            .and_then(Value::as_str)
            .and_then(|u| UserId::parse(u).ok())
            .ok_or_else(|| FedError::Remote("invite without an invitee".into()))?;
        let obj = pdu_object(&Value::Object(event.clone()))?;
        let event_id = event_id_of(&obj, version)?;
        let room = event
            .get("room_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let path = format!(
            "/_matrix/federation/v2/invite/{}/{}",
            enc(room),
            enc(event_id.as_str())
        );
        let body = json!({
            "room_version": version,
            "event": event,
            "invite_room_state": invite_room_state,
        });
        let answer = self
            .request(
                invitee.server_name().as_str(),
                http::Method::PUT,
                &path,
                Some(&body),
            )
            .await?;
        // Only their signature is taken from the answer: the rest is ours.
        let theirs = answer["event"]["signatures"][invitee.server_name().as_str()].clone();
        if !theirs.is_object() {
            return Err(FedError::Remote(format!(
                "{} did not countersign the invite",
                invitee.server_name()
            )));
        }
        let mut signed = event.clone();
        let signatures = signed.entry("signatures").or_insert_with(|| json!({}));
        if let Some(map) = signatures.as_object_mut() {
            map.insert(invitee.server_name().to_string(), theirs);
        }
        // Both signatures must verify before the invite is stored.
        let version_rules = rules_of(version)?;
        let check = pdu_object(&Value::Object(signed.clone()))?;
        let mut keys = ruma::signatures::PublicKeyMap::new();
        for server in [self.server_name().as_str(), invitee.server_name().as_str()] {
            let set = self.server_keys_of(server, 0).await?;
            keys.insert(server.to_owned(), set.verify_keys.clone());
        }
        let mut only_signatures = check.clone();
        only_signatures.remove("unsigned");
        let redacted =
            ruma::canonical_json::redact(only_signatures, &version_rules.redaction, None)
                .map_err(|e| FedError::Remote(e.to_string()))?;
        ruma::signatures::verify_json(&keys, &redacted)
            .map_err(|e| FedError::Unauthorized(format!("countersigned invite: {e}")))?;
        Ok(signed)
    }

    /// Joins a local user to a room this server is not in yet, through the
    /// first of `servers` that accepts.
    pub(crate) async fn join_remote(
        &self,
        room: &RoomId,
        user: &UserId,
        servers: &[String],
    ) -> Result<(), FedError> {
        Self::through_first(room, servers, "join", |server| async move {
            self.join_via(&server, room, user).await
        })
        .await
    }

    async fn join_via(&self, server: &str, room: &RoomId, user: &UserId) -> Result<(), FedError> {
        let lock = self.join_lock(room.as_str());
        let _joining = lock.lock().await;
        let content = self
            .hearth
            .writer
            .member_content(user, "join", None)
            .await?;
        let (signed, event_id, version, joined) = self
            .exchange_membership(server, room, user, "join", content)
            .await?;

        // The room as the resident server has it: checked event by event,
        // stored in depth order (each against its own auth events), then
        // our join on top.
        let mut events: HashMap<String, Pdu> = HashMap::new();
        for json in joined["auth_chain"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(joined["state"].as_array().into_iter().flatten())
        {
            let pdu = self.check_pdu(json, &version).await?;
            events.insert(pdu.event_id.to_string(), pdu);
        }
        let create = events
            .values()
            .find(|p| p.kind.to_string() == "m.room.create")
            .ok_or_else(|| FedError::Remote("send_join: no create event in the state".into()))?;
        if create.room_id != room {
            return Err(FedError::Remote(
                "send_join: the state is another room's".into(),
            ));
        }
        let creator = create.sender.to_string();
        self.hearth
            .federated
            .adopt_remote_room(room, &version, &creator)
            .await?;
        let mut ordered: Vec<Pdu> = events.into_values().collect();
        ordered.sort_by_key(|p| (p.depth, p.origin_server_ts));
        for pdu in &ordered {
            let id = pdu.event_id.clone();
            if let Err(e) = self
                .hearth
                .writer
                .accept_remote_event(pdu.clone(), false)
                .await
            {
                tracing::warn!(event = %id, error = %e, "a state event of the joined room was refused");
            }
        }
        let Value::Object(map) = signed else {
            return Err(FedError::Remote("join is not an object".into()));
        };
        let join = Pdu::from_json(event_id, map)
            .map_err(|e| FedError::Remote(format!("own join: {e}")))?;
        self.hearth
            .writer
            .accept_remote_event(join.clone(), true)
            .await?;
        // The room's messages before the join stay on the servers that were
        // there: where they continue is kept for a client paging back.
        ordered.push(join);
        if let Err(e) = self.hearth.timeline.start_frontier(room, &ordered).await {
            tracing::warn!(room = %room, error = %e, "cannot record where the room's history continues");
        }
        tracing::info!(room = %room, %user, %server, "joined a room on another server");
        Ok(())
    }
}
