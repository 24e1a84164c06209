//! The push-rule and pusher endpoints, and what a push carries, as SyTest
//! (`tests/61push/`) and Synapse-era clients expect them, against a real
//! Hearth process.
// The lock policy (parking_lot) is for the server; a test's own
// bookkeeping may use std's locks.
#![allow(clippy::disallowed_types)]

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, routing::post};
use common::{Client, TestServer, assert_error, enc};
use reqwest::Method;
use serde_json::{Value, json};

const RULES: &str = "/_matrix/client/v3/pushrules";

/// The ids of the user's rules of `kind`, as `GET /pushrules/global/{kind}/`
/// lists them.
async fn kind_ids(c: &Client, kind: &str) -> Vec<String> {
    let (s, b) = c.get(&format!("{RULES}/global/{kind}/")).await;
    assert_eq!(s, 200, "{kind} rules: {b}");
    b.as_array()
        .unwrap_or_else(|| panic!("{kind} rules are not a list: {b}"))
        .iter()
        .filter_map(|r| r["rule_id"].as_str().map(str::to_owned))
        .collect()
}

async fn put_rule(c: &Client, path: &str, body: Value) {
    let (s, b) = c.put(&format!("{RULES}/global/{path}"), body).await;
    assert_eq!(s, 200, "PUT {path}: {b}");
}

