//! End-to-end encryption endpoints: `/keys/*`, `/sendToDevice` and the key
//! backup under `/room_keys` (the logic is in `hearth_core::e2ee`).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post, put},
};
use hearth_core::{
    Error, Hearth,
    e2ee::{
        backup::{BackupCounts, BackupInfo, BackupKeys, BackupScope},
        keys::{ClaimedKeys, QueriedKeys, SignatureFailures},
    },
    ruma::{UInt, UserId},
    sync::SyncToken,
};
use ruma_client_api::{
    backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_latest_backup_info, update_backup_version,
    },
    keys::{get_key_changes, upload_keys, upload_signing_keys},
    to_device::send_event_to_device,
};
use serde_json::Value;

use super::{account::reauthenticate, stored_id};
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody, UiaJson},
    typed::{Ruma, RumaResult},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/keys/upload", post(upload))
        .route("/keys/query", post(query))
        .route("/keys/claim", post(claim))
        .route("/keys/changes", get(changes))
        .route("/keys/device_signing/upload", post(device_signing))
        .route("/keys/signatures/upload", post(signatures))
        .route("/sendToDevice/{kind}/{txn}", put(send_to_device))
        .route(
            "/room_keys/version",
            post(create_backup).get(current_backup),
        )
        .route(
            "/room_keys/version/{version}",
            get(get_backup).put(update_backup).delete(delete_backup),
        )
        .route(
            "/room_keys/keys",
            get(get_keys).put(put_keys).delete(delete_keys),
        )
        .route(
            "/room_keys/keys/{room}",
            get(get_room_keys)
                .put(put_room_keys)
                .delete(delete_room_keys),
        )
        .route(
            "/room_keys/keys/{room}/{session}",
            get(get_session_key)
                .put(put_session_key)
                .delete(delete_session_key),
        )
}

/// The body stays JSON: core checks the keys (with its own errcodes) where
/// ruma's request type would refuse other shapes first.
async fn upload(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    JsonBody(body): JsonBody<Value>,
) -> RumaResult<upload_keys::v3::Response> {
    let counts = h.e2ee.upload_keys(&s.user_id, &s.device_id, &body).await?;
    let counts = counts
        .into_iter()
        .map(|(algorithm, n)| (algorithm.into(), UInt::try_from(n).unwrap_or_default()))
        .collect();
    Ok(upload_keys::v3::Response::new(counts).into())
}

// Query and claim bodies stay JSON: core reads them with its errcodes
// (M_MISSING_PARAM without the map, M_BAD_JSON for a malformed user id),
// where ruma's types default the map and refuse ids as M_INVALID_PARAM. The
// answers are Hearth's shape: keys pass on as uploaded, unchecked.

