//! Registration, login, logout, password, deactivation.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::{get, post},
};
use hearth_core::{
    Error, Hearth,
    ratelimit::Action,
    uia::{RegisterOutcome, RegisterParams, RegisterStep, UiaOutcome, UiaRequest},
};
use ruma_client_api::{
    account::{ThirdPartyIdRemovalStatus, change_password, deactivate, get_username_availability},
    session::{
        get_login_types::{
            self,
            v3::{ApplicationServiceLoginType, LoginType, PasswordLoginType},
        },
        logout, logout_all,
    },
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::JsonResult;
use crate::{
    error::{ApiError, ApiResult},
    extract::{Auth, ClientIp, JsonBody, UiaJson, uia_request},
    typed::{Ruma, RumaResult},
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
    request: &UiaRequest,
) -> ApiResult<()> {
    match h.uia.uia(auth, flows, password_user, request).await? {
        UiaOutcome::Done => Ok(()),
        UiaOutcome::Challenge(c) => Err(ApiError::Uia(Box::new(c))),
    }
}

/// Sensitive account actions ask for the password again (core's
/// `Uia::reauthenticate`: not of an application service acting as its user).
pub(crate) async fn reauthenticate<T>(
    h: &Hearth,
    uia: &UiaJson<T>,
    session: &hearth_core::accounts::Session,
) -> ApiResult<()> {
    match h
        .uia
        .reauthenticate(session, uia.auth.as_ref(), &uia.request)
        .await?
    {
        UiaOutcome::Done => Ok(()),
        UiaOutcome::Challenge(c) => Err(ApiError::Uia(Box::new(c))),
    }
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
    /// `m.login.application_service`: an application service registering
    /// one of its users.
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn register(
    State(h): State<Arc<Hearth>>,
    Query(q): Query<RegisterQuery>,
    ClientIp(ip): ClientIp,
    parts: axum::http::request::Parts,
    JsonBody(raw): JsonBody<Value>,
) -> JsonResult {
    let body: RegisterBody = hearth_http_common::extract::typed(raw.clone())?;
    if body.kind.as_deref() == Some("m.login.application_service") {
        return register_appservice_user(&h, &parts, body).await;
    }
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
    let flows: Vec<Vec<&str>> = if h.config.registration_tokens.is_empty() {
        vec![vec!["m.login.dummy"]]
    } else {
        vec![vec!["m.login.registration_token"]]
    };
    let mut rest = raw;
    if let Some(o) = rest.as_object_mut() {
        o.remove("auth");
    }
    let step = RegisterStep {
        params: RegisterParams {
            username: body.username,
            password: body.password,
            device_id: body.device_id,
            initial_device_display_name: body.initial_device_display_name,
            inhibit_login: body.inhibit_login,
        },
        body: rest,
        auth: body.auth.as_ref(),
        // The session is bound to the endpoint; core binds the parameters.
        request: &uia_request(&parts),
        client: &ip.map(|i| i.to_string()).unwrap_or_default(),
    };
    let done = match h.uia.register(step, &flows).await? {
        RegisterOutcome::Registered(r) => r,
        RegisterOutcome::Challenge(c) => return Err(ApiError::Uia(c)),
    };
    tracing::info!(user = %done.user_id, "registered");
    if done.inhibit_login {
        return Ok(Json(json!({"user_id": done.user_id})));
    }
    logged_in(
        &h,
        &done.user_id,
        done.device_id.as_deref(),
        done.initial_device_display_name.as_deref(),
    )
    .await
}

/// An application service registers a user of its namespaces: no UIA, no
/// password; its `as_token` authenticates it.
async fn register_appservice_user(
    h: &Hearth,
    parts: &axum::http::request::Parts,
    body: RegisterBody,
) -> JsonResult {
    let service = appservice_of(h, parts)?;
    let local = body
        .username
        .as_deref()
        .ok_or_else(|| Error::MissingParam("Missing username".into()))?
        .to_lowercase();
    let user = h
        .accounts
        .register_appservice_user(&service, &local)
        .await?;
    if body.inhibit_login {
        return Ok(Json(json!({"user_id": user})));
    }
    logged_in(
        h,
        &user,
        body.device_id.as_deref(),
        body.initial_device_display_name.as_deref(),
    )
    .await
}

/// A new device and access token for `user`: the answer to a registration
/// or login.
async fn logged_in(
    h: &Hearth,
    user: &hearth_core::ruma::UserId,
    device_id: Option<&str>,
    display_name: Option<&str>,
) -> JsonResult {
    let (token, device) = h
        .accounts
        .issue_token(user, device_id, display_name)
        .await?;
    Ok(Json(json!({
        "user_id": user,
        "access_token": token,
        "device_id": device,
        "home_server": h.config.server_name,
    })))
}

/// The application service whose `as_token` authenticates the request;
/// 401 without a token or with another one.
fn appservice_of(
    h: &Hearth,
    parts: &axum::http::request::Parts,
) -> ApiResult<Arc<hearth_core::appservice::AppService>> {
    let token = crate::extract::access_token(parts).ok_or_else(ApiError::missing_token)?;
    h.appservices
        .by_as_token(&token)
        .cloned()
        .ok_or_else(|| Error::UnknownToken { soft_logout: false }.into())
}

async fn available(
    State(h): State<Arc<Hearth>>,
    Ruma(q): Ruma<get_username_availability::v3::Request>,
) -> RumaResult<get_username_availability::v3::Response> {
    h.accounts
        .check_username_claimable(&q.username.to_lowercase())
        .await?;
    Ok(get_username_availability::v3::Response::new(true).into())
}

async fn login_flows(
    Ruma(_): Ruma<get_login_types::v3::Request>,
) -> RumaResult<get_login_types::v3::Response> {
    let flows = vec![
        LoginType::Password(PasswordLoginType::new()),
        LoginType::ApplicationService(ApplicationServiceLoginType::new()),
    ];
    Ok(get_login_types::v3::Response::new(flows).into())
}

/// The login identifier's user (`identifier.user`, or the older `user`).
fn login_user(body: &LoginBody) -> ApiResult<String> {
    match &body.identifier {
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
    .ok_or_else(|| Error::MissingParam("Missing user identifier".into()).into())
}

/// An application service logs in as one of its users (a device of theirs
/// it then manages).
async fn login_appservice_user(
    h: &Hearth,
    parts: &axum::http::request::Parts,
    body: LoginBody,
) -> JsonResult {
    let service = appservice_of(h, parts)?;
    let user = login_user(&body)?;
    let user_id = h.accounts.appservice_login_user(&service, &user).await?;
    logged_in(
        h,
        &user_id,
        body.device_id.as_deref(),
        body.initial_device_display_name.as_deref(),
    )
    .await
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

async fn login(
    State(h): State<Arc<Hearth>>,
    parts: axum::http::request::Parts,
    JsonBody(body): JsonBody<LoginBody>,
) -> JsonResult {
    if body.kind == "m.login.application_service" {
        return login_appservice_user(&h, &parts, body).await;
    }
    if body.kind != "m.login.password" {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            format!("Unknown login type {}", body.kind),
        ));
    }
    let user = login_user(&body)?;
    let password = body
        .password
        .as_deref()
        .ok_or_else(|| Error::MissingParam("Missing password".into()))?;
    h.rate_limits.rate_limit(Action::Login, &user)?;
    let user_id = h
        .accounts
        .parse_local_user(&user)
        .map_err(|_| Error::forbidden("Invalid username or password"))?;
    h.accounts.check_password(&user_id, password).await?;
    logged_in(
        &h,
        &user_id,
        body.device_id.as_deref(),
        body.initial_device_display_name.as_deref(),
    )
    .await
}

/// Logging out ends the device: its token, keys and to-device inbox go.
async fn logout(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(_): Ruma<logout::v3::Request>,
) -> RumaResult<logout::v3::Response> {
    h.accounts.logout(&s).await?;
    Ok(logout::v3::Response::new().into())
}

async fn logout_all(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(_): Ruma<logout_all::v3::Request>,
) -> RumaResult<logout_all::v3::Response> {
    h.e2ee.delete_devices(&s.user_id, None).await?;
    Ok(logout_all::v3::Response::new().into())
}

async fn whoami(Auth(s): Auth) -> JsonResult {
    let mut body = json!({"user_id": s.user_id, "is_guest": false});
    // An application service acting without a device has none to report.
    if !s.device_id.is_empty() {
        body["device_id"] = json!(s.device_id);
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
struct PasswordBody {
    new_password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
}

fn yes() -> bool {
    true
}

async fn change_password(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    uia: UiaJson<PasswordBody>,
) -> RumaResult<change_password::v3::Response> {
    // The password itself: an application service is asked for it too.
    let request = UiaRequest {
        user: Some(s.user_id.clone()),
        ..uia.request.clone()
    };
    let flows = [vec!["m.login.password"]];
    run_uia(&h, uia.auth.as_ref(), &flows, Some(&s.user_id), &request).await?;
    let body = uia.body;
    let new = body
        .new_password
        .as_deref()
        .ok_or_else(|| Error::MissingParam("Missing new_password".into()))?;
    h.accounts
        .change_password(&s.user_id, new, body.logout_devices, Some(&s))
        .await?;
    Ok(change_password::v3::Response::new().into())
}

async fn deactivate(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    uia: UiaJson<Value>,
) -> RumaResult<deactivate::v3::Response> {
    reauthenticate(&h, &uia, &s).await?;
    h.writer.deactivate_account(&s.user_id).await?;
    tracing::info!(user = %s.user_id, "deactivated");
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport).into())
}
