//! User-interactive authentication: sessions that remember completed stages.
//!
//! A session is bound to the request that started it: completing the stages
//! authorizes that request and no other, so a password given to delete one
//! device cannot be replayed to delete another.

use ruma::{CanonicalJsonValue, OwnedUserId, UserId};
use serde_json::Value;
use sha2::{Digest, Sha256};

use std::sync::Arc;

use crate::{
    Error, Result, accounts::Accounts, ids::random_string, ratelimit::RateLimits, store::MainStore,
};

mod registration;
pub use registration::{RegisterOutcome, RegisterParams, RegisterStep, Registered};

/// A session expires 15 minutes after its last step.
const SESSION_TTL_MS: i64 = 15 * 60 * 1000;

/// The wording Synapse uses for the same refusal, so clients see one message.
const OPERATION_CHANGED: &str =
    "Requested operation has changed during the UI authentication session";

/// The request a UIA step comes with; a session only completes the request it
/// was started for.
#[derive(Debug, Clone, Default)]
pub struct UiaRequest {
    pub method: String,
    /// The path without `/_matrix/client/<version>`: a client may start on
    /// `r0` and finish on `v3`.
    pub path: String,
    /// The request body without `auth`; `None` leaves the body unbound
    /// (registration, whose clients ask for the flows with an empty body and
    /// send the username with the stages).
    pub body: Option<Value>,
    /// The authenticated requester, if any.
    pub user: Option<OwnedUserId>,
}

