//! WebSocket sync (spec/websocket-sync.md): the same deltas as /sync, pushed
//! the moment they exist, and client actions (send, typing, receipts,
//! presence) over the same socket.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{
        Query, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket},
    },
    response::Response,
    routing::get,
};
use futures::{SinkExt, StreamExt, stream::SplitStream};
use hearth_core::{Error, Hearth, accounts::Session, sync::SyncRequest};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{
    ephemeral::{post_receipt, set_own_presence, set_typing},
    messages::send_message,
};
use crate::{error::ApiError, extract::Auth};

pub const WS_PATH: &str = "/_matrix/client/unstable/org.hearth.ws/sync";

/// Frames queued for one connection; a reader that lets this fill is dropped.
const SEND_BUFFER_FRAMES: usize = 64;
/// Largest client frame accepted.
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Initial read buffer per connection; it grows for larger frames.
const READ_BUFFER_BYTES: usize = 4 * 1024;
const PING_EVERY: Duration = Duration::from_secs(20);
/// A connection that answers no ping for this long is considered dead.
const PONG_DEADLINE: Duration = Duration::from_secs(60);
/// How long one server-side sync wait lasts before it is renewed.
const SYNC_WAIT: Duration = Duration::from_secs(30);

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new().route(WS_PATH, get(upgrade))
}

#[derive(Deserialize)]
struct WsQuery {
    since: Option<String>,
    filter: Option<String>,
    /// As for `/sync`: how an open socket counts for the user's presence.
    set_presence: Option<String>,
}

async fn upgrade(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Validate everything before upgrading, so bad input is a plain HTTP error.
    let since = q
        .since
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(str::parse)
        .transpose()?;
    let filter = h
        .filters
        .sync_filter(&s.user_id, q.filter.as_deref())
        .await?;
    let presence = q.set_presence.unwrap_or_else(|| "online".into());
    if !matches!(presence.as_str(), "online" | "offline" | "unavailable") {
        return Err(Error::invalid_param("Invalid set_presence").into());
    }
    let req = SyncRequest {
        since,
        full_state: false,
        filter,
        timeout: SYNC_WAIT,
    };
    Ok(ws
        .protocols(["m.json"])
        .max_message_size(MAX_FRAME_BYTES)
        // Small buffers: tungstenite's 128 KiB defaults would cost ~256 KiB per
        // idle connection. Frames are sent (and sync bodies flushed) eagerly.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve(h, s, req, presence, socket)))
}

/// Client → server frames (their `id` is read separately and echoed back).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Send {
        room_id: String,
        event_type: String,
        txn_id: String,
        content: Map<String, Value>,
    },
    Typing {
        room_id: String,
        typing: bool,
        timeout: Option<u64>,
    },
    Receipt {
        room_id: String,
        receipt_type: String,
        event_id: String,
        thread_id: Option<String>,
    },
    Presence {
        presence: String,
        status_msg: Option<String>,
    },
}

fn error_frame(id: Option<Value>, errcode: &str, error: &str) -> Value {
    json!({"type": "error", "id": id, "errcode": errcode, "error": error})
}

/// Open sockets: the server waits for them to say goodbye before it exits
/// (an upgraded connection is not something axum's graceful shutdown waits
/// for).
static OPEN_SOCKETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct OpenSocket;

