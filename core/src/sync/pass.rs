//! One sync pass: what changed for a user between the request's `since` and
//! the current stream positions, read once up front and assembled into the
//! answer room by room (rooms.rs), then the user-wide parts.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{UserId, events::room::member::MembershipState};
use serde_json::{Map, Value, json};

use super::{SyncRequest, SyncToken, empty_response};
use crate::{
    Result,
    filter::SyncFilter,
    rooms::membership_state,
    store::{AccountDataRecord, MembershipRecord, ReceiptRecord},
};

const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// The user ids of an `m.ignored_user_list` content (`ignored_users`' keys).
fn ignored_users(content: Option<&Value>) -> BTreeSet<String> {
    content
        .and_then(|c| c.get("ignored_users"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// What a pass has read up front and gathers as it goes.
pub(super) struct Pass<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub req: &'a SyncRequest,
    pub upto: SyncToken,
    /// Joined rooms with new events, each with its newest ordering.
    pub changed_rooms: BTreeMap<String, i64>,
    /// Receipts ride in the shard streams.
    pub receipts: Vec<ReceiptRecord>,
    /// Account data (global and per room) rides in the misc stream.
    pub account_data: Vec<AccountDataRecord>,
    /// Whether an incremental answer carries anything: a long-poll returns
    /// only then.
    pub has_data: bool,
    pub join: Map<String, Value>,
    pub invite: Map<String, Value>,
    pub knock: Map<String, Value>,
    pub leave: Map<String, Value>,
    /// Membership changes seen in this answer, for `device_lists`: users
    /// who joined a room with us (their devices are news to us) and users
    /// who left one (maybe the last room we shared).
    pub members_joined: BTreeSet<String>,
    pub members_left: BTreeSet<String>,
    /// Whom the user ignores: their invites and timeline events are left
    /// out (state events are not).
    pub ignored: tokio::sync::OnceCell<BTreeSet<String>>,
}

impl Pass<'_> {
    pub fn since(&self) -> Option<&SyncToken> {
        self.req.since.as_ref()
    }

    pub fn incremental(&self) -> bool {
        self.req.since.is_some()
    }

    pub fn filter(&self) -> &SyncFilter {
        &self.req.filter
    }

    fn misc_moved(&self) -> bool {
        self.since().is_none_or(|s| s.misc != self.upto.misc)
    }
}

impl super::Syncer {
    pub(super) async fn sync_once(
        &self,
        user: &UserId,
        device: &str,
        req: &SyncRequest,
    ) -> Result<(Value, bool)> {
        let upto = self.current_token().await?;
        if req.since.as_ref() == Some(&upto) && !req.full_state {
            // Nothing moved in any stream: the common case for a long-poll
            // that just re-armed after its last answer.
            self.e2ee.ack_to_device(user, device, upto.misc).await?;
            return Ok((empty_response(&upto), false));
        }
        if req.since.is_none() {
            self.lazy_members.forget(user, device);
        }
        let memberships = self.main.memberships_of_user(user.as_str()).await?;
        let mut pass = self
            .begin_pass(user, device, req, upto, &memberships)
            .await?;
        for m in &memberships {
            if m.forgotten || !req.filter.rooms.allows_room(&m.room_id) {
                continue;
            }
            self.sync_room(&mut pass, m).await?;
        }
        let global_data = self.global_account_data(&pass).await?;
        pass.has_data |= pass.incremental() && !global_data.is_empty();
        let presence = self.presence_part(&pass).await?;
        pass.has_data |= pass.incremental() && !presence.is_empty();
        self.finish_pass(pass, global_data, presence).await
    }

    /// Reads what every room of the pass needs: which joined rooms have new
    /// events, the new receipts and the new account data.
    async fn begin_pass<'a>(
        &self,
        user: &'a UserId,
        device: &'a str,
        req: &'a SyncRequest,
        upto: SyncToken,
        memberships: &[MembershipRecord],
    ) -> Result<Pass<'a>> {
        let joined: Vec<String> = memberships
            .iter()
            .filter(|m| membership_state(m) == MembershipState::Join)
            .map(|m| m.room_id.clone())
            .collect();
        let start = SyncToken::default();
        let from = req.since.as_ref().unwrap_or(&start);
        let changed_rooms = match &req.since {
            Some(s) => self
                .store
                .rooms_with_events(&joined, &s.shards, &upto.shards)
                .await?
                .into_iter()
                .collect(),
            None => BTreeMap::new(),
        };
        let receipts = if from.shards != upto.shards {
            self.store
                .receipts_since(&joined, &from.shards, &upto.shards)
                .await?
        } else {
            vec![]
        };
        let account_data = if req.since.as_ref().is_none_or(|s| s.misc != upto.misc) {
            self.main
                .account_data_since(user.as_str(), from.misc, upto.misc)
                .await?
        } else {
            vec![]
        };
        Ok(Pass {
            user,
            device,
            req,
            upto,
            changed_rooms,
            receipts,
            account_data,
            has_data: false,
            join: Map::new(),
            invite: Map::new(),
            knock: Map::new(),
            leave: Map::new(),
            members_joined: BTreeSet::new(),
            members_left: BTreeSet::new(),
            ignored: tokio::sync::OnceCell::new(),
        })
    }

    /// The user's global account data, with the default push rules on an
    /// initial sync when the user never changed them.
    async fn global_account_data(&self, pass: &Pass<'_>) -> Result<Vec<Value>> {
        let f = pass.filter();
        let mut global: Vec<Value> = pass
            .account_data
            .iter()
            .filter(|a| a.room_id.is_empty() && f.account_data.allows_type(&a.data_type))
            .map(|a| json!({"type": a.data_type, "content": a.content}))
            .collect();
        // Clients read their push rules from the first sync; a user who never
        // changed them has the server's defaults, which are stored nowhere.
        let has_rules = global.iter().any(|e| e["type"] == "m.push_rules");
        if !pass.incremental() && !has_rules && f.account_data.allows_type("m.push_rules") {
            let rules = self.push.push_rules(pass.user).await?;
            global.push(json!({"type": "m.push_rules", "content": {"global": rules.to_json()}}));
        }
        Ok(global)
    }

    /// The presence of the user and of those sharing a room with them that
    /// changed since the last sync, and that of the members this answer
    /// brings to the user (they joined a room with them, or the user joined
    /// theirs), however long ago it last changed.
    async fn presence_part(&self, pass: &Pass<'_>) -> Result<Vec<Value>> {
        if pass.filter().presence.excludes_all() {
            return Ok(vec![]);
        }
        let since = pass.since().map(|s| s.presence);
        let presence = &self.ephemeral.presence;
        let mut out = vec![];
        if since.is_none_or(|s| s != pass.upto.presence) {
            let mut users = self.main.users_sharing_rooms(pass.user.as_str()).await?;
            // A user in no room still sees their own presence.
            if !users.iter().any(|u| u == pass.user.as_str()) {
                users.push(pass.user.to_string());
            }
            out = presence.events_for(&users, since);
        }
        if since.is_some() {
            let sent: BTreeSet<&str> = out.iter().filter_map(|e| e["sender"].as_str()).collect();
            let new: Vec<String> = pass
                .members_joined
                .iter()
                .filter(|u| !sent.contains(u.as_str()) && *u != pass.user.as_str())
                .cloned()
                .collect();
            let news = presence.events_for(&new, None);
            out.extend(news);
        }
        Ok(out)
    }

    /// The users `pass.user` ignores (`m.ignored_user_list`), read once per
    /// pass and only when something could come from them.
    pub(super) async fn ignored<'p>(&self, pass: &'p Pass<'_>) -> Result<&'p BTreeSet<String>> {
        pass.ignored
            .get_or_try_init(|| async {
                let content = self
                    .main
                    .get_account_data(pass.user.as_str(), "", IGNORED_USER_LIST)
                    .await?;
                Ok(ignored_users(content.as_ref()))
            })
            .await
    }

    /// Adds the device's part and `device_lists`, and builds the answer.
    async fn finish_pass(
        &self,
        mut pass: Pass<'_>,
        global_data: Vec<Value>,
        presence: Vec<Value>,
    ) -> Result<(Value, bool)> {
        let (user, since) = (pass.user, pass.since().map(|s| s.misc));
        let devices = self
            .e2ee
            .device_sync(user, pass.device, since, pass.upto.misc, pass.misc_moved())
            .await?;
        let mut changed = devices.changed;
        let joined = std::mem::take(&mut pass.members_joined);
        changed.extend(joined.into_iter().filter(|u| u != user.as_str()));
        let left = self
            .no_longer_shared(user, std::mem::take(&mut pass.members_left), &changed)
            .await?;
        pass.has_data |= pass.incremental()
            && (!devices.to_device.is_empty() || !changed.is_empty() || !left.is_empty());
        // A to-device backlog larger than one answer: the token stops where
        // this answer's messages end.
        let mut next = pass.upto.clone();
        if let Some(misc) = devices.misc_upto {
            next.misc = misc;
        }
        let mut body = empty_response(&next);
        body["to_device"] = json!({"events": devices.to_device});
        body["device_lists"] = json!({"changed": changed, "left": left});
        body["device_one_time_keys_count"] = serde_json::to_value(devices.one_time_key_counts)?;
        body["device_unused_fallback_key_types"] = json!(devices.unused_fallback);
        body["rooms"] = json!({
            "join": pass.join, "invite": pass.invite, "leave": pass.leave, "knock": pass.knock,
        });
        body["account_data"] = json!({"events": global_data});
        body["presence"] = json!({"events": presence});
        Ok((body, pass.has_data))
    }

    /// Of the users who left a room with `user`, those who share no room
    /// with them any more (and whose devices did not change anyway).
    pub(super) async fn no_longer_shared(
        &self,
        user: &UserId,
        mut left: BTreeSet<String>,
        changed: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>> {
        left.retain(|u| u != user.as_str() && !changed.contains(u));
        if left.is_empty() {
            return Ok(left);
        }
        let sharing: BTreeSet<String> = self
            .main
            .users_sharing_rooms(user.as_str())
            .await?
            .into_iter()
            .collect();
        Ok(left.into_iter().filter(|u| !sharing.contains(u)).collect())
    }
}
