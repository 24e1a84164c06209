//! Request extractors that turn bad input into Matrix errors: the shared
//! ones (tokens, JSON bodies) from `hearth_http_common`, and those only the
//! client API uses (user-interactive auth, `?ts=`, the peer address).

use axum::{
    extract::{FromRequest, FromRequestParts, OriginalUri, Request},
    http::request::Parts,
};
use hearth_core::{
    accounts::Session,
    uia::{UiaRequest, unversioned_path},
};
pub use hearth_http_common::extract::{Auth, JsonBody, MaybeAuth, access_token, read_body};
use hearth_http_common::extract::{json_object, typed, url_params};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

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
