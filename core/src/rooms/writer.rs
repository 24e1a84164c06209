use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use ruma::{
    CanonicalJsonObject, OwnedEventId, RoomId, RoomVersionId, events::TimelineEventType,
    events::room::member::MembershipState, room_version_rules::RoomVersionRules,
};
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::{LEASE_TTL_MS, NewEvent, RoomCache, Rooms};
use crate::{
    Error, Links, Result,
    appservice::{AppServices, ToAppServices},
    ephemeral::Ephemeral,
    ids::now_ms,
    keys::ServerKeys,
    notifier::Notifier,
    pdu::Pdu,
    ratelimit::RateLimits,
    store::{EventToPersist, StateChange},
};

const MAX_PDU_SIZE: usize = 65536;

/// A new create event's `origin_server_ts`: now, but always later than the
/// previous one this process made. From room version 12 the room id is the
/// create event's hash, and two createRoom calls by one user in the same
/// millisecond would otherwise build the same event, hence the same room.
fn create_event_ts() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let previous = LAST
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    now.max(previous + 1)
}

pub(crate) fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version
        .rules()
        .ok_or_else(|| Error::UnsupportedRoomVersion(version.to_string()))
}

/// What of the configuration the writer reads.
pub(crate) struct WriterConfig {
    pub server_name: ruma::OwnedServerName,
    /// A new room's version when its creator names none.
    pub default_room_version: RoomVersionId,
    /// With limits on, a retried send is answered before it counts.
    pub rate_limits: crate::config::RateLimitConfig,
}

/// The single writer of every room: local sends, events from other
/// servers, room creation and membership (this file, `forks.rs`,
/// `redactions.rs`, `sending.rs`, `create.rs`, `membership.rs`). Fields are
/// `pub(super)` for those files alone.
pub struct RoomWriter {
    pub(super) store: Arc<dyn crate::store::RoomStore>,
    pub(super) main: Arc<dyn crate::store::MainStore>,
    pub(super) config: WriterConfig,
    /// Signs the events built here.
    keys: Arc<ServerKeys>,
    pub(super) rooms: Arc<Rooms>,
    pub(super) links: Arc<Links>,
    notifier: Arc<Notifier>,
    /// Which services want an event, queued in its commit.
    appservices: Arc<AppServices>,
    /// Woken when events were queued for application services.
    appservice_queued: Arc<tokio::sync::Notify>,
    pub(super) rate_limits: Arc<RateLimits>,
    /// A send counts as activity for presence.
    pub(super) ephemeral: Arc<Ephemeral>,
    /// Asks application services about room aliases.
    pub(super) to_appservices: Arc<ToAppServices>,
}

/// What `RoomWriter` is built from (`Hearth::wire`): named, as there are many.
pub(crate) struct WriterDeps {
    pub store: Arc<dyn crate::store::RoomStore>,
    pub main: Arc<dyn crate::store::MainStore>,
    pub config: WriterConfig,
    pub keys: Arc<ServerKeys>,
    pub rooms: Arc<Rooms>,
    pub links: Arc<Links>,
    pub notifier: Arc<Notifier>,
    pub appservices: Arc<AppServices>,
    pub appservice_queued: Arc<tokio::sync::Notify>,
    pub rate_limits: Arc<RateLimits>,
    pub ephemeral: Arc<Ephemeral>,
    pub to_appservices: Arc<ToAppServices>,
}

impl RoomWriter {
    pub(crate) fn new(deps: WriterDeps) -> Self {
        Self {
            store: deps.store,
            main: deps.main,
            config: deps.config,
            keys: deps.keys,
            rooms: deps.rooms,
            links: deps.links,
            notifier: deps.notifier,
            appservices: deps.appservices,
            appservice_queued: deps.appservice_queued,
            rate_limits: deps.rate_limits,
            ephemeral: deps.ephemeral,
            to_appservices: deps.to_appservices,
        }
    }

    /// Whether a user id belongs to this server.
    pub(super) fn is_local(&self, user: &str) -> bool {
        crate::ids::user_on_server(user, &self.config.server_name)
    }

