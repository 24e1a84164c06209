//! Typing and presence: in-process state with serial numbers, so sync can ask
//! "what changed since position N". Nothing here is durable by design. With
//! several processes, each holds a mirror kept in step over the bus
//! (`cluster.rs`), so expiries are wall-clock milliseconds and serials are
//! clock-based (never below the current time in microseconds), which keeps a
//! token from one process meaningful on another without a shared counter.

use std::{collections::HashMap, sync::Mutex, time::Duration};

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
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
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
        let Ok(g) = self.inner.lock() else {
            return vec![];
        };
        g.rooms
            .get(room)
            .map(|u| u.iter().map(|(u, e)| (u.clone(), *e)).collect())
            .unwrap_or_default()
    }

    /// Takes a room's typing users as another process reported them.
    pub fn apply(&self, room: &str, users: Vec<(String, u64)>, serial: u64) {
        let Ok(mut g) = self.inner.lock() else { return };
        g.serial = mirrored_serial(g.serial, serial);
        let s = g.serial;
        g.rooms.insert(room.to_owned(), users.into_iter().collect());
        g.changed.insert(room.to_owned(), s);
    }

    /// Drops expired entries; returns true when anything expired.
    pub fn sweep(&self) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
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
        self.inner.lock().map(|g| g.serial).unwrap_or(0)
    }

    /// The m.typing event for a room if it changed after `since` (or always when `since` is None).
    pub fn event_for(&self, room: &str, since: Option<u64>) -> Option<Value> {
        let g = self.inner.lock().ok()?;
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

#[derive(Clone, Debug)]
pub struct PresenceState {
    pub presence: String,
    pub status_msg: Option<String>,
    pub last_active_ms: u64,
    pub serial: u64,
}

#[derive(Default)]
struct PresenceInner {
    serial: u64,
    users: HashMap<String, PresenceState>,
}

#[derive(Default)]
pub struct Presence {
    inner: Mutex<PresenceInner>,
}

/// After this long without activity an online user shows as unavailable.
pub const IDLE_AFTER: Duration = Duration::from_secs(300);
/// After this long without a heartbeat (a sync, a send, a presence update)
/// a user shows as offline: their clients are gone.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(900);

impl Presence {
    /// Sets a user's presence explicitly (PUT status or sync's set_presence).
    /// Returns true when what others see changed.
    pub fn set(&self, user: &str, presence: &str, status_msg: Option<Option<String>>) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        let previous = g.serial;
        g.serial = next_serial(previous);
        let serial = g.serial;
        let now = now_ms();
        let entry = g
            .users
            .entry(user.to_owned())
            .or_insert_with(|| PresenceState {
                presence: "offline".into(),
                status_msg: None,
                last_active_ms: now,
                serial,
            });
        let msg_changed = status_msg.as_ref().is_some_and(|m| *m != entry.status_msg);
        let changed = entry.presence != presence || msg_changed;
        entry.presence = presence.to_owned();
        if let Some(m) = status_msg {
            entry.status_msg = m;
        }
        if presence == "online" {
            entry.last_active_ms = now;
        }
        if changed {
            entry.serial = serial;
        } else {
            g.serial = previous;
        }
        changed
    }

    /// Records activity (a send, a sync); brings an idle user back online.
    pub fn touch(&self, user: &str) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        let now = now_ms();
        let next = next_serial(g.serial);
        let mut changed = false;
        if let Some(e) = g.users.get_mut(user) {
            let idle = now.saturating_sub(e.last_active_ms) > IDLE_AFTER.as_millis() as u64;
            e.last_active_ms = now;
            if e.presence == "unavailable" || (e.presence == "online" && idle) {
                e.presence = "online".into();
                e.serial = next;
                changed = true;
            }
        }
        if changed {
            g.serial = next;
        }
        changed
    }

    pub fn get(&self, user: &str) -> Option<PresenceState> {
        let g = self.inner.lock().ok()?;
        g.users.get(user).cloned().map(effective)
    }

    /// A user's presence as stored (not aged), to tell other processes.
    pub fn snapshot(&self, user: &str) -> Option<PresenceState> {
        self.inner.lock().ok()?.users.get(user).cloned()
    }

    /// Takes a user's presence as another process reported it.
    pub fn apply(&self, user: &str, mut state: PresenceState) {
        let Ok(mut g) = self.inner.lock() else { return };
        g.serial = mirrored_serial(g.serial, state.serial);
        state.serial = g.serial;
        g.users.insert(user.to_owned(), state);
    }

    pub fn serial(&self) -> u64 {
        self.inner.lock().map(|g| g.serial).unwrap_or(0)
    }

    /// m.presence events for `users` changed after `since` (all known when None).
    pub fn events_for(&self, users: &[String], since: Option<u64>) -> Vec<Value> {
        let Ok(g) = self.inner.lock() else {
            return vec![];
        };
        users
            .iter()
            .filter_map(|u| g.users.get(u).map(|s| (u, s)))
            .filter(|(_, s)| since.is_none_or(|since| s.serial > since))
            .map(|(u, s)| presence_event(u, &effective(s.clone())))
            .collect()
    }
}

fn effective(mut s: PresenceState) -> PresenceState {
    let quiet = now_ms().saturating_sub(s.last_active_ms);
    if s.presence != "offline" && quiet > OFFLINE_AFTER.as_millis() as u64 {
        s.presence = "offline".into();
    } else if s.presence == "online" && quiet > IDLE_AFTER.as_millis() as u64 {
        s.presence = "unavailable".into();
    }
    s
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
