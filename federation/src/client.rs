//! Requests to other servers: discovered, pinned to the addresses discovery
//! found, X-Matrix signed.

use bytes::Bytes;
use http::Method;
use ruma::{
    OwnedServerName, ServerName,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
};
use serde_json::Value;

use crate::{FedError, Federation};

/// Largest response body taken from another server.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl Federation {
    /// A request signed as this server (X-Matrix).
    pub async fn request(
        &self,
        destination: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, FedError> {
        self.send(destination, method, path, body, true).await
    }

    /// A request without a signature (key fetches).
    pub(crate) async fn request_unsigned(
        &self,
        destination: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, FedError> {
        self.send(destination, method, path, body, false).await
    }

    async fn send(
        &self,
        destination: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        signed: bool,
    ) -> Result<Value, FedError> {
        let dest: OwnedServerName = ServerName::parse(destination)
            .map_err(|_| FedError::BadServerName(destination.to_owned()))?;
        let resolved = self.discovery.resolve(destination).await?;
        self.resolver.pin(&resolved.host, resolved.addrs.clone());
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| FedError::Remote(e.to_string()))?,
            None => vec![],
        };
        let url = format!("{}{path}", resolved.base_url());
        let mut req = self.http.request(method.clone(), &url);
        if signed {
            let to_sign = http::Request::builder()
                .method(method)
                .uri(path)
                .body(bytes.as_slice())
                .map_err(|e| FedError::Remote(e.to_string()))?;
            let auth = XMatrix::sign_http_request(
                &to_sign,
                XMatrixSigningInput::new(
                    self.server_name().to_owned(),
                    dest,
                    &self.hearth.keys.key_pair,
                ),
            )
            .map_err(|e| FedError::Remote(format!("signing the request: {e}")))?;
            req = req.header(http::header::AUTHORIZATION, auth.to_string());
        }
        if body.is_some() {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| FedError::Unreachable(format!("{destination} ({url}): {e}")))?;
        let status = resp.status();
        let body = read_limited(resp)
            .await
            .map_err(|e| FedError::Unreachable(format!("{destination}: {e}")))?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return json.ok_or_else(|| FedError::Remote(format!("{destination}: not JSON")));
        }
        match json {
            Some(v) if v["errcode"].is_string() => Err(FedError::Matrix {
                server: destination.to_owned(),
                status: status.as_u16(),
                errcode: v["errcode"].as_str().unwrap_or_default().to_owned(),
                message: v["error"].as_str().unwrap_or_default().to_owned(),
            }),
            _ => Err(FedError::Remote(format!("{destination}: {status}"))),
        }
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Bytes, String> {
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err("response too large".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
