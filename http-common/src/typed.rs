//! Requests read as ruma's type for their endpoint, and replies written from
//! ruma's response type: what ruma checks (identifier syntax, enum values,
//! required fields) is checked here, once, and every refusal leaves with the
//! errcode and status the hand-written parsing gave for the same input.

use axum::{
    extract::{FromRequest, FromRequestParts, RawPathParams, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bytes::{Bytes, BytesMut};
use hearth_core::ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
    error::{DeserializationError, FromHttpRequestError},
};
use serde_json::Value;

use crate::{error::ApiError, extract::read_body};

/// The request as ruma's `T`: path arguments (in the route's order), query,
/// headers and JSON body. Authentication is not ruma's business here: the
/// handler takes `Auth` or `MaybeAuth` beside this. It reads the body, so it
/// comes last among a handler's arguments; the router's body limit holds.
pub struct Ruma<T>(pub T);

impl<S, T> FromRequest<S> for Ruma<T>
where
    S: Send + Sync,
    T: IncomingRequest,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| refuse::<T>("M_INVALID_PARAM", format!("Invalid path: {e}")))?;
        let args: Vec<&str> = params.iter().map(|(_, v)| v).collect();
        let bytes = read_body(Request::from_parts(parts.clone(), body), state).await?;
        // A blank body is no body: ruma reads an empty one as `{}`, as the
        // hand-written extractors did with whitespace.
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b""
        } else {
            &bytes
        };
        let request = axum::http::Request::from_parts(parts, bytes);
        T::try_from_http_request(request, &args)
            .map(Ruma)
            .map_err(|e| rejection::<T>(e, bytes))
    }
}

/// The Matrix error for a request ruma could not read.
fn rejection<T: IncomingRequest>(e: FromHttpRequestError, body: &[u8]) -> ApiError {
    let FromHttpRequestError::Deserialization(e) = e else {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
            "Method not allowed",
        );
    };
    match e {
        DeserializationError::Json(e) if not_json(body) => {
            refuse::<T>("M_NOT_JSON", format!("Content not JSON: {e}"))
        }
        // A malformed identifier in the body was refused as an invalid
        // parameter by the hand-written parsing, as one in the path is.
        DeserializationError::Json(e) if invalid_id(&e) => {
            refuse::<T>("M_INVALID_PARAM", format!("Invalid identifier: {e}"))
        }
        DeserializationError::Json(e) => {
            refuse::<T>("M_BAD_JSON", format!("Invalid request body: {e}"))
        }
        // Path arguments and the query both arrive here; only a query
        // parameter can be missing, since the router matched the path.
        DeserializationError::Query(e) if e.to_string().starts_with("missing field") => {
            refuse::<T>("M_MISSING_PARAM", format!("Missing parameter: {e}"))
        }
        e @ (DeserializationError::Query(_)
        | DeserializationError::Ident(_)
        | DeserializationError::Utf8(_)
        | DeserializationError::Header(_)) => {
            refuse::<T>("M_INVALID_PARAM", format!("Invalid parameter: {e}"))
        }
        e => refuse::<T>("M_UNKNOWN", format!("Could not read the request: {e}")),
    }
}

/// Whether a body is not a JSON object at all (M_NOT_JSON), as opposed to
/// one of the wrong shape (M_BAD_JSON).
fn not_json(body: &[u8]) -> bool {
    !body.is_empty() && !serde_json::from_slice::<Value>(body).is_ok_and(|v| v.is_object())
}

/// Whether a body error is ruma refusing an identifier: serde passes the
/// identifier's parse error on as its message, so it is matched against
/// ruma's own wording of those errors.
fn invalid_id(e: &serde_json::Error) -> bool {
    use hearth_core::ruma::IdParseError as Id;
    if e.classify() != serde_json::error::Category::Data {
        return false;
    }
    let message = e.to_string();
    [
        Id::Empty,
        Id::InvalidCharacters,
        Id::InvalidServerName,
        Id::InvalidUtf8,
        Id::MaximumLengthExceeded,
        Id::MissingColon,
        Id::MissingLeadingSigil,
    ]
    .iter()
    .any(|id| message.starts_with(&id.to_string()))
}

fn refuse<T: IncomingRequest>(errcode: &'static str, error: String) -> ApiError {
    tracing::debug!(
        endpoint = std::any::type_name::<T>(),
        errcode,
        %error,
        "request refused at the edge"
    );
    ApiError::new(StatusCode::BAD_REQUEST, errcode, error)
}

