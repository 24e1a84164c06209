//! Transactions: `PUT /send/{txnId}` received from other servers, and the
//! durable outgoing queue per destination (spec/federation.md).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use axum::{
    Extension, Json,
    extract::{Path, State},
};
use hearth_core::{
    Error,
    backoff::Backoff,
    ids::now_ms,
    queue_sender::{self, Deliver, Pacing, SendError, Transaction},
    rooms::Incoming,
};
use hearth_http_common::error::ApiError;
use parking_lot::Mutex;
use ruma::{RoomId, RoomVersionId};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::{FedError, Federation, auth::Origin, pdu::pdu_object};

/// The spec's caps on one transaction.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// EDUs kept per destination while it is away.
const MAX_QUEUED_EDUS: usize = 1000;
/// How long a remote user's typing lasts unless renewed or stopped.
const REMOTE_TYPING_TIMEOUT: Duration = Duration::from_secs(30);
/// Answers to recent transactions, per origin, for replays.
const REMEMBERED_TXNS: usize = 10_000;
/// A destination's sender: woken when something is queued, with a periodic
/// look for a wake-up lost to a race; retry delays for a destination that
/// fails (or defers a transaction while it joins a room) from 100 ms,
/// doubling up to 5 minutes, jittered.
const PACING: Pacing = Pacing {
    poll: Duration::from_secs(30),
    read_retry: Duration::from_secs(1),
    backoff: Backoff::doubling(Duration::from_millis(100), Duration::from_secs(300)).jittered(),
};

/// A transaction as its sender names it: (origin, txn id).
type TxnKey = (String, String);

/// Answers given, and the order they were given in (oldest dropped first).
#[derive(Default)]
struct Answered {
    answers: HashMap<TxnKey, Value>,
    order: VecDeque<TxnKey>,
}

pub(crate) struct Transactions {
    answered: Mutex<Answered>,
    /// EDUs waiting for the next transaction to each destination.
    edus: Mutex<HashMap<String, VecDeque<Value>>>,
    /// Outgoing transaction ids: when this process started, and a counter.
    started_ms: u64,
    sequence: std::sync::atomic::AtomicU64,
    /// A sender task per destination, woken when something is queued.
    senders: Mutex<HashMap<String, Arc<Notify>>>,
}

