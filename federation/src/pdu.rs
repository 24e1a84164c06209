//! Checking a PDU another server sent, as the spec orders it: well-formed,
//! signed by the servers that must sign it (with keys valid when it was
//! sent), its content hash (a mismatch stores the redacted event).

use hearth_core::pdu::Pdu;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomVersionId,
    canonical_json::redact,
    room_version_rules::RoomVersionRules,
    signatures::{
        PublicKeyMap, Verified, reference_hash, required_server_signatures_to_verify_event,
        verify_event,
    },
};
use serde_json::Value;

use crate::{FedError, Federation};

/// The spec's cap on a whole PDU.
const MAX_PDU_BYTES: usize = 65536;

/// The rules of a room version Hearth knows.
pub(crate) fn rules_of(version: &RoomVersionId) -> Result<RoomVersionRules, FedError> {
    version
        .rules()
        .ok_or_else(|| FedError::Remote(format!("unsupported room version {version}")))
}

/// The event id a PDU has in `version` (its reference hash).
pub(crate) fn event_id_of(
    obj: &CanonicalJsonObject,
    version: &RoomVersionId,
) -> Result<OwnedEventId, FedError> {
    let rules = rules_of(version)?;
    let hash = reference_hash(obj, &rules).map_err(|e| FedError::Remote(e.to_string()))?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| FedError::Remote(e.to_string()))
}

pub(crate) fn pdu_object(json: &Value) -> Result<CanonicalJsonObject, FedError> {
    if serde_json::to_vec(json)
        .map(|b| b.len())
        .unwrap_or(usize::MAX)
        > MAX_PDU_BYTES
    {
        return Err(FedError::Remote("PDU larger than 64 KiB".into()));
    }
    // The spec's limits on a PDU's type and state key (and no NUL, which
    // Postgres cannot store), as core applies them to local events.
    for field in ["type", "state_key"] {
        if let Some(value) = json.get(field).and_then(Value::as_str) {
            hearth_core::input::check_event_field(field, value)
                .map_err(|e| FedError::Remote(e.to_string()))?;
        }
    }
    let mut obj = match CanonicalJsonValue::try_from(json.clone()) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => return Err(FedError::Remote("PDU is not canonical JSON".into())),
    };
    // Not covered by signatures: whatever a sender put there is not taken.
    obj.remove("unsigned");
    obj.remove("event_id");
    Ok(obj)
}

impl Federation {
    /// Checks a received PDU of a room of `version`; returns the event to
    /// store (redacted when its content hash does not match).
    pub(crate) async fn check_pdu(
        &self,
        json: &Value,
        version: &RoomVersionId,
    ) -> Result<Pdu, FedError> {
        let rules = rules_of(version)?;
        let obj = pdu_object(json)?;
        let event_id = event_id_of(&obj, version)?;
        let sent_at = match obj.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
            _ => return Err(FedError::Remote("PDU without origin_server_ts".into())),
        };
        let servers = required_server_signatures_to_verify_event(&obj, &rules.signatures)
            .map_err(|e| FedError::Remote(format!("{event_id}: {e}")))?;
        let mut keys = PublicKeyMap::new();
        for server in servers {
            // The key ids it signed with: one we lack has its keys fetched
            // again.
            let key_ids: Vec<&str> = match obj.get("signatures") {
                Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(server.as_str()) {
                    Some(CanonicalJsonValue::Object(by_key)) => {
                        by_key.keys().map(String::as_str).collect()
                    }
                    _ => vec![],
                },
                _ => vec![],
            };
            let set = self.server_keys_with(server.as_str(), &key_ids, 0).await?;
            keys.insert(server.to_string(), set.keys_for_event(sent_at));
        }
        let obj = match verify_event(&keys, &obj, &rules)
            .map_err(|e| FedError::Unauthorized(format!("{event_id}: bad signature: {e}")))?
        {
            Verified::All => obj,
            Verified::Signatures => {
                tracing::warn!(event = %event_id, "content hash mismatch: storing the event redacted");
                redact(obj, &rules.redaction, None)
                    .map_err(|e| FedError::Remote(format!("{event_id}: {e}")))?
            }
        };
        let Value::Object(map) = Value::from(CanonicalJsonValue::Object(obj)) else {
            return Err(FedError::Remote("PDU is not an object".into()));
        };
        Pdu::from_json(event_id, map).map_err(|e| FedError::Remote(format!("malformed PDU: {e}")))
    }
}
