//! The public room directory: the rooms this server publishes, as clients
//! and other servers list them (`/publicRooms`).

use std::sync::Arc;

use ruma::RoomId;
use serde::Serialize;
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
        list: &RoomListScope,
    ) -> Result<PublicRooms> {
        let term = filter
            .and_then(|f| f.get("generic_search_term"))
            .and_then(Value::as_str)
            .map(str::to_lowercase);
        let mut entries = vec![];
        for room_id in self.listed_rooms(list).await? {
            let entry = self.directory_entry(&room_id).await?;
            if let Some(t) = &term {
                let matches = [&entry.name, &entry.topic, &entry.canonical_alias]
                    .iter()
                    .any(|v| {
                        v.as_ref()
                            .and_then(Value::as_str)
                            .is_some_and(|v| v.to_lowercase().contains(t.as_str()))
                    });
                if !matches {
                    continue;
                }
            }
            entries.push(entry);
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.num_joined_members));
        let total = entries.len();
        let offset: usize = match since {
            Some(s) => s
                .strip_prefix('o')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Error::invalid_param("Invalid since token"))?,
            None => 0,
        };
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        Ok(PublicRooms {
            chunk: entries.into_iter().skip(offset).take(limit).collect(),
            next_batch: (offset + limit < total).then(|| format!("o{}", offset + limit)),
            prev_batch: (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit))),
            total_room_count_estimate: total,
        })
    }

    /// The rooms of the list asked for, each once.
    async fn listed_rooms(&self, list: &RoomListScope) -> Result<Vec<String>> {
        Ok(match list {
            RoomListScope::Main => self.store.public_rooms().await?,
            RoomListScope::Network {
                appservice,
                network,
            } => {
                self.store
                    .appservice_public_rooms(Some((appservice, network)))
                    .await?
            }
            RoomListScope::AllNetworks => {
                let mut rooms = self.store.public_rooms().await?;
                for r in self.store.appservice_public_rooms(None).await? {
                    if !rooms.contains(&r) {
                        rooms.push(r);
                    }
                }
                rooms
            }
        })
    }

    /// A published room as the directory shows it.
    async fn directory_entry(&self, room_id: &str) -> Result<PublicRoom> {
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
        Ok(PublicRoom {
            avatar_url: get("m.room.avatar", "url"),
            canonical_alias: get("m.room.canonical_alias", "alias"),
            guest_can_join: get("m.room.guest_access", "guest_access") == Some(json!("can_join")),
            join_rule: get("m.room.join_rules", "join_rule").unwrap_or(json!("invite")),
            name: get("m.room.name", "name"),
            num_joined_members: joined,
            room_id: room.to_string(),
            room_type: get("m.room.create", "type"),
            topic: get("m.room.topic", "topic"),
            world_readable: get("m.room.history_visibility", "history_visibility")
                == Some(json!("world_readable")),
        })
    }
}

/// A page of the public room directory, for clients and other servers.
/// Fields in the order `json!` wrote them, so the bytes sent stay.
#[derive(Debug, Serialize)]
pub struct PublicRooms {
    pub chunk: Vec<PublicRoom>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_batch: Option<String>,
    pub total_room_count_estimate: usize,
}

/// One published room. Hearth's shape rather than ruma's `PublicRoomsChunk`:
/// the state fields go out as the room's state has them, where ruma's type
/// would drop or refuse a value of the wrong type (a non-string name, an
/// unknown join rule).
#[derive(Debug, Serialize)]
pub struct PublicRoom {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_alias: Option<Value>,
    pub guest_can_join: bool,
    pub join_rule: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Value>,
    pub num_joined_members: usize,
    pub room_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<Value>,
    pub world_readable: bool,
}

/// Which room list a `publicRooms` request reads: this server's own, one
/// application service's list for a network, or all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RoomListScope {
    #[default]
    Main,
    Network {
        appservice: String,
        network: String,
    },
    AllNetworks,
}

impl RoomListScope {
    /// From the request's `include_all_networks` and
    /// `third_party_instance_id` (`<appservice id>|<network id>`, the shape
    /// Synapse gives instance ids; the spec forbids asking for both).
    pub fn from_request(instance: Option<&str>, all_networks: bool) -> Result<Self> {
        match (instance, all_networks) {
            (Some(_), true) => Err(Error::invalid_param(
                "include_all_networks and third_party_instance_id are exclusive",
            )),
            (None, true) => Ok(Self::AllNetworks),
            (None, false) => Ok(Self::Main),
            (Some(id), false) => {
                let (appservice, network) = id.split_once('|').ok_or_else(|| {
                    Error::invalid_param(format!("Unknown third_party_instance_id {id}"))
                })?;
                Ok(Self::Network {
                    appservice: appservice.to_owned(),
                    network: network.to_owned(),
                })
            }
        }
    }
}
