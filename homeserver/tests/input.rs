//! Bad input gets a clear Matrix error and changes nothing, the same on
//! SQLite and Postgres (`HEARTH_TEST_POSTGRES`): NUL characters, over-long
//! event types and state keys, query strings and paths the framework cannot
//! read, unknown endpoints, malformed push rules and key backups, canonical
//! aliases that do not point to their room. Also: concurrent createRoom
//! calls each get a room of their own, and absent fields are left out
//! rather than sent as `null`.

mod common;

use common::{Client, TestServer, assert_error, enc};
use serde_json::{Value, json};

/// A Matrix error: the status, and a JSON body with `errcode` and `error`.
#[track_caller]
fn assert_matrix_error(what: &str, s: u16, body: &Value, status: u16, errcode: &str) {
    assert_eq!(
        (s, body["errcode"].as_str()),
        (status, Some(errcode)),
        "{what}: {body}"
    );
    assert!(body["error"].is_string(), "{what}: {body}");
}

async fn joined_rooms(c: &Client) -> Vec<Value> {
    let (s, b) = c.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(s, 200, "{b}");
    b["joined_rooms"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn concurrent_create_rooms_each_get_their_own_room() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let calls = (0..8).map(|i| {
        let alice = &alice;
        async move {
            let body = if i % 2 == 0 {
                json!({"name": format!("room {i}")})
            } else {
                json!({"name": format!("room {i}"), "preset": "public_chat"})
            };
            let (s, b) = alice.post("/_matrix/client/v3/createRoom", body).await;
            (i, s, b)
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut ids = std::collections::BTreeSet::new();
    for (i, s, b) in &answers {
        assert_eq!(*s, 200, "createRoom {i}: {b}");
        let room = b["room_id"].as_str().expect("room_id").to_owned();
        let (s, name) = alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                enc(&room)
            ))
            .await;
        assert_eq!((s, name["name"].clone()), (200, json!(format!("room {i}"))));
        ids.insert(room);
    }
    assert_eq!(ids.len(), answers.len(), "every call has its own room");
}

#[tokio::test]
async fn nul_characters_are_refused_and_change_nothing() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    let r = enc(&room);
    let base = format!("/_matrix/client/v3/rooms/{r}");
    let nul_paths = [
        format!("{base}/send/m.room.message/txn%00id"),
        format!("{base}/send/m.room%00.message/txn1"),
        format!("{base}/state/m.room.topic/key%00"),
        format!("{base}/state/m.room%00.topic/"),
    ];
    for path in &nul_paths {
        let (s, b) = alice
            .put(path, json!({"body": "x", "msgtype": "m.text"}))
            .await;
        assert_matrix_error(path, s, &b, 400, "M_INVALID_PARAM");
    }
    let page = alice.messages(&room, "dir=b&limit=50").await;
    assert!(
        !page.to_string().contains("\"body\":\"x\""),
        "nothing was sent: {page}"
    );

    let (user, _) = alice.whoami().await;
    let me = &format!("/_matrix/client/v3/profile/{}/displayname", enc(&user));
    let (s, before) = alice.get(me).await;
    assert_eq!(s, 200, "{before}");
    let (s, b) = alice.put(me, json!({"displayname": "a\u{0}b"})).await;
    assert_matrix_error("displayname", s, &b, 400, "M_INVALID_PARAM");
    let (_, after) = alice.get(me).await;
    assert_eq!(before, after, "the displayname is unchanged");

    let (s, b) = alice
        .post(
            "/_matrix/client/v3/user_directory/search",
            json!({"search_term": "al\u{0}ice"}),
        )
        .await;
    assert_matrix_error("search term", s, &b, 400, "M_INVALID_PARAM");
    let (s, b) = alice.get("/_matrix/client/v3/publicRooms?server=%00").await;
    assert_matrix_error("query", s, &b, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn event_types_and_state_keys_over_255_bytes_are_refused() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    let base = format!("/_matrix/client/v3/rooms/{}", enc(&room));
    let long = "a".repeat(256);
    let longest = "a".repeat(255);
    let body = json!({"body": "x"});
    let (s, b) = alice
        .put(&format!("{base}/send/{long}/t1"), body.clone())
        .await;
    assert_matrix_error("long type", s, &b, 400, "M_INVALID_PARAM");
    let (s, b) = alice
        .put(&format!("{base}/state/m.x/{long}"), body.clone())
        .await;
    assert_matrix_error("long state key", s, &b, 400, "M_INVALID_PARAM");
    let (s, b) = alice
        .put(&format!("{base}/state/{long}/"), body.clone())
        .await;
    assert_matrix_error("long state type", s, &b, 400, "M_INVALID_PARAM");
    let (s, b) = alice
        .put(&format!("{base}/send/{longest}/t2"), body.clone())
        .await;
    assert_eq!(s, 200, "255 bytes are allowed: {b}");
    let (s, b) = alice
        .put(&format!("{base}/state/m.x/{longest}"), body)
        .await;
    assert_eq!(s, 200, "255 bytes are allowed: {b}");

    // createRoom refuses it before it creates anything.
    let before = joined_rooms(&alice).await;
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({"initial_state": [{"type": "m.x", "state_key": long, "content": {}}]}),
        )
        .await;
    assert_matrix_error("createRoom", s, &b, 400, "M_INVALID_PARAM");
    assert_eq!(before, joined_rooms(&alice).await, "no room was created");
}

#[tokio::test]
async fn framework_refusals_are_matrix_errors() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    let r = enc(&room);
    let cases = [
        (
            format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=abc"),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/_matrix/client/v3/register/available".to_owned(),
            400,
            "M_MISSING_PARAM",
        ),
        (
            format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=1&limit=2"),
            400,
            "M_INVALID_PARAM",
        ),
        (
            format!("/_matrix/client/v3/rooms/{r}/context/%FF"),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/_matrix/client/v3/sync?timeout=soon".to_owned(),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/_matrix/client/v3/no/such/endpoint".to_owned(),
            404,
            "M_UNRECOGNIZED",
        ),
    ];
    for (path, status, errcode) in &cases {
        let (s, b) = alice.get(path).await;
        assert_matrix_error(path, s, &b, *status, errcode);
    }
    let (s, b) = alice.delete("/_matrix/client/v3/createRoom").await;
    assert_matrix_error("wrong method", s, &b, 405, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn absent_fields_are_left_out() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let bob = hs.register("bob", "pw").await;
    let (s, b) = alice.get("/_matrix/client/v3/devices").await;
    assert_eq!(s, 200, "{b}");
    for device in b["devices"].as_array().expect("devices") {
        for (k, v) in device.as_object().expect("device") {
            assert!(!v.is_null(), "{k} is null: {device}");
        }
    }
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/user_directory/search",
            json!({"search_term": "bob"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let results = b["results"].as_array().expect("results");
    assert!(!results.is_empty(), "{b}");
    for user in results {
        for (k, v) in user.as_object().expect("user") {
            assert!(!v.is_null(), "{k} is null: {user}");
        }
    }
}

#[tokio::test]
async fn malformed_push_rules_and_key_backups_are_refused() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let rule = "/_matrix/client/v3/pushrules/global/override/bad";
    for condition in [
        json!({"kind": "event_match", "key": "content.body", "pattern": 5}),
        json!({"kind": "event_match", "key": 1, "pattern": "x"}),
        json!({"kind": "event_match", "key": "content.body"}),
        json!({"kind": 7}),
        json!({"kind": "contains_display_name", "pattern": 5}),
        json!({"kind": "room_member_count", "is": 2}),
        json!({}),
    ] {
        let (s, b) = alice
            .put(
                rule,
                json!({"actions": ["notify"], "conditions": [condition]}),
            )
            .await;
        assert_eq!(s, 400, "{condition}: {b}");
        assert!(b["errcode"].is_string(), "{b}");
    }
    let (s, b) = alice.get(rule).await;
    assert_error(s, &b, 404, "M_NOT_FOUND");
    let (s, b) = alice
        .put(
            rule,
            json!({"actions": ["notify"], "conditions": [
                {"kind": "event_match", "key": "content.body", "pattern": "x"}]}),
        )
        .await;
    assert_eq!(s, 200, "a well-formed rule is kept: {b}");

    let backup = "/_matrix/client/v3/room_keys/version";
    let (s, b) = alice
        .post(backup, json!({"algorithm": "m.unknown", "auth_data": {}}))
        .await;
    assert_matrix_error("algorithm", s, &b, 400, "M_INVALID_PARAM");
    let (s, b) = alice.get(backup).await;
    assert_error(s, &b, 404, "M_NOT_FOUND");
    let (s, b) = alice
        .post(
            backup,
            json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                   "auth_data": {"public_key": "abc"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn canonical_aliases_must_point_to_the_room() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({"room_alias_name": "home"})).await;
    let other = alice
        .create_room(json!({"room_alias_name": "elsewhere"}))
        .await;
    assert_ne!(room, other);
    let (user, _) = alice.whoami().await;
    let server = user.split_once(':').expect("server name").1.to_owned();
    let a = |local: &str| format!("#{local}:{server}");
    let state = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias/",
        enc(&room)
    );
    let (s, b) = alice.get(&state).await;
    assert_eq!((s, &b["alias"]), (200, &json!(a("home"))), "{b}");
    let present = json!({"alias": a("home"), "alt_aliases": [a("home")]});
    let (s, b) = alice.put(&state, present.clone()).await;
    assert_eq!(s, 200, "present aliases: {b}");
    for (content, errcode) in [
        (
            json!({"alias": a("home"), "alt_aliases": [a("missing")]}),
            "M_BAD_ALIAS",
        ),
        (json!({"alias": a("elsewhere")}), "M_BAD_ALIAS"),
        (
            json!({"alias": a("home"), "alt_aliases": [format!("%home:{server}")]}),
            "M_INVALID_PARAM",
        ),
    ] {
        let (s, b) = alice.put(&state, content.clone()).await;
        assert_matrix_error(&content.to_string(), s, &b, 400, errcode);
    }
    let (_, b) = alice.get(&state).await;
    assert_eq!(b, present, "the refused contents changed nothing");
}
