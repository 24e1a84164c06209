//! Push (spec/push.md): users' push rules (`rules.rs`), their evaluation
//! as stored and served (`ruleset.rs`: ruma's ruleset beside room rules of
//! any id), their evaluation against events with a cached per-room context (`eval.rs`), the worker that
//! records the notifications committed events raise (`worker.rs`), and the
//! per-user sender that coalesces, retries and posts them to push gateways
//! through the [`PushGateway`] trait (`sender.rs`; the HTTP client lives in
//! the client-api crate). Pushers are checked in `pushers.rs`.

mod eval;
mod notifications;
pub mod pushers;
mod rules;
mod ruleset;
mod sender;
mod worker;

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use parking_lot::Mutex;

pub use eval::Evaluation;
pub(crate) use eval::RoomCtx;
pub use notifications::{Notification, Notifications};
pub use pushers::{PusherView, Pushers};
pub use rules::{PUSH_RULES_TYPE, RuleError, RulePath};
pub use ruleset::PushRules;
pub use sender::{GatewayError, PushGateway};

use ruma::OwnedServerName;

use crate::{
    notifier::Notifier,
    pdu::StoredEvent,
    rooms::Rooms,
    store::{MainStore, RoomStore, Stores},
    tasks::Tasks,
    unread::UnreadCache,
};

/// Timings of pushes to gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushConfig {
    /// How long a user's first pending notification waits for more before
    /// one push carries the newest (and the up-to-date count).
    pub coalesce: Duration,
    /// The first retry delay while a gateway fails; doubles each time…
    pub backoff_start: Duration,
    /// …up to this.
    pub backoff_max: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_secs(1),
            backoff_start: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Entries kept per cache before it starts over.
const MAX_CACHED: usize = 100_000;
/// Flattened events kept: the recent ones members are still reading.
const MAX_FLATTENED: usize = 4096;
/// With several processes, another one may change what a cache holds
/// (rules, room state, pushers): entries are trusted this long.
const SHARED_TTL: Duration = Duration::from_secs(5);

/// A small map whose entries can expire (when other processes write the
/// same data) and which starts over when full.
pub(crate) struct Cache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    ttl: Option<Duration>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new(ttl: Option<Duration>, capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let map = self.map.lock();
        let (v, at) = map.get(key)?;
        match self.ttl {
            Some(ttl) if at.elapsed() > ttl => None,
            _ => Some(v.clone()),
        }
    }

    pub(crate) fn put(&self, key: K, value: V) {
        let mut map = self.map.lock();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key, (value, Instant::now()));
    }

    pub(crate) fn clear(&self) {
        self.map.lock().clear();
    }

    pub(crate) fn forget<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.lock().remove(key);
    }
}

/// Push state shared by the handlers, the worker and the senders.
pub struct Push {
    /// Each user's parsed rules, and whether they are the untouched server
    /// defaults.
    rulesets: Cache<String, (Arc<PushRules>, bool)>,
    /// An event's actions under the default rules for a user it does not
    /// single out: the same for most members, so evaluated once.
    generic: Cache<ruma::OwnedEventId, Arc<eval::Evaluation>>,
    /// What rule evaluation needs of a room; dropped when its state changes.
    rooms: Cache<String, Arc<eval::RoomCtx>>,
    /// Events as rules read them, for the many members reading one event.
    flattened: Cache<ruma::OwnedEventId, Arc<ruma::push::FlattenedJson>>,
    /// Whether a user has pushers (most do not: no push work for them).
    has_pushers: Cache<String, bool>,
    /// Committed events, from the store's commit hook to the worker.
    events: tokio::sync::mpsc::UnboundedSender<Arc<StoredEvent>>,
    inbox: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Arc<StoredEvent>>>>,
    /// Users with a push round under way, and whether more came meanwhile.
    scheduled: Mutex<HashMap<String, bool>>,
    gateway: OnceLock<Arc<dyn PushGateway>>,
    config: PushConfig,
    /// Rules (as account data), pushers and notifications are stored.
    store: Arc<dyn MainStore>,
    /// The events notified of, and where their readers have read up to.
    room_store: Arc<dyn RoomStore>,
    /// A change of rules wakes the user's syncs.
    notifier: Arc<Notifier>,
    /// Unread counts follow a user's new rules (and are counted here,
    /// `unread.rs`).
    unread: Arc<UnreadCache>,
    /// A room's evaluation context is read from its view.
    views: Arc<Rooms>,
    server_name: OwnedServerName,
    /// Runs the worker and the push rounds.
    tasks: Tasks,
}

impl Push {
    /// `shared`: other processes write the same databases. Takes both
    /// roles: rules, pushers and notifications on main (`store`), the
    /// events and read positions on the rooms' databases.
    pub(crate) fn new(
        config: PushConfig,
        shared: bool,
        stores: &Stores,
        notifier: Arc<Notifier>,
        unread: Arc<UnreadCache>,
        views: Arc<Rooms>,
        tasks: Tasks,
    ) -> Self {
        let server_name = views.server_name().to_owned();
        let ttl = shared.then_some(SHARED_TTL);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            rulesets: Cache::new(ttl, MAX_CACHED),
            rooms: Cache::new(ttl, MAX_CACHED),
            flattened: Cache::new(None, MAX_FLATTENED),
            generic: Cache::new(None, MAX_FLATTENED),
            has_pushers: Cache::new(ttl, MAX_CACHED),
            events: tx,
            inbox: Mutex::new(Some(rx)),
            scheduled: Mutex::new(HashMap::new()),
            gateway: OnceLock::new(),
            config,
            store: stores.main.clone(),
            room_store: stores.rooms.clone(),
            notifier,
            unread,
            views,
            server_name,
            tasks,
        }
    }

    /// Called by the store's commit hook with every committed event: cheap,
    /// the work happens on the worker.
    pub(crate) fn committed(&self, event: &Arc<StoredEvent>) {
        if event.pdu.is_state() && eval::changes_room_ctx(event.pdu.kind.to_string().as_str()) {
            self.rooms.forget(event.pdu.room_id.as_str());
        }
        let _ = self.events.send(event.clone());
    }

    /// A user's pushers changed.
    pub fn forget_pushers(&self, user: &str) {
        self.has_pushers.forget(user);
    }
}
