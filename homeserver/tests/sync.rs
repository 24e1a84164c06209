//! /sync as clients rely on it (issue 17, found by SyTest's tests/31sync):
//! a user's own leave, member updates, lazy-loaded members and the order in
//! which a timeline filter and its limit apply.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer, assert_error, enc, next_batch};
use serde_json::{Value, json};

/// The types of a sync section's events.
fn types(events: &Value) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The state keys of the member events among a sync section's events.
fn members(events: &Value) -> Vec<String> {
    let mut out: Vec<String> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    out.sort();
    out
}

async fn leave(c: &Client, room: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/leave", enc(room));
    let (s, b) = c.post(&path, json!({})).await;
    assert_eq!(s, 200, "leave: {b}");
}

async fn put_state(c: &Client, room: &str, kind: &str, key: &str, content: Value) {
    let path = format!("/_matrix/client/v3/rooms/{}/state/{kind}/{key}", enc(room));
    let (s, b) = c.put(&path, content).await;
    assert_eq!(s, 200, "state {kind}: {b}");
}

async fn membership_action(c: &Client, room: &str, action: &str, user: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/{action}", enc(room));
    let (s, b) = c.post(&path, json!({"user_id": user})).await;
    assert_eq!(s, 200, "{action}: {b}");
}

/// The section of a left room: its timeline holds only what happened after
/// `since`, ending with the user's own membership change.
fn assert_left_with(sync: &Value, room: &str, membership: &str, before: &[&str]) {
    let left = &sync["rooms"]["leave"][room];
    let events = left["timeline"]["events"].as_array().expect("timeline");
    let last = events.last().expect("the leave in the timeline");
    assert_eq!(last["type"], "m.room.member", "{left}");
    assert_eq!(last["content"]["membership"], membership, "{left}");
    let bodies: Vec<&str> = events
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, before, "only events after since: {left}");
    assert!(
        !types(&left["timeline"]["events"]).contains(&"m.room.create".to_owned()),
        "since is respected: {left}"
    );
    // The timeline is complete since `since`: no state to add (none that
    // says the user is still joined).
    assert_eq!(left["timeline"]["limited"], false, "{left}");
    assert_eq!(left["state"]["events"], json!([]), "{left}");
}

#[tokio::test]
async fn an_own_leave_kick_or_ban_ends_the_left_rooms_incremental_timeline() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let bob = hs.register("bob", "pw").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let (bob_id, _) = bob.whoami().await;
    let since = next_batch(&bob.sync("timeout=0").await);
    alice.send_text(&room, "b1", "before").await;
    leave(&bob, &room).await;
    alice.send_text(&room, "a1", "after").await;
    let sync = bob.sync(&format!("timeout=0&since={since}")).await;
    assert_left_with(&sync, &room, "leave", &["before"]);

    // /messages of a left room ends with the user's own leave.
    let page = bob.messages(&room, "dir=b&limit=5").await;
    assert_eq!(page["chunk"][0]["type"], "m.room.member", "{page}");
    assert_eq!(page["chunk"][0]["state_key"], json!(bob_id), "{page}");
    assert_eq!(page["chunk"][0]["content"]["membership"], "leave");

    // Kicked, then banned: the same.
    bob.join(&room).await;
    let since = next_batch(&bob.sync("timeout=0").await);
    membership_action(&alice, &room, "kick", &bob_id).await;
    let sync = bob.sync(&format!("timeout=0&since={since}")).await;
    assert_left_with(&sync, &room, "leave", &[]);

    bob.join(&room).await;
    let since = next_batch(&bob.sync("timeout=0").await);
    alice.send_text(&room, "b2", "just before").await;
    membership_action(&alice, &room, "ban", &bob_id).await;
    let sync = bob.sync(&format!("timeout=0&since={since}")).await;
    assert_left_with(&sync, &room, "ban", &["just before"]);
}

#[tokio::test]
async fn a_leave_under_joined_history_visibility_is_seen_by_the_leaver() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    let hv = json!({"history_visibility": "joined"});
    put_state(&alice, &room, "m.room.history_visibility", "", hv).await;
    let since = next_batch(&alice.sync("timeout=0").await);
    leave(&alice, &room).await;
    let sync = alice.sync(&format!("timeout=0&since={since}")).await;
    let left = &sync["rooms"]["leave"][&room];
    assert_eq!(
        types(&left["timeline"]["events"]),
        ["m.room.member"],
        "{left}"
    );
    assert_eq!(
        left["timeline"]["events"][0]["content"]["membership"],
        "leave"
    );
}

