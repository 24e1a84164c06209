//! A local user's device list as other servers fetch it
//! (`/user/devices/{userId}` over federation).

use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use super::E2ee;
use crate::Result;

impl E2ee {
    /// The user's devices with their keys and names, the device-list
    /// position they are as of (`stream_id`), and the user's master and
    /// self-signing keys. Devices without a device record are left out.
    pub async fn device_list_for_server(&self, user: &UserId) -> Result<ServerDeviceList> {
        let names = self.device_names(user.as_str()).await?;
        let devices = self
            .store
            .device_keys(user.as_str())
            .await?
            .into_iter()
            .filter_map(|(device_id, keys)| {
                let display_name = names.get(&device_id)?.clone();
                Some(ServerDevice {
                    device_id,
                    keys,
                    display_name,
                })
            })
            .collect();
        let mut out = ServerDeviceList {
            user_id: user.to_owned(),
            stream_id: self.store.device_list_position(user.as_str()).await?,
            devices,
            master_key: None,
            self_signing_key: None,
        };
        for (kind, key) in self.store.cross_signing_keys(user.as_str()).await? {
            match kind.as_str() {
                "master" => out.master_key = Some(key),
                "self_signing" => out.self_signing_key = Some(key),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A local user's device list for another server; the keys are as the
/// devices uploaded them.
#[derive(Debug)]
pub struct ServerDeviceList {
    pub user_id: OwnedUserId,
    /// The device-list position this is as of.
    pub stream_id: i64,
    pub devices: Vec<ServerDevice>,
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
}

/// One device with keys in a `ServerDeviceList`.
#[derive(Debug)]
pub struct ServerDevice {
    pub device_id: String,
    pub keys: Value,
    pub display_name: Option<String>,
}
