//! Client-API endpoints only application services use.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use hearth_core::Hearth;
use hearth_http_common::{
    error::ApiError,
    extract::Auth,
    typed::{Ruma, RumaResponse},
};
use ruma_client_api::appservice::request_ping;
use serde_json::json;

use crate::AsClient;

pub fn router() -> Router<Arc<Hearth>> {
    Router::new()
        .route(
            "/_matrix/client/v1/appservice/{appservice_id}/ping",
            post(ping),
        )
        .merge(crate::thirdparty::routes())
}

/// `POST /_matrix/client/v1/appservice/{id}/ping`: the service asks Hearth
/// to ping it back, proving both directions work.
async fn ping(
    State(_h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<request_ping::v1::Request>,
) -> Result<Response, ApiError> {
    let id = req.appservice_id;
    let service = match &s.appservice {
        Some(service) if service.id == id => service.clone(),
        _ => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
                format!("this token is not application service {id}'s"),
            ));
        }
    };
    match AsClient::shared()
        .ping(&service, req.transaction_id.as_ref().map(|t| t.as_str()))
        .await
    {
        Ok(took) => Ok(RumaResponse(request_ping::v1::Response::new(took)).into_response()),
        Err(e) => {
            let (status, errcode, extra) = e.parts();
            let mut body = json!({"errcode": errcode, "error": e.to_string()});
            if let Some(serde_json::Value::Object(extra)) = extra {
                for (k, v) in extra {
                    body[k] = v;
                }
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((status, Json(body)).into_response())
        }
    }
}
