//! Request extractors that turn bad input into Matrix errors.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequest, FromRequestParts, Request},
    http::{StatusCode, request::Parts},
};
use bytes::Bytes;
use hearth_core::{Hearth, accounts::Session};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// The authenticated requester (header `Authorization: Bearer` or `?access_token=`).
pub struct Auth(pub Session);

pub fn access_token(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(s) = h.to_str()
        && let Some(t) = s.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    parts.uri.query().and_then(|q| {
        url_params(q)
            .into_iter()
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v)
    })
}

/// The requester a token names: a user's session, or an application
/// service acting as `?user_id=` (with `?device_id=`).
async fn session_for(hearth: &Hearth, parts: &Parts, token: &str) -> Result<Session, ApiError> {
    if let Some(service) = hearth.appservices.by_as_token(token) {
        let params = parts.uri.query().map(url_params).unwrap_or_default();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        return Ok(hearth
            .accounts
            .authenticate_appservice(service, param("user_id"), param("device_id"))
            .await?);
    }
    Ok(hearth.accounts.authenticate(token).await?)
}

/// The pairs of a query string, percent-decoded (`+` is a space); a pair
/// that does not decode as UTF-8 is left out.
pub fn url_params(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .ok()
            };
            Some((dec(k)?, dec(v)?))
        })
        .collect()
}

impl<S> FromRequestParts<S> for Auth
where
    Arc<Hearth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let hearth = Arc::<Hearth>::from_ref(state);
        let token = access_token(parts).ok_or_else(ApiError::missing_token)?;
        Ok(Auth(session_for(&hearth, parts, &token).await?))
    }
}

/// An optional requester: endpoints that work with or without a token.
pub struct MaybeAuth(pub Option<Session>);

impl<S> FromRequestParts<S> for MaybeAuth
where
    Arc<Hearth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match access_token(parts) {
            None => Ok(MaybeAuth(None)),
            Some(t) => Ok(MaybeAuth(Some(
                session_for(&Arc::<Hearth>::from_ref(state), parts, &t).await?,
            ))),
        }
    }
}

/// Reads the raw body; an over-limit body is 413 M_TOO_LARGE.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "Request body too large",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("Could not read body: {e}"),
            )
        }
    })
}

/// A JSON body: unparseable is M_NOT_JSON, the wrong shape is M_BAD_JSON.
/// The content type is not checked: many clients omit it.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = json_object(req, state).await?;
        typed(value).map(JsonBody)
    }
}

/// The body as a JSON object; an empty body is `{}`.
pub async fn json_object<S: Send + Sync>(req: Request, state: &S) -> Result<Value, ApiError> {
    let bytes = read_body(req, state).await?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            format!("Content not JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "Content must be a JSON object",
        ));
    }
    Ok(value)
}

/// A JSON value as `T`; the wrong shape is M_BAD_JSON.
pub fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
            format!("Invalid request body: {e}"),
        )
    })
}
