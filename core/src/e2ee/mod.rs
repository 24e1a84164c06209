//! End-to-end encryption, server side (spec/e2ee.md): keys, to-device
//! messages, device lists and key backup. The server relays and stores what
//! devices publish; it never needs a message's plaintext.

pub mod backup;
pub mod keys;
pub mod to_device;

use std::{collections::HashMap, sync::Mutex};

/// What this process remembers between a device's syncs.
#[derive(Default)]
pub struct E2eeState {
    /// (user, device) → the newest to-device position handed to the device
    /// and not yet known deleted (`i64::MAX`: nothing pending).
    pub(crate) delivered: Mutex<HashMap<(String, String), i64>>,
}
