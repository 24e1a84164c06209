//! OpenID (client-server API, "OpenID"): a user's token for a third party,
//! and the `userinfo` lookup with which that party checks it. The lookup
//! belongs to the server-server API, yet third parties reach it where they
//! reach the client API (Synapse serves it there too), so it is mounted
//! beside the client routes as well as on the federation listener.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post},
};
use hearth_core::Hearth;
use hearth_http_common::openid::UserinfoQuery;
use serde_json::{Value, json};

use crate::{error::ApiResult, extract::Auth};

/// Under `/_matrix/client/{v3,r0}`.
pub fn routes() -> Router<Arc<Hearth>> {
    Router::new().route("/user/{user_id}/openid/request_token", post(request_token))
}

/// At the root, beside the client API.
pub fn userinfo_routes() -> Router<Arc<Hearth>> {
    Router::new().route("/_matrix/federation/v1/openid/userinfo", get(userinfo))
}

async fn request_token(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let token = h
        .accounts
        .request_openid_token(&s.user_id, &user_id)
        .await?;
    Ok(Json(json!({
        "access_token": token.access_token,
        "token_type": "Bearer",
        "matrix_server_name": h.config.server_name.as_str(),
        "expires_in": token.expires_in,
    })))
}

async fn userinfo(
    State(h): State<Arc<Hearth>>,
    Query(q): Query<UserinfoQuery>,
) -> ApiResult<Json<Value>> {
    hearth_http_common::openid::userinfo(&h.accounts, q).await
}
