//! Rooms: the single writer per room, room creation, and who may see what.
//!
//! Every room's events pass through one `RoomHandle` lock in this process: the
//! lock holder builds the event on top of the room's latest event, authorizes it
//! against current state and submits it to the store, which commits a room's
//! events in submission order. That makes the room's stream ordering its total
//! order. The lock is released before the commit, so the next event can join
//! the same group commit; an event the store refuses takes the events built on
//! it down with it, and those are rebuilt (`EventToPersist::generation`).

pub mod acl;
mod aliases;
mod create;
mod directory;
mod federated;
mod forks;
mod gaps;
mod history;
mod local_input;
mod membership;
mod recent;
mod redactions;
mod sending;
mod timeline;
mod view;
mod visibility;
mod writer;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use parking_lot::Mutex;
use tokio::sync::watch;

use ruma::{OwnedEventId, OwnedUserId, RoomVersionId};
use serde_json::Value;

pub use aliases::Aliases;
pub use create::CreateRoom;
pub use directory::{PublicRoom, PublicRooms, RoomList, RoomListScope};
pub use federated::FederatedReads;
pub use gaps::Incoming;
pub use history::Backfilled;
pub use membership::MemberAction;
pub(crate) use membership::membership_state;
pub use recent::RecentEvents;
pub use timeline::{EventContext, MessagesPage, MessagesRequest, Timeline};
pub use visibility::{HistoryVisibility, Visibility};
pub use writer::RoomWriter;
pub(crate) use writer::{WriterConfig, WriterDeps};

use crate::{Error, Result, pdu::Pdu};

/// The room state (state key "") an invitee is shown before joining.
pub(crate) const INVITE_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// How long a room writer's lease lasts without renewal (renewed every third
/// of it): how long a room waits for a writer process that died.
pub(crate) const LEASE_TTL_MS: i64 = 6_000;

/// A new event as a local client asks for it (also what a process forwards
/// to the room's writer process).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewEvent {
    pub sender: OwnedUserId,
    pub kind: String,
    pub content: Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
    /// (device_id, txn_id): a retry with the same pair returns the first event id.
    pub txn: Option<(String, String)>,
    /// `origin_server_ts` an application service chose (`?ts=`); now when
    /// `None`.
    #[serde(default)]
    pub ts: Option<u64>,
}

impl NewEvent {
    pub fn message(sender: OwnedUserId, kind: &str, content: Value) -> Self {
        Self {
            sender,
            kind: kind.to_owned(),
            content,
            state_key: None,
            redacts: None,
            txn: None,
            ts: None,
        }
    }

    pub fn state(sender: OwnedUserId, kind: &str, state_key: &str, content: Value) -> Self {
        Self {
            sender,
            kind: kind.to_owned(),
            content,
            state_key: Some(state_key.to_owned()),
            redacts: None,
            txn: None,
            ts: None,
        }
    }
}

/// A create event's content key by which a room declares that its creator's
/// server orders it (spec/federation.md, "Ordering"). Rooms without it
/// (created by other homeservers) follow plain Matrix: every server
/// appends events as they reach it and sends its own to all.
pub const ORDERING_KEY: &str = "io.hearth.ordering";
pub const ORDERING_OWNER: &str = "owner";

/// A room's current state by (type, state key).
pub(crate) type StateMap = HashMap<(String, String), Arc<Pdu>>;

/// What the writer keeps in memory for a room it has loaded. It runs ahead
/// of the database by the events submitted and not yet durable.
pub(crate) struct RoomCache {
    pub version: RoomVersionId,
    /// The room's forward extremities (events no other event names as a
    /// parent yet), with their depths: the next event's `prev_events`.
    pub extremities: Vec<(OwnedEventId, u64)>,
    /// This server's newest event sent to the room's owner and not relayed
    /// back yet: our next event builds on it too.
    pub pending_own: Option<(OwnedEventId, u64)>,
    pub state: StateMap,
    /// Moves whenever `state` changes (see `submitted`).
    pub state_serial: u64,
    /// Names this view to the store (`EventToPersist::generation`).
    pub generation: u64,
    /// Client transactions this view submitted, newest last.
    pub sent: VecDeque<SentTxn>,
    /// With several processes: the lease under which this view writes.
    pub fence: Option<crate::store::Fence>,
    /// Events this view submitted lately, newest last: an event another
    /// server hands over twice (its relay racing a join) is taken once,
    /// even before the first copy is durable.
    /// Each with `state_serial` once it was applied.
    pub submitted: VecDeque<(OwnedEventId, u64)>,
}

/// Event ids remembered per room view.
const SUBMITTED_IDS: usize = 1024;

impl RoomCache {
    pub fn note_submitted(&mut self, id: &OwnedEventId) {
        if self.submitted.len() >= SUBMITTED_IDS {
            self.submitted.pop_front();
        }
        self.submitted.push_back((id.clone(), self.state_serial));
    }

    pub fn submitted_contains(&self, id: &OwnedEventId) -> bool {
        self.submitted.iter().any(|(s, _)| s == id)
    }
}

/// Transactions remembered per room: a client retries within seconds.
const SENT_TXNS: usize = 256;

/// A client transaction the writer submitted, and whether it became durable
/// (`None` while the commit is under way).
pub(crate) struct SentTxn {
    user: OwnedUserId,
    device: String,
    txn_id: String,
    event_id: OwnedEventId,
    durable: watch::Receiver<Option<bool>>,
}

impl SentTxn {
    /// The first attempt's event once it is durable; `Superseded` (try again)
    /// if it was not.
    pub async fn wait(mut self) -> Result<OwnedEventId> {
        match self.durable.wait_for(Option::is_some).await.map(|v| *v) {
            Ok(Some(true)) => Ok(self.event_id),
            _ => Err(Error::Superseded),
        }
    }
}

