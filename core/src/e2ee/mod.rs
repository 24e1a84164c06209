//! End-to-end encryption, server side (spec/e2ee.md): keys, to-device
//! messages, device lists and key backup. The server relays and stores what
//! devices publish; it never needs a message's plaintext.

pub mod backup;
pub mod device_list;
pub mod keys;
pub mod to_device;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;

use ruma::OwnedServerName;

use crate::{Links, notifier::Notifier, push::Push, store::MainStore};

/// Keys, to-device inboxes and device lists (`keys.rs`, `to_device.rs`,
/// `device_list.rs`): what devices publish to each other through the server.
pub struct E2ee {
    store: Arc<dyn MainStore>,
    notifier: Arc<Notifier>,
    /// Federation, for other servers' keys and device-list updates.
    links: Arc<Links>,
    /// A deleted device's pushers go with it.
    push: Arc<Push>,
    server_name: OwnedServerName,
    /// No other process claims keys (no bus): key counts may be cached.
    cacheable: bool,
    state: E2eeState,
}

/// What this process remembers between a device's syncs.
#[derive(Default)]
struct E2eeState {
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

impl E2ee {
    pub(crate) fn new(
        store: Arc<dyn MainStore>,
        notifier: Arc<Notifier>,
        links: Arc<Links>,
        push: Arc<Push>,
        server_name: OwnedServerName,
        cacheable: bool,
    ) -> Self {
        Self {
            store,
            notifier,
            links,
            push,
            server_name,
            cacheable,
            state: E2eeState::default(),
        }
    }

    /// Whether a user id belongs to this server.
    fn is_local(&self, user: &str) -> bool {
        crate::ids::user_on_server(user, &self.server_name)
    }

    /// Each of the user's devices with its display name.
    pub(crate) async fn device_names(
        &self,
        user: &str,
    ) -> crate::Result<std::collections::BTreeMap<String, Option<String>>> {
        Ok(self
            .store
            .list_devices(user)
            .await?
            .into_iter()
            .map(|d| (d.device_id, d.display_name))
            .collect())
    }

    /// A device's key counts, from the cache when it can be trusted.
    pub(crate) async fn key_counts(&self, user: &str, device: &str) -> crate::Result<KeyCounts> {
        let key = (user.to_owned(), device.to_owned());
        let cacheable = self.cacheable;
        if cacheable && let Some(c) = self.state.counts.lock().get(&key).cloned() {
            return Ok(c);
        }
        let counts = self.store.key_counts(user, device).await?;
        if cacheable {
            let mut m = self.state.counts.lock();
            if m.len() >= MAX_CACHED_COUNTS {
                m.clear();
            }
            m.insert(key, counts.clone());
        }
        Ok(counts)
    }

    /// The device's keys were uploaded or claimed: count again next time.
    pub(crate) fn forget_key_counts(&self, user: &str, device: &str) {
        self.state
            .counts
            .lock()
            .remove(&(user.to_owned(), device.to_owned()));
    }
}
