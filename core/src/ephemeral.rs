//! Typing and presence: in-process state with serial numbers, so sync can ask
//! "what changed since position N". Nothing here is durable by design. With
//! several processes, each holds a mirror kept in step over the bus
//! (`cluster.rs`), so expiries are wall-clock milliseconds and serials are
//! clock-based (never below the current time in microseconds), which keeps a
//! token from one process meaningful on another without a shared counter.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids::now_ms;

/// The next serial after `last`: past both it and the clock.
fn next_serial(last: u64) -> u64 {
    (last + 1).max(now_ms().saturating_mul(1000))
}

/// The serial a change made on another process takes here: its own, so a
/// token from either process means the same; unless this process already
/// handed out a later serial, which must not hide the change.
fn mirrored_serial(local: u64, remote: u64) -> u64 {
    if remote > local {
        remote
    } else {
        next_serial(local)
    }
}

#[derive(Default)]
struct TypingInner {
    serial: u64,
    /// room -> (user -> expiry, unix ms)
    rooms: HashMap<String, HashMap<String, u64>>,
    /// room -> serial of its last change
    changed: HashMap<String, u64>,
}

#[derive(Default)]
pub struct Typing {
    inner: Mutex<TypingInner>,
}

pub const MAX_TYPING_TIMEOUT: Duration = Duration::from_secs(120);

impl Typing {
    /// Returns true when the set of typing users changed.
    pub fn set(&self, room: &str, user: &str, typing: Option<Duration>) -> bool {
        let mut g = self.inner.lock();
        let users = g.rooms.entry(room.to_owned()).or_default();
        let expires = now_ms()
            + typing
                .unwrap_or_default()
                .min(MAX_TYPING_TIMEOUT)
                .as_millis() as u64;
        let changed = match typing {
            Some(_) => users.insert(user.to_owned(), expires).is_none(),
            None => users.remove(user).is_some(),
        };
        if changed {
            g.serial = next_serial(g.serial);
            let s = g.serial;
            g.changed.insert(room.to_owned(), s);
        }
        changed
    }

    /// Who is typing in a room and until when (unix ms), to tell other processes.
    pub fn snapshot(&self, room: &str) -> Vec<(String, u64)> {
        let g = self.inner.lock();
        g.rooms
            .get(room)
            .map(|u| u.iter().map(|(u, e)| (u.clone(), *e)).collect())
            .unwrap_or_default()
    }

    /// Takes a room's typing users as another process reported them (or
    /// Redis holds them); returns whether anything changed.
    pub fn apply(&self, room: &str, users: Vec<(String, u64)>, serial: u64) -> bool {
        let mut g = self.inner.lock();
        let users: HashMap<String, u64> = users.into_iter().collect();
        let same = match g.rooms.get(room) {
            Some(now) => *now == users,
            None => users.is_empty(),
        };
        if same {
            return false;
        }
        g.serial = mirrored_serial(g.serial, serial);
        let s = g.serial;
        g.rooms.insert(room.to_owned(), users);
        g.changed.insert(room.to_owned(), s);
        true
    }

    /// Drops expired entries; returns true when anything expired.
    pub fn sweep(&self) -> bool {
        let mut g = self.inner.lock();
        let now = now_ms();
        let mut expired_rooms = vec![];
        for (room, users) in g.rooms.iter_mut() {
            let before = users.len();
            users.retain(|_, exp| *exp > now);
            if users.len() != before {
                expired_rooms.push(room.clone());
            }
        }
        for room in &expired_rooms {
            g.serial = next_serial(g.serial);
            let s = g.serial;
            g.changed.insert(room.clone(), s);
        }
        !expired_rooms.is_empty()
    }

    pub fn serial(&self) -> u64 {
        self.inner.lock().serial
    }