    /// Hashes and signs a PDU skeleton and derives its event id.
    fn sign_pdu(&self, obj: Value, rules: &RoomVersionRules) -> Result<Pdu> {
        // The spec caps a whole PDU at 64 KiB; refuse early so signing never sees it.
        if serde_json::to_vec(&obj)?.len() > MAX_PDU_SIZE {
            return Err(Error::TooLarge("Event is larger than 64 KiB".into()));
        }
        let mut canonical: CanonicalJsonObject = serde_json::from_value(obj)
            .map_err(|e| Error::bad_json(format!("event is not canonical JSON: {e}")))?;
        ruma::signatures::hash_and_sign_event(
            self.config.server_name.as_str(),
            &self.keys.key_pair,
            &mut canonical,
            &rules.redaction,
        )
        .map_err(Error::internal)?;
        let event_id = format!(
            "${}",
            ruma::signatures::reference_hash(&canonical, rules).map_err(Error::internal)?
        );
        let event_id = OwnedEventId::try_from(event_id).map_err(Error::internal)?;
        let Value::Object(map) = serde_json::to_value(&canonical)? else {
            return Err(Error::internal("event did not serialize to an object"));
        };
        if serde_json::to_vec(&map)?.len() > MAX_PDU_SIZE {
            return Err(Error::TooLarge("Event is larger than 64 KiB".into()));
        }
        Ok(Pdu::from_json(event_id, map)?)
    }

    /// Creates a room by committing its m.room.create event. For room version
    /// 12 the room id is derived from that event, so it is only known here.
    pub async fn create_room_event(
        &self,
        version: &RoomVersionId,
        creator: &ruma::UserId,
        content: Value,
    ) -> Result<ruma::OwnedRoomId> {
        let pdu = self.signed_create_event(version, creator, content)?;
        let room_id = pdu.room_id.clone();
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        self.store
            .create_room(room_id.as_str(), version.as_str(), creator.as_str())
            .await?;
        // With several processes, the creating process writes the new room.
        let fence = match self.rooms.take_lease(room_id.as_str()).await {
            Err(Error::NotWriter { .. }) => {
                return Err(Error::internal("a new room's lease is held elsewhere"));
            }
            fence => fence?,
        };
        if fence.is_some() {
            self.rooms.hold(room_id.as_str());
        }
        let generation = self.rooms.next_generation();
        let ordering = self
            .store
            .persist_event(EventToPersist {
                pdu: pdu.clone(),
                txn: None,
                generation,
                fence: fence.clone(),
                relay: vec![],
                state: StateChange::of(&pdu).into_iter().collect(),
                appservices: self
                    .appservices
                    .appservice_audience(&state_of_create(&pdu), &pdu),
            })
            .await?;
        self.rooms.recent.start(room_id.as_str(), ordering);
        let mut state = HashMap::new();
        state.insert(
            ("m.room.create".to_owned(), String::new()),
            Arc::new(pdu.clone()),
        );
        *guard = Some(RoomCache {
            version: version.clone(),
            extremities: vec![(pdu.event_id.clone(), 1)],
            pending_own: None,
            state_serial: 0,
            state,
            generation,
            sent: VecDeque::new(),
            fence,
            submitted: VecDeque::new(),
        });
        drop(guard);
        self.notifier.notify();
        Ok(room_id)
    }

