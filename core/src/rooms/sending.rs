//! Events clients send: messages and redactions, idempotent per
//! (user, device, transaction id) and answered once durable.

use ruma::{OwnedEventId, RoomId};
use serde_json::{Map, Value, json};

use super::NewEvent;
use super::RoomWriter;
use crate::{Error, Result, accounts::Session, ratelimit::Action};

impl RoomWriter {
    /// A client's message (PUT /send, the WebSocket): rate limited unless
    /// the application service sending it is exempt; a retried transaction
    /// answers the first event's id.
    pub async fn send_client_message(
        &self,
        s: &Session,
        room_id: &RoomId,
        kind: &str,
        txn_id: &str,
        content: Map<String, Value>,
        ts: Option<u64>,
    ) -> Result<String> {
        // A retry must not count against the rate limit. Without limits the
        // writer's own duplicate check is enough, so skip the extra read.
        if self.config.rate_limits.enabled
            && let Some(existing) = self.sent_in_transaction(s, room_id, txn_id).await?
        {
            return Ok(existing);
        }
        if s.appservice.as_ref().is_none_or(|a| a.rate_limited) {
            self.rate_limits
                .rate_limit(Action::Message, s.user_id.as_str())?;
        }
        let mut ev = NewEvent::message(s.user_id.clone(), kind, Value::Object(content));
        ev.txn = Some((s.device_id.clone(), txn_id.to_owned()));
        ev.ts = ts;
        let event_id = self.send_event(room_id, ev).await?;
        self.ephemeral.presence_active(s.user_id.as_str());
        Ok(event_id.to_string())
    }

    /// A client's redaction of `target`; a retried transaction answers the
    /// first event's id. Who may redact what is the room writer's rule
    /// (rooms/redactions.rs).
    pub async fn send_client_redaction(
        &self,
        s: &Session,
        room_id: &RoomId,
        target: String,
        txn_id: String,
        reason: Option<String>,
    ) -> Result<String> {
        if let Some(existing) = self.sent_in_transaction(s, room_id, &txn_id).await? {
            return Ok(existing);
        }
        let target_id =
            OwnedEventId::try_from(target).map_err(|_| Error::invalid_param("Invalid event id"))?;
        let mut content = json!({});
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        let mut ev = NewEvent::message(s.user_id.clone(), "m.room.redaction", content);
        ev.redacts = Some(target_id);
        ev.txn = Some((s.device_id.clone(), txn_id));
        Ok(self.send_event(room_id, ev).await?.to_string())
    }

    /// The event this device's transaction already sent in the room, if any.
    async fn sent_in_transaction(
        &self,
        s: &Session,
        room_id: &RoomId,
        txn_id: &str,
    ) -> Result<Option<String>> {
        self.store
            .txn_event(room_id.as_str(), s.user_id.as_str(), &s.device_id, txn_id)
            .await
    }
}
