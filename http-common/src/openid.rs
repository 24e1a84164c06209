//! `GET /_matrix/federation/v1/openid/userinfo`, served on the federation
//! listener and beside the client API (third parties reach either): one
//! answer for both.

use axum::Json;
use hearth_core::accounts::Accounts;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;

#[derive(Deserialize)]
pub struct UserinfoQuery {
    access_token: Option<String>,
}

/// `{"sub": user}` for a valid OpenID token; 401 `M_MISSING_TOKEN` without
/// one, 401 `M_UNKNOWN_TOKEN` for any other.
pub async fn userinfo(accounts: &Accounts, q: UserinfoQuery) -> Result<Json<Value>, ApiError> {
    let token = q.access_token.ok_or_else(ApiError::missing_token)?;
    let sub = accounts.openid_userinfo(&token).await?;
    Ok(Json(json!({ "sub": sub })))
}
