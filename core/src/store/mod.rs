//! Storage behind traits, so the SQLite (embedded) and Postgres (scale-out)
//! backends are interchangeable. Each trait is one area of the schema, and
//! the areas group into the two roles a database plays in the sharded layout
//! (spec/storage.md): `MainStore` and `RoomStore`. Each service holds only
//! the role it needs (ARCHITECTURE.md, Services).

pub mod postgres;
pub mod sharded;
pub mod sql;
pub mod sqlite;

use async_trait::async_trait;
use serde_json::Value;

use crate::{
    Result,
    pdu::{Pdu, StateMap, StoredEvent},
};

pub use sql::push::{NewNotification, NotificationRecord, PushStore, PusherRecord};

#[derive(Debug, Clone)]
pub struct UserRecord {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub deactivated: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceRecord {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ts: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct MembershipRecord {
    pub room_id: String,
    pub user_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream_ordering: i64,
    pub forgotten: bool,
}

#[derive(Debug, Clone)]
pub struct AccountDataRecord {
    /// Empty for global account data.
    pub room_id: String,
    pub data_type: String,
    pub content: Value,
    pub stream_id: i64,
}

#[derive(Debug, Clone)]
pub struct ReceiptRecord {
    pub room_id: String,
    pub receipt_type: String,
    pub user_id: String,
    /// Empty for an unthreaded receipt.
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
    pub stream_id: i64,
}

#[derive(Debug, Clone)]
pub struct MediaRecord {
    pub media_id: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: i64,
    pub uploader: Option<String>,
    pub created_ts: i64,
}

/// Direction of a timeline read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// What one accepted event changes, written in one transaction.
#[derive(Debug, Clone)]
pub struct EventToPersist {
    pub pdu: Pdu,
    /// (user, device, txn_id) for client sends: makes retries idempotent.
    pub txn: Option<(String, String, String)>,
    /// The generation of the writer's view of the room this event was built
    /// on. Once one event of a generation is refused, the later events of the
    /// same generation (built on top of it) are refused too, with
    /// `Error::Superseded`, and the writer rebuilds them on a fresh view.
    pub generation: u64,
    /// With several processes: the room writer's lease, checked inside the
    /// commit (an ex-writer's event is refused with `Error::LeaseLost`).
    pub fence: Option<Fence>,
    /// Other servers to send the event to (federation), queued in the same
    /// transaction as the event.
    pub relay: Vec<String>,
    /// The state keys the event changes: the event itself when it is a state
    /// event; after a fork, whatever state resolution settled on.
    pub state: Vec<StateChange>,
    /// Application services to push the event to, queued (by event id) in
    /// the same transaction: the outgoing queue's destination
    /// `appservice_destination(id)`.
    pub appservices: Vec<String>,
}

/// The outgoing queue's destination for an application service (its rows
/// hold event ids). Server names cannot start with '!'.
pub fn appservice_destination(id: &str) -> String {
    format!("!as/{id}")
}

/// One state key set at an event's position in the room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub kind: String,
    pub state_key: String,
    pub event_id: String,
    /// For `m.room.member`: the membership `event_id` gives.
    pub membership: Option<String>,
}

impl StateChange {
    /// What a state event sets by itself (`None` for other events).
    pub fn of(pdu: &Pdu) -> Option<Self> {
        let state_key = pdu.state_key.clone()?;
        let kind = pdu.kind.to_string();
        let membership =
            (kind == "m.room.member").then(|| pdu.membership().unwrap_or("leave").to_owned());
        Some(Self {
            kind,
            state_key,
            event_id: pdu.event_id.to_string(),
            membership,
        })
    }
}

/// A PDU (or an application service's event id) waiting in the outgoing queue.
#[derive(Debug, Clone)]
pub struct QueuedPdu {
    /// Which database holds it (0 unless sharded).
    pub source: usize,
    pub id: i64,
    /// The event JSON as signed.
    pub pdu: String,
}

/// A room writer's claim on its room: the process and the lease's epoch.
#[derive(Debug, Clone)]
pub struct Fence {
    pub holder: std::sync::Arc<str>,
    pub epoch: i64,
}

/// What asking for a room's writer lease found.
#[derive(Debug, Clone)]
pub enum Lease {
    /// This process holds it, in this epoch.
    Held { epoch: i64 },
    /// Another process does, reachable at `address`.
    HeldBy { address: String },
}

/// An event handed to the store, in its room's order; resolves to its stream
/// ordering once durable.
pub type PendingCommit = std::pin::Pin<Box<dyn std::future::Future<Output = Result<i64>> + Send>>;

/// Called with each event right after it commits, in commit order.
pub type CommitHook = std::sync::Arc<dyn Fn(&EventToPersist, i64) + Send + Sync>;

/// Users, devices, access tokens, filters and UIA sessions, in the main
/// database.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Fails with `Error::UserInUse` when the id is taken (including deactivated ids).
    async fn create_user(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
        is_admin: bool,
    ) -> Result<()>;
    async fn get_user(&self, user_id: &str) -> Result<Option<UserRecord>>;
    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<()>;
    /// Marks the user deactivated and removes every device and token.
    async fn deactivate_user(&self, user_id: &str) -> Result<()>;
    async fn set_displayname(&self, user_id: &str, name: Option<&str>) -> Result<()>;
    async fn set_avatar_url(&self, user_id: &str, url: Option<&str>) -> Result<()>;
    /// Searches users by id or display name (case-insensitive substring).
    async fn search_users(&self, term: &str, limit: i64) -> Result<Vec<UserRecord>>;

