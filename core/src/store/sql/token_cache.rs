//! Access tokens seen recently, so authenticating a request costs no query.
//!
//! Any token removal empties the cache. A lookup that raced with a removal
//! must not put the removed token back, so entries are only added when no
//! removal happened while the lookup was reading the database.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Entries kept before the cache starts over.
const MAX_TOKENS: usize = 100_000;

#[derive(Default)]
pub(crate) struct TokenCache {
    map: Mutex<HashMap<String, (String, String)>>,
    removals: AtomicU64,
}

impl TokenCache {
    pub(crate) fn get(&self, token_hash: &str) -> Option<(String, String)> {
        self.map.lock().ok()?.get(token_hash).cloned()
    }

    /// Take before reading the database; pass to `insert` after.
    pub(crate) fn generation(&self) -> u64 {
        self.removals.load(Ordering::Acquire)
    }

    pub(crate) fn insert(&self, generation: u64, token_hash: &str, owner: (String, String)) {
        let Ok(mut map) = self.map.lock() else { return };
        // Checked under the lock, which `forget_all` also takes.
        if self.removals.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= MAX_TOKENS {
            map.clear();
        }
        map.insert(token_hash.to_owned(), owner);
    }

    /// Call after the removal of one device's tokens has committed.
    pub(crate) fn forget_device(&self, user_id: &str, device_id: &str) {
        if let Ok(mut map) = self.map.lock() {
            self.removals.fetch_add(1, Ordering::AcqRel);
            map.retain(|_, (u, d)| u != user_id || d != device_id);
        } else {
            self.removals.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Call after a token removal has committed.
    pub(crate) fn forget_all(&self) {
        if let Ok(mut map) = self.map.lock() {
            self.removals.fetch_add(1, Ordering::AcqRel);
            map.clear();
        } else {
            self.removals.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_racing_a_removal_is_not_cached() {
        let c = TokenCache::default();
        let owner = ("@a:hs".to_owned(), "DEV".to_owned());
        let g = c.generation();
        c.forget_all();
        c.insert(g, "h", owner.clone());
        assert_eq!(c.get("h"), None);
        let g = c.generation();
        c.insert(g, "h", owner.clone());
        assert_eq!(c.get("h"), Some(owner));
        c.insert(
            c.generation(),
            "other",
            ("@b:hs".to_owned(), "DEV".to_owned()),
        );
        c.forget_device("@a:hs", "DEV");
        assert_eq!(c.get("h"), None);
        assert!(c.get("other").is_some());
        c.forget_all();
        assert_eq!(c.get("other"), None);
    }
}