    /// The m.typing event for a room if it changed after `since` (or always when `since` is None).
    pub fn event_for(&self, room: &str, since: Option<u64>) -> Option<Value> {
        let g = self.inner.lock();
        let changed = g.changed.get(room).copied().unwrap_or(0);
        if let Some(s) = since
            && changed <= s
        {
            return None;
        }
        let now = now_ms();
        let mut users: Vec<&String> = g
            .rooms
            .get(room)
            .map(|u| {
                u.iter()
                    .filter(|(_, e)| **e > now)
                    .map(|(u, _)| u)
                    .collect()
            })
            .unwrap_or_default();
        users.sort();
        if since.is_none() && users.is_empty() {
            return None;
        }
        Some(json!({"type": "m.typing", "content": {"user_ids": users}}))
    }
}

/// A user's presence as this process knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceState {
    /// What others see: online, unavailable or offline.
    pub presence: String,
    pub status_msg: Option<String>,
    /// The user's last action (a send, a receipt, setting presence): idleness.
    pub last_active_ms: u64,
    /// The last sign of a connected client (a sync, a WebSocket ping, any
    /// action): a user whose clients stop beating goes offline.
    pub heartbeat_ms: u64,
    /// When this state last changed here, in the sync stream's terms.
    #[serde(skip)]
    pub serial: u64,
    /// A user of another server: their server ages them, not our clocks;
    /// `heartbeat_ms` is when it last told us.
    #[serde(default)]
    pub remote: bool,
}

impl PresenceState {
    fn offline(now: u64) -> Self {
        Self {
            presence: "offline".into(),
            status_msg: None,
            last_active_ms: now,
            heartbeat_ms: 0,
            serial: 0,
            remote: false,
        }
    }

    /// Whether others would see a difference between the two.
    fn looks_like(&self, other: &Self) -> bool {
        self.presence == other.presence && self.status_msg == other.status_msg
    }
}

/// A remote user's presence lasts this long unless their server repeats it
/// (servers repeat it every 25 minutes, see `REMOTE_PRESENCE_REPEAT`).
pub const REMOTE_PRESENCE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often our online users' presence is repeated to other servers.
pub const REMOTE_PRESENCE_REPEAT: Duration = Duration::from_secs(25 * 60);

/// When presence changes by itself.
#[derive(Clone, Copy, Debug)]
pub struct PresenceTimes {
    /// After this long without activity an online user shows as unavailable.
    pub idle_after: Duration,
    /// After this long without a heartbeat the user shows as offline: their
    /// clients are gone. Longer than the longest sync long-poll, since a
    /// client waiting in one beats only when it returns.
    pub offline_after: Duration,
}

impl Default for PresenceTimes {
    fn default() -> Self {
        Self {
            idle_after: Duration::from_secs(300),
            offline_after: Duration::from_secs(150),
        }
    }
}

#[derive(Default)]
struct PresenceInner {
    serial: u64,
    users: HashMap<String, PresenceState>,
    /// When each user's state was last written to Redis by this process.
    written: HashMap<String, u64>,
}

#[derive(Default)]
pub struct Presence {
    inner: Mutex<PresenceInner>,
    times: PresenceTimes,
}

impl Presence {
    pub fn new(times: PresenceTimes) -> Self {
        Self {
            inner: Mutex::default(),
            times,
        }
    }

    pub fn times(&self) -> PresenceTimes {
        self.times
    }

    /// Applies `change` to a user's state (offline when unknown); when others
    /// would see a difference, the state takes the next serial. Returns
    /// whether they would.
    fn update(&self, user: &str, change: impl FnOnce(&mut PresenceState, u64)) -> bool {
        let mut g = self.inner.lock();
        let now = now_ms();
        let next = next_serial(g.serial);
        let entry = g
            .users
            .entry(user.to_owned())
            .or_insert_with(|| PresenceState::offline(now));
        let before = entry.clone();
        change(entry, now);
        let changed = !entry.looks_like(&before);
        if changed {
            entry.serial = next;
            g.serial = next;
        }
        changed
    }

