//! OpenID tokens (client-server API, "OpenID"): a user asks for a token
//! that proves who they are to a third party (an integration manager, a
//! widget host), and that party asks this server whom it names
//! (`GET /_matrix/federation/v1/openid/userinfo`). The token grants nothing
//! else: it is not an access token and reaches no other endpoint.

use ruma::UserId;

use super::Accounts;
use crate::{Error, Result};

/// How long a token is good for, as Synapse (the spec leaves it to us).
pub const OPENID_TOKEN_SECS: u64 = 3600;

/// A token handed to the user, and for how many seconds it holds.
pub struct OpenIdToken {
    pub access_token: String,
    pub expires_in: u64,
}

impl Accounts {
    /// A new OpenID token for `requester`, who may ask only for themselves.
    pub async fn request_openid_token(
        &self,
        requester: &UserId,
        target: &str,
    ) -> Result<OpenIdToken> {
        if requester.as_str() != target {
            return Err(Error::forbidden(
                "An OpenID token can only be requested for yourself",
            ));
        }
        let token = crate::ids::random_string(40);
        let now = i64::try_from(crate::ids::now_ms()).unwrap_or(i64::MAX);
        let expires = now.saturating_add((OPENID_TOKEN_SECS * 1000) as i64);
        self.store
            .add_openid_token(&crate::ids::hash_token(&token), target, expires, now)
            .await?;
        Ok(OpenIdToken {
            access_token: token,
            expires_in: OPENID_TOKEN_SECS,
        })
    }

    /// The user an OpenID token names, while it holds; `M_UNKNOWN_TOKEN`
    /// (401) for any other token.
    pub async fn openid_userinfo(&self, token: &str) -> Result<String> {
        let now = i64::try_from(crate::ids::now_ms()).unwrap_or(i64::MAX);
        self.store
            .openid_token_user(&crate::ids::hash_token(token), now)
            .await?
            .ok_or(Error::UnknownToken { soft_logout: false })
    }
}