#[tokio::test]
async fn a_long_poll_is_woken_by_the_users_own_leave() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    let since = next_batch(&alice.sync("timeout=0").await);
    let poller = alice.clone();
    let started = Instant::now();
    let poll =
        tokio::spawn(async move { poller.sync(&format!("timeout=20000&since={since}")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    leave(&alice, &room).await;
    let sync = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long-poll returns at the leave")
        .expect("poll task");
    assert!(started.elapsed() < Duration::from_secs(10));
    let timeline = &sync["rooms"]["leave"][&room]["timeline"]["events"];
    assert_eq!(types(timeline), ["m.room.member"], "{sync}");
}

#[tokio::test]
async fn a_displayname_change_does_not_resend_the_room() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let (alice_id, _) = alice.whoami().await;
    let room = alice.create_room(json!({})).await;
    let since = next_batch(&alice.sync("timeout=0").await);
    let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id));
    let (s, b) = alice.put(&path, json!({"displayname": "Alice A."})).await;
    assert_eq!(s, 200, "{b}");
    alice.send_text(&room, "m1", "hello").await;
    let sync = alice.sync(&format!("timeout=0&since={since}")).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(
        types(&joined["timeline"]["events"]),
        ["m.room.member", "m.room.message"],
        "{joined}"
    );
    assert_eq!(joined["timeline"]["limited"], false);
    assert_eq!(
        joined["timeline"]["events"][0]["content"]["displayname"],
        "Alice A."
    );
    assert_eq!(types(&joined["state"]["events"]), Vec::<String>::new());
}

#[tokio::test]
async fn lazy_loading_sends_a_new_senders_member_event() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let bob = hs.register("bob", "pw").await;
    let (bob_id, _) = bob.whoami().await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    for i in 0..12 {
        alice.send_text(&room, &format!("f{i}"), "filler").await;
    }
    let filter = enc(&json!({"room": {"state": {"lazy_load_members": true},
                                      "timeline": {"limit": 5}}})
    .to_string());
    let first = alice.sync(&format!("timeout=0&filter={filter}")).await;
    let state = &first["rooms"]["join"][&room]["state"]["events"];
    assert!(
        !members(state).contains(&bob_id),
        "bob has not spoken: {state}"
    );
    let since = next_batch(&first);
    bob.send_text(&room, "b1", "hi from bob").await;
    let sync = alice
        .sync(&format!("timeout=0&filter={filter}&since={since}"))
        .await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(types(&joined["timeline"]["events"]), ["m.room.message"]);
    assert_eq!(members(&joined["state"]["events"]), [bob_id], "{joined}");
}

#[tokio::test]
async fn a_timeline_limit_applies_after_the_type_filter() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "m1", "the message").await;
    for i in 0..12 {
        put_state(
            &alice,
            &room,
            "org.example.s",
            &format!("k{i}"),
            json!({"i": i}),
        )
        .await;
    }
    let filter = |f: Value| enc(&json!({"room": {"timeline": f}}).to_string());
    let one = filter(json!({"limit": 1, "types": ["m.room.message"]}));
    let sync = alice.sync(&format!("timeout=0&filter={one}")).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        timeline["events"].as_array().map(Vec::len),
        Some(1),
        "{timeline}"
    );
    assert_eq!(timeline["events"][0]["content"]["body"], "the message");
    assert_eq!(timeline["limited"], false, "no other message: {timeline}");

    let none = filter(json!({"limit": 0}));
    let sync = alice.sync(&format!("timeout=0&filter={none}")).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["events"], json!([]), "{timeline}");
    assert_eq!(timeline["limited"], true, "{timeline}");
}