pub(crate) async fn receive(
    State(fed): State<Arc<Federation>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(txn_id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    if body["origin"].as_str() != Some(origin.as_str()) {
        return Err(Error::Forbidden(format!(
            "transaction origin {} is not the signing server {origin}",
            body["origin"]
        ))
        .into());
    }
    let pdus = body["pdus"].as_array().cloned().unwrap_or_default();
    let edus = body["edus"].as_array().map_or(0, Vec::len);
    if pdus.len() > MAX_PDUS || edus > MAX_EDUS {
        return Err(Error::bad_json(format!(
            "a transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        ))
        .into());
    }
    let key = (origin.to_string(), txn_id);
    if let Some(answer) = fed.transactions.answered(&key) {
        return Ok(Json(answer));
    }
    // Checked one by one, then appended in the order given (each after
    // what it builds on that we lack) and waited for together: one group
    // commit for the whole transaction.
    let mut outcomes: Vec<(String, Result<(), FedError>)> = vec![];
    let mut checked = vec![];
    for json in &pdus {
        let (id, result) = fed.receive_pdu(origin.as_str(), json).await;
        match result {
            Ok(Some((pdu, version))) => {
                checked.push((outcomes.len(), version, pdu));
                outcomes.push((id, Ok(())));
            }
            Ok(None) => outcomes.push((id, Ok(()))),
            Err(e) => outcomes.push((id, Err(e))),
        }
    }
    let (to_append, appended_at) = fed.with_ancestries(origin.as_str(), checked).await;
    let appended = fed.hearth.writer.accept_remote_events(to_append).await;
    for (at, result) in appended_at.into_iter().zip(appended) {
        match (at, result) {
            (Some(at), Err(e)) => outcomes[at].1 = Err(e.into()),
            (None, Err(e)) => {
                tracing::warn!(%origin, error = %e, "an event fetched to fill a gap was refused")
            }
            _ => {}
        }
    }
    let mut results = Map::new();
    for (id, outcome) in outcomes {
        let entry = match outcome {
            Ok(()) => json!({}),
            // Not the event's fault (a database away, the room written by
            // another process of ours, a room being joined): the whole
            // transaction is refused so the sender retries it; what was
            // applied is not applied twice.
            Err(FedError::Core(e)) if is_transient(&e) => {
                tracing::warn!(%origin, event = %id, error = %e, "transaction deferred");
                return Err(Error::Unavailable(format!("cannot take {id} now: {e}")).into());
            }
            Err(e) => {
                tracing::info!(%origin, event = %id, error = %e, "PDU refused");
                json!({"error": e.to_string()})
            }
        };
        results.insert(id, entry);
    }
    if let Some(edus) = body["edus"].as_array() {
        fed.receive_edus(origin.as_str(), edus).await;
    }
    let answer = json!({"pdus": results});
    fed.transactions.remember(key, answer.clone());
    Ok(Json(answer))
}

/// Failures that say nothing about the event: worth a retry.
fn is_transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable(_)
            | Error::NotWriter { .. }
            | Error::LeaseLost
            | Error::WriterUnreachable(_)
            | Error::Superseded
            | Error::Database(_)
    )
}

impl Default for Transactions {
    fn default() -> Self {
        Self {
            answered: Mutex::default(),
            edus: Mutex::default(),
            started_ms: now_ms(),
            sequence: Default::default(),
            senders: Mutex::default(),
        }
    }
}

impl Transactions {
    fn take_edus(&self, destination: &str, max: usize) -> Vec<Value> {
        let mut edus = self.edus.lock();
        let Some(queue) = edus.get_mut(destination) else {
            return vec![];
        };
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    fn answered(&self, key: &TxnKey) -> Option<Value> {
        self.answered.lock().answers.get(key).cloned()
    }

    fn remember(&self, key: TxnKey, answer: Value) {
        let mut g = self.answered.lock();
        if g.answers.insert(key.clone(), answer).is_none() {
            g.order.push_back(key);
        }
        while g.order.len() > REMEMBERED_TXNS {
            if let Some(old) = g.order.pop_front() {
                g.answers.remove(&old);
            }
        }
    }
}

impl Federation {
    /// Checks one PDU of a transaction: (its event id as far as known, the
    /// event to append with whether to check it against current state, or
    /// `None` when it is not ours to append).
    async fn receive_pdu(
        &self,
        origin: &str,
        json: &Value,
    ) -> (String, Result<Option<(Incoming, RoomVersionId)>, FedError>) {
        let room = json["room_id"].as_str().and_then(|r| RoomId::parse(r).ok());
        let Some(room) = room else {
            return (
                "unknown".into(),
                Err(FedError::Remote("PDU without a valid room_id".into())),
            );
        };
        if self.is_joining(room.as_str()) {
            // Its state is still being stored: the sender retries shortly.
            return (
                "unknown".into(),
                Err(Error::Unavailable(format!("{room} is being joined")).into()),
            );
        }
        let version = match self.hearth.federated.known_room_version(&room).await {
            Ok(v) => v,
            Err(e) => return ("unknown".into(), Err(e.into())),
        };
        let Some(version) = version else {
            return (
                "unknown".into(),
                Err(FedError::Remote(format!("{room} is not known here"))),
            );
        };
        let claimed_id = || {
            pdu_object(json)
                .and_then(|o| crate::pdu::event_id_of(&o, &version))
                .map(|id| id.to_string())
                .unwrap_or_else(|_| "unknown".into())
        };
        // The spec's per-PDU ACL: ignored, with the error in its result.
        if let Err(e) = self.check_origin_acl(origin, &room).await {
            return (claimed_id(), Err(e.into()));
        }
        let pdu = match self.check_pdu(json, &version).await {
            Ok(pdu) => pdu,
            Err(e) => return (claimed_id(), Err(e)),
        };
        let id = pdu.event_id.to_string();
        let outcome = async {
            let owner = self.hearth.rooms.room_owner_of(&room).await?;
            let ours = self.server_name().as_str();
            let incoming = match owner.as_deref() {
                // We order this room: submitted events are checked against
                // current state, appended, and relayed to every server.
                Some(o) if o == ours => Some(Incoming::new(pdu, true)),
                // The owner relays in its order, which we keep: checked
                // against the event's own auth events.
                Some(o) if o == origin => Some(Incoming::new(pdu, false)),
                // A room without an owner (created by another kind of
                // homeserver): plain Matrix, every server sends its own
                // events to all, appended as they come.
                None => Some(Incoming::new(pdu, false)),
                // Anyone else's copy: the owner's relay brings it in order.
                Some(_) => {
                    tracing::debug!(event = %pdu.event_id, %origin, "not from the room's owner; waiting for its relay");
                    None
                }
            };
            Ok(incoming.map(|i| (i, version)))
        }
        .await;
        (id, outcome)
    }

    /// The checked events of a transaction, parents first, each preceded
    /// by what it builds on that we lack; with, for each, the index of its
    /// outcome (`None` for events fetched to fill a gap).
    async fn with_ancestries(
        &self,
        origin: &str,
        checked: Vec<(usize, RoomVersionId, Incoming)>,
    ) -> (Vec<Incoming>, Vec<Option<usize>>) {
        let at: HashMap<ruma::OwnedEventId, (usize, RoomVersionId)> = checked
            .iter()
            .map(|(i, v, e)| (e.pdu.event_id.clone(), (*i, v.clone())))
            .collect();
        let batch: HashSet<ruma::OwnedEventId> = at.keys().cloned().collect();
        let ordered = crate::gaps::parents_first(checked.into_iter().map(|(_, _, e)| e).collect());
        let mut out = vec![];
        let mut outcome_of = vec![];
        for incoming in ordered {
            let Some((index, version)) = at.get(&incoming.pdu.event_id).cloned() else {
                continue;
            };
            let id = incoming.pdu.event_id.clone();
            let events = match self
                .with_ancestry(origin, &version, incoming.clone(), &batch)
                .await
            {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(%origin, event = %id, error = %e, "cannot look for the parents of an event");
                    vec![incoming]
                }
            };
            for e in events {
                outcome_of.push((e.pdu.event_id == id).then_some(index));
                out.push(e);
            }
        }
        (out, outcome_of)
    }

    /// Makes sure a sender runs for each destination and tells it to look
    /// at its queue.
    pub(crate) fn wake_destinations(self: &Arc<Self>, destinations: &[String]) {
        for d in destinations {
            let notify = {
                let mut senders = self.transactions.senders.lock();
                match senders.get(d) {
                    Some(n) => n.clone(),
                    None => {
                        let n = Arc::new(Notify::new());
                        senders.insert(d.clone(), n.clone());
                        let to = ServerQueue {
                            fed: Arc::clone(self),
                            destination: d.clone(),
                            notify: n.clone(),
                        };
                        let (tasks, queue) =
                            (self.hearth.tasks.clone(), self.hearth.outgoing.clone());
                        let send = queue_sender::run(tasks, queue, d.clone(), PACING, to);
                        self.hearth.tasks.spawn(send);
                        n
                    }
                }
            };
            notify.notify_one();
        }
    }

    /// Starts a sender for every destination with something queued (after a
    /// restart, what was not delivered goes out again).
    pub(crate) async fn resume_queues(self: &Arc<Self>) {
        match self.hearth.outgoing.queued_servers().await {
            Ok(dests) => self.wake_destinations(&dests),
            Err(e) => tracing::warn!(error = %e, "cannot read the federation queue"),
        }
    }

    /// The next transaction for a destination: its oldest queued PDUs and
    /// waiting EDUs; `None` when there is nothing to send.
    async fn next_transaction(&self, destination: &str) -> Result<Option<Transaction>, FedError> {
        let batch = self
            .hearth
            .outgoing
            .outgoing_batch(destination, MAX_PDUS)
            .await?;
        let edus = self.transactions.take_edus(destination, MAX_EDUS);
        if batch.is_empty() && edus.is_empty() {
            return Ok(None);
        }
        let pdus: Vec<Value> = batch
            .iter()
            .filter_map(|q| serde_json::from_str(&q.pdu).ok())
            .collect();
        let mut upto: HashMap<usize, i64> = HashMap::new();
        for q in &batch {
            let e = upto.entry(q.source).or_insert(q.id);
            *e = (*e).max(q.id);
        }
        let mut upto: Vec<(usize, i64)> = upto.into_iter().collect();
        upto.sort();
        let seq = self
            .transactions
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(Transaction {
            // Unique per origin: this process's start and a counter.
            id: format!("{}.{seq}", self.transactions.started_ms),
            body: json!({
                "origin": self.server_name(),
                "origin_server_ts": now_ms(),
                "pdus": pdus,
                "edus": edus,
            }),
            ack: upto,
        }))
    }

    /// Queues an EDU for each destination and wakes their senders.
    pub(crate) fn queue_edu(self: &Arc<Self>, destinations: &[String], edu: Value) {
        {
            let mut edus = self.transactions.edus.lock();
            for d in destinations {
                let queue = edus.entry(d.clone()).or_default();
                if queue.len() >= MAX_QUEUED_EDUS {
                    // Ephemeral: under a long outage the oldest go first.
                    queue.pop_front();
                }
                queue.push_back(edu.clone());
            }
        }
        self.wake_destinations(destinations);
    }

    /// What other servers' EDUs say: typing and read receipts of their
    /// users in rooms they share with us, and their presence.
    async fn receive_edus(&self, origin: &str, edus: &[Value]) {
        for edu in edus {
            let content = &edu["content"];
            match edu["edu_type"].as_str() {
                Some("m.typing") => {
                    let (Some(room), Some(user)) = (
                        content["room_id"]
                            .as_str()
                            .and_then(|r| RoomId::parse(r).ok()),
                        content["user_id"].as_str(),
                    ) else {
                        continue;
                    };
                    if !self.acl_allows(origin, &room).await
                        || !self.member_from(origin, &room, user).await
                    {
                        continue;
                    }
                    let typing = content["typing"].as_bool().unwrap_or(false);
                    let timeout = typing.then_some(REMOTE_TYPING_TIMEOUT);
                    self.hearth.ephemeral.set_typing(&room, user, timeout).await;
                }
                Some("m.receipt") => {
                    for (room, kinds) in content.as_object().into_iter().flatten() {
                        let Ok(room) = RoomId::parse(room) else {
                            continue;
                        };
                        // All of a room's receipts go when the ACL denies.
                        if !self.acl_allows(origin, &room).await {
                            continue;
                        }
                        for (user, receipt) in kinds["m.read"].as_object().into_iter().flatten() {
                            if !self.member_from(origin, &room, user).await {
                                continue;
                            }
                            for event_id in receipt["event_ids"].as_array().into_iter().flatten() {
                                let Some(event_id) = event_id.as_str() else {
                                    continue;
                                };
                                self.hearth
                                    .receipts
                                    .receive_remote_receipt(&room, user, event_id, &receipt["data"])
                                    .await;
                            }
                        }
                    }
                }
                Some("m.presence") => self.receive_presence(origin, content),
                Some(
                    kind @ ("m.direct_to_device" | "m.device_list_update" | "m.signing_key_update"),
                ) => self.receive_e2ee_edu(origin, kind, content).await,
                other => tracing::debug!(%origin, edu = ?other, "EDU not handled"),
            }
        }
    }

    /// Fails with `Forbidden` when the room's ACL denies `origin`.
    async fn check_origin_acl(&self, origin: &str, room: &RoomId) -> Result<(), Error> {
        let server = ruma::ServerName::parse(origin)
            .map_err(|_| Error::Forbidden(format!("{origin} is not a server name")))?;
        self.hearth.rooms.check_server_acl(room, &server).await
    }

    /// Whether a room-scoped EDU of `origin`'s is to be taken (the spec's
    /// ACL rule for EDUs); a room that cannot be read says no.
    async fn acl_allows(&self, origin: &str, room: &RoomId) -> bool {
        match self.check_origin_acl(origin, room).await {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(%origin, room = %room, error = %e, "EDU dropped");
                false
            }
        }
    }

    /// Whether `user` belongs to `origin` and is joined to the room here.
    async fn member_from(&self, origin: &str, room: &RoomId, user: &str) -> bool {
        let from_origin = ruma::UserId::parse(user).is_ok_and(|u| u.server_name() == origin);
        from_origin && self.hearth.federated.is_joined(room, user).await
    }
}