    /// A sync with `set_presence`: "online" brings an offline user online
    /// (not an idle one: polling is not activity), "unavailable" marks them
    /// idle, "offline" leaves presence alone (spec). Every kind but offline
    /// is a heartbeat.
    pub fn sync(&self, user: &str, requested: &str) -> bool {
        if requested == "offline" {
            return false;
        }
        self.update(user, |s, now| {
            s.heartbeat_ms = now;
            if requested == "unavailable" {
                s.presence = "unavailable".into();
            } else if s.presence == "offline" {
                s.presence = "online".into();
                s.last_active_ms = now;
            }
        })
    }

    /// Sets a user's presence explicitly (PUT status, WebSocket frame).
    pub fn set(&self, user: &str, presence: &str, status_msg: Option<Option<String>>) -> bool {
        self.update(user, |s, now| {
            s.presence = presence.to_owned();
            if let Some(m) = status_msg {
                s.status_msg = m;
            }
            if presence != "offline" {
                s.heartbeat_ms = now;
            }
            if presence == "online" {
                s.last_active_ms = now;
            }
        })
    }

    /// The user did something (a send, a receipt, typing): online now.
    pub fn active(&self, user: &str) -> bool {
        self.update(user, |s, now| {
            s.last_active_ms = now;
            s.heartbeat_ms = now;
            s.presence = "online".into();
        })
    }

    /// Users whose presence is due to change by itself: online and idle, or
    /// not offline and without a heartbeat for too long.
    pub fn due(&self) -> Vec<String> {
        let g = self.inner.lock();
        let now = now_ms();
        g.users
            .iter()
            .filter(|(_, s)| self.aged(s, now) != s.presence)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// What a state turns into with time alone.
    fn aged<'a>(&self, s: &'a PresenceState, now: u64) -> &'a str {
        let since = |t: u64| Duration::from_millis(now.saturating_sub(t));
        if s.remote {
            // Their server re-announces users who stay online; one that went
            // quiet for this long is gone.
            return if since(s.heartbeat_ms) > REMOTE_PRESENCE_TIMEOUT {
                "offline"
            } else {
                &s.presence
            };
        }
        if s.presence != "offline" && since(s.heartbeat_ms) > self.times.offline_after {
            "offline"
        } else if s.presence == "online" && since(s.last_active_ms) > self.times.idle_after {
            "unavailable"
        } else {
            &s.presence
        }
    }

    /// Lets time act on a user's presence; returns whether others would see
    /// a difference.
    pub fn age(&self, user: &str) -> bool {
        if self.get(user).is_none() {
            return false;
        }
        // Aged under the same lock as the write, so a heartbeat that lands
        // meanwhile is not overwritten by a stale verdict.
        self.update(user, |s, now| {
            let aged = self.aged(s, now).to_owned();
            s.presence = aged;
        })
    }

    pub fn get(&self, user: &str) -> Option<PresenceState> {
        self.inner.lock().users.get(user).cloned()
    }

    /// The user's state when it is due to be written to Redis: it changed,
    /// or this process last wrote it more than `every` ago.
    pub fn take_write(&self, user: &str, changed: bool, every: Duration) -> Option<PresenceState> {
        let mut g = self.inner.lock();
        let now = now_ms();
        let last = g.written.get(user).copied().unwrap_or(0);
        if !changed && Duration::from_millis(now.saturating_sub(last)) < every {
            return None;
        }
        let state = g.users.get(user).cloned()?;
        g.written.insert(user.to_owned(), now);
        Some(state)
    }

    /// Users not offline whose heartbeat is recent, with their state.
    pub fn live(&self) -> Vec<(String, PresenceState)> {
        let g = self.inner.lock();
        g.users
            .iter()
            .filter(|(_, s)| s.presence != "offline" && self.aged(s, now_ms()) == s.presence)
            .map(|(u, s)| (u.clone(), s.clone()))
            .collect()
    }

    /// Takes a user's presence as another process reported it (or Redis
    /// holds it): the newer timestamps win; the state itself is theirs.
    /// Returns whether others would see a difference.
    pub fn apply(&self, user: &str, theirs: PresenceState, remote_serial: u64) -> bool {
        let mut g = self.inner.lock();
        let mirrored = mirrored_serial(g.serial, remote_serial);
        let entry = g
            .users
            .entry(user.to_owned())
            .or_insert_with(|| PresenceState::offline(0));
        let changed = !entry.looks_like(&theirs);
        entry.presence = theirs.presence;
        entry.status_msg = theirs.status_msg;
        entry.remote = theirs.remote;
        entry.last_active_ms = entry.last_active_ms.max(theirs.last_active_ms);
        entry.heartbeat_ms = entry.heartbeat_ms.max(theirs.heartbeat_ms);
        if changed {
            entry.serial = mirrored;
            g.serial = mirrored;
        }
        changed
    }

    /// A user's presence as their own server (another one) announced it.
    /// Returns whether others would see a difference.
    pub fn set_remote(
        &self,
        user: &str,
        presence: &str,
        status_msg: Option<String>,
        last_active_ago: u64,
    ) -> bool {
        self.update(user, |s, now| {
            s.remote = true;
            s.presence = presence.to_owned();
            s.status_msg = status_msg;
            s.last_active_ms = now.saturating_sub(last_active_ago);
            s.heartbeat_ms = now;
        })
    }

    /// Takes only the newer timestamps another process recorded (its
    /// heartbeats are not announced, only kept in Redis).
    pub fn merge_times(&self, user: &str, theirs: &PresenceState) {
        if let Some(e) = self.inner.lock().users.get_mut(user) {
            e.last_active_ms = e.last_active_ms.max(theirs.last_active_ms);
            e.heartbeat_ms = e.heartbeat_ms.max(theirs.heartbeat_ms);
        }
    }

    pub fn serial(&self) -> u64 {
        self.inner.lock().serial
    }

    /// m.presence events for `users` changed after `since` (all known when None).
    pub fn events_for(&self, users: &[String], since: Option<u64>) -> Vec<Value> {
        let g = self.inner.lock();
        users
            .iter()
            .filter_map(|u| g.users.get(u).map(|s| (u, s)))
            .filter(|(_, s)| since.is_none_or(|since| s.serial > since))
            .map(|(u, s)| presence_event(u, s))
            .collect()
    }
}

