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
pub mod input;
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

use std::sync::Arc;

pub use config::CoreConfig;
pub use error::{Error, Result};
pub use ruma;

use crate::{
    ephemeral::Presence,
    keys::ServerKeys,
    notifier::Notifier,
    rooms::Rooms,
    store::{MainStore, RoomStore, Stores},
    unread::UnreadCache,
};

/// The homeserver's services, shared by every request handler.
pub struct Hearth {
    pub config: CoreConfig,
    /// Only core reaches the store: every rule sits between a request and
    /// its storage, whatever the entry point (ARCHITECTURE.md, invariants).
    /// The room role, for the commit hook and sharing stream positions at
    /// start-up (events, state, receipts, the outgoing queue).
    pub(crate) store: Arc<dyn RoomStore>,
    pub keys: Arc<ServerKeys>,
    pub notifier: Arc<Notifier>,
    /// Typing and presence, with the bus (`ephemeral.rs`, `cluster.rs`).
    pub ephemeral: Arc<ephemeral::Ephemeral>,
    /// Read receipts and the fully-read marker (`receipts.rs`).
    pub receipts: Arc<receipts::Receipts>,
    /// `/messages`, `/context` and history backfilled from other servers
    /// (`rooms/timeline.rs`, `rooms/history.rs`).
    pub timeline: Arc<rooms::Timeline>,
    /// Each room's view and lease (`rooms/view.rs`).
    pub rooms: Arc<Rooms>,
    /// The single writer of every room, creation and membership (`rooms/writer.rs`).
    pub writer: Arc<rooms::RoomWriter>,
    /// Display names and avatars (`profile.rs`).
    pub profiles: Arc<profile::Profiles>,
    /// Sync, long-polled (`sync/`).
    pub sync: Arc<sync::Syncer>,
    /// Rate limits on sends, logins and registrations (`ratelimit.rs`).
    pub rate_limits: Arc<ratelimit::RateLimits>,
    /// Clients' stored filters (`filter.rs`).
    pub filters: Arc<filter::Filters>,
    /// Local room aliases (`rooms/aliases.rs`).
    pub aliases: Arc<rooms::Aliases>,
    /// Room publication and the user directory (`directory.rs`).
    pub directory: Arc<directory::Directory>,
    /// The public room list (`rooms/directory.rs`).
    pub room_list: Arc<rooms::RoomList>,
    /// History visibility (`rooms/visibility.rs`).
    pub visibility: Arc<rooms::Visibility>,
    /// What other servers may read of a room (`rooms/federated.rs`).
    pub federated: Arc<rooms::FederatedReads>,
    /// Sync's unread counts (`unread.rs`).
    pub unread: Arc<unread::Unread>,
    /// Keys, to-device messages and device lists (`e2ee/`).
    pub e2ee: Arc<e2ee::E2ee>,
    /// A user's devices: listing and renaming (`devices.rs`).
    pub devices: Arc<devices::Devices>,
    /// Accounts and access tokens (`accounts.rs`).
    pub accounts: Arc<accounts::Accounts>,
    /// User-interactive auth (`uia.rs`).
    pub uia: Arc<uia::Uia>,
    /// Push rules, notifications and pushes to gateways (spec/push.md).
    pub push: Arc<push::Push>,
    /// Flips to true when the server starts draining: long-polls answer at
    /// once and WebSockets are told to reconnect elsewhere.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Every long-lived background task, stopped and awaited at shutdown.
    pub tasks: tasks::Tasks,
    /// Federation, forwarding and application services, set after start-up.
    pub links: Arc<Links>,
    /// Registered application services (bridges).
    pub appservices: Arc<appservice::AppServices>,
    /// Woken when events were queued for application services.
    pub appservice_queued: Arc<tokio::sync::Notify>,
    /// Typing and receipts waiting for application services.
    pub appservice_ephemeral: Arc<appservice::EphemeralQueues>,
    /// Ephemeral events queued for application services, and what they are
    /// asked (`appservice.rs`).
    pub to_appservices: Arc<appservice::ToAppServices>,
    /// The content repository (`media.rs`).
    pub media: Arc<media::Media>,
    /// Account data and room tags (`account_data.rs`).
    pub account_data: Arc<account_data::AccountData>,
    /// Server-side key backup (`e2ee/backup.rs`).
    pub key_backup: Arc<e2ee::backup::KeyBackup>,
    /// The outgoing queue as its senders read it (`outgoing.rs`).
    pub outgoing: Arc<outgoing::Outgoing>,
}

