//! Third-party identifiers: the account's (empty) list, the requestToken
//! endpoints (refused as the spec says, `hearth_core::accounts::threepid`)
//! and the registration token validity check.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post},
};
use hearth_core::{Error, Hearth, accounts::ThreepidPurpose};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/account/3pid", get(list))
        .route("/register/{medium}/requestToken", post(for_registration))
        .route("/account/3pid/{medium}/requestToken", post(for_account))
        .route(
            "/account/password/{medium}/requestToken",
            post(for_password_reset),
        )
        .route(
            "/register/m.login.registration_token/validity",
            get(registration_token_validity),
        )
}

async fn list(State(h): State<Arc<Hearth>>, Auth(s): Auth) -> ApiResult<Json<Value>> {
    let threepids = h.accounts.threepids(&s.user_id).await?;
    Ok(Json(json!({ "threepids": threepids })))
}

// The body is read (and malformed JSON refused) before the answer.
async fn for_registration(
    State(h): State<Arc<Hearth>>,
    Path(medium): Path<String>,
    JsonBody(_): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    h.accounts
        .request_threepid_token(&medium, ThreepidPurpose::Registration)?;
    Ok(Json(json!({})))
}

async fn for_account(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    Path(medium): Path<String>,
    JsonBody(_): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    h.accounts
        .request_threepid_token(&medium, ThreepidPurpose::AddToAccount)?;
    Ok(Json(json!({})))
}

async fn for_password_reset(
    State(h): State<Arc<Hearth>>,
    Path(medium): Path<String>,
    JsonBody(_): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    h.accounts
        .request_threepid_token(&medium, ThreepidPurpose::PasswordReset)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct ValidityQuery {
    token: Option<String>,
}

async fn registration_token_validity(
    State(h): State<Arc<Hearth>>,
    Query(q): Query<ValidityQuery>,
) -> ApiResult<Json<Value>> {
    let token = q
        .token
        .ok_or_else(|| Error::MissingParam("Missing token".into()))?;
    if !h.config.registration_enabled {
        return Err(Error::RegistrationDisabled.into());
    }
    Ok(Json(
        json!({ "valid": h.uia.registration_token_valid(&token) }),
    ))
}
