//! /versions, well-known, capabilities.

use std::sync::Arc;

use axum::{Json, Router, extract::State, routing::get};
use hearth_core::{CoreConfig, Hearth};
use ruma_client_api::discovery::discover_homeserver::{self, HomeserverInfo};
use serde_json::{Value, json};

use super::JsonResult;
use crate::{
    extract::Auth,
    typed::{Ruma, RumaResult},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/_matrix/client/versions", get(versions))
        .route("/.well-known/matrix/client", get(well_known))
        .route("/_matrix/client/v3/capabilities", get(capabilities))
        .route("/_matrix/client/r0/capabilities", get(capabilities))
}

/// The spec versions whose client-server API Hearth implements.
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11",
];

async fn versions() -> Json<Value> {
    Json(json!({"versions": SPEC_VERSIONS, "unstable_features": {}}))
}

async fn well_known(
    State(h): State<Arc<Hearth>>,
    Ruma(_): Ruma<discover_homeserver::Request>,
) -> RumaResult<discover_homeserver::Response> {
    match &h.config.public_base_url {
        Some(url) => {
            let info = HomeserverInfo::new(url.to_string());
            Ok(discover_homeserver::Response::new(info).into())
        }
        None => Err(hearth_core::Error::not_found("No well-known configured").into()),
    }
}

async fn capabilities(State(h): State<Arc<Hearth>>, Auth(_): Auth) -> JsonResult {
    let available: serde_json::Map<String, Value> = CoreConfig::supported_room_versions()
        .iter()
        .map(|v| (v.to_string(), json!("stable")))
        .collect();
    Ok(Json(json!({"capabilities": {
        "m.change_password": {"enabled": true},
        "m.room_versions": {"default": h.config.default_room_version.as_str(), "available": available},
        "m.set_displayname": {"enabled": true},
        "m.set_avatar_url": {"enabled": true},
        "m.3pid_changes": {"enabled": false},
        "m.get_login_token": {"enabled": false},
    }})))
}