#[tokio::test]
async fn room_rules_take_any_id_and_each_kind_is_listed() {
    let server = TestServer::start(&[]).await;
    let bob = server.register("bob", "password-b").await;
    let notify = || json!({"actions": ["notify"]});

    // SyTest's room rule: an alias-like id, accepted as Synapse accepts it.
    let spam = enc("#spam:example.com");
    put_rule(&bob, &format!("room/{spam}"), notify()).await;
    let (s, rule) = bob.get(&format!("{RULES}/global/room/{spam}")).await;
    assert_eq!(s, 200, "{rule}");
    assert_eq!(
        rule,
        json!({"rule_id": "#spam:example.com", "actions": ["notify"], "enabled": true, "default": false})
    );
    let (_, b) = bob
        .get(&format!("{RULES}/global/room/{spam}/enabled"))
        .await;
    assert_eq!(b, json!({"enabled": true}));
    let (_, b) = bob
        .get(&format!("{RULES}/global/room/{spam}/actions"))
        .await;
    assert_eq!(b, json!({"actions": ["notify"]}));
    // Listed under its kind, in the scope, and in the whole ruleset.
    assert_eq!(kind_ids(&bob, "room").await, ["#spam:example.com"]);
    let (_, scope) = bob.get(&format!("{RULES}/global/")).await;
    assert_eq!(scope["room"][0]["rule_id"], "#spam:example.com", "{scope}");
    let (_, all) = bob.get(&format!("{RULES}/")).await;
    assert_eq!(all["global"], scope);
    assert!(
        kind_ids(&bob, "override")
            .await
            .contains(&".m.rule.master".to_owned())
    );
    assert_eq!(kind_ids(&bob, "sender").await, Vec::<String>::new());

    // New rules come first; `before`/`after` place them among room rules of
    // either sort of id.
    let room = bob.create_room(json!({})).await;
    put_rule(&bob, &format!("room/{}", enc("#a:example.com")), notify()).await;
    put_rule(&bob, &format!("room/{}", enc(&room)), notify()).await;
    put_rule(
        &bob,
        &format!("room/{}?after={}", enc("#b:example.com"), enc(&room)),
        notify(),
    )
    .await;
    assert_eq!(
        kind_ids(&bob, "room").await,
        [
            room.as_str(),
            "#b:example.com",
            "#a:example.com",
            "#spam:example.com"
        ]
    );
    let (s, _) = bob
        .put(
            &format!("{RULES}/global/room/{spam}/enabled"),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = bob
        .put(
            &format!("{RULES}/global/room/{spam}/actions"),
            json!({"actions": ["dont_notify"]}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, rule) = bob.get(&format!("{RULES}/global/room/{spam}")).await;
    assert_eq!(
        (&rule["enabled"], &rule["actions"]),
        (&json!(false), &json!(["dont_notify"]))
    );
    // Clients read the same rules from sync's account data.
    let first = bob.sync("").await;
    let rules = first["account_data"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "m.push_rules")
        .unwrap_or_else(|| panic!("no m.push_rules in {first}"));
    assert_eq!(rules["content"]["global"]["room"], scope_room(&bob).await);

    let (s, _) = bob.delete(&format!("{RULES}/global/room/{spam}")).await;
    assert_eq!(s, 200);
    let (s, b) = bob.get(&format!("{RULES}/global/room/{spam}")).await;
    assert_error(s, &b, 404, "M_NOT_FOUND");
    assert_eq!(kind_ids(&bob, "room").await.len(), 3);

    // Still refused: server-default ids, and kinds or scopes that do not exist.
    let (s, b) = bob
        .put(&format!("{RULES}/global/room/{}", enc(".m.x")), notify())
        .await;
    assert_error(s, &b, 400, "M_INVALID_PARAM");
    let (s, b) = bob
        .put(
            &format!("{RULES}/global/room/{}", enc("#my_room:example.com")),
            json!({"actions": ["not_an_action"]}),
        )
        .await;
    assert_error(s, &b, 400, "M_INVALID_PARAM");
    let (s, b) = bob.get(&format!("{RULES}/global/not_a_kind/")).await;
    assert_error(s, &b, 400, "M_INVALID_PARAM");
    let (s, b) = bob.get(&format!("{RULES}/device/room/")).await;
    assert_error(s, &b, 400, "M_INVALID_PARAM");
}

async fn scope_room(c: &Client) -> Value {
    c.get(&format!("{RULES}/global/")).await.1["room"].clone()
}

/// Paths that name no push-rule resource are refused with 400 (SyTest
/// `61push/80torture.pl`), not 404/405; `GET /pushrules` (no slash) is
/// unknown.
#[tokio::test]
async fn malformed_push_rule_paths_are_refused() {
    let server = TestServer::start(&[]).await;
    let bob = server.register("bob", "password-b").await;
    let (get, put) = (Method::GET, Method::PUT);
    let on = || Some(json!({"enabled": true}));
    let cases = [
        (&put, "/", on()),
        (&put, "/global", on()),
        (&put, "/global/room", on()),
        (&put, "/global/room/", on()),
        (&put, "/global/override/.m.rule.master/not_an_attr", on()),
        (&get, "/global", None),
        (&get, "/global/room", None),
        (&get, "/global/not_a_template/", None),
        (&get, "/global/override/.m.rule.master/not_an_attr", None),
        (&get, "/not_a_scope/", None),
    ];
    for (method, path, body) in cases {
        let (s, b) = bob
            .request(method.clone(), &format!("{RULES}{path}"), body)
            .await;
        assert_eq!(s, 400, "{method} {path}: {b}");
        assert!(b["errcode"].is_string(), "{method} {path}: {b}");
    }
    let (s, b) = bob.get(RULES).await;
    assert_error(s, &b, 404, "M_UNRECOGNIZED");
    // Without a token, still 401 first.
    let (s, b) = server
        .client()
        .put(&format!("{RULES}/global"), json!({}))
        .await;
    assert_error(s, &b, 401, "M_MISSING_TOKEN");
}

/// A push gateway that records every body it takes.
async fn gateway() -> (String, Arc<Mutex<Vec<Value>>>) {
    let taken: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = Router::new()
        .route(
            "/_matrix/push/v1/notify",
            post(
                |State(t): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>| async move {
                    t.lock().expect("lock").push(body["notification"].clone());
                    Json(json!({"rejected": []}))
                },
            ),
        )
        .with_state(taken.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind gateway");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/_matrix/push/v1/notify"), taken)
}

/// Waits (up to 30 s) for a pushed notification satisfying `ok`.
async fn pushed(taken: &Mutex<Vec<Value>>, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(n) = taken.lock().expect("lock").iter().find(|n| ok(n)) {
            return n.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no matching push; got {:?}",
            taken.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn user_id(c: &Client) -> String {
    c.whoami().await.0
}

/// SyTest's pusher (`61push/06_get_pusher.pl`, `01message-pushed.pl`): a
/// format of its own, which the spec leaves open, is kept and listed back,
/// and gets the full event; pushes carry `id`, the invite's `membership`,
/// and the room's name or else its canonical alias.
#[tokio::test]
async fn pushers_of_any_format_get_full_pushes_naming_the_room() {
    let (url, taken) = gateway().await;
    let server = TestServer::start(&["--push-coalesce-ms", "0"]).await;
    let alice = server.register("alice", "password-a").await;
    let bob = server.register("bob", "password-b").await;
    let pusher = json!({
        "profile_tag": "tag", "kind": "http", "app_id": "sytest",
        "app_display_name": "SyTest", "device_display_name": "A testing machine",
        "pushkey": "This is my pushkey", "lang": "en",
        "data": {"testcustom": "custom", "url": url, "format": "id_event_only"}
    });
    let (s, b) = alice.post("/_matrix/client/v3/pushers/set", pusher).await;
    assert_eq!(s, 200, "{b}");
    let (_, b) = alice.get("/_matrix/client/v3/pushers").await;
    assert_eq!(b["pushers"][0]["data"]["format"], "id_event_only", "{b}");
    assert_eq!(b["pushers"][0]["data"]["testcustom"], "custom", "{b}");

    // An invite: the full event, with whose membership it is.
    let alice_id = user_id(&alice).await;
    let room = bob.create_room(json!({"invite": [alice_id]})).await;
    let n = pushed(&taken, |n| {
        n["room_id"] == room.as_str() && n["type"] == "m.room.member"
    })
    .await;
    assert_eq!(n["id"], n["event_id"], "{n}");
    assert_eq!(n["membership"], "invite", "{n}");
    assert_eq!(n["user_is_target"], true, "{n}");
    assert_eq!(n["sender"], user_id(&bob).await, "{n}");
    assert_eq!(n["content"]["membership"], "invite", "{n}");
    assert_eq!(n["devices"][0]["data"]["format"], "id_event_only", "{n}");
    alice.join(&room).await;

    // Named by its canonical alias while it has no name.
    let alias = format!(
        "#pushed:{}",
        alice_id.split_once(':').map_or("", |(_, s)| s)
    );
    let (s, b) = bob
        .put(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            json!({"room_id": room}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let state = |kind: &str| format!("/_matrix/client/v3/rooms/{}/state/{kind}", enc(&room));
    let (s, b) = bob
        .put(&state("m.room.canonical_alias"), json!({"alias": alias}))
        .await;
    assert_eq!(s, 200, "{b}");
    let first = bob.send_text(&room, "m1", "hello").await;
    let n = pushed(&taken, |n| n["event_id"] == first.as_str()).await;
    assert_eq!(
        (&n["room_name"], &n["room_alias"]),
        (&json!(alias), &json!(alias)),
        "{n}"
    );
    assert_eq!(n["id"], first, "{n}");
    assert_eq!(n["content"]["body"], "hello", "{n}");
    assert!(n.get("membership").is_none(), "{n}");

    // A name, once set, is the room's name in pushes.
    let (s, b) = bob
        .put(&state("m.room.name"), json!({"name": "Test Name"}))
        .await;
    assert_eq!(s, 200, "{b}");
    let second = bob.send_text(&room, "m2", "named").await;
    let n = pushed(&taken, |n| n["event_id"] == second.as_str()).await;
    assert_eq!(
        (&n["room_name"], &n["room_alias"]),
        (&json!("Test Name"), &json!(alias)),
        "{n}"
    );
}
