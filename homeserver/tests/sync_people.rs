//! What sync tells a user about other people, against a real Hearth process:
//! presence (their own, and that of members they newly share a room with),
//! device-list changes (`device_lists` and `/keys/changes`) and ignored users
//! (`m.ignored_user_list`).

mod common;

use common::{Client, TestServer, enc, next_batch};
use serde_json::{Value, json};

async fn user_id(c: &Client) -> String {
    c.whoami().await.0
}

async fn set_presence(c: &Client, presence: &str, status: &str) {
    let me = user_id(c).await;
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&me));
    let (s, b) = c
        .put(&path, json!({"presence": presence, "status_msg": status}))
        .await;
    assert_eq!(s, 200, "presence: {b}");
}

/// The `m.presence` events of a sync answer, by sender.
fn presence_of<'a>(sync: &'a Value, user: &str) -> Option<&'a Value> {
    sync["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["sender"] == user)
}

async fn ignore(c: &Client, whom: &str) {
    let me = user_id(c).await;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
        enc(&me)
    );
    let (s, b) = c.put(&path, json!({"ignored_users": {whom: {}}})).await;
    assert_eq!(s, 200, "ignore: {b}");
}

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_user_in_no_room_sees_their_own_presence() {
    let server = TestServer::start(&[]).await;
    let alice = server.register("alice", "password-a").await;
    let me = user_id(&alice).await;
    set_presence(&alice, "online", "busy").await;
    let first = alice.sync("timeout=0").await;
    let own = presence_of(&first, &me).unwrap_or_else(|| panic!("no own presence: {first}"));
    assert_eq!(own["content"]["status_msg"], "busy", "{own}");
    // A change shows in the next incremental sync too.
    set_presence(&alice, "unavailable", "away").await;
    let next = alice
        .sync(&format!("timeout=0&since={}", next_batch(&first)))
        .await;
    let own = presence_of(&next, &me).unwrap_or_else(|| panic!("no own presence: {next}"));
    assert_eq!(own["content"]["presence"], "unavailable", "{own}");
}

#[tokio::test]
async fn a_newly_joined_member_brings_their_presence() {
    let server = TestServer::start(&[]).await;
    let alice = server.register("alice", "password-a").await;
    let bob = server.register("bob", "password-b").await;
    let bob_id = user_id(&bob).await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    set_presence(&bob, "online", "hello").await;
    let first = alice.sync("timeout=0").await;
    assert!(presence_of(&first, &bob_id).is_none(), "{first}");
    // Bob's presence does not change, but alice now shares a room with him.
    let since = next_batch(&first);
    let mid = alice.sync(&format!("timeout=0&since={since}")).await;
    bob.join(&room).await;
    let next = alice
        .sync(&format!("timeout=0&since={}", next_batch(&mid)))
        .await;
    let p = presence_of(&next, &bob_id).unwrap_or_else(|| panic!("no presence of bob: {next}"));
    assert_eq!(p["content"]["status_msg"], "hello", "{p}");
}

