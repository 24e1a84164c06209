//! User-interactive authentication: sessions that remember completed stages.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::UserId;
use serde_json::Value;

use crate::{Error, Hearth, Result, ids::random_string};

const SESSION_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Default)]
pub struct UiaSessions {
    sessions: Mutex<HashMap<String, (Instant, Vec<String>)>>,
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

impl UiaSessions {
    fn completed(&self, session: &str) -> Option<Vec<String>> {
        let mut g = self.sessions.lock().ok()?;
        g.retain(|_, (t, _)| t.elapsed() < SESSION_TTL);
        g.get(session).map(|(_, c)| c.clone())
    }

    fn set(&self, session: &str, completed: Vec<String>) {
        if let Ok(mut g) = self.sessions.lock() {
            g.insert(session.to_owned(), (Instant::now(), completed));
        }
    }

    fn remove(&self, session: &str) {
        if let Ok(mut g) = self.sessions.lock() {
            g.remove(session);
        }
    }
}

impl Hearth {
    /// Runs one UIA step. `password_user` is whose password `m.login.password` checks.
    pub async fn uia(
        &self,
        auth: Option<&Value>,
        flows: &[Vec<&str>],
        password_user: Option<&UserId>,
    ) -> Result<UiaOutcome> {
        let flows_owned: Vec<Vec<String>> = flows
            .iter()
            .map(|f| f.iter().map(|s| s.to_string()).collect())
            .collect();
        let challenge =
            |session: String, completed: Vec<String>, error: Option<(String, String)>| {
                UiaOutcome::Challenge(UiaChallenge {
                    flows: flows_owned.clone(),
                    session,
                    completed,
                    params: serde_json::json!({}),
                    error,
                })
            };
        let Some(auth) = auth else {
            let session = random_string(24);
            self.uia.set(&session, vec![]);
            return Ok(challenge(session, vec![], None));
        };
        let session = auth
            .get("session")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut completed = match &session {
            Some(s) => self.uia.completed(s).unwrap_or_default(),
            None => vec![],
        };
        let session = session.unwrap_or_else(|| random_string(24));
        let Some(stage) = auth.get("type").and_then(Value::as_str) else {
            self.uia.set(&session, completed.clone());
            return Ok(challenge(session, completed, None));
        };
        if !flows.iter().any(|f| f.contains(&stage)) {
            return Err(Error::invalid_param(format!("Unknown auth stage {stage}")));
        }
        let stage_result: Result<()> = match stage {
            "m.login.dummy" => Ok(()),
            "m.login.registration_token" => {
                let token = auth
                    .get("token")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if self.config.registration_tokens.iter().any(|t| t == token) {
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
                        let c = self.parse_local_user(c)?;
                        if c != u {
                            return Err(Error::forbidden("Cannot authenticate as another user"));
                        }
                        c
                    }
                    (Some(u), None) => u.to_owned(),
                    (None, Some(c)) => self.parse_local_user(c)?,
                    (None, None) => return Err(Error::MissingParam("Missing identifier".into())),
                };
                self.check_password(&target, password).await
            }
            other => Err(Error::invalid_param(format!(
                "Unsupported auth stage {other}"
            ))),
        };
        match stage_result {
            Ok(()) => {
                if !completed.iter().any(|c| c == stage) {
                    completed.push(stage.to_owned());
                }
            }
            Err(e) => {
                self.uia.set(&session, completed.clone());
                let code = match e {
                    Error::Forbidden(_) | Error::UserDeactivated(_) => "M_FORBIDDEN",
                    _ => "M_UNKNOWN",
                };
                return Ok(challenge(
                    session,
                    completed,
                    Some((code.into(), e.to_string())),
                ));
            }
        }
        if flows
            .iter()
            .any(|f| f.iter().all(|s| completed.iter().any(|c| c == s)))
        {
            self.uia.remove(&session);
            return Ok(UiaOutcome::Done);
        }
        self.uia.set(&session, completed.clone());
        Ok(challenge(session, completed, None))
    }
}