    /// Creates (or reuses) a device and attaches a new access token to it.
    async fn add_device_token(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        token_hash: &str,
    ) -> Result<()>;
    async fn find_token(&self, token_hash: &str) -> Result<Option<(String, String)>>;
    async fn delete_token(&self, token_hash: &str) -> Result<()>;
    async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRecord>>;
    async fn get_device(&self, user_id: &str, device_id: &str) -> Result<Option<DeviceRecord>>;
    async fn rename_device(
        &self,
        user_id: &str,
        device_id: &str,
        name: Option<&str>,
    ) -> Result<bool>;
    /// Deletes devices and their tokens; `None` deletes all of the user's devices.
    async fn delete_devices(&self, user_id: &str, device_ids: Option<&[String]>) -> Result<()>;
    /// Deletes all tokens of the user except one (used by password change).
    async fn delete_other_tokens(&self, user_id: &str, keep_token_hash: Option<&str>)
    -> Result<()>;
    async fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        ip: Option<&str>,
        ts: i64,
    ) -> Result<()>;

    async fn save_filter(&self, user_id: &str, filter: &Value) -> Result<String>;
    /// A UIA session touched at or after `since_ms`: its binding and the
    /// stages it completed.
    async fn uia_session(
        &self,
        session: &str,
        since_ms: i64,
    ) -> Result<Option<(String, Vec<String>)>>;
    /// Creates or updates a UIA session (touched now); sessions not touched
    /// since `expire_before_ms` are dropped.
    async fn put_uia_session(
        &self,
        session: &str,
        binding: &str,
        completed: &[String],
        expire_before_ms: i64,
    ) -> Result<()>;
    async fn delete_uia_session(&self, session: &str) -> Result<()>;
    /// What a registration's session remembers (JSON), if anything.
    async fn uia_session_params(&self, session: &str) -> Result<Option<Value>>;
    /// Remembers `params` with an existing session.
    async fn set_uia_session_params(&self, session: &str, params: &Value) -> Result<()>;
    async fn get_filter(&self, user_id: &str, filter_id: &str) -> Result<Option<Value>>;
    /// Keeps an OpenID token (by its hash) for `user_id` until
    /// `expires_ms`; tokens expired at `now_ms` are dropped.
    async fn add_openid_token(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<()>;
    /// The user an OpenID token (by its hash) still valid at `now_ms` is for.
    async fn openid_token_user(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>>;
}

/// A room's events, state, client transaction ids and writer lease, on the
/// room's shard; and the reads that span every room (stream positions, the
/// rooms that moved), which the sharded layout routes by room.
#[async_trait]
pub trait EventStore: Send + Sync {
    async fn create_room(&self, room_id: &str, version: &str, creator: &str) -> Result<()>;
    /// Queues an event behind the events submitted before it, to be written
    /// with its state, membership and transaction-id rows atomically. Events
    /// of one room commit in submission order, so a writer may submit the
    /// next event before the previous one is durable.
    async fn submit_event(&self, ev: EventToPersist) -> Result<PendingCommit>;
    /// Submits an event and waits until it is durable; returns its ordering.
    async fn persist_event(&self, ev: EventToPersist) -> Result<i64> {
        self.submit_event(ev).await?.await
    }
    /// Sets the hook that hears of every committed event (set once, at start).
    fn on_commit(&self, hook: CommitHook);
    /// Takes (or renews) the room's writer lease for `holder`, unless another
    /// holder's lease is live (spec/cluster.md).
    async fn acquire_room_lease(
        &self,
        room_id: &str,
        holder: &str,
        address: &str,
        ttl_ms: i64,
    ) -> Result<Lease>;
    /// Extends `holder`'s leases on these rooms; returns those still held.
    async fn renew_room_leases(
        &self,
        room_ids: &[String],
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Vec<String>>;
    /// The event a client transaction (per room, user and device) made.
    async fn txn_event(
        &self,
        room_id: &str,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
    ) -> Result<Option<String>>;
    async fn get_event(&self, event_id: &str) -> Result<Option<StoredEvent>>;
    /// Replaces an event's JSON with its redacted form.
    async fn store_redacted(
        &self,
        event_id: &str,
        redacted_json: &Value,
        redacted_by: &str,
    ) -> Result<()>;
    /// The redactions stored in the room that name `event_id` (one that came
    /// before its target is applied when the target arrives).
    async fn redactions_of(&self, room_id: &str, event_id: &str) -> Result<Vec<StoredEvent>>;
    /// The room's newest event (for prev_events and depth).
    async fn latest_event(&self, room_id: &str) -> Result<Option<StoredEvent>>;
    async fn current_state(&self, room_id: &str) -> Result<Vec<StoredEvent>>;
    /// State at (and including) a stream position: latest event per key.
    async fn state_at(&self, room_id: &str, at: i64) -> Result<StateMap<String>>;
    async fn state_event_at(
        &self,
        room_id: &str,
        kind: &str,
        state_key: &str,
        at: i64,
    ) -> Result<Option<StoredEvent>>;
    /// State events with `after < ordering <= upto`, latest per key.
    async fn state_changes(&self, room_id: &str, after: i64, upto: i64)
    -> Result<Vec<StoredEvent>>;
    async fn get_events(&self, event_ids: &[String]) -> Result<Vec<StoredEvent>>;
    /// Timeline read from a boundary: Backward returns orderings <= from, newest
    /// first; Forward returns orderings > from, oldest first. `to` bounds the other end.
    async fn room_events(
        &self,
        room_id: &str,
        from: i64,
        to: Option<i64>,
        dir: Direction,
        limit: i64,
    ) -> Result<Vec<StoredEvent>>;
    /// Where history older than the room's oldest events here continues:
    /// (event id, depth) of the parents those events name that were never
    /// had (spec/federation.md, "Filling gaps").
    async fn backfill_frontier(&self, room_id: &str) -> Result<Vec<(String, i64)>>;
    /// Stores history fetched from other servers (`events`, newest first)
    /// below every position held, so no sync shows it as new, with their
    /// state rows (for history visibility at them; current state is not
    /// touched), and replaces the room's frontier with `frontier`. Events
    /// held already are skipped.
    async fn store_history(
        &self,
        room_id: &str,
        events: &[crate::pdu::Pdu],
        frontier: &[(String, i64)],
    ) -> Result<()>;
    /// The rooms that have events with `after < ordering <= upto` (positions
    /// per shard, by shard index), each with the newest such ordering.
    async fn rooms_with_events(
        &self,
        room_ids: &[String],
        after: &[i64],
        upto: &[i64],
    ) -> Result<Vec<(String, i64)>>;
    /// The newest committed position of each shard's stream (events and
    /// receipts), by shard index.
    async fn stream_positions(&self) -> Result<Vec<i64>>;
    /// Re-reads where the streams stand from the databases (other processes
    /// write them too); returns whether anything moved.
    async fn refresh_stream_heads(&self) -> Result<bool>;
    /// Other processes write these databases too: stop answering from what
    /// this process alone has seen (cached rows, per-room stream heads).
    fn share_with_other_processes(&self);
    /// Which shard holds a room's events, state and receipts.
    async fn shard_of(&self, room_id: &str) -> Result<usize>;
    /// Joined members of any public room. A room role read: which rooms are
    /// public is their join rule, in their state on their shards (the
    /// sharded router then asks the main index for their members).
    async fn users_in_public_rooms(&self) -> Result<Vec<String>>;
}

/// The room directory (version, publication), aliases and the membership
/// index, in the main database.
#[async_trait]
pub trait DirectoryStore: Send + Sync {
    async fn room_version(&self, room_id: &str) -> Result<Option<String>>;
    async fn set_room_public(&self, room_id: &str, public: bool) -> Result<()>;
    async fn is_room_public(&self, room_id: &str) -> Result<bool>;
    async fn public_rooms(&self) -> Result<Vec<String>>;
    /// Publishes (or withdraws) a room in an application service's list
    /// for one of its networks.
    async fn set_appservice_room_public(
        &self,
        appservice_id: &str,
        network_id: &str,
        room_id: &str,
        public: bool,
    ) -> Result<()>;
    /// The rooms of one service's network list, or (`None`) of every one.
    async fn appservice_public_rooms(&self, list: Option<(&str, &str)>) -> Result<Vec<String>>;
    async fn memberships_of_user(&self, user_id: &str) -> Result<Vec<MembershipRecord>>;
    async fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<MembershipRecord>>;
    async fn room_members(
        &self,
        room_id: &str,
        membership: Option<&str>,
    ) -> Result<Vec<MembershipRecord>>;
    async fn forget_room(&self, room_id: &str, user_id: &str) -> Result<()>;
    /// Users who share a joined room with `user_id` (including the user).
    async fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>>;
    async fn create_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<()>;
    async fn resolve_alias(&self, alias: &str) -> Result<Option<(String, String)>>;
    async fn delete_alias(&self, alias: &str) -> Result<bool>;
    async fn room_aliases(&self, room_id: &str) -> Result<Vec<String>>;
}

/// Account data and the misc stream's position, media records and the
/// server's signing keys, in the main database.
#[async_trait]
pub trait DataStore: Send + Sync {
    async fn put_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        data_type: &str,
        content: &Value,
    ) -> Result<i64>;
    async fn get_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        data_type: &str,
    ) -> Result<Option<Value>>;
    /// Account data with `after < stream_id <= upto`.
    async fn account_data_since(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<AccountDataRecord>>;
    /// The position of the account-data stream.
    async fn max_misc_stream_id(&self) -> Result<i64>;
    async fn put_media(&self, m: &MediaRecord) -> Result<()>;
    async fn get_media(&self, media_id: &str) -> Result<Option<MediaRecord>>;
    /// Every signing key this server has had, oldest first.
    async fn server_keys(&self) -> Result<Vec<StoredServerKey>>;
    /// Adds a signing key; the current one, if any, expires now.
    async fn add_server_key(&self, key_id: &str, pkcs8: &[u8]) -> Result<()>;
}

/// Receipts, on their room's shard: their positions are on its stream.
#[async_trait]
pub trait ReceiptStore: Send + Sync {
    /// Stores a receipt; its stream id is a position in its room's shard stream.
    async fn put_receipt(&self, r: &ReceiptRecord) -> Result<i64>;
    /// Receipts with `after < stream_id <= upto` (positions per shard).
    async fn receipts_since(
        &self,
        room_ids: &[String],
        after: &[i64],
        upto: &[i64],
    ) -> Result<Vec<ReceiptRecord>>;
    /// Where the user has read up to in a room: the stream ordering of the
    /// newest event their `m.read` or `m.read.private` receipts point at.
    async fn read_position(&self, room_id: &str, user_id: &str) -> Result<Option<i64>>;
}

/// The outgoing queue: PDUs owed to other servers and event ids owed to
/// application services (`appservice_destination`), written on the room's
/// shard in the event's own transaction; senders read a batch and acknowledge.
#[async_trait]
pub trait OutgoingStore: Send + Sync {
    /// Queues an event for other servers without appending it to the room
    /// (this server does not order the room: its owner does), claiming the
    /// client's transaction id in the same transaction. A retried
    /// transaction id fails with `Error::DuplicateTransaction`.
    async fn queue_outgoing(
        &self,
        room_id: &str,
        txn: Option<(String, String, String)>,
        event_id: &str,
        destinations: &[String],
        pdu_json: &str,
    ) -> Result<()>;
    /// The oldest PDUs queued for `destination`, at most `limit`, each
    /// database's in queue order.
    async fn outgoing_batch(&self, destination: &str, limit: usize) -> Result<Vec<QueuedPdu>>;
    /// Drops what a destination acknowledged: per database, every PDU up to
    /// and including the id given.
    async fn outgoing_ack(&self, destination: &str, upto: &[(usize, i64)]) -> Result<()>;
    /// Destinations with PDUs waiting.
    async fn outgoing_destinations(&self) -> Result<Vec<String>>;
}

/// One of the server's signing keys.
#[derive(Debug, Clone)]
pub struct StoredServerKey {
    pub key_id: String,
    pub pkcs8: Vec<u8>,
    /// When it stopped signing (unix ms); `None` for the current key.
    pub expired_ts: Option<i64>,
}

/// A key-backup version (`/room_keys/version`).
#[derive(Debug, Clone)]
pub struct BackupVersion {
    pub version: i64,
    pub algorithm: String,
    pub auth_data: Value,
    /// Bumped whenever the keys in the version change.
    pub etag: i64,
}

/// One session key in a backup: (room, session, the `KeyBackupData`).
pub type BackupKey = (String, String, Value);

/// End-to-end encryption: public keys, to-device inboxes and key backups, all
/// in the main database. Positions drawn here are on the misc stream (shared
/// with account data), so one sync token covers them.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a device's identity keys. Unless they are unchanged, records a
    /// device-list change for the user and returns its position.
    async fn put_device_keys(&self, user: &str, device: &str, keys: &Value) -> Result<Option<i64>>;
    /// The identity keys of the user's devices: (device, keys).
    async fn device_keys(&self, user: &str) -> Result<Vec<(String, Value)>>;
    /// Adds one-time keys `(algorithm, key_id, key)`. A key id already held
    /// with different content fails with `InvalidParam` and adds nothing.
    async fn add_one_time_keys(
        &self,
        user: &str,
        device: &str,
        keys: &[(String, String, Value)],
    ) -> Result<()>;
    /// Sets the device's fallback key for an algorithm (unused again when it
    /// is a new key).
    async fn put_fallback_key(
        &self,
        user: &str,
        device: &str,
        algorithm: &str,
        key_id: &str,
        key: &Value,
    ) -> Result<()>;
    /// Unclaimed one-time keys per algorithm, and the algorithms whose
    /// fallback key is unused.
    async fn key_counts(
        &self,
        user: &str,
        device: &str,
    ) -> Result<(Vec<(String, i64)>, Vec<String>)>;
    /// Hands out one one-time key of the algorithm (deleted as it is handed
    /// out, so no two claims get the same key), or the fallback key when none
    /// is left: `("algorithm:key_id", key)`.
    async fn claim_key(
        &self,
        user: &str,
        device: &str,
        algorithm: &str,
    ) -> Result<Option<(String, Value)>>;
    /// Replaces cross-signing keys `(key type, key)` and records a
    /// device-list change for the user.
    async fn put_cross_signing_keys(&self, user: &str, keys: &[(String, Value)]) -> Result<i64>;
    /// The user's cross-signing keys: (key type, key).
    async fn cross_signing_keys(&self, user: &str) -> Result<Vec<(String, Value)>>;
    /// Adds signatures to the stored key of `user`: a device (`key` is a
    /// device id) or a cross-signing key (`key` is its public key), `by`
    /// signer → key id → signature. Records a device-list change.
    async fn add_key_signatures(
        &self,
        user: &str,
        key: &str,
        signatures: &serde_json::Map<String, Value>,
    ) -> Result<bool>;
    /// Stores `signer`'s signatures (key id → signature) of another user's
    /// master key; only the signer is shown them.
    async fn add_user_signatures(
        &self,
        signer: &str,
        target: &str,
        target_key: &str,
        signatures: &[(String, String)],
    ) -> Result<i64>;
    /// `signer`'s signatures of `target`'s keys: (target key, key id,
    /// signature).
    async fn user_signatures(
        &self,
        signer: &str,
        target: &str,
    ) -> Result<Vec<(String, String, String)>>;
    /// Records that the users' devices or keys changed; the position.
    async fn device_lists_changed(&self, users: &[String]) -> Result<i64>;
    /// Users whose devices changed with `after < position <= upto`.
    async fn device_list_changes(&self, after: i64, upto: i64) -> Result<Vec<String>>;
    /// The newest device-list position of a user (federation's stream_id).
    async fn device_list_position(&self, user: &str) -> Result<i64>;
    /// Forgets the keys, one-time keys and inbox of deleted devices and
    /// records a device-list change.
    async fn delete_device_keys(&self, user: &str, devices: &[String]) -> Result<i64>;
    /// Queues to-device messages `(user, device, message)`; with a
    /// transaction id `(sender, sender device, txn)`, a repeat queues nothing
    /// and returns `None`.
    async fn queue_to_device(
        &self,
        txn: Option<(&str, &str, &str)>,
        messages: &[(String, String, Value)],
    ) -> Result<Option<i64>>;
    /// A device's messages with `after < position <= upto`, oldest first.
    async fn to_device_messages(
        &self,
        user: &str,
        device: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Value)>>;
    /// Drops a device's messages up to `upto` (it has synced past them).
    async fn delete_to_device(&self, user: &str, device: &str, upto: i64) -> Result<()>;

    async fn create_backup(&self, user: &str, algorithm: &str, auth_data: &Value) -> Result<i64>;
    /// A backup version, or the newest when `version` is `None`; deleted
    /// versions are not found.
    async fn backup_version(
        &self,
        user: &str,
        version: Option<i64>,
    ) -> Result<Option<BackupVersion>>;
    async fn update_backup(&self, user: &str, version: i64, auth_data: &Value) -> Result<bool>;
    async fn delete_backup(&self, user: &str, version: i64) -> Result<bool>;
    /// Writes session keys into a version and bumps its etag.
    async fn put_backup_keys(&self, user: &str, version: i64, keys: &[BackupKey]) -> Result<()>;
    /// Keys of a version, optionally of one room or one session.
    async fn backup_keys(
        &self,
        user: &str,
        version: i64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Vec<BackupKey>>;
    /// Deletes keys of a version (all, a room's or a session) and bumps its
    /// etag.
    async fn delete_backup_keys(
        &self,
        user: &str,
        version: i64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<()>;
    async fn backup_key_count(&self, user: &str, version: i64) -> Result<i64>;
}

/// The main database's role (spec/storage.md): whatever belongs to a user or
/// to the server rather than to one room's timeline, and the index of rooms
/// and memberships that finds a room's shard and a user's rooms.
pub trait MainStore: AccountStore + DirectoryStore + DataStore + KeyStore + PushStore {}
impl<T: AccountStore + DirectoryStore + DataStore + KeyStore + PushStore> MainStore for T {}

/// A room shard's role: events, state, leases, receipts and the outgoing
/// queue, everything written in a room's event commits. The sharded layout
/// implements it by routing each call to the room's shard.
pub trait RoomStore: EventStore + ReceiptStore + OutgoingStore {}
impl<T: EventStore + ReceiptStore + OutgoingStore> RoomStore for T {}

/// One database playing both roles (SQLite, or Postgres unsharded).
pub trait Store: MainStore + RoomStore {}
impl<T: MainStore + RoomStore> Store for T {}

/// The two handles `Hearth::new` takes. With one database both are the same
/// store; sharded, `rooms` routes to the shards and `main` is the main
/// database the router reads its index from.
#[derive(Clone)]
pub struct Stores {
    pub main: std::sync::Arc<dyn MainStore>,
    pub rooms: std::sync::Arc<dyn RoomStore>,
}

impl Stores {
    /// Both roles on one database.
    pub fn single<S: Store + 'static>(store: std::sync::Arc<S>) -> Self {
        Self {
            main: store.clone(),
            rooms: store,
        }
    }
}
