//! Filling the gaps in a room's event graph before a received PDU is
//! appended (spec/federation.md, "Filling gaps").
//!
//! A server that was unreachable misses events; when its peer catches up it
//! may send only the newest event of each room (Synapse does after a
//! restart). Appending that event alone would lose the ones before it for
//! good. So: the unknown `prev_events` are asked for with
//! `/get_missing_events` (in rounds, up to `MAX_GAP_EVENTS`); if the sender
//! still leaves parents unknown, the state before the oldest event we got is
//! read with `/state_ids` and the events of it we lack with `/event`, so the
//! room's state stays right though its history has a hole. Everything is
//! checked like any received PDU and appended oldest first.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use hearth_core::{pdu::Pdu, rooms::Incoming};
use ruma::{OwnedEventId, RoomId, RoomVersionId};
use serde_json::{Value, json};

use crate::{FedError, Federation, enc};

/// Most events fetched to fill one gap through `/get_missing_events`.
const MAX_GAP_EVENTS: usize = 500;
/// Asked for per `/get_missing_events` (Synapse answers at most 20).
const MISSING_PER_REQUEST: usize = 100;
/// Most state and auth chain events fetched for the state before an event
/// whose parents could not be had.
const MAX_STATE_EVENTS: usize = 5_000;
/// `/event` requests under way at once while fetching such a state.
const EVENT_FETCHES_AT_ONCE: usize = 8;
/// Events whose parents stay unknown that get a state fetched (each such
/// event costs a `/state_ids` and its `/event`s).
const MAX_STATE_FETCHES: usize = 3;

/// Puts a transaction's events in an order where each comes after those of
/// its parents that the transaction also carries; otherwise as given (an
/// owner's relay is already in its order and stays so).
pub(crate) fn parents_first(events: Vec<Incoming>) -> Vec<Incoming> {
    let index: HashMap<OwnedEventId, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.pdu.event_id.clone(), i))
        .collect();
    let mut order = Vec::with_capacity(events.len());
    let mut placed = vec![false; events.len()];
    for start in 0..events.len() {
        // Depth first through parents in the batch, without recursion.
        let mut stack = vec![(start, false)];
        while let Some((i, expanded)) = stack.pop() {
            if placed[i] {
                continue;
            }
            if expanded {
                placed[i] = true;
                order.push(i);
                continue;
            }
            stack.push((i, true));
            for parent in events[i].pdu.prev_events.iter().rev() {
                if let Some(&j) = index.get(parent)
                    && !placed[j]
                    && j != i
                {
                    stack.push((j, false));
                }
            }
        }
    }
    let mut slots: Vec<Option<Incoming>> = events.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

impl Federation {
    /// `incoming` preceded by what it builds on that this server lacks, in
    /// the order to append them. `batch`: events of the same transaction,
    /// known already. Failures to fetch are logged: the event is then
    /// appended with what could be had.
    pub(crate) async fn with_ancestry(
        &self,
        origin: &str,
        version: &RoomVersionId,
        incoming: Incoming,
        batch: &HashSet<OwnedEventId>,
    ) -> Result<Vec<Incoming>, FedError> {
        let room = incoming.pdu.room_id.clone();
        // An event we have (our own join sent back by the room's server,
        // a transaction retried) has its place already: what came before it
        // and we never had is history, for backfill, not news to append.
        let this = std::slice::from_ref(&incoming.pdu.event_id);
        if self
            .hearth
            .rooms
            .unknown_events(&room, this)
            .await?
            .is_empty()
        {
            return Ok(vec![incoming]);
        }
        let unknown: Vec<OwnedEventId> = self
            .hearth
            .rooms
            .unknown_parents(&incoming.pdu)
            .await?
            .into_iter()
            .filter(|id| !batch.contains(id))
            .collect();
        if unknown.is_empty() {
            return Ok(vec![incoming]);
        }
        tracing::info!(room = %room, event = %incoming.pdu.event_id, %origin, missing = unknown.len(),
            "received an event whose parents are unknown here; fetching them");
        let fetched = self
            .fetch_missing(origin, version, &incoming.pdu, batch)
            .await?;
        let mut gap: Vec<Incoming> = fetched
            .into_values()
            .map(|pdu| Incoming::new(pdu, incoming.against_current))
            .collect();
        gap.sort_by(|a, b| {
            (a.pdu.depth, a.pdu.origin_server_ts, &a.pdu.event_id).cmp(&(
                b.pdu.depth,
                b.pdu.origin_server_ts,
                &b.pdu.event_id,
            ))
        });
        gap.push(incoming);
        let have: HashSet<OwnedEventId> = gap
            .iter()
            .map(|e| e.pdu.event_id.clone())
            .chain(batch.iter().cloned())
            .collect();
        let holes = self.still_lacking(&room, &gap, &have).await?;
        let mut state_events: Vec<Pdu> = vec![];
        for hole in holes.iter().take(MAX_STATE_FETCHES) {
            let Some(event) = gap.iter_mut().find(|e| e.pdu.event_id == *hole) else {
                continue;
            };
            match self
                .reported_state(origin, version, &room, hole, &have)
                .await
            {
                Ok((ids, events)) => {
                    tracing::warn!(room = %room, event = %hole, %origin, fetched = events.len(),
                        "parents still unknown: taking the state before the event as its server reports it (history has a gap here)");
                    event.state_before = Some(ids);
                    state_events.extend(events);
                }
                Err(e) => {
                    tracing::warn!(room = %room, event = %hole, %origin, error = %e,
                        "parents unknown and the state before the event could not be had")
                }
            }
        }
        let mut seen = HashSet::new();
        state_events.retain(|p| seen.insert(p.event_id.clone()));
        state_events.sort_by_key(|p| (p.depth, p.origin_server_ts));
        Ok(state_events
            .into_iter()
            .map(|pdu| Incoming::new(pdu, false))
            .chain(gap)
            .collect())
    }

