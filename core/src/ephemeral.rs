//! Typing and presence: in-process state with serial numbers, so sync can ask
//! "what changed since position N". Nothing here is durable by design.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::ids::now_ms;

#[derive(Default)]
struct TypingInner {
    serial: u64,
    /// room -> (user -> expiry)
    rooms: HashMap<String, HashMap<String, Instant>>,
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
        let changed = match typing {
            Some(t) => users
                .insert(user.to_owned(), Instant::now() + t.min(MAX_TYPING_TIMEOUT))
                .is_none(),
            None => users.remove(user).is_some(),
        };
        if changed {
            g.serial += 1;
            let s = g.serial;
            g.changed.insert(room.to_owned(), s);
        }
        changed
    }

    /// Drops expired entries; returns true when anything expired.
    pub fn sweep(&self) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        let now = Instant::now();
        let mut expired_rooms = vec![];
        for (room, users) in g.rooms.iter_mut() {
            let before = users.len();
            users.retain(|_, exp| *exp > now);
            if users.len() != before {
                expired_rooms.push(room.clone());
            }
        }
        for room in &expired_rooms {
            g.serial += 1;
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
        let now = Instant::now();
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

impl Presence {
    /// Sets a user's presence explicitly (PUT status or sync's set_presence).
    /// Returns true when what others see changed.
    pub fn set(&self, user: &str, presence: &str, status_msg: Option<Option<String>>) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        g.serial += 1;
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
            g.serial -= 1;
        }
        changed
    }

    /// Records activity (a send, a sync); brings an idle user back online.
    pub fn touch(&self, user: &str) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        let now = now_ms();
        let next = g.serial + 1;
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
    if s.presence == "online"
        && now_ms().saturating_sub(s.last_active_ms) > IDLE_AFTER.as_millis() as u64
    {
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
