//! Request extractors that turn bad input into Matrix errors.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequest, FromRequestParts, OriginalUri, Request},
    http::{StatusCode, request::Parts},
};
use bytes::Bytes;
use hearth_core::{
    Hearth,
    accounts::Session,
    uia::{UiaRequest, unversioned_path},
};
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
            .authenticate_appservice(service, param("user_id"), param("device_id"))
            .await?);
    }
    Ok(hearth.authenticate(token).await?)
}

/// `?ts=` on a send: the event's `origin_server_ts`, for application
/// services only (others' is ignored, as Synapse does); a value that is not
/// a valid timestamp is 400.
pub fn massaged_ts(session: &Session, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(raw) = query
        .map(url_params)
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "ts")
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    if session.appservice.is_none() {
        return Ok(None);
    }
    // origin_server_ts is a canonical-JSON integer: at most 2^53 - 1.
    match raw.parse::<u64>() {
        Ok(ts) if ts < (1 << 53) => Ok(Some(ts)),
        _ => Err(hearth_core::Error::invalid_param(format!("Invalid ts {raw}")).into()),
    }
}

fn url_params(q: &str) -> Vec<(String, String)> {
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
async fn json_object<S: Send + Sync>(req: Request, state: &S) -> Result<Value, ApiError> {
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

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
            format!("Invalid request body: {e}"),
        )
    })
}

/// The body of an endpoint behind user-interactive auth: the typed body, its
/// `auth` object, and the operation a UIA session is bound to (method, path
/// without the version prefix, the body without `auth`).
pub struct UiaJson<T> {
    pub body: T,
    pub auth: Option<Value>,
    pub request: UiaRequest,
}

impl<S, T> FromRequest<S> for UiaJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let mut request = uia_request(&parts);
        let value = json_object(Request::from_parts(parts, body), state).await?;
        let typed_body = typed(value.clone())?;
        let mut rest = value;
        let auth = rest
            .as_object_mut()
            .and_then(|o| o.remove("auth"))
            .filter(|a| !a.is_null());
        request.body = Some(rest);
        Ok(UiaJson {
            body: typed_body,
            auth,
            request,
        })
    }
}

/// The operation of a request, with its body left unbound (see
/// [`UiaRequest::body`]).
pub fn uia_request(parts: &Parts) -> UiaRequest {
    // Nested routers see the path without their prefix; the original has it.
    let path = parts
        .extensions
        .get::<OriginalUri>()
        .map_or_else(|| parts.uri.path(), |u| u.0.path());
    UiaRequest {
        method: parts.method.to_string(),
        path: unversioned_path(path).to_owned(),
        body: None,
        user: None,
    }
}

/// The peer address, when the server was started with connect info.
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}
