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

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use super::{
    AccountDataRecord, AccountStore, BackupKey, BackupVersion, CommitHook, DataStore, DeviceRecord,
    Direction, EventToPersist, KeyStore, Lease, MediaRecord, MembershipRecord, PendingCommit,
    QueuedPdu, ReceiptRecord, RoomStore, StoredServerKey, UserRecord, postgres::PgStore,
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
impl AccountStore for ShardedStore {
    async fn create_user(&self, user_id: &str, hash: Option<&str>, admin: bool) -> Result<()> {
        self.main.create_user(user_id, hash, admin).await
    }
    async fn get_user(&self, user_id: &str) -> Result<Option<UserRecord>> {
        self.main.get_user(user_id).await
    }
    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<()> {
        self.main.set_password_hash(user_id, hash).await
    }
    async fn deactivate_user(&self, user_id: &str) -> Result<()> {
        self.main.deactivate_user(user_id).await
    }
    async fn set_displayname(&self, user_id: &str, name: Option<&str>) -> Result<()> {
        self.main.set_displayname(user_id, name).await
    }
    async fn set_avatar_url(&self, user_id: &str, url: Option<&str>) -> Result<()> {
        self.main.set_avatar_url(user_id, url).await
    }
    async fn search_users(&self, term: &str, limit: i64) -> Result<Vec<UserRecord>> {
        self.main.search_users(term, limit).await
    }
    async fn add_device_token(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        token_hash: &str,
    ) -> Result<()> {
        self.main
            .add_device_token(user_id, device_id, display_name, token_hash)
            .await
    }
    async fn find_token(&self, token_hash: &str) -> Result<Option<(String, String)>> {
        self.main.find_token(token_hash).await
    }
    async fn delete_token(&self, token_hash: &str) -> Result<()> {
        self.main.delete_token(token_hash).await
    }
    async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRecord>> {
        self.main.list_devices(user_id).await
    }
    async fn get_device(&self, user_id: &str, device_id: &str) -> Result<Option<DeviceRecord>> {
        self.main.get_device(user_id, device_id).await
    }
    async fn rename_device(&self, user: &str, device: &str, name: Option<&str>) -> Result<bool> {
        self.main.rename_device(user, device, name).await
    }
    async fn delete_devices(&self, user_id: &str, device_ids: Option<&[String]>) -> Result<()> {
        self.main.delete_devices(user_id, device_ids).await
    }
    async fn delete_other_tokens(&self, user_id: &str, keep: Option<&str>) -> Result<()> {
        self.main.delete_other_tokens(user_id, keep).await
    }
    async fn touch_device(
        &self,
        user: &str,
        device: &str,
        ip: Option<&str>,
        ts: i64,
    ) -> Result<()> {
        self.main.touch_device(user, device, ip, ts).await
    }
    async fn save_filter(&self, user_id: &str, filter: &Value) -> Result<String> {
        self.main.save_filter(user_id, filter).await
    }
    async fn get_filter(&self, user_id: &str, filter_id: &str) -> Result<Option<Value>> {
        self.main.get_filter(user_id, filter_id).await
    }
    async fn uia_session(
        &self,
        session: &str,
        since_ms: i64,
    ) -> Result<Option<(String, Vec<String>)>> {
        self.main.uia_session(session, since_ms).await
    }
    async fn put_uia_session(
        &self,
        session: &str,
        binding: &str,
        completed: &[String],
        expire_before_ms: i64,
    ) -> Result<()> {
        self.main
            .put_uia_session(session, binding, completed, expire_before_ms)
            .await
    }
    async fn delete_uia_session(&self, session: &str) -> Result<()> {
        self.main.delete_uia_session(session).await
    }
}

#[async_trait]
impl RoomStore for ShardedStore {
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
    async fn room_version(&self, room_id: &str) -> Result<Option<String>> {
        self.main.room_version(room_id).await
    }
    async fn set_room_public(&self, room_id: &str, public: bool) -> Result<()> {
        self.main.set_room_public(room_id, public).await
    }
    async fn is_room_public(&self, room_id: &str) -> Result<bool> {
        self.main.is_room_public(room_id).await
    }
    async fn public_rooms(&self) -> Result<Vec<String>> {
        self.main.public_rooms().await
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

    async fn memberships_of_user(&self, user_id: &str) -> Result<Vec<MembershipRecord>> {
        self.main.memberships_of_user(user_id).await
    }
    async fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<MembershipRecord>> {
        self.main.membership(room_id, user_id).await
    }
    async fn room_members(
        &self,
        room: &str,
        membership: Option<&str>,
    ) -> Result<Vec<MembershipRecord>> {
        self.main.room_members(room, membership).await
    }
    async fn forget_room(&self, room_id: &str, user_id: &str) -> Result<()> {
        self.main.forget_room(room_id, user_id).await
    }
    async fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        self.main.users_sharing_rooms(user_id).await
    }
    async fn users_in_public_rooms(&self) -> Result<Vec<String>> {
        let mut rooms = vec![];
        for s in &self.shards {
            rooms.extend(s.rooms_with_public_join_rule().await?);
        }
        self.main.joined_users_in(&rooms).await
    }

    async fn create_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<()> {
        self.main.create_alias(alias, room_id, creator).await
    }
    async fn resolve_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        self.main.resolve_alias(alias).await
    }
    async fn delete_alias(&self, alias: &str) -> Result<bool> {
        self.main.delete_alias(alias).await
    }
    async fn room_aliases(&self, room_id: &str) -> Result<Vec<String>> {
        self.main.room_aliases(room_id).await
    }
}

