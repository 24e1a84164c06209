//! Push against a real Hearth process: push rules and the counts they drive
//! in sync, pushers, `/notifications`, and pushes to a push gateway played
//! by the test (a receiver written to the push gateway API that records each
//! request and can fail or reject pushkeys on demand).
// The lock policy (parking_lot) is for the server; a test's own
// bookkeeping may use std's locks.
#![allow(clippy::disallowed_types)]

mod common;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use common::{Client, TestServer, ca::TestCa, enc};
use reqwest::Method;
use serde_json::{Value, json};

const COALESCE_MS: &str = "1000";

/// The push gateway's side: every request body it took, how many more
/// requests it should fail with 500, and the pushkeys it rejects.
#[derive(Clone, Default)]
struct Gateway {
    taken: Arc<Mutex<Vec<Value>>>,
    failed: Arc<AtomicUsize>,
    fail_next: Arc<AtomicUsize>,
    reject: Arc<Mutex<HashSet<String>>>,
}

impl Gateway {
    /// The gateway's routes over `gw`'s records.
    fn app(gw: &Gateway) -> Router {
        Router::new()
            .route(
                "/_matrix/push/v1/notify",
                post(
                    |State(g): State<Gateway>, Json(body): Json<Value>| async move {
                        if g.fail_next
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            g.failed.fetch_add(1, Ordering::SeqCst);
                            return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
                        }
                        let keys: Vec<String> = body["notification"]["devices"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|d| d["pushkey"].as_str().map(str::to_owned))
                            .collect();
                        let rejected: Vec<String> = {
                            let reject = g.reject.lock().expect("lock");
                            keys.into_iter().filter(|k| reject.contains(k)).collect()
                        };
                        g.taken.lock().expect("lock").push(body);
                        (StatusCode::OK, Json(json!({ "rejected": rejected })))
                    },
                ),
            )
            .with_state(gw.clone())
    }

    async fn start() -> (String, Gateway) {
        let gw = Gateway::default();
        let app = Self::app(&gw);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}/_matrix/push/v1/notify"), gw)
    }

    /// The gateway over HTTPS, with a certificate `ca` issued for 127.0.0.1.
    async fn start_tls(ca: &TestCa) -> (String, Gateway) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let gw = Gateway::default();
        let (cert, key) = ca.issue("gateway", &["127.0.0.1"]);
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
            .await
            .expect("gateway tls");
        let handle = axum_server::Handle::new();
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = axum_server::bind_rustls(any_port, tls).handle(handle.clone());
        tokio::spawn(server.serve(Self::app(&gw).into_make_service()));
        let addr = handle.listening().await.expect("gateway listening");
        (format!("https://{addr}/_matrix/push/v1/notify"), gw)
    }

    /// Notifications taken for a pushkey, in order.
    fn for_key(&self, pushkey: &str) -> Vec<Value> {
        self.taken
            .lock()
            .expect("lock")
            .iter()
            .filter(|b| b["notification"]["devices"][0]["pushkey"] == pushkey)
            .map(|b| b["notification"].clone())
            .collect()
    }

    /// Waits (up to 30 s) until a notification for `pushkey` satisfies `ok`.
    async fn wait_for(&self, pushkey: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(n) = self.for_key(pushkey).into_iter().find(|n| ok(n)) {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no matching push for {pushkey}; got {:?}",
                self.for_key(pushkey)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn start_server() -> TestServer {
    TestServer::start(&[
        "--push-coalesce-ms",
        COALESCE_MS,
        "--push-backoff-start-ms",
        "200",
        "--push-backoff-max-ms",
        "2000",
    ])
    .await
}

fn pusher_body(url: &str, pushkey: &str, format: Option<&str>) -> Value {
    let mut data = json!({"url": url, "custom": "kept"});
    if let Some(f) = format {
        data["format"] = json!(f);
    }
    json!({
        "kind": "http", "app_id": "org.hearth.test", "pushkey": pushkey,
        "app_display_name": "Test", "device_display_name": "Phone", "lang": "en",
        "data": data
    })
}

async fn set_pusher(c: &Client, url: &str, pushkey: &str, format: Option<&str>) {
    let (s, b) = c
        .post(
            "/_matrix/client/v3/pushers/set",
            pusher_body(url, pushkey, format),
        )
        .await;
    assert_eq!(s, 200, "pushers/set: {b}");
}

/// The pushkeys of the user's pushers, as `GET /pushers` lists them.
async fn pushkeys(c: &Client) -> Vec<String> {
    let (s, b) = c.get("/_matrix/client/v3/pushers").await;
    assert_eq!(s, 200, "{b}");
    b["pushers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["pushkey"].as_str().map(str::to_owned))
        .collect()
}

async fn user_id(c: &Client) -> String {
    let (s, b) = c.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(s, 200, "whoami: {b}");
    b["user_id"].as_str().expect("user_id").to_owned()
}

async fn set_name(c: &Client, name: &str) {
    let me = user_id(c).await;
    let (s, b) = c
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&me)),
            json!({ "displayname": name }),
        )
        .await;
    assert_eq!(s, 200, "displayname: {b}");
}