pub fn presence_content(s: &PresenceState) -> Value {
    let ago = now_ms().saturating_sub(s.last_active_ms);
    let mut c = json!({
        "presence": s.presence,
        "last_active_ago": ago,
        "currently_active": s.presence == "online",
    });
    if let Some(m) = &s.status_msg {
        c["status_msg"] = json!(m);
    }
    c
}

fn presence_event(user: &str, s: &PresenceState) -> Value {
    json!({"type": "m.presence", "sender": user, "content": presence_content(s)})
}

/// Typing and presence as every route sets them: kept here, told to the
/// other processes over the bus and to other servers and application
/// services, and aged by the sweeper (`spawn_sweepers`).
pub struct Ephemeral {
    store: Arc<dyn crate::store::MainStore>,
    server_name: ruma::OwnedServerName,
    pub typing: Typing,
    pub presence: Arc<Presence>,
    /// The bus to the server's other processes, when Redis is configured.
    pub(crate) bus: Option<Arc<crate::bus::Bus>>,
    pub(crate) tasks: crate::tasks::Tasks,
    pub(crate) notifier: Arc<crate::notifier::Notifier>,
    pub(crate) rooms: Arc<crate::rooms::Rooms>,
    pub(crate) to_appservices: Arc<crate::appservice::ToAppServices>,
    pub(crate) links: Arc<crate::Links>,
    pub(crate) appservices: Arc<crate::appservice::AppServices>,
    pub(crate) appservice_ephemeral: Arc<crate::appservice::EphemeralQueues>,
    /// Re-read when the bus wakes this process (`cluster.rs`).
    pub(crate) streams: Arc<crate::cluster::Streams>,
}