#[async_trait]
impl DataStore for ShardedStore {
    async fn put_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        data_type: &str,
        content: &Value,
    ) -> Result<i64> {
        self.main
            .put_account_data(user_id, room_id, data_type, content)
            .await
    }
    async fn get_account_data(&self, user: &str, room: &str, kind: &str) -> Result<Option<Value>> {
        self.main.get_account_data(user, room, kind).await
    }
    async fn account_data_since(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<AccountDataRecord>> {
        self.main.account_data_since(user_id, after, upto).await
    }
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
    async fn max_misc_stream_id(&self) -> Result<i64> {
        self.main.max_misc_stream_id().await
    }
    async fn put_media(&self, m: &MediaRecord) -> Result<()> {
        self.main.put_media(m).await
    }
    async fn get_media(&self, media_id: &str) -> Result<Option<MediaRecord>> {
        self.main.get_media(media_id).await
    }
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

    async fn federation_batch(&self, destination: &str, limit: usize) -> Result<Vec<QueuedPdu>> {
        // Each shard's queue in its own order; shards take turns so none
        // waits behind another (rooms never span shards, so each room's
        // order is kept).
        let mut per_shard = vec![];
        for shard in &self.shards {
            per_shard.push(
                shard
                    .federation_batch(destination, limit)
                    .await?
                    .into_iter(),
            );
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

    async fn federation_ack(&self, destination: &str, upto: &[(usize, i64)]) -> Result<()> {
        for (i, shard) in self.shards.iter().enumerate() {
            let mine: Vec<(usize, i64)> = upto
                .iter()
                .filter(|(source, _)| *source == i)
                .map(|(_, id)| (0, *id))
                .collect();
            if !mine.is_empty() {
                shard.federation_ack(destination, &mine).await?;
            }
        }
        Ok(())
    }

    async fn federation_destinations(&self) -> Result<Vec<String>> {
        let mut all = std::collections::BTreeSet::new();
        for shard in &self.shards {
            all.extend(shard.federation_destinations().await?);
        }
        Ok(all.into_iter().collect())
    }

    async fn server_keys(&self) -> Result<Vec<StoredServerKey>> {
        self.main.server_keys().await
    }
    async fn add_server_key(&self, key_id: &str, pkcs8: &[u8]) -> Result<()> {
        self.main.add_server_key(key_id, pkcs8).await
    }
}

#[async_trait]
impl KeyStore for ShardedStore {
    async fn put_device_keys(&self, user: &str, device: &str, keys: &Value) -> Result<Option<i64>> {
        self.main.put_device_keys(user, device, keys).await
    }
    async fn device_keys(&self, user: &str) -> Result<Vec<(String, Value)>> {
        self.main.device_keys(user).await
    }
    async fn add_one_time_keys(
        &self,
        user: &str,
        device: &str,
        keys: &[(String, String, Value)],
    ) -> Result<()> {
        self.main.add_one_time_keys(user, device, keys).await
    }
    async fn put_fallback_key(
        &self,
        user: &str,
        device: &str,
        algorithm: &str,
        key_id: &str,
        key: &Value,
    ) -> Result<()> {
        self.main
            .put_fallback_key(user, device, algorithm, key_id, key)
            .await
    }
    async fn key_counts(
        &self,
        user: &str,
        device: &str,
    ) -> Result<(Vec<(String, i64)>, Vec<String>)> {
        self.main.key_counts(user, device).await
    }
    async fn claim_key(
        &self,
        user: &str,
        device: &str,
        algorithm: &str,
    ) -> Result<Option<(String, Value)>> {
        self.main.claim_key(user, device, algorithm).await
    }
    async fn put_cross_signing_keys(&self, user: &str, keys: &[(String, Value)]) -> Result<i64> {
        self.main.put_cross_signing_keys(user, keys).await
    }
    async fn cross_signing_keys(&self, user: &str) -> Result<Vec<(String, Value)>> {
        self.main.cross_signing_keys(user).await
    }
    async fn add_key_signatures(
        &self,
        user: &str,
        key: &str,
        signatures: &serde_json::Map<String, Value>,
    ) -> Result<bool> {
        self.main.add_key_signatures(user, key, signatures).await
    }
    async fn add_user_signatures(
        &self,
        signer: &str,
        target: &str,
        target_key: &str,
        signatures: &[(String, String)],
    ) -> Result<i64> {
        self.main
            .add_user_signatures(signer, target, target_key, signatures)
            .await
    }
    async fn user_signatures(
        &self,
        signer: &str,
        target: &str,
    ) -> Result<Vec<(String, String, String)>> {
        self.main.user_signatures(signer, target).await
    }
    async fn device_lists_changed(&self, users: &[String]) -> Result<i64> {
        self.main.device_lists_changed(users).await
    }
    async fn device_list_changes(&self, after: i64, upto: i64) -> Result<Vec<String>> {
        self.main.device_list_changes(after, upto).await
    }
    async fn device_list_position(&self, user: &str) -> Result<i64> {
        self.main.device_list_position(user).await
    }
    async fn delete_device_keys(&self, user: &str, devices: &[String]) -> Result<i64> {
        self.main.delete_device_keys(user, devices).await
    }
    async fn queue_to_device(
        &self,
        txn: Option<(&str, &str, &str)>,
        messages: &[(String, String, Value)],
    ) -> Result<Option<i64>> {
        self.main.queue_to_device(txn, messages).await
    }
    async fn to_device_messages(
        &self,
        user: &str,
        device: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Value)>> {
        self.main
            .to_device_messages(user, device, after, upto, limit)
            .await
    }
    async fn delete_to_device(&self, user: &str, device: &str, upto: i64) -> Result<()> {
        self.main.delete_to_device(user, device, upto).await
    }
    async fn create_backup(&self, user: &str, algorithm: &str, auth_data: &Value) -> Result<i64> {
        self.main.create_backup(user, algorithm, auth_data).await
    }
    async fn backup_version(
        &self,
        user: &str,
        version: Option<i64>,
    ) -> Result<Option<BackupVersion>> {
        self.main.backup_version(user, version).await
    }
    async fn update_backup(&self, user: &str, version: i64, auth_data: &Value) -> Result<bool> {
        self.main.update_backup(user, version, auth_data).await
    }
    async fn delete_backup(&self, user: &str, version: i64) -> Result<bool> {
        self.main.delete_backup(user, version).await
    }
    async fn put_backup_keys(&self, user: &str, version: i64, keys: &[BackupKey]) -> Result<()> {
        self.main.put_backup_keys(user, version, keys).await
    }
    async fn backup_keys(
        &self,
        user: &str,
        version: i64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Vec<BackupKey>> {
        self.main.backup_keys(user, version, room, session).await
    }
    async fn delete_backup_keys(
        &self,
        user: &str,
        version: i64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<()> {
        self.main
            .delete_backup_keys(user, version, room, session)
            .await
    }
    async fn backup_key_count(&self, user: &str, version: i64) -> Result<i64> {
        self.main.backup_key_count(user, version).await
    }
}

/// Push tables live in the main database.
#[async_trait]
impl super::PushStore for ShardedStore {
    async fn set_pusher(&self, p: &super::PusherRecord, append: bool) -> Result<()> {
        self.main.set_pusher(p, append).await
    }
    async fn delete_device_pushers(&self, user: &str, devices: &[String]) -> Result<()> {
        self.main.delete_device_pushers(user, devices).await
    }
    async fn delete_pusher(&self, user: &str, app_id: &str, pushkey: &str) -> Result<bool> {
        self.main.delete_pusher(user, app_id, pushkey).await
    }
    async fn pushers(&self, user_id: &str) -> Result<Vec<super::PusherRecord>> {
        self.main.pushers(user_id).await
    }
    async fn users_with_pending_pushes(&self) -> Result<Vec<String>> {
        self.main.users_with_pending_pushes().await
    }
    async fn pusher_delivered(
        &self,
        user: &str,
        app_id: &str,
        pushkey: &str,
        upto: i64,
    ) -> Result<()> {
        self.main
            .pusher_delivered(user, app_id, pushkey, upto)
            .await
    }
    async fn add_notifications(&self, rows: &[super::NewNotification]) -> Result<()> {
        self.main.add_notifications(rows).await
    }
    async fn notifications_after(
        &self,
        user: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<super::NotificationRecord>> {
        self.main.notifications_after(user, after, limit).await
    }
    async fn notifications_before(
        &self,
        user: &str,
        before: Option<i64>,
        limit: i64,
        only_highlight: bool,
    ) -> Result<Vec<super::NotificationRecord>> {
        self.main
            .notifications_before(user, before, limit, only_highlight)
            .await
    }
    async fn notification_rooms(&self, user: &str) -> Result<Vec<String>> {
        self.main.notification_rooms(user).await
    }
    async fn count_notifications_after(&self, user: &str, room: &str, after: i64) -> Result<i64> {
        self.main.count_notifications_after(user, room, after).await
    }
}