/// A gateway (its url), a server, and alice's room "Chat" with bob in it.
async fn chat() -> (String, Gateway, TestServer, Client, Client, String) {
    let (url, gw) = Gateway::start().await;
    let server = start_server().await;
    let alice = server.register("alice", "password-a").await;
    let bob = server.register("bob", "password-b").await;
    let room = room_with(&alice, "Chat", &[&bob]).await;
    (url, gw, server, alice, bob, room)
}

/// A room `owner` creates with `name`, every other client invited and joined.
async fn room_with(owner: &Client, name: &str, others: &[&Client]) -> String {
    let mut invite = vec![];
    for c in others {
        invite.push(user_id(c).await);
    }
    let room = owner
        .create_room(json!({"name": name, "invite": invite, "preset": "private_chat"}))
        .await;
    for c in others {
        c.join(&room).await;
    }
    room
}

async fn sync(c: &Client, since: Option<&str>, timeout_ms: u64) -> Value {
    let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
    if let Some(s) = since {
        path.push_str(&format!("&since={s}"));
    }
    let (s, b) = c.get(&path).await;
    assert_eq!(s, 200, "sync: {b}");
    b
}

async fn counts(c: &Client, room: &str) -> (u64, u64) {
    let b = sync(c, None, 0).await;
    let u = &b["rooms"]["join"][room]["unread_notifications"];
    (
        u["notification_count"].as_u64().unwrap_or(0),
        u["highlight_count"].as_u64().unwrap_or(0),
    )
}

async fn read_up_to(c: &Client, room: &str, event: &str) {
    c.read_receipt(room, event, json!({})).await;
}

