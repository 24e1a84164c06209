//! Application services against a real Hearth process: registration files,
//! exclusive namespaces, masquerading, the service's own registrations and
//! logins, and pings both ways. The service is played by the test.
// The lock policy (parking_lot) is for the server; a test's own
// bookkeeping may use std's locks.
#![allow(clippy::disallowed_types)]

mod common;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, http::HeaderMap, routing::post};
use common::{Client, TestServer, assert_error, enc, temp_file};
use serde_json::{Value, json};

const AS_TOKEN: &str = "as-secret-token-for-tests";
const HS_TOKEN: &str = "hs-secret-token-for-tests";

/// What the service heard: (Authorization header, body) of each ping.
type Heard = Arc<Mutex<Vec<(String, Value)>>>;

/// The service's side of transactions: each (txn id, Authorization, body)
/// it took, and whether it is "down" (answering 503).
#[derive(Clone, Default)]
struct Service {
    pings: Heard,
    transactions: Arc<Mutex<Vec<(String, String, Value)>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
    /// The homeserver's URL, once started: the service registers the users
    /// it is asked about there.
    hs_url: Arc<Mutex<Option<String>>>,
    /// The users the server asked about (`GET /users/{userId}`).
    queried_users: Arc<Mutex<Vec<String>>>,
    /// The query strings of third-party user lookups.
    lookups: Arc<Mutex<Vec<String>>>,
}

/// `GET /_matrix/app/v1/users/{userId}`: the service registers the user
/// (with its as_token) before answering, as a bridge does.
async fn user_query(
    State(s): State<Service>,
    axum::extract::Path(user): axum::extract::Path<String>,
) -> (axum::http::StatusCode, Json<Value>) {
    s.queried_users.lock().expect("lock").push(user.clone());
    let url = s.hs_url.lock().expect("lock").clone();
    let local = user
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    if let Some(url) = url {
        let resp = reqwest::Client::new()
            .post(format!("{url}/_matrix/client/v3/register"))
            .bearer_auth(AS_TOKEN)
            .json(&json!({"type": "m.login.application_service", "username": local}))
            .send()
            .await;
        if resp.is_ok_and(|r| r.status().is_success()) {
            return (axum::http::StatusCode::OK, Json(json!({})));
        }
    }
    (axum::http::StatusCode::NOT_FOUND, Json(json!({})))
}