/// What core reaches in the crates built on it, set once they start (after
/// `Hearth::new`): shared by the services that call out, so none of them
/// needs the whole `Hearth`.
#[derive(Default)]
pub struct Links {
    /// Reaches the process that writes a room, when it is not this one.
    pub forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
    /// Asks other servers (federation), when this server federates.
    pub remote: std::sync::OnceLock<Arc<dyn Remote>>,
    /// Asks application services (alias and user queries).
    pub appservice: std::sync::OnceLock<Arc<dyn appservice::AppServiceQueries>>,
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
    pub async fn new(config: CoreConfig, stores: Stores) -> Result<Arc<Self>> {
        let keys = Arc::new(ServerKeys::load_or_generate(stores.main.as_ref()).await?);
        let bus = match &config.redis {
            Some(r) => Some(bus::Bus::new(&r.url, &r.key_prefix)?),
            None => None,
        };
        let hearth = Arc::new(Self::wire(
            config,
            stores,
            keys,
            bus.as_ref().map(|(b, _)| b.clone()),
        ));
        if hearth.config.cluster.is_some() {
            hearth.rooms.spawn_lease_renewal();
        }
        if let Some((bus, outbox)) = bus {
            hearth.store.share_with_other_processes();
            hearth.ephemeral.join_cluster(bus, outbox);
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
        hearth.push.spawn_push_worker();
        hearth.ephemeral.spawn_sweepers();
        hearth.accounts.ensure_appservice_users().await?;
        Ok(hearth)
    }

    /// Builds the services bottom-up, each given only what its constructor
    /// names: the state several share first, then the services over it.
    fn wire(
        config: CoreConfig,
        stores: Stores,
        keys: Arc<ServerKeys>,
        bus: Option<Arc<bus::Bus>>,
    ) -> Self {
        let shared = Shared::new(&config, &stores);
        let (aliases, directory, room_list, visibility, federated) =
            Self::room_services(&config, &stores, &shared.rooms, &shared.appservices);
        let Stores { main, rooms: store } = stores;
        let (e2ee, devices, accounts, uia) =
            Self::user_services(&config, &main, &shared, bus.is_none());
        let (streams, to_appservices, ephemeral, receipts) =
            Self::ephemeral_services(&config, &store, &main, &shared, bus);
        let (writer, profiles) = Self::writing_services(
            &config,
            &store,
            &main,
            &keys,
            &shared,
            &ephemeral,
            &to_appservices,
        );
        let (timeline, unread, sync) = Self::reading_services(
            &store,
            &main,
            &shared,
            &visibility,
            &streams,
            &ephemeral,
            &e2ee,
        );
        // Fields are built in the order written: `config`, the stores and the
        // shared state move in last, after the services that copy them.
        Self {
            media: Arc::new(media::Media::new(
                main.clone(),
                &config.data_dir,
                config.max_upload_size,
            )),
            account_data: Arc::new(account_data::AccountData::new(
                main.clone(),
                shared.notifier.clone(),
            )),
            key_backup: Arc::new(e2ee::backup::KeyBackup::new(main.clone())),
            outgoing: Arc::new(outgoing::Outgoing::new(store.clone())),
            filters: Arc::new(filter::Filters::new(main.clone())),
            rate_limits: shared.rate_limits,
            writer,
            profiles,
            timeline,
            aliases,
            directory,
            room_list,
            visibility,
            federated,
            shutdown: shared.shutdown,
            receipts,
            to_appservices,
            ephemeral,
            appservice_ephemeral: shared.appservice_ephemeral,
            appservice_queued: shared.appservice_queued,
            e2ee,
            devices,
            accounts,
            uia,
            notifier: shared.notifier,
            links: shared.links,
            unread,
            sync,
            tasks: shared.tasks,
            rooms: shared.rooms,
            push: shared.push,
            appservices: shared.appservices,
            keys,
            config,
            store,
        }
    }

    /// The services that read rooms through `Rooms`.
    fn room_services(
        config: &CoreConfig,
        stores: &Stores,
        rooms: &Arc<Rooms>,
        appservices: &Arc<appservice::AppServices>,
    ) -> RoomServices {
        let Stores { main, rooms: store } = stores;
        let visibility = Arc::new(rooms::Visibility::new(
            store.clone(),
            main.clone(),
            rooms.clone(),
        ));
        let federated = Arc::new(rooms::FederatedReads::new(
            store.clone(),
            main.clone(),
            config.server_name.clone(),
            rooms.clone(),
            visibility.clone(),
        ));
        (
            Arc::new(rooms::Aliases::new(
                main.clone(),
                config.server_name.clone(),
                appservices.clone(),
                rooms.clone(),
            )),
            Arc::new(directory::Directory::new(
                main.clone(),
                store.clone(),
                rooms.clone(),
            )),
            Arc::new(rooms::RoomList::new(main.clone(), rooms.clone())),
            visibility,
            federated,
        )
    }

    /// The stream heads, what application services are sent, typing and
    /// presence over them (with the bus), and receipts.
    fn ephemeral_services(
        config: &CoreConfig,
        store: &Arc<dyn RoomStore>,
        main: &Arc<dyn MainStore>,
        shared: &Shared,
        bus: Option<Arc<bus::Bus>>,
    ) -> (
        Arc<cluster::Streams>,
        Arc<appservice::ToAppServices>,
        Arc<ephemeral::Ephemeral>,
        Arc<receipts::Receipts>,
    ) {
        let streams = Arc::new(cluster::Streams::new(
            store.clone(),
            shared.notifier.clone(),
            bus.is_some(),
        ));
        let to_appservices = Arc::new(appservice::ToAppServices::new(
            main.clone(),
            shared.appservices.clone(),
            shared.rooms.clone(),
            shared.links.clone(),
            shared.presence.clone(),
            shared.appservice_ephemeral.clone(),
            shared.appservice_queued.clone(),
        ));
        let ephemeral = Arc::new(ephemeral::Ephemeral::new(ephemeral::EphemeralDeps {
            store: main.clone(),
            server_name: config.server_name.clone(),
            presence: shared.presence.clone(),
            bus,
            tasks: shared.tasks.clone(),
            notifier: shared.notifier.clone(),
            rooms: shared.rooms.clone(),
            to_appservices: to_appservices.clone(),
            links: shared.links.clone(),
            appservices: shared.appservices.clone(),
            appservice_ephemeral: shared.appservice_ephemeral.clone(),
            streams: streams.clone(),
        }));
        let receipts = Arc::new(receipts::Receipts::new(
            store.clone(),
            main.clone(),
            shared.rooms.clone(),
            to_appservices.clone(),
            ephemeral.clone(),
        ));
        (streams, to_appservices, ephemeral, receipts)
    }

    /// The rooms' writer, over the room services and the signing keys, and
    /// profiles, which re-send members' events through it.
    fn writing_services(
        config: &CoreConfig,
        store: &Arc<dyn RoomStore>,
        main: &Arc<dyn MainStore>,
        keys: &Arc<ServerKeys>,
        shared: &Shared,
        ephemeral: &Arc<ephemeral::Ephemeral>,
        to_appservices: &Arc<appservice::ToAppServices>,
    ) -> (Arc<rooms::RoomWriter>, Arc<profile::Profiles>) {
        let writer = Arc::new(rooms::RoomWriter::new(rooms::WriterDeps {
            store: store.clone(),
            main: main.clone(),
            config: rooms::WriterConfig {
                server_name: config.server_name.clone(),
                default_room_version: config.default_room_version.clone(),
                rate_limits: config.rate_limits.clone(),
            },
            keys: keys.clone(),
            rooms: shared.rooms.clone(),
            links: shared.links.clone(),
            notifier: shared.notifier.clone(),
            appservices: shared.appservices.clone(),
            appservice_queued: shared.appservice_queued.clone(),
            rate_limits: shared.rate_limits.clone(),
            ephemeral: ephemeral.clone(),
            to_appservices: to_appservices.clone(),
        }));
        let profiles = Arc::new(profile::Profiles::new(
            main.clone(),
            config.server_name.clone(),
            shared.links.clone(),
            to_appservices.clone(),
            writer.clone(),
        ));
        (writer, profiles)
    }

    /// What clients read: one event, `/messages` and `/context` pages
    /// (with history backfilled from other servers), unread counts, and sync
    /// over every service it reads.
    fn reading_services(
        store: &Arc<dyn RoomStore>,
        main: &Arc<dyn MainStore>,
        shared: &Shared,
        visibility: &Arc<rooms::Visibility>,
        streams: &Arc<cluster::Streams>,
        ephemeral: &Arc<ephemeral::Ephemeral>,
        e2ee: &Arc<e2ee::E2ee>,
    ) -> (Arc<rooms::Timeline>, Arc<unread::Unread>, Arc<sync::Syncer>) {
        let timeline = Arc::new(rooms::Timeline::new(
            store.clone(),
            main.clone(),
            shared.rooms.clone(),
            visibility.clone(),
            streams.clone(),
            shared.links.clone(),
        ));
        let unread = Arc::new(unread::Unread::new(
            store.clone(),
            shared.unread.clone(),
            shared.push.clone(),
        ));
        let sync = Arc::new(sync::Syncer::new(sync::SyncDeps {
            store: store.clone(),
            main: main.clone(),
            rooms: shared.rooms.clone(),
            visibility: visibility.clone(),
            ephemeral: ephemeral.clone(),
            e2ee: e2ee.clone(),
            unread: unread.clone(),
            push: shared.push.clone(),
            streams: streams.clone(),
            notifier: shared.notifier.clone(),
            shutdown: shared.shutdown.clone(),
        }));
        (timeline, unread, sync)
    }

    /// Whether a user id belongs to this server.
    pub fn is_local(&self, user: &str) -> bool {
        ids::user_on_server(user, &self.config.server_name)
    }

    /// Keys and devices, accounts and UIA: each built on the one before.
    fn user_services(
        config: &CoreConfig,
        store: &Arc<dyn MainStore>,
        shared: &Shared,
        single_process: bool,
    ) -> (
        Arc<e2ee::E2ee>,
        Arc<devices::Devices>,
        Arc<accounts::Accounts>,
        Arc<uia::Uia>,
    ) {
        let e2ee = Arc::new(e2ee::E2ee::new(
            store.clone(),
            shared.notifier.clone(),
            shared.links.clone(),
            shared.push.clone(),
            config.server_name.clone(),
            single_process,
        ));
        let devices = Arc::new(devices::Devices::new(store.clone(), e2ee.clone()));
        let accounts = Arc::new(accounts::Accounts::new(
            store.clone(),
            config.server_name.clone(),
            shared.appservices.clone(),
            e2ee.clone(),
        ));
        let uia = Arc::new(uia::Uia::new(
            store.clone(),
            config.registration_tokens.clone(),
            accounts.clone(),
            shared.rate_limits.clone(),
        ));
        (e2ee, devices, accounts, uia)
    }
}

/// Aliases, the directory, the room list, visibility and federated reads,
/// as `Hearth::room_services` builds them.
type RoomServices = (
    Arc<rooms::Aliases>,
    Arc<directory::Directory>,
    Arc<rooms::RoomList>,
    Arc<rooms::Visibility>,
    Arc<rooms::FederatedReads>,
);

/// The state several services take, built before them (`Hearth::wire`).
struct Shared {
    notifier: Arc<Notifier>,
    links: Arc<Links>,
    unread: Arc<UnreadCache>,
    tasks: tasks::Tasks,
    rooms: Arc<Rooms>,
    push: Arc<push::Push>,
    appservices: Arc<appservice::AppServices>,
    presence: Arc<Presence>,
    appservice_ephemeral: Arc<appservice::EphemeralQueues>,
    appservice_queued: Arc<tokio::sync::Notify>,
    rate_limits: Arc<ratelimit::RateLimits>,
    /// Flips when the server drains (`Hearth::shutdown`).
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn new(config: &CoreConfig, stores: &Stores) -> Self {
        let notifier = Arc::new(Notifier::default());
        let links = Arc::new(Links::default());
        let unread = Arc::new(UnreadCache::default());
        let tasks = tasks::Tasks::default();
        let rooms = Arc::new(Rooms::new(
            stores.rooms.clone(),
            stores.main.clone(),
            config.cluster.clone(),
            config.server_name.clone(),
            notifier.clone(),
            tasks.clone(),
            links.clone(),
        ));
        let push = Arc::new(push::Push::new(
            config.push,
            config.cluster.is_some() || config.redis.is_some(),
            stores,
            notifier.clone(),
            unread.clone(),
            rooms.clone(),
            tasks.clone(),
        ));
        let appservices = Arc::new(appservice::AppServices::new(config.appservices.clone()));
        let presence = Arc::new(Presence::new(config.presence));
        let appservice_ephemeral = Arc::new(appservice::EphemeralQueues::default());
        let appservice_queued = Arc::new(tokio::sync::Notify::new());
        Self {
            notifier,
            links,
            unread,
            tasks,
            rooms,
            push,
            appservices,
            presence,
            appservice_ephemeral,
            appservice_queued,
            rate_limits: Arc::new(ratelimit::RateLimits::new(config.rate_limits.clone())),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }
}
