//! Rows this process reads on every request (access tokens, a user's
//! memberships), kept in memory. This process is the database's only writer,
//! so it knows every change: each write that changes a cached row forgets it.
//!
//! A read that raced with a change must not put the old row back, so a read
//! takes a generation before querying and its result is only kept if no
//! change happened meanwhile.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use parking_lot::Mutex;

pub(crate) struct ReadCache<K, V> {
    map: Mutex<HashMap<K, V>>,
    changes: AtomicU64,
    capacity: usize,
    /// Off when other processes write the database too (their changes are
    /// not seen here).
    enabled: AtomicBool,
}

impl<K: Eq + Hash, V: Clone> ReadCache<K, V> {
    /// Holds at most `capacity` entries; when full it starts over.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            capacity,
            enabled: AtomicBool::new(true),
        }
    }

    /// Stops caching and forgets everything.
    pub(crate) fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.map.lock().clear();
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().get(key).cloned()
    }

    /// Take before reading the database; pass to `insert` after.
    pub(crate) fn generation(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub(crate) fn insert(&self, generation: u64, key: K, value: V) {
        let mut map = self.map.lock();
        // Checked under the lock, which every `forget_*` also takes.
        if self.changes.load(Ordering::Acquire) != generation
            || !self.enabled.load(Ordering::Acquire)
        {
            return;
        }
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key, value);
    }

    /// Call after a change to `key` has committed.
    pub(crate) fn forget<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.forget_where(|k, _| k.borrow() == key);
    }

    /// Call after a change to every entry matching `f` has committed.
    pub(crate) fn forget_where(&self, mut f: impl FnMut(&K, &V) -> bool) {
        let mut map = self.map.lock();
        self.changes.fetch_add(1, Ordering::AcqRel);
        map.retain(|k, v| !f(k, v));
    }

    /// Call after a change that may touch any entry has committed.
    pub(crate) fn forget_all(&self) {
        self.forget_where(|_, _| true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_racing_a_change_is_not_kept() {
        let c: ReadCache<String, (String, String)> = ReadCache::new(10);
        let owner = ("@a:hs".to_owned(), "DEV".to_owned());
        let g = c.generation();
        c.forget_all();
        c.insert(g, "h".into(), owner.clone());
        assert_eq!(c.get("h"), None);
        c.insert(c.generation(), "h".into(), owner.clone());
        assert_eq!(c.get("h"), Some(owner));
        c.insert(
            c.generation(),
            "other".into(),
            ("@b:hs".into(), "DEV".into()),
        );
        c.forget_where(|_, (u, d)| u == "@a:hs" && d == "DEV");
        assert_eq!(c.get("h"), None);
        assert!(c.get("other").is_some());
        c.forget("other");
        assert_eq!(c.get("other"), None);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let c: ReadCache<u32, u32> = ReadCache::new(2);
        c.insert(c.generation(), 1, 1);
        c.insert(c.generation(), 2, 2);
        c.insert(c.generation(), 3, 3);
        assert_eq!(c.get(&1), None);
        assert_eq!(c.get(&3), Some(3));
    }
}