impl Service {
    /// Event bodies (`content.body`) of the transactions taken, in order,
    /// each transaction id once.
    fn bodies(&self) -> Vec<String> {
        let txns = self.transactions.lock().expect("lock");
        let mut seen = std::collections::HashSet::new();
        txns.iter()
            .filter(|(id, _, _)| seen.insert(id.clone()))
            .flat_map(|(_, _, body)| body["events"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    }

    async fn wait_for(&self, wanted: &[&str]) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let bodies = self.bodies();
            if wanted.iter().all(|w| bodies.iter().any(|b| b == w)) {
                return bodies;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the service got {bodies:?}, not all of {wanted:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

async fn start_service() -> (SocketAddr, Service) {
    let service = Service::default();
    let app = Router::new()
        .route(
            "/_matrix/app/v1/ping",
            post(
                |State(s): State<Service>, headers: HeaderMap, Json(body): Json<Value>| async move {
                    s.pings
                        .lock()
                        .expect("lock")
                        .push((auth_of(&headers), body));
                    Json(json!({}))
                },
            ),
        )
        .route(
            "/_matrix/app/v1/transactions/{txn}",
            axum::routing::put(
                |State(s): State<Service>,
                 axum::extract::Path(txn): axum::extract::Path<String>,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    if s.down.load(std::sync::atomic::Ordering::SeqCst) {
                        s.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(json!({})));
                    }
                    s.transactions
                        .lock()
                        .expect("lock")
                        .push((txn, auth_of(&headers), body));
                    (axum::http::StatusCode::OK, Json(json!({})))
                },
            ),
        )
        .route(
            "/_matrix/app/v1/thirdparty/protocol/{protocol}",
            axum::routing::get(
                |State(s): State<Service>,
                 headers: HeaderMap,
                 axum::extract::Path(p): axum::extract::Path<String>| async move {
                    if s.down.load(std::sync::atomic::Ordering::SeqCst) {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(json!({})));
                    }
                    if auth_of(&headers) != format!("Bearer {HS_TOKEN}") || p != "chat" {
                        return (axum::http::StatusCode::NOT_FOUND, Json(json!({})));
                    }
                    (
                        axum::http::StatusCode::OK,
                        Json(json!({
                            "user_fields": ["nick"], "location_fields": ["channel"], "icon": "",
                            "field_types": {}, "instances": [{"desc": "Chat network", "fields": {}, "network_id": "chat"}]
                        })),
                    )
                },
            ),
        )
        .route(
            "/_matrix/app/v1/thirdparty/user/{protocol}",
            axum::routing::get(
                |State(s): State<Service>, axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                    let q = q.unwrap_or_default();
                    s.lookups.lock().expect("lock").push(q.clone());
                    let nick = q.replace("nick=", "");
                    Json(json!([{
                        "userid": format!("@_bridge_{nick}:localhost"),
                        "protocol": "chat",
                        "fields": {"nick": nick}
                    }]))
                },
            ),
        )
        .route("/_matrix/app/v1/users/{user}", axum::routing::get(user_query))
        .with_state(service.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, service)
}

fn auth_of(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn registration(url: &str) -> String {
    format!(
        r##"id: bridge
url: "{url}"
as_token: {AS_TOKEN}
hs_token: {HS_TOKEN}
sender_localpart: bridgebot
rate_limited: false
receive_ephemeral: true
protocols: ["chat"]
namespaces:
  users:
    - exclusive: true
      regex: "@_bridge_.*"
  aliases:
    - exclusive: true
      regex: "#_bridge_.*"
  rooms: []
"##
    )
}

fn as_client(server: &TestServer) -> Client {
    Client {
        token: Some(AS_TOKEN.into()),
        ..server.client()
    }
}

/// The bridge's puppet user, percent-encoded for `?user_id=`.
fn puppet() -> String {
    enc("@_bridge_alice:localhost")
}

/// A service listening, and a server started with its registration (in the
/// returned directory, which the test removes).
async fn bridged_server(tag: &str) -> (PathBuf, Service, TestServer) {
    let (service_addr, service) = start_service().await;
    let registration = registration(&format!("http://{service_addr}"));
    let (dir, file) = temp_file(tag, "bridge.yaml", &registration);
    let file = file.display().to_string();
    let hs = TestServer::start(&["--appservice-registrations", &file]).await;
    *service.hs_url.lock().expect("lock") = Some(hs.client().base.clone());
    (dir, service, hs)
}

/// A bridged server where the service registered its puppet
/// `@_bridge_alice`, and bob's public room that the puppet was invited to
/// and joined (the service acting as it).
struct PuppetRoom {
    dir: PathBuf,
    service: Service,
    hs: TestServer,
    bridge: Client,
    bob: Client,
    room: String,
}

async fn puppet_room(tag: &str) -> PuppetRoom {
    let (dir, service, hs) = bridged_server(tag).await;
    let bridge = as_client(&hs);
    let (s, body) = bridge
        .post(
            "/_matrix/client/v3/register",
            json!({"type": "m.login.application_service", "username": "_bridge_alice"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let bob = hs.register("bob", "bob-password-long").await;
    let room = bob
        .create_room(json!({"preset": "public_chat", "invite": ["@_bridge_alice:localhost"]}))
        .await;
    let (s, body) = bridge
        .join_with(&room, &format!("?user_id={}", puppet()))
        .await;
    assert_eq!(s, 200, "{body}");
    PuppetRoom {
        dir,
        service,
        hs,
        bridge,
        bob,
        room,
    }
}

/// A message the service sends as its puppet.
async fn send_as_puppet(bridge: &Client, room: &str, txn: &str, body: &str) -> (u16, Value) {
    let txn = format!("{txn}?user_id={}", puppet());
    bridge.send_message(room, &txn, body).await
}

#[tokio::test]
async fn a_registered_service_owns_its_namespaces_and_acts_for_its_users() {
    let (dir, heard, hs) = bridged_server("as").await;
    let heard = heard.pings.clone();
    let service = as_client(&hs);

    // The service's own user exists, and its token acts as it.
    let (s, me) = service.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["user_id"], "@bridgebot:localhost");
    assert!(me.get("device_id").is_none(), "{me}");

    // It registers a user of its namespace without UIA…
    let register = |client: Client, username: &str| {
        let username = username.to_owned();
        async move {
            client
                .post(
                    "/_matrix/client/v3/register",
                    json!({"type": "m.login.application_service", "username": username}),
                )
                .await
        }
    };
    let (s, alice) = register(service.clone(), "_bridge_alice").await;
    assert_eq!(s, 200, "{alice}");
    assert_eq!(alice["user_id"], "@_bridge_alice:localhost");
    assert!(alice["access_token"].is_string());
    // …but none outside it, and nobody else may use the type.
    let (s, body) = register(service.clone(), "carol").await;
    assert_error(s, &body, 400, "M_EXCLUSIVE");
    let anonymous = hs.client();
    let (s, body) = register(anonymous.clone(), "_bridge_x").await;
    assert_error(s, &body, 401, "M_MISSING_TOKEN");
    let wrong = Client {
        token: Some(HS_TOKEN.into()),
        ..hs.client()
    };
    let (s, body) = register(wrong.clone(), "_bridge_x").await;
    assert_error(s, &body, 401, "M_UNKNOWN_TOKEN");

    // Ordinary users cannot take names or aliases the service holds.
    let (s, body) = anonymous
        .get("/_matrix/client/v3/register/available?username=_bridge_bob")
        .await;
    assert_error(s, &body, 400, "M_EXCLUSIVE");
    let (s, body) = anonymous
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "_bridge_bob", "password": "a-long-password", "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_error(s, &body, 400, "M_EXCLUSIVE");
    let bob = hs.register("bob", "bob-password-long").await;
    let (s, body) = bob
        .post(
            "/_matrix/client/v3/createRoom",
            json!({"room_alias_name": "_bridge_room"}),
        )
        .await;
    assert_error(s, &body, 400, "M_EXCLUSIVE");

    // Masquerading: the service acts as its registered user…
    let alice_id = puppet();
    let (s, me) = service
        .get(&format!(
            "/_matrix/client/v3/account/whoami?user_id={alice_id}"
        ))
        .await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["user_id"], "@_bridge_alice:localhost");
    // …creates a portal room with an alias of its namespace, as alice…
    let (s, room) = service
        .post(
            &format!("/_matrix/client/v3/createRoom?user_id={alice_id}"),
            json!({"preset": "public_chat", "room_alias_name": "_bridge_portal"}),
        )
        .await;
    assert_eq!(s, 200, "{room}");
    let room = room["room_id"].as_str().expect("room_id").to_owned();
    let (s, sent) = service
        .send_message(
            &room,
            &format!("t1?user_id={alice_id}"),
            "hello from the other network",
        )
        .await;
    assert_eq!(s, 200, "{sent}");
    // …and bob, joining by that alias, reads alice's message.
    bob.join("#_bridge_portal:localhost").await;
    let page = bob.messages(&room, "dir=b&limit=10").await;
    assert!(
        page["chunk"].as_array().expect("chunk").iter().any(|e| {
            e["sender"] == "@_bridge_alice:localhost"
                && e["content"]["body"] == "hello from the other network"
        }),
        "{page}"
    );
    // Timestamp massaging: the service may date its events (?ts=); a
    // user's ts is ignored, a malformed one is 400.
    let (s, sent) = service
        .send_message(
            &room,
            &format!("t2?user_id={alice_id}&ts=1500000000000"),
            "said in 2017",
        )
        .await;
    assert_eq!(s, 200, "{sent}");
    let (s, ev) = bob
        .event(&room, sent["event_id"].as_str().expect("event_id"))
        .await;
    assert_eq!(
        (s, ev["origin_server_ts"].as_u64()),
        (200, Some(1_500_000_000_000)),
        "{ev}"
    );
    let sent = bob
        .send_message(&room, "t3?ts=1500000000000", "bob cannot")
        .await
        .1;
    let (_, ev) = bob
        .event(&room, sent["event_id"].as_str().expect("event_id"))
        .await;
    assert!(
        ev["origin_server_ts"].as_u64().expect("ts") > 1_600_000_000_000,
        "{ev}"
    );
    let (s, body) = service
        .send_message(&room, &format!("t4?user_id={alice_id}&ts=soon"), "bad ts")
        .await;
    assert_error(s, &body, 400, "M_INVALID_PARAM");

    // Not as users outside its namespace, nor unregistered ones.
    for user in ["@bob:localhost", "@_bridge_nobody:localhost"] {
        let (s, body) = service
            .get(&format!(
                "/_matrix/client/v3/account/whoami?user_id={}",
                enc(user)
            ))
            .await;
        assert_eq!(
            (s, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{user}: {body}"
        );
    }

    // A login for its user gives a device the service may then act with.
    let (s, login) = service
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service",
                   "identifier": {"type": "m.id.user", "user": "_bridge_alice"}}),
        )
        .await;
    assert_eq!(s, 200, "{login}");
    let device = login["device_id"].as_str().expect("device_id").to_owned();
    let (s, me) = service
        .get(&format!(
            "/_matrix/client/v3/account/whoami?user_id={alice_id}&device_id={device}"
        ))
        .await;
    assert_eq!(
        (s, me["device_id"].as_str()),
        (200, Some(device.as_str())),
        "{me}"
    );
    let (s, body) = service
        .get(&format!(
            "/_matrix/client/v3/account/whoami?user_id={alice_id}&device_id=NOTHERS"
        ))
        .await;
    assert_error(s, &body, 400, "M_UNKNOWN_DEVICE");
    let (s, body) = service
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service",
                   "identifier": {"type": "m.id.user", "user": "bob"}}),
        )
        .await;
    assert_error(s, &body, 400, "M_EXCLUSIVE");

    // Ping: Hearth calls the service with its hs_token.
    let (s, pong) = service
        .post(
            "/_matrix/client/v1/appservice/bridge/ping",
            json!({"transaction_id": "ping-1"}),
        )
        .await;
    assert_eq!(s, 200, "{pong}");
    assert!(pong["duration_ms"].is_u64(), "{pong}");
    let pings = heard.lock().expect("lock").clone();
    assert_eq!(
        pings,
        vec![(
            format!("Bearer {HS_TOKEN}"),
            json!({"transaction_id": "ping-1"})
        )]
    );
    for (client, id) in [(&bob, "bridge"), (&service, "other")] {
        let (s, body) = client
            .post(
                &format!("/_matrix/client/v1/appservice/{id}/ping"),
                json!({}),
            )
            .await;
        assert_error(s, &body, 403, "M_FORBIDDEN");
    }

    // Third-party lookups go to the bridge serving the protocol.
    let (s, protocols) = bob.get("/_matrix/client/v3/thirdparty/protocols").await;
    assert_eq!(s, 200, "{protocols}");
    assert_eq!(
        protocols["chat"]["user_fields"],
        json!(["nick"]),
        "{protocols}"
    );
    let (s, users) = bob
        .get("/_matrix/client/v3/thirdparty/user/chat?nick=dave")
        .await;
    assert_eq!(s, 200, "{users}");
    assert_eq!(users[0]["userid"], "@_bridge_dave:localhost", "{users}");
    let (s, body) = bob.get("/_matrix/client/v3/thirdparty/protocol/fax").await;
    assert_error(s, &body, 404, "M_NOT_FOUND");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_bad_registration_stops_start_up_naming_the_file_and_field() {
    let broken = registration("http://127.0.0.1:1").replace("\"@_bridge_.*\"", "\"@_bridge_(\"");
    let (dir, file) = temp_file("as-bad", "broken.yaml", &broken);
    let out = std::process::Command::new(common::binary())
        .args([
            "--data-dir",
            &dir.join("data").display().to_string(),
            "--listen",
            &common::free_addr(),
            "--appservice-registrations",
            &file.display().to_string(),
        ])
        .output()
        .expect("run homeserver");
    assert!(!out.status.success(), "started with a broken registration");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.yaml") && stderr.contains("namespaces.users[0].regex"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn events_reach_the_service_in_order_and_wait_for_it_while_it_is_down() {
    // A room bob shares with the bridge's puppet: the service hears all of it.
    let PuppetRoom {
        dir,
        service,
        hs: _hs,
        bridge,
        bob,
        room,
    } = puppet_room("as-txn").await;
    bob.send_text(&room, "b1", "bob: hello puppet").await;
    let (s, body) = send_as_puppet(&bridge, &room, "p1", "alice: hello bob").await;
    assert_eq!(s, 200, "{body}");
    // A room without any of the bridge's users: none of it.
    let private = bob.create_room(json!({"preset": "private_chat"})).await;
    bob.send_text(&private, "x1", "bob: to nobody").await;
    let got = service
        .wait_for(&["bob: hello puppet", "alice: hello bob"])
        .await;
    assert_eq!(got, vec!["bob: hello puppet", "alice: hello bob"]);
    {
        let txns = service.transactions.lock().expect("lock");
        assert!(
            txns.iter()
                .all(|(_, auth, _)| *auth == format!("Bearer {HS_TOKEN}"))
        );
        let events: Vec<&Value> = txns
            .iter()
            .flat_map(|(_, _, b)| b["events"].as_array().expect("events").iter())
            .collect();
        assert!(
            events.iter().any(|e| e["type"] == "m.room.member"
                && e["state_key"] == "@_bridge_alice:localhost"
                && e["content"]["membership"] == "invite"),
            "the invite of its user reaches the service: {events:?}"
        );
        assert!(events.iter().all(|e| e["room_id"] != private.as_str()));
        assert!(events.iter().all(|e| e["event_id"].is_string()));
    }

    // The service goes down: sending goes on, and what it missed arrives in
    // order once it is back, each transaction taken once.
    service
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let missed: Vec<String> = (0..5)
        .map(|i| format!("bob: while you were away {i}"))
        .collect();
    for (i, text) in missed.iter().enumerate() {
        bob.send_text(&room, &format!("away{i}"), text).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while service.refused.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "Hearth never retried");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    service
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let wanted: Vec<&str> = missed.iter().map(String::as_str).collect();
    let got = service.wait_for(&wanted).await;
    let tail: Vec<&str> = got.iter().skip(2).map(String::as_str).collect();
    assert_eq!(tail, wanted, "{got:?}");
    // Typing, read receipts and presence of the room's users reach the
    // service too.
    bob.set_typing(&room, "@bob:localhost", true, 30000).await;
    let last = bob.send_text(&room, "r1", "bob: read this").await;
    bob.read_receipt(&room, &last, json!({})).await;
    let (s, body) = bob
        .put(
            &format!(
                "/_matrix/client/v3/presence/{}/status",
                enc("@bob:localhost")
            ),
            json!({"presence": "online", "status_msg": "bridging"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ephemeral: Vec<Value> = service
            .transactions
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|(_, _, b)| b["ephemeral"].as_array().cloned().unwrap_or_default())
            .collect();
        let typing = ephemeral.iter().any(|e| {
            e["type"] == "m.typing"
                && e["room_id"] == room.as_str()
                && e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|u| u == "@bob:localhost"))
        });
        let receipt = ephemeral.iter().any(|e| {
            e["type"] == "m.receipt" && e["content"][&last]["m.read"]["@bob:localhost"].is_object()
        });
        let presence = ephemeral.iter().any(|e| {
            e["type"] == "m.presence"
                && e["sender"] == "@bob:localhost"
                && e["content"]["status_msg"] == "bridging"
        });
        if typing && receipt && presence {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ephemeral events the service got: {ephemeral:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A transaction sent again (after a failure) kept its id and body.
    let txns = service.transactions.lock().expect("lock").clone();
    for (id, _, body) in &txns {
        for (other, _, again) in &txns {
            if id == other {
                assert_eq!(body, again, "transaction {id} changed between attempts");
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_service_acting_for_a_user_redacts_only_what_that_user_may() {
    let PuppetRoom {
        dir,
        hs: _hs,
        bridge,
        bob,
        room,
        ..
    } = puppet_room("as-redact").await;
    let bobs = bob.send_text(&room, "b1", "bob's words").await;
    let (s, body) = send_as_puppet(&bridge, &room, "p1", "alice's words").await;
    assert_eq!(s, 200, "{body}");
    let alices = body["event_id"].as_str().expect("event_id").to_owned();
    let redact = |target: String, txn: &'static str| {
        let bridge = bridge.clone();
        let room = room.clone();
        async move {
            bridge
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.redaction/{txn}?user_id={}",
                        enc(&room),
                        puppet()
                    ),
                    json!({"redacts": target}),
                )
                .await
        }
    };

    // The puppet (power 0) may not redact bob's event, masquerading or not.
    let (s, body) = redact(bobs.clone(), "r1").await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert_eq!(bob.content_of(&room, &bobs).await["body"], "bob's words");
    // Its own event it may.
    let (s, body) = redact(alices.clone(), "r2").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(bob.content_of(&room, &alices).await, json!({}));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_service_names_rooms_of_its_namespace_it_has_not_joined() {
    let (dir, _service, hs) = bridged_server("as-alias").await;
    let bridge = as_client(&hs);
    let bob = hs.register("bob", "bob-password-long").await;
    let room = bob.create_room(json!({"preset": "public_chat"})).await;
    let alias = enc("#_bridge_room:localhost");
    let (s, body) = bridge
        .put(
            &format!("/_matrix/client/v3/directory/room/{alias}"),
            json!({"room_id": room}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = bob
        .get(&format!("/_matrix/client/v3/directory/room/{alias}"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    // Outside its namespaces it may not, joined or not.
    let (s, body) = bridge
        .put(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#other:localhost")
            ),
            json!({"room_id": room}),
        )
        .await;
    assert_error(s, &body, 400, "M_EXCLUSIVE");
    // A user still names only rooms they are in.
    let carol = hs.register("carol", "carol-password-long").await;
    let (s, body) = carol
        .put(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#carols:localhost")
            ),
            json!({"room_id": room}),
        )
        .await;
    assert_error(s, &body, 403, "M_FORBIDDEN");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn inviting_a_user_of_the_namespace_asks_the_service_first() {
    let (dir, service, hs) = bridged_server("as-invite").await;
    let bob = hs.register("bob", "bob-password-long").await;
    let room = bob.create_room(json!({"preset": "private_chat"})).await;
    let ghost = "@_bridge_newcomer:localhost";
    let (s, body) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": ghost}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        service.queried_users.lock().expect("lock").clone(),
        vec![ghost.to_owned()]
    );
    let members = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
            enc(ghost)
        ))
        .await;
    assert_eq!(members.0, 200, "{}", members.1);
    assert_eq!(members.1["membership"], "invite");
    // A user outside every namespace is not asked about, and not found.
    let (s, body) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": "@nobody:localhost"}),
        )
        .await;
    assert_error(s, &body, 404, "M_NOT_FOUND");
    assert_eq!(service.queried_users.lock().expect("lock").len(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_service_deactivates_its_user_without_a_password() {
    let PuppetRoom {
        dir,
        hs,
        bridge,
        bob,
        room,
        ..
    } = puppet_room("as-deactivate").await;
    let (s, body) = bridge
        .post(
            &format!("/_matrix/client/v3/account/deactivate?user_id={}", puppet()),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    // Deactivation took the puppet out of its room.
    let (s, member) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
            puppet()
        ))
        .await;
    assert_eq!(s, 200, "{member}");
    assert_eq!(member["membership"], "leave", "{member}");
    // A user still gives their password.
    let carol = hs.register("carol", "carol-password-long").await;
    let (s, body) = carol
        .post("/_matrix/client/v3/account/deactivate", json!({}))
        .await;
    assert_eq!(s, 401, "{body}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn third_party_lookups_keep_the_clients_token_and_reuse_protocol_metadata() {
    let (dir, service, hs) = bridged_server("as-3pe").await;
    let bob = hs.register("bob", "bob-password-long").await;
    let token = bob.token.clone().unwrap_or_default();
    let (s, body) = hs
        .client()
        .get(&format!(
            "/_matrix/client/v3/thirdparty/user/chat?nick=carol&access_token={token}"
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body[0]["userid"], "@_bridge_carol:localhost", "{body}");
    assert_eq!(
        service.lookups.lock().expect("lock").clone(),
        vec!["nick=carol".to_owned()]
    );
    let (s, first) = bob.get("/_matrix/client/v3/thirdparty/protocol/chat").await;
    assert_eq!(s, 200, "{first}");
    // The service is down: the metadata it gave is still the answer.
    service
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (s, again) = bob.get("/_matrix/client/v3/thirdparty/protocol/chat").await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(first, again);
    let (s, body) = bob
        .get("/_matrix/client/v3/thirdparty/protocol/other")
        .await;
    assert_error(s, &body, 404, "M_NOT_FOUND");
    std::fs::remove_dir_all(dir).ok();
}

/// The room ids of a `POST /publicRooms` page asked with `body`.
async fn listed(c: &Client, body: Value) -> Vec<String> {
    let (s, page) = c.post("/_matrix/client/v3/publicRooms", body).await;
    assert_eq!(s, 200, "{page}");
    page["chunk"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["room_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_service_keeps_room_lists_of_its_own_apart_from_the_main_one() {
    let (dir, _service, hs) = bridged_server("as-lists").await;
    let bridge = as_client(&hs);
    let bob = hs.register("bob", "bob-password-long").await;
    let room = bob
        .create_room(json!({"preset": "public_chat", "visibility": "private"}))
        .await;
    let listing = format!("/_matrix/client/v3/directory/list/appservice/irc/{room}");
    let (s, body) = bridge.put(&listing, json!({"visibility": "public"})).await;
    assert_eq!(s, 200, "{body}");
    let network = json!({"third_party_instance_id": "bridge|irc"});
    assert!(!listed(&bob, json!({})).await.contains(&room));
    assert!(listed(&bob, network.clone()).await.contains(&room));
    assert!(
        listed(&bob, json!({"include_all_networks": true}))
            .await
            .contains(&room)
    );
    assert!(
        !listed(&bob, json!({"third_party_instance_id": "bridge|other"}))
            .await
            .contains(&room)
    );
    // Only a service changes its lists.
    let (s, body) = bob.put(&listing, json!({"visibility": "public"})).await;
    assert_error(s, &body, 403, "M_FORBIDDEN");
    let (s, body) = bridge.delete(&listing).await;
    assert_eq!(s, 200, "{body}");
    assert!(!listed(&bob, network).await.contains(&room));
    std::fs::remove_dir_all(dir).ok();
}
