//! Scale-out layout (spec/storage.md): one main Postgres database for accounts,
//! devices, tokens, account data, the room directory and the membership
//! index, and N event shards; a room's events, state and receipts live on the
//! shard recorded for it when it was created (a stable hash of its id over the
//! shards configured then).
//!
//! Every database carries the full schema; each uses the tables of its role.
//! A shard also keeps the membership rows of its own rooms, written atomically
//! with their events; the main index is updated right after, and on start the
//! main index catches up from every shard, so a crash between the two commits
//! loses nothing.
//!
//! The router is the room role (`RoomStore`) only: callers reach the main
//! database through its own handle (`ShardedStore::main`, handed to
//! `Hearth::new` beside the router). The router touches main only where
//! routing needs it: a room's shard and its directory row, the membership
//! index rows written after their events, the joined users of public rooms,
//! and the stream heads and caches that several processes share.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use super::{
    CommitHook, Direction, EventStore, EventToPersist, Lease, MembershipRecord, OutgoingStore,
    PendingCommit, QueuedPdu, ReceiptRecord, ReceiptStore, postgres::PgStore,
};
use crate::{
    Error, Result,
    pdu::{StateMap, StoredEvent},
};

pub struct ShardedStore {
    main: Arc<PgStore>,
    shards: Vec<Arc<PgStore>>,
    /// room → shard, filled as rooms are met (a room never moves).
    room_shards: Mutex<HashMap<String, usize>>,
}

impl ShardedStore {
    /// Connects to the main database and every shard, applies migrations and
    /// brings the membership index up to date with the shards.
    pub async fn connect(main_url: &str, shard_urls: &[String]) -> Result<Self> {
        if shard_urls.is_empty() {
            return Err(Error::internal("a sharded store needs at least one shard"));
        }
        let main = Arc::new(PgStore::connect(main_url).await?);
        let mut shards = vec![];
        for url in shard_urls {
            shards.push(Arc::new(PgStore::connect(url).await?));
        }
        let store = Self {
            main,
            shards,
            room_shards: Mutex::default(),
        };
        for shard in &store.shards {
            let rows = shard.all_memberships().await?;
            store.main.index_memberships(&rows).await?;
        }
        Ok(store)
    }

    /// The main database, for the main role's handle (`Stores::main`).
    pub fn main(&self) -> Arc<PgStore> {
        self.main.clone()
    }

    pub async fn close(&self) {
        self.main.close().await;
        for s in &self.shards {
            s.close().await;
        }
    }

    /// The shard a new room goes to: FNV-1a of its id over the shard count.
    fn shard_for_new_room(&self, room_id: &str) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in room_id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % self.shards.len() as u64) as usize
    }

    async fn index(&self, room_id: &str) -> Result<usize> {
        if let Some(i) = self.room_shards.lock().get(room_id).copied() {
            return Ok(i);
        }
        let Some(i) = self.main.room_shard(room_id).await? else {
            return Err(Error::not_found("Unknown room"));
        };
        let i = usize::try_from(i)
            .ok()
            .filter(|i| *i < self.shards.len())
            .ok_or_else(|| Error::internal(format!("room {room_id} is on unknown shard {i}")))?;
        self.room_shards.lock().insert(room_id.to_owned(), i);
        Ok(i)
    }

    async fn shard(&self, room_id: &str) -> Result<&PgStore> {
        let i = self.index(room_id).await?;
        Ok(&self.shards[i])
    }

    /// Groups rooms by shard.
    async fn by_shard(&self, room_ids: &[String]) -> Result<BTreeMap<usize, Vec<String>>> {
        let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for r in room_ids {
            groups
                .entry(self.index(r).await?)
                .or_default()
                .push(r.clone());
        }
        Ok(groups)
    }
}

fn pos(positions: &[i64], i: usize) -> [i64; 1] {
    [positions.get(i).copied().unwrap_or(0)]
}

#[async_trait]
impl EventStore for ShardedStore {
    async fn create_room(&self, room_id: &str, version: &str, creator: &str) -> Result<()> {
        let i = self.shard_for_new_room(room_id);
        self.main
            .insert_room(room_id, version, creator, i as i64)
            .await?;
        // The shard's own directory row lets its queries stand alone.
        self.shards[i]
            .create_room(room_id, version, creator)
            .await?;
        self.room_shards.lock().insert(room_id.to_owned(), i);
        Ok(())
    }

