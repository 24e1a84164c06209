//! Third-party identifiers (email addresses, phone numbers). Hearth sends
//! no email or SMS and talks to no identity server, so it binds none: every
//! account's list is empty, asking to validate an address for registration
//! or for an account is refused with the spec's `M_THREEPID_DENIED` (403),
//! and a password reset by address finds no account (`M_THREEPID_NOT_FOUND`).
//! Clients (Element's settings, say) read the list and offer no 3PID flows
//! when `/capabilities` says `m.3pid_changes` is off.

use serde_json::Value;

use super::Accounts;
use crate::{Error, Result};

/// What an address is being validated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreepidPurpose {
    /// `/register/{medium}/requestToken`
    Registration,
    /// `/account/3pid/{medium}/requestToken`
    AddToAccount,
    /// `/account/password/{medium}/requestToken`
    PasswordReset,
}

impl Accounts {
    /// The third-party identifiers bound to `user`: none, as Hearth binds
    /// none.
    pub async fn threepids(&self, _user: &ruma::UserId) -> Result<Vec<Value>> {
        Ok(vec![])
    }

    /// A request to send a validation token to an address of `medium`
    /// (`email` or `msisdn`): refused, as Hearth binds no third-party ids.
    pub fn request_threepid_token(&self, medium: &str, purpose: ThreepidPurpose) -> Result<()> {
        if !matches!(medium, "email" | "msisdn") {
            return Err(Error::Unrecognized(format!("Unknown medium {medium}")));
        }
        Err(match purpose {
            ThreepidPurpose::PasswordReset => Error::ThreepidNotFound(format!(
                "No account has this {medium}: this server binds no third-party identifiers"
            )),
            ThreepidPurpose::Registration | ThreepidPurpose::AddToAccount => {
                Error::ThreepidDenied("This server does not bind third-party identifiers".into())
            }
        })
    }
}
