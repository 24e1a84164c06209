//! Hearth's domain: events, rooms, ordering, auth rules, storage, sync,
//! presence. No HTTP here: the API crates translate requests into calls on
//! [`Hearth`] and its errors into Matrix errors.

pub mod account_data;
pub mod accounts;
pub mod appservice;
pub mod backoff;
pub mod bus;
mod cluster;
pub mod config;
pub mod devices;
pub mod directory;
pub mod e2ee;
pub mod ephemeral;
pub mod error;
pub mod filter;
pub mod ids;
pub mod keys;
pub mod media;
pub mod notifier;
pub mod outgoing;
pub mod pdu;
pub mod profile;
pub mod push;
pub mod queue_sender;
pub mod ratelimit;
pub mod receipts;
pub mod rooms;
pub mod store;
pub mod sync;
pub mod tasks;
pub mod uia;
pub mod unread;

use std::{sync::Arc, time::Duration};

pub use config::CoreConfig;
pub use error::{Error, Result};
pub use ruma;

use crate::{
    ephemeral::{Presence, Typing},
    keys::ServerKeys,
    notifier::Notifier,
    ratelimit::{Action, RateLimiter},
    rooms::Rooms,
    store::Store,
    unread::UnreadCache,
};

/// The homeserver's services, shared by every request handler.
pub struct Hearth {
    pub config: CoreConfig,
    /// Only core reaches the store: every rule sits between a request and
    /// its storage, whatever the entry point (ARCHITECTURE.md, invariants).
    pub(crate) store: Arc<dyn Store>,
    pub keys: ServerKeys,
    pub notifier: Notifier,
    pub typing: Typing,
    pub presence: Presence,
    pub rooms: Rooms,
    pub ratelimiter: RateLimiter,
    pub unread: UnreadCache,
    /// End-to-end encryption bookkeeping between syncs.
    pub e2ee: e2ee::E2eeState,
    /// Push rules, notifications and pushes to gateways (spec/push.md).
    pub push: push::Push,
    /// Flips to true when the server starts draining: long-polls answer at
    /// once and WebSockets are told to reconnect elsewhere.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Every long-lived background task, stopped and awaited at shutdown.
    pub tasks: tasks::Tasks,
    /// The bus to the server's other processes, when Redis is configured.
    pub bus: Option<Arc<bus::Bus>>,
    /// Re-reads of the stream heads, shared by concurrent callers.
    heads: cluster::HeadsReads,
    /// Names this process in room writer leases (random per start).
    pub writer_id: Arc<str>,
    /// Reaches the process that writes a room, when it is not this one.
    pub forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
    /// Asks other servers (federation), when this server federates.
    pub remote: std::sync::OnceLock<Arc<dyn Remote>>,
    /// Registered application services (bridges).
    pub appservices: appservice::AppServices,
    /// Woken when events were queued for application services.
    pub appservice_queued: tokio::sync::Notify,
    /// Typing and receipts waiting for application services.
    pub appservice_ephemeral: appservice::EphemeralQueues,
    /// Asks application services (alias and user queries).
    pub appservice_link: std::sync::OnceLock<Arc<dyn appservice::AppServiceQueries>>,
}

/// Queries answered by other servers (the federation crate implements it).
#[async_trait::async_trait]
pub trait Remote: Send + Sync {
    /// A remote user's profile (`field`: only displayname or avatar_url).
    async fn query_profile(
        &self,
        user: &ruma::UserId,
        field: Option<&str>,
    ) -> Result<serde_json::Value>;
    /// What a remote room alias points at: `{room_id, servers}`.
    async fn query_directory(&self, alias: &ruma::RoomAliasId) -> Result<serde_json::Value>;
    /// Joins a local user to a room this server is not in, through one of
    /// `servers`; returns once the room and the join are stored here.
    async fn join_remote(
        &self,
        room_id: &ruma::RoomId,
        user: &ruma::UserId,
        servers: &[String],
    ) -> Result<()>;
    /// Knocks on a room this server is not in, through one of `servers`;
    /// the knock is stored here with the room state the server returned.
    async fn knock_remote(
        &self,
        room_id: &ruma::RoomId,
        user: &ruma::UserId,
        servers: &[String],
        reason: Option<&str>,
    ) -> Result<()>;
    /// Declines an invite or withdraws a knock of a room this server is not
    /// in (`make_leave`/`send_leave` through one of `servers`).
    async fn leave_remote(
        &self,
        room_id: &ruma::RoomId,
        user: &ruma::UserId,
        servers: &[String],
        reason: Option<&str>,
    ) -> Result<()>;
    /// Asks the invitee's server to countersign an invite (`/invite` v2);
    /// returns the event with both signatures.
    async fn invite(
        &self,
        version: &ruma::RoomVersionId,
        event: &serde_json::Map<String, serde_json::Value>,
        invite_room_state: Vec<serde_json::Value>,
    ) -> Result<serde_json::Map<String, serde_json::Value>>;
    /// History of a room older than `from` (`/backfill` on the first of
    /// `servers` that answers): up to `limit` events, checked like any
    /// received PDU, with the auth events they name that this server lacks.
    async fn backfill(
        &self,
        room_id: &ruma::RoomId,
        servers: &[String],
        from: &[ruma::OwnedEventId],
        limit: usize,
    ) -> Result<rooms::Backfilled>;
    /// Events were queued for these servers: send them.
    fn wake(&self, destinations: &[String]);
    /// An ephemeral event (typing, a receipt) for these servers, sent with
    /// the next transaction to each; not kept across a restart.
    fn send_edu(&self, destinations: &[String], edu: serde_json::Value);
    /// A local user's presence changed (`content` as in `m.presence`): tell
    /// the servers of everyone who shares a room with them.
    fn share_presence(&self, user: &str, content: serde_json::Value);
    /// A local user's devices or keys changed: send these EDUs
    /// (`m.device_list_update`, `m.signing_key_update`) to the servers of
    /// everyone who shares a room with them.
    fn share_device_updates(&self, user: &str, edus: Vec<serde_json::Value>);
    /// `/user/keys/query` on `server` (`body`: `{device_keys}`).
    async fn query_keys(&self, server: &str, body: serde_json::Value) -> Result<serde_json::Value>;
    /// `/user/keys/claim` on `server` (`body`: `{one_time_keys}`).
    async fn claim_keys(&self, server: &str, body: serde_json::Value) -> Result<serde_json::Value>;
}