#[tokio::test]
async fn invites_and_messages_from_ignored_users_are_left_out() {
    let server = TestServer::start(&[]).await;
    let alice = server.register("alice", "password-a").await;
    let bob = server.register("bob", "password-b").await;
    let carol = server.register("carol", "password-c").await;
    let (alice_id, bob_id) = (user_id(&alice).await, user_id(&bob).await);
    let shared = carol.create_room(json!({"preset": "public_chat"})).await;
    alice.join(&shared).await;
    bob.join(&shared).await;
    let first = alice.sync("timeout=0").await;
    ignore(&alice, &bob_id).await;

    // An invite from bob: not shown, neither incrementally nor in a full sync.
    let from_bob = bob.create_room(json!({"invite": [alice_id]})).await;
    let incremental = alice
        .sync(&format!("timeout=0&since={}", next_batch(&first)))
        .await;
    assert!(
        incremental["rooms"]["invite"].get(&from_bob).is_none(),
        "{incremental}"
    );
    let full = alice.sync("timeout=0").await;
    assert!(full["rooms"]["invite"].get(&from_bob).is_none(), "{full}");
    // Another's invite still is.
    let from_carol = carol.create_room(json!({"invite": [alice_id]})).await;
    let full = alice.sync("timeout=0").await;
    assert!(full["rooms"]["invite"].get(&from_carol).is_some(), "{full}");

    // Bob's messages are left out; carol's come; bob's state events still do.
    let since = next_batch(&full);
    bob.send_text(&shared, "b1", "from bob").await;
    let only_bob = alice.sync(&format!("timeout=0&since={since}")).await;
    assert!(
        only_bob["rooms"]["join"].get(&shared).is_none(),
        "{only_bob}"
    );
    carol.send_text(&shared, "c1", "from carol").await;
    // A new display name: bob's member event, a state event.
    let (s, b) = bob
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob_id)),
            json!({"displayname": "Bobby"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let next = alice
        .sync(&format!("timeout=0&since={}", next_batch(&only_bob)))
        .await;
    assert_eq!(timeline_bodies(&next, &shared), ["from carol"], "{next}");
    let renamed = next["rooms"]["join"][&shared]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["type"] == "m.room.member" && e["content"]["displayname"] == "Bobby");
    assert!(renamed, "{next}");
    let full = alice.sync("timeout=0").await;
    assert_eq!(timeline_bodies(&full, &shared), ["from carol"], "{full}");
}

async fn key_changes(c: &Client, from: &str, to: &str) -> Value {
    let (s, b) = c
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={from}&to={to}"
        ))
        .await;
    assert_eq!(s, 200, "keys/changes: {b}");
    b
}

fn lists(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect()
}

async fn login_again(server: &TestServer, user: &str, password: &str) {
    let (s, b) = server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
        .await;
    assert_eq!(s, 200, "login: {b}");
}

#[tokio::test]
async fn device_lists_follow_unencrypted_rooms_joins_leaves_and_new_devices() {
    let server = TestServer::start(&[]).await;
    let alice = server.register("alice", "password-a").await;
    let bob = server.register("bob", "password-b").await;
    let (alice_id, bob_id) = (user_id(&alice).await, user_id(&bob).await);
    // An unencrypted room.
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let start = next_batch(&alice.sync("timeout=0").await);

    // Bob joins: he is news to alice in /keys/changes as in sync.
    bob.join(&room).await;
    let after_join = alice.sync(&format!("timeout=0&since={start}")).await;
    assert!(
        lists(&after_join["device_lists"], "changed").contains(&bob_id),
        "{after_join}"
    );
    let joined = next_batch(&after_join);
    let changes = key_changes(&alice, &start, &joined).await;
    assert!(lists(&changes, "changed").contains(&bob_id), "{changes}");

    // Bob logs in on a new device (no keys yet): alice and bob himself hear.
    let bob_since = next_batch(&bob.sync("timeout=0").await);
    login_again(&server, "bob", "password-b").await;
    let after_login = alice.sync(&format!("timeout=0&since={joined}")).await;
    assert!(
        lists(&after_login["device_lists"], "changed").contains(&bob_id),
        "{after_login}"
    );
    let own = bob.sync(&format!("timeout=0&since={bob_since}")).await;
    assert!(
        lists(&own["device_lists"], "changed").contains(&bob_id),
        "{own}"
    );
    let logged_in = next_batch(&after_login);
    let changes = key_changes(&alice, &joined, &logged_in).await;
    assert!(lists(&changes, "changed").contains(&bob_id), "{changes}");

    // Bob leaves the only room they shared: "left" in both.
    let (s, b) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let after_leave = alice.sync(&format!("timeout=0&since={logged_in}")).await;
    assert!(
        lists(&after_leave["device_lists"], "left").contains(&bob_id),
        "{after_leave}"
    );
    let changes = key_changes(&alice, &logged_in, &next_batch(&after_leave)).await;
    assert!(lists(&changes, "left").contains(&bob_id), "{changes}");
    assert!(!lists(&changes, "changed").contains(&alice_id), "{changes}");
}
