//! Device listing, renaming and deletion.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post},
};
use hearth_core::{Hearth, store::DeviceRecord};
use ruma_client_api::device::{
    delete_device, delete_devices, get_device, get_devices, update_device,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::account::reauthenticate;
use crate::{
    error::ApiResult,
    extract::{Auth, UiaJson},
    typed::{Ruma, RumaResult},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/devices", get(list))
        .route(
            "/devices/{device_id}",
            get(get_one).put(rename).delete(delete_one),
        )
        .route("/delete_devices", post(delete_many))
}

/// A device as listed. What is not known (a name, where and when last seen)
/// is left out: the spec's fields are optional strings and integers, and a
/// `null` breaks clients that read them as such.
#[derive(Serialize)]
struct DeviceView {
    device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_ts: Option<i64>,
    user_id: String,
}

impl DeviceView {
    fn new(user: &str, d: DeviceRecord) -> Self {
        Self {
            device_id: d.device_id,
            display_name: d.display_name,
            last_seen_ip: d.last_seen_ip,
            last_seen_ts: d.last_seen_ts,
            user_id: user.to_owned(),
        }
    }
}

#[derive(Serialize)]
struct Devices {
    devices: Vec<DeviceView>,
}

async fn list(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(_): Ruma<get_devices::v3::Request>,
) -> ApiResult<Json<Devices>> {
    let devices = h.devices.devices(&s.user_id).await?;
    let devices = devices
        .into_iter()
        .map(|d| DeviceView::new(s.user_id.as_str(), d))
        .collect();
    Ok(Json(Devices { devices }))
}

async fn get_one(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<get_device::v3::Request>,
) -> ApiResult<Json<DeviceView>> {
    let d = h.devices.device(&s.user_id, req.device_id.as_str()).await?;
    Ok(Json(DeviceView::new(s.user_id.as_str(), d)))
}

async fn rename(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<update_device::v3::Request>,
) -> RumaResult<update_device::v3::Response> {
    h.devices
        .rename_device(
            &s.user_id,
            req.device_id.as_str(),
            req.display_name.as_deref(),
        )
        .await?;
    Ok(update_device::v3::Response::new().into())
}

async fn delete_one(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(device_id): Path<String>,
    uia: UiaJson<Value>,
) -> RumaResult<delete_device::v3::Response> {
    // An unknown device is 404 before any password is asked for.
    h.devices.device(&s.user_id, &device_id).await?;
    reauthenticate(&h, &uia, &s).await?;
    h.e2ee
        .delete_devices(&s.user_id, Some(&[device_id]))
        .await?;
    Ok(delete_device::v3::Response::new().into())
}

#[derive(Deserialize)]
struct DeleteManyBody {
    devices: Vec<String>,
}

async fn delete_many(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    uia: UiaJson<DeleteManyBody>,
) -> RumaResult<delete_devices::v3::Response> {
    reauthenticate(&h, &uia, &s).await?;
    h.e2ee
        .delete_devices(&s.user_id, Some(&uia.body.devices))
        .await?;
    Ok(delete_devices::v3::Response::new().into())
}
