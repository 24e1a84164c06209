//! Test harness: runs the real `homeserver` binary on a free loopback port with
//! its own data directory, and speaks HTTP to it like a client.
#![allow(dead_code)]

pub mod ca;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub struct TestServer {
    pub url: String,
    pub data_dir: PathBuf,
    /// Set when the suite runs in Postgres mode: this server's own database
    /// (the main one when sharded).
    pub database_url: Option<String>,
    /// This server's own event shards, when the suite runs sharded.
    pub database_shards: Vec<String>,
    addr: String,
    extra_args: Vec<String>,
    child: Option<Child>,
    owns_dir: bool,
    /// Whether the databases were made for this server (and go with it), or
    /// handed in by the test, which drops them itself.
    owns_databases: bool,
}

/// A free port on a loopback address of the test's own. Tests run in
/// parallel: a port found free on 127.0.0.1 can be taken by another test's
/// server before ours binds it, and ours would then talk to the wrong server.
/// Each server on its own 127.x.y.z makes that collision practically
/// impossible.
pub fn free_addr() -> String {
    use std::time::SystemTime;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = nanos ^ std::process::id().rotate_left(13);
    let host = format!(
        "127.{}.{}.{}",
        1 + n % 250,
        1 + (n >> 8) % 250,
        1 + (n >> 16) % 250
    );
    let port = TcpListener::bind(format!("{host}:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port");
    format!("{host}:{port}")
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hearth-test-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A fresh temporary directory (`tag` in its name) holding the file `name`
/// with `contents`; returns the directory (the test removes it) and the file.
pub fn temp_file(tag: &str, name: &str, contents: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let file = dir.join(name);
    std::fs::write(&file, contents).expect("write a temporary file");
    (dir, file)
}

fn rand_suffix() -> String {
    use std::{
        sync::atomic::{AtomicU64, Ordering},
        time::SystemTime,
    };
    // Tests run in parallel threads: two may read the same clock tick, so a
    // per-process counter keeps their directories apart.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{n:x}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The binary under test: this build's, or `HEARTH_TEST_BINARY` (a test
/// run against an older build shows the test failing before a fix).
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("HEARTH_TEST_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_homeserver").to_owned())
    })
}

impl TestServer {
    /// Starts a server with rate limits off plus any extra flags.
    pub async fn start(extra_args: &[&str]) -> Self {
        let database_url = create_test_database();
        let shards = (0..test_shards())
            .filter_map(|_| create_test_database())
            .collect();
        Self::launch(database_url, shards, extra_args, true).await
    }

    /// Starts a server on the given Postgres databases (main, and event
    /// shards when `shards` is not empty) instead of the suite's, with rate
    /// limits off plus any extra flags. The caller owns the databases and
    /// drops them.
    pub async fn start_with_databases(main: &str, shards: &[String], extra_args: &[&str]) -> Self {
        Self::launch(Some(main.to_owned()), shards.to_vec(), extra_args, false).await
    }