impl UiaRequest {
    /// A digest of the operation: what a session remembers instead of the
    /// body itself, which may hold a new password.
    fn binding(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.method.as_str(),
            self.path.as_str(),
            self.user.as_ref().map_or("", |u| u.as_str()),
        ] {
            h.update(part.len().to_be_bytes());
            h.update(part.as_bytes());
        }
        if let Some(body) = &self.body {
            // Canonical JSON, so key order or spacing is not a change.
            let text = CanonicalJsonValue::try_from(body.clone())
                .map(|c| c.to_string())
                .unwrap_or_else(|_| body.to_string());
            h.update(text.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Strips `/_matrix/client/<version>` from a request path.
pub fn unversioned_path(path: &str) -> &str {
    path.strip_prefix("/_matrix/client/")
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or(path)
}

/// The 401 body a client needs to continue.
#[derive(Debug, Clone)]
pub struct UiaChallenge {
    pub flows: Vec<Vec<String>>,
    pub session: String,
    pub completed: Vec<String>,
    pub params: Value,
    /// An error from the stage just attempted (errcode, message).
    pub error: Option<(String, String)>,
}

pub enum UiaOutcome {
    Done,
    Challenge(UiaChallenge),
}

/// User-interactive auth: its sessions are stored, so any process of a
/// cluster continues them.
pub struct Uia {
    store: Arc<dyn MainStore>,
    /// `m.login.registration_token` accepts these.
    registration_tokens: Vec<String>,
    /// `m.login.password` checks the account's password.
    accounts: Arc<Accounts>,
    /// Registration is rate limited once its stages are done.
    rate_limits: Arc<RateLimits>,
}

impl Uia {
    pub(crate) fn new(
        store: Arc<dyn MainStore>,
        registration_tokens: Vec<String>,
        accounts: Arc<Accounts>,
        rate_limits: Arc<RateLimits>,
    ) -> Self {
        Self {
            store,
            registration_tokens,
            accounts,
            rate_limits,
        }
    }

    /// Whether `m.login.registration_token` accepts `token` (also what
    /// `/register/m.login.registration_token/validity` answers).
    pub fn registration_token_valid(&self, token: &str) -> bool {
        self.registration_tokens.iter().any(|t| t == token)
    }

    /// The operation `session` is bound to and the stages it completed;
    /// `None` for an unknown or expired session.
    async fn uia_session(&self, session: &str) -> Result<Option<(String, Vec<String>)>> {
        self.store
            .uia_session(session, now_ms() - SESSION_TTL_MS)
            .await
    }

    /// Records the completed stages (the session is touched). Callers have
    /// checked that an existing session is bound to `binding`.
    async fn save_uia_session(
        &self,
        session: &str,
        completed: &[String],
        binding: &str,
    ) -> Result<()> {
        self.store
            .put_uia_session(session, binding, completed, now_ms() - SESSION_TTL_MS)
            .await
    }
}

/// The answer that asks for (more) stages: the flows offered, the session
/// and what it has completed, and why the last stage failed, if it did.
fn challenge(
    flows: &[Vec<&str>],
    session: String,
    completed: Vec<String>,
    error: Option<(String, String)>,
) -> UiaOutcome {
    UiaOutcome::Challenge(UiaChallenge {
        flows: flows
            .iter()
            .map(|f| f.iter().map(|s| s.to_string()).collect())
            .collect(),
        session,
        completed,
        params: serde_json::json!({}),
        error,
    })
}

fn now_ms() -> i64 {
    crate::ids::now_ms() as i64
}

impl Uia {
    /// Runs one UIA step of `request`. `password_user` is whose password
    /// `m.login.password` checks. A session started by another request is
    /// refused with 403 M_FORBIDDEN.
    pub async fn uia(
        &self,
        auth: Option<&Value>,
        flows: &[Vec<&str>],
        password_user: Option<&UserId>,
        request: &UiaRequest,
    ) -> Result<UiaOutcome> {
        let (session, outcome) = self.step(auth, flows, password_user, request).await?;
        if matches!(outcome, UiaOutcome::Done) {
            self.store.delete_uia_session(&session).await?;
        }
        Ok(outcome)
    }

    /// One UIA step and the session it ran in; a session that completes a
    /// flow is kept with its stages (registration answers it again).
    pub(crate) async fn step(
        &self,
        auth: Option<&Value>,
        flows: &[Vec<&str>],
        password_user: Option<&UserId>,
        request: &UiaRequest,
    ) -> Result<(String, UiaOutcome)> {
        let binding = request.binding();
        let Some(auth) = auth else {
            let session = random_string(24);
            self.save_uia_session(&session, &[], &binding).await?;
            return Ok((session.clone(), challenge(flows, session, vec![], None)));
        };
        let (session, mut completed) = self.continued_session(auth, request, &binding).await?;
        let Some(stage) = auth.get("type").and_then(Value::as_str) else {
            self.save_uia_session(&session, &completed, &binding)
                .await?;
            return Ok((session.clone(), challenge(flows, session, completed, None)));
        };
        if !flows.iter().any(|f| f.contains(&stage)) {
            return Err(Error::invalid_param(format!("Unknown auth stage {stage}")));
        }
        if let Err(e) = self.check_stage(stage, auth, password_user).await? {
            // A failed stage answers the challenge again with the session
            // kept, so the client may retry it.
            self.save_uia_session(&session, &completed, &binding)
                .await?;
            let code = match e {
                Error::Forbidden(_) | Error::UserDeactivated(_) => "M_FORBIDDEN",
                _ => "M_UNKNOWN",
            };
            let error = Some((code.into(), e.to_string()));
            return Ok((session.clone(), challenge(flows, session, completed, error)));
        }
        if !completed.iter().any(|c| c == stage) {
            completed.push(stage.to_owned());
        }
        self.save_uia_session(&session, &completed, &binding)
            .await?;
        if flows
            .iter()
            .any(|f| f.iter().all(|s| completed.iter().any(|c| c == s)))
        {
            return Ok((session, UiaOutcome::Done));
        }
        Ok((session.clone(), challenge(flows, session, completed, None)))
    }

    /// Asks `session`'s user for their password again (`m.login.password`)
    /// before a sensitive action, in a session bound to this request and the
    /// user. An application service acting as one of its users is not
    /// asked: its users may have no password, and the spec exempts it from
    /// UIA when it deletes devices or replaces cross-signing keys (Synapse
    /// also when it deactivates a user).
    pub async fn reauthenticate(
        &self,
        session: &crate::accounts::Session,
        auth: Option<&Value>,
        request: &UiaRequest,
    ) -> Result<UiaOutcome> {
        if session.appservice.is_some() {
            return Ok(UiaOutcome::Done);
        }
        let request = UiaRequest {
            user: Some(session.user_id.clone()),
            ..request.clone()
        };
        let flows = [vec!["m.login.password"]];
        self.uia(auth, &flows, Some(&session.user_id), &request)
            .await
    }

    /// The session the client continues (a new one when it names none or
    /// one this server does not know) and the stages it has completed; a
    /// session started for another request is refused.
    async fn continued_session(
        &self,
        auth: &Value,
        request: &UiaRequest,
        binding: &str,
    ) -> Result<(String, Vec<String>)> {
        let session = auth
            .get("session")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let known = match session.as_deref() {
            Some(s) => self.uia_session(s).await?,
            None => None,
        };
        let completed = match known {
            Some((bound, _)) if bound != binding => {
                tracing::warn!(
                    method = %request.method,
                    path = %request.path,
                    "UIA session used for another operation than the one it was started for"
                );
                return Err(Error::forbidden(OPERATION_CHANGED));
            }
            Some((_, completed)) => completed,
            None => vec![],
        };
        Ok((session.unwrap_or_else(|| random_string(24)), completed))
    }

    /// Checks one stage's credentials. The outer error ends the request; the
    /// inner one is a failed attempt the client may retry in the session.
    async fn check_stage(
        &self,
        stage: &str,
        auth: &Value,
        password_user: Option<&UserId>,
    ) -> Result<Result<()>> {
        Ok(match stage {
            "m.login.dummy" => Ok(()),
            "m.login.registration_token" => {
                let token = auth
                    .get("token")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if self.registration_token_valid(token) {
                    Ok(())
                } else {
                    Err(Error::forbidden("Invalid registration token"))
                }
            }
            "m.login.password" => {
                let password = auth
                    .get("password")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let claimed = auth
                    .get("identifier")
                    .and_then(|i| i.get("user"))
                    .or_else(|| auth.get("user"))
                    .and_then(Value::as_str);
                let target = match (password_user, claimed) {
                    (Some(u), Some(c)) => {
                        let c = self.accounts.parse_local_user(c)?;
                        if c != u {
                            return Err(Error::forbidden("Cannot authenticate as another user"));
                        }
                        c
                    }
                    (Some(u), None) => u.to_owned(),
                    (None, Some(c)) => self.accounts.parse_local_user(c)?,
                    (None, None) => return Err(Error::MissingParam("Missing identifier".into())),
                };
                self.accounts.check_password(&target, password).await
            }
            other => Err(Error::invalid_param(format!(
                "Unsupported auth stage {other}"
            ))),
        })
    }
}