    async fn submit_event(&self, ev: EventToPersist) -> Result<PendingCommit> {
        let shard = self.shard(ev.pdu.room_id.as_str()).await?;
        // The index rows member state changes, written to main once the
        // event is durable on its shard (the upsert keeps the newest).
        let index: Vec<MembershipRecord> = ev
            .state
            .iter()
            .filter_map(|c| {
                c.membership.as_ref().map(|m| MembershipRecord {
                    room_id: ev.pdu.room_id.to_string(),
                    user_id: c.state_key.clone(),
                    membership: m.clone(),
                    event_id: c.event_id.clone(),
                    stream_ordering: 0,
                    forgotten: false,
                })
            })
            .collect();
        let committed = shard.submit_event(ev).await?;
        let main = self.main.clone();
        Ok(Box::pin(async move {
            let ordering = committed.await?;
            if !index.is_empty() {
                let index: Vec<MembershipRecord> = index
                    .into_iter()
                    .map(|r| MembershipRecord {
                        stream_ordering: ordering,
                        ..r
                    })
                    .collect();
                main.index_memberships(&index).await?;
            }
            Ok(ordering)
        }))
    }

    async fn acquire_room_lease(
        &self,
        room_id: &str,
        holder: &str,
        address: &str,
        ttl_ms: i64,
    ) -> Result<Lease> {
        self.shard(room_id)
            .await?
            .acquire_room_lease(room_id, holder, address, ttl_ms)
            .await
    }

    async fn renew_room_leases(
        &self,
        room_ids: &[String],
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Vec<String>> {
        // Each shard renews its own rooms' leases.
        let mut held = vec![];
        for (i, rooms) in self.by_shard(room_ids).await? {
            if let Some(shard) = self.shards.get(i) {
                held.extend(shard.renew_room_leases(&rooms, holder, ttl_ms).await?);
            }
        }
        Ok(held)
    }

    fn on_commit(&self, hook: CommitHook) {
        for shard in &self.shards {
            shard.on_commit(hook.clone());
        }
    }

    async fn txn_event(
        &self,
        room_id: &str,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
    ) -> Result<Option<String>> {
        self.shard(room_id)
            .await?
            .txn_event(room_id, user_id, device_id, txn_id)
            .await
    }
    async fn get_event(&self, event_id: &str) -> Result<Option<StoredEvent>> {
        // Event ids do not name their room; shards are few.
        for s in &self.shards {
            if let Some(e) = s.get_event(event_id).await? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }
    async fn store_redacted(&self, event_id: &str, json: &Value, by: &str) -> Result<()> {
        let room = json
            .get("room_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.shard(room)
            .await?
            .store_redacted(event_id, json, by)
            .await
    }
    async fn redactions_of(&self, room_id: &str, event_id: &str) -> Result<Vec<StoredEvent>> {
        self.shard(room_id)
            .await?
            .redactions_of(room_id, event_id)
            .await
    }
    async fn latest_event(&self, room_id: &str) -> Result<Option<StoredEvent>> {
        self.shard(room_id).await?.latest_event(room_id).await
    }
    async fn current_state(&self, room_id: &str) -> Result<Vec<StoredEvent>> {
        self.shard(room_id).await?.current_state(room_id).await
    }
    async fn state_at(&self, room_id: &str, at: i64) -> Result<StateMap<String>> {
        self.shard(room_id).await?.state_at(room_id, at).await
    }
    async fn state_event_at(
        &self,
        room_id: &str,
        kind: &str,
        state_key: &str,
        at: i64,
    ) -> Result<Option<StoredEvent>> {
        self.shard(room_id)
            .await?
            .state_event_at(room_id, kind, state_key, at)
            .await
    }
    async fn state_changes(&self, room: &str, after: i64, upto: i64) -> Result<Vec<StoredEvent>> {
        self.shard(room)
            .await?
            .state_changes(room, after, upto)
            .await
    }
    async fn get_events(&self, event_ids: &[String]) -> Result<Vec<StoredEvent>> {
        let mut out = vec![];
        for s in &self.shards {
            out.extend(s.get_events(event_ids).await?);
            if out.len() == event_ids.len() {
                break;
            }
        }
        Ok(out)
    }
    async fn backfill_frontier(&self, room_id: &str) -> Result<Vec<(String, i64)>> {
        self.shard(room_id).await?.backfill_frontier(room_id).await
    }
    async fn store_history(
        &self,
        room_id: &str,
        events: &[crate::pdu::Pdu],
        frontier: &[(String, i64)],
    ) -> Result<()> {
        self.shard(room_id)
            .await?
            .store_history(room_id, events, frontier)
            .await
    }
    async fn room_events(
        &self,
        room_id: &str,
        from: i64,
        to: Option<i64>,
        dir: Direction,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        self.shard(room_id)
            .await?
            .room_events(room_id, from, to, dir, limit)
            .await
    }
    async fn rooms_with_events(
        &self,
        room_ids: &[String],
        after: &[i64],
        upto: &[i64],
    ) -> Result<Vec<(String, i64)>> {
        let mut out = vec![];
        for (i, rooms) in self.by_shard(room_ids).await? {
            out.extend(
                self.shards[i]
                    .rooms_with_events(&rooms, &pos(after, i), &pos(upto, i))
                    .await?,
            );
        }
        Ok(out)
    }
    async fn refresh_stream_heads(&self) -> Result<bool> {
        let mut moved = self.main.refresh_stream_heads().await?;
        for shard in &self.shards {
            moved |= shard.refresh_stream_heads().await?;
        }
        Ok(moved)
    }

    fn share_with_other_processes(&self) {
        self.main.share_with_other_processes();
        for shard in &self.shards {
            shard.share_with_other_processes();
        }
    }

    async fn stream_positions(&self) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            out.push(s.stream_positions().await?.first().copied().unwrap_or(0));
        }
        Ok(out)
    }
    async fn shard_of(&self, room_id: &str) -> Result<usize> {
        self.index(room_id).await
    }

    async fn users_in_public_rooms(&self) -> Result<Vec<String>> {
        let mut rooms = vec![];
        for s in &self.shards {
            rooms.extend(s.rooms_with_public_join_rule().await?);
        }
        self.main.joined_users_in(&rooms).await
    }
}

#[async_trait]
impl ReceiptStore for ShardedStore {
    async fn put_receipt(&self, r: &ReceiptRecord) -> Result<i64> {
        self.shard(&r.room_id).await?.put_receipt(r).await
    }
    async fn receipts_since(
        &self,
        room_ids: &[String],
        after: &[i64],
        upto: &[i64],
    ) -> Result<Vec<ReceiptRecord>> {
        let mut out = vec![];
        for (i, rooms) in self.by_shard(room_ids).await? {
            out.extend(
                self.shards[i]
                    .receipts_since(&rooms, &pos(after, i), &pos(upto, i))
                    .await?,
            );
        }
        Ok(out)
    }
    async fn read_position(&self, room_id: &str, user_id: &str) -> Result<Option<i64>> {
        self.shard(room_id)
            .await?
            .read_position(room_id, user_id)
            .await
    }
}

#[async_trait]
impl OutgoingStore for ShardedStore {
    async fn queue_outgoing(
        &self,
        room_id: &str,
        txn: Option<(String, String, String)>,
        event_id: &str,
        destinations: &[String],
        pdu_json: &str,
    ) -> Result<()> {
        // On the room's shard, beside the room's transaction ids.
        self.shard(room_id)
            .await?
            .queue_outgoing(room_id, txn, event_id, destinations, pdu_json)
            .await
    }

