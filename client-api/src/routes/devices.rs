//! Device listing, renaming and deletion.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post},
};
use hearth_core::{Hearth, store::DeviceRecord};
use ruma_client_api::device::{delete_device, delete_devices, update_device};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonResult, account::reauthenticate};
use crate::{
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

fn device_json(user: &str, d: &DeviceRecord) -> Value {
    json!({
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
        "user_id": user,
    })
}

async fn list(State(h): State<Arc<Hearth>>, Auth(s): Auth) -> JsonResult {
    let devices = h.devices.devices(&s.user_id).await?;
    let list: Vec<Value> = devices
        .iter()
        .map(|d| device_json(s.user_id.as_str(), d))
        .collect();
    Ok(Json(json!({"devices": list})))
}

async fn get_one(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(device_id): Path<String>,
) -> JsonResult {
    let d = h.devices.device(&s.user_id, &device_id).await?;
    Ok(Json(device_json(s.user_id.as_str(), &d)))
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
    reauthenticate(&h, &uia, &s.user_id).await?;
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
    reauthenticate(&h, &uia, &s.user_id).await?;
    h.e2ee
        .delete_devices(&s.user_id, Some(&uia.body.devices))
        .await?;
    Ok(delete_devices::v3::Response::new().into())
}
