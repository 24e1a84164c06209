//! A user's devices as the user manages them: listing and renaming (deletion,
//! which takes keys and inboxes along, lives with them in `e2ee/to_device.rs`).

use ruma::UserId;

use std::sync::Arc;

use crate::{
    Error, Result,
    e2ee::E2ee,
    store::{DeviceRecord, MainStore},
};

/// A user's devices as the user manages them.
pub struct Devices {
    store: Arc<dyn MainStore>,
    /// Tells those who track the user of a renamed device.
    e2ee: Arc<E2ee>,
}

impl Devices {
    pub(crate) fn new(store: Arc<dyn MainStore>, e2ee: Arc<E2ee>) -> Self {
        Self { store, e2ee }
    }

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
        if let Some(name) = name {
            crate::input::check_text("display_name", name)?;
        }
        if !self
            .store
            .rename_device(user.as_str(), device_id, name)
            .await?
        {
            return Err(Error::not_found("Unknown device"));
        }
        // The name is part of what others see of the device (`/keys/query`).
        self.e2ee.device_renamed(user, device_id).await
    }
}
