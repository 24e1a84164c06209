use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use ruma::{
    CanonicalJsonObject, OwnedEventId, RoomId, RoomVersionId, events::TimelineEventType,
    room_version_rules::RoomVersionRules,
};
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::{NewEvent, RoomCache};
use crate::{
    Error, Hearth, Result,
    ids::now_ms,
    pdu::{Pdu, StoredEvent},
    store::EventToPersist,
};

const MAX_PDU_SIZE: usize = 65536;

pub(crate) fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version
        .rules()
        .ok_or_else(|| Error::UnsupportedRoomVersion(version.to_string()))
}

impl Hearth {
    async fn load_room(&self, room_id: &str) -> Result<RoomCache> {
        let version = self
            .store
            .room_version(room_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let version = RoomVersionId::try_from(version.as_str()).map_err(Error::internal)?;
        let newest = self.store.latest_event(room_id).await?;
        self.rooms
            .recent
            .start(room_id, newest.as_ref().map_or(0, |e| e.stream_ordering));
        let latest = newest.map(|e| (e.pdu.event_id.clone(), e.pdu.depth));
        let mut state = HashMap::new();
        for ev in self.store.current_state(room_id).await? {
            let key = (
                ev.pdu.kind.to_string(),
                ev.pdu.state_key.clone().unwrap_or_default(),
            );
            state.insert(key, Arc::new(ev.pdu));
        }
        Ok(RoomCache {
            version,
            latest,
            state,
            generation: self.rooms.next_generation(),
            sent: VecDeque::new(),
        })
    }

    /// The room's cache behind its held lock, loaded on first use.
    async fn loaded<'a>(
        &self,
        guard: &'a mut Option<RoomCache>,
        room_id: &str,
    ) -> Result<&'a mut RoomCache> {
        if guard.is_none() {
            *guard = Some(self.load_room(room_id).await?);
        }
        guard
            .as_mut()
            .ok_or_else(|| Error::internal("room cache missing"))
    }

    /// Current state of a room, from the writer's cache.
    pub async fn room_state(&self, room_id: &RoomId) -> Result<Vec<Arc<Pdu>>> {
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        let cache = self.loaded(&mut guard, room_id.as_str()).await?;
        Ok(cache.state.values().cloned().collect())
    }

    pub async fn room_state_event(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<Arc<Pdu>>> {
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        let cache = self.loaded(&mut guard, room_id.as_str()).await?;
        Ok(cache
            .state
            .get(&(kind.to_owned(), state_key.to_owned()))
            .cloned())
    }

    pub async fn room_version_of(&self, room_id: &RoomId) -> Result<RoomVersionId> {
        let v = self
            .store
            .room_version(room_id.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        RoomVersionId::try_from(v.as_str()).map_err(Error::internal)
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
        let rules = rules_for(version)?;
        let mut obj = json!({
            "auth_events": [],
            "content": content,
            "depth": 1,
            "origin_server_ts": now_ms(),
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
        let room_id = pdu.room_id.clone();
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        self.store
            .create_room(room_id.as_str(), version.as_str(), creator.as_str())
            .await?;
        let generation = self.rooms.next_generation();
        let ordering = self
            .store
            .persist_event(EventToPersist {
                pdu: pdu.clone(),
                txn: None,
                generation,
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
            latest: Some((pdu.event_id.clone(), 1)),
            state,
            generation,
            sent: VecDeque::new(),
        });
        drop(guard);
        self.notifier.notify();
        Ok(room_id)
    }

    /// Builds, authorizes, signs and commits one event in the room's order.
    /// Returns once the event is durable.
    pub async fn send_event(&self, room_id: &RoomId, new: NewEvent) -> Result<OwnedEventId> {
        // An event built on one the store then refused is rebuilt on a fresh
        // view of the room; that takes a second attempt, rarely a third.
        for _ in 0..3 {
            match self.try_send_event(room_id, &new).await {
                Err(Error::Superseded) => continue,
                other => return other,
            }
        }
        Err(Error::Unavailable(
            "The room's writer could not commit; try again".into(),
        ))
    }

    /// One attempt: build and submit the event under the room's lock, then
    /// wait for it to be durable without the lock, so the room's next event
    /// can be built and join the same commit.
    async fn try_send_event(&self, room_id: &RoomId, new: &NewEvent) -> Result<OwnedEventId> {
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        let cache = self.loaded(&mut guard, room_id.as_str()).await?;
        // A retried transaction gets the first attempt's event once durable.
        if let Some((device, txn_id)) = &new.txn
            && let Some(sent) = cache.sent_txn(&new.sender, device, txn_id)
        {
            drop(guard);
            return sent.wait().await;
        }
        let rules = rules_for(&cache.version)?;

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

        let (prev_events, depth) = match &cache.latest {
            Some((id, depth)) => (vec![id.to_string()], depth + 1),
            None => (vec![], 1),
        };
        let mut obj = json!({
            "auth_events": auth_events,
            "content": new.content,
            "depth": depth,
            "origin_server_ts": now_ms(),
            "prev_events": prev_events,
            "room_id": room_id,
            "sender": new.sender,
            "type": new.kind,
        });
        if let Some(sk) = &new.state_key {
            obj["state_key"] = json!(sk);
        }
        if let Some(r) = &new.redacts {
            // v11+ carries `redacts` in content; older versions at the top level.
            if rules.redaction.content_field_redacts {
                obj["content"]["redacts"] = json!(r);
            } else {
                obj["redacts"] = json!(r);
            }
        }
        let pdu = self.sign_pdu(obj, &rules)?;
        let event_id = pdu.event_id.clone();

        ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |t, sk| {
            cache.state.get(&(t.to_string(), sk.to_owned())).map(|p| p.as_ref())
        })
        .map_err(|e| {
            debug!(room = %room_id, sender = %new.sender, kind = %new.kind, "event rejected by auth rules: {e}");
            Error::Forbidden(format!("Event not allowed: {e}"))
        })?;

        let mut map = pdu.json.clone();
        if let Some(sk) = &new.state_key
            && let Some(prev) = cache.state.get(&(new.kind.clone(), sk.clone()))
        {
            map.insert(
                "unsigned".into(),
                json!({
                    "prev_content": prev.content_value(),
                    "prev_sender": prev.sender,
                    "replaces_state": prev.event_id,
                }),
            );
        }
        let pdu = Pdu { json: map, ..pdu };
        let txn = new
            .txn
            .as_ref()
            .map(|(d, t)| (new.sender.to_string(), d.clone(), t.clone()));
        let generation = cache.generation;
        let committed = self
            .store
            .submit_event(EventToPersist {
                pdu: pdu.clone(),
                txn,
                generation,
            })
            .await?;
        // From here the room's view includes the event; should the store
        // refuse it, the view is dropped (below) and reloaded.
        let durable = new
            .txn
            .as_ref()
            .map(|(device, txn_id)| cache.remember_txn(&new.sender, device, txn_id, &event_id));
        cache.latest = Some((event_id.clone(), depth));
        // Who must hear of it: the room's members before and after this event
        // (a kicked or leaving user sees their own leave).
        let mut audience = room_audience(cache);
        if let Some(sk) = &pdu.state_key {
            cache
                .state
                .insert((new.kind.clone(), sk.clone()), Arc::new(pdu.clone()));
            if new.kind == "m.room.member" {
                audience.push(sk.clone());
            }
        }
        drop(guard);

        let outcome = committed.await;
        if let Some(durable) = durable {
            durable.send_replace(Some(outcome.is_ok()));
        }
        if let Err(e) = outcome {
            self.forget_room_view(room_id, generation).await;
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
            && let Err(e) = self.apply_redaction(&pdu, target, &rules).await
        {
            warn!(event = %event_id, target = %target, "could not apply redaction: {e}");
        }
        self.notifier
            .notify_users(audience.iter().map(String::as_str));
        Ok(event_id)
    }

    async fn apply_redaction(
        &self,
        redaction: &Pdu,
        target: &OwnedEventId,
        rules: &RoomVersionRules,
    ) -> Result<()> {
        let Some(ev) = self.store.get_event(target.as_str()).await? else {
            return Ok(());
        };
        if ev.pdu.room_id != redaction.room_id {
            return Ok(());
        }
        let obj: CanonicalJsonObject =
            serde_json::from_value(Value::Object(ev.pdu.json.clone())).map_err(Error::internal)?;
        let because = StoredEvent {
            pdu: redaction.clone(),
            stream_ordering: 0,
            txn: None,
        }
        .to_client(None);
        let because: CanonicalJsonObject =
            serde_json::from_value(because).map_err(Error::internal)?;
        let redacted = ruma::canonical_json::redact(
            obj,
            &rules.redaction,
            Some(ruma::canonical_json::RedactedBecause::from_json(because)),
        )
        .map_err(Error::internal)?;
        let redacted = serde_json::to_value(&redacted)?;
        self.store
            .store_redacted(target.as_str(), &redacted, redaction.event_id.as_str())
            .await?;
        if let Value::Object(map) = redacted {
            self.rooms
                .recent
                .replace(Pdu::from_json(target.clone(), map)?);
        }
        Ok(())
    }
}

impl Hearth {
    /// Drops the writer's view of a room if it is still the one an event the
    /// store refused was built on; the next event reloads it.
    async fn forget_room_view(&self, room_id: &RoomId, generation: u64) {
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        if guard.as_ref().is_some_and(|c| c.generation == generation) {
            *guard = None;
        }
    }
}

/// Users currently joined to or invited to a room, from the writer's cache.
fn room_audience(cache: &RoomCache) -> Vec<String> {
    cache
        .state
        .iter()
        .filter(|((kind, _), _)| kind == "m.room.member")
        .filter(|(_, pdu)| matches!(pdu.membership(), Some("join" | "invite")))
        .map(|((_, user), _)| user.clone())
        .collect()
}

impl Hearth {
    /// Wakes the syncs of a room's members (typing, receipts).
    pub async fn notify_room(&self, room_id: &RoomId) {
        let handle = self.rooms.handle(room_id.as_str());
        let mut guard = handle.lock().await;
        // A room that cannot be loaded still must not leave syncs asleep.
        let audience = match self.loaded(&mut guard, room_id.as_str()).await {
            Ok(cache) => room_audience(cache),
            Err(_) => {
                drop(guard);
                self.notifier.notify();
                return;
            }
        };
        drop(guard);
        self.notifier
            .notify_users(audience.iter().map(String::as_str));
    }

    /// A user's power level in a room, honouring v12's privileged creators.
    pub async fn power_of(&self, room_id: &RoomId, user: &ruma::UserId) -> Result<i64> {
        let create = self.room_state_event(room_id, "m.room.create", "").await?;
        let rules = rules_for(&self.room_version_of(room_id).await?)?;
        if let Some(c) = &create
            && rules.authorization.explicitly_privilege_room_creators
        {
            let additional = c.content_value().get("additional_creators").cloned();
            let is_additional = additional
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(user.as_str())));
            if c.sender == user || is_additional {
                return Ok(i64::MAX);
            }
        }
        let pl = self
            .room_state_event(room_id, "m.room.power_levels", "")
            .await?
            .map(|p| p.content_value());
        Ok(super::user_power(
            pl.as_ref(),
            create.as_ref().map(|c| c.sender.as_str()),
            user.as_str(),
        ))
    }
}
