//! Global and per-room account data, and room tags (kept as the room's
//! `m.tag` account data), as clients read and write them.

use std::sync::Arc;

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use crate::{Error, Result, notifier::Notifier, store::MainStore};

/// Types the server manages itself; clients change them through their own
/// endpoints only (`/read_markers`, `/pushrules`).
pub fn server_managed(kind: &str) -> bool {
    kind == "m.fully_read" || kind == "m.push_rules"
}

/// The store's key for global account data is the empty room.
fn room_key(room: Option<&RoomId>) -> &str {
    room.map_or("", RoomId::as_str)
}

/// Account data and room tags; a change wakes the user's syncs.
pub struct AccountData {
    store: Arc<dyn MainStore>,
    notifier: Arc<Notifier>,
}

impl AccountData {
    pub(crate) fn new(store: Arc<dyn MainStore>, notifier: Arc<Notifier>) -> Self {
        Self { store, notifier }
    }

    /// One account data entry of `user`, global or for `room`; 404 if unset.
    pub async fn account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
    ) -> Result<Value> {
        self.store
            .get_account_data(user.as_str(), room_key(room), kind)
            .await?
            .ok_or_else(|| Error::not_found("Account data not found"))
    }

    /// Stores a client's account data and wakes the user's syncs. The caller
    /// refuses server-managed types first ([`server_managed`]).
    pub async fn put_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Map<String, Value>,
    ) -> Result<()> {
        self.store
            .put_account_data(user.as_str(), room_key(room), kind, &Value::Object(content))
            .await?;
        self.notifier.notify_users([user.as_str()]);
        Ok(())
    }

    /// The user's tags on a room (tag name → its content).
    pub async fn room_tags(&self, user: &UserId, room: &RoomId) -> Result<Map<String, Value>> {
        let v = self
            .store
            .get_account_data(user.as_str(), room.as_str(), "m.tag")
            .await?;
        Ok(
            v.and_then(|v| v.get("tags").and_then(Value::as_object).cloned())
                .unwrap_or_default(),
        )
    }

    /// Adds or replaces one tag; its `order`, when given, must be a number.
    pub async fn set_room_tag(
        &self,
        user: &UserId,
        room: &RoomId,
        tag: String,
        content: Map<String, Value>,
    ) -> Result<()> {
        if let Some(order) = content.get("order")
            && !order.is_number()
        {
            return Err(Error::bad_json("order must be a number"));
        }
        let mut tags = self.room_tags(user, room).await?;
        tags.insert(tag, Value::Object(content));
        self.store_tags(user, room, tags).await
    }

    /// Removes one tag; removing an absent tag changes nothing.
    pub async fn delete_room_tag(&self, user: &UserId, room: &RoomId, tag: &str) -> Result<()> {
        let mut tags = self.room_tags(user, room).await?;
        if tags.remove(tag).is_some() {
            self.store_tags(user, room, tags).await?;
        }
        Ok(())
    }

    async fn store_tags(
        &self,
        user: &UserId,
        room: &RoomId,
        tags: Map<String, Value>,
    ) -> Result<()> {
        self.store
            .put_account_data(
                user.as_str(),
                room.as_str(),
                "m.tag",
                &json!({"tags": tags}),
            )
            .await?;
        self.notifier.notify_users([user.as_str()]);
        Ok(())
    }
}
