//! How one process keeps in step with the other processes of the same server
//! (same databases, same Redis): it hears their wake-ups, typing and presence
//! over the bus, and re-reads the stream heads from the databases, both when
//! woken and on a timer, so that a missed message (Redis down) delays a sync
//! by at most a tick and never loses anything.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tracing::warn;

use crate::{
    bus::{Bus, BusListener, BusMessage},
    ephemeral::{Ephemeral, PresenceState},
    notifier::Notifier,
    store::RoomStore,
};

/// How often the stream heads are re-read while the bus is up (a backstop)
/// and while it is down (the only way to hear of other processes' writes).
const HEADS_EVERY_UP: Duration = Duration::from_secs(1);
const HEADS_EVERY_DOWN: Duration = Duration::from_millis(200);

/// How often an unchanged user's presence is re-written to Redis while
/// their clients beat: heartbeats are not announced, only kept there.
const PRESENCE_WRITE_EVERY: Duration = Duration::from_secs(20);

/// Re-reads of the stream heads, one at a time (see `refresh_heads`).
#[derive(Default)]
struct HeadsReads {
    /// Tickets handed to callers so far.
    asked: AtomicU64,
    /// Held during a re-read; holds the last ticket a finished re-read covers.
    covered: tokio::sync::Mutex<u64>,
}

/// Where each stream stands: with other processes writing the same
/// databases, re-read before a request reads positions and when woken.
pub(crate) struct Streams {
    store: Arc<dyn RoomStore>,
    /// Wakes every sync when a re-read finds the heads moved.
    notifier: Arc<Notifier>,
    reads: HeadsReads,
    /// Other processes write too (a bus is configured).
    shared: bool,
}

impl Streams {
    pub(crate) fn new(store: Arc<dyn RoomStore>, notifier: Arc<Notifier>, shared: bool) -> Self {
        Self {
            store,
            notifier,
            reads: HeadsReads::default(),
            shared,
        }
    }

    /// Re-reads where the streams stand; wakes every sync if anything moved
    /// (whoever re-reads first, the waiting syncs hear of it). Callers at
    /// the same moment share one re-read: each waits for one that started
    /// after it asked, which sees everything committed before it asked.
    async fn refresh_heads(&self) -> crate::Result<()> {
        let ticket = self.reads.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = self.reads.covered.lock().await;
        if *covered >= ticket {
            return Ok(());
        }
        let upto = self.reads.asked.load(Ordering::SeqCst);
        let moved = self.store.refresh_stream_heads().await?;
        *covered = upto;
        drop(covered);
        if moved {
            self.notifier.wake_all_local();
        }
        Ok(())
    }

    /// `refresh_heads` in the background: a failure is logged, and the
    /// next tick or message tries again.
    async fn refresh_heads_logged(&self) {
        if let Err(e) = self.refresh_heads().await {
            warn!("could not re-read the stream heads: {e}");
        }
    }

    /// Before a request reads the current positions: with other processes
    /// writing too, re-read them, so the request sees everything committed
    /// before it, through whichever process (read your writes).
    pub(crate) async fn catch_up(&self) -> crate::Result<()> {
        if self.shared {
            self.refresh_heads().await?;
        }
        Ok(())
    }

    /// The newest position of each shard's stream, caught up with the
    /// other processes.
    pub async fn stream_positions(&self) -> crate::Result<Vec<i64>> {
        self.catch_up().await?;
        self.store.stream_positions().await
    }
}

