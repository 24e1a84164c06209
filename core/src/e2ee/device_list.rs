//! A local user's device list as other servers fetch it
//! (`/user/devices/{userId}` over federation).

use ruma::UserId;
use serde_json::{Value, json};

use super::E2ee;
use crate::Result;

impl E2ee {
    /// The user's devices with their keys and names, the device-list
    /// position they are as of (`stream_id`), and the user's master and
    /// self-signing keys. Devices without a device record are left out.
    pub async fn device_list_for_server(&self, user: &UserId) -> Result<Value> {
        let names = self.device_names(user.as_str()).await?;
        let devices: Vec<Value> = self
            .store
            .device_keys(user.as_str())
            .await?
            .into_iter()
            .filter(|(d, _)| names.contains_key(d))
            .map(|(device, keys)| {
                let mut d = json!({"device_id": device, "keys": keys});
                if let Some(Some(name)) = names.get(&device) {
                    d["device_display_name"] = json!(name);
                }
                d
            })
            .collect();
        let mut out = json!({
            "user_id": user,
            "stream_id": self.store.device_list_position(user.as_str()).await?,
            "devices": devices,
        });
        for (kind, key) in self.store.cross_signing_keys(user.as_str()).await? {
            match kind.as_str() {
                "master" => out["master_key"] = key,
                "self_signing" => out["self_signing_key"] = key,
                _ => {}
            }
        }
        Ok(out)
    }
}
