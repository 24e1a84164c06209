//! A small Matrix client for the cases: JSON over HTTP, fresh users per case.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rand::{Rng, distributions::Alphanumeric};
use serde_json::{Value, json};

/// What every case gets: the server's base URL and an HTTP client.
#[derive(Clone)]
pub struct Ctx {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub bytes: Vec<u8>,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// Asserts status and (when given) errcode.
    pub fn expect(&self, status: u16, errcode: Option<&str>) -> Result<&Self> {
        ensure!(
            self.status == status,
            "expected {status}, got {}: {}",
            self.status,
            self.body
        );
        if let Some(code) = errcode {
            ensure!(
                self.body["errcode"] == code,
                "expected errcode {code}, got {}",
                self.body
            );
        }
        Ok(self)
    }

    pub fn ok(&self) -> Result<&Value> {
        ensure!(
            self.status == 200,
            "expected 200, got {}: {}",
            self.status,
            self.body
        );
        Ok(&self.body)
    }

    pub fn str(&self, key: &str) -> Result<String> {
        self.body[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no {key} in {}", self.body))
    }
}

pub fn random_name(prefix: &str) -> String {
    let s: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(10)
        .map(char::from)
        .collect();
    format!("{prefix}{}", s.to_lowercase())
}

/// Percent-encodes one path segment (room ids carry '!' and ':').
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The client API path of one of a room's endpoints: `rest` (already
/// percent-encoded where it needs to be) under `/rooms/{room}/`.
pub fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

#[derive(Clone)]
pub struct User {
    pub ctx: Ctx,
    pub user_id: String,
    pub localpart: String,
    pub password: String,
    pub token: String,
    pub device_id: String,
    pub since: Option<String>,
}

impl Ctx {
    pub fn new(base: &str) -> Self {
        Ctx {
            base: base.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Result<Resp> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("request to {path}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?.to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Resp {
            status,
            body,
            bytes,
            headers,
        })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Resp> {
        let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?;
        let ct = bytes.as_ref().map(|_| "application/json");
        self.raw(method, path, token, bytes, ct).await
    }

    pub async fn get(&self, path: &str) -> Result<Resp> {
        self.call(reqwest::Method::GET, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Resp> {
        self.call(reqwest::Method::POST, path, None, Some(body))
            .await
    }

    /// Registers a fresh user through the dummy UIA flow.
    /// Two new users (`prefix`, `{prefix}b`): the first creates a public
    /// room, the second joins it.
    pub async fn public_room_pair(&self, prefix: &str) -> Result<(User, User, String)> {
        let a = self.register(prefix).await?;
        let b = self.register(&format!("{prefix}b")).await?;
        let room = a.create_room(json!({"preset": "public_chat"})).await?;
        b.join(&room).await?;
        Ok((a, b, room))
    }

    pub async fn register(&self, prefix: &str) -> Result<User> {
        let localpart = random_name(prefix);
        let password = format!("pw-{localpart}");
        let first = self
            .post(
                "/_matrix/client/v3/register",
                json!({"username": localpart, "password": password}),
            )
            .await?;
        first.expect(401, None)?;
        let session = first.str("session")?;
        let r = self
            .post(
                "/_matrix/client/v3/register",
                json!({"username": localpart, "password": password,
                       "auth": {"type": "m.login.dummy", "session": session}}),
            )
            .await?;
        r.ok()?;
        Ok(User {
            ctx: self.clone(),
            user_id: r.str("user_id")?,
            localpart,
            password,
            token: r.str("access_token")?,
            device_id: r.str("device_id")?,
            since: None,
        })
    }
}

impl User {
    pub fn server_name(&self) -> &str {
        self.user_id
            .split_once(':')
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Resp> {
        self.ctx.call(method, path, Some(&self.token), body).await
    }

    pub async fn get(&self, path: &str) -> Result<Resp> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Resp> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Resp> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Resp> {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    pub async fn create_room(&self, body: Value) -> Result<String> {
        let r = self.post("/_matrix/client/v3/createRoom", body).await?;
        r.ok()?;
        r.str("room_id")
    }

    pub async fn join(&self, room: &str) -> Result<()> {
        self.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
            .await?
            .ok()?;
        Ok(())
    }

    pub async fn invite(&self, room: &str, user: &str) -> Result<()> {
        self.post(&room_path(room, "invite"), json!({"user_id": user}))
            .await?
            .ok()?;
        Ok(())
    }

    pub async fn send(&self, room: &str, kind: &str, content: Value) -> Result<String> {
        let txn = random_name("t");
        let r = self
            .put(&room_path(room, &format!("send/{kind}/{txn}")), content)
            .await?;
        r.ok()?;
        r.str("event_id")
    }

    pub async fn send_text(&self, room: &str, body: &str) -> Result<String> {
        self.send(
            room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": body}),
        )
        .await
    }

    pub async fn put_state(
        &self,
        room: &str,
        kind: &str,
        key: &str,
        content: Value,
    ) -> Result<String> {
        let r = self
            .put(
                &room_path(room, &format!("state/{kind}/{}", enc(key))),
                content,
            )
            .await?;
        r.ok()?;
        r.str("event_id")
    }

    /// One sync from the user's last position (initial when none).
    pub async fn sync(&mut self, query: &str) -> Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?{query}");
        if let Some(s) = &self.since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        let r = self.get(&path).await?;
        let body = r.ok()?.clone();
        self.since = body["next_batch"].as_str().map(str::to_owned);
        Ok(body)
    }

    /// Syncs (long-polling) until `pred` holds on a response, within `secs`.
    pub async fn sync_until(
        &mut self,
        secs: u64,
        query: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            let q = if self.since.is_some() {
                format!("timeout=1000&{query}")
            } else {
                query.to_owned()
            };
            let body = self.sync(&q).await?;
            if pred(&body) {
                return Ok(body);
            }
        }
        bail!("sync condition not met within {secs}s")
    }

    pub async fn state_content(&self, room: &str, kind: &str, key: &str) -> Result<Value> {
        let r = self
            .get(&room_path(room, &format!("state/{kind}/{}", enc(key))))
            .await?;
        Ok(r.ok()?.clone())
    }

    /// Events of the room's timeline in a sync body.
    pub fn timeline(body: &Value, room: &str) -> Vec<Value> {
        body["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}
