//! A user's devices as the user manages them: listing and renaming (deletion,
//! which takes keys and inboxes along, lives with them in `e2ee/to_device.rs`).

use ruma::UserId;

use crate::{Error, Hearth, Result, store::DeviceRecord};

impl Hearth {
    pub async fn devices(&self, user: &UserId) -> Result<Vec<DeviceRecord>> {
        self.store.list_devices(user.as_str()).await
    }

    /// One of the user's devices, or 404.
    pub async fn device(&self, user: &UserId, device_id: &str) -> Result<DeviceRecord> {
        self.store
            .get_device(user.as_str(), device_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown device"))
    }

    /// Renames one of the user's devices (404 if it has no such device).
    pub async fn rename_device(
        &self,
        user: &UserId,
        device_id: &str,
        name: Option<&str>,
    ) -> Result<()> {
        if !self
            .store
            .rename_device(user.as_str(), device_id, name)
            .await?
        {
            return Err(Error::not_found("Unknown device"));
        }
        // The name is part of what others see of the device (`/keys/query`).
        self.device_renamed(user, device_id).await
    }
}

impl Hearth {
    /// Each of the user's devices with its display name.
    pub(crate) async fn device_names(
        &self,
        user: &str,
    ) -> Result<std::collections::BTreeMap<String, Option<String>>> {
        Ok(self
            .store
            .list_devices(user)
            .await?
            .into_iter()
            .map(|d| (d.device_id, d.display_name))
            .collect())
    }
}