/// Hands a send to the process holding the room's writer lease.
#[async_trait::async_trait]
pub trait Forwarder: Send + Sync {
    /// Fails with `WriterUnreachable` when the process does not answer,
    /// `LeaseLost` when it no longer writes the room, `Forwarded` with its
    /// error otherwise.
    async fn send(
        &self,
        address: &str,
        room_id: &ruma::RoomId,
        event: &rooms::NewEvent,
    ) -> Result<ruma::OwnedEventId>;
}

impl Hearth {
    pub async fn new(config: CoreConfig, store: Arc<dyn Store>) -> Result<Arc<Self>> {
        let keys = ServerKeys::load_or_generate(store.as_ref()).await?;
        let bus = match &config.redis {
            Some(r) => Some(bus::Bus::new(&r.url, &r.key_prefix)?),
            None => None,
        };
        let presence_times = config.presence;
        let config_appservices = config.appservices.clone();
        let push = push::Push::new(
            config.push,
            config.cluster.is_some() || config.redis.is_some(),
        );
        let hearth = Arc::new(Self {
            config,
            store,
            keys,
            notifier: Notifier::default(),
            typing: Typing::default(),
            presence: Presence::new(presence_times),
            rooms: Rooms::default(),
            ratelimiter: RateLimiter::default(),
            unread: UnreadCache::default(),
            e2ee: e2ee::E2eeState::default(),
            push,
            shutdown: tokio::sync::watch::channel(false).0,
            tasks: tasks::Tasks::default(),
            bus: bus.as_ref().map(|(b, _)| b.clone()),
            heads: Default::default(),
            writer_id: Arc::from(ids::random_string(16)),
            forwarder: std::sync::OnceLock::new(),
            remote: std::sync::OnceLock::new(),
            appservices: appservice::AppServices::new(config_appservices),
            appservice_queued: tokio::sync::Notify::new(),
            appservice_link: std::sync::OnceLock::new(),
            appservice_ephemeral: Default::default(),
        });
        if hearth.config.cluster.is_some() {
            hearth.spawn_lease_renewal();
        }
        if let Some((bus, outbox)) = bus {
            hearth.join_cluster(bus, outbox);
        }
        // The writer's ring of recent events and the push worker hear of
        // each event in commit order, from the store itself.
        let recent = hearth.rooms.recent.clone();
        let weak = Arc::downgrade(&hearth);
        hearth.store.on_commit(Arc::new(move |ev, ordering| {
            let event = Arc::new(crate::pdu::StoredEvent {
                pdu: ev.pdu.clone(),
                stream_ordering: ordering,
                txn: ev.txn.as_ref().map(|(_, d, t)| (d.clone(), t.clone())),
            });
            if let Some(h) = weak.upgrade() {
                h.push.committed(&event);
            }
            recent.push(event);
        }));
        hearth.spawn_push_worker();
        hearth.spawn_sweepers();
        hearth.ensure_appservice_users().await?;
        Ok(hearth)
    }

    /// Expired typing notifications and presence that time changed must
    /// reach syncing clients as changes.
    fn spawn_sweepers(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut ticks: u64 = 0;
            loop {
                if tasks.until_stopped(tick.tick()).await.is_none() {
                    break;
                }
                ticks += 1;
                let Some(h) = weak.upgrade() else { break };
                if h.typing.sweep() {
                    h.notifier.notify();
                }
                if ticks.is_multiple_of(2) {
                    h.age_presence().await;
                }
                h.presence_to_appservices().await;
            }
        });
    }

    pub fn rate_limit(&self, action: Action, key: &str) -> Result<()> {
        let rl = &self.config.rate_limits;
        if !rl.enabled {
            return Ok(());
        }
        let (rate, burst) = match action {
            Action::Message => (rl.messages_per_second, rl.messages_burst),
            Action::Login => (rl.login_per_second, rl.login_burst),
            Action::Register => (rl.register_per_second, rl.register_burst),
        };
        self.ratelimiter.check(action, key, rate, burst)
    }
}
