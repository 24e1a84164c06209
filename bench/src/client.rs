//! Just enough of the client API to drive load: register, rooms, send, sync.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, ensure};
use rand::{Rng, distributions::Alphanumeric};
use serde_json::{Value, json};

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
    /// The server part of the user's id: where rooms it creates live.
    pub server_name: String,
    pub user_id: String,
    pub device_id: String,
}

/// Percent-encodes one path segment (room ids carry '!' and ':').
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub fn random_suffix() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(8)
        .map(char::from)
        .collect::<String>()
        .to_lowercase()
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap_or_default()
}

impl Client {
    pub async fn register(base: &str, http: &reqwest::Client, localpart: &str) -> Result<Client> {
        let body = json!({"username": localpart, "password": format!("pw-{localpart}"),
                          "auth": {"type": "m.login.dummy"}, "inhibit_login": false});
        let r = http
            .post(format!("{base}/_matrix/client/v3/register"))
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "register {localpart}: {status} {v}");
        let user_id = v["user_id"].as_str().context("no user_id")?;
        let server_name = user_id
            .split_once(':')
            .map(|(_, s)| s.to_owned())
            .context("user_id without a server name")?;
        Ok(Client {
            base: base.to_owned(),
            http: http.clone(),
            token: v["access_token"].as_str().context("no token")?.to_owned(),
            server_name,
            user_id: user_id.to_owned(),
            device_id: v["device_id"].as_str().unwrap_or_default().to_owned(),
        })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(anyhow!("{path}: {status} {v}"));
        }
        Ok(v)
    }

    pub async fn create_room(&self) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&json!({"preset": "public_chat"})),
            )
            .await?;
        Ok(v["room_id"].as_str().context("no room_id")?.to_owned())
    }

    /// Joins through `via` (the room creator's server), which matters when
    /// that is another server than this user's.
    pub async fn join(&self, room: &str, via: &str) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(via)),
            Some(&json!({})),
        )
        .await?;
        Ok(())
    }

    pub async fn send(&self, room: &str, txn: &str, content: &Value) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    enc(room)
                ),
                Some(content),
            )
            .await?;
        Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Sends one to-device message of type `m.bench` to a user's device.
    pub async fn send_to_device(
        &self,
        user: &str,
        device: &str,
        txn: &str,
        content: &Value,
    ) -> Result<()> {
        let body = json!({"messages": {user: {device: content}}});
        self.call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/sendToDevice/m.bench/{}", enc(txn)),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Result<Value> {
        let filter = enc(SYNC_FILTER);
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}&filter={filter}");
        if let Some(s) = since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        self.call(reqwest::Method::GET, &path, None).await
    }
}

/// What every benchmark sync asks for: a timeline long enough that a burst
/// between two syncs arrives whole (a shorter one would leave a gap the
/// correctness check counts as lost), lazy-loaded members, no presence.
const SYNC_FILTER: &str = r#"{"room":{"timeline":{"limit":1000},"state":{"lazy_load_members":true}},"presence":{"not_types":["*"]}}"#;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Hearth's WebSocket sync (spec/websocket-sync.md), as the `ws_sends`
/// scenario drives it: `send` frames out, `ack`/`error`/`sync` frames in.
pub struct WsSync {
    socket: Socket,
}

impl WsSync {
    /// Opens the socket from `since`; `None` when the server has none.
    pub async fn connect(user: &Client, since: &str) -> Option<WsSync> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!(
            "{}/_matrix/client/unstable/org.hearth.ws/sync?since={}&filter={}",
            user.base.replacen("http", "ws", 1),
            enc(since),
            enc(SYNC_FILTER)
        );
        let mut req = url.into_client_request().ok()?;
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", user.token).parse().ok()?,
        );
        let (socket, _) = tokio_tungstenite::connect_async(req).await.ok()?;
        Some(WsSync { socket })
    }

    pub async fn send_event(
        &mut self,
        id: u64,
        room: &str,
        txn: &str,
        content: &Value,
    ) -> Result<()> {
        use futures::SinkExt;
        let frame = json!({"type": "send", "id": id, "room_id": room,
                           "event_type": "m.room.message", "txn_id": txn, "content": content});
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await?;
        Ok(())
    }

    /// Reads frames until the answer to frame `id`: true for its `ack`, false
    /// for an `error`. Events of run `run` in `sync` frames on the way are
    /// recorded in `seen` with their latency since `sent_at`.
    pub async fn await_answer(
        &mut self,
        id: u64,
        run: &str,
        sent_at: &HashMap<u64, Instant>,
        seen: &mut Vec<(u64, Duration)>,
    ) -> Result<bool> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.frame())
                .await
                .context("no answer to a send within 30 s")??;
            match frame["type"].as_str() {
                Some("ack") if frame["id"] == id => return Ok(true),
                Some("error") if frame["id"] == id => return Ok(false),
                Some("sync") => record(&frame["body"], run, sent_at, seen),
                _ => {}
            }
        }
    }

    /// Reads frames for up to a second, recording events as `await_answer`.
    pub async fn next_sync(
        &mut self,
        run: &str,
        sent_at: &HashMap<u64, Instant>,
        seen: &mut Vec<(u64, Duration)>,
    ) -> Result<()> {
        if let Ok(frame) = tokio::time::timeout(Duration::from_secs(1), self.frame()).await {
            let frame = frame?;
            if frame["type"] == "sync" {
                record(&frame["body"], run, sent_at, seen);
            }
        }
        Ok(())
    }

    /// The next text frame as JSON (pings are answered by tungstenite).
    async fn frame(&mut self) -> Result<Value> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match self.socket.next().await.context("socket closed")?? {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                Message::Close(c) => return Err(anyhow!("socket closed: {c:?}")),
                _ => {}
            }
        }
    }
}

/// Records the bench events of `run` in a sync body.
fn record(
    body: &Value,
    run: &str,
    sent_at: &HashMap<u64, Instant>,
    seen: &mut Vec<(u64, Duration)>,
) {
    let now = Instant::now();
    let Some(joined) = body["rooms"]["join"].as_object() else {
        return;
    };
    for room in joined.values() {
        for ev in room["timeline"]["events"].as_array().into_iter().flatten() {
            let b = &ev["content"]["bench"];
            if b["run"] != run {
                continue;
            }
            if let Some(n) = b["n"].as_u64()
                && let Some(t0) = sent_at.get(&n)
            {
                seen.push((n, now - *t0));
            }
        }
    }
}
