//! End-to-end encryption, server side (spec/e2ee.md): keys, to-device
//! messages, device lists and key backup. The server relays and stores what
//! devices publish; it never needs a message's plaintext.

pub mod backup;
mod device_list;
pub mod keys;
pub mod to_device;

use std::collections::HashMap;

use parking_lot::Mutex;

/// What this process remembers between a device's syncs.
#[derive(Default)]
pub struct E2eeState {
    /// (user, device) → the newest to-device position handed to the device
    /// and not yet known deleted (`i64::MAX`: nothing pending).
    pub(crate) delivered: Mutex<HashMap<(String, String), i64>>,
    /// (user, device) → its one-time key counts and unused fallback key
    /// algorithms, as every sync reports them. Only uploads and claims change
    /// them, and with one process both pass through here; with several, a
    /// claim may happen elsewhere, so the cache is not used.
    counts: Mutex<HashMap<(String, String), KeyCounts>>,
}

/// One-time key counts per algorithm, and algorithms with an unused fallback
/// key.
pub type KeyCounts = (Vec<(String, i64)>, Vec<String>);

/// Devices whose counts are cached before the cache starts over.
const MAX_CACHED_COUNTS: usize = 100_000;

impl crate::Hearth {
    /// A device's key counts, from the cache when it can be trusted.
    pub(crate) async fn key_counts(&self, user: &str, device: &str) -> crate::Result<KeyCounts> {
        let key = (user.to_owned(), device.to_owned());
        let cacheable = self.bus.is_none();
        if cacheable && let Some(c) = self.e2ee.counts.lock().get(&key).cloned() {
            return Ok(c);
        }
        let counts = self.store.key_counts(user, device).await?;
        if cacheable {
            let mut m = self.e2ee.counts.lock();
            if m.len() >= MAX_CACHED_COUNTS {
                m.clear();
            }
            m.insert(key, counts.clone());
        }
        Ok(counts)
    }

    /// The device's keys were uploaded or claimed: count again next time.
    pub(crate) fn forget_key_counts(&self, user: &str, device: &str) {
        self.e2ee
            .counts
            .lock()
            .remove(&(user.to_owned(), device.to_owned()));
    }
}
