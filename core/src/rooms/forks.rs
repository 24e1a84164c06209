//! Forks in a room's event graph (spec/federation.md, "Forks and state
//! resolution"). The room's owner appends every event in one order, but an
//! event another server built may name older `prev_events` than the room's
//! forward extremities: it was sent concurrently. The room's state after
//! such an event is settled by Matrix state resolution (v2), the way DAG
//! servers settle it, and the next event names every forward extremity so
//! the branches join. Every server applies the owner's sequence with the
//! same inputs, so every server settles on the same state.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{OwnedEventId, events::StateEventType, room_version_rules::RoomVersionRules, state_res};
use tracing::{debug, info};

use super::{RoomCache, RoomWriter};
use crate::{
    Error, Result,
    pdu::{Pdu, StoredEvent},
};

/// Most `prev_events` an event built here names (the spec allows 20).
const MAX_PREV_EVENTS: usize = 10;
/// Recent events read to find a room's forward extremities on load.
pub(crate) const EXTREMITY_WINDOW: i64 = 64;

/// A room's state: (event type, state key) → event.
pub(crate) type RoomState = HashMap<(String, String), Arc<Pdu>>;

impl RoomCache {
    /// `prev_events` and depth for the room's next event: every forward
    /// extremity (the deepest, when there are many), plus this server's own
    /// event still on its way to the owner. `None` for a room without events.
    pub(crate) fn next_prev_events(&self) -> Option<(Vec<String>, u64)> {
        let mut tips: Vec<&(OwnedEventId, u64)> = self.extremities.iter().collect();
        tips.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        tips.truncate(MAX_PREV_EVENTS);
        if let Some(own) = &self.pending_own
            && !tips.iter().any(|t| t.0 == own.0)
        {
            tips.push(own);
        }
        let depth = tips.iter().map(|t| t.1).max()? + 1;
        let mut ids: Vec<String> = tips.iter().map(|t| t.0.to_string()).collect();
        ids.sort();
        Some((ids, depth))
    }

    /// The room's forward extremities once `pdu` is appended: its parents
    /// are no longer tips, it is one.
    pub(crate) fn advance(&mut self, pdu: &Pdu) {
        self.extremities
            .retain(|(id, _)| !pdu.prev_events.contains(id) && *id != pdu.event_id);
        self.extremities.push((pdu.event_id.clone(), pdu.depth));
        if self
            .pending_own
            .as_ref()
            .is_some_and(|(id, _)| *id == pdu.event_id)
        {
            self.pending_own = None;
        }
    }

    /// Whether `pdu` was built on something other than the room's forward
    /// extremities (built concurrently with the events since).
    fn is_fork(&self, pdu: &Pdu) -> bool {
        let tips: HashSet<&OwnedEventId> = self.extremities.iter().map(|(id, _)| id).collect();
        let prevs: HashSet<&OwnedEventId> = pdu.prev_events.iter().collect();
        !tips.is_empty() && tips != prevs
    }

    /// Whether the state is known to be unchanged since each of `prevs`
    /// (each appended through this view, no state change after it).
    fn state_unchanged_since(&self, prevs: &[OwnedEventId]) -> bool {
        prevs.iter().all(|p| {
            self.submitted
                .iter()
                .rev()
                .find(|(id, _)| id == p)
                .is_some_and(|(_, serial)| *serial == self.state_serial)
        })
    }
}

/// A room's forward extremities from its newest events (newest first): the
/// events no later one names as a parent.
pub(crate) fn extremities_of(newest_first: &[StoredEvent]) -> Vec<(OwnedEventId, u64)> {
    let mut named: HashSet<&OwnedEventId> = HashSet::new();
    let mut tips = vec![];
    for ev in newest_first {
        if !named.contains(&ev.pdu.event_id) {
            tips.push((ev.pdu.event_id.clone(), ev.pdu.depth));
        }
        named.extend(ev.pdu.prev_events.iter());
    }
    tips
}