    async fn outgoing_batch(&self, destination: &str, limit: usize) -> Result<Vec<QueuedPdu>> {
        // Each shard's queue in its own order; shards take turns so none
        // waits behind another (rooms never span shards, so each room's
        // order is kept).
        let mut per_shard = vec![];
        for shard in &self.shards {
            per_shard.push(shard.outgoing_batch(destination, limit).await?.into_iter());
        }
        let mut out = vec![];
        while out.len() < limit {
            let mut took = false;
            for (i, queue) in per_shard.iter_mut().enumerate() {
                if out.len() < limit
                    && let Some(mut q) = queue.next()
                {
                    q.source = i;
                    out.push(q);
                    took = true;
                }
            }
            if !took {
                break;
            }
        }
        Ok(out)
    }

    async fn outgoing_ack(&self, destination: &str, upto: &[(usize, i64)]) -> Result<()> {
        for (i, shard) in self.shards.iter().enumerate() {
            let mine: Vec<(usize, i64)> = upto
                .iter()
                .filter(|(source, _)| *source == i)
                .map(|(_, id)| (0, *id))
                .collect();
            if !mine.is_empty() {
                shard.outgoing_ack(destination, &mine).await?;
            }
        }
        Ok(())
    }

    async fn outgoing_destinations(&self) -> Result<Vec<String>> {
        let mut all = std::collections::BTreeSet::new();
        for shard in &self.shards {
            all.extend(shard.outgoing_destinations().await?);
        }
        Ok(all.into_iter().collect())
    }
}
