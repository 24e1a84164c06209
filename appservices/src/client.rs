//! Calls Hearth makes to application services, authenticated with their
//! `hs_token` (`Authorization: Bearer`, as spec v1.4 asks).

use std::time::{Duration, Instant};

use hearth_core::appservice::AppService;
use serde_json::{Value, json};

/// How long a service may take to answer before it counts as down.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How long a service's protocol metadata is reused (as Synapse does):
/// it describes the bridge, which changes with its configuration.
const PROTOCOL_TTL: Duration = Duration::from_secs(60 * 60);

/// Protocol metadata by (service id, protocol), with when it was fetched.
type ProtocolCache =
    std::collections::HashMap<(String, String), (Instant, serde_json::Map<String, Value>)>;

#[derive(Clone)]
pub struct AsClient {
    http: reqwest::Client,
    protocols: std::sync::Arc<parking_lot::Mutex<ProtocolCache>>,
}

/// The process's one client (one connection pool), set by [`AsClient::init`].
static CLIENT: std::sync::OnceLock<AsClient> = std::sync::OnceLock::new();

impl AsClient {
    /// Builds the process's client, trusting `roots` besides the built-in
    /// CAs; the first call wins (start-up makes it before any service call).
    pub fn init(roots: &[reqwest::Certificate]) -> Result<&'static AsClient, reqwest::Error> {
        let client = Self::new(roots)?;
        Ok(CLIENT.get_or_init(|| client))
    }

    /// The process's client: the one `init` built, or one trusting only
    /// the built-in CAs when nothing called it (tests of single routes).
    pub fn shared() -> &'static AsClient {
        CLIENT.get_or_init(|| {
            Self::new(&[]).unwrap_or_else(|_| Self {
                http: reqwest::Client::new(),
                protocols: Default::default(),
            })
        })
    }

    fn new(roots: &[reqwest::Certificate]) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("Hearth/", env!("CARGO_PKG_VERSION")));
        let http = hearth_http_common::outgoing::trusting(builder, roots).build()?;
        Ok(Self {
            http,
            protocols: Default::default(),
        })
    }

    /// `POST /_matrix/app/v1/ping`; returns how long the round trip took.
    pub async fn ping(
        &self,
        service: &AppService,
        transaction_id: Option<&str>,
    ) -> Result<Duration, PingError> {
        let url = service.url.as_deref().ok_or(PingError::UrlNotSet)?;
        let mut body = json!({});
        if let Some(t) = transaction_id {
            body["transaction_id"] = json!(t);
        }
        let started = Instant::now();
        let answer = self
            .http
            .post(format!("{url}/_matrix/app/v1/ping"))
            .bearer_auth(&service.hs_token)
            .json(&body)
            .send()
            .await;
        let elapsed = started.elapsed();
        let resp = answer.map_err(|e| {
            tracing::info!(appservice = %service.id, error = %e, "ping: no answer");
            if e.is_timeout() {
                PingError::Timeout
            } else {
                PingError::Connection(e.to_string())
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            tracing::info!(appservice = %service.id, %status, "ping: refused");
            return Err(PingError::BadStatus {
                status: status.as_u16(),
                body,
            });
        }
        Ok(elapsed)
    }
}

/// Why a ping failed, as the spec's errcodes tell it.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("the application service has no url configured")]
    UrlNotSet,
    #[error("the application service did not answer in time")]
    Timeout,
    #[error("cannot reach the application service: {0}")]
    Connection(String),
    #[error("the application service answered {status}")]
    BadStatus { status: u16, body: String },
}

impl PingError {
    /// (HTTP status, errcode, extra fields of the error body).
    pub fn parts(&self) -> (u16, &'static str, Option<Value>) {
        match self {
            PingError::UrlNotSet => (400, "M_URL_NOT_SET", None),
            PingError::Timeout => (504, "M_CONNECTION_TIMEOUT", None),
            PingError::Connection(_) => (502, "M_CONNECTION_FAILED", None),
            PingError::BadStatus { status, body } => (
                502,
                "M_BAD_STATUS",
                Some(json!({"status": status, "body": body})),
            ),
        }
    }
}

impl AsClient {
    /// `PUT /_matrix/app/v1/transactions/{txnId}`: Ok once the service
    /// answered 2xx.
    pub async fn put_transaction(
        &self,
        service: &AppService,
        txn_id: &str,
        body: &Value,
    ) -> Result<(), String> {
        let url = service
            .url
            .as_deref()
            .ok_or_else(|| "no url configured".to_owned())?;
        let resp = self
            .http
            .put(format!(
                "{url}/_matrix/app/v1/transactions/{}",
                encode(txn_id)
            ))
            .bearer_auth(&service.hs_token)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", resp.status()))
        }
    }
}

fn encode(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                c.to_string()
            } else {
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect()
            }
        })
        .collect()
}

impl AsClient {
    /// A query (`GET /_matrix/app/v1/users/…`, `/rooms/…`): true when the
    /// service answered 2xx (it created the user or alias).
    async fn query(&self, service: &AppService, path: &str) -> bool {
        let Some(url) = service.url.as_deref() else {
            return false;
        };
        match self
            .http
            .get(format!("{url}{path}"))
            .bearer_auth(&service.hs_token)
            .send()
            .await
        {
            Ok(r) => r.status().is_success(),
            Err(e) => {
                tracing::info!(appservice = %service.id, error = %e, "query: no answer");
                false
            }
        }
    }
}

#[async_trait::async_trait]
impl hearth_core::appservice::AppServiceQueries for AsClient {
    async fn query_alias(&self, service: &AppService, alias: &str) -> bool {
        self.query(service, &format!("/_matrix/app/v1/rooms/{}", encode(alias)))
            .await
    }

    async fn query_user(&self, service: &AppService, user: &hearth_core::ruma::UserId) -> bool {
        self.query(
            service,
            &format!("/_matrix/app/v1/users/{}", encode(user.as_str())),
        )
        .await
    }
}

impl AsClient {
    /// A GET whose JSON answer is passed on (third-party lookups); `None`
    /// when the service fails or answers otherwise than 2xx with JSON.
    pub async fn get_json(&self, service: &AppService, path_and_query: &str) -> Option<Value> {
        let url = service.url.as_deref()?;
        let resp = self
            .http
            .get(format!("{url}{path_and_query}"))
            .bearer_auth(&service.hs_token)
            .send()
            .await
            .map_err(|e| {
                tracing::info!(appservice = %service.id, error = %e, "third-party lookup: no answer");
            })
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }
}

/// Percent-encodes a path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    encode(s)
}

impl AsClient {
    /// `GET /_matrix/app/v1/thirdparty/protocol/{protocol}` of `service`:
    /// its metadata, reused for an hour once it answered with an object.
    pub async fn protocol_info(
        &self,
        service: &AppService,
        protocol: &str,
    ) -> Option<serde_json::Map<String, Value>> {
        let key = (service.id.clone(), protocol.to_owned());
        if let Some((at, info)) = self.protocols.lock().get(&key)
            && at.elapsed() < PROTOCOL_TTL
        {
            return Some(info.clone());
        }
        let path = format!("/_matrix/app/v1/thirdparty/protocol/{}", encode(protocol));
        let Some(Value::Object(info)) = self.get_json(service, &path).await else {
            return None;
        };
        self.protocols
            .lock()
            .insert(key, (Instant::now(), info.clone()));
        Some(info)
    }
}
