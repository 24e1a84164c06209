//! Incoming requests must carry a valid X-Matrix signature by their origin
//! server's current key, addressed to this server; anything else is 401.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{OriginalUri, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hearth_core::{Error, ids::now_ms};
use hearth_http_common::error::ApiError;
use ruma::{OwnedServerName, api::federation::authentication::XMatrix, signatures::PublicKeyMap};

use crate::{FedError, Federation};

/// Largest request body a signed federation request may carry.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// The server a verified request came from.
#[derive(Clone, Debug)]
pub struct Origin(pub OwnedServerName);

pub(crate) async fn require_signature(
    State(fed): State<Arc<Federation>>,
    request: Request,
    next: Next,
) -> Response {
    match verify(&fed, request).await {
        Ok(request) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn verify(fed: &Federation, request: Request) -> Result<Request, ApiError> {
    let unauthorized = |msg: String| {
        tracing::warn!(reason = %msg, "federation request refused");
        ApiError::from(FedError::Unauthorized(msg))
    };
    let header = request
        .headers()
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.trim_start().to_ascii_lowercase().starts_with("x-matrix"))
        .map(str::to_owned)
        .ok_or_else(|| unauthorized("missing X-Matrix Authorization header".into()))?;
    let xm = XMatrix::parse(&header)
        .map_err(|e| unauthorized(format!("malformed X-Matrix header: {e}")))?;
    let ours = fed.server_name();
    if let Some(d) = &xm.destination
        && d != ours
    {
        return Err(unauthorized(format!(
            "request addressed to {d}, not {ours}"
        )));
    }
    if xm.origin == ours {
        return Err(unauthorized(
            "a request claiming to come from this server".into(),
        ));
    }
    // A key id we do not hold yet (a rotation) has the keys fetched again.
    let keys = fed
        .server_keys_with(xm.origin.as_str(), &[xm.key.as_str()], now_ms())
        .await
        .map_err(|e| unauthorized(format!("no keys for {}: {e}", xm.origin)))?;
    let mut map = PublicKeyMap::new();
    // Only current keys sign requests.
    map.insert(xm.origin.to_string(), keys.verify_keys.clone());

    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map(|u| u.0.clone())
        .unwrap_or_else(|| request.uri().clone());
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|_| Error::TooLarge("request body too large".into()))?;
    if !bytes.is_empty() && serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
        return Err(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "body is not JSON",
        ));
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| uri.path().to_owned());
    let signed = http::Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .body(bytes.as_ref())
        .map_err(|e| unauthorized(format!("request line: {e}")))?;
    xm.verify_http_request(&signed, ours, &map)
        .map_err(|e| unauthorized(format!("signature from {} invalid: {e}", xm.origin)))?;
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(Origin(xm.origin));
    Ok(request)
}