    /// The room's m.room.create event, signed and checked against the auth
    /// rules that need no other event.
    fn signed_create_event(
        &self,
        version: &RoomVersionId,
        creator: &ruma::UserId,
        content: Value,
    ) -> Result<Pdu> {
        let rules = rules_for(version)?;
        let mut obj = json!({
            "auth_events": [],
            "content": content,
            "depth": 1,
            "origin_server_ts": create_event_ts(),
            "prev_events": [],
            "sender": creator,
            "state_key": "",
            "type": "m.room.create",
        });
        if !rules.authorization.room_create_event_id_as_room_id {
            obj["room_id"] = json!(format!(
                "!{}:{}",
                crate::ids::random_string(18),
                self.config.server_name
            ));
        }
        let pdu = self.sign_pdu(obj, &rules)?;
        ruma::state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |_| {
            None::<&Pdu>
        })
        .map_err(|e| Error::Forbidden(format!("Create event not allowed: {e}")))?;
        Ok(pdu)
    }

    /// Builds, authorizes, signs and commits one event in the room's order.
    /// Returns once the event is durable.
    pub async fn send_event(&self, room_id: &RoomId, new: NewEvent) -> Result<OwnedEventId> {
        self.send_event_routed(room_id, new, true).await
    }

    /// A send forwarded here by another process, which found this one
    /// holding the room's lease: never forwarded again.
    pub async fn send_forwarded_event(
        &self,
        room_id: &RoomId,
        new: NewEvent,
    ) -> Result<OwnedEventId> {
        self.send_event_routed(room_id, new, false).await
    }

    async fn send_event_routed(
        &self,
        room_id: &RoomId,
        new: NewEvent,
        may_forward: bool,
    ) -> Result<OwnedEventId> {
        self.check_local_event(room_id, &new).await?;
        // A writer that lost its lease, or whose holder went quiet, waits at
        // most this long for a lease to lapse and take the room over.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(LEASE_TTL_MS as u64)
            + Duration::from_secs(2);
        let mut rebuilt = 0;
        if !may_forward {
            // Forwarded here: the sender found this process in the lease
            // table; believe the table over what this process remembers.
            self.rooms.forget_writer(room_id.as_str());
        }
        loop {
            match self.try_send_event(room_id, &new).await {
                // Built on an event the store refused: rebuilt on a fresh view
                // of the room; that takes a second attempt, rarely a third.
                Err(Error::Superseded | Error::LeaseLost) if rebuilt < 3 => rebuilt += 1,
                Err(Error::NotWriter { address }) if may_forward => {
                    let forwarded = match self.links.forwarder.get() {
                        Some(f) => f.send(&address, room_id, &new).await,
                        None => Err(Error::internal("no forwarder to reach the room's writer")),
                    };
                    if matches!(
                        forwarded,
                        Err(Error::LeaseLost | Error::WriterUnreachable(_))
                    ) {
                        self.rooms.forget_writer(room_id.as_str());
                    }
                    match forwarded {
                        // The holder moved or went quiet: ask again, and once
                        // its lease lapses this process takes the room over.
                        Err(Error::LeaseLost | Error::WriterUnreachable(_))
                            if tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(Error::WriterUnreachable(why)) => {
                            return Err(Error::Unavailable(format!(
                                "The room's writer cannot be reached: {why}"
                            )));
                        }
                        other => return other,
                    }
                }
                Err(Error::NotWriter { .. }) => return Err(Error::LeaseLost),
                Err(Error::Superseded | Error::LeaseLost) => {
                    return Err(Error::Unavailable(
                        "The room's writer could not commit; try again".into(),
                    ));
                }
                other => return other,
            }
        }
    }

    /// One attempt: build and submit the event under the room's lock, then
    /// wait for it to be durable without the lock, so the room's next event
    /// can be built and join the same commit.
    async fn try_send_event(&self, room_id: &RoomId, new: &NewEvent) -> Result<OwnedEventId> {
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        let cache = self.rooms.writable(&mut guard, room_id.as_str()).await?;
        // A retried transaction gets the first attempt's event once durable.
        if let Some((device, txn_id)) = &new.txn
            && let Some(sent) = cache.sent_txn(&new.sender, device, txn_id)
        {
            drop(guard);
            return sent.wait().await;
        }
        let rules = rules_for(&cache.version)?;
        let redacts = super::redactions::target_of(new)?;
        let pdu = self.build_local_event(cache, room_id, new, redacts.as_ref(), &rules)?;
        ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |t, sk| {
            cache.state.get(&(t.to_string(), sk.to_owned())).map(|p| p.as_ref())
        })
        .map_err(|e| {
            debug!(room = %room_id, sender = %new.sender, kind = %new.kind, "event rejected by auth rules: {e}");
            Error::Forbidden(format!("Event not allowed: {e}"))
        })?;
        if let Some(target) = &redacts {
            let any = super::redactions::may_redact_any(&cache.state, &rules, &new.sender);
            self.check_local_redaction(room_id, &new.sender, target, any)
                .await?;
        }
        let pdu = self.countersigned_if_remote_invite(cache, pdu).await?;
        let txn = new
            .txn
            .as_ref()
            .map(|(d, t)| (new.sender.clone(), d.clone(), t.clone()));
        let ours = self.config.server_name.as_str();
        if let Some(owner) = room_owner(cache).filter(|o| o != ours) {
            let event_id = pdu.event_id.clone();
            if let Some(earlier) = self
                .queue_for_owner(cache, room_id, &pdu, txn, &owner)
                .await?
            {
                return Ok(earlier);
            }
            drop(guard);
            if let Some(remote) = self.links.remote.get() {
                remote.wake(std::slice::from_ref(&owner));
            }
            return Ok(event_id);
        }
        let relay = remote_servers(cache, &pdu, ours);
        self.submit_built(guard, room_id, pdu, txn, relay, &rules)
            .await
    }

    /// A local user's event, on top of the room's view: its auth events,
    /// prev events and depth, hashed and signed.
    fn build_local_event(
        &self,
        cache: &RoomCache,
        room_id: &RoomId,
        new: &NewEvent,
        redacts: Option<&OwnedEventId>,
        rules: &RoomVersionRules,
    ) -> Result<Pdu> {
        let content_raw = serde_json::value::to_raw_value(&new.content)?;
        let kind = TimelineEventType::from(new.kind.as_str());
        let auth_types = ruma::state_res::auth_types_for_event(
            &kind,
            &new.sender,
            new.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(Error::BadJson)?;
        let mut auth_events: Vec<String> = auth_types
            .iter()
            .filter_map(|(t, sk)| cache.state.get(&(t.to_string(), sk.clone())))
            .map(|p| p.event_id.to_string())
            .collect();
        auth_events.sort();
        auth_events.dedup();

        let (prev_events, depth) = cache.next_prev_events().unwrap_or((vec![], 1));
        let mut obj = json!({
            "auth_events": auth_events,
            "content": new.content,
            "depth": depth,
            "origin_server_ts": new.ts.unwrap_or_else(now_ms),
            "prev_events": prev_events,
            "room_id": room_id,
            "sender": new.sender,
            "type": new.kind,
        });
        if let Some(sk) = &new.state_key {
            obj["state_key"] = json!(sk);
        }
        if let Some(r) = redacts {
            // v11+ carries `redacts` in content; older versions at the top level.
            if rules.redaction.content_field_redacts {
                obj["content"]["redacts"] = json!(r);
            } else {
                obj["redacts"] = json!(r);
            }
        }
        self.sign_pdu(obj, rules)
    }

    /// An invite of another server's user needs that server's signature
    /// first (and lets it tell its user).
    async fn countersigned_if_remote_invite(&self, cache: &RoomCache, pdu: Pdu) -> Result<Pdu> {
        let remote_invitee = pdu.membership_state() == Some(MembershipState::Invite)
            && pdu.state_key.as_deref().is_some_and(|t| !self.is_local(t));
        if !remote_invitee {
            return Ok(pdu);
        }
        let remote = self.links.remote.get().ok_or_else(|| {
            Error::Forbidden("this server does not federate: cannot invite remote users".into())
        })?;
        let shown = invite_room_state(cache, &pdu);
        let signed = remote.invite(&cache.version, &pdu.as_sent(), shown).await?;
        Ok(Pdu::from_json(pdu.event_id.clone(), signed)?)
    }

    /// Another server orders this room: the event goes to it, and appears
    /// here when it relays the event back in its order. Returns the event
    /// of an earlier attempt of the same transaction, if there was one.
    async fn queue_for_owner(
        &self,
        cache: &mut RoomCache,
        room_id: &RoomId,
        pdu: &Pdu,
        txn: Option<(ruma::OwnedUserId, String, String)>,
        owner: &str,
    ) -> Result<Option<OwnedEventId>> {
        let json = serde_json::to_string(&pdu.as_sent())?;
        let queued = self
            .store
            .queue_outgoing(
                room_id.as_str(),
                txn.map(|(u, d, t)| (u.to_string(), d, t)),
                pdu.event_id.as_str(),
                &[owner.to_owned()],
                &json,
            )
            .await;
        if let Err(Error::DuplicateTransaction { event_id }) = queued {
            return OwnedEventId::try_from(event_id)
                .map(Some)
                .map_err(Error::internal);
        }
        queued?;
        // Our next event builds on this one.
        cache.pending_own = Some((pdu.event_id.clone(), pdu.depth));
        Ok(None)
    }

    /// Takes an authorized event into the room's view, submits it to the
    /// store (queued for `relay` in the same transaction), releases the room
    /// and waits until the event is durable; then wakes whoever must hear.
    async fn submit_built(
        &self,
        guard: tokio::sync::MutexGuard<'_, Option<RoomCache>>,
        room_id: &RoomId,
        pdu: Pdu,
        txn: Option<(ruma::OwnedUserId, String, String)>,
        relay: Vec<String>,
        rules: &RoomVersionRules,
    ) -> Result<OwnedEventId> {
        let staged = self
            .stage_built(guard, pdu, txn, relay, rules, None)
            .await?;
        self.finish_staged(room_id, staged).await
    }

    /// The first half of `submit_built`: into the view and the store's
    /// queue; the room is released on return.
    async fn stage_built(
        &self,
        mut guard: tokio::sync::MutexGuard<'_, Option<RoomCache>>,
        pdu: Pdu,
        txn: Option<(ruma::OwnedUserId, String, String)>,
        relay: Vec<String>,
        rules: &RoomVersionRules,
        resolved: Option<super::forks::RoomState>,
    ) -> Result<Staged> {
        let cache = guard
            .as_mut()
            .ok_or_else(|| Error::internal("room cache missing"))?;
        let changes = state_changes(cache, &pdu, resolved.as_ref());
        let event_id = pdu.event_id.clone();
        let pdu = with_replaced_state(cache, pdu);
        let generation = cache.generation;
        let committed = self
            .store
            .submit_event(EventToPersist {
                pdu: pdu.clone(),
                txn: txn
                    .as_ref()
                    .map(|(u, d, t)| (u.to_string(), d.clone(), t.clone())),
                generation,
                fence: cache.fence.clone(),
                relay: relay.clone(),
                state: changes.iter().map(|(c, _)| c.clone()).collect(),
                appservices: self.appservices.appservice_audience(&cache.state, &pdu),
            })
            .await?;
        // From here the room's view includes the event; should the store
        // refuse it, the view is dropped (below) and reloaded.
        let durable = txn
            .as_ref()
            .map(|(user, device, txn_id)| cache.remember_txn(user, device, txn_id, &event_id));
        let audience = apply_to_view(cache, &pdu, changes);
        let redactor_power = pdu.redacts.is_some()
            && super::redactions::may_redact_any(&cache.state, rules, &pdu.sender);
        drop(guard);
        Ok(Staged {
            redactor_power,
            committed,
            durable,
            generation,
            audience,
            pdu,
            relay,
            rules: rules.clone(),
        })
    }

    /// The second half of `submit_built`: waits until the event is durable,
    /// then wakes whoever must hear of it.
    async fn finish_staged(&self, room_id: &RoomId, staged: Staged) -> Result<OwnedEventId> {
        let Staged {
            committed,
            durable,
            generation,
            audience,
            pdu,
            relay,
            rules,
            redactor_power,
        } = staged;
        let event_id = pdu.event_id.clone();
        let rules = &rules;
        let outcome = committed.await;
        if let Some(durable) = durable {
            durable.send_replace(Some(outcome.is_ok()));
        }
        if let Err(e) = outcome {
            self.rooms.forget_room_view(room_id, generation).await;
            // A retry of a transaction committed before this writer's view
            // was loaded: answer with the first attempt's event.
            return match e {
                Error::DuplicateTransaction { event_id } => {
                    OwnedEventId::try_from(event_id).map_err(Error::internal)
                }
                e => Err(e),
            };
        }

        if let Some(target) = &pdu.redacts
            && let Err(e) = self
                .apply_redaction(&pdu, target, rules, redactor_power)
                .await
        {
            warn!(event = %event_id, target = %target, "could not apply redaction: {e}");
        }
        // Another server's event may have been redacted before it got here.
        if !self.is_local(pdu.sender.as_str())
            && let Err(e) = self.apply_earlier_redactions(&pdu, rules).await
        {
            warn!(event = %event_id, "could not apply earlier redactions: {e}");
        }
        self.notifier
            .notify_users(audience.iter().map(String::as_str));
        if !relay.is_empty()
            && let Some(remote) = self.links.remote.get()
        {
            remote.wake(&relay);
        }
        if !self.appservices.all().is_empty() {
            self.appservice_queued.notify_waiters();
        }
        Ok(event_id)
    }

    /// Takes an event another server built (a join through this server, an
    /// event submitted to or relayed by a room's owner): checked against its
    /// auth events and, with `against_current`, the room's current state,
    /// then appended to the room's order. When this server owns the room it
    /// relays the event to every other server in the room. Returns whether
    /// it was new.
    pub async fn accept_remote_event(&self, pdu: Pdu, against_current: bool) -> Result<bool> {
        self.accept_remote_events(vec![super::Incoming::new(pdu, against_current)])
            .await
            .pop()
            .unwrap_or(Ok(false))
    }

    /// A membership event of one of our users in a room this server is not
    /// in: an invite signed by both servers, or our user's own knock or
    /// leave that a resident server accepted. Stored (with the room, if new
    /// here) so the user's sync shows it. Its auth events live on the other
    /// server, so it is taken on the signatures alone. Returns whether it
    /// was new.
    pub async fn accept_remote_membership(
        &self,
        pdu: Pdu,
        version: &RoomVersionId,
        creator: &str,
    ) -> Result<bool> {
        let room_id = pdu.room_id.clone();
        if self.main.room_version(room_id.as_str()).await?.is_none() {
            self.store
                .create_room(room_id.as_str(), version.as_str(), creator)
                .await?;
        }
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        let cache = self.rooms.writable(&mut guard, room_id.as_str()).await?;
        if self.already_have(cache, &pdu.event_id).await? {
            return Ok(false);
        }
        let rules = rules_for(&cache.version)?;
        let staged = self
            .stage_built(guard, pdu, None, vec![], &rules, None)
            .await?;
        self.finish_staged(&room_id, staged).await?;
        Ok(true)
    }

    /// Whether an event another server hands over is here already: durable,
    /// or submitted by this room view and on its way.
    async fn already_have(&self, cache: &RoomCache, event_id: &OwnedEventId) -> Result<bool> {
        Ok(cache.submitted_contains(event_id)
            || self.store.get_event(event_id.as_str()).await?.is_some())
    }

    /// Several events from other servers, appended in the order given and
    /// waited for together (one group commit instead of one each).
    pub async fn accept_remote_events(&self, events: Vec<super::Incoming>) -> Vec<Result<bool>> {
        let mut staged = Vec::with_capacity(events.len());
        for incoming in events {
            let room_id = incoming.pdu.room_id.clone();
            staged.push((room_id, self.stage_remote_event(incoming).await));
        }
        futures::future::join_all(staged.into_iter().map(|(room_id, s)| async move {
            match s? {
                Some(staged) => self.finish_staged(&room_id, staged).await.map(|_| true),
                None => Ok(false),
            }
        }))
        .await
    }

    /// The auth events a remote event names, all of them or an error.
    async fn auth_events_of(&self, cache: &RoomCache, pdu: &Pdu) -> Result<HashMap<String, Pdu>> {
        // Auth events are usually current state, which the view holds (even
        // before it is durable); the rest are read from the database.
        let mut auth: HashMap<String, Pdu> = cache
            .state
            .values()
            .filter(|p| pdu.auth_events.contains(&p.event_id))
            .map(|p| (p.event_id.to_string(), p.as_ref().clone()))
            .collect();
        let unseen: Vec<String> = pdu
            .auth_events
            .iter()
            .map(ToString::to_string)
            .filter(|id| !auth.contains_key(id))
            .collect();
        if !unseen.is_empty() {
            for e in self.store.get_events(&unseen).await? {
                auth.insert(e.pdu.event_id.to_string(), e.pdu);
            }
        }
        // Room version 12 leaves the create event out of auth_events; the
        // rules find it by the room id.
        if let Some(create) = cache
            .state
            .get(&("m.room.create".to_owned(), String::new()))
        {
            auth.entry(create.event_id.to_string())
                .or_insert_with(|| create.as_ref().clone());
        }
        let missing: Vec<_> = pdu
            .auth_events
            .iter()
            .filter(|id| !auth.contains_key(id.as_str()))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Forbidden(format!(
                "auth events of {} ({} by {}) not known on {}: {missing:?}",
                pdu.event_id, pdu.kind, pdu.sender, self.config.server_name
            )));
        }
        Ok(auth)
    }

    /// The checks and staging of `accept_remote_event`; `None` when the
    /// event is here already.
    async fn stage_remote_event(&self, incoming: super::Incoming) -> Result<Option<Staged>> {
        let super::Incoming {
            pdu,
            against_current,
            state_before,
        } = incoming;
        let room_id = pdu.room_id.clone();
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        let cache = self.rooms.writable(&mut guard, room_id.as_str()).await?;
        if self.already_have(cache, &pdu.event_id).await? {
            return Ok(None);
        }
        let rules = rules_for(&cache.version)?;
        let auth = self.auth_events_of(cache, &pdu).await?;
        check_auth_events(&rules, &pdu, &auth)?;
        if against_current {
            ruma::state_res::check_state_dependent_auth_rules(
                &rules.authorization,
                &pdu,
                |t, sk| {
                    cache
                        .state
                        .get(&(t.to_string(), sk.to_owned()))
                        .map(|p| p.as_ref())
                },
            )
            .map_err(|e| Error::Forbidden(format!("Event not allowed by current state: {e}")))?;
        }
        let resolved = self
            .resolve_fork(cache, &pdu, &rules, state_before.as_deref())
            .await?;
        let ours = self.config.server_name.as_str();
        let relay = match room_owner(cache) {
            Some(owner) if owner == ours => remote_servers(cache, &pdu, ours),
            // A room without an owner: a membership event another server's
            // user made through us (`send_join`, …) is ours to pass on.
            None if against_current => remote_servers(cache, &pdu, ours),
            _ => vec![],
        };
        self.stage_built(guard, pdu, None, relay, &rules, resolved)
            .await
            .map(Some)
    }
}