    /// Asks `origin` for the events between our forward extremities and
    /// `pdu`, in rounds, each round asking from the oldest events got so far
    /// whose parents are still unknown.
    async fn fetch_missing(
        &self,
        origin: &str,
        version: &RoomVersionId,
        pdu: &Pdu,
        batch: &HashSet<OwnedEventId>,
    ) -> Result<HashMap<OwnedEventId, Pdu>, FedError> {
        let room = &pdu.room_id;
        let earliest = self.hearth.rooms.forward_extremities(room).await?;
        let path = format!(
            "/_matrix/federation/v1/get_missing_events/{}",
            enc(room.as_str())
        );
        let mut got: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut latest = vec![pdu.event_id.clone()];
        while got.len() < MAX_GAP_EVENTS && !latest.is_empty() {
            let body = json!({
                "earliest_events": earliest,
                "latest_events": latest,
                "limit": MISSING_PER_REQUEST.min(MAX_GAP_EVENTS - got.len()),
                "min_depth": 0,
            });
            let answer = match self
                .request(origin, http::Method::POST, &path, Some(&body))
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(room = %room, %origin, error = %e, "get_missing_events failed");
                    break;
                }
            };
            let mut new = 0;
            for json in answer["events"].as_array().into_iter().flatten() {
                match self.check_pdu(json, version).await {
                    Ok(p) if p.room_id == *room && !batch.contains(&p.event_id) => {
                        if got.insert(p.event_id.clone(), p).is_none() {
                            new += 1;
                        }
                    }
                    Ok(p) => tracing::debug!(event = %p.event_id, "get_missing_events: not needed"),
                    Err(e) => tracing::warn!(room = %room, %origin, error = %e,
                        "get_missing_events returned an event that fails its checks"),
                }
            }
            if new == 0 {
                break;
            }
            let mut have: HashSet<OwnedEventId> = got.keys().cloned().collect();
            have.extend(batch.iter().cloned());
            have.insert(pdu.event_id.clone());
            let events: Vec<Incoming> = got
                .values()
                .map(|p| Incoming::new(p.clone(), false))
                .collect();
            latest = self.still_lacking(room, &events, &have).await?;
        }
        Ok(got)
    }

    /// The events among `events` with a parent that is neither in `have`
    /// nor known here.
    async fn still_lacking(
        &self,
        room: &RoomId,
        events: &[Incoming],
        have: &HashSet<OwnedEventId>,
    ) -> Result<Vec<OwnedEventId>, FedError> {
        let parents: Vec<OwnedEventId> = events
            .iter()
            .flat_map(|e| e.pdu.prev_events.iter())
            .filter(|id| !have.contains(*id))
            .cloned()
            .collect();
        let unknown: HashSet<OwnedEventId> = self
            .hearth
            .rooms
            .unknown_events(room, &parents)
            .await?
            .into_iter()
            .collect();
        Ok(events
            .iter()
            .filter(|e| e.pdu.prev_events.iter().any(|p| unknown.contains(p)))
            .map(|e| e.pdu.event_id.clone())
            .collect())
    }

    /// The state before `event` as `origin` reports it (`/state_ids`), and
    /// those of its events and their auth chain that we lack (`/event`),
    /// checked, oldest first.
    async fn reported_state(
        &self,
        origin: &str,
        version: &RoomVersionId,
        room: &RoomId,
        event: &OwnedEventId,
        have: &HashSet<OwnedEventId>,
    ) -> Result<(Vec<OwnedEventId>, Vec<Pdu>), FedError> {
        let path = format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(room.as_str()),
            enc(event.as_str())
        );
        let answer = self.request(origin, http::Method::GET, &path, None).await?;
        let ids = |field: &str| -> Vec<OwnedEventId> {
            answer[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|s| OwnedEventId::try_from(s).ok())
                .collect()
        };
        let state = ids("pdu_ids");
        let mut wanted: Vec<OwnedEventId> = state.clone();
        wanted.extend(ids("auth_chain_ids"));
        wanted.retain(|id| !have.contains(id));
        let lacking = self.hearth.rooms.unknown_events(room, &wanted).await?;
        if lacking.len() > MAX_STATE_EVENTS {
            return Err(FedError::Remote(format!(
                "the state before {event} has {} events we lack; more than {MAX_STATE_EVENTS}",
                lacking.len()
            )));
        }
        let events = self.fetch_events(origin, version, room, lacking).await?;
        Ok((state, events))
    }

    /// Events of `room` from `origin` (`/event/{eventId}` each, a few at
    /// once), checked; fails if any cannot be had.
    pub(crate) async fn fetch_events(
        &self,
        origin: &str,
        version: &RoomVersionId,
        room: &RoomId,
        ids: Vec<OwnedEventId>,
    ) -> Result<Vec<Pdu>, FedError> {
        futures::stream::iter(ids)
            .map(|id| self.fetch_event(origin, version, room, id))
            .buffer_unordered(EVENT_FETCHES_AT_ONCE)
            .try_collect()
            .await
    }

    /// One event of `room` from `origin` (`/event/{eventId}`), checked.
    async fn fetch_event(
        &self,
        origin: &str,
        version: &RoomVersionId,
        room: &RoomId,
        id: OwnedEventId,
    ) -> Result<Pdu, FedError> {
        let path = format!("/_matrix/federation/v1/event/{}", enc(id.as_str()));
        let answer = self.request(origin, http::Method::GET, &path, None).await?;
        let json = answer["pdus"]
            .as_array()
            .and_then(|p| p.first())
            .ok_or_else(|| FedError::Remote(format!("/event/{id} returned no event")))?;
        let pdu = self.check_pdu(json, version).await?;
        if pdu.event_id != id || pdu.room_id != *room {
            return Err(FedError::Remote(format!(
                "/event/{id} returned another event ({})",
                pdu.event_id
            )));
        }
        Ok(pdu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, prevs: &[&str]) -> Incoming {
        let json = json!({
            "room_id": "!r:x", "sender": "@u:x", "type": "m.room.message",
            "content": {}, "depth": 1, "origin_server_ts": 0,
            "prev_events": prevs, "auth_events": [],
        });
        let Value::Object(map) = json else {
            unreachable!()
        };
        let pdu = Pdu::from_json(OwnedEventId::try_from(id).expect("id"), map).expect("pdu");
        Incoming::new(pdu, false)
    }

    fn ids(events: &[Incoming]) -> Vec<String> {
        events.iter().map(|e| e.pdu.event_id.to_string()).collect()
    }

    #[test]
    fn parents_in_the_batch_come_first_and_the_rest_keeps_its_order() {
        // c builds on b, which comes later in the batch; a and d are apart.
        let batch = vec![
            event("$a", &["$z"]),
            event("$c", &["$b"]),
            event("$d", &["$a"]),
            event("$b", &["$a"]),
        ];
        assert_eq!(ids(&parents_first(batch)), ["$a", "$b", "$c", "$d"]);
        let in_order = vec![event("$a", &[]), event("$b", &["$a"]), event("$x", &[])];
        assert_eq!(ids(&parents_first(in_order)), ["$a", "$b", "$x"]);
    }
}