#[tokio::test]
async fn offline_users_get_pushes_with_counts_and_fields() {
    let (url, gw) = Gateway::start().await;
    let server = start_server().await;
    let alice = server.register("alice", "password-a").await;
    let bob = server.register("bob", "password-b").await;
    let carol = server.register("carol", "password-c").await;
    set_name(&alice, "Alice A").await;
    let room = room_with(&alice, "Chat", &[&bob, &carol]).await;
    set_pusher(&bob, &url, "bob-key", None).await;
    set_pusher(&carol, &url, "carol-key", Some("event_id_only")).await;

    let first = alice.send_text(&room, "t1", "hello").await;
    let n = gw.wait_for("bob-key", |n| n["event_id"] == first).await;
    assert_eq!(n["room_id"], room);
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], user_id(&alice).await);
    assert_eq!(n["sender_display_name"], "Alice A");
    assert_eq!(n["room_name"], "Chat");
    assert_eq!(n["content"]["body"], "hello");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"]["unread"], 1);
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.hearth.test");
    assert!(device["pushkey_ts"].is_u64(), "{device}");
    assert_eq!(device["data"], json!({"custom": "kept"}));
    assert!(device["tweaks"].is_object(), "{device}");
    assert!(n.get("user_is_target").is_none(), "{n}");

    // event_id_only: ids and counts, no event content.
    let c = gw.wait_for("carol-key", |n| n["event_id"] == first).await;
    assert_eq!(c["room_id"], room);
    assert_eq!(c["counts"]["unread"], 1);
    for absent in [
        "content",
        "type",
        "sender",
        "sender_display_name",
        "room_name",
    ] {
        assert!(c.get(absent).is_none(), "{absent} in {c}");
    }
    assert_eq!(
        c["devices"][0]["data"],
        json!({"custom": "kept", "format": "event_id_only"})
    );

    // The badge counts every unread notification.
    let second = alice.send_text(&room, "t2", "again").await;
    let n = gw.wait_for("bob-key", |n| n["event_id"] == second).await;
    assert_eq!(n["counts"]["unread"], 2);

    // /notifications, newest first, with read flags from the receipt.
    let (s, b) = bob.get("/_matrix/client/v3/notifications").await;
    assert_eq!(s, 200, "{b}");
    let list = b["notifications"]
        .as_array()
        .expect("notifications")
        .clone();
    // Bob's invite to the room notified him too.
    assert_eq!(list.len(), 3, "{b}");
    assert_eq!(list[0]["event"]["event_id"], second);
    assert_eq!(list[1]["event"]["event_id"], first);
    assert_eq!(list[2]["event"]["content"]["membership"], "invite");
    assert!(
        list.iter()
            .all(|n| n["read"] == false && n["room_id"] == room)
    );
    assert!(
        list[0]["actions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("notify")))
    );
    assert!(list[0]["ts"].is_u64());
    read_up_to(&bob, &room, &first).await;
    let (_, b) = bob.get("/_matrix/client/v3/notifications").await;
    assert_eq!(b["notifications"][0]["read"], false, "{b}");
    assert_eq!(b["notifications"][1]["read"], true, "{b}");
    assert_eq!(b["notifications"][2]["read"], true, "{b}");
    let (_, b) = bob.get("/_matrix/client/v3/notifications?limit=1").await;
    assert_eq!(b["notifications"].as_array().map(Vec::len), Some(1));
    let token = b["next_token"].as_str().expect("next_token").to_owned();
    let (_, b) = bob
        .get(&format!("/_matrix/client/v3/notifications?from={token}"))
        .await;
    assert_eq!(b["notifications"][0]["event"]["event_id"], first, "{b}");
    let (_, b) = bob
        .get("/_matrix/client/v3/notifications?only=highlight")
        .await;
    assert_eq!(b["notifications"], json!([]), "{b}");
    let (s, b) = bob.get("/_matrix/client/v3/notifications?from=x").await;
    assert_eq!((s, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));

    // An invite is for its target, at high priority.
    let me = user_id(&bob).await;
    let other = alice
        .create_room(json!({"name": "Second", "invite": [me]}))
        .await;
    let n = gw
        .wait_for("bob-key", |n| {
            n["room_id"] == other && n["type"] == "m.room.member"
        })
        .await;
    assert_eq!(n["user_is_target"], true, "{n}");
    assert_eq!(n["prio"], "high", "{n}");
}

