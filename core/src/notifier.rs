//! Wakes waiting syncs when anything visible may have changed. A single version
//! counter keeps it simple and lossless: a waiter compares the version it saw
//! before computing its response with the current one, so no wake-up is missed.

use std::time::Duration;

use tokio::sync::watch;

pub struct Notifier {
    tx: watch::Sender<u64>,
}

impl Default for Notifier {
    fn default() -> Self {
        let (tx, _rx) = watch::channel(0);
        Self { tx }
    }
}

impl Notifier {
    pub fn notify(&self) {
        self.tx.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Waits until a change newer than the receiver's last-seen version, or the timeout.
    pub async fn wait(rx: &mut watch::Receiver<u64>, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, rx.changed()).await,
            Ok(Ok(()))
        )
    }
}
