//! The public room directory (which rooms are published, the listing with
//! its search and paging) and the user directory search.

use std::collections::BTreeSet;

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::{Error, Hearth, Result, rooms::parse_room_id};

/// A request for a page of the public room directory.
#[derive(Debug, Default)]
pub struct PublicRoomsRequest {
    pub limit: Option<usize>,
    /// An `o<offset>` token from a previous page.
    pub since: Option<String>,
    /// The server whose directory is asked for; only this one is served.
    pub server: Option<String>,
    /// The client's filter; only `generic_search_term` is applied.
    pub filter: Option<Value>,
}

impl Hearth {
    /// Whether a known room is published in the directory.
    pub async fn room_is_public(&self, room: &RoomId) -> Result<bool> {
        self.require_known_room(room).await?;
        self.store.is_room_public(room.as_str()).await
    }

    /// Publishes or unpublishes a room (`public` or `private`, absent meaning
    /// private); a joined room admin may.
    pub async fn set_room_visibility(
        &self,
        room: &RoomId,
        user: &UserId,
        visibility: Option<&str>,
    ) -> Result<()> {
        self.require_known_room(room).await?;
        let public = match visibility {
            Some("public") => true,
            Some("private") | None => false,
            Some(v) => return Err(Error::invalid_param(format!("Invalid visibility {v}"))),
        };
        self.require_joined(room, user).await?;
        if !self.is_room_admin(room, user).await? {
            return Err(Error::forbidden(
                "You may not change this room's visibility",
            ));
        }
        self.store.set_room_public(room.as_str(), public).await
    }

    async fn require_known_room(&self, room: &RoomId) -> Result<()> {
        if self.store.room_version(room.as_str()).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        Ok(())
    }

    /// A page of this server's published rooms, the most joined first,
    /// narrowed by the filter's search term over name, topic and alias.
    pub async fn public_rooms(&self, req: PublicRoomsRequest) -> Result<Value> {
        if let Some(server) = &req.server
            && server != self.config.server_name.as_str()
        {
            return Err(Error::not_found(
                "Remote room directories are not available",
            ));
        }
        let term = req
            .filter
            .as_ref()
            .and_then(|f| f.get("generic_search_term"))
            .and_then(Value::as_str)
            .map(str::to_lowercase);
        let mut entries = vec![];
        for room_id in self.store.public_rooms().await? {
            let entry = self.public_room_entry(&room_id).await?;
            if let Some(t) = &term
                && !entry_matches(&entry, t)
            {
                continue;
            }
            entries.push(entry);
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e["num_joined_members"].as_u64().unwrap_or(0)));
        page(entries, req.since.as_deref(), req.limit)
    }

    /// A room as the directory shows it, from its current state.
    async fn public_room_entry(&self, room_id: &str) -> Result<Value> {
        let room = parse_room_id(room_id)?;
        let state = self.room_state(&room).await?;
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

    /// The user directory: users who share a room with `user` or sit in a
    /// public room, matching `term`, at most `limit` of them.
    pub async fn search_user_directory(
        &self,
        user: &UserId,
        term: &str,
        limit: Option<usize>,
    ) -> Result<Value> {
        let limit = limit.unwrap_or(10).clamp(1, 100);
        let mut visible: BTreeSet<String> = self
            .store
            .users_sharing_rooms(user.as_str())
            .await?
            .into_iter()
            .collect();
        visible.extend(self.store.users_in_public_rooms().await?);
        let candidates = self.store.search_users(term.trim(), 500).await?;
        let mut results = vec![];
        let mut limited = false;
        for u in candidates
            .into_iter()
            .filter(|u| visible.contains(&u.user_id))
        {
            if results.len() == limit {
                limited = true;
                break;
            }
            results.push(json!({"user_id": u.user_id, "display_name": u.displayname, "avatar_url": u.avatar_url}));
        }
        Ok(json!({"results": results, "limited": limited}))
    }
}

fn entry_matches(entry: &Value, term: &str) -> bool {
    ["name", "topic", "canonical_alias"].iter().any(|k| {
        entry[*k]
            .as_str()
            .is_some_and(|v| v.to_lowercase().contains(term))
    })
}

/// One page of the sorted directory, with `o<offset>` tokens either way.
fn page(entries: Vec<Value>, since: Option<&str>, limit: Option<usize>) -> Result<Value> {
    let total = entries.len();
    let offset: usize = match since {
        Some(s) => s
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("Invalid since token"))?,
        None => 0,
    };
    let limit = limit.unwrap_or(100).clamp(1, 500);
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