#[tokio::test]
async fn no_push_to_an_online_user_reading_the_room() {
    let (url, gw, _server, alice, bob, room) = chat().await;
    set_pusher(&bob, &url, "bob-key", None).await;
    let alice_id = user_id(&alice).await;

    // Bob's client syncs and marks what it gets as read at once.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (bob, room, stop, alice_id) =
            (bob.clone(), room.clone(), stop.clone(), alice_id.clone());
        tokio::spawn(async move {
            let mut since = sync(&bob, None, 0).await["next_batch"]
                .as_str()
                .map(str::to_owned);
            while !stop.load(Ordering::SeqCst) {
                let b = sync(&bob, since.as_deref(), 1000).await;
                since = b["next_batch"].as_str().map(str::to_owned);
                let events = b["rooms"]["join"][&room]["timeline"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if let Some(last) = events
                    .iter()
                    .rev()
                    .find(|e| e["sender"] == alice_id.as_str())
                {
                    let id = last["event_id"].as_str().unwrap_or_default();
                    read_up_to(&bob, &room, id).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        alice
            .send_text(&room, &format!("r{i}"), "while reading")
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Well past the coalescing window: still nothing for Bob.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        gw.for_key("bob-key").is_empty(),
        "{:?}",
        gw.for_key("bob-key")
    );

    // Once Bob stops reading, messages reach him again.
    stop.store(true, Ordering::SeqCst);
    let _ = reader.await;
    let later = alice.send_text(&room, "after", "are you there?").await;
    let n = gw.wait_for("bob-key", |n| n["event_id"] == later).await;
    assert_eq!(n["counts"]["unread"], 1, "{n}");
}

#[tokio::test]
async fn a_burst_yields_few_pushes_ending_with_the_full_count() {
    let (url, gw, _server, alice, bob, room) = chat().await;
    set_pusher(&bob, &url, "bob-key", None).await;
    const BURST: usize = 25;
    let mut last = String::new();
    for i in 0..BURST {
        last = alice
            .send_text(&room, &format!("b{i}"), &format!("msg {i}"))
            .await;
    }
    let n = gw.wait_for("bob-key", |n| n["event_id"] == last).await;
    assert_eq!(n["counts"]["unread"], BURST as u64, "{n}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pushes = gw.for_key("bob-key");
    assert!(
        pushes.len() <= 4,
        "{} pushes for {BURST} messages",
        pushes.len()
    );
    assert_eq!(
        pushes.last().map(|p| p["event_id"].clone()),
        Some(json!(last))
    );
    println!("{BURST} messages → {} pushes", pushes.len());
}

#[tokio::test]
async fn a_failing_gateway_gets_retries_and_pushes_survive_a_restart() {
    let (url, gw, mut server, alice, bob, room) = chat().await;
    set_pusher(&bob, &url, "bob-key", None).await;

    gw.fail_next.store(3, Ordering::SeqCst);
    let first = alice.send_text(&room, "f1", "through the outage").await;
    let n = gw.wait_for("bob-key", |n| n["event_id"] == first).await;
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(gw.failed.load(Ordering::SeqCst), 3);
    assert_eq!(gw.for_key("bob-key").len(), 1);

    // Down across a crash: the restarted server still owes the push.
    gw.fail_next.store(usize::MAX, Ordering::SeqCst);
    let before = gw.failed.load(Ordering::SeqCst);
    let second = alice.send_text(&room, "f2", "across a restart").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.failed.load(Ordering::SeqCst) == before {
        assert!(Instant::now() < deadline, "the gateway was never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.crash_and_restart().await;
    gw.fail_next.store(0, Ordering::SeqCst);
    let n = gw.wait_for("bob-key", |n| n["event_id"] == second).await;
    assert_eq!(n["counts"]["unread"], 2, "{n}");
}

/// A gateway behind a private CA gets pushes only from a server told to
/// trust that CA (`--extra-ca-files`, the setting for all outgoing HTTPS).
#[tokio::test]
async fn a_gateway_behind_a_private_ca_is_reached_when_that_ca_is_trusted() {
    let ca = TestCa::new();
    let (url, gw) = Gateway::start_tls(&ca).await;
    let ca_file = ca.ca_file();
    let ca_arg = ca_file.to_str().expect("utf-8 path");
    let trusting =
        TestServer::start(&["--push-coalesce-ms", "0", "--extra-ca-files", ca_arg]).await;
    let untrusting = TestServer::start(&["--push-coalesce-ms", "0"]).await;

    let mut sent = vec![];
    for (tag, server) in [("trusted", &trusting), ("untrusted", &untrusting)] {
        let alice = server.register("alice", "password-a").await;
        let bob = server.register("bob", "password-b").await;
        let room = room_with(&alice, "Chat", &[&bob]).await;
        set_pusher(&bob, &url, &format!("{tag}-key"), None).await;
        sent.push(alice.send_text(&room, "t1", "over https").await);
    }
    let n = gw
        .wait_for("trusted-key", |n| n["event_id"] == sent[0])
        .await;
    assert_eq!(n["counts"]["unread"], 1, "{n}");
    // The other server's push fails its TLS handshake: it never arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        gw.for_key("untrusted-key").is_empty(),
        "{:?}",
        gw.for_key("untrusted-key")
    );
}

#[tokio::test]
async fn a_rejected_pushkey_loses_its_pusher() {
    let (url, gw, _server, alice, bob, room) = chat().await;
    set_pusher(&bob, &url, "stale-key", None).await;
    set_pusher(&bob, &url, "good-key", None).await;
    gw.reject.lock().expect("lock").insert("stale-key".into());
    let ev = alice.send_text(&room, "x1", "hi").await;
    gw.wait_for("stale-key", |n| n["event_id"] == ev).await;
    gw.wait_for("good-key", |n| n["event_id"] == ev).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys = pushkeys(&bob).await;
        if keys == ["good-key"] {
            break;
        }
        assert!(Instant::now() < deadline, "pushers: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn push_rules_drive_sync_counts() {
    let server = start_server().await;
    let alice = server.register("alice", "password-a").await;
    let bob = server.register("bob", "password-b").await;
    let carol = server.register("carol", "password-c").await;
    let room = room_with(&alice, "Chat", &[&bob, &carol]).await;
    set_name(&bob, "Bobby").await;
    let bob_id = user_id(&bob).await;

    // The default rules: every message notifies, an m.mentions of Bob
    // highlights.
    alice.send_text(&room, "c1", "plain").await;
    let (s, b) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/c2", enc(&room)),
            json!({"msgtype": "m.text", "body": "Bobby: look", "m.mentions": {"user_ids": [bob_id]}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(counts(&bob, &room).await, (2, 1));

    // An override rule without actions mutes the room (as clients mute),
    // mentions included.
    let rule = "/_matrix/client/v3/pushrules/global/override/mute";
    let (s, b) = bob
        .put(
            rule,
            json!({"conditions": [{"kind": "event_match", "key": "room_id", "pattern": room}],
                   "actions": []}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(counts(&bob, &room).await, (0, 0));
    alice.send_text(&room, "c3", "muted").await;
    assert_eq!(counts(&bob, &room).await, (0, 0));
    // Clients see the rules as account data.
    let b = sync(&bob, None, 0).await;
    let data = b["account_data"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rules = data
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules in account data");
    assert!(
        rules["content"]["global"]["override"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["rule_id"] == "mute"))
    );
    let (s, _) = bob.delete(rule).await;
    assert_eq!(s, 200);
    assert_eq!(counts(&bob, &room).await, (3, 1));

    // A display-name rule highlights a message naming Bob.
    let (s, b) = bob
        .put(
            "/_matrix/client/v3/pushrules/global/override/name?before=",
            json!({"conditions": [{"kind": "contains_display_name"}],
                   "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    carol.send_text(&room, "c4", "is Bobby around?").await;
    assert_eq!(counts(&bob, &room).await, (4, 2));
    // Disabling it by /enabled takes the highlights away again.
    let (s, _) = bob
        .put(
            "/_matrix/client/v3/pushrules/global/override/name/enabled",
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = bob
        .get("/_matrix/client/v3/pushrules/global/override/name/enabled")
        .await;
    assert_eq!(b, json!({"enabled": false}));
    assert_eq!(counts(&bob, &room).await, (4, 1));
}

/// Asserts that each request on the push rules, (method, path under
/// `pushrules/`, body, status, errcode), is refused with that error.
async fn assert_refused<const N: usize>(
    c: &Client,
    refused: [(&Method, &str, Option<Value>, u16, &str); N],
) {
    for (method, rule, body, status, errcode) in refused {
        let path = format!("/_matrix/client/v3/pushrules/{rule}");
        let (s, b) = c.request(method.clone(), &path, body).await;
        assert_eq!(
            (s, b["errcode"].as_str().unwrap_or_default()),
            (status, errcode),
            "{method} {path}: {b}"
        );
    }
}

#[tokio::test]
async fn push_rule_endpoints_answer_as_specified() {
    let server = start_server().await;
    let bob = server.register("bob", "password-b").await;
    let (s, b) = bob.get("/_matrix/client/v3/pushrules/").await;
    assert_eq!(s, 200, "{b}");
    let overrides = b["global"]["override"].as_array().expect("override rules");
    assert_eq!(overrides[0]["rule_id"], ".m.rule.master");
    assert_eq!(overrides[0]["enabled"], false);
    assert!(
        b["global"]["underride"]
            .as_array()
            .is_some_and(|u| !u.is_empty())
    );
    let (s, g) = bob.get("/_matrix/client/v3/pushrules/global/").await;
    assert_eq!(s, 200);
    assert_eq!(g, b["global"]);

    let base = "/_matrix/client/v3/pushrules/global";
    let r = bob.get(&format!("{base}/override/.m.rule.master")).await;
    assert_eq!(
        (r.0, r.1["rule_id"].clone()),
        (200, json!(".m.rule.master"))
    );
    // (method, rule path, body, status, errcode) of each refused request.
    let (get, put, delete) = (&Method::GET, &Method::PUT, &Method::DELETE);
    let (not_found, invalid) = ("M_NOT_FOUND", "M_INVALID_PARAM");
    let empty = || Some(json!({"actions": []}));
    let notify = || Some(json!({"actions": "notify"}));
    let refused = [
        (get, "global/override/nope", None, 404, not_found),
        (get, "global/sideways/x", None, 400, invalid),
        (get, "device/override/x", None, 400, invalid),
        (delete, "global/override/.m.rule.master", None, 400, invalid),
        (delete, "global/override/nope", None, 404, not_found),
        (put, "global/override/.custom", empty(), 400, invalid),
        (put, "global/override/x", notify(), 400, invalid),
        (put, "global/content/x", empty(), 400, invalid),
        (
            put,
            "global/override/x?before=missing",
            empty(),
            404,
            not_found,
        ),
    ];
    assert_refused(&bob, refused).await;

    // Placement: `before` puts a rule ahead of another user rule.
    for id in ["one", "two"] {
        let (s, b) = bob
            .put(
                &format!("{base}/content/{id}"),
                json!({"actions": ["notify"], "pattern": id}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = bob
        .put(
            &format!("{base}/content/zero?before=one"),
            json!({"actions": ["notify"], "pattern": "z"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, b) = bob.get(&format!("{base}/")).await;
    let ids: Vec<&str> = b["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["rule_id"].as_str())
        .filter(|id| !id.starts_with('.'))
        .collect();
    assert_eq!(ids, ["two", "zero", "one"]);

    // Actions of a server-default rule can change; unknown rules 404.
    let (s, _) = bob
        .put(
            &format!("{base}/underride/.m.rule.message/actions"),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = bob
        .get(&format!("{base}/underride/.m.rule.message/actions"))
        .await;
    assert_eq!(b, json!({"actions": []}));
    let refused = [
        (
            put,
            "global/underride/nope/actions",
            empty(),
            404,
            not_found,
        ),
        (
            put,
            "global/underride/.m.rule.message/enabled",
            Some(json!({})),
            400,
            invalid,
        ),
    ];
    assert_refused(&bob, refused).await;
    // m.push_rules is the server's to write.
    let me = user_id(&bob).await;
    let (s, _) = bob
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.push_rules",
                enc(&me)
            ),
            json!({}),
        )
        .await;
    assert_eq!(s, 405);
}

#[tokio::test]
async fn bad_pusher_requests_are_refused_and_change_nothing() {
    let server = start_server().await;
    let bob = server.register("bob", "password-b").await;
    let carol = server.register("carol", "password-c").await;
    let url = "http://127.0.0.1:9/_matrix/push/v1/notify";
    set_pusher(&bob, url, "key-1", None).await;
    let (_, before) = bob.get("/_matrix/client/v3/pushers").await;
    assert_eq!(
        before["pushers"].as_array().map(Vec::len),
        Some(1),
        "{before}"
    );
    let p = &before["pushers"][0];
    assert_eq!(p["kind"], "http");
    assert_eq!(p["app_display_name"], "Test");
    assert_eq!(p["data"]["url"], url);

    let good = pusher_body(url, "key-2", None);
    let mut cases: Vec<(Value, &str)> = vec![];
    let mut no_url = good.clone();
    no_url["data"] = json!({"format": "event_id_only"});
    cases.push((no_url, "M_MISSING_PARAM"));
    let mut bad_url = good.clone();
    bad_url["data"]["url"] = json!("ftp://example.org/_matrix/push/v1/notify");
    cases.push((bad_url, "M_INVALID_PARAM"));
    let mut wrong_path = good.clone();
    wrong_path["data"]["url"] = json!("https://example.org/push");
    cases.push((wrong_path, "M_INVALID_PARAM"));
    let mut bad_kind = good.clone();
    bad_kind["kind"] = json!("pigeon");
    cases.push((bad_kind, "M_INVALID_PARAM"));
    let mut no_lang = good.clone();
    if let Some(o) = no_lang.as_object_mut() {
        o.remove("lang");
    }
    cases.push((no_lang, "M_MISSING_PARAM"));
    let mut no_app = good.clone();
    if let Some(o) = no_app.as_object_mut() {
        o.remove("app_id");
    }
    cases.push((no_app, "M_MISSING_PARAM"));
    let mut bad_format = good.clone();
    bad_format["data"]["format"] = json!(1);
    cases.push((bad_format, "M_INVALID_PARAM"));
    let mut long_app = good.clone();
    long_app["app_id"] = json!("a".repeat(65));
    cases.push((long_app, "M_INVALID_PARAM"));
    let mut bad_append = good.clone();
    bad_append["append"] = json!("yes");
    cases.push((bad_append, "M_INVALID_PARAM"));
    for (body, errcode) in cases {
        let (s, b) = bob
            .post("/_matrix/client/v3/pushers/set", body.clone())
            .await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (400, Some(errcode)),
            "{body} → {b}"
        );
    }
    let (_, after) = bob.get("/_matrix/client/v3/pushers").await;
    assert_eq!(after, before);

    // Setting the same app_id and pushkey for another user moves it there
    // (no append); `kind: null` deletes.
    set_pusher(&carol, url, "key-1", None).await;
    let (_, b) = bob.get("/_matrix/client/v3/pushers").await;
    assert_eq!(b["pushers"], json!([]), "{b}");
    let (s, _) = carol
        .post(
            "/_matrix/client/v3/pushers/set",
            json!({"kind": null, "app_id": "org.hearth.test", "pushkey": "key-1"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = carol.get("/_matrix/client/v3/pushers").await;
    assert_eq!(b["pushers"], json!([]), "{b}");
}

/// A second device of bob's (password `password-b`): his phone.
async fn phone_of_bob(server: &TestServer) -> Client {
    let (s, login) = server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
                   "password": "password-b"}),
        )
        .await;
    assert_eq!(s, 200, "{login}");
    let mut phone = server.client();
    phone.token = login["access_token"].as_str().map(str::to_owned);
    phone
}

#[tokio::test]
async fn logging_out_a_device_drops_its_pushers_and_first_syncs_carry_the_rules() {
    let (url, _gw) = Gateway::start().await;
    let server = start_server().await;
    let bob = server.register("bob", "password-b").await;
    // A second device of bob's (a phone) sets its own pusher.
    let phone = phone_of_bob(&server).await;
    set_pusher(&bob, &url, "desk-key", None).await;
    set_pusher(&phone, &url, "phone-key", None).await;

    // The first sync shows the default rules, as clients expect.
    let first = sync(&phone, None, 0).await;
    let rules = first["account_data"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "m.push_rules")
        .unwrap_or_else(|| panic!("no m.push_rules in {first}"));
    assert!(
        rules["content"]["global"]["override"]
            .as_array()
            .is_some_and(|o| o.iter().any(|r| r["rule_id"] == ".m.rule.master")),
        "{rules}"
    );

    let (s, _) = phone.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(pushkeys(&bob).await, ["desk-key"]);
}

/// Changing the password logs the other devices out (`logout_devices`
/// defaults to true): their pushers go with them, the caller's stay.
#[tokio::test]
async fn a_password_change_drops_the_other_devices_pushers() {
    let (url, _gw) = Gateway::start().await;
    let server = start_server().await;
    let bob = server.register("bob", "password-b").await;
    let phone = phone_of_bob(&server).await;
    set_pusher(&bob, &url, "desk-key", None).await;
    set_pusher(&phone, &url, "phone-key", None).await;

    let me = user_id(&bob).await;
    let change = |session: Option<&Value>| {
        let mut body = json!({"new_password": "password-b2"});
        if let Some(s) = session {
            body["auth"] = json!({"type": "m.login.password", "session": s,
                "identifier": {"type": "m.id.user", "user": me}, "password": "password-b"});
        }
        body
    };
    let (s, challenge) = bob
        .post("/_matrix/client/v3/account/password", change(None))
        .await;
    assert_eq!(s, 401, "{challenge}");
    let (s, b) = bob
        .post(
            "/_matrix/client/v3/account/password",
            change(Some(&challenge["session"])),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(pushkeys(&bob).await, ["desk-key"]);
    let (s, _) = phone.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(s, 401, "the phone's session ends");
}

#[tokio::test]
async fn without_pushers_notifications_list_what_sync_counts() {
    let server = start_server().await;
    let alice = server.register("alice", "password-a").await;
    let carol = server.register("carol", "password-c").await;
    let carol_id = user_id(&carol).await;
    let room = room_with(&alice, "Chat", &[&carol]).await;
    let plain = alice.send_text(&room, "p1", "plain message").await;
    let (s, b) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/m1", enc(&room)),
            json!({"msgtype": "m.text", "body": "hey carol", "m.mentions": {"user_ids": [carol_id]}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let mention = b["event_id"].as_str().expect("event_id").to_owned();
    let last = alice.send_text(&room, "p2", "another").await;
    assert_eq!(counts(&carol, &room).await, (3, 1));
    // Every event sync counts is listed, newest first, then the invite that
    // brought carol in.
    let (s, b) = carol.get("/_matrix/client/v3/notifications").await;
    assert_eq!(s, 200, "{b}");
    let list = b["notifications"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = list
        .iter()
        .filter_map(|n| n["event"]["event_id"].as_str())
        .collect();
    assert_eq!(
        ids[..3],
        [last.as_str(), mention.as_str(), plain.as_str()],
        "{b}"
    );
    assert_eq!(list.len(), 4, "{b}");
    assert_eq!(list[3]["event"]["content"]["membership"], "invite", "{b}");
    assert!(list.iter().all(|n| n["read"] == false), "{b}");
    // Synapse's shape, which clients (and SyTest) read: profile_tag is there.
    assert!(list.iter().all(|n| n.get("profile_tag").is_some()), "{b}");
    let (_, b) = carol
        .get("/_matrix/client/v3/notifications?only=highlight")
        .await;
    assert_eq!(b["notifications"].as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(b["notifications"][0]["event"]["event_id"], mention, "{b}");
    // Paging walks the same list.
    let (_, b) = carol.get("/_matrix/client/v3/notifications?limit=2").await;
    assert_eq!(b["notifications"][1]["event"]["event_id"], mention, "{b}");
    let token = b["next_token"].as_str().expect("next_token").to_owned();
    let (_, b) = carol
        .get(&format!(
            "/_matrix/client/v3/notifications?from={}",
            enc(&token)
        ))
        .await;
    assert_eq!(b["notifications"][0]["event"]["event_id"], plain, "{b}");
    assert_eq!(b["notifications"].as_array().map(Vec::len), Some(2), "{b}");
    assert!(b.get("next_token").is_none(), "{b}");
    // Read up to the mention: the older ones are read, the newest is not.
    read_up_to(&carol, &room, &mention).await;
    let (_, b) = carol.get("/_matrix/client/v3/notifications").await;
    let read: Vec<&Value> = b["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| &n["read"])
        .collect();
    assert_eq!(
        read,
        [&json!(false), &json!(true), &json!(true), &json!(true)],
        "{b}"
    );
    assert_eq!(counts(&carol, &room).await, (1, 0));
}

#[tokio::test]
async fn the_badge_is_what_sync_counts_even_from_before_the_pusher() {
    let (url, gw, _server, alice, bob, room) = chat().await;
    // Two unread messages before bob has a pusher…
    alice.send_text(&room, "b1", "one").await;
    alice.send_text(&room, "b2", "two").await;
    let other = room_with(&alice, "Other", &[&bob]).await;
    alice.send_text(&other, "b3", "three").await;
    // The push worker has dealt with those (it gathers for 250 ms) before
    // the pusher exists.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    set_pusher(&bob, &url, "bob-key", None).await;
    // …and one after: the badge counts all four, as sync does.
    let last = alice.send_text(&room, "b4", "four").await;
    let n = gw.wait_for("bob-key", |n| n["event_id"] == last).await;
    let synced = counts(&bob, &room).await.0 + counts(&bob, &other).await.0;
    assert_eq!(synced, 4);
    assert_eq!(n["counts"]["unread"], 4, "{n}");
}
