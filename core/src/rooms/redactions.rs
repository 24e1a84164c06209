//! Who may redact what. One rule for every local sender (client send,
//! WebSocket, application services, `/redact`), checked by the room's
//! writer, and the spec's rule for redactions other servers send
//! (client-server "Redactions"): such a redaction is kept, but only
//! applied to its target if its sender holds the room's `redact` power or
//! is on the same server as the target's sender.

use ruma::{
    CanonicalJsonObject, OwnedEventId, RoomId, UserId, room_version_rules::RoomVersionRules,
};
use serde_json::Value;
use tracing::debug;

use super::{NewEvent, RoomWriter, StateMap, required_power, user_power};
use crate::{
    Error, Result,
    pdu::{Pdu, StoredEvent},
};

/// The event a local redaction names. `/redact` sets it; a client's
/// `/send/m.room.redaction` carries it in content (room v11 and later keep
/// it there, older versions move it to the top level when building).
pub(crate) fn target_of(new: &NewEvent) -> Result<Option<OwnedEventId>> {
    if new.kind != "m.room.redaction" {
        return Ok(None);
    }
    if let Some(r) = &new.redacts {
        return Ok(Some(r.clone()));
    }
    match new.content.get("redacts") {
        Some(Value::String(id)) => OwnedEventId::try_from(id.as_str())
            .map(Some)
            .map_err(|_| Error::invalid_param("redacts is not an event id")),
        _ => Err(Error::bad_json("A redaction needs the event it redacts")),
    }
}

/// A user's power level in a room's state, honouring room v12's privileged
/// creators.
pub(crate) fn power_in(state: &StateMap, rules: &RoomVersionRules, user: &UserId) -> i64 {
    let create = state.get(&("m.room.create".to_owned(), String::new()));
    if let Some(c) = create
        && rules.authorization.explicitly_privilege_room_creators
    {
        let content = c.content_value();
        let additional = content
            .get("additional_creators")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(user.as_str())));
        if c.sender == user || additional {
            return i64::MAX;
        }
    }
    let pl = state
        .get(&("m.room.power_levels".to_owned(), String::new()))
        .map(|p| p.content_value());
    user_power(
        pl.as_ref(),
        create.map(|c| c.sender.as_str()),
        user.as_str(),
    )
}

/// Whether `user` may redact anyone's events: the room's `redact` level.
pub(crate) fn may_redact_any(state: &StateMap, rules: &RoomVersionRules, user: &UserId) -> bool {
    let pl = state
        .get(&("m.room.power_levels".to_owned(), String::new()))
        .map(|p| p.content_value());
    power_in(state, rules, user) >= required_power(pl.as_ref(), "redact", 50)
}

/// Whether a redaction (from any server) takes effect on `original`: never
/// on another room's event or the create event; otherwise if its sender
/// holds the redact power or shares the original sender's server.
pub(crate) fn applies_to(redaction: &Pdu, original: &Pdu, sender_may_redact_any: bool) -> bool {
    original.room_id == redaction.room_id
        && original.kind.to_string() != "m.room.create"
        && (sender_may_redact_any
            || original.sender.server_name() == redaction.sender.server_name())
}

impl RoomWriter {
    /// The rule for a local user's redaction, checked by the room's writer
    /// before the event is submitted: the sender redacts their own event, or
    /// holds the redact power (then an event not known here is fine too).
    pub(crate) async fn check_local_redaction(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &OwnedEventId,
        sender_may_redact_any: bool,
    ) -> Result<()> {
        let original = self.store.get_event(target.as_str()).await?;
        match original {
            Some(o) if o.pdu.room_id != room_id => Err(Error::invalid_param(
                "Cannot redact an event from another room",
            )),
            Some(o) if o.pdu.kind.to_string() == "m.room.create" => Err(Error::forbidden(
                "Redacting the create event is not permitted",
            )),
            Some(o) if o.pdu.sender == sender => Ok(()),
            _ if sender_may_redact_any => Ok(()),
            Some(_) => {
                debug!(room = %room_id, %sender, %target, "redaction of another's event refused");
                Err(Error::forbidden("You may not redact other users' events"))
            }
            None => Err(Error::not_found("Event not found")),
        }
    }

    /// Redacts the target of a durable redaction if the rule lets it. A
    /// target not here yet is left to `apply_earlier_redactions`, which
    /// finds the redaction by its stored `redacts` when the target arrives.
    pub(super) async fn apply_redaction(
        &self,
        redaction: &Pdu,
        target: &OwnedEventId,
        rules: &RoomVersionRules,
        redactor_power: bool,
    ) -> Result<()> {
        let Some(ev) = self.store.get_event(target.as_str()).await? else {
            debug!(redaction = %redaction.event_id, %target, "redaction kept until its target arrives");
            return Ok(());
        };
        if !applies_to(redaction, &ev.pdu, redactor_power) {
            debug!(redaction = %redaction.event_id, %target, sender = %redaction.sender,
                "redaction not applied: its sender may not redact the event");
            return Ok(());
        }
        let obj: CanonicalJsonObject =
            serde_json::from_value(Value::Object(ev.pdu.json.clone())).map_err(Error::internal)?;
        let because = StoredEvent {
            pdu: redaction.clone(),
            stream_ordering: 0,
            txn: None,
        }
        .to_client(None);
        let because: CanonicalJsonObject =
            serde_json::from_value(because).map_err(Error::internal)?;
        let redacted = ruma::canonical_json::redact(
            obj,
            &rules.redaction,
            Some(ruma::canonical_json::RedactedBecause::from_json(because)),
        )
        .map_err(Error::internal)?;
        let redacted = serde_json::to_value(&redacted)?;
        self.store
            .store_redacted(target.as_str(), &redacted, redaction.event_id.as_str())
            .await?;
        if let Value::Object(map) = redacted {
            self.rooms
                .recent
                .replace(Pdu::from_json(target.clone(), map)?);
        }
        Ok(())
    }

    /// Applies the redactions of `pdu` that reached this server before it
    /// did, each if its sender may redact it (by the room's current state).
    pub(super) async fn apply_earlier_redactions(
        &self,
        pdu: &Pdu,
        rules: &RoomVersionRules,
    ) -> Result<()> {
        let earlier = self
            .store
            .redactions_of(pdu.room_id.as_str(), pdu.event_id.as_str())
            .await?;
        for redaction in earlier {
            let sender = redaction.pdu.sender.clone();
            let power = self
                .rooms
                .with_view(pdu.room_id.as_str(), |c| {
                    may_redact_any(&c.state, rules, &sender)
                })
                .await?;
            self.apply_redaction(&redaction.pdu, &pdu.event_id, rules, power)
                .await?;
        }
        Ok(())
    }
}