/// What `Ephemeral` is built from (`Hearth::wire`): named, as there are many.
pub(crate) struct EphemeralDeps {
    pub store: Arc<dyn crate::store::MainStore>,
    pub server_name: ruma::OwnedServerName,
    pub presence: Arc<Presence>,
    pub bus: Option<Arc<crate::bus::Bus>>,
    pub tasks: crate::tasks::Tasks,
    pub notifier: Arc<crate::notifier::Notifier>,
    pub rooms: Arc<crate::rooms::Rooms>,
    pub to_appservices: Arc<crate::appservice::ToAppServices>,
    pub links: Arc<crate::Links>,
    pub appservices: Arc<crate::appservice::AppServices>,
    pub appservice_ephemeral: Arc<crate::appservice::EphemeralQueues>,
    pub streams: Arc<crate::cluster::Streams>,
}

impl Ephemeral {
    pub(crate) fn new(deps: EphemeralDeps) -> Self {
        Self {
            store: deps.store,
            server_name: deps.server_name,
            typing: Typing::default(),
            presence: deps.presence,
            bus: deps.bus,
            tasks: deps.tasks,
            notifier: deps.notifier,
            rooms: deps.rooms,
            to_appservices: deps.to_appservices,
            links: deps.links,
            appservices: deps.appservices,
            appservice_ephemeral: deps.appservice_ephemeral,
            streams: deps.streams,
        }
    }

    /// Whether a user id belongs to this server.
    pub(crate) fn is_local(&self, user: &str) -> bool {
        crate::ids::user_on_server(user, &self.server_name)
    }

    /// A user's presence as another user asks for it: an unknown local user
    /// is 404; another server's user has what their server last told us, if
    /// anything.
    pub async fn user_presence(&self, user: &ruma::UserId) -> crate::Result<Option<PresenceState>> {
        if self.is_local(user.as_str()) && self.store.get_user(user.as_str()).await?.is_none() {
            return Err(crate::Error::not_found("Unknown user"));
        }
        Ok(self.presence_of(user.as_str()).await)
    }

