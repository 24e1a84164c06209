//! Wakes waiting syncs when something they can see may have changed.
//!
//! Each user has a version counter; a change in a room bumps the counters of
//! that room's members only, so a message in one room does not make every
//! syncing client on the server recompute. A global counter covers changes
//! whose audience is costly to compute (presence, typing expiry). A waiter marks
//! both counters seen *before* computing its response and waits for either to
//! move afterwards, so no wake-up is lost.
//!
//! With a bus (several processes), every wake-up is also told to the other
//! processes, which wake their own waiters (`wake_local*`).

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::bus::{Bus, BusMessage};

pub struct Notifier {
    global: watch::Sender<u64>,
    users: Mutex<HashMap<String, watch::Sender<u64>>>,
    bus: OnceLock<Arc<Bus>>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self {
            global: watch::channel(0).0,
            users: Mutex::default(),
            bus: OnceLock::new(),
        }
    }
}

pub struct Subscription {
    global: watch::Receiver<u64>,
    user: watch::Receiver<u64>,
}

impl Notifier {
    /// Tells the other processes of every wake-up from now on.
    pub fn attach_bus(&self, bus: Arc<Bus>) {
        let _ = self.bus.set(bus);
    }

    /// Wakes every waiter, on every process.
    pub fn notify(&self) {
        self.wake_all_local();
        if let Some(bus) = self.bus.get() {
            bus.publish(BusMessage::WakeAll);
        }
    }

    /// Wakes the waiters of these users only, on every process.
    pub fn notify_users<'a>(&self, users: impl IntoIterator<Item = &'a str>) {
        match self.bus.get() {
            Some(bus) => {
                let users: Vec<String> = users.into_iter().map(str::to_owned).collect();
                self.wake_local(users.iter().map(String::as_str));
                bus.publish(BusMessage::Wake { users });
            }
            None => self.wake_local(users),
        }
    }

    /// Wakes this process's waiters.
    pub fn wake_all_local(&self) {
        self.global.send_modify(|v| *v += 1);
    }

    /// Wakes this process's waiters of these users.
    pub fn wake_local<'a>(&self, users: impl IntoIterator<Item = &'a str>) {
        let map = self.users.lock();
        for u in users {
            if let Some(tx) = map.get(u) {
                tx.send_modify(|v| *v += 1);
            }
        }
    }

    pub fn subscribe(&self, user: &str) -> Subscription {
        let user_rx = {
            let mut map = self.users.lock();
            // Drop senders nobody listens to any more, so the map tracks
            // only users with a live sync.
            if map.len() > 1024 && map.len().is_power_of_two() {
                map.retain(|_, tx| tx.receiver_count() > 0);
            }
            map.entry(user.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        Subscription {
            global: self.global.subscribe(),
            user: user_rx,
        }
    }
}

impl Subscription {
    /// Marks everything so far as seen; call before computing a response.
    pub fn mark_seen(&mut self) {
        self.global.borrow_and_update();
        self.user.borrow_and_update();
    }

    /// Waits for a change after the last `mark_seen`, or the timeout.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        tokio::select! {
            r = self.global.changed() => r.is_ok(),
            r = self.user.changed() => r.is_ok(),
            _ = tokio::time::sleep(timeout) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_addressed_users_wake() {
        let n = Notifier::default();
        let mut alice = n.subscribe("@alice:x");
        let mut bob = n.subscribe("@bob:x");
        alice.mark_seen();
        bob.mark_seen();
        n.notify_users(["@alice:x"]);
        assert!(alice.wait(Duration::from_millis(50)).await);
        assert!(!bob.wait(Duration::from_millis(50)).await);
        n.notify();
        assert!(bob.wait(Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_change_before_waiting_is_not_lost() {
        let n = Notifier::default();
        let mut s = n.subscribe("@a:x");
        s.mark_seen();
        n.notify_users(["@a:x"]);
        assert!(s.wait(Duration::from_millis(10)).await);
    }
}
