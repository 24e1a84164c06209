//! WebSocket sync driven by a plain WebSocket client, as spec/websocket-sync.md
//! describes it: pushed deltas, acked sends, resume without loss or duplicates,
//! error frames for bad frames, and a reconnect notice on shutdown.

mod common;

use std::time::Duration;

use common::{Client, TestServer, enc};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest},
};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const PATH: &str = "/_matrix/client/unstable/org.hearth.ws/sync";

async fn connect(hs: &TestServer, c: &Client, since: Option<&str>) -> Ws {
    let mut url = format!("{}{PATH}", hs.url.replace("http://", "ws://"));
    if let Some(s) = since {
        url.push_str(&format!("?since={}", enc(s)));
    }
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", c.token.as_deref().unwrap_or_default())
            .parse()
            .expect("header"),
    );
    let (ws, _) = connect_async(req).await.expect("websocket connect");
    ws
}

/// Sends one JSON frame.
async fn send_frame(ws: &mut Ws, frame: &Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// Next JSON frame, skipping pings, within a deadline.
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("frame before deadline")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json frame"),
            Message::Close(c) => {
                return json!({"type": "closed", "frame": c.map(|c| c.reason.to_string())});
            }
            _ => continue,
        }
    }
}

/// Reads frames until one satisfies `pred`; returns all sync bodies seen on the way too.
async fn until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
    let mut syncs = vec![];
    loop {
        let f = next_frame(ws).await;
        if f["type"] == "sync" {
            syncs.push(f["body"].clone());
        }
        if pred(&f) {
            return (f, syncs);
        }
    }
}