impl RoomCache {
    pub fn sent_txn(&self, user: &OwnedUserId, device: &str, txn_id: &str) -> Option<SentTxn> {
        self.sent
            .iter()
            .rev()
            .find(|s| s.user == *user && s.device == device && s.txn_id == txn_id)
            .map(|s| SentTxn {
                user: s.user.clone(),
                device: s.device.clone(),
                txn_id: s.txn_id.clone(),
                event_id: s.event_id.clone(),
                durable: s.durable.clone(),
            })
    }

    /// Records a submitted transaction; the sender reports on its commit.
    pub fn remember_txn(
        &mut self,
        user: &OwnedUserId,
        device: &str,
        txn_id: &str,
        event_id: &OwnedEventId,
    ) -> watch::Sender<Option<bool>> {
        let (tx, durable) = watch::channel(None);
        if self.sent.len() >= SENT_TXNS {
            self.sent.pop_front();
        }
        self.sent.push_back(SentTxn {
            user: user.clone(),
            device: device.to_owned(),
            txn_id: txn_id.to_owned(),
            event_id: event_id.clone(),
            durable,
        });
        tx
    }
}

/// Each room's view behind its lock (`view.rs`), and which rooms this
/// process writes.
pub struct Rooms {
    handles: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<RoomCache>>>>>,
    pub recent: Arc<RecentEvents>,
    generations: AtomicU64,
    /// Rooms whose writer lease this process holds (renewed in the background).
    held: Mutex<HashSet<String>>,
    /// Rooms another process writes: its address, and until when that is
    /// taken as known without asking the database again.
    elsewhere: Mutex<HashMap<String, (String, std::time::Instant)>>,
    store: Arc<dyn crate::store::RoomStore>,
    /// The room directory (versions) and membership index.
    main: Arc<dyn crate::store::MainStore>,
    /// Names this process in room writer leases (random per start).
    writer_id: Arc<str>,
    /// Several processes writing rooms: leases, and where to reach this one.
    cluster: Option<crate::config::ClusterConfig>,
    server_name: ruma::OwnedServerName,
    /// Wakes a room's members (typing, receipts).
    notifier: Arc<crate::notifier::Notifier>,
    /// Runs the lease renewal.
    tasks: crate::tasks::Tasks,
    /// Reaches the room's other servers (its EDUs).
    links: Arc<crate::Links>,
}

/// How long "another process writes this room" is believed without asking
/// the database. Forwarding to a writer that no longer holds the room, or
/// cannot be reached, forgets it at once; this bounds the rest.
const WRITER_KNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(2);

impl Rooms {
    pub(crate) fn new(
        store: Arc<dyn crate::store::RoomStore>,
        main: Arc<dyn crate::store::MainStore>,
        cluster: Option<crate::config::ClusterConfig>,
        server_name: ruma::OwnedServerName,
        notifier: Arc<crate::notifier::Notifier>,
        tasks: crate::tasks::Tasks,
        links: Arc<crate::Links>,
    ) -> Self {
        Self {
            handles: Mutex::default(),
            recent: Arc::default(),
            generations: AtomicU64::default(),
            held: Mutex::default(),
            elsewhere: Mutex::default(),
            store,
            main,
            writer_id: Arc::from(crate::ids::random_string(16)),
            cluster,
            server_name,
            notifier,
            tasks,
            links,
        }
    }

    /// This server's name, as the rooms' views compare senders with it.
    pub(crate) fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    pub(crate) fn hold(&self, room_id: &str) {
        self.held.lock().insert(room_id.to_owned());
    }

    /// The process known to write the room, if recently learned.
    pub(crate) fn writer_elsewhere(&self, room_id: &str) -> Option<String> {
        let known = self.elsewhere.lock();
        let (address, until) = known.get(room_id)?;
        (std::time::Instant::now() < *until).then(|| address.clone())
    }

    pub(crate) fn learn_writer(&self, room_id: &str, address: &str) {
        let mut known = self.elsewhere.lock();
        let until = std::time::Instant::now() + WRITER_KNOWN_FOR;
        known.insert(room_id.to_owned(), (address.to_owned(), until));
    }

    pub(crate) fn forget_writer(&self, room_id: &str) {
        self.elsewhere.lock().remove(room_id);
    }

    pub(crate) fn release(&self, room_id: &str) {
        self.held.lock().remove(room_id);
    }

    pub(crate) fn held(&self) -> Vec<String> {
        self.held.lock().iter().cloned().collect()
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn handle(&self, room_id: &str) -> Arc<tokio::sync::Mutex<Option<RoomCache>>> {
        self.handles
            .lock()
            .entry(room_id.to_owned())
            .or_default()
            .clone()
    }
}

/// Reads a user's power level and the level an action needs from a
/// power_levels content (absent content means the room-creation defaults).
pub fn user_power(pl: Option<&Value>, creator: Option<&str>, user: &str) -> i64 {
    match pl {
        Some(pl) => pl
            .get("users")
            .and_then(|u| u.get(user))
            .and_then(Value::as_i64)
            .unwrap_or_else(|| pl.get("users_default").and_then(Value::as_i64).unwrap_or(0)),
        None => {
            if creator == Some(user) {
                100
            } else {
                0
            }
        }
    }
}

pub fn required_power(pl: Option<&Value>, key: &str, default: i64) -> i64 {
    pl.and_then(|p| p.get(key))
        .and_then(Value::as_i64)
        .unwrap_or(default)
}
