//! What a local event must satisfy before the writer builds it, whatever
//! route sent it (HTTP, WebSocket, application services, createRoom, a
//! send forwarded from another process).

use ruma::{RoomAliasId, RoomId};
use serde_json::Value;

use super::{NewEvent, RoomWriter};
use crate::{
    Error, Result,
    input::{check_event_field, check_text},
};

impl RoomWriter {
    /// Refuses a local event the spec or the storage would refuse later:
    /// NUL characters, an over-long type or state key, a canonical alias
    /// that does not point to the room.
    pub(super) async fn check_local_event(&self, room_id: &RoomId, new: &NewEvent) -> Result<()> {
        check_event_field("Event type", &new.kind)?;
        if let Some(key) = &new.state_key {
            check_event_field("State key", key)?;
        }
        if let Some((device, txn_id)) = &new.txn {
            check_text("Device ID", device)?;
            check_text("Transaction ID", txn_id)?;
        }
        if new.kind == "m.room.canonical_alias" && new.state_key.as_deref() == Some("") {
            self.check_canonical_alias(room_id, &new.content).await?;
        }
        Ok(())
    }

    /// Every alias an `m.room.canonical_alias` names (`alias` and
    /// `alt_aliases`) must be valid (else M_INVALID_PARAM) and, when it is
    /// this server's, point to the room (else M_BAD_ALIAS). Another
    /// server's alias is only checked for syntax.
    async fn check_canonical_alias(&self, room_id: &RoomId, content: &Value) -> Result<()> {
        let mut named = vec![];
        match content.get("alias") {
            None | Some(Value::Null) => {}
            Some(Value::String(a)) => named.push(a.as_str()),
            Some(_) => return Err(Error::invalid_param("alias must be a string")),
        }
        match content.get("alt_aliases") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for a in list {
                    let a = a
                        .as_str()
                        .ok_or_else(|| Error::invalid_param("alt_aliases must be strings"))?;
                    named.push(a);
                }
            }
            Some(_) => return Err(Error::invalid_param("alt_aliases must be a list")),
        }
        for alias in named {
            check_text("Alias", alias)?;
            let parsed = RoomAliasId::parse(alias)
                .map_err(|_| Error::invalid_param(format!("Invalid alias: {alias}")))?;
            if parsed.server_name().as_str() != self.config.server_name.as_str() {
                continue;
            }
            match self.main.resolve_alias(alias).await? {
                Some((target, _)) if target == room_id.as_str() => {}
                Some(_) => {
                    return Err(Error::BadAlias(format!(
                        "Alias {alias} points to another room"
                    )));
                }
                None => return Err(Error::BadAlias(format!("Alias {alias} does not exist"))),
            }
        }
        Ok(())
    }
}