fn bodies(syncs: &[Value], room: &str) -> Vec<String> {
    syncs
        .iter()
        .flat_map(|b| {
            b["rooms"]["join"][room]["timeline"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn pushes_deltas_acks_sends_and_resumes_without_loss() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let bob = hs.register("bob", "pw").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;

    // Bob connects without a token: the first frame is a full sync.
    let mut bws = connect(&hs, &bob, None).await;
    let first = next_frame(&mut bws).await;
    assert_eq!(first["type"], "sync");
    assert!(first["body"]["rooms"]["join"][&room].is_object());
    let mut last_batch = first["body"]["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();

    // Alice sends over her own socket; the ack carries the event id after commit.
    let mut aws = connect(&hs, &alice, None).await;
    next_frame(&mut aws).await;
    let send = json!({"type": "send", "id": "a1", "room_id": room, "event_type": "m.room.message",
                      "txn_id": "ws-1", "content": {"msgtype": "m.text", "body": "over the socket"}});
    send_frame(&mut aws, &send).await;
    let (ack, _) = until(&mut aws, |f| f["type"] == "ack").await;
    assert_eq!(ack["id"], "a1");
    let event_id = ack["body"]["event_id"]
        .as_str()
        .expect("event id")
        .to_owned();

    // The same txn id again is the same event (idempotent like PUT /send).
    send_frame(&mut aws, &send).await;
    let (ack2, _) = until(&mut aws, |f| f["type"] == "ack").await;
    assert_eq!(ack2["body"]["event_id"], json!(event_id));

    // Bob gets it pushed, with a new next_batch.
    let (_, syncs) = until(&mut bws, |f| {
        f["type"] == "sync" && !bodies(std::slice::from_ref(&f["body"]), &room).is_empty()
    })
    .await;
    assert_eq!(bodies(&syncs, &room), vec!["over the socket"]);
    last_batch = syncs
        .last()
        .and_then(|b| b["next_batch"].as_str())
        .unwrap_or(&last_batch)
        .to_owned();

    // Bob drops; three messages go out while he is away; he resumes from his
    // last next_batch and receives exactly those three, in order.
    drop(bws);
    for i in 0..3 {
        alice
            .send_text(&room, &format!("away{i}"), &format!("away {i}"))
            .await;
    }
    let mut bws = connect(&hs, &bob, Some(&last_batch)).await;
    let mut got = vec![];
    while got.len() < 3 {
        let f = next_frame(&mut bws).await;
        assert_eq!(f["type"], "sync", "{f}");
        got.extend(bodies(std::slice::from_ref(&f["body"]), &room));
    }
    assert_eq!(got, vec!["away 0", "away 1", "away 2"]);

    // Typing over the socket reaches the other side's pushed deltas.
    let typing =
        json!({"type": "typing", "id": 7, "room_id": room, "typing": true, "timeout": 10000});
    send_frame(&mut aws, &typing).await;
    let (ack, _) = until(&mut aws, |f| f["type"] == "ack").await;
    assert_eq!(ack["id"], 7);
    until(&mut bws, |f| {
        f["body"]["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .is_some_and(|evs| {
                evs.iter().any(|e| {
                    e["type"] == "m.typing"
                        && e["content"]["user_ids"]
                            .as_array()
                            .is_some_and(|u| !u.is_empty())
                })
            })
    })
    .await;
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_stays_open() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    let mut ws = connect(&hs, &alice, None).await;
    next_frame(&mut ws).await;

    ws.send(Message::Text("{not json".into()))
        .await
        .expect("send");
    let (f, _) = until(&mut ws, |f| f["type"] == "error").await;
    assert_eq!(f["errcode"], "M_NOT_JSON");

    send_frame(&mut ws, &json!({"type": "launch_rockets", "id": 1})).await;
    let (f, _) = until(&mut ws, |f| f["type"] == "error").await;
    assert_eq!(f["errcode"], "M_BAD_JSON");
    assert_eq!(f["id"], 1);

    // A send to a room the user is not in: a Matrix error, nothing stored.
    let stranger = hs.register("mallory", "pw").await;
    let mut mws = connect(&hs, &stranger, None).await;
    next_frame(&mut mws).await;
    let send = json!({"type": "send", "id": "x", "room_id": room, "event_type": "m.room.message",
                      "txn_id": "t", "content": {"msgtype": "m.text", "body": "intrusion"}});
    send_frame(&mut mws, &send).await;
    let (f, _) = until(&mut mws, |f| f["type"] == "error").await;
    assert_eq!(f["errcode"], "M_FORBIDDEN");
    let page = alice.messages(&room, "dir=b&limit=50").await;
    assert!(!page.to_string().contains("intrusion"));

    // Still open: a valid send is acked.
    let ok = json!({"type": "send", "id": "ok", "room_id": room, "event_type": "m.room.message",
                    "txn_id": "fine", "content": {"msgtype": "m.text", "body": "still here"}});
    send_frame(&mut ws, &ok).await;
    let (f, _) = until(&mut ws, |f| f["type"] == "ack").await;
    assert_eq!(f["id"], "ok");
}

#[tokio::test]
async fn bad_token_is_refused_before_upgrade() {
    let hs = TestServer::start(&[]).await;
    let mut req = format!("{}{PATH}", hs.url.replace("http://", "ws://"))
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Authorization", "Bearer nope".parse().expect("header"));
    let err = connect_async(req).await.expect_err("must not upgrade");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn shutdown_tells_sockets_to_reconnect() {
    let mut hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let mut ws = connect(&hs, &alice, None).await;
    next_frame(&mut ws).await;
    hs.terminate();
    let (f, _) = until(&mut ws, |f| {
        f["type"] == "reconnect" || f["type"] == "closed"
    })
    .await;
    assert_eq!(f["type"], "reconnect", "{f}");
    let after = f["after_ms"].as_u64().expect("after_ms");
    assert!((1000..5000).contains(&after));
}

#[tokio::test]
async fn a_redaction_over_the_socket_follows_the_redaction_rule() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let bob = hs.register("bob", "pw").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let alices = alice.send_text(&room, "a1", "alice's words").await;
    let bobs = bob.send_text(&room, "b1", "bob's words").await;
    let mut ws = connect(&hs, &bob, None).await;
    next_frame(&mut ws).await;
    // Bob (power 0) redacting alice's event: refused, and it stays.
    let send = json!({"type": "send", "id": "r1", "room_id": room, "event_type": "m.room.redaction",
                      "txn_id": "ws-r1", "content": {"redacts": alices}});
    send_frame(&mut ws, &send).await;
    let (f, _) = until(&mut ws, |f| f["type"] == "error" || f["type"] == "ack").await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["errcode"], "M_FORBIDDEN", "{f}");
    assert_eq!(
        alice.content_of(&room, &alices).await["body"],
        "alice's words"
    );
    // His own event: acked and redacted.
    let send = json!({"type": "send", "id": "r2", "room_id": room, "event_type": "m.room.redaction",
                      "txn_id": "ws-r2", "content": {"redacts": bobs}});
    send_frame(&mut ws, &send).await;
    let (f, _) = until(&mut ws, |f| f["type"] == "error" || f["type"] == "ack").await;
    assert_eq!(f["type"], "ack", "{f}");
    assert_eq!(alice.content_of(&room, &bobs).await, json!({}));
}