/// A JSON body ruma keeps raw (account data contents) must still be an
/// object, as every Matrix request body is.
pub fn json_object_body<T>(
    raw: &hearth_core::ruma::serde::Raw<T>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_str::<Value>(raw.json().get()) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "Content must be a JSON object",
        )),
    }
}

/// A JSON value Hearth stored or built, as ruma's raw JSON of the type a
/// response field declares: it goes out as it is, unchecked.
pub fn raw<T>(value: &Value) -> Result<hearth_core::ruma::serde::Raw<T>, ApiError> {
    let raw = hearth_core::ruma::serde::Raw::new(value).map_err(hearth_core::Error::from)?;
    Ok(raw.cast_unchecked())
}

/// A reply as ruma's response type for its endpoint.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(response) => response
                .map(|b| axum::body::Body::from(Bytes::from(b)))
                .into_response(),
            Err(e) => ApiError::from(hearth_core::Error::Internal(format!(
                "could not serialize the response of {}: {e}",
                std::any::type_name::<T>()
            )))
            .into_response(),
        }
    }
}

impl<T: OutgoingResponse> From<T> for RumaResponse<T> {
    fn from(response: T) -> Self {
        RumaResponse(response)
    }
}

/// A handler's result with a ruma reply.
pub type RumaResult<T> = Result<RumaResponse<T>, ApiError>;

#[cfg(test)]
mod tests {
    use axum::{
        Router,
        body::Body,
        routing::{get, post},
    };
    use ruma_client_api::{membership::kick_user, message::get_message_events};
    use tower::ServiceExt;

    use super::*;

    async fn kick(Ruma(req): Ruma<kick_user::v3::Request>) -> String {
        format!("{} {}", req.room_id, req.user_id)
    }

    /// Status and body of a kick request with `body` to the room `room`.
    async fn answer(room: &str, body: &str) -> (StatusCode, String) {
        let app = Router::new().route("/rooms/{room_id}/kick", post(kick));
        let request = axum::http::Request::post(format!("/rooms/{room}/kick"))
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn errcode(body: &str) -> String {
        let v: Value = serde_json::from_str(body).unwrap();
        v["errcode"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn reads_path_and_body() {
        let (status, body) = answer("!r:x", r#"{"user_id": "@u:x"}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "!r:x @u:x");
    }

    #[tokio::test]
    async fn refusals_keep_their_errcodes() {
        let cases = [
            ("!r:x", "{not json", "M_NOT_JSON"),
            ("!r:x", "[1]", "M_NOT_JSON"),
            ("!r:x", r#"{"user_id": 5}"#, "M_BAD_JSON"),
            ("!r:x", "{}", "M_BAD_JSON"),
            ("!r:x", "  ", "M_BAD_JSON"),
            ("!r:x", r#"{"user_id": "nope"}"#, "M_INVALID_PARAM"),
            ("not-a-room", r#"{"user_id": "@u:x"}"#, "M_INVALID_PARAM"),
        ];
        for (room, body, expected) in cases {
            let (status, answer) = answer(room, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
            assert_eq!(errcode(&answer), expected, "{body}: {answer}");
        }
    }

    async fn messages(Ruma(req): Ruma<get_message_events::v3::Request>) -> String {
        format!("{:?} {}", req.dir, req.limit)
    }

    #[tokio::test]
    async fn query_parameters_missing_or_invalid() {
        let app = Router::new().route("/rooms/{room_id}/messages", get(messages));
        for (query, expected) in [
            ("limit=5", Some("M_MISSING_PARAM")),
            ("dir=x", Some("M_INVALID_PARAM")),
            ("dir=b&limit=many", Some("M_INVALID_PARAM")),
            ("dir=b&limit=5", None),
        ] {
            let request = axum::http::Request::get(format!("/rooms/!r:x/messages?{query}"))
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            let body = String::from_utf8_lossy(&bytes).into_owned();
            match expected {
                Some(code) => {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
                    assert_eq!(errcode(&body), code, "{query}: {body}");
                }
                None => assert_eq!(body, "Backward 5"),
            }
        }
    }

    #[tokio::test]
    async fn body_limit_holds() {
        let app = Router::new()
            .route("/rooms/{room_id}/kick", post(kick))
            .layer(axum::extract::DefaultBodyLimit::max(16));
        let body = r#"{"user_id": "@someone:example.org"}"#;
        let request = axum::http::Request::post("/rooms/!r:x/kick")
            .body(Body::from(body))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(errcode(&String::from_utf8_lossy(&bytes)), "M_TOO_LARGE");
    }
}