impl RoomWriter {
    /// The room's state after `pdu`, when it needs resolving: `pdu` forks
    /// the graph, and it is a state event or the state changed since its
    /// parents. `None` when the state is the current one plus `pdu`.
    /// `reported`: the state before `pdu` as its sender reported it, for an
    /// event whose parents this server could not get.
    pub(crate) async fn resolve_fork(
        &self,
        cache: &RoomCache,
        pdu: &Pdu,
        rules: &RoomVersionRules,
        reported: Option<&[OwnedEventId]>,
    ) -> Result<Option<RoomState>> {
        if !cache.is_fork(pdu) {
            return Ok(None);
        }
        let current: state_res::StateMap<OwnedEventId> = cache
            .state
            .iter()
            .map(|((t, k), p)| {
                (
                    (StateEventType::from(t.as_str()), k.clone()),
                    p.event_id.clone(),
                )
            })
            .collect();
        let mut forks = match reported {
            Some(ids) => vec![self.reported_state(ids).await?],
            None => self.parent_states(cache, pdu, &current).await?,
        };
        if forks.is_empty() {
            return Ok(None);
        }
        forks.dedup();
        let mut events = EventPool::from_state(&cache.state);
        let mut before = if forks.len() == 1 {
            forks.pop().unwrap_or_default()
        } else {
            events.load_for(self, &forks).await?;
            events.resolve(rules, &forks)?
        };
        if pdu.state_key.is_none() && before == current {
            return Ok(None);
        }
        if let Some(sk) = &pdu.state_key {
            before.insert(
                (StateEventType::from(pdu.kind.to_string()), sk.clone()),
                pdu.event_id.clone(),
            );
            events.insert(pdu.clone());
        }
        let sides = vec![current, before];
        events.load_for(self, &sides).await?;
        let resolved = events.resolve(rules, &sides)?;
        let mut state = RoomState::new();
        for ((t, k), id) in resolved {
            let p = events
                .get(&id)
                .ok_or_else(|| Error::internal(format!("resolved state names unknown {id}")))?;
            state.insert((t.to_string(), k), p);
        }
        info!(room = %pdu.room_id, event = %pdu.event_id, "fork in the event graph: state resolved");
        Ok(Some(state))
    }

    /// The state after each of `pdu`'s parents: the current state for one
    /// appended through this view with no state change since (even if not
    /// durable yet), else what the database holds at its position. Parents
    /// never seen here (a DAG server's events we lack) do not count.
    async fn parent_states(
        &self,
        cache: &RoomCache,
        pdu: &Pdu,
        current: &state_res::StateMap<OwnedEventId>,
    ) -> Result<Vec<state_res::StateMap<OwnedEventId>>> {
        let room = pdu.room_id.as_str();
        let mut forks: Vec<state_res::StateMap<OwnedEventId>> = vec![];
        let mut stored: Vec<String> = vec![];
        for parent in &pdu.prev_events {
            if cache.state_unchanged_since(std::slice::from_ref(parent)) {
                forks.push(current.clone());
            } else {
                stored.push(parent.to_string());
            }
        }
        if stored.is_empty() {
            return Ok(forks);
        }
        let found = self.store.get_events(&stored).await?;
        for id in &stored {
            if found.iter().any(|e| e.pdu.event_id.as_str() == id) {
                continue;
            }
            let in_flight =
                OwnedEventId::try_from(id.as_str()).is_ok_and(|id| cache.submitted_contains(&id));
            if in_flight {
                // On its way to the database: resolved once it is there
                // (the sender retries).
                return Err(Error::Unavailable(format!(
                    "the parents of {} are still being stored",
                    pdu.event_id
                )));
            }
            debug!(event = %pdu.event_id, parent = %id, "fork with a parent unknown here");
        }
        for parent in &found {
            let ids = self.store.state_at(room, parent.stream_ordering).await?;
            forks.push(to_state_map(ids)?);
        }
        Ok(forks)
    }

    /// A state another server reported (event ids), keyed by type and state
    /// key; events not stored here are left out.
    async fn reported_state(
        &self,
        ids: &[OwnedEventId],
    ) -> Result<state_res::StateMap<OwnedEventId>> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let found = self.store.get_events(&ids).await?;
        if found.len() < ids.len() {
            debug!(
                reported = ids.len(),
                found = found.len(),
                "a reported state names events not stored here"
            );
        }
        Ok(found
            .into_iter()
            .filter_map(|e| {
                let key = (
                    StateEventType::from(e.pdu.kind.to_string()),
                    e.pdu.state_key.clone()?,
                );
                Some((key, e.pdu.event_id))
            })
            .collect())
    }
}

fn to_state_map(ids: crate::pdu::StateMap<String>) -> Result<state_res::StateMap<OwnedEventId>> {
    ids.into_iter()
        .map(|((t, k), id)| {
            let id = OwnedEventId::try_from(id).map_err(Error::internal)?;
            Ok(((StateEventType::from(t), k), id))
        })
        .collect()
}