/// Users currently joined to or invited to a room, from the writer's cache.
/// An event submitted to the store, not yet known to be durable.
struct Staged {
    committed: crate::store::PendingCommit,
    durable: Option<tokio::sync::watch::Sender<Option<bool>>>,
    generation: u64,
    audience: Vec<String>,
    pdu: Pdu,
    relay: Vec<String>,
    rules: RoomVersionRules,
    /// For a redaction: whether its sender held the redact power.
    redactor_power: bool,
}

/// A room's state when it holds only its create event.
fn state_of_create(create: &Pdu) -> HashMap<(String, String), Arc<Pdu>> {
    let mut state = HashMap::new();
    state.insert(
        ("m.room.create".to_owned(), String::new()),
        Arc::new(create.clone()),
    );
    state
}

/// What an event changes in the room's state: itself, or after a fork
/// whatever state resolution settled on.
fn state_changes(
    cache: &RoomCache,
    pdu: &Pdu,
    resolved: Option<&super::forks::RoomState>,
) -> Vec<(StateChange, Arc<Pdu>)> {
    match resolved {
        None => StateChange::of(pdu)
            .map(|c| (c, Arc::new(pdu.clone())))
            .into_iter()
            .collect(),
        Some(state) => state
            .iter()
            .filter(|(key, p)| {
                cache
                    .state
                    .get(*key)
                    .is_none_or(|old| old.event_id != p.event_id)
            })
            .filter_map(|(_, p)| StateChange::of(p).map(|c| (c, p.clone())))
            .collect(),
    }
}

