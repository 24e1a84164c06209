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