/// The events a resolution reads: the states' events and their auth chains.
struct EventPool {
    events: HashMap<OwnedEventId, Arc<Pdu>>,
}

impl EventPool {
    fn from_state(state: &RoomState) -> Self {
        Self {
            events: state
                .values()
                .map(|p| (p.event_id.clone(), p.clone()))
                .collect(),
        }
    }

    fn insert(&mut self, pdu: Pdu) {
        self.events.insert(pdu.event_id.clone(), Arc::new(pdu));
    }

    fn get(&self, id: &OwnedEventId) -> Option<Arc<Pdu>> {
        self.events.get(id).cloned()
    }

    /// Loads every event of the states and of their auth chains.
    async fn load_for(
        &mut self,
        writer: &RoomWriter,
        states: &[state_res::StateMap<OwnedEventId>],
    ) -> Result<()> {
        let mut todo: Vec<OwnedEventId> = states.iter().flat_map(|s| s.values().cloned()).collect();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        while !todo.is_empty() {
            todo.retain(|id| seen.insert(id.clone()));
            let missing: Vec<String> = todo
                .iter()
                .filter(|id| !self.events.contains_key(*id))
                .map(ToString::to_string)
                .collect();
            if !missing.is_empty() {
                for e in writer.store.get_events(&missing).await? {
                    self.insert(e.pdu);
                }
            }
            todo = todo
                .iter()
                .filter_map(|id| self.events.get(id))
                .flat_map(|p| p.auth_events.iter().cloned())
                .collect();
        }
        Ok(())
    }

    /// Every event reachable through `auth_events` from `start`, with it.
    fn auth_chain(&self, start: &OwnedEventId) -> HashSet<OwnedEventId> {
        let mut chain = HashSet::new();
        let mut todo = vec![start.clone()];
        while let Some(id) = todo.pop() {
            if let Some(p) = self.events.get(&id) {
                for a in &p.auth_events {
                    if chain.insert(a.clone()) {
                        todo.push(a.clone());
                    }
                }
            }
        }
        chain
    }

    /// Matrix state resolution v2 of `states`, over the loaded events.
    fn resolve(
        &self,
        rules: &RoomVersionRules,
        states: &[state_res::StateMap<OwnedEventId>],
    ) -> Result<state_res::StateMap<OwnedEventId>> {
        let auth_chains: Vec<HashSet<OwnedEventId>> = states
            .iter()
            .map(|s| {
                let mut chain = HashSet::new();
                for id in s.values() {
                    chain.extend(self.auth_chain(id));
                }
                chain
            })
            .collect();
        let state_res_rules = rules
            .state_res
            .v2_rules()
            .ok_or_else(|| Error::internal("room version without state resolution v2"))?;
        state_res::resolve(
            &rules.authorization,
            state_res_rules,
            states.iter(),
            auth_chains
                .into_iter()
                .map(|c| c.into_iter().collect())
                .collect(),
            |id| self.events.get(id).map(|p| p.as_ref().clone()),
            |conflicted| Some(self.conflicted_subgraph(conflicted).into_iter().collect()),
        )
        .map_err(|e| Error::internal(format!("state resolution: {e}")))
    }

    /// The conflicted state subgraph (room version 12): events on an auth
    /// path from one conflicted event to another, the conflicted included.
    fn conflicted_subgraph(
        &self,
        conflicted: &state_res::StateMap<Vec<OwnedEventId>>,
    ) -> HashSet<OwnedEventId> {
        let sources: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        // An event belongs when it is a conflicted event's auth ancestor and
        // itself has a conflicted event among its auth ancestors (or is one).
        let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
        let mut out = HashSet::new();
        for source in &sources {
            out.insert(source.clone());
            for ancestor in self.auth_chain(source) {
                if self.reaches_conflicted(&ancestor, &sources, &mut reaches) {
                    out.insert(ancestor);
                }
            }
        }
        out
    }

    fn reaches_conflicted(
        &self,
        id: &OwnedEventId,
        sources: &HashSet<OwnedEventId>,
        memo: &mut HashMap<OwnedEventId, bool>,
    ) -> bool {
        if sources.contains(id) {
            return true;
        }
        if let Some(&r) = memo.get(id) {
            return r;
        }
        let r = self.auth_chain(id).iter().any(|a| sources.contains(a));
        memo.insert(id.clone(), r);
        r
    }
}
