//! Application services (bridges) as the domain sees them: who they are,
//! which users, aliases and rooms their namespaces cover, and which of those
//! are theirs alone. Loading registrations and talking to the services over
//! HTTP live in the `appservices` crate.

use std::sync::Arc;

use regex::Regex;
use ruma::{OwnedUserId, UserId};

use crate::{Error, Hearth, Result};

/// One namespace rule of a registration.
#[derive(Debug, Clone)]
pub struct NamespaceRule {
    /// Anchored at the start, as Synapse matches (bridges are written
    /// against it): `@_irc_.*` covers `@_irc_bob:example.org`.
    pub regex: Regex,
    pub exclusive: bool,
}

impl NamespaceRule {
    /// `pattern` as written in the registration.
    pub fn new(pattern: &str, exclusive: bool) -> std::result::Result<Self, regex::Error> {
        Ok(Self {
            regex: Regex::new(&format!("^(?:{pattern})"))?,
            exclusive,
        })
    }
}

/// A registered application service.
#[derive(Debug, Clone)]
pub struct AppService {
    pub id: String,
    /// Where it listens; `None` for a service that only uses the client API.
    pub url: Option<String>,
    pub as_token: String,
    pub hs_token: String,
    /// The service's own user (`sender_localpart`).
    pub sender: OwnedUserId,
    pub users: Vec<NamespaceRule>,
    pub aliases: Vec<NamespaceRule>,
    pub rooms: Vec<NamespaceRule>,
    pub rate_limited: bool,
    pub protocols: Vec<String>,
    /// Typing, receipts and presence pushed with transactions (MSC2409).
    pub receive_ephemeral: bool,
}

fn matches(rules: &[NamespaceRule], value: &str, exclusive_only: bool) -> bool {
    rules
        .iter()
        .any(|r| (!exclusive_only || r.exclusive) && r.regex.is_match(value))
}

impl AppService {
    /// A user the service may act as: its own, or one its namespaces cover.
    pub fn may_act_as(&self, user: &UserId) -> bool {
        user == self.sender || matches(&self.users, user.as_str(), false)
    }

    pub fn covers_alias(&self, alias: &str) -> bool {
        matches(&self.aliases, alias, false)
    }

    pub fn covers_room(&self, room_id: &str) -> bool {
        matches(&self.rooms, room_id, false)
    }

    /// Whether the service claims this user id for itself alone.
    pub fn owns_user(&self, user: &UserId) -> bool {
        user == self.sender || matches(&self.users, user.as_str(), true)
    }

    pub fn owns_alias(&self, alias: &str) -> bool {
        matches(&self.aliases, alias, true)
    }
}

/// The registered services, looked up by token or by namespace.
#[derive(Debug, Clone, Default)]
pub struct AppServices {
    list: Vec<Arc<AppService>>,
}

impl AppServices {
    pub fn new(list: Vec<AppService>) -> Self {
        Self {
            list: list.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn all(&self) -> &[Arc<AppService>] {
        &self.list
    }

    pub fn by_as_token(&self, token: &str) -> Option<&Arc<AppService>> {
        // Compared in constant time per service: tokens are secrets.
        self.list
            .iter()
            .find(|s| constant_time_eq(s.as_token.as_bytes(), token.as_bytes()))
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<AppService>> {
        self.list.iter().find(|s| s.id == id)
    }

    /// The service that claims `user` exclusively, if any.
    pub fn owner_of_user(&self, user: &UserId) -> Option<&Arc<AppService>> {
        self.list.iter().find(|s| s.owns_user(user))
    }

    pub fn owner_of_alias(&self, alias: &str) -> Option<&Arc<AppService>> {
        self.list.iter().find(|s| s.owns_alias(alias))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Hearth {
    /// Refuses an ordinary user's claim on a user id an application service
    /// holds exclusively (registration).
    pub fn check_user_not_exclusive(&self, user: &UserId) -> Result<()> {
        match self.appservices.owner_of_user(user) {
            Some(s) => Err(Error::Exclusive(format!(
                "{user} is reserved by application service {}",
                s.id
            ))),
            None => Ok(()),
        }
    }

    /// The same for room aliases: `by` is the service asking, if any.
    pub fn check_alias_claim(&self, alias: &str, by: Option<&AppService>) -> Result<()> {
        match by {
            Some(s) if !s.covers_alias(alias) => Err(Error::Exclusive(format!(
                "{alias} is outside application service {}'s namespaces",
                s.id
            ))),
            Some(_) => Ok(()),
            None => match self.appservices.owner_of_alias(alias) {
                Some(s) => Err(Error::Exclusive(format!(
                    "{alias} is reserved by application service {}",
                    s.id
                ))),
                None => Ok(()),
            },
        }
    }

    /// Creates each service's own user if it does not exist yet.
    pub async fn ensure_appservice_users(&self) -> Result<()> {
        for s in self.appservices.all() {
            if self.store.get_user(s.sender.as_str()).await?.is_none() {
                self.create_account(s.sender.localpart(), None, false)
                    .await?;
                tracing::info!(appservice = %s.id, user = %s.sender, "application service user created");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> AppService {
        AppService {
            id: "irc".into(),
            url: None,
            as_token: "as".into(),
            hs_token: "hs".into(),
            sender: OwnedUserId::try_from("@ircbot:example.org").expect("user"),
            users: vec![
                NamespaceRule::new("@_irc_.*:example\\.org", true).expect("re"),
                NamespaceRule::new("@shared_.*", false).expect("re"),
            ],
            aliases: vec![NamespaceRule::new("#_irc_.*", true).expect("re")],
            rooms: vec![],
            rate_limited: false,
            protocols: vec![],
            receive_ephemeral: false,
        }
    }

    #[test]
    fn namespaces_match_from_the_start_and_exclusivity_is_per_rule() {
        let s = service();
        let user = |u: &str| OwnedUserId::try_from(u).expect("user");
        assert!(s.may_act_as(&user("@_irc_bob:example.org")));
        assert!(s.owns_user(&user("@_irc_bob:example.org")));
        assert!(s.may_act_as(&user("@shared_x:example.org")));
        assert!(!s.owns_user(&user("@shared_x:example.org")));
        assert!(!s.may_act_as(&user("@bob_irc_:example.org")), "anchored");
        assert!(s.owns_user(&user("@ircbot:example.org")), "its own user");
        assert!(s.owns_alias("#_irc_chan:example.org"));
        assert!(!s.covers_alias("#chan:example.org"));
        let all = AppServices::new(vec![s]);
        assert!(all.by_as_token("as").is_some());
        assert!(all.by_as_token("hs").is_none());
        assert!(all.by_as_token("a").is_none());
    }
}
