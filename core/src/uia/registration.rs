//! `/register` behind UIA. The spec lets a server remember the parameters of
//! the request that started a registration's session (Synapse does): a later
//! step may carry only `auth`. A step with other parameters is refused, as
//! any session refuses another operation; and a session that registered a
//! user answers that user again (the client's retry after a lost response).

use ruma::OwnedUserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{OPERATION_CHANGED, Uia, UiaChallenge, UiaOutcome, UiaRequest};
use crate::{Error, Result, accounts::hash_password, ratelimit::Action};

/// The parameters of a registration request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RegisterParams {
    pub username: Option<String>,
    pub password: Option<String>,
    pub device_id: Option<String>,
    pub initial_device_display_name: Option<String>,
    #[serde(default)]
    pub inhibit_login: bool,
}

/// What a session remembers: the parameters with the password as its hash,
/// a digest of the request body they came in, and the user once registered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Remembered {
    digest: String,
    username: Option<String>,
    password_hash: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    inhibit_login: bool,
    user_id: Option<OwnedUserId>,
}

/// A registration done: the user and how the client wants to be logged in.
#[derive(Debug, Clone)]
pub struct Registered {
    pub user_id: OwnedUserId,
    pub device_id: Option<String>,
    pub initial_device_display_name: Option<String>,
    pub inhibit_login: bool,
}

pub enum RegisterOutcome {
    Registered(Registered),
    Challenge(Box<UiaChallenge>),
}

/// A registration step: its parameters, the body they came in (without
/// `auth`), the `auth` object, and who asks (the rate limit's key).
pub struct RegisterStep<'a> {
    pub params: RegisterParams,
    pub body: Value,
    pub auth: Option<&'a Value>,
    pub request: &'a UiaRequest,
    pub client: &'a str,
}

impl Uia {
    /// One step of `/register` through UIA with `flows`: a challenge, or
    /// the user registered (now, or earlier in the same session).
    pub async fn register(
        &self,
        step: RegisterStep<'_>,
        flows: &[Vec<&str>],
    ) -> Result<RegisterOutcome> {
        let session = step
            .auth
            .and_then(|a| a.get("session"))
            .and_then(Value::as_str);
        let remembered = match session {
            Some(s) => self.remembered(s).await?,
            None => None,
        };
        let sent = has_params(&step.body).then(|| body_digest(&step.body));
        if let (Some(r), Some(d)) = (&remembered, &sent)
            && &r.digest != d
        {
            return Err(Error::forbidden(OPERATION_CHANGED));
        }
        if let Some(r) = &remembered
            && let Some(user_id) = &r.user_id
        {
            return Ok(RegisterOutcome::Registered(registered(r, user_id.clone())));
        }
        let fresh = remembered.is_none() && sent.is_some();
        let params = match remembered {
            Some(r) => r,
            None => remember(&step.params, sent.unwrap_or_default()).await?,
        };
        // Refuse a bad or taken name before the client walks through UIA.
        if let Some(u) = &params.username {
            self.accounts
                .check_username_claimable(&u.to_lowercase())
                .await?;
        }
        let (session, outcome) = self.step(step.auth, flows, None, step.request).await?;
        match outcome {
            UiaOutcome::Challenge(c) => {
                if fresh {
                    self.store
                        .set_uia_session_params(&session, &serde_json::to_value(&params)?)
                        .await?;
                }
                Ok(RegisterOutcome::Challenge(Box::new(c)))
            }
            UiaOutcome::Done => {
                let user_id = self.create_registered(&params, step.client).await?;
                let done = Remembered {
                    user_id: Some(user_id.clone()),
                    ..params
                };
                self.store
                    .set_uia_session_params(&session, &serde_json::to_value(&done)?)
                    .await?;
                Ok(RegisterOutcome::Registered(registered(&done, user_id)))
            }
        }
    }

    async fn remembered(&self, session: &str) -> Result<Option<Remembered>> {
        Ok(match self.store.uia_session_params(session).await? {
            Some(v) => Some(serde_json::from_value(v)?),
            None => None,
        })
    }

    /// Creates the account the session's flows authorized.
    async fn create_registered(&self, params: &Remembered, client: &str) -> Result<OwnedUserId> {
        self.rate_limits.rate_limit(Action::Register, client)?;
        let hash = params
            .password_hash
            .as_deref()
            .ok_or_else(|| Error::MissingParam("Missing password".into()))?;
        let local = match &params.username {
            Some(u) => u.to_lowercase(),
            None => self.accounts.generate_localpart().await?,
        };
        self.accounts.create_account_hashed(&local, hash).await
    }
}

/// Whether a body (without `auth`) carries parameters to remember.
fn has_params(body: &Value) -> bool {
    body.as_object().is_some_and(|o| !o.is_empty())
}

/// The digest of a request body, as a session binding takes it.
fn body_digest(body: &Value) -> String {
    UiaRequest {
        body: Some(body.clone()),
        ..UiaRequest::default()
    }
    .binding()
}

/// The parameters as a session keeps them: the password only hashed.
async fn remember(params: &RegisterParams, digest: String) -> Result<Remembered> {
    let password_hash = match &params.password {
        Some(p) if p.len() > 512 => return Err(Error::invalid_param("Password too long")),
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    Ok(Remembered {
        digest,
        username: params.username.clone(),
        password_hash,
        device_id: params.device_id.clone(),
        initial_device_display_name: params.initial_device_display_name.clone(),
        inhibit_login: params.inhibit_login,
        user_id: None,
    })
}

fn registered(r: &Remembered, user_id: OwnedUserId) -> Registered {
    Registered {
        user_id,
        device_id: r.device_id.clone(),
        initial_device_display_name: r.initial_device_display_name.clone(),
        inhibit_login: r.inhibit_login,
    }
}
