//! The server's background tasks (senders, sweepers, renewals, the bus), so
//! that shutdown can tell them to stop and wait until they have.

use std::{future::Future, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Spawns background work and stops it on shutdown. A loop checks
/// [`Tasks::until_stopped`] or [`Tasks::sleep`] only where it waits (for a
/// wake-up, a timer, a message), never around a write: a task stops between
/// two pieces of work, not in the middle of one.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Runs `task` in the background; shutdown waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Waits for `wait` unless shutdown comes first (then `None`).
    pub async fn until_stopped<T>(&self, wait: impl Future<Output = T>) -> Option<T> {
        self.stop.run_until_cancelled(wait).await
    }

    /// Sleeps for `time`; false when shutdown cut the sleep short.
    pub async fn sleep(&self, time: Duration) -> bool {
        self.until_stopped(tokio::time::sleep(time)).await.is_some()
    }

    /// Whether shutdown has begun.
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Tells every task to stop and waits up to `grace` for them; false
    /// when some were still running then.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// How many tasks are still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}
