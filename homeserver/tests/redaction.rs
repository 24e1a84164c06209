//! Who may redact what, through the routes other than `/redact`: a
//! member without the room's `redact` power redacts only their own events,
//! however the redaction is sent (Synapse's answers: 403 for another's
//! event or the create event, 404 for an unknown one, 400 for another
//! room's). The WebSocket and application-service routes are in their own
//! files; redactions from other servers in federation.rs.

mod common;

use common::{Client, TestServer, enc};
use serde_json::{Value, json};

/// A redaction sent as any event is, through `/send` (the way a client or
/// bot library sends one when it does not use `/redact`).
async fn send_redaction(c: &Client, room: &str, txn: &str, target: &str) -> (u16, Value) {
    c.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.redaction/{txn}",
            enc(room)
        ),
        json!({"redacts": target, "reason": "test"}),
    )
    .await
}

/// The room's create event id.
async fn create_event_id(c: &Client, room: &str) -> String {
    let (s, state) = c
        .get(&format!("/_matrix/client/v3/rooms/{}/state", enc(room)))
        .await;
    assert_eq!(s, 200, "{state}");
    state
        .as_array()
        .expect("state")
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .and_then(|e| e["event_id"].as_str())
        .expect("create event")
        .to_owned()
}

async fn assert_not_redacted(c: &Client, room: &str, id: &str, body: &str) {
    let content = c.content_of(room, id).await;
    assert_eq!(content["body"], body, "redacted: {content}");
}

async fn assert_redacted(c: &Client, room: &str, id: &str) {
    let content = c.content_of(room, id).await;
    assert_eq!(content, json!({}), "not redacted: {content}");
}

#[tokio::test]
async fn a_member_without_power_redacts_only_their_own_events_through_send() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw-alice-long").await;
    let bob = hs.register("bob", "pw-bob-long").await;
    // Before v11 `redacts` sits at the top level, from v11 in content.
    for version in ["10", "12"] {
        let room = alice
            .create_room(json!({"preset": "public_chat", "room_version": version}))
            .await;
        bob.join(&room).await;
        let alices = alice.send_text(&room, "a1", "alice's words").await;
        let bobs = bob.send_text(&room, "b1", "bob's words").await;
        let bobs_second = bob.send_text(&room, "b2", "bob again").await;

        // Bob (power 0) may not redact alice's event: 403, and it stays.
        let (s, body) = send_redaction(&bob, &room, "r1", &alices).await;
        assert_eq!(s, 403, "v{version}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
        assert_not_redacted(&alice, &room, &alices, "alice's words").await;
        // Nor with `/redact`: the same rule.
        let (s, body) = bob
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/r2",
                    enc(&room),
                    enc(&alices)
                ),
                json!({}),
            )
            .await;
        assert_eq!(s, 403, "v{version}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
        // A `redacts` key on another event type redacts nothing.
        let (s, body) = bob
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/m1",
                    enc(&room)
                ),
                json!({"msgtype": "m.text", "body": "sneaky", "redacts": alices}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        assert_not_redacted(&alice, &room, &alices, "alice's words").await;
        // An event not known here: 404 for a member without power.
        let (s, body) = send_redaction(&bob, &room, "r3", "$nosuchevent").await;
        assert_eq!(s, 404, "v{version}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");

        // His own event he may redact.
        let (s, body) = send_redaction(&bob, &room, "r4", &bobs).await;
        assert_eq!(s, 200, "v{version}: {body}");
        assert_redacted(&alice, &room, &bobs).await;

        // Alice (power 100) may redact bob's event…
        let (s, body) = send_redaction(&alice, &room, "r5", &bobs_second).await;
        assert_eq!(s, 200, "v{version}: {body}");
        assert_redacted(&bob, &room, &bobs_second).await;
        // …but not the create event.
        let create = create_event_id(&alice, &room).await;
        let (s, body) = send_redaction(&alice, &room, "r6", &create).await;
        assert_eq!(s, 403, "v{version}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
        // Nor an event of another room.
        let other = alice.create_room(json!({"preset": "private_chat"})).await;
        let elsewhere = alice.send_text(&other, "o1", "elsewhere").await;
        let (s, body) = send_redaction(&alice, &room, "r7", &elsewhere).await;
        assert!(s == 400 || s == 404, "v{version}: {s} {body}");
        assert_not_redacted(&alice, &other, &elsewhere, "elsewhere").await;
    }
}

/// The forms without a transaction id (`POST .../send/{type}`, `POST
/// .../redact/{event}`), in rooms of every version Hearth creates: each
/// request is a new event, and the redacted event names its redaction by
/// the spec's `redacted_because` and Synapse's `redacted_by`.
#[tokio::test]
async fn untracked_sends_and_redactions_work_in_every_room_version() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw-alice-long").await;
    for version in ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
        let room = alice.create_room(json!({"room_version": version})).await;
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message",
            enc(&room)
        );
        let message = json!({"msgtype": "m.text", "body": "hello"});
        let (s, first) = alice.post(&path, message.clone()).await;
        assert_eq!(s, 200, "v{version}: {first}");
        let (s, second) = alice.post(&path, message).await;
        assert_eq!(s, 200, "v{version}: {second}");
        assert_ne!(first["event_id"], second["event_id"], "v{version}");
        let target = first["event_id"].as_str().expect("event_id");
        let (s, redaction) = alice
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}",
                    enc(&room),
                    enc(target)
                ),
                json!({"reason": "typo"}),
            )
            .await;
        assert_eq!(s, 200, "v{version}: {redaction}");
        assert_redacted(&alice, &room, target).await;
        let (s, event) = alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(target)
            ))
            .await;
        assert_eq!(s, 200, "v{version}: {event}");
        assert_eq!(
            event["unsigned"]["redacted_by"], redaction["event_id"],
            "v{version}: {event}"
        );
        assert_eq!(
            event["unsigned"]["redacted_because"]["event_id"], redaction["event_id"],
            "v{version}: {event}"
        );
        assert_not_redacted(
            &alice,
            &room,
            second["event_id"].as_str().expect("id"),
            "hello",
        )
        .await;
    }
}