#[tokio::test]
async fn invalid_filters_are_refused() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let (alice_id, _) = alice.whoami().await;
    let path = format!("/_matrix/client/v3/user/{}/filter", enc(&alice_id));
    let bad = [
        json!({"room": {"state": {"lazy_load_members": "true"}}}),
        json!({"room": {"state": {"lazy_load_members": 1}}}),
        json!({"room": {"state": {"include_redundant_members": "true"}}}),
        json!({"room": {"timeline": {"types": "m.room.message"}}}),
        json!({"room": {"timeline": {"limit": "ten"}}}),
        json!({"room": {"timeline": {"not_senders": [1]}}}),
        json!({"room": {"include_leave": "yes"}}),
        json!({"room": {"rooms": "!a:b"}}),
        json!({"room": {"rooms": ["not_a_room_id"]}}),
        json!({"room": {"timeline": {"rooms": ["not_a_room_id"]}}}),
        json!({"room": {"timeline": {"senders": ["not_a_sender_id"]}}}),
        json!({"presence": {"types": {}}}),
        json!({"event_fields": [1]}),
    ];
    for f in bad {
        let (s, b) = alice.post(&path, f.clone()).await;
        assert_error(s, &b, 400, "M_BAD_JSON");
        let inline = enc(&f.to_string());
        let (s, b) = alice
            .get(&format!(
                "/_matrix/client/v3/sync?timeout=0&filter={inline}"
            ))
            .await;
        assert_error(s, &b, 400, "M_BAD_JSON");
    }
    let good = json!({"room": {"state": {"lazy_load_members": true},
                               "timeline": {"limit": 3, "types": ["m.*"]}}});
    let (s, b) = alice.post(&path, good).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_gapped_lazy_loading_sync_sends_the_gaps_members_and_the_senders() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let bob = hs.register("bob", "pw").await;
    let carol = hs.register("carol", "pw").await;
    let dave = hs.register("dave", "pw").await;
    let (carol_id, _) = carol.whoami().await;
    let (dave_id, _) = dave.whoami().await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    carol.join(&room).await;
    for i in 0..10 {
        bob.send_text(&room, &format!("b{i}"), "filler").await;
    }
    let filter = enc(&json!({"room": {"state": {"lazy_load_members": true},
                                      "timeline": {"limit": 5}}})
    .to_string());
    let since = next_batch(&alice.sync(&format!("timeout=0&filter={filter}")).await);
    // Dave joins in the gap and says nothing; carol speaks after it.
    dave.join(&room).await;
    for i in 0..10 {
        carol.send_text(&room, &format!("c{i}"), "filler").await;
    }
    let sync = alice
        .sync(&format!("timeout=0&filter={filter}&since={since}"))
        .await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true, "{joined}");
    assert_eq!(
        members(&joined["state"]["events"]),
        [carol_id, dave_id],
        "{joined}"
    );

    // Sent once: carol's next message brings no member event again.
    let since = next_batch(&sync);
    carol.send_text(&room, "again", "more").await;
    let sync = alice
        .sync(&format!("timeout=0&filter={filter}&since={since}"))
        .await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(
        types(&joined["state"]["events"]),
        Vec::<String>::new(),
        "{joined}"
    );
}

/// `m.heroes` name rooms that have no name: a room with `m.room.name` (or a
/// canonical alias) is summarised by its counts alone (SyTest
/// 16room-summary; the spec requires heroes only for unnamed rooms).
#[tokio::test]
async fn only_unnamed_rooms_get_heroes_in_their_summary() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let bob = hs.register("bob", "pw").await;
    let (bob_id, _) = bob.whoami().await;
    let named = alice
        .create_room(json!({"name": "Named", "invite": [bob_id]}))
        .await;
    let unnamed = alice.create_room(json!({"invite": [bob_id]})).await;
    let sync = alice.sync("timeout=0").await;
    let summary = |room: &str| sync["rooms"]["join"][room]["summary"].clone();
    let named_summary = summary(&named);
    assert_eq!(named_summary["m.joined_member_count"], 1, "{named_summary}");
    assert_eq!(
        named_summary["m.invited_member_count"], 1,
        "{named_summary}"
    );
    assert!(named_summary.get("m.heroes").is_none(), "{named_summary}");
    let unnamed_summary = summary(&unnamed);
    assert_eq!(
        unnamed_summary["m.heroes"],
        json!([bob_id]),
        "{unnamed_summary}"
    );
}
