//! Sync and /messages filters (the subset of the filter language Hearth applies).

use serde_json::Value;

fn str_list(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    })
}

/// Matches a type against a filter pattern with a trailing `*` wildcard.
fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub limit: Option<usize>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub lazy_load_members: bool,
    /// With lazy loading: resend member events this device was sent before.
    pub include_redundant_members: bool,
    pub contains_url: Option<bool>,
}

impl EventFilter {
    pub fn parse(v: Option<&Value>) -> Self {
        let Some(v) = v else { return Self::default() };
        Self {
            limit: v.get("limit").and_then(Value::as_u64).map(|l| l as usize),
            types: str_list(v.get("types")),
            not_types: str_list(v.get("not_types")).unwrap_or_default(),
            senders: str_list(v.get("senders")),
            not_senders: str_list(v.get("not_senders")).unwrap_or_default(),
            rooms: str_list(v.get("rooms")),
            not_rooms: str_list(v.get("not_rooms")).unwrap_or_default(),
            lazy_load_members: v
                .get("lazy_load_members")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            include_redundant_members: v
                .get("include_redundant_members")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            contains_url: v.get("contains_url").and_then(Value::as_bool),
        }
    }

    pub fn allows_room(&self, room: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room)
            && self
                .rooms
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| r == room))
    }

    pub fn allows_type(&self, kind: &str) -> bool {
        !self.not_types.iter().any(|p| type_matches(p, kind))
            && self
                .types
                .as_ref()
                .is_none_or(|ts| ts.iter().any(|p| type_matches(p, kind)))
    }

    pub fn allows(&self, kind: &str, sender: &str, content: Option<&Value>) -> bool {
        if !self.allows_type(kind) {
            return false;
        }
        if self.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        if let Some(ss) = &self.senders
            && !ss.iter().any(|s| s == sender)
        {
            return false;
        }
        if let Some(want) = self.contains_url {
            let has = content.and_then(|c| c.get("url")).is_some();
            if has != want {
                return false;
            }
        }
        true
    }

    /// True when the filter excludes everything (`not_types: ["*"]` or `types: []`).
    pub fn excludes_all(&self) -> bool {
        self.not_types.iter().any(|t| t == "*") || self.types.as_ref().is_some_and(Vec::is_empty)
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncFilter {
    pub timeline: EventFilter,
    pub state: EventFilter,
    pub ephemeral: EventFilter,
    pub room_account_data: EventFilter,
    pub account_data: EventFilter,
    pub presence: EventFilter,
    pub rooms: EventFilter,
    pub include_leave: bool,
}

impl SyncFilter {
    pub fn parse(v: &Value) -> Self {
        let room = v.get("room");
        let r = |k: &str| EventFilter::parse(room.and_then(|r| r.get(k)));
        let rooms = EventFilter {
            rooms: str_list(room.and_then(|r| r.get("rooms"))),
            not_rooms: str_list(room.and_then(|r| r.get("not_rooms"))).unwrap_or_default(),
            ..Default::default()
        };
        Self {
            timeline: r("timeline"),
            state: r("state"),
            ephemeral: r("ephemeral"),
            room_account_data: r("account_data"),
            account_data: EventFilter::parse(v.get("account_data")),
            presence: EventFilter::parse(v.get("presence")),
            rooms,
            include_leave: room
                .and_then(|r| r.get("include_leave"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

/// Checks a filter against the spec's schema (`Filter`, `EventFilter`,
/// `RoomFilter`, `RoomEventFilter`): a field of the wrong type is refused
/// with 400 M_BAD_JSON rather than read as absent, so a client never syncs
/// with a filter other than the one it wrote. Unknown fields are allowed.
pub fn check_filter(filter: &Value) -> crate::Result<()> {
    let bad = |field: &str| crate::Error::bad_json(format!("Invalid filter field {field}"));
    let obj = filter.as_object().ok_or_else(|| bad("filter"))?;
    if let Some(v) = obj.get("event_fields")
        && !is_str_list(v)
    {
        return Err(bad("event_fields"));
    }
    if let Some(v) = obj.get("event_format")
        && !matches!(v.as_str(), Some("client" | "federation"))
    {
        return Err(bad("event_format"));
    }
    for key in ["presence", "account_data"] {
        if let Some(v) = obj.get(key) {
            check_event_filter(v, false).map_err(|f| bad(&format!("{key}.{f}")))?;
        }
    }
    let Some(room) = obj.get("room") else {
        return Ok(());
    };
    let room = room.as_object().ok_or_else(|| bad("room"))?;
    for (key, v) in room {
        let ok = match key.as_str() {
            "rooms" | "not_rooms" => is_id_list(v, is_room_id),
            "include_leave" => v.is_boolean(),
            "timeline" | "state" | "ephemeral" | "account_data" => {
                check_event_filter(v, true).map_err(|f| bad(&format!("room.{key}.{f}")))?;
                true
            }
            _ => true,
        };
        if !ok {
            return Err(bad(&format!("room.{key}")));
        }
    }
    Ok(())
}

/// Checks an `EventFilter` (a `RoomEventFilter` when `room`); the name of
/// the first field of the wrong type.
fn check_event_filter(v: &Value, room: bool) -> Result<(), String> {
    let obj = v.as_object().ok_or_else(String::new)?;
    for (key, v) in obj {
        let ok = match key.as_str() {
            "limit" => v.is_i64() || v.is_u64(),
            "types" | "not_types" => is_str_list(v),
            "senders" | "not_senders" => is_id_list(v, is_user_id),
            "rooms" | "not_rooms" if room => is_id_list(v, is_room_id),
            "lazy_load_members"
            | "include_redundant_members"
            | "contains_url"
            | "unread_thread_notifications"
                if room =>
            {
                v.is_boolean()
            }
            _ => true,
        };
        if !ok {
            return Err(key.clone());
        }
    }
    Ok(())
}

fn is_str_list(v: &Value) -> bool {
    v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
}

/// A list of ids, each of which `valid` accepts: a filter naming
/// `not_a_room_id` as a room would match nothing, silently.
fn is_id_list(v: &Value, valid: fn(&str) -> bool) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(valid)))
}

fn is_room_id(s: &str) -> bool {
    ruma::RoomId::parse(s).is_ok()
}

fn is_user_id(s: &str) -> bool {
    ruma::UserId::parse(s).is_ok()
}

/// Clients' stored filters, and the filter a sync request names.
pub struct Filters {
    store: std::sync::Arc<dyn crate::store::MainStore>,
}

impl Filters {
    pub(crate) fn new(store: std::sync::Arc<dyn crate::store::MainStore>) -> Self {
        Self { store }
    }

    /// Stores a client's filter after checking its shape (`check_filter`);
    /// answers its id.
    pub async fn save_filter(&self, user: &ruma::UserId, filter: &Value) -> crate::Result<String> {
        check_filter(filter)?;
        self.store.save_filter(user.as_str(), filter).await
    }

    /// A filter the user stored, or 404.
    pub async fn stored_filter(&self, user: &ruma::UserId, id: &str) -> crate::Result<Value> {
        self.store
            .get_filter(user.as_str(), id)
            .await?
            .ok_or_else(|| crate::Error::not_found("Unknown filter"))
    }

    /// The sync filter a request names: inline JSON, a stored filter's id,
    /// or none.
    pub async fn sync_filter(
        &self,
        user: &ruma::UserId,
        filter: Option<&str>,
    ) -> crate::Result<SyncFilter> {
        Ok(match filter {
            None => SyncFilter::default(),
            Some(s) if s.trim_start().starts_with('{') => {
                let v: Value = serde_json::from_str(s)
                    .map_err(|_| crate::Error::invalid_param("filter is not valid JSON"))?;
                check_filter(&v)?;
                SyncFilter::parse(&v)
            }
            Some(id) => SyncFilter::parse(&self.stored_filter(user, id).await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn types_support_trailing_wildcards_and_exclusions() {
        let f = EventFilter::parse(Some(
            &json!({"types": ["m.room.*"], "not_types": ["m.room.member"]}),
        ));
        assert!(f.allows("m.room.message", "@a:x", None));
        assert!(!f.allows("m.room.member", "@a:x", None));
        assert!(!f.allows("org.example", "@a:x", None));
    }

    #[test]
    fn senders_and_rooms() {
        let f = EventFilter::parse(Some(
            &json!({"not_senders": ["@spam:x"], "rooms": ["!a:x"]}),
        ));
        assert!(!f.allows("m.room.message", "@spam:x", None));
        assert!(f.allows("m.room.message", "@ok:x", None));
        assert!(f.allows_room("!a:x"));
        assert!(!f.allows_room("!b:x"));
    }

    #[test]
    fn excluding_everything_is_detected() {
        assert!(EventFilter::parse(Some(&json!({"not_types": ["*"]}))).excludes_all());
        assert!(EventFilter::parse(Some(&json!({"types": []}))).excludes_all());
        assert!(!EventFilter::parse(Some(&json!({}))).excludes_all());
    }

    #[test]
    fn sync_filter_reads_nested_sections() {
        let f = SyncFilter::parse(&json!({
            "room": {"timeline": {"limit": 3}, "state": {"lazy_load_members": true}, "include_leave": true,
                     "not_rooms": ["!x:y"]},
            "presence": {"not_types": ["*"]}
        }));
        assert_eq!(f.timeline.limit, Some(3));
        assert!(f.state.lazy_load_members);
        assert!(f.include_leave);
        assert!(!f.rooms.allows_room("!x:y"));
        assert!(f.presence.excludes_all());
    }
}
