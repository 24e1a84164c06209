//! The last word on every refusal: a 4xx the framework wrote itself (a
//! query or path its extractors could not read, an unknown route, a wrong
//! method) leaves as a Matrix error, `{errcode, error}`, like every other.

use axum::{
    extract::Request,
    http::{StatusCode, header::CONTENT_TYPE},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::ApiError;

/// The longest framework message kept as the error's text.
const MAX_MESSAGE: usize = 4096;

/// Middleware: a client error whose body is not JSON is rewritten as the
/// Matrix error its status and message mean. JSON bodies (ours) pass as
/// they are.
pub async fn matrix_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !status.is_client_error() || is_json(&response) {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), MAX_MESSAGE)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&bytes).trim().to_owned();
    let (status, errcode) = matrix_error(status, &message);
    let message = if message.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("Bad request")
            .to_owned()
    } else {
        message
    };
    tracing::debug!(%method, %path, %status, errcode, error = %message, "request refused by the framework");
    ApiError::new(status, errcode, message).into_response()
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The status and errcode for a framework refusal: what axum's extractors
/// say of a query or path (a missing field, a value of the wrong type, a
/// duplicate key, bad percent-encoding), an unknown route, a wrong method.
fn matrix_error(status: StatusCode, message: &str) -> (StatusCode, &'static str) {
    match status {
        StatusCode::BAD_REQUEST if message.contains("missing field") => (status, "M_MISSING_PARAM"),
        StatusCode::BAD_REQUEST => (status, "M_INVALID_PARAM"),
        // axum's JSON rejection for a body of the wrong shape.
        StatusCode::UNPROCESSABLE_ENTITY => (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (StatusCode::BAD_REQUEST, "M_NOT_JSON"),
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => (status, "M_UNRECOGNIZED"),
        StatusCode::PAYLOAD_TOO_LARGE => (status, "M_TOO_LARGE"),
        StatusCode::UNAUTHORIZED => (status, "M_MISSING_TOKEN"),
        StatusCode::FORBIDDEN => (status, "M_FORBIDDEN"),
        StatusCode::TOO_MANY_REQUESTS => (status, "M_LIMIT_EXCEEDED"),
        _ => (status, "M_UNKNOWN"),
    }
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, extract::Query, routing::get};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    #[derive(serde::Deserialize)]
    struct Q {
        #[allow(dead_code)]
        limit: u32,
    }

    async fn limited(Query(_): Query<Q>) -> &'static str {
        "ok"
    }

    #[tokio::test]
    async fn framework_refusals_become_matrix_errors() {
        let app = Router::new()
            .route("/x", get(limited))
            .layer(axum::middleware::from_fn(matrix_errors));
        for (uri, status, code) in [
            ("/x?limit=abc", 400, "M_INVALID_PARAM"),
            ("/x", 400, "M_MISSING_PARAM"),
            ("/x?limit=1&limit=2", 400, "M_INVALID_PARAM"),
            ("/nowhere", 404, "M_UNRECOGNIZED"),
        ] {
            let request = axum::http::Request::get(uri).body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{uri}");
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body["errcode"], code, "{uri}: {body}");
            assert!(body["error"].is_string(), "{uri}: {body}");
        }
    }
}
