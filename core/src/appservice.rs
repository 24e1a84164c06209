//! Application services (bridges) as the domain sees them: who they are,
//! which users, aliases and rooms their namespaces cover, and which of those
//! are theirs alone. Loading registrations and talking to the services over
//! HTTP live in the `appservices` crate.

use std::sync::Arc;

use regex::Regex;
use ruma::{OwnedUserId, UserId, events::room::member::MembershipState};

use crate::{Error, Links, Result, ephemeral::Presence, rooms::Rooms, store::MainStore};

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

/// Questions Hearth asks application services (the `appservices` crate
/// answers over HTTP).
#[async_trait::async_trait]
pub trait AppServiceQueries: Send + Sync {
    /// `GET /_matrix/app/v1/rooms/{alias}`: whether the service created it.
    async fn query_alias(&self, service: &AppService, alias: &str) -> bool;
    /// `GET /_matrix/app/v1/users/{userId}`: whether the service created it.
    async fn query_user(&self, service: &AppService, user: &UserId) -> bool;
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

    /// The application services that want `pdu` (spec: an event is pushed to
    /// a service when its sender, the user a member event is about, the
    /// room, an alias the room publishes or any member of the room is in
    /// the service's namespaces).
    pub(crate) fn appservice_audience(
        &self,
        state: &std::collections::HashMap<(String, String), Arc<crate::pdu::Pdu>>,
        pdu: &crate::pdu::Pdu,
    ) -> Vec<String> {
        let services = self.all();
        if services.is_empty() {
            return vec![];
        }
        let aliases: Vec<String> = state
            .get(&("m.room.canonical_alias".to_owned(), String::new()))
            .map(|p| {
                let c = p.content_value();
                let mut out: Vec<String> = c["alt_aliases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect();
                if let Some(a) = c["alias"].as_str() {
                    out.push(a.to_owned());
                }
                out
            })
            .unwrap_or_default();
        let members: Vec<&str> = state
            .iter()
            .filter(|((kind, _), p)| {
                kind == "m.room.member"
                    && matches!(
                        p.membership_state(),
                        Some(MembershipState::Join | MembershipState::Invite)
                    )
            })
            .map(|((_, user), _)| user.as_str())
            .collect();
        let about = (pdu.kind.to_string() == "m.room.member")
            .then_some(pdu.state_key.as_deref())
            .flatten();
        services
            .iter()
            .filter(|s| s.url.is_some())
            .filter(|s| {
                let user = |u: &str| UserId::parse(u).is_ok_and(|u| s.may_act_as(&u));
                user(pdu.sender.as_str())
                    || about.is_some_and(user)
                    || s.covers_room(pdu.room_id.as_str())
                    || aliases.iter().any(|a| s.covers_alias(a))
                    || members.iter().any(|m| user(m))
            })
            .map(|s| s.id.clone())
            .collect()
    }

    /// Refuses an ordinary user's claim on a user id an application service
    /// holds exclusively (registration).
    pub fn check_user_not_exclusive(&self, user: &UserId) -> Result<()> {
        match self.owner_of_user(user) {
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
            None => match self.owner_of_alias(alias) {
                Some(s) => Err(Error::Exclusive(format!(
                    "{alias} is reserved by application service {}",
                    s.id
                ))),
                None => Ok(()),
            },
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

/// Ephemeral events kept per service until its next transaction.
const MAX_EPHEMERAL: usize = 1000;

/// Ephemeral events (typing, receipts, presence) waiting for each service's
/// next transaction; in memory only, like typing itself.
#[derive(Default)]
pub struct EphemeralQueues {
    queues: parking_lot::Mutex<
        std::collections::HashMap<String, std::collections::VecDeque<serde_json::Value>>,
    >,
    /// Users whose presence changed since the last look
    /// (`presence_to_appservices`).
    presence: parking_lot::Mutex<std::collections::BTreeSet<String>>,
}

impl EphemeralQueues {
    fn push(&self, service: &str, event: serde_json::Value) {
        let mut q = self.queues.lock();
        let queue = q.entry(service.to_owned()).or_default();
        if queue.len() >= MAX_EPHEMERAL {
            queue.pop_front();
        }
        queue.push_back(event);
    }

    /// Takes up to `max` of a service's waiting events, oldest first.
    pub fn take(&self, service: &str, max: usize) -> Vec<serde_json::Value> {
        let mut q = self.queues.lock();
        let Some(queue) = q.get_mut(service) else {
            return vec![];
        };
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    pub(crate) fn presence_changed(&self, user: &str) {
        self.presence.lock().insert(user.to_owned());
    }

    fn take_presence(&self) -> Vec<String> {
        std::mem::take(&mut *self.presence.lock())
            .into_iter()
            .collect()
    }
}

/// What core queues for application services besides events (typing,
/// receipts and presence, for those with `receive_ephemeral`) and what it
/// asks them (the aliases and users their namespaces cover).
pub struct ToAppServices {
    store: Arc<dyn MainStore>,
    appservices: Arc<AppServices>,
    /// A room's state says which services want its ephemeral events.
    rooms: Arc<Rooms>,
    /// The application service client, for alias and user queries.
    links: Arc<Links>,
    presence: Arc<Presence>,
    /// Shared with the senders, which take from it (`Hearth::appservice_ephemeral`).
    appservice_ephemeral: Arc<EphemeralQueues>,
    /// Wakes the senders (`Hearth::appservice_queued`).
    appservice_queued: Arc<tokio::sync::Notify>,
}

impl ToAppServices {
    pub(crate) fn new(
        store: Arc<dyn MainStore>,
        appservices: Arc<AppServices>,
        rooms: Arc<Rooms>,
        links: Arc<Links>,
        presence: Arc<Presence>,
        appservice_ephemeral: Arc<EphemeralQueues>,
        appservice_queued: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            store,
            appservices,
            rooms,
            links,
            presence,
            appservice_ephemeral,
            appservice_queued,
        }
    }

    /// Queues an ephemeral event of `room` for the services that asked for
    /// them (`receive_ephemeral`) and want the room.
    pub(crate) async fn appservice_ephemeral(&self, room: &ruma::RoomId, event: serde_json::Value) {
        if !self.appservices.all().iter().any(|s| s.receive_ephemeral) {
            return;
        }
        let state = match self.rooms.room_state(room).await {
            Ok(s) => s,
            Err(_) => return,
        };
        let state: std::collections::HashMap<(String, String), Arc<crate::pdu::Pdu>> = state
            .into_iter()
            .filter_map(|p| {
                p.state_key
                    .clone()
                    .map(|k| ((p.kind.to_string(), k), p.clone()))
            })
            .collect();
        let Some(create) = state
            .get(&("m.room.create".to_owned(), String::new()))
            .cloned()
        else {
            return;
        };
        let mut pushed = false;
        for id in self.appservices.appservice_audience(&state, &create) {
            if self
                .appservices
                .by_id(&id)
                .is_some_and(|s| s.receive_ephemeral)
            {
                self.appservice_ephemeral.push(&id, event.clone());
                pushed = true;
            }
        }
        if pushed {
            self.appservice_queued.notify_waiters();
        }
    }

    /// Presence changes for the services that asked for ephemeral events:
    /// each user's presence goes to the services with a user sharing a room
    /// with them. Run by the sweeper (presence changes come from sync code).
    pub(crate) async fn presence_to_appservices(&self) {
        let users = self.appservice_ephemeral.take_presence();
        let services: Vec<&Arc<AppService>> = self
            .appservices
            .all()
            .iter()
            .filter(|s| s.receive_ephemeral && s.url.is_some())
            .collect();
        if users.is_empty() || services.is_empty() {
            return;
        }
        let mut pushed = false;
        for user in users {
            let Some(state) = self.presence.get(&user) else {
                continue;
            };
            let sharing = match self.store.users_sharing_rooms(&user).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%user, error = %e, "presence for application services");
                    continue;
                }
            };
            let event = serde_json::json!({
                "type": "m.presence",
                "sender": user,
                "content": crate::ephemeral::presence_content(&state),
            });
            for s in &services {
                let shares = sharing
                    .iter()
                    .filter_map(|u| UserId::parse(u.as_str()).ok())
                    .any(|u| s.may_act_as(&u));
                if shares {
                    self.appservice_ephemeral.push(&s.id, event.clone());
                    pushed = true;
                }
            }
        }
        if pushed {
            self.appservice_queued.notify_waiters();
        }
    }

    /// A local alias's room: stored, or, when an application service's
    /// namespace covers the alias, whatever it creates when asked (spec:
    /// services are consulted before "not found").
    pub async fn resolve_local_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        if let Some(found) = self.store.resolve_alias(alias).await? {
            return Ok(Some(found));
        }
        let Some(link) = self.links.appservice.get() else {
            return Ok(None);
        };
        for service in self
            .appservices
            .all()
            .iter()
            .filter(|s| s.covers_alias(alias))
        {
            // Looked up again whatever the answer: a service that created
            // the alias but answered oddly still gets its room found.
            let _created = link.query_alias(service, alias).await;
            if let Some(found) = self.store.resolve_alias(alias).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Whether a local user exists, asking the application services whose
    /// namespaces cover it first when it does not.
    pub async fn local_user_exists(&self, user: &UserId) -> Result<bool> {
        if self.store.get_user(user.as_str()).await?.is_some() {
            return Ok(true);
        }
        let Some(link) = self.links.appservice.get() else {
            return Ok(false);
        };
        for service in self.appservices.all().iter().filter(|s| s.may_act_as(user)) {
            let _created = link.query_user(service, user).await;
            if self.store.get_user(user.as_str()).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
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