/// A state event carries what it replaces in `unsigned`, as clients expect.
fn with_replaced_state(cache: &RoomCache, pdu: Pdu) -> Pdu {
    let Some(sk) = &pdu.state_key else {
        return pdu;
    };
    let Some(prev) = cache.state.get(&(pdu.kind.to_string(), sk.clone())) else {
        return pdu;
    };
    let mut json = pdu.json.clone();
    json.insert(
        "unsigned".into(),
        json!({
            "prev_content": prev.content_value(),
            "prev_sender": prev.sender,
            "replaces_state": prev.event_id,
        }),
    );
    Pdu { json, ..pdu }
}

/// Moves the room's view past a submitted event and its state changes;
/// returns who must hear of it: the room's members before and after the
/// event (a kicked or leaving user sees their own leave).
fn apply_to_view(
    cache: &mut RoomCache,
    pdu: &Pdu,
    changes: Vec<(StateChange, Arc<Pdu>)>,
) -> Vec<String> {
    cache.advance(pdu);
    let mut audience = room_audience(cache);
    for (change, p) in changes {
        if change.membership.is_some() {
            audience.push(change.state_key.clone());
        }
        // The event as stored (with its `unsigned`) when it is the one.
        let p = if p.event_id == pdu.event_id {
            Arc::new(pdu.clone())
        } else {
            p
        };
        cache.state.insert((change.kind, change.state_key), p);
        cache.state_serial += 1;
    }
    cache.note_submitted(&pdu.event_id);
    audience
}