    /// Starts a server on a fresh data directory and these databases (none:
    /// SQLite in the data directory).
    async fn launch(
        database_url: Option<String>,
        database_shards: Vec<String>,
        extra_args: &[&str],
        owns_databases: bool,
    ) -> Self {
        let mut s = TestServer {
            url: String::new(),
            data_dir: temp_dir("hs"),
            database_url,
            database_shards,
            addr: free_addr(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            owns_dir: true,
            owns_databases,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let mut args = vec!["--listen".to_string(), self.addr.clone()];
        args.extend(self.data_args());
        if !self.extra_args.iter().any(|a| a == "--rate-limits") {
            args.extend(["--rate-limits".to_string(), "false".to_string()]);
        }
        args.extend(self.extra_args.iter().cloned());
        let child = Command::new(binary())
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("HEARTH_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The server logs to stdout: HEARTH_TEST_LOGS=1 shows it.
            .stdout(if std::env::var_os("HEARTH_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn homeserver");
        self.child = Some(child);
        self.url = format!("http://{}", self.addr);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client
                .get(format!("{}/_matrix/client/versions", self.url))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("homeserver did not start");
    }

    /// Kills the process hard (as a crash would) and starts it again on the same data.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn().await;
    }

    /// Kills the process hard (SIGKILL), as a crash would, and leaves it dead.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (graceful drain) without waiting for the exit.
    pub fn terminate(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn client(&self) -> Client {
        Client {
            base: self.url.clone(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    /// Starts the server again after `kill`/`terminate`, on the same data.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    /// The flags that point an admin command at this server's data.
    pub fn data_args(&self) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
        ];
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".to_string(), url.clone()]);
        }
        if !self.database_shards.is_empty() {
            args.extend([
                "--database-shards".to_string(),
                self.database_shards.join(","),
            ]);
        }
        args
    }

    /// Registers a user with the dummy UIA flow and returns a logged-in client.
    pub async fn register(&self, user: &str, password: &str) -> Client {
        let mut c = self.client();
        let (status, body) = c
            .post(
                "/_matrix/client/v3/register",
                json!({"username": user, "password": password, "auth": {"type": "m.login.dummy"}}),
            )
            .await;
        assert_eq!(status, 200, "register {user}: {body}");
        c.token = body["access_token"].as_str().map(str::to_owned);
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
        if self.owns_databases {
            for url in self.database_url.iter().chain(&self.database_shards) {
                drop_test_database(url);
            }
        }
    }
}

/// `HEARTH_TEST_POSTGRES` (a server url such as
/// `postgres://postgres@127.0.0.1:5432`) runs every test server on Postgres,
/// each on a database of its own that is dropped afterwards.
pub fn postgres_base() -> Option<String> {
    std::env::var("HEARTH_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('/').to_owned())
}

/// `HEARTH_TEST_SHARDS=N` (with `HEARTH_TEST_POSTGRES`) gives every test
/// server N event shards besides its main database.
fn test_shards() -> usize {
    if postgres_base().is_none() {
        return 0;
    }
    std::env::var("HEARTH_TEST_SHARDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn psql(base: &str, sql: &str) {
    let status = Command::new("psql")
        .args([
            &format!("{base}/postgres"),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .stdout(Stdio::null())
        .status()
        .expect("run psql");
    assert!(status.success(), "psql failed: {sql}");
}

fn create_test_database() -> Option<String> {
    Some(create_database_on(&postgres_base()?))
}

/// Creates an empty database with a fresh name on the Postgres server at
/// `base` (such as `postgres://postgres@127.0.0.1:5432`); returns its url.
pub fn create_database_on(base: &str) -> String {
    let name = format!("hearth_test_{}_{}", std::process::id(), rand_suffix());
    psql(base, &format!("CREATE DATABASE {name}"));
    format!("{base}/{name}")
}

fn drop_test_database(url: &str) {
    if let Some(base) = postgres_base() {
        drop_database_on(&base, url);
    }
}

/// Drops the database `url` names on the server at `base`, connections and
/// all; failures are ignored (this runs during cleanup).
pub fn drop_database_on(base: &str, url: &str) {
    if let Some((_, name)) = url.rsplit_once('/') {
        let _ = Command::new("psql")
            .args([
                &format!("{base}/postgres"),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The event's `prev_events`, after checking each of them is stored: nothing
/// in the room was built on an event the server refused.
pub async fn stored_parents(store: &dyn hearth_core::store::RoomStore, id: &str) -> Vec<String> {
    let ev = store.get_event(id).await.expect("read").expect("stored");
    let prevs: Vec<String> = ev.pdu.json["prev_events"]
        .as_array()
        .expect("prev_events")
        .iter()
        .map(|p| p.as_str().expect("event id").to_owned())
        .collect();
    for prev in &prevs {
        assert!(
            store.get_event(prev).await.expect("read").is_some(),
            "{id} was built on {prev}, which was never stored"
        );
    }
    prevs
}

/// A minimal Matrix client: JSON in, (status, JSON) out.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Client {
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request failed");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::DELETE, path, None).await
    }

    pub async fn create_room(&self, body: Value) -> String {
        let (s, b) = self.post("/_matrix/client/v3/createRoom", body).await;
        assert_eq!(s, 200, "createRoom: {b}");
        b["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Sends an `m.text` message with transaction id `txn` (which may carry
    /// a query, such as `?user_id=…`); the answer as it came.
    pub async fn send_message(&self, room: &str, txn: &str, body: &str) -> (u16, Value) {
        self.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await
    }

    /// Sends an `m.text` message, which must succeed; returns its event id.
    pub async fn send_text(&self, room: &str, txn: &str, body: &str) -> String {
        let (s, b) = self.send_message(room, txn, body).await;
        assert_eq!(s, 200, "send: {b}");
        b["event_id"].as_str().expect("event_id").to_owned()
    }

    /// Joins a room (by id or alias) with `query` appended to the path
    /// (`?via=…`, `?user_id=…` or nothing); the answer as it came.
    pub async fn join_with(&self, room: &str, query: &str) -> (u16, Value) {
        self.post(
            &format!("/_matrix/client/v3/join/{}{query}", enc(room)),
            json!({}),
        )
        .await
    }

    /// Joins a room (by id or alias), which must succeed.
    pub async fn join(&self, room: &str) {
        let (s, b) = self.join_with(room, "").await;
        assert_eq!(s, 200, "join {room}: {b}");
    }

    /// One `/sync` with `query` (such as `timeout=0&since=…`), which must
    /// succeed.
    pub async fn sync(&self, query: &str) -> Value {
        let (s, b) = self.get(&format!("/_matrix/client/v3/sync?{query}")).await;
        assert_eq!(s, 200, "sync: {b}");
        b
    }

    /// `/keys/query` for all of `user`'s devices, which must succeed.
    pub async fn query_keys(&self, user: &str) -> Value {
        let body = json!({"device_keys": {user: []}});
        let (s, keys) = self.post("/_matrix/client/v3/keys/query", body).await;
        assert_eq!(s, 200, "{keys}");
        keys
    }

    /// The token's (user id, device id).
    pub async fn whoami(&self) -> (String, String) {
        let (s, b) = self.get("/_matrix/client/v3/account/whoami").await;
        assert_eq!(s, 200, "whoami: {b}");
        (
            b["user_id"].as_str().unwrap_or_default().to_owned(),
            b["device_id"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// One event of a room as this client may read it; the answer as it came.
    pub async fn event(&self, room: &str, id: &str) -> (u16, Value) {
        let (room, id) = (enc(room), enc(id));
        self.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"))
            .await
    }

    /// The content of an event this client may read.
    pub async fn content_of(&self, room: &str, id: &str) -> Value {
        let (s, ev) = self.event(room, id).await;
        assert_eq!(s, 200, "{ev}");
        ev["content"].clone()
    }

    /// The room's `/joined_members` answer.
    pub async fn joined_members(&self, room: &str) -> Value {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room));
        let (s, members) = self.get(&path).await;
        assert_eq!(s, 200, "{members}");
        members
    }

    /// Invites `user` to the room, which must succeed.
    pub async fn invite(&self, room: &str, user: &str) {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(room));
        let (s, b) = self.post(&path, json!({"user_id": user})).await;
        assert_eq!(s, 200, "invite {user}: {b}");
    }

    /// Sets `user` (this client's user) typing or not in the room for
    /// `timeout_ms`, which must succeed.
    pub async fn set_typing(&self, room: &str, user: &str, typing: bool, timeout_ms: u64) {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            enc(room),
            enc(user)
        );
        let (s, b) = self
            .put(&path, json!({"typing": typing, "timeout": timeout_ms}))
            .await;
        assert_eq!(s, 200, "typing: {b}");
    }

    /// Posts an `m.read` receipt (with `body`, such as a `thread_id`) for
    /// `event`, which must succeed.
    pub async fn read_receipt(&self, room: &str, event: &str, body: Value) {
        let (room, event) = (enc(room), enc(event));
        let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}");
        let (s, b) = self.post(&path, body).await;
        assert_eq!(s, 200, "receipt: {b}");
    }

    /// A page of the room's `/messages`; `query` such as `dir=b&limit=50`.
    pub async fn messages(&self, room: &str, query: &str) -> Value {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?{query}", enc(room));
        let (s, page) = self.get(&path).await;
        assert_eq!(s, 200, "{page}");
        page
    }
}

/// Runs an admin command of the binary under test (`args`: where its data
/// is, then the command), which must succeed; returns its output.
pub fn run_admin<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run an admin command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A sync response's `next_batch`.
pub fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

/// The `m.room.message` events of a `/messages` page, in its order.
pub fn message_events(page: &Value) -> Vec<&Value> {
    page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .collect()
}

/// The bodies of the messages of a `/messages` page, in its order.
pub fn message_bodies(page: &Value) -> Vec<String> {
    message_events(page)
        .into_iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The event ids of the messages of a `/messages` page, in its order.
pub fn message_ids(page: &Value) -> Vec<String> {
    message_events(page)
        .into_iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Who a sync response shows typing in `room` (None: it has no `m.typing`
/// event for the room).
pub fn typing_in(sync: &Value, room: &str) -> Option<Vec<String>> {
    let typing: Vec<&Value> = sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .filter(|e| e["type"] == "m.typing")
        .collect();
    if typing.is_empty() {
        return None;
    }
    let users = typing
        .iter()
        .filter_map(|e| e["content"]["user_ids"].as_array())
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned));
    Some(users.collect())
}

/// Asserts an answer (`s`, `body`) is the Matrix error `errcode` with HTTP
/// `status`.
#[track_caller]
pub fn assert_error(s: u16, body: &Value, status: u16, errcode: &str) {
    assert_eq!(
        (s, body["errcode"].as_str()),
        (status, Some(errcode)),
        "{body}"
    );
}

/// Percent-encodes one path segment (room ids carry '!' and ':').
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
