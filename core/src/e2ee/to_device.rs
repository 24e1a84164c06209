//! To-device messages and device-list changes: how a device learns of keys
//! being shared with it and of other users' devices coming and going. Both
//! ride the misc stream, so one sync token position covers them.

use std::collections::{BTreeMap, BTreeSet};

use ruma::UserId;
use serde_json::{Map, Value, json};

use super::E2ee;
use crate::{Error, Result};

/// To-device messages handed to a device per sync; the rest wait for the
/// next one.
pub const TO_DEVICE_PER_SYNC: i64 = 100;

/// The end-to-end parts of one sync answer.
#[derive(Debug, Default)]
pub struct DeviceSync {
    pub to_device: Vec<Value>,
    /// When the inbox held more than one sync carries: the misc position the
    /// answer's token must stop at, so the rest comes next time.
    pub misc_upto: Option<i64>,
    pub changed: BTreeSet<String>,
    pub left: BTreeSet<String>,
    /// None for a session without a device (sent as `null`).
    pub one_time_key_counts: Option<super::keys::KeyCounts>,
    pub unused_fallback: Vec<String>,
}

impl E2ee {
    /// `PUT /sendToDevice/{type}/{txnId}`: `messages` is user → device (or
    /// `*`) → content. Local devices get the message in their inbox; remote
    /// users' servers get an `m.direct_to_device` EDU. A repeated
    /// transaction id changes nothing.
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &str,
        kind: &str,
        txn_id: &str,
        messages: &Value,
    ) -> Result<()> {
        let messages = messages
            .as_object()
            .ok_or_else(|| Error::bad_json("messages must be an object"))?;
        let mut local = vec![];
        let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        let mut woken = vec![];
        for (user, devices) in messages {
            let user_id = UserId::parse(user.as_str())
                .map_err(|_| Error::invalid_param(format!("{user:?} is not a user id")))?;
            let devices = devices
                .as_object()
                .ok_or_else(|| Error::bad_json("messages.<user> must be an object"))?;
            if user_id.server_name() != self.server_name.as_str() {
                remote
                    .entry(user_id.server_name().to_string())
                    .or_default()
                    .insert(user.clone(), Value::Object(devices.clone()));
                continue;
            }
            let targets = self.target_devices(user, devices).await?;
            for (device, content) in targets {
                let message = json!({"sender": sender, "type": kind, "content": content});
                local.push((user.clone(), device, message));
            }
            woken.push(user.clone());
        }
        let txn = (sender.as_str(), sender_device, txn_id);
        if self
            .store
            .queue_to_device(Some(txn), &local)
            .await?
            .is_none()
        {
            return Ok(());
        }
        self.notifier.notify_users(woken.iter().map(String::as_str));
        if let Some(link) = self.links.remote.get() {
            for (server, messages) in remote {
                let edu = json!({
                    "edu_type": "m.direct_to_device",
                    "content": {
                        "sender": sender,
                        "type": kind,
                        "message_id": format!("{sender_device}.{txn_id}"),
                        "messages": messages,
                    }
                });
                link.send_edu(&[server], edu);
            }
        }
        Ok(())
    }

    /// Takes an `m.direct_to_device` EDU from `origin`: its sender must be
    /// one of the origin's users; the message id makes a resent EDU a no-op.
    pub async fn receive_to_device(&self, origin: &str, content: &Value) -> Result<()> {
        let sender = content["sender"].as_str().unwrap_or_default();
        let from_origin = UserId::parse(sender).is_ok_and(|u| u.server_name() == origin);
        let (Some(kind), Some(message_id), Some(messages)) = (
            content["type"].as_str(),
            content["message_id"].as_str(),
            content["messages"].as_object(),
        ) else {
            return Err(Error::bad_json(
                "m.direct_to_device needs type, message_id and messages",
            ));
        };
        if !from_origin {
            return Err(Error::forbidden(
                "The sender is not a user of the sending server",
            ));
        }
        let mut local = vec![];
        let mut woken = vec![];
        for (user, devices) in messages {
            let ours = UserId::parse(user.as_str())
                .is_ok_and(|u| u.server_name() == self.server_name.as_str());
            let Some(devices) = devices.as_object().filter(|_| ours) else {
                continue;
            };
            for (device, content) in self.target_devices(user, devices).await? {
                let message = json!({"sender": sender, "type": kind, "content": content});
                local.push((user.clone(), device, message));
            }
            woken.push(user.clone());
        }
        let txn = (sender, "", message_id);
        if self
            .store
            .queue_to_device(Some(txn), &local)
            .await?
            .is_some()
        {
            self.notifier.notify_users(woken.iter().map(String::as_str));
        }
        Ok(())
    }

    /// Expands `*` to all of a user's devices; unknown devices get nothing.
    async fn target_devices(
        &self,
        user: &str,
        devices: &Map<String, Value>,
    ) -> Result<Vec<(String, Value)>> {
        let known: BTreeSet<String> = self
            .store
            .list_devices(user)
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        let mut out = vec![];
        for (device, content) in devices {
            if device == "*" {
                out.extend(known.iter().map(|d| (d.clone(), content.clone())));
            } else if known.contains(device) {
                out.push((device.clone(), content.clone()));
            }
        }
        Ok(out)
    }

    /// A local user's devices or keys changed (a `device` added, renamed or
    /// re-keyed, or deleted; `cross_signing` for their cross-signing keys):
    /// wake everyone sharing a room with them and tell the other servers in
    /// those rooms.
    pub async fn device_list_changed(
        &self,
        user: &UserId,
        device: Option<&str>,
        cross_signing: bool,
    ) -> Result<()> {
        let sharing = self.store.users_sharing_rooms(user.as_str()).await?;
        self.notifier
            .notify_users(sharing.iter().map(String::as_str).chain([user.as_str()]));
        let Some(link) = self.links.remote.get() else {
            return Ok(());
        };
        let mut edus = vec![];
        if let Some(device) = device {
            edus.push(self.device_list_edu(user, device).await?);
        }
        if cross_signing {
            let mut content = json!({"user_id": user});
            for (kind, key) in self.store.cross_signing_keys(user.as_str()).await? {
                match kind.as_str() {
                    "master" => content["master_key"] = key,
                    "self_signing" => content["self_signing_key"] = key,
                    _ => {}
                }
            }
            edus.push(json!({"edu_type": "m.signing_key_update", "content": content}));
        }
        if !edus.is_empty() {
            link.share_device_updates(user.as_str(), edus);
        }
        Ok(())
    }

    /// A device's display name changed: those who track the user see it in
    /// their next key query.
    pub async fn device_renamed(&self, user: &UserId, device: &str) -> Result<()> {
        self.store.device_lists_changed(&[user.to_string()]).await?;
        self.device_list_changed(user, Some(device), false).await
    }

    /// A new device (a login or registration): those sharing a room with
    /// the user see them in `device_lists.changed`. Other servers hear of
    /// it when it uploads keys (an update without keys would read as a
    /// deletion).
    pub async fn device_added(&self, user: &UserId) -> Result<()> {
        self.store.device_lists_changed(&[user.to_string()]).await?;
        self.device_list_changed(user, None, false).await
    }

    /// `m.device_list_update` for one device: its keys, or `deleted`.
    async fn device_list_edu(&self, user: &UserId, device: &str) -> Result<Value> {
        let stream_id = self.store.device_list_position(user.as_str()).await?;
        let keys = self
            .store
            .device_keys(user.as_str())
            .await?
            .into_iter()
            .find(|(d, _)| d == device)
            .map(|(_, k)| k);
        let name = self
            .store
            .get_device(user.as_str(), device)
            .await?
            .and_then(|d| d.display_name);
        let mut content = json!({
            "user_id": user,
            "device_id": device,
            "stream_id": stream_id,
            // We do not keep each device's history of positions; an empty
            // prev_id asks the receiver to resync when in doubt.
            "prev_id": [],
            "deleted": keys.is_none(),
        });
        if let Some(k) = keys {
            content["keys"] = k;
        }
        if let Some(n) = name {
            content["device_display_name"] = json!(n);
        }
        Ok(json!({"edu_type": "m.device_list_update", "content": content}))
    }

    /// Takes `m.device_list_update` or `m.signing_key_update` from another
    /// server: their user's keys changed, so local users sharing a room with
    /// them will see the user in `device_lists.changed` and query again (the
    /// keys are always fetched fresh from the user's server).
    pub async fn receive_device_update(&self, origin: &str, content: &Value) -> Result<()> {
        let user = content["user_id"].as_str().unwrap_or_default();
        let user_id =
            UserId::parse(user).map_err(|_| Error::bad_json("user_id is not a user id"))?;
        if user_id.server_name() != origin {
            return Err(Error::forbidden("The user is not of the sending server"));
        }
        self.store.device_lists_changed(&[user.to_owned()]).await?;
        let sharing = self.store.users_sharing_rooms(user).await?;
        self.notifier
            .notify_users(sharing.iter().map(String::as_str));
        Ok(())
    }

    /// Deletes devices (all the user's when `devices` is `None`) with their
    /// tokens, keys and inboxes, and tells those who track the user.
    pub async fn delete_devices(&self, user: &UserId, devices: Option<&[String]>) -> Result<()> {
        let ids: Vec<String> = match devices {
            Some(d) => d.to_vec(),
            None => self
                .store
                .list_devices(user.as_str())
                .await?
                .into_iter()
                .map(|d| d.device_id)
                .collect(),
        };
        self.store.delete_devices(user.as_str(), devices).await?;
        if ids.is_empty() {
            return Ok(());
        }
        self.store.delete_device_keys(user.as_str(), &ids).await?;
        // A logged-out phone stops getting pushes.
        self.store
            .delete_device_pushers(user.as_str(), &ids)
            .await?;
        self.push.forget_pushers(user.as_str());
        for device in &ids {
            self.forget_key_counts(user.as_str(), device);
        }
        let sharing = self.store.users_sharing_rooms(user.as_str()).await?;
        self.notifier
            .notify_users(sharing.iter().map(String::as_str).chain([user.as_str()]));
        if let Some(link) = self.links.remote.get() {
            let mut edus = vec![];
            for device in &ids {
                edus.push(self.device_list_edu(user, device).await?);
            }
            link.share_device_updates(user.as_str(), edus);
        }
        Ok(())
    }

    /// The device's part of a sync from misc position `since` (none for an
    /// initial sync) to `upto`: its to-device messages, whose keys changed,
    /// its key counts. Messages up to `since` were received by the device
    /// (it synced past them) and are deleted.
    pub async fn device_sync(
        &self,
        user: &UserId,
        device: &str,
        since: Option<i64>,
        upto: i64,
        misc_moved: bool,
    ) -> Result<DeviceSync> {
        let mut out = DeviceSync::default();
        if device.is_empty() {
            return Ok(out);
        }
        let from = since.unwrap_or(0);
        if let Some(since) = since {
            self.ack_to_device(user, device, since).await?;
        }
        if misc_moved || since.is_none() {
            let messages = self
                .store
                .to_device_messages(user.as_str(), device, from, upto, TO_DEVICE_PER_SYNC)
                .await?;
            if let Some((last, _)) = messages.last() {
                self.note_to_device_pending(user.as_str(), device, *last);
                if messages.len() as i64 == TO_DEVICE_PER_SYNC {
                    out.misc_upto = Some(*last);
                }
            }
            out.to_device = messages.into_iter().map(|(_, m)| m).collect();
        }
        if let Some(since) = since.filter(|_| misc_moved) {
            let upto = out.misc_upto.unwrap_or(upto);
            out.changed = self
                .key_changes(user, since, upto)
                .await?
                .into_iter()
                .collect();
        }
        let (counts, fallback) = self.key_counts(user.as_str(), device).await?;
        out.one_time_key_counts = Some(super::keys::counts_object(&counts));
        out.unused_fallback = fallback;
        Ok(out)
    }

    /// A device synced from misc position `since`: it has the messages up
    /// to there, which are deleted (no database work unless some may be
    /// left).
    pub async fn ack_to_device(&self, user: &UserId, device: &str, since: i64) -> Result<()> {
        if device.is_empty() || since <= 0 || !self.to_device_pending(user.as_str(), device, since)
        {
            return Ok(());
        }
        self.store
            .delete_to_device(user.as_str(), device, since)
            .await?;
        self.forget_to_device_pending(user.as_str(), device, since);
        Ok(())
    }

    /// Whether the device may have delivered messages at or below `upto`
    /// still stored. Unknown (after a restart) counts as yes.
    fn to_device_pending(&self, user: &str, device: &str, upto: i64) -> bool {
        self.state
            .delivered
            .lock()
            .get(&(user.to_owned(), device.to_owned()))
            .is_none_or(|d| *d <= upto)
    }

    fn note_to_device_pending(&self, user: &str, device: &str, delivered: i64) {
        self.state
            .delivered
            .lock()
            .insert((user.to_owned(), device.to_owned()), delivered);
    }

    fn forget_to_device_pending(&self, user: &str, device: &str, upto: i64) {
        let mut map = self.state.delivered.lock();
        let key = (user.to_owned(), device.to_owned());
        if map.get(&key).is_none_or(|d| *d <= upto) {
            // Known empty below `upto` from now on: no more deletes
            // until something is delivered again.
            map.insert(key, i64::MAX);
        }
    }
}
