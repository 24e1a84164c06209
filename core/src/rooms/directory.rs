//! The public room directory: the rooms this server publishes, as clients
//! and other servers list them (`/publicRooms`).

use std::sync::Arc;

use ruma::RoomId;
use serde_json::{Value, json};

use super::Rooms;
use crate::{Error, Result, store::MainStore};

/// Most entries one page holds, and how many without a `limit`.
const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 100;

/// The published rooms as listed (`/publicRooms`).
pub struct RoomList {
    store: Arc<dyn MainStore>,
    /// Each entry is read from the room's current state.
    rooms: Arc<Rooms>,
}

impl RoomList {
    pub(crate) fn new(store: Arc<dyn MainStore>, rooms: Arc<Rooms>) -> Self {
        Self { store, rooms }
    }

    /// One page of this server's published rooms, most joined members
    /// first: `limit` entries from the `since` token (`o<offset>`), only
    /// those whose name, topic or alias contain the filter's
    /// `generic_search_term` (case-insensitive).
    pub async fn public_rooms(
        &self,
        limit: Option<usize>,
        since: Option<&str>,
        filter: Option<&Value>,
    ) -> Result<Value> {
        let term = filter
            .and_then(|f| f.get("generic_search_term"))
            .and_then(Value::as_str)
            .map(str::to_lowercase);
        let mut entries = vec![];
        for room_id in self.store.public_rooms().await? {
            let entry = self.directory_entry(&room_id).await?;
            if let Some(t) = &term {
                let matches = ["name", "topic", "canonical_alias"].iter().any(|k| {
                    entry[*k]
                        .as_str()
                        .is_some_and(|v| v.to_lowercase().contains(t.as_str()))
                });
                if !matches {
                    continue;
                }
            }
            entries.push(entry);
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e["num_joined_members"].as_u64().unwrap_or(0)));
        let total = entries.len();
        let offset: usize = match since {
            Some(s) => s
                .strip_prefix('o')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Error::invalid_param("Invalid since token"))?,
            None => 0,
        };
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let chunk: Vec<Value> = entries.into_iter().skip(offset).take(limit).collect();
        let mut body = json!({"chunk": chunk, "total_room_count_estimate": total});
        if offset + limit < total {
            body["next_batch"] = json!(format!("o{}", offset + limit));
        }
        if offset > 0 {
            body["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
        }
        Ok(body)
    }

    /// A published room as the directory shows it.
    async fn directory_entry(&self, room_id: &str) -> Result<Value> {
        let room = RoomId::parse(room_id)
            .map_err(|_| Error::invalid_param(format!("Invalid room id {room_id:?}")))?;
        let state = self.rooms.room_state(&room).await?;
        let get = |kind: &str, field: &str| {
            state
                .iter()
                .find(|p| p.kind.to_string() == kind && p.state_key.as_deref() == Some(""))
                .and_then(|p| p.content_value().get(field).cloned())
        };
        let joined = self
            .store
            .room_members(room.as_str(), Some("join"))
            .await?
            .len();
        let mut entry = json!({
            "room_id": room,
            "num_joined_members": joined,
            "world_readable": get("m.room.history_visibility", "history_visibility") == Some(json!("world_readable")),
            "guest_can_join": get("m.room.guest_access", "guest_access") == Some(json!("can_join")),
            "join_rule": get("m.room.join_rules", "join_rule").unwrap_or(json!("invite")),
        });
        for (kind, field, key) in [
            ("m.room.name", "name", "name"),
            ("m.room.topic", "topic", "topic"),
            ("m.room.canonical_alias", "alias", "canonical_alias"),
            ("m.room.avatar", "url", "avatar_url"),
            ("m.room.create", "type", "room_type"),
        ] {
            if let Some(v) = get(kind, field) {
                entry[key] = v;
            }
        }
        Ok(entry)
    }
}