async fn query(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<QueriedKeys>> {
    Ok(Json(h.e2ee.query_keys(&s.user_id, &body).await?))
}

async fn claim(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<ClaimedKeys>> {
    Ok(Json(h.e2ee.claim_keys(&body).await?))
}

/// `from` and `to` are sync tokens; the device-list positions are their misc
/// positions.
async fn changes(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(q): Ruma<get_key_changes::v3::Request>,
) -> RumaResult<get_key_changes::v3::Response> {
    let (from, to): (SyncToken, SyncToken) = (q.from.parse()?, q.to.parse()?);
    let changes = h.sync.key_changes(&s.user_id, &from, &to).await?;
    let ids = |users: Vec<String>| {
        users
            .into_iter()
            .map(|u| stored_id(UserId::parse(u)))
            .collect::<Result<Vec<_>, _>>()
    };
    let (changed, left) = (ids(changes.changed)?, ids(changes.left)?);
    Ok(get_key_changes::v3::Response::new(changed, left).into())
}

/// Replacing existing cross-signing keys needs the password again; the first
/// upload does not (spec v1.11, MSC3967): a new account has nothing to lose.
async fn device_signing(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    uia: UiaJson<Value>,
) -> RumaResult<upload_signing_keys::v3::Response> {
    if h.e2ee.has_master_cross_signing_key(&s.user_id).await? {
        reauthenticate(&h, &uia, &s).await?;
    }
    h.e2ee
        .upload_cross_signing_keys(&s.user_id, &uia.body)
        .await?;
    Ok(upload_signing_keys::v3::Response::new().into())
}

async fn signatures(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<SignatureFailures>> {
    Ok(Json(h.e2ee.upload_signatures(&s.user_id, &body).await?))
}

async fn send_to_device(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((kind, txn)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> RumaResult<send_event_to_device::v3::Response> {
    let messages = body
        .get("messages")
        .ok_or_else(|| Error::MissingParam("messages is required".into()))?;
    h.e2ee
        .send_to_device(&s.user_id, &s.device_id, &kind, &txn, messages)
        .await?;
    Ok(send_event_to_device::v3::Response::new().into())
}

async fn create_backup(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    JsonBody(body): JsonBody<Value>,
) -> RumaResult<create_backup_version::v3::Response> {
    let version = h
        .key_backup
        .create_backup_version(&s.user_id, &body)
        .await?;
    Ok(create_backup_version::v3::Response::new(version).into())
}

/// Backup versions keep Hearth's shape (see `BackupInfo`).
async fn current_backup(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(_): Ruma<get_latest_backup_info::v3::Request>,
) -> ApiResult<Json<BackupInfo>> {
    Ok(Json(h.key_backup.backup_info(&s.user_id, None).await?))
}

async fn get_backup(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<get_backup_info::v3::Request>,
) -> ApiResult<Json<BackupInfo>> {
    Ok(Json(
        h.key_backup
            .backup_info(&s.user_id, Some(&req.version))
            .await?,
    ))
}

async fn update_backup(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(version): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> RumaResult<update_backup_version::v3::Response> {
    h.key_backup
        .update_backup_version(&s.user_id, &version, &body)
        .await?;
    Ok(update_backup_version::v3::Response::new().into())
}

async fn delete_backup(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(version): Path<String>,
) -> RumaResult<delete_backup_version::v3::Response> {
    h.key_backup
        .delete_backup_version(&s.user_id, &version)
        .await?;
    Ok(delete_backup_version::v3::Response::new().into())
}

fn version_of(q: &HashMap<String, String>) -> Result<&str, Error> {
    q.get("version")
        .map(String::as_str)
        .ok_or_else(|| Error::MissingParam("version is required".into()))
}

/// A count and etag as ruma's answers to a key write or delete carry them.
fn counts(c: BackupCounts) -> (String, UInt) {
    (c.etag, UInt::new_saturating(c.count))
}

const ALL: BackupScope<'static> = BackupScope {
    room: None,
    session: None,
};

fn room_scope(room: &str) -> BackupScope<'_> {
    BackupScope {
        room: Some(room),
        session: None,
    }
}

fn session_scope<'a>(room: &'a str, session: &'a str) -> BackupScope<'a> {
    BackupScope {
        room: Some(room),
        session: Some(session),
    }
}

// Reads answer in Hearth's shape (`BackupKeys`: the key data as stored, room
// ids as given). Writes keep Hearth's body parsing, and the per-room and
// per-session endpoints their path parsing: ruma's types would refuse a
// room id that is not one (Synapse takes any) and check key data with other
// errcodes than `check_key_data`'s.

async fn get_keys(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<get_backup_keys::v3::Request>,
) -> ApiResult<Json<BackupKeys>> {
    Ok(Json(
        h.key_backup
            .get_backup_keys(&s.user_id, &req.version, ALL)
            .await?,
    ))
}

async fn put_keys(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Query(q): Query<HashMap<String, String>>,
    JsonBody(body): JsonBody<Value>,
) -> RumaResult<add_backup_keys::v3::Response> {
    let c = h
        .key_backup
        .put_backup_keys(&s.user_id, version_of(&q)?, ALL, &body)
        .await?;
    let (etag, count) = counts(c);
    Ok(add_backup_keys::v3::Response::new(etag, count).into())
}

async fn delete_keys(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<delete_backup_keys::v3::Request>,
) -> RumaResult<delete_backup_keys::v3::Response> {
    let c = h
        .key_backup
        .delete_backup_keys(&s.user_id, &req.version, ALL)
        .await?;
    let (etag, count) = counts(c);
    Ok(delete_backup_keys::v3::Response::new(etag, count).into())
}

async fn get_room_keys(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<BackupKeys>> {
    let scope = room_scope(&room);
    Ok(Json(
        h.key_backup
            .get_backup_keys(&s.user_id, version_of(&q)?, scope)
            .await?,
    ))
}

async fn put_room_keys(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    JsonBody(body): JsonBody<Value>,
) -> RumaResult<add_backup_keys_for_room::v3::Response> {
    let scope = room_scope(&room);
    let c = h
        .key_backup
        .put_backup_keys(&s.user_id, version_of(&q)?, scope, &body)
        .await?;
    let (etag, count) = counts(c);
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count).into())
}

async fn delete_room_keys(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(room): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> RumaResult<delete_backup_keys_for_room::v3::Response> {
    let scope = room_scope(&room);
    let c = h
        .key_backup
        .delete_backup_keys(&s.user_id, version_of(&q)?, scope)
        .await?;
    let (etag, count) = counts(c);
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count).into())
}

async fn get_session_key(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room, session)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<BackupKeys>> {
    let scope = session_scope(&room, &session);
    Ok(Json(
        h.key_backup
            .get_backup_keys(&s.user_id, version_of(&q)?, scope)
            .await?,
    ))
}

async fn put_session_key(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room, session)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    JsonBody(body): JsonBody<Value>,
) -> RumaResult<add_backup_keys_for_session::v3::Response> {
    let scope = session_scope(&room, &session);
    let c = h
        .key_backup
        .put_backup_keys(&s.user_id, version_of(&q)?, scope, &body)
        .await?;
    let (etag, count) = counts(c);
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count).into())
}

async fn delete_session_key(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((room, session)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> RumaResult<delete_backup_keys_for_session::v3::Response> {
    let scope = session_scope(&room, &session);
    let c = h
        .key_backup
        .delete_backup_keys(&s.user_id, version_of(&q)?, scope)
        .await?;
    let (etag, count) = counts(c);
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, count).into())
}
