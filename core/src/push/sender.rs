//! Sending pushes: one round at a time per user. A round starts when a
//! user with pushers gets a notification, waits the coalescing window, then
//! gives each pusher the user's newest notification it has not dealt with
//! and that the user has not read, with the user's up-to-date unread count.
//! Notifications that came during a round start another round after it.
//!
//! A gateway that fails (no connection, 5xx, 429) gets the same request
//! again, with backoff, until it takes it; each pusher's `last_notification`
//! moves only when a request was taken (or refused for good), so a restart
//! resumes where delivery stood. Pushkeys the gateway rejects lose their
//! pusher.

use std::sync::Arc;

use ruma::{RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Map, Value, json};

use super::Push;
use crate::{
    Error, Result,
    backoff::Backoff,
    pdu::Pdu,
    rooms::membership_state,
    store::{NotificationRecord, PusherRecord},
    unread::Counter,
};

/// Notifications looked at per pusher and round, newest first.
const CANDIDATES: i64 = 100;

/// Posts notifications to push gateways (the client-api crate implements it
/// over HTTP).
#[async_trait::async_trait]
pub trait PushGateway: Send + Sync {
    /// POSTs `body` to the gateway's `/_matrix/push/v1/notify` at `url`;
    /// returns the pushkeys the gateway rejected.
    async fn notify(
        &self,
        url: &str,
        body: &Value,
    ) -> std::result::Result<Vec<String>, GatewayError>;
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No connection, a timeout, 5xx or 429: worth trying again later.
    #[error("push gateway unavailable: {0}")]
    Unavailable(String),
    /// The gateway refused this request: sending it again would not help.
    #[error("push gateway refused the notification: {0}")]
    Refused(String),
}

/// A request for one pusher: the body, and the notification id delivery
/// reaches once the gateway takes it.
struct Prepared {
    body: Value,
    upto: i64,
}