/// The server that orders a room: its creator's (spec/federation.md), for a
/// room that declares the ordering in its create event; `None` for other
/// rooms (no owner: plain Matrix).
pub(crate) fn room_owner(cache: &RoomCache) -> Option<String> {
    cache
        .state
        .get(&("m.room.create".to_owned(), String::new()))
        .filter(|c| c.content_value()[super::ORDERING_KEY] == super::ORDERING_OWNER)
        .map(|c| c.sender.server_name().to_string())
}

/// What an invitee's server is shown of a room (`invite_room_state`): a few
/// state events, the create event among them, and the inviter's membership,
/// as full PDUs (spec v1.16) that it may check; clients get them stripped.
pub(crate) fn invite_room_state(cache: &RoomCache, invite: &Pdu) -> Vec<Value> {
    let sender = invite.sender.to_string();
    super::INVITE_STATE_TYPES
        .iter()
        .map(|t| (*t, ""))
        .chain([("m.room.member", sender.as_str())])
        .filter_map(|(t, sk)| cache.state.get(&(t.to_owned(), sk.to_owned())))
        .map(|p| Value::Object(p.as_sent()))
        .collect()
}

/// The room's rules applied to `pdu` with its auth events (by id, every one
/// of `pdu.auth_events` among them).
pub(crate) fn check_auth_events(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    auth: &HashMap<String, Pdu>,
) -> Result<()> {
    ruma::state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| {
        auth.get(id.as_str())
    })
    .map_err(|e| Error::Forbidden(format!("Event not allowed: {e}")))?;
    let by_key: HashMap<(String, String), &Pdu> = auth
        .values()
        .filter_map(|p| {
            p.state_key
                .as_ref()
                .map(|sk| ((p.kind.to_string(), sk.clone()), p))
        })
        .collect();
    ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t, sk| {
        by_key.get(&(t.to_string(), sk.to_owned())).copied()
    })
    .map_err(|e| Error::Forbidden(format!("Event not allowed by its auth events: {e}")))
}

