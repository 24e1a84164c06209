//! How one process keeps in step with the other processes of the same server
//! (same databases, same Redis): it hears their wake-ups, typing and presence
//! over the bus, and re-reads the stream heads from the databases, both when
//! woken and on a timer, so that a missed message (Redis down) delays a sync
//! by at most a tick and never loses anything.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tracing::warn;

use crate::{
    Hearth,
    bus::{Bus, BusListener, BusMessage},
    ephemeral::PresenceState,
};

/// How often the stream heads are re-read while the bus is up (a backstop)
/// and while it is down (the only way to hear of other processes' writes).
const HEADS_EVERY_UP: Duration = Duration::from_secs(1);
const HEADS_EVERY_DOWN: Duration = Duration::from_millis(200);

/// How long a user's presence stays in Redis after their last heartbeat.
const PRESENCE_TTL_MS: u64 = crate::ephemeral::OFFLINE_AFTER.as_millis() as u64;

impl Hearth {
    pub(crate) fn join_cluster(
        self: &Arc<Self>,
        bus: Arc<Bus>,
        outbox: tokio::sync::mpsc::Receiver<BusMessage>,
    ) {
        self.store.share_with_other_processes();
        self.notifier.attach_bus(bus.clone());
        let listener: Arc<dyn BusListener> = self.clone();
        bus.start(outbox, Arc::downgrade(&listener));
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let every = match weak.upgrade() {
                    Some(h) if h.bus.as_ref().is_some_and(|b| b.is_up()) => HEADS_EVERY_UP,
                    Some(_) => HEADS_EVERY_DOWN,
                    None => return,
                };
                tokio::time::sleep(every).await;
                let Some(h) = weak.upgrade() else { return };
                h.refresh_heads_logged().await;
            }
        });
    }

    /// Re-reads where the streams stand; wakes every sync if anything moved
    /// (whoever re-reads first, the waiting syncs hear of it).
    async fn refresh_heads(&self) -> crate::Result<()> {
        if self.store.refresh_stream_heads().await? {
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
        if self.bus.is_some() {
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
                bus.publish(BusMessage::Typing {
                    room: room.to_string(),
                    users: self.typing.snapshot(room.as_str()),
                    serial: self.typing.serial(),
                });
            }
            self.notify_room(room).await;
        }
        changed
    }

    /// Sets a user's presence (and status message when given); tells the
    /// other processes and wakes syncs when what others see changed.
    pub fn set_presence(&self, user: &str, presence: &str, status_msg: Option<Option<String>>) {
        if self.presence.set(user, presence, status_msg) {
            self.presence_changed(user);
        }
    }

    /// Records activity (a send, a sync): a heartbeat for presence.
    pub fn touch_presence(&self, user: &str) {
        if self.presence.touch(user) {
            self.presence_changed(user);
        }
    }

    fn presence_changed(&self, user: &str) {
        if let (Some(bus), Some(state)) = (&self.bus, self.presence.snapshot(user)) {
            bus.publish(BusMessage::Presence {
                user: user.to_owned(),
                presence: state.presence.clone(),
                status_msg: state.status_msg.clone(),
                last_active_ms: state.last_active_ms,
                serial: state.serial,
            });
            // Kept in Redis too, expiring when the user would show offline,
            // for processes that start later.
            if let Ok(json) = serde_json::to_string(&serde_json::json!({
                "presence": state.presence,
                "status_msg": state.status_msg,
                "last_active_ms": state.last_active_ms,
            })) {
                let bus = bus.clone();
                let key = bus.key(&format!("presence:{user}"));
                tokio::spawn(async move {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(key).arg(json).arg("PX").arg(PRESENCE_TTL_MS);
                    bus.query::<()>(&cmd).await;
                });
            }
        }
        self.notifier.notify();
    }

    /// A user's presence: this process's view, else what Redis holds.
    pub async fn presence_of(&self, user: &str) -> Option<PresenceState> {
        if let Some(p) = self.presence.get(user) {
            return Some(p);
        }
        let bus = self.bus.as_ref()?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(bus.key(&format!("presence:{user}")));
        let json: Option<String> = bus.query(&cmd).await?;
        let v: serde_json::Value = serde_json::from_str(&json?).ok()?;
        let state = PresenceState {
            presence: v["presence"].as_str()?.to_owned(),
            status_msg: v["status_msg"].as_str().map(str::to_owned),
            last_active_ms: v["last_active_ms"].as_u64()?,
            serial: 0,
        };
        self.presence.apply(user, state);
        self.presence.get(user)
    }
}

#[async_trait]
impl BusListener for Hearth {
    async fn received(&self, messages: Vec<BusMessage>) {
        // Woken for something stored: the heads move first, so the woken
        // syncs read up to the new positions.
        if messages
            .iter()
            .any(|m| matches!(m, BusMessage::Wake { .. } | BusMessage::WakeAll))
        {
            self.refresh_heads_logged().await;
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
                    self.typing.apply(&room, users, serial);
                    self.notifier.wake_all_local();
                }
                BusMessage::Presence {
                    user,
                    presence,
                    status_msg,
                    last_active_ms,
                    serial,
                } => {
                    self.presence.apply(
                        &user,
                        PresenceState {
                            presence,
                            status_msg,
                            last_active_ms,
                            serial,
                        },
                    );
                    self.notifier.wake_all_local();
                }
            }
        }
    }

    async fn resumed(&self) {
        self.refresh_heads_logged().await;
        self.notifier.wake_all_local();
    }
}
