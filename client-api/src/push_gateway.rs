//! Posts notifications to push gateways over HTTP (push gateway API,
//! `POST /_matrix/push/v1/notify`); the scheduling, coalescing and retries
//! are core's (`hearth_core::push`).

use std::{sync::Arc, time::Duration};

use hearth_core::{
    Hearth,
    push::{GatewayError, PushGateway},
};
use serde_json::Value;

pub struct HttpPushGateway {
    http: reqwest::Client,
}

impl HttpPushGateway {
    /// A client trusting `roots` besides the built-in ones.
    pub fn new(roots: &[reqwest::Certificate]) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A gateway that hangs is a failing one: the push is retried.
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("Hearth/", env!("CARGO_PKG_VERSION")));
        let http = hearth_http_common::outgoing::trusting(builder, roots).build()?;
        Ok(Self { http })
    }
}

#[async_trait::async_trait]
impl PushGateway for HttpPushGateway {
    async fn notify(&self, url: &str, body: &Value) -> Result<Vec<String>, GatewayError> {
        let response = self
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(GatewayError::Unavailable(format!("status {status}")));
        }
        if !status.is_success() {
            return Err(GatewayError::Refused(format!("status {status}")));
        }
        // A 200 whose body is not the expected JSON still took the push.
        let reply: Value = response.json().await.unwrap_or(Value::Null);
        Ok(reply
            .get("rejected")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Lets pushes out (and resumes those pending from before a restart),
/// trusting `roots` besides the built-in CAs.
pub fn start_push(hearth: &Arc<Hearth>, roots: &[reqwest::Certificate]) {
    match HttpPushGateway::new(roots) {
        Ok(g) => hearth.push.start_push(Arc::new(g)),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the push gateway client; no pushes will be sent")
        }
    }
}
