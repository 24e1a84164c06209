//! Every failure leaves as a Matrix error: `{errcode, error}` with the right status.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use hearth_core::{Error, uia::UiaChallenge};
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    Core(Error),
    Uia(Box<UiaChallenge>),
    Custom {
        status: StatusCode,
        errcode: &'static str,
        error: String,
    },
}

impl ApiError {
    pub fn new(status: StatusCode, errcode: &'static str, error: impl Into<String>) -> Self {
        ApiError::Custom {
            status,
            errcode,
            error: error.into(),
        }
    }
    pub fn unrecognized(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", msg)
    }
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing access token",
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Core(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// An errcode another process answered with, as one of ours.
fn known_errcode(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "M_FORBIDDEN",
        "M_NOT_FOUND",
        "M_BAD_JSON",
        "M_NOT_JSON",
        "M_INVALID_PARAM",
        "M_MISSING_PARAM",
        "M_LIMIT_EXCEEDED",
        "M_TOO_LARGE",
        "M_UNAVAILABLE",
        "M_UNKNOWN_TOKEN",
        "M_UNSUPPORTED_ROOM_VERSION",
        "M_INVALID_ROOM_STATE",
        "M_EXCLUSIVE",
        "M_UNKNOWN_DEVICE",
        "M_WRONG_ROOM_KEYS_VERSION",
        "M_BAD_ALIAS",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("M_UNKNOWN")
}

/// An errcode as the spec shapes them (`M_FORBIDDEN`, or namespaced like
/// `ORG.EXAMPLE_CODE`): upper-case letters, digits, `_` and `.`, at most
/// 128 bytes.
fn plausible_errcode(code: &str) -> bool {
    (3..=128).contains(&code.len())
        && code.contains('_')
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

fn core_parts(e: &Error) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match e {
        Error::Forbidden(_) => (S::FORBIDDEN, "M_FORBIDDEN"),
        Error::NotFound(_) => (S::NOT_FOUND, "M_NOT_FOUND"),
        Error::BadJson(_) => (S::BAD_REQUEST, "M_BAD_JSON"),
        Error::InvalidParam(_) => (S::BAD_REQUEST, "M_INVALID_PARAM"),
        Error::MissingParam(_) => (S::BAD_REQUEST, "M_MISSING_PARAM"),
        Error::UserInUse => (S::BAD_REQUEST, "M_USER_IN_USE"),
        Error::InvalidUsername(_) => (S::BAD_REQUEST, "M_INVALID_USERNAME"),
        Error::Exclusive(_) => (S::BAD_REQUEST, "M_EXCLUSIVE"),
        Error::UnknownDevice(_) => (S::BAD_REQUEST, "M_UNKNOWN_DEVICE"),
        Error::UnknownToken { .. } => (S::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
        Error::LimitExceeded { .. } => (S::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
        Error::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
        Error::UnsupportedRoomVersion(_) => (S::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION"),
        Error::RoomInUse => (S::BAD_REQUEST, "M_ROOM_IN_USE"),
        Error::BadAlias(_) => (S::BAD_REQUEST, "M_BAD_ALIAS"),
        Error::InvalidRoomState(_) => (S::BAD_REQUEST, "M_INVALID_ROOM_STATE"),
        Error::ThreepidDenied(_) => (S::FORBIDDEN, "M_THREEPID_DENIED"),
        Error::ThreepidNotFound(_) => (S::BAD_REQUEST, "M_THREEPID_NOT_FOUND"),
        Error::Unrecognized(_) => (S::NOT_FOUND, "M_UNRECOGNIZED"),
        Error::RegistrationDisabled => (S::FORBIDDEN, "M_FORBIDDEN"),
        Error::UserDeactivated(_) => (S::FORBIDDEN, "M_USER_DEACTIVATED"),
        Error::Unavailable(_)
        | Error::NotWriter { .. }
        | Error::LeaseLost
        | Error::WriterUnreachable(_) => (S::SERVICE_UNAVAILABLE, "M_UNAVAILABLE"),
        // The room's writer process answered a forwarded send: its answer,
        // as it gave it.
        Error::Forwarded {
            status, errcode, ..
        } => (
            S::from_u16(*status).unwrap_or(S::INTERNAL_SERVER_ERROR),
            known_errcode(errcode),
        ),
        Error::Unknown(_) => (S::BAD_REQUEST, "M_UNKNOWN"),
        Error::WrongRoomKeysVersion { .. } => (S::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION"),
        Error::Internal(_)
        | Error::DuplicateTransaction { .. }
        | Error::Superseded
        | Error::Database(_)
        | Error::Migration(_)
        | Error::Io(_)
        | Error::Json(_) => (S::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
    }
}

impl ApiError {
    /// (errcode, message) for channels other than an HTTP response.
    pub fn errcode_and_message(&self) -> (&'static str, String) {
        match self {
            ApiError::Core(e) => {
                let (status, code) = core_parts(e);
                let msg = if status == StatusCode::INTERNAL_SERVER_ERROR {
                    "Internal server error".to_owned()
                } else {
                    e.to_string()
                };
                (code, msg)
            }
            ApiError::Uia(_) => (
                "M_FORBIDDEN",
                "Interactive authentication required".to_owned(),
            ),
            ApiError::Custom { errcode, error, .. } => (errcode, error.clone()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Core(e) => {
                let (status, errcode) = core_parts(&e);
                let mut body = json!({"errcode": errcode, "error": e.to_string()});
                if status == StatusCode::INTERNAL_SERVER_ERROR {
                    tracing::error!(error = %e, "request failed");
                    body["error"] = json!("Internal server error");
                } else if status.is_server_error() {
                    tracing::warn!(errcode, error = %e, "request could not be served now");
                } else {
                    tracing::debug!(errcode, error = %e, "request refused");
                }
                if let Error::LimitExceeded { retry_after_ms } = e {
                    body["retry_after_ms"] = json!(retry_after_ms);
                }
                if let Error::WrongRoomKeysVersion { current } = &e {
                    body["current_version"] = json!(current);
                }
                if let Error::UnknownToken { soft_logout } = e {
                    body["soft_logout"] = json!(soft_logout);
                }
                // Another server's refusal reaches the client as that
                // server worded it (a join's make_join, say), when its
                // errcode is well-formed.
                if let Error::Forwarded { errcode, .. } = &e
                    && plausible_errcode(errcode)
                {
                    body["errcode"] = json!(errcode);
                }
                (status, Json(body)).into_response()
            }
            ApiError::Uia(c) => {
                let flows: Vec<_> = c.flows.iter().map(|f| json!({"stages": f})).collect();
                let mut body = json!({
                    "flows": flows,
                    "params": c.params,
                    "session": c.session,
                    "completed": c.completed,
                });
                if let Some((code, msg)) = c.error {
                    body["errcode"] = json!(code);
                    body["error"] = json!(msg);
                }
                (StatusCode::UNAUTHORIZED, Json(body)).into_response()
            }
            ApiError::Custom {
                status,
                errcode,
                error,
            } => {
                tracing::debug!(errcode, %error, "request refused");
                (status, Json(json!({"errcode": errcode, "error": error}))).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: Error) -> (StatusCode, serde_json::Value) {
        let response = ApiError::Core(e).into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn another_servers_errcode_is_passed_on_when_well_formed() {
        let forwarded = |errcode: &str| Error::Forwarded {
            status: 400,
            errcode: errcode.to_owned(),
            message: "denied!".to_owned(),
        };
        let (status, body) = body_of(forwarded("M_TEST_ERROR_CODE")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errcode"], "M_TEST_ERROR_CODE", "{body}");
        for garbled in ["<script>", "m_lower", "M", &"M_".repeat(100)] {
            let (_, body) = body_of(forwarded(garbled)).await;
            assert_eq!(body["errcode"], "M_UNKNOWN", "{garbled}: {body}");
        }
    }
}
