//! End-to-end encryption over federation: other servers query and claim our
//! users' keys and list their devices; we tell them when our users' devices
//! change (`m.device_list_update`, `m.signing_key_update`) and carry
//! to-device messages (`m.direct_to_device`, sent from core).

use std::{collections::BTreeMap, sync::Arc};

use axum::{Extension, Json, extract::State};
use hearth_core::{
    Error,
    e2ee::{device_list::ServerDeviceList, keys::QueriedKeys},
};
use hearth_http_common::{
    error::ApiError,
    typed::{Ruma, RumaResult, raw},
};
use ruma::{
    OwnedUserId, UInt,
    api::federation::device::get_devices::{self, v1::UserDevice},
};
use serde_json::{Value, json};

use crate::{Federation, auth::Origin};

/// A map of users from another server's request, keeping only ours.
fn our_users<T: serde::de::DeserializeOwned>(
    fed: &Federation,
    v: &Value,
    field: &str,
) -> Result<BTreeMap<OwnedUserId, T>, ApiError> {
    let all: BTreeMap<OwnedUserId, T> = serde_json::from_value(v[field].clone())
        .map_err(|e| Error::bad_json(format!("{field}: {e}")))?;
    Ok(all
        .into_iter()
        .filter(|(u, _)| u.server_name() == fed.server_name())
        .collect())
}

/// `POST /_matrix/federation/v1/user/keys/query`
pub(crate) async fn query(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Json(body): Json<Value>,
) -> Result<Json<QueriedKeys>, ApiError> {
    let wanted = our_users::<Vec<String>>(&fed, &body, "device_keys")?;
    tracing::debug!(%origin, users = wanted.len(), "key query");
    Ok(Json(fed.hearth.e2ee.local_keys(None, &wanted).await?))
}

/// `POST /_matrix/federation/v1/user/keys/claim`
pub(crate) async fn claim(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let wanted = our_users::<BTreeMap<String, String>>(&fed, &body, "one_time_keys")?;
    tracing::debug!(%origin, users = wanted.len(), "key claim");
    let keys = fed.hearth.e2ee.claim_local_keys(&wanted).await?;
    Ok(Json(json!({"one_time_keys": keys})))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`
pub(crate) async fn devices(
    State(fed): State<Arc<Federation>>,
    Ruma(req): Ruma<get_devices::v1::Request>,
) -> RumaResult<get_devices::v1::Response> {
    let user = req.user_id;
    if user.server_name() != fed.server_name() {
        return Err(Error::invalid_param("The user is not on this server").into());
    }
    let list = fed.hearth.e2ee.device_list_for_server(&user).await?;
    Ok(device_list_response(list)?.into())
}

/// A device list in ruma's answer; the keys go as stored.
fn device_list_response(list: ServerDeviceList) -> Result<get_devices::v1::Response, ApiError> {
    let devices = list
        .devices
        .into_iter()
        .map(|d| {
            let mut device = UserDevice::new(d.device_id.into(), raw(&d.keys)?);
            device.device_display_name = d.display_name;
            Ok(device)
        })
        .collect::<Result<_, ApiError>>()?;
    let stream_id = UInt::try_from(list.stream_id)
        .map_err(|e| Error::Internal(format!("device list position {}: {e}", list.stream_id)))?;
    let mut response = get_devices::v1::Response::new(list.user_id, stream_id);
    response.devices = devices;
    response.master_key = list.master_key.as_ref().map(raw).transpose()?;
    response.self_signing_key = list.self_signing_key.as_ref().map(raw).transpose()?;
    Ok(response)
}

impl Federation {
    /// Sends device-list EDUs about a local user to every server sharing a
    /// room with them.
    pub(crate) fn share_device_updates(self: &Arc<Self>, user: &str, edus: Vec<Value>) {
        let fed = self.clone();
        let user = user.to_owned();
        self.hearth.tasks.spawn(async move {
            let servers = match fed.servers_sharing_with(&user).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%user, error = %e, "device list update not sent");
                    return;
                }
            };
            if servers.is_empty() {
                return;
            }
            for edu in edus {
                fed.queue_edu(&servers, edu);
            }
        });
    }

    /// The end-to-end EDUs of a transaction from `origin`.
    pub(crate) async fn receive_e2ee_edu(&self, origin: &str, kind: &str, content: &Value) {
        let result = match kind {
            "m.direct_to_device" => self.hearth.e2ee.receive_to_device(origin, content).await,
            _ => {
                self.hearth
                    .e2ee
                    .receive_device_update(origin, content)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::info!(%origin, edu = kind, error = %e, "EDU refused");
        }
    }
}