impl Push {
    /// Lets pushes out through `gateway`, and resumes the pushes that were
    /// due when the server last stopped.
    pub fn start_push(self: &Arc<Self>, gateway: Arc<dyn PushGateway>) {
        if self.gateway.set(gateway).is_err() {
            return;
        }
        let h = self.clone();
        self.tasks.spawn(async move {
            match h.store.users_with_pending_pushes().await {
                Ok(users) => {
                    for user in users {
                        h.schedule_push(&user).await;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot find the pushes left from before the restart")
                }
            }
        });
    }

    /// The user got a notification: start a round unless one is under way
    /// (which then runs once more).
    pub(crate) async fn schedule_push(self: &Arc<Self>, user: &str) {
        let has = match self.has_pushers(user).await {
            Ok(has) => has,
            Err(e) => {
                tracing::warn!(%user, error = %e, "cannot read pushers; the push waits for the next notification");
                return;
            }
        };
        if !has || self.gateway.get().is_none() {
            return;
        }
        let mut scheduled = self.scheduled.lock();
        match scheduled.get_mut(user) {
            Some(again) => *again = true,
            None => {
                scheduled.insert(user.to_owned(), false);
                self.tasks.spawn(self.clone().push_rounds(user.to_owned()));
            }
        }
    }

    /// Whether the user has pushers (cached: most users have none).
    pub(crate) async fn has_pushers(&self, user: &str) -> Result<bool> {
        if let Some(has) = self.has_pushers.get(user) {
            return Ok(has);
        }
        let has = !self.store.pushers(user).await?.is_empty();
        self.has_pushers.put(user.to_owned(), has);
        Ok(has)
    }

    async fn push_rounds(self: Arc<Self>, user: String) {
        loop {
            // Stopping here leaves the push due in the store; the next start
            // resumes it.
            if !self.tasks.sleep(self.config.coalesce).await {
                return;
            }
            self.scheduled.lock().insert(user.clone(), false);
            self.push_round(&user).await;
            let mut s = self.scheduled.lock();
            if s.get(&user) != Some(&true) {
                s.remove(&user);
                return;
            }
        }
    }

    async fn push_round(&self, user: &str) {
        let pushers = match self.store.pushers(user).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%user, error = %e, "cannot read pushers; pushes resume at the next notification or restart");
                return;
            }
        };
        futures::future::join_all(pushers.iter().map(|p| self.deliver(p))).await;
    }

    /// Brings one pusher up to date, retrying while its gateway fails.
    async fn deliver(&self, pusher: &PusherRecord) {
        let Some(gateway) = self.gateway.get() else {
            return;
        };
        let Some(url) = pusher.data.get("url").and_then(Value::as_str) else {
            return;
        };
        let cfg = self.config;
        let mut delays = Backoff::doubling(cfg.backoff_start, cfg.backoff_max).delays();
        let mut failures: u32 = 0;
        let mut pending: Option<Prepared> = None;
        loop {
            let prepared = match pending.take() {
                Some(p) => p,
                None => match self.prepare(pusher).await {
                    Ok(Some(p)) => p,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(user = %pusher.user_id, error = %e, "cannot prepare a push; it waits for the next round");
                        return;
                    }
                },
            };
            match gateway.notify(url, &prepared.body).await {
                Ok(rejected) => {
                    if failures > 0 {
                        tracing::info!(%url, failures, "push gateway reachable again");
                    }
                    if rejected.contains(&pusher.pushkey) {
                        tracing::info!(user = %pusher.user_id, app_id = %pusher.app_id, "the gateway rejected a pushkey; removing its pusher");
                        if let Err(e) = self
                            .store
                            .delete_pusher(&pusher.user_id, &pusher.app_id, &pusher.pushkey)
                            .await
                        {
                            tracing::warn!(error = %e, "cannot remove a rejected pusher");
                        }
                        self.forget_pushers(&pusher.user_id);
                        return;
                    }
                    self.delivered(pusher, prepared.upto).await;
                    return;
                }
                Err(crate::push::GatewayError::Refused(e)) => {
                    tracing::warn!(user = %pusher.user_id, %url, error = %e, "push gateway refused a notification; skipping it");
                    self.delivered(pusher, prepared.upto).await;
                    return;
                }
                Err(crate::push::GatewayError::Unavailable(e)) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(user = %pusher.user_id, %url, error = %e, "push gateway unavailable; retrying with backoff");
                    }
                    if !self.tasks.sleep(delays.next_wait()).await {
                        return;
                    }
                    // A pusher removed meanwhile needs no more tries.
                    match self.store.pushers(&pusher.user_id).await {
                        Ok(ps) if !ps.iter().any(|p| same_pusher(p, pusher)) => return,
                        _ => {}
                    }
                    pending = Some(prepared);
                }
            }
        }
    }

    async fn delivered(&self, pusher: &PusherRecord, upto: i64) {
        if let Err(e) = self
            .store
            .pusher_delivered(&pusher.user_id, &pusher.app_id, &pusher.pushkey, upto)
            .await
        {
            tracing::warn!(user = %pusher.user_id, error = %e, "cannot record a delivered push; it may be sent again");
        }
    }

    /// The request for the newest notification the pusher has not dealt
    /// with and the user has not read; `None` when there is none (read ones
    /// count as dealt with).
    async fn prepare(&self, pusher: &PusherRecord) -> Result<Option<Prepared>> {
        let user = pusher.user_id.as_str();
        let candidates = self
            .store
            .notifications_after(user, pusher.last_notification, CANDIDATES)
            .await?;
        let Some(upto) = candidates.first().map(|n| n.id) else {
            return Ok(None);
        };
        let mut read_positions: std::collections::HashMap<&str, i64> = Default::default();
        let mut chosen = None;
        for n in &candidates {
            let read = match read_positions.get(n.room_id.as_str()) {
                Some(r) => *r,
                None => {
                    let r = self
                        .room_store
                        .read_position(&n.room_id, user)
                        .await?
                        .unwrap_or(0);
                    read_positions.insert(&n.room_id, r);
                    r
                }
            };
            if n.stream_ordering > read {
                chosen = Some(n);
                break;
            }
        }
        let body = match chosen {
            Some(n) => self.push_body(pusher, n).await?,
            None => None,
        };
        match body {
            Some(body) => Ok(Some(Prepared { body, upto })),
            None => {
                self.delivered(pusher, upto).await;
                Ok(None)
            }
        }
    }

    /// The push gateway API's `notification` for one pusher.
    async fn push_body(
        &self,
        pusher: &PusherRecord,
        n: &NotificationRecord,
    ) -> Result<Option<Value>> {
        let Some(event) = self.room_store.get_event(&n.event_id).await? else {
            return Ok(None);
        };
        let pdu = &event.pdu;
        let user = pusher.user_id.as_str();
        let unread = self.unread_badge(user).await?;
        let mut data = match &pusher.data {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        data.remove("url");
        let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
        let kind = pdu.kind.to_string();
        let is_invite_for_user = kind == "m.room.member"
            && pdu.membership_state() == Some(MembershipState::Invite)
            && pdu.state_key.as_deref() == Some(user);
        let prio = if matches!(kind.as_str(), "m.room.message" | "m.room.encrypted")
            || is_invite_for_user
        {
            "high"
        } else {
            "low"
        };
        let mut note = json!({
            "event_id": pdu.event_id,
            "room_id": pdu.room_id,
            "prio": prio,
            "counts": {"unread": unread},
            "devices": [{
                "app_id": pusher.app_id,
                "pushkey": pusher.pushkey,
                "pushkey_ts": pusher.pushkey_ts / 1000,
                "data": data,
                "tweaks": tweaks(&n.actions),
            }],
        });
        if !event_id_only && let Some(obj) = note.as_object_mut() {
            self.event_fields(obj, pdu, user).await;
        }
        Ok(Some(json!({ "notification": note })))
    }

    /// The event's fields of a full push (any format but `event_id_only`):
    /// what it is, who sent it, the room's name, and for a member event
    /// whose membership it is. `id` repeats `event_id`: Synapse sends both
    /// and SyTest reads `id`.
    async fn event_fields(&self, obj: &mut Map<String, Value>, pdu: &Pdu, user: &str) {
        let kind = pdu.kind.to_string();
        let room = self.room_push_ctx(&pdu.room_id).await.ok().flatten();
        obj.insert("id".into(), pdu.event_id.as_str().into());
        obj.insert("type".into(), kind.clone().into());
        obj.insert("sender".into(), pdu.sender.as_str().into());
        if let Some(name) = room.as_ref().and_then(|r| r.display_name(&pdu.sender)) {
            obj.insert("sender_display_name".into(), name.into());
        }
        // Clients show the name, else the canonical alias (as Synapse
        // names rooms in pushes).
        let alias = room.as_ref().and_then(|r| r.room_alias.clone());
        if let Some(name) = room
            .as_ref()
            .and_then(|r| r.room_name.clone())
            .or_else(|| alias.clone())
        {
            obj.insert("room_name".into(), name.into());
        }
        if let Some(alias) = alias {
            obj.insert("room_alias".into(), alias.into());
        }
        if kind == "m.room.member" {
            if let Some(membership) = pdu.membership_state() {
                obj.insert("membership".into(), membership.as_str().into());
            }
            obj.insert(
                "user_is_target".into(),
                (pdu.state_key.as_deref() == Some(user)).into(),
            );
        }
        obj.insert("content".into(), pdu.content_value());
    }

    /// The badge: the unread notifications over the user's joined rooms,
    /// counted as sync counts them (the same tallies), so a client's badge
    /// and its rooms' counts agree, whenever the user's pusher was set.
    pub async fn unread_badge(&self, user: &str) -> Result<u64> {
        let user_id = UserId::parse(user).map_err(Error::internal)?;
        let counter = Counter {
            store: &*self.room_store,
            cache: &self.unread,
            push: self,
        };
        let mut total = 0;
        for m in self.store.memberships_of_user(user).await? {
            if membership_state(&m) != MembershipState::Join {
                continue;
            }
            let Ok(room) = RoomId::parse(&m.room_id) else {
                continue;
            };
            let Some(newest) = self.room_store.latest_event(&m.room_id).await? else {
                continue;
            };
            let (notifications, _) = counter
                .unread_counts(&room, &user_id, &m, newest.stream_ordering, None, None)
                .await?;
            total += notifications;
        }
        Ok(total)
    }
}

fn same_pusher(a: &PusherRecord, b: &PusherRecord) -> bool {
    a.app_id == b.app_id && a.pushkey == b.pushkey
}

/// The `set_tweak` actions as the gateway's `tweaks` object (`highlight`
/// without a value means true).
fn tweaks(actions: &Value) -> Value {
    let mut out = Map::new();
    for a in actions.as_array().into_iter().flatten() {
        if let Some(name) = a.get("set_tweak").and_then(Value::as_str) {
            let value = a.get("value").cloned().unwrap_or(Value::Bool(true));
            out.insert(name.to_owned(), value);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tweaks_from_actions() {
        let actions = json!(["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]);
        assert_eq!(
            tweaks(&actions),
            json!({"sound": "default", "highlight": true})
        );
        assert_eq!(tweaks(&json!(["notify"])), json!({}));
    }
}