impl OpenSocket {
    fn new() -> Self {
        OPEN_SOCKETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenSocket
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        OPEN_SOCKETS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits (at most `limit`) until every WebSocket has been told to reconnect
/// and closed; called once the server stops taking requests.
pub async fn wait_for_sockets(limit: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while OPEN_SOCKETS.load(std::sync::atomic::Ordering::SeqCst) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn serve(
    h: Arc<Hearth>,
    s: Session,
    mut req: SyncRequest,
    presence: String,
    socket: WebSocket,
) {
    let _open = OpenSocket::new();
    // An open socket is the client's heartbeat, renewed at every ping.
    h.ephemeral.presence_sync(s.user_id.as_str(), &presence);
    let (mut sink, stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(SEND_BUFFER_FRAMES);
    let mut shutdown = h.shutdown.subscribe();
    tracing::debug!(user = %s.user_id, device = %s.device_id, "websocket sync connected");

    // Writer: the only task touching the sink.
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let closing = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    // Pusher: sync deltas in order, each carrying its next_batch. Aborted
    // when this function ends or is dropped (the server may drop a
    // connection's future at shutdown): it must never outlive its socket.
    let pusher = {
        let (h, s, tx) = (h.clone(), s.clone(), tx.clone());
        tokio::spawn(async move {
            let initial = req.since.is_none();
            loop {
                let body = match h.sync.sync(&s.user_id, &s.device_id, &req).await {
                    Ok(b) => b,
                    Err(e) => {
                        let (code, msg) = ApiError::from(e).errcode_and_message();
                        let _ = tx.send(text(&error_frame(None, code, &msg))).await;
                        return;
                    }
                };
                let next = body["next_batch"].as_str().and_then(|t| t.parse().ok());
                let changed = next != req.since;
                // Draining, a sync answers at once: with nothing new, stop
                // rather than ask again in a tight loop until the socket closes.
                if !changed && *h.shutdown.borrow() {
                    return;
                }
                if changed || (initial && req.since.is_none()) {
                    let frame = text(&json!({"type": "sync", "body": body}));
                    match tx.try_send(frame) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::info!(user = %s.user_id, "websocket reader too slow; disconnecting");
                            let _ = tx
                                .send(close(1008, "send buffer full: reader too slow, reconnect with your last next_batch"))
                                .await;
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                req.since = next.or(req.since);
            }
        })
    };
    let pusher = AbortOnDrop(pusher);

    read_frames(&h, &s, &presence, stream, &tx, &pusher, &mut shutdown).await;
    drop(pusher);
    drop(tx);
    let _ = writer.await;
    tracing::debug!(user = %s.user_id, "websocket sync closed");
}

/// Answers the client's frames and keeps the connection alive (pings, the
/// presence heartbeat) until the client goes, stops answering pings, the
/// server starts draining or the pusher ends.
async fn read_frames(
    h: &Hearth,
    s: &Session,
    presence: &str,
    mut stream: SplitStream<WebSocket>,
    tx: &mpsc::Sender<Message>,
    pusher: &AbortOnDrop,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_pong = tokio::time::Instant::now();
    loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(t))) => {
                    let reply = handle_frame(h, s, t.as_str()).await;
                    if tx.send(text(&reply)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = tx.send(text(&error_frame(None, "M_BAD_JSON", "Frames must be JSON text"))).await;
                }
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Ping(_))) => last_pong = tokio::time::Instant::now(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            },
            _ = ping.tick() => {
                h.ephemeral.presence_sync(s.user_id.as_str(), presence);
                if last_pong.elapsed() > PONG_DEADLINE {
                    let _ = tx.send(close(1001, "no pong within deadline")).await;
                    break;
                }
                if tx.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            _ = shutdown.changed() => {
                say_reconnect(tx).await;
                break;
            }
        }
        if pusher.0.is_finished() {
            if *h.shutdown.borrow() {
                // The pusher stopped because the server is draining: the
                // client still needs to hear when to come back.
                say_reconnect(tx).await;
            }
            break;
        }
    }
}

/// Draining: tells the client when to reconnect, then closes.
async fn say_reconnect(tx: &mpsc::Sender<Message>) {
    // Spread reconnects so a restart is not met by a thundering herd.
    let after_ms = rand::thread_rng().gen_range(1000..5000);
    let _ = tx
        .send(text(&json!({"type": "reconnect", "after_ms": after_ms})))
        .await;
    let _ = tx.send(close(1012, "server restarting")).await;
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn text(v: &Value) -> Message {
    Message::Text(v.to_string().into())
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Runs one client frame and returns the frame to answer it with.
async fn handle_frame(h: &Hearth, s: &Session, raw: &str) -> Value {
    let value: Value = match serde_json::from_str(raw) {
        Ok(v) => v,
        Err(e) => return error_frame(None, "M_NOT_JSON", &format!("Frame is not JSON: {e}")),
    };
    let id = value.get("id").cloned();
    let frame: ClientFrame = match serde_json::from_value(value) {
        Ok(f) => f,
        Err(e) => return error_frame(id, "M_BAD_JSON", &format!("Invalid frame: {e}")),
    };
    let result = match frame {
        ClientFrame::Send {
            room_id,
            event_type,
            txn_id,
            content,
            ..
        } => send_message(h, s, &room_id, &event_type, &txn_id, content, None)
            .await
            .map(|event_id| json!({"event_id": event_id})),
        ClientFrame::Typing {
            room_id,
            typing,
            timeout,
            ..
        } => set_typing(h, s, &room_id, typing, timeout)
            .await
            .map(|()| json!({})),
        ClientFrame::Receipt {
            room_id,
            receipt_type,
            event_id,
            thread_id,
            ..
        } => post_receipt(
            h,
            s,
            &room_id,
            &receipt_type,
            &event_id,
            thread_id.as_deref(),
        )
        .await
        .map(|()| json!({})),
        ClientFrame::Presence {
            presence,
            status_msg,
            ..
        } => set_own_presence(h, s, &presence, status_msg)
            .await
            .map(|()| json!({})),
    };
    match result {
        Ok(body) => json!({"type": "ack", "id": id, "body": body}),
        Err(e) => {
            let (code, msg) = e.errcode_and_message();
            error_frame(id, code, &msg)
        }
    }
}