/// The servers of the room's joined members.
pub(super) fn joined_servers(cache: &RoomCache) -> std::collections::BTreeSet<String> {
    cache
        .state
        .iter()
        .filter(|((kind, _), p)| {
            kind == "m.room.member" && p.membership_state() == Some(MembershipState::Join)
        })
        .filter_map(|((_, user), _)| ruma::UserId::parse(user.as_str()).ok())
        .map(|u| u.server_name().to_string())
        .collect()
}

/// The other servers an event must reach: those of the room's joined
/// members, and of the member an event is about — except an invite's,
/// which got it through `/invite` and is not in the room: a transaction
/// about a room a server is not in is one it cannot place (SyTest's server
/// fails on it; Synapse does not send one either).
fn remote_servers(cache: &RoomCache, pdu: &Pdu, ours: &str) -> Vec<String> {
    let mut servers = joined_servers(cache);
    if pdu.kind.to_string() == "m.room.member"
        && pdu.membership_state() != Some(MembershipState::Invite)
        && let Some(target) = pdu.state_key.as_deref()
        && let Ok(u) = ruma::UserId::parse(target)
    {
        servers.insert(u.server_name().to_string());
    }
    servers.insert(pdu.sender.server_name().to_string());
    servers.remove(ours);
    // Deliberately stricter than the spec, which still sends to denied
    // servers with members in the room (spec/federation.md).
    super::acl::allowed_destinations(cache, servers.into_iter().collect())
}

pub(super) fn room_audience(cache: &RoomCache) -> Vec<String> {
    cache
        .state
        .iter()
        .filter(|((kind, _), _)| kind == "m.room.member")
        .filter(|(_, pdu)| {
            matches!(
                pdu.membership_state(),
                Some(MembershipState::Join | MembershipState::Invite)
            )
        })
        .map(|((_, user), _)| user.clone())
        .collect()
}
