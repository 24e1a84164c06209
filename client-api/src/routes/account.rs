//! Registration, login, logout, password, deactivation.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::{get, post},
};
use hearth_core::{Error, Hearth, ratelimit::Action, uia::UiaOutcome};
use serde::Deserialize;
use serde_json::{Value, json};

use super::JsonResult;
use crate::{
    error::{ApiError, ApiResult},
    extract::{Auth, ClientIp, JsonBody},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/register", post(register))
        .route("/register/available", get(available))
        .route("/login", get(login_flows).post(login))
        .route("/logout", post(logout))
        .route("/logout/all", post(logout_all))
        .route("/account/whoami", get(whoami))
        .route("/account/password", post(change_password))
        .route("/account/deactivate", post(deactivate))
}

pub(crate) async fn run_uia(
    h: &Hearth,
    auth: Option<&Value>,
    flows: &[Vec<&str>],
    password_user: Option<&hearth_core::ruma::UserId>,
) -> ApiResult<()> {
    match h.uia(auth, flows, password_user).await? {
        UiaOutcome::Done => Ok(()),
        UiaOutcome::Challenge(c) => Err(ApiError::Uia(Box::new(c))),
    }
}

/// Sensitive account actions ask for the password again (UIA `m.login.password`).
pub(crate) async fn reauthenticate(
    h: &Hearth,
    auth: Option<&Value>,
    user: &hearth_core::ruma::UserId,
) -> ApiResult<()> {
    run_uia(h, auth, &[vec!["m.login.password"]], Some(user)).await
}

#[derive(Deserialize)]
struct RegisterQuery {
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    auth: Option<Value>,
}

async fn register(
    State(h): State<Arc<Hearth>>,
    Query(q): Query<RegisterQuery>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<RegisterBody>,
) -> JsonResult {
    if q.kind.as_deref() == Some("guest") {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "M_GUEST_ACCESS_FORBIDDEN",
            "Guest access is disabled",
        ));
    }
    if !h.config.registration_enabled {
        return Err(Error::RegistrationDisabled.into());
    }
    // Refuse a bad or taken name before the client walks through UIA.
    if let Some(u) = &body.username {
        h.check_username_available(&u.to_lowercase()).await?;
    }
    let flows: Vec<Vec<&str>> = if h.config.registration_tokens.is_empty() {
        vec![vec!["m.login.dummy"]]
    } else {
        vec![vec!["m.login.registration_token"]]
    };
    run_uia(&h, body.auth.as_ref(), &flows, None).await?;
    h.rate_limit(
        Action::Register,
        &ip.map(|i| i.to_string()).unwrap_or_default(),
    )?;
    let password = body
        .password
        .as_deref()
        .ok_or_else(|| Error::MissingParam("Missing password".into()))?;
    if password.len() > 512 {
        return Err(Error::invalid_param("Password too long").into());
    }
    let local = match &body.username {
        Some(u) => u.to_lowercase(),
        None => h.generate_localpart().await?,
    };
    let user = h.create_account(&local, Some(password), false).await?;
    tracing::info!(user = %user, "registered");
    if body.inhibit_login {
        return Ok(Json(json!({"user_id": user})));
    }
    let (token, device) = h
        .issue_token(
            &user,
            body.device_id.as_deref(),
            body.initial_device_display_name.as_deref(),
        )
        .await?;
    Ok(Json(json!({
        "user_id": user,
        "access_token": token,
        "device_id": device,
        "home_server": h.config.server_name,
    })))
}

#[derive(Deserialize)]
struct AvailableQuery {
    username: String,
}

async fn available(State(h): State<Arc<Hearth>>, Query(q): Query<AvailableQuery>) -> JsonResult {
    h.check_username_available(&q.username.to_lowercase())
        .await?;
    Ok(Json(json!({"available": true})))
}

async fn login_flows() -> Json<Value> {
    Json(json!({"flows": [{"type": "m.login.password"}]}))
}

#[derive(Deserialize)]
struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    identifier: Option<Value>,
    /// Deprecated top-level user field, still sent by older clients.
    user: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
}

async fn login(State(h): State<Arc<Hearth>>, JsonBody(body): JsonBody<LoginBody>) -> JsonResult {
    if body.kind != "m.login.password" {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            format!("Unknown login type {}", body.kind),
        ));
    }
    let user = match &body.identifier {
        Some(id) => {
            if id.get("type").and_then(Value::as_str) != Some("m.id.user") {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "Only m.id.user identifiers are supported",
                ));
            }
            id.get("user").and_then(Value::as_str).map(str::to_owned)
        }
        None => body.user.clone(),
    }
    .ok_or_else(|| Error::MissingParam("Missing user identifier".into()))?;
    let password = body
        .password
        .as_deref()
        .ok_or_else(|| Error::MissingParam("Missing password".into()))?;
    h.rate_limit(Action::Login, &user)?;
    let user_id = h
        .parse_local_user(&user)
        .map_err(|_| Error::forbidden("Invalid username or password"))?;
    h.check_password(&user_id, password).await?;
    let (token, device) = h
        .issue_token(
            &user_id,
            body.device_id.as_deref(),
            body.initial_device_display_name.as_deref(),
        )
        .await?;
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": token,
        "device_id": device,
        "home_server": h.config.server_name,
    })))
}

async fn logout(State(h): State<Arc<Hearth>>, Auth(s): Auth) -> JsonResult {
    h.store.delete_token(&s.token_hash).await?;
    Ok(Json(json!({})))
}

async fn logout_all(State(h): State<Arc<Hearth>>, Auth(s): Auth) -> JsonResult {
    h.store.delete_devices(s.user_id.as_str(), None).await?;
    Ok(Json(json!({})))
}

async fn whoami(Auth(s): Auth) -> JsonResult {
    Ok(Json(
        json!({"user_id": s.user_id, "device_id": s.device_id, "is_guest": false}),
    ))
}

#[derive(Deserialize)]
struct PasswordBody {
    new_password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
    auth: Option<Value>,
}

fn yes() -> bool {
    true
}

async fn change_password(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    JsonBody(body): JsonBody<PasswordBody>,
) -> JsonResult {
    reauthenticate(&h, body.auth.as_ref(), &s.user_id).await?;
    let new = body
        .new_password
        .as_deref()
        .ok_or_else(|| Error::MissingParam("Missing new_password".into()))?;
    h.change_password(&s.user_id, new, body.logout_devices, Some(&s.token_hash))
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeactivateBody {
    auth: Option<Value>,
}

async fn deactivate(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    JsonBody(body): JsonBody<DeactivateBody>,
) -> JsonResult {
    reauthenticate(&h, body.auth.as_ref(), &s.user_id).await?;
    h.deactivate_account(&s.user_id).await?;
    tracing::info!(user = %s.user_id, "deactivated");
    Ok(Json(json!({"id_server_unbind_result": "no-support"})))
}