impl Ephemeral {
    /// Hears the other processes over the bus and re-reads the stream heads
    /// on a timer (the store was told first that it is shared).
    pub(crate) fn join_cluster(
        self: &Arc<Self>,
        bus: Arc<Bus>,
        outbox: tokio::sync::mpsc::Receiver<BusMessage>,
    ) {
        self.notifier.attach_bus(bus.clone());
        let listener: Arc<dyn BusListener> = self.clone();
        bus.start(&self.tasks, outbox, Arc::downgrade(&listener));
        let weak = Arc::downgrade(self);
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            loop {
                let every = match weak.upgrade() {
                    Some(h) if h.bus.as_ref().is_some_and(|b| b.is_up()) => HEADS_EVERY_UP,
                    Some(_) => HEADS_EVERY_DOWN,
                    None => return,
                };
                if !tasks.sleep(every).await {
                    return;
                }
                let Some(h) = weak.upgrade() else { return };
                h.streams.refresh_heads_logged().await;
            }
        });
    }

    /// Typing on or off; returns whether the room's typing users changed.
    pub async fn set_typing(
        &self,
        room: &ruma::RoomId,
        user: &str,
        timeout: Option<Duration>,
    ) -> bool {
        let changed = self.typing.set(room.as_str(), user, timeout);
        if changed {
            if let Some(bus) = &self.bus {
                let users = self.typing.snapshot(room.as_str());
                bus.publish(BusMessage::Typing {
                    room: room.to_string(),
                    users: users.clone(),
                    serial: self.typing.serial(),
                });
                store_typing(&self.tasks, bus.clone(), room.as_str(), users);
            }
            self.rooms.notify_room(room).await;
            let users: Vec<String> = self
                .typing
                .snapshot(room.as_str())
                .into_iter()
                .map(|(u, _)| u)
                .collect();
            self.to_appservices.appservice_ephemeral(
                room,
                serde_json::json!({"type": "m.typing", "room_id": room, "content": {"user_ids": users}}),
            )
            .await;
            // Our users' typing reaches the room's other servers.
            if self.is_local(user) {
                self.rooms.share_with_servers(
                    room,
                    serde_json::json!({
                        "edu_type": "m.typing",
                        "content": {"room_id": room, "user_id": user, "typing": timeout.is_some()},
                    }),
                )
                .await;
            }
        }
        changed
    }

    /// A sync's `set_presence` (see `Presence::sync`).
    pub fn presence_sync(&self, user: &str, requested: &str) {
        let changed = self.presence.sync(user, requested);
        self.presence_changed(user, changed);
    }

    /// Sets a user's presence (and status message when given).
    pub fn set_presence(&self, user: &str, presence: &str, status_msg: Option<Option<String>>) {
        let changed = self.presence.set(user, presence, status_msg);
        self.presence_changed(user, changed);
    }

    /// The user acted (a send, a receipt, typing).
    pub fn presence_active(&self, user: &str) {
        let changed = self.presence.active(user);
        self.presence_changed(user, changed);
    }

    /// A user of `origin` (another server) whose presence it announced.
    pub fn set_remote_presence(
        &self,
        user: &str,
        presence: &str,
        status_msg: Option<String>,
        last_active_ago: u64,
    ) {
        let changed = self
            .presence
            .set_remote(user, presence, status_msg, last_active_ago);
        self.presence_changed(user, changed);
    }

    /// Tells the other processes of a change (and keeps the user's state in
    /// Redis, re-written now and then while unchanged, so their heartbeats
    /// keep the key alive), and wakes syncs when others would see a change.
    fn presence_changed(&self, user: &str, changed: bool) {
        let write_every = PRESENCE_WRITE_EVERY.min(self.presence.times().offline_after / 3);
        if let Some(bus) = &self.bus
            && let Some(state) = self.presence.take_write(user, changed, write_every)
        {
            if changed {
                bus.publish(BusMessage::Presence {
                    user: user.to_owned(),
                    state: state.clone(),
                    serial: state.serial,
                });
            }
            if let Ok(json) = serde_json::to_string(&state) {
                let bus = bus.clone();
                let key = presence_key(&bus, user);
                let ttl = self.presence.times().offline_after.as_millis() as u64;
                self.tasks.spawn(async move {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(key).arg(json).arg("PX").arg(ttl.max(1));
                    bus.query::<()>(&cmd).await;
                });
            }
        }
        if changed {
            self.notifier.wake_all_local();
            if self.appservices.all().iter().any(|s| s.receive_ephemeral) {
                self.appservice_ephemeral.presence_changed(user);
            }
            if let Some(remote) = self.links.remote.get()
                && self.is_local(user)
                && let Some(state) = self.presence.get(user)
            {
                remote.share_presence(user, crate::ephemeral::presence_content(&state));
            }
        }
    }

    /// What Redis holds of a user's presence; `None` when nothing (their
    /// key expired: no process heard a heartbeat within the TTL) or Redis is
    /// down.
    async fn presence_in_redis(&self, user: &str) -> Option<PresenceState> {
        let bus = self.bus.as_ref().filter(|b| b.is_up())?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(presence_key(bus, user));
        let json: Option<String> = bus.query(&cmd).await?;
        serde_json::from_str(&json?).ok()
    }

    /// Lets time act on presence: idle users become unavailable, users
    /// without a heartbeat offline. With Redis, a heartbeat another process
    /// heard counts: its key is read before the user is aged.
    pub(crate) async fn age_presence(&self) {
        for user in self.presence.due() {
            if let Some(theirs) = self.presence_in_redis(&user).await {
                self.presence.merge_times(&user, &theirs);
            }
            if self.presence.age(&user) {
                self.presence_changed(&user, true);
            }
        }
    }

    /// A user's presence: this process's view, else what Redis holds.
    pub async fn presence_of(&self, user: &str) -> Option<PresenceState> {
        if let Some(p) = self.presence.get(user) {
            return Some(p);
        }
        let theirs = self.presence_in_redis(user).await?;
        self.presence.apply(user, theirs, 0);
        self.presence.get(user)
    }

    /// After (re)joining the bus: take the typing and presence Redis holds,
    /// which covers what was said while this process was away, and re-announce
    /// this process's live users, whom others may have aged meanwhile.
    async fn load_from_redis(&self, bus: &Bus) {
        for (key, json) in bus.scan_values(&typing_key(bus, "*")).await {
            let room = key.strip_prefix(&typing_key(bus, "")).unwrap_or_default();
            if let Ok(users) = serde_json::from_str::<Vec<(String, u64)>>(&json) {
                self.typing.apply(room, users, 0);
            }
        }
        for (key, json) in bus.scan_values(&presence_key(bus, "*")).await {
            let user = key.strip_prefix(&presence_key(bus, "")).unwrap_or_default();
            if let Ok(theirs) = serde_json::from_str::<PresenceState>(&json) {
                if self.presence.get(user).is_some() {
                    self.presence.merge_times(user, &theirs);
                } else {
                    self.presence.apply(user, theirs, 0);
                }
            }
        }
        for (user, state) in self.presence.live() {
            bus.publish(BusMessage::Presence {
                serial: state.serial,
                user,
                state,
            });
        }
    }
}