    /// Expired typing notifications and presence that time changed must
    /// reach syncing clients as changes.
    pub(crate) fn spawn_sweepers(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut ticks: u64 = 0;
            loop {
                if tasks.until_stopped(tick.tick()).await.is_none() {
                    break;
                }
                ticks += 1;
                let Some(h) = weak.upgrade() else { break };
                if h.typing.sweep() {
                    h.notifier.notify();
                }
                if ticks.is_multiple_of(2) {
                    h.age_presence().await;
                }
                h.to_appservices.presence_to_appservices().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(presence: &str, last_active_ms: u64, heartbeat_ms: u64) -> PresenceState {
        PresenceState {
            presence: presence.into(),
            status_msg: None,
            last_active_ms,
            heartbeat_ms,
            serial: 0,
            remote: false,
        }
    }

    #[test]
    fn a_remote_user_keeps_their_servers_word_until_it_goes_quiet() {
        let p = Presence::default();
        let now = now_ms();
        let ttl = PresenceTimes::default().offline_after.as_millis() as u64;
        assert!(p.set_remote("@r:y", "online", Some("on a train".into()), 0));
        // Long idle and past our own heartbeat TTL: still their server's word.
        let mut quiet = state("online", now - 10 * ttl, now - 2 * ttl);
        quiet.remote = true;
        p.apply("@s:y", quiet, 0);
        assert!(p.due().is_empty(), "our clocks do not age remote users");
        assert_eq!(p.get("@s:y").map(|s| s.presence).as_deref(), Some("online"));
        // Not heard of for longer than servers wait between repeats: gone.
        let mut gone = state(
            "online",
            now,
            now - REMOTE_PRESENCE_TIMEOUT.as_millis() as u64 - 1,
        );
        gone.remote = true;
        p.apply("@q:y", gone, 0);
        assert_eq!(p.due(), vec!["@q:y".to_owned()]);
        assert!(p.age("@q:y"));
        assert_eq!(
            p.get("@q:y").map(|s| s.presence).as_deref(),
            Some("offline")
        );
        assert_eq!(
            p.get("@r:y").and_then(|s| s.status_msg).as_deref(),
            Some("on a train")
        );
    }

    #[test]
    fn polling_brings_an_offline_user_online_but_not_an_idle_one() {
        let p = Presence::default();
        assert!(p.sync("@a:x", "online"));
        assert_eq!(p.get("@a:x").map(|s| s.presence).as_deref(), Some("online"));
        assert!(p.sync("@a:x", "unavailable"));
        assert!(!p.sync("@a:x", "online"), "polling is not activity");
        assert_eq!(
            p.get("@a:x").map(|s| s.presence).as_deref(),
            Some("unavailable")
        );
        assert!(p.active("@a:x"), "an action is");
        assert!(
            !p.sync("@b:x", "offline"),
            "set_presence=offline changes nothing"
        );
        assert!(p.get("@b:x").is_none());
    }

    #[test]
    fn time_makes_users_idle_then_offline_and_each_change_moves_the_serial() {
        let p = Presence::default();
        let now = now_ms();
        let idle = PresenceTimes::default().idle_after.as_millis() as u64;
        let ttl = PresenceTimes::default().offline_after.as_millis() as u64;
        p.apply("@idle:x", state("online", now - idle - 1000, now), 0);
        p.apply("@gone:x", state("unavailable", now, now - ttl - 1000), 0);
        p.apply("@here:x", state("online", now, now), 0);
        let before = p.serial();
        let mut due = p.due();
        due.sort();
        assert_eq!(due, ["@gone:x", "@idle:x"]);
        assert!(p.age("@idle:x"));
        assert!(p.age("@gone:x"));
        assert!(!p.age("@here:x"));
        let get = |u: &str| p.get(u).map(|s| s.presence);
        assert_eq!(get("@idle:x").as_deref(), Some("unavailable"));
        assert_eq!(get("@gone:x").as_deref(), Some("offline"));
        assert!(p.due().is_empty());
        let changed = p.events_for(
            &["@idle:x".into(), "@gone:x".into(), "@here:x".into()],
            Some(before),
        );
        assert_eq!(changed.len(), 2, "{changed:?}");
    }

    #[test]
    fn a_heartbeat_heard_elsewhere_keeps_a_user_online() {
        let p = Presence::default();
        let now = now_ms();
        let ttl = PresenceTimes::default().offline_after.as_millis() as u64;
        p.apply("@a:x", state("online", now, now - ttl - 1000), 0);
        assert_eq!(p.due(), ["@a:x"]);
        p.merge_times("@a:x", &state("online", now, now));
        assert!(p.due().is_empty());
        assert!(!p.age("@a:x"));
        let serial = p.serial();
        assert!(
            !p.apply("@a:x", state("online", now, now), 0),
            "the same state again is no change"
        );
        assert_eq!(p.serial(), serial);
    }

    #[test]
    fn writes_to_redis_are_spaced_unless_something_changed() {
        let p = Presence::default();
        p.active("@a:x");
        let every = Duration::from_secs(60);
        assert!(
            p.take_write("@a:x", false, every).is_some(),
            "never written"
        );
        assert!(p.take_write("@a:x", false, every).is_none());
        assert!(p.take_write("@a:x", true, every).is_some());
        assert!(p.take_write("@nobody:x", true, every).is_none());
    }

    #[test]
    fn typing_from_elsewhere_counts_only_when_different() {
        let t = Typing::default();
        let until = now_ms() + 10_000;
        assert!(t.apply("!r:x", vec![("@a:x".into(), until)], 0));
        let serial = t.serial();
        assert!(!t.apply("!r:x", vec![("@a:x".into(), until)], 0));
        assert_eq!(t.serial(), serial);
        assert!(
            !t.apply("!other:x", vec![], 0),
            "nobody typing where nobody was"
        );
    }
}
