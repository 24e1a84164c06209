//! Checks on strings that enter from outside and end up as identifiers or
//! stored text: whatever the entry point (HTTP, WebSocket, application
//! services), bad input is refused here, the same on every backend.

use crate::{Error, Result};

/// The spec caps an event's `type` and `state_key` at 255 bytes
/// (client-server API, "Size limits"); other servers refuse longer ones.
pub const MAX_EVENT_FIELD_BYTES: usize = 255;

/// Refuses a string holding NUL: Postgres cannot store one in a text column
/// (SQLite can), so without this the same request would succeed on one
/// backend and fail with 500 on the other.
pub fn check_text(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid_param(format!(
            "{field} must not contain a NUL character"
        )));
    }
    Ok(())
}

/// An event type or state key as a client may send it: no NUL, at most
/// 255 bytes.
pub fn check_event_field(field: &str, value: &str) -> Result<()> {
    check_text(field, value)?;
    if value.len() > MAX_EVENT_FIELD_BYTES {
        return Err(Error::invalid_param(format!(
            "{field} is longer than {MAX_EVENT_FIELD_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nul_and_overlong() {
        assert!(check_text("x", "fine").is_ok());
        assert!(matches!(
            check_text("x", "a\0b"),
            Err(Error::InvalidParam(_))
        ));
        assert!(check_event_field("type", &"a".repeat(255)).is_ok());
        assert!(matches!(
            check_event_field("type", &"a".repeat(256)),
            Err(Error::InvalidParam(_))
        ));
    }
}