/// Where Redis keeps a user's presence (`*` for a pattern of all).
fn presence_key(bus: &Bus, user: &str) -> String {
    bus.key(&format!("presence:{user}"))
}

/// Where Redis keeps a room's typing users.
fn typing_key(bus: &Bus, room: &str) -> String {
    bus.key(&format!("typing:{room}"))
}

/// Keeps a room's typing users in Redis until the last one expires, for
/// processes that join later or missed the announcement.
fn store_typing(tasks: &crate::tasks::Tasks, bus: Arc<Bus>, room: &str, users: Vec<(String, u64)>) {
    let key = typing_key(&bus, room);
    let until = users.iter().map(|(_, e)| *e).max().unwrap_or(0);
    let ttl = until.saturating_sub(crate::ids::now_ms());
    tasks.spawn(async move {
        let cmd = match serde_json::to_string(&users) {
            Ok(json) if ttl > 0 => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(json).arg("PX").arg(ttl);
                cmd
            }
            _ => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(key);
                cmd
            }
        };
        bus.query::<()>(&cmd).await;
    });
}

#[async_trait]
impl BusListener for Ephemeral {
    async fn received(&self, messages: Vec<BusMessage>) {
        // Woken for something stored: the heads move first, so the woken
        // syncs read up to the new positions.
        if messages
            .iter()
            .any(|m| matches!(m, BusMessage::Wake { .. } | BusMessage::WakeAll))
        {
            self.streams.refresh_heads_logged().await;
        }
        for msg in messages {
            match msg {
                BusMessage::Wake { users } => {
                    self.notifier.wake_local(users.iter().map(String::as_str));
                }
                BusMessage::WakeAll => self.notifier.wake_all_local(),
                BusMessage::Typing {
                    room,
                    users,
                    serial,
                } => {
                    if self.typing.apply(&room, users, serial) {
                        self.notifier.wake_all_local();
                    }
                }
                BusMessage::Presence {
                    user,
                    state,
                    serial,
                } => {
                    if self.presence.apply(&user, state, serial) {
                        self.notifier.wake_all_local();
                    }
                }
            }
        }
    }

    async fn resumed(&self) {
        if let Some(bus) = &self.bus {
            self.load_from_redis(bus).await;
        }
        self.streams.refresh_heads_logged().await;
        self.notifier.wake_all_local();
    }
}