/// One destination's share of the outgoing queue, as a queue sender sees it.
struct ServerQueue {
    fed: Arc<Federation>,
    destination: String,
    notify: Arc<Notify>,
}

#[async_trait::async_trait]
impl Deliver for ServerQueue {
    fn wake(&self) -> &Notify {
        &self.notify
    }

    async fn next(&self) -> Result<Option<Transaction>, SendError> {
        Ok(self.fed.next_transaction(&self.destination).await?)
    }

    async fn send(&self, txn: &Transaction) -> Result<(), SendError> {
        let destination = &self.destination;
        let path = format!("/_matrix/federation/v1/send/{}", txn.id);
        let sent = self
            .fed
            .request(destination, http::Method::PUT, &path, Some(&txn.body))
            .await;
        match sent {
            Ok(answer) => {
                for (id, r) in answer["pdus"].as_object().into_iter().flatten() {
                    if let Some(err) = r.get("error") {
                        tracing::warn!(%destination, event = %id, error = %err, "destination refused a PDU");
                    }
                }
                Ok(())
            }
            // A request the destination will never take: dropped, or it
            // would block everything behind it.
            Err(e @ FedError::Matrix { status, .. })
                if (400..500).contains(&status) && ![401, 403, 408, 429].contains(&status) =>
            {
                tracing::error!(%destination, error = ?e, "transaction refused; dropping it");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}
