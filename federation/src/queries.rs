//! `/query/profile` and `/query/directory`: answered for other servers, and
//! asked of them when a local client looks up a remote user or alias.

use std::sync::{Arc, Weak};

use axum::{Extension, Json, extract::State};
use hearth_core::{
    Error, Result,
    rooms::{PublicRooms, RoomListScope},
};
use hearth_http_common::{
    error::ApiError,
    typed::{Ruma, RumaResult},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, RoomAliasId, RoomId, UInt, UserId,
    api::federation::{
        directory::get_public_rooms,
        event::get_event,
        query::{get_profile_information, get_room_information},
    },
    profile::UserProfile,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{Federation, auth::Origin};

pub(crate) async fn profile(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Ruma(q): Ruma<get_profile_information::v1::Request>,
) -> RumaResult<get_profile_information::v1::Response> {
    let user = q.user_id;
    if user.server_name() != fed.server_name() {
        return Err(Error::invalid_param("user_id is not on this server").into());
    }
    let field = q.field.as_ref().map(|f| f.as_str());
    if !matches!(field, None | Some("displayname") | Some("avatar_url")) {
        return Err(Error::invalid_param("field must be displayname or avatar_url").into());
    }
    tracing::debug!(%origin, %user, "profile query");
    let u = fed
        .hearth
        .accounts
        .active_user(user.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Profile not found"))?;
    let mut data = UserProfile::new();
    if field != Some("avatar_url")
        && let Some(n) = u.displayname
    {
        data.set("displayname".into(), Value::String(n));
    }
    if field != Some("displayname")
        && let Some(a) = u.avatar_url
    {
        data.set("avatar_url".into(), Value::String(a));
    }
    Ok(get_profile_information::v1::Response::from(data).into())
}

pub(crate) async fn directory(
    State(fed): State<Arc<Federation>>,
    Ruma(q): Ruma<get_room_information::v1::Request>,
) -> RumaResult<get_room_information::v1::Response> {
    let alias = q.room_alias;
    if alias.server_name() != fed.server_name() {
        return Err(Error::invalid_param("room_alias is not on this server").into());
    }
    let (room_id, _) = fed
        .hearth
        .to_appservices
        .resolve_local_alias(alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let room_id = RoomId::parse(room_id)
        .map_err(|e| Error::Internal(format!("invalid room id in storage: {e}")))?;
    let servers = vec![fed.server_name().to_owned()];
    Ok(get_room_information::v1::Response::new(room_id, servers).into())
}

/// `GET /event/{eventId}`: one event, for a server with members in its room
/// (or any server, when the room's history is world-readable).
pub(crate) async fn event(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    axum::extract::Path(event_id): axum::extract::Path<String>,
) -> RumaResult<get_event::v1::Response> {
    let h = &fed.hearth;
    let ev = h.federated.event_by_id(&event_id).await?;
    h.rooms.check_server_acl(&ev.pdu.room_id, &origin).await?;
    h.federated
        .require_server_reader(&ev.pdu.room_id, &origin)
        .await?;
    let pdu = serde_json::value::to_raw_value(&ev.pdu.as_sent()).map_err(Error::from)?;
    let now = MilliSecondsSinceUnixEpoch(UInt::new_saturating(hearth_core::ids::now_ms()));
    let origin = fed.server_name().to_owned();
    Ok(get_event::v1::Response::new(origin, now, pdu).into())
}

pub(crate) async fn public_rooms_get(
    State(fed): State<Arc<Federation>>,
    Ruma(q): Ruma<get_public_rooms::v1::Request>,
) -> Result<Json<PublicRooms>, ApiError> {
    let limit = q.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let page = fed
        .hearth
        .room_list
        .public_rooms(limit, q.since.as_deref(), None, &RoomListScope::Main)
        .await?;
    Ok(Json(page))
}

/// The page is Hearth's shape (see `PublicRoom`). The POST keeps Hearth's
/// body parsing: ruma's filter refuses a non-string search term, which is
/// ignored here.
#[derive(Deserialize)]
pub(crate) struct PublicRoomsBody {
    limit: Option<usize>,
    since: Option<String>,
    filter: Option<Value>,
    third_party_instance_id: Option<String>,
    #[serde(default)]
    include_all_networks: bool,
}

pub(crate) async fn public_rooms_post(
    State(fed): State<Arc<Federation>>,
    Json(b): Json<PublicRoomsBody>,
) -> Result<Json<PublicRooms>, ApiError> {
    let list =
        RoomListScope::from_request(b.third_party_instance_id.as_deref(), b.include_all_networks)?;
    let page = fed
        .hearth
        .room_list
        .public_rooms(b.limit, b.since.as_deref(), b.filter.as_ref(), &list)
        .await?;
    Ok(Json(page))
}

/// Lets the client API ask other servers (core's `Remote`).
pub(crate) struct RemoteQueries(pub Weak<Federation>);

impl RemoteQueries {
    fn fed(&self) -> Result<Arc<Federation>> {
        self.0
            .upgrade()
            .ok_or_else(|| Error::Unavailable("federation is shutting down".into()))
    }
}

#[async_trait::async_trait]
impl hearth_core::Remote for RemoteQueries {
    async fn query_profile(&self, user: &UserId, field: Option<&str>) -> Result<Value> {
        let mut path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            crate::enc(user.as_str())
        );
        if let Some(f) = field {
            path.push_str(&format!("&field={}", crate::enc(f)));
        }
        let fed = self.fed()?;
        Ok(fed
            .request(user.server_name().as_str(), http::Method::GET, &path, None)
            .await?)
    }

    async fn join_remote(&self, room: &RoomId, user: &UserId, servers: &[String]) -> Result<()> {
        let fed = self.fed()?;
        Ok(fed.join_remote(room, user, servers).await?)
    }

    async fn knock_remote(
        &self,
        room: &RoomId,
        user: &UserId,
        servers: &[String],
        reason: Option<&str>,
    ) -> Result<()> {
        let fed = self.fed()?;
        Ok(fed.knock_remote(room, user, servers, reason).await?)
    }

    async fn leave_remote(
        &self,
        room: &RoomId,
        user: &UserId,
        servers: &[String],
        reason: Option<&str>,
    ) -> Result<()> {
        let fed = self.fed()?;
        Ok(fed.leave_remote(room, user, servers, reason).await?)
    }

    fn wake(&self, destinations: &[String]) {
        if let Ok(fed) = self.fed() {
            fed.wake_destinations(destinations);
        }
    }

    async fn invite(
        &self,
        version: &ruma::RoomVersionId,
        event: &Map<String, Value>,
        invite_room_state: Vec<Value>,
    ) -> Result<Map<String, Value>> {
        let fed = self.fed()?;
        Ok(fed.send_invite(version, event, invite_room_state).await?)
    }

    async fn backfill(
        &self,
        room: &RoomId,
        servers: &[String],
        from: &[ruma::OwnedEventId],
        limit: usize,
    ) -> Result<hearth_core::rooms::Backfilled> {
        let fed = self.fed()?;
        Ok(fed.backfill_from(room, servers, from, limit).await?)
    }

    fn send_edu(&self, destinations: &[String], edu: Value) {
        if let Ok(fed) = self.fed() {
            fed.queue_edu(destinations, edu);
        }
    }

    fn share_presence(&self, user: &str, content: Value) {
        if let Ok(fed) = self.fed() {
            fed.share_presence(user, content);
        }
    }

    fn share_device_updates(&self, user: &str, edus: Vec<Value>) {
        if let Ok(fed) = self.fed() {
            fed.share_device_updates(user, edus);
        }
    }

    async fn query_keys(&self, server: &str, body: Value) -> Result<Value> {
        let fed = self.fed()?;
        Ok(fed
            .request(
                server,
                http::Method::POST,
                "/_matrix/federation/v1/user/keys/query",
                Some(&body),
            )
            .await?)
    }

    async fn claim_keys(&self, server: &str, body: Value) -> Result<Value> {
        let fed = self.fed()?;
        Ok(fed
            .request(
                server,
                http::Method::POST,
                "/_matrix/federation/v1/user/keys/claim",
                Some(&body),
            )
            .await?)
    }

    async fn query_directory(&self, alias: &RoomAliasId) -> Result<Value> {
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            crate::enc(alias.as_str())
        );
        let fed = self.fed()?;
        Ok(fed
            .request(alias.server_name().as_str(), http::Method::GET, &path, None)
            .await?)
    }
}
