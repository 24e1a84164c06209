//! The persistent data unit: an event as signed and hashed by its origin server,
//! plus the conversions to the shapes clients see.

use std::collections::BTreeMap;

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::{TimelineEventType, room::member::MembershipState},
};
use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};

/// A parsed PDU. `json` is the event exactly as signed (without `event_id`, which
/// for room versions 3+ is derived from the reference hash), plus `unsigned`.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: Box<RawValue>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub json: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct PduFields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    state_key: Option<String>,
    content: Box<RawValue>,
    #[serde(default)]
    prev_events: Vec<OwnedEventId>,
    #[serde(default)]
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: u64,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
}

impl Pdu {
    /// The event as other servers get it: as signed, without `unsigned`.
    pub fn as_sent(&self) -> serde_json::Map<String, Value> {
        let mut map = self.json.clone();
        map.remove("unsigned");
        map
    }

    pub fn from_json(
        event_id: OwnedEventId,
        json: serde_json::Map<String, Value>,
    ) -> Result<Self, serde_json::Error> {
        let f: PduFields = serde_json::from_value(Value::Object(json.clone()))?;
        // Room version 12 create events carry no room_id: the room id is the
        // create event's id with `!` for `$`.
        let room_id = match f.room_id {
            Some(r) => r,
            None if f.kind == TimelineEventType::RoomCreate => {
                RoomId::parse(format!("!{}", event_id.as_str().trim_start_matches('$')))
                    .map_err(serde::de::Error::custom)?
            }
            None => return Err(serde::de::Error::missing_field("room_id")),
        };
        let is_redaction = f.kind == ruma::events::TimelineEventType::RoomRedaction;
        Ok(Pdu {
            event_id,
            room_id,
            sender: f.sender,
            kind: f.kind,
            state_key: f.state_key,
            content: f.content,
            prev_events: f.prev_events,
            auth_events: f.auth_events,
            // v11 moved `redacts` into content; accept both. Only a
            // redaction redacts: another type's `redacts` key is just data.
            redacts: is_redaction
                .then(|| {
                    f.redacts.or_else(|| {
                        json.get("content")
                            .and_then(|c| c.get("redacts"))
                            .and_then(|r| r.as_str())
                            .and_then(|r| OwnedEventId::try_from(r).ok())
                    })
                })
                .flatten(),
            depth: f.depth,
            origin_server_ts: f.origin_server_ts,
            json,
        })
    }

    pub fn content_value(&self) -> Value {
        self.json
            .get("content")
            .cloned()
            .unwrap_or_else(|| json!({}))
    }

    /// `content.membership`, for an m.room.member event.
    pub fn membership(&self) -> Option<&str> {
        self.json
            .get("content")
            .and_then(|c| c.get("membership"))
            .and_then(Value::as_str)
    }

    /// `membership()` as ruma's type, so rules match on it rather than on
    /// strings.
    pub fn membership_state(&self) -> Option<MembershipState> {
        self.membership().map(MembershipState::from)
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The client-server API shape ("ClientEvent"). `txn_device` is the device
    /// that sent it with a transaction id: only that device sees `transaction_id`.
    pub fn to_client(
        &self,
        viewer_device: Option<(&UserId, &str)>,
        txn: Option<(&str, &str)>,
    ) -> Value {
        let mut out = serde_json::Map::new();
        for key in [
            "type",
            "content",
            "sender",
            "origin_server_ts",
            "state_key",
            "redacts",
        ] {
            if let Some(v) = self.json.get(key) {
                out.insert(key.to_owned(), v.clone());
            }
        }
        out.insert("room_id".into(), Value::String(self.room_id.to_string()));
        if let Some(r) = &self.redacts {
            out.insert("redacts".into(), Value::String(r.to_string()));
        }
        out.insert("event_id".into(), Value::String(self.event_id.to_string()));
        let mut unsigned = match self.json.get("unsigned") {
            Some(Value::Object(u)) => u.clone(),
            _ => serde_json::Map::new(),
        };
        let now = MilliSecondsSinceUnixEpoch::now().get();
        let age = u64::from(now).saturating_sub(u64::from(self.origin_server_ts.get()));
        unsigned.insert("age".into(), json!(age));
        // Synapse names the redaction by id beside the spec's
        // `redacted_because`, and clients (and SyTest) read it.
        if let Some(id) = unsigned
            .get("redacted_because")
            .and_then(|b| b.get("event_id"))
            .cloned()
        {
            unsigned.entry("redacted_by").or_insert(id);
        }
        if let (Some((viewer, device)), Some((txn_device, txn_id))) = (viewer_device, txn)
            && viewer == self.sender
            && device == txn_device
        {
            unsigned.insert("transaction_id".into(), Value::String(txn_id.to_owned()));
        }
        out.insert("unsigned".into(), Value::Object(unsigned));
        Value::Object(out)
    }

    /// The "stripped state" shape used for invite_state.
    pub fn to_stripped(&self) -> Value {
        json!({
            "type": self.json.get("type"),
            "state_key": self.state_key,
            "content": self.json.get("content"),
            "sender": self.sender,
        })
    }

    /// A state event as others see it before joining: type, state key,
    /// content and sender, from a PDU or an already stripped event.
    pub fn strip_json(event: &Value) -> Value {
        json!({
            "type": event.get("type"),
            "state_key": event.get("state_key"),
            "content": event.get("content"),
            "sender": event.get("sender"),
        })
    }

    pub fn room(&self) -> &RoomId {
        &self.room_id
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        // A v12 create event has no room_id on the wire.
        self.json.contains_key("room_id").then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        false
    }
}

/// An event as the store returns it: the PDU and its place in the stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub pdu: Pdu,
    pub stream_ordering: i64,
    /// (device_id, txn_id) when a local client sent it with a transaction id.
    pub txn: Option<(String, String)>,
}

impl StoredEvent {
    pub fn to_client(&self, viewer: Option<(&UserId, &str)>) -> Value {
        self.pdu.to_client(
            viewer,
            self.txn.as_ref().map(|(d, t)| (d.as_str(), t.as_str())),
        )
    }
}

/// A state map keyed by (event type, state key).
pub type StateMap<T> = BTreeMap<(String, String), T>;
