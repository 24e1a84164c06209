//! What the processes of one server tell each other, over Redis pub/sub:
//! whose syncs to wake, whose cached rows went stale, typing and presence.
//!
//! Nothing on the bus is needed for correctness of what is stored: a process
//! that misses messages (Redis down, a reconnect) re-reads the stream heads
//! from the databases on a timer and wakes every sync, so clients catch up
//! from the databases. What degrades without Redis is what only lives here:
//! typing and presence set on other processes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;

use crate::tasks::Tasks;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, info, warn};

/// A Redis round trip that takes longer than this counts as Redis being down.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between attempts to reach Redis again.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);
/// Messages waiting to be published before new ones are dropped (the timer
/// re-read covers anything dropped).
const OUTBOX: usize = 8192;

/// One thing a process tells the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusMessage {
    /// Something these users can see changed.
    Wake { users: Vec<String> },
    /// Something everyone may see changed.
    WakeAll,
    /// The users typing in a room, each with the unix ms their typing expires.
    Typing {
        room: String,
        users: Vec<(String, u64)>,
        serial: u64,
    },
    /// A user's presence as set on another process.
    Presence {
        user: String,
        state: crate::ephemeral::PresenceState,
        serial: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The process that sent it: a process ignores its own messages.
    origin: String,
    msg: BusMessage,
}

/// A connection to Redis shared by the bus and the presence keys.
pub struct Bus {
    client: redis::Client,
    channel: String,
    prefix: String,
    origin: String,
    outbox: mpsc::Sender<BusMessage>,
    conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    up: AtomicBool,
}

/// What a process does with the messages of the others.
#[async_trait::async_trait]
pub trait BusListener: Send + Sync {
    /// A batch of messages from other processes, oldest first.
    async fn received(&self, messages: Vec<BusMessage>);
    /// The bus was down and is back (or first came up): anything may have
    /// been missed.
    async fn resumed(&self);
}

impl Bus {
    /// Prepares the bus; nothing is connected until `start`.
    pub fn new(url: &str, prefix: &str) -> crate::Result<(Arc<Self>, mpsc::Receiver<BusMessage>)> {
        let client = redis::Client::open(url)
            .map_err(|e| crate::Error::internal(format!("bad redis url: {e}")))?;
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let bus = Arc::new(Self {
            client,
            channel: format!("{prefix}:bus"),
            prefix: prefix.to_owned(),
            origin: crate::ids::random_string(16),
            outbox,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
        });
        Ok((bus, rx))
    }

    /// Runs the publisher and the subscriber until shutdown.
    pub fn start(
        self: &Arc<Self>,
        tasks: &Tasks,
        outbox: mpsc::Receiver<BusMessage>,
        listener: std::sync::Weak<dyn BusListener>,
    ) {
        tasks.spawn(self.clone().publish_loop(tasks.clone(), outbox));
        tasks.spawn(self.clone().subscribe_loop(tasks.clone(), listener));
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A Redis key under this server's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Queues a message for the other processes; never waits.
    pub fn publish(&self, msg: BusMessage) {
        if self.outbox.try_send(msg).is_err() {
            debug!("bus outbox full; message dropped");
        }
    }

    /// Runs one command; `None` when Redis cannot be reached in time.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.lost(&format!("{e}")).await;
                None
            }
            Err(_) => {
                self.lost("timed out").await;
                None
            }
        }
    }

    /// Every key matching `pattern` with its value (keys that expire
    /// between the scan and the read are left out); empty when Redis is down.
    pub async fn scan_values(&self, pattern: &str) -> Vec<(String, String)> {
        let mut keys: Vec<String> = vec![];
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let Some((next, mut batch)) = self.query::<(u64, Vec<String>)>(&cmd).await else {
                return vec![];
            };
            keys.append(&mut batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut cmd = redis::cmd("MGET");
            cmd.arg(chunk);
            let Some(values) = self.query::<Vec<Option<String>>>(&cmd).await else {
                return out;
            };
            out.extend(
                chunk
                    .iter()
                    .zip(values)
                    .filter_map(|(k, v)| Some((k.clone(), v?))),
            );
        }
        out
    }

    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Some(c.clone());
        }
        let connect = self.client.get_multiplexed_async_connection();
        match tokio::time::timeout(REDIS_TIMEOUT, connect).await {
            Ok(Ok(c)) => {
                *guard = Some(c.clone());
                Some(c)
            }
            _ => None,
        }
    }

    async fn lost(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            warn!("redis unreachable ({why}); typing and presence stay on this process");
        }
        *self.conn.lock().await = None;
    }

    async fn publish_loop(self: Arc<Self>, tasks: Tasks, mut outbox: mpsc::Receiver<BusMessage>) {
        let mut batch = Vec::with_capacity(256);
        while tasks
            .until_stopped(outbox.recv_many(&mut batch, 256))
            .await
            .is_some_and(|n| n > 0)
        {
            let mut pipe = redis::pipe();
            for msg in batch.drain(..) {
                let envelope = Envelope {
                    origin: self.origin.clone(),
                    msg,
                };
                if let Ok(payload) = serde_json::to_string(&envelope) {
                    pipe.cmd("PUBLISH").arg(&self.channel).arg(payload).ignore();
                }
            }
            let Some(mut conn) = self.connection().await else {
                continue;
            };
            let sent = tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(&mut conn));
            match sent.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.lost(&format!("{e}")).await,
                Err(_) => self.lost("timed out").await,
            }
        }
    }

    async fn subscribe_loop(
        self: Arc<Self>,
        tasks: Tasks,
        listener: std::sync::Weak<dyn BusListener>,
    ) {
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(REDIS_TIMEOUT, subscribed).await {
                Ok(Ok(p)) => p,
                _ => {
                    if !tasks.sleep(RECONNECT_EVERY).await {
                        return;
                    }
                    if listener.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
            };
            if !self.up.swap(true, Ordering::Relaxed) {
                info!(channel = %self.channel, "bus connected");
            }
            let Some(l) = listener.upgrade() else { return };
            l.resumed().await;
            drop(l);
            let mut messages = pubsub.into_on_message().ready_chunks(256);
            while let Some(Some(chunk)) = tasks.until_stopped(messages.next()).await {
                let batch: Vec<BusMessage> = chunk
                    .iter()
                    .filter_map(|m| m.get_payload::<String>().ok())
                    .filter_map(|p| serde_json::from_str::<Envelope>(&p).ok())
                    .filter(|e| e.origin != self.origin)
                    .map(|e| e.msg)
                    .collect();
                let Some(l) = listener.upgrade() else { return };
                if !batch.is_empty() {
                    l.received(batch).await;
                }
            }
            if tasks.stopping() {
                return;
            }
            // The subscription ended: Redis went away.
            self.lost("subscription closed").await;
            if !tasks.sleep(RECONNECT_EVERY).await {
                return;
            }
        }
    }
}
