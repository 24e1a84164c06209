//! The loop that drains one destination's rows of the durable outgoing
//! queue (`outgoing.rs`): read a transaction, send it, acknowledge its rows
//! only once the destination took it, and retry the same transaction with
//! backoff while it fails. Servers (the federation crate) and application
//! services share it; each says only how to build and send a transaction.
//! One loop per destination keeps each destination's order, and a
//! destination that is down delays nothing but its own queue.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use tokio::sync::Notify;

use crate::{backoff::Backoff, tasks::Tasks};

/// Whatever went wrong reading or sending, for the log.
pub type SendError = Box<dyn std::error::Error + Send + Sync>;

/// One transaction on its way to a destination.
pub struct Transaction {
    /// Its id: the same on every retry, so the destination can tell a
    /// repeat from new work.
    pub id: String,
    pub body: Value,
    /// Per source (database), the newest queue row it carries; cleared
    /// once it is delivered (empty when it carries no rows).
    pub ack: Vec<(usize, i64)>,
}

/// One destination's side of a queue sender.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync + 'static {
    /// Notified when something is queued for the destination.
    fn wake(&self) -> &Notify;

    /// The next transaction: the destination's oldest queued rows and what
    /// rides along with them; `None` when there is nothing to send.
    async fn next(&self) -> Result<Option<Transaction>, SendError>;

    /// Sends a transaction. `Ok` when the destination took it, or refused it
    /// for good (kept, it would block everything behind it); `Err` to send
    /// it again after a wait.
    async fn send(&self, txn: &Transaction) -> Result<(), SendError>;
}

/// Where delivered rows are cleared: the outgoing queue (`Outgoing`).
#[async_trait::async_trait]
pub trait Acknowledge: Send + Sync + 'static {
    /// Drops `destination`'s rows up to `upto` (per source), delivered.
    async fn ack(&self, destination: &str, upto: &[(usize, i64)]) -> crate::Result<()>;
}

#[async_trait::async_trait]
impl Acknowledge for crate::outgoing::Outgoing {
    async fn ack(&self, destination: &str, upto: &[(usize, i64)]) -> crate::Result<()> {
        self.outgoing_ack(destination, upto).await
    }
}

/// How a queue sender paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// A look at the queue even without a wake-up: one lost to a race, or
    /// rows another process queued.
    pub poll: Duration,
    /// The wait after the queue could not be read.
    pub read_retry: Duration,
    /// The waits while the destination fails.
    pub backoff: Backoff,
}

/// Sends `destination` (its key in the outgoing queue) its queue until
/// `tasks` stop; spawn it through the same `tasks`. What is not acknowledged
/// stays queued for the next start.
pub async fn run(
    tasks: Tasks,
    queue: Arc<impl Acknowledge>,
    destination: String,
    pacing: Pacing,
    to: impl Deliver,
) {
    let mut failures: u32 = 0;
    let mut delays = pacing.backoff.delays();
    // The transaction being delivered: retried as it is, same id and body,
    // until the destination takes it.
    let mut pending: Option<Transaction> = None;
    loop {
        // Registered before the queue is read, so a wake-up in between is
        // not lost.
        let woken = to.wake().notified();
        let txn = match pending.take() {
            Some(t) => t,
            None => match to.next().await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    let waited = tokio::time::timeout(pacing.poll, woken);
                    if tasks.until_stopped(waited).await.is_none() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%destination, error = %e, "cannot read the outgoing queue");
                    if !tasks.sleep(pacing.read_retry).await {
                        return;
                    }
                    continue;
                }
            },
        };
        match to.send(&txn).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(%destination, after = failures, "destination reachable again");
                }
                failures = 0;
                delays = pacing.backoff.delays();
                if !txn.ack.is_empty()
                    && let Err(e) = queue.ack(&destination, &txn.ack).await
                {
                    tracing::warn!(%destination, error = %e, "cannot acknowledge a delivered transaction");
                }
            }
            Err(e) => {
                failures += 1;
                let delay = delays.next_wait();
                if failures == 1 {
                    tracing::warn!(%destination, error = %e, "destination unreachable; retrying with backoff");
                } else {
                    tracing::debug!(%destination, failures, ?delay, "destination still unreachable");
                }
                pending = Some(txn);
                if !tasks.sleep(delay).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;

    /// What the sender did, in order.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl Log {
        fn push(&self, line: String) {
            self.0.lock().push(line);
        }
        fn lines(&self) -> Vec<String> {
            self.0.lock().clone()
        }
    }

    #[async_trait::async_trait]
    impl Acknowledge for Log {
        async fn ack(&self, destination: &str, upto: &[(usize, i64)]) -> crate::Result<()> {
            self.push(format!("ack {destination} {upto:?}"));
            Ok(())
        }
    }

    /// A destination whose queue and answers the test sets.
    struct Scripted {
        log: Arc<Log>,
        wake: Notify,
        queued: Mutex<VecDeque<Transaction>>,
        /// How many sends fail before one succeeds.
        failures_left: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl Deliver for Arc<Scripted> {
        fn wake(&self) -> &Notify {
            &self.wake
        }

        async fn next(&self) -> Result<Option<Transaction>, SendError> {
            Ok(self.queued.lock().pop_front())
        }

        async fn send(&self, txn: &Transaction) -> Result<(), SendError> {
            self.log.push(format!("send {}", txn.id));
            let mut left = self.failures_left.lock();
            if *left > 0 {
                *left -= 1;
                return Err("unreachable".into());
            }
            Ok(())
        }
    }

    fn txn(id: &str, row: i64) -> Transaction {
        Transaction {
            id: id.into(),
            body: json!({}),
            ack: vec![(0, row)],
        }
    }

    async fn until(log: &Log, lines: usize) {
        for _ in 0..500 {
            if log.lines().len() >= lines {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn retries_the_same_transaction_and_acks_only_after_success() {
        let log = Arc::new(Log::default());
        let to = Arc::new(Scripted {
            log: log.clone(),
            wake: Notify::new(),
            queued: Mutex::new(VecDeque::from([txn("a", 1), txn("b", 2)])),
            failures_left: Mutex::new(2),
        });
        let pacing = Pacing {
            poll: Duration::from_secs(60),
            read_retry: Duration::from_millis(10),
            backoff: Backoff::doubling(Duration::from_millis(1), Duration::from_millis(4)),
        };
        let tasks = Tasks::default();
        tasks.spawn(run(
            tasks.clone(),
            log.clone(),
            "d".into(),
            pacing,
            to.clone(),
        ));
        until(&log, 6).await;
        assert_eq!(
            log.lines(),
            [
                "send a",
                "send a",
                "send a",
                "ack d [(0, 1)]",
                "send b",
                "ack d [(0, 2)]"
            ]
        );
        // Idle until woken (the poll is a minute away).
        to.queued.lock().push_back(txn("c", 3));
        to.wake.notify_one();
        until(&log, 8).await;
        assert_eq!(log.lines()[6..], ["send c", "ack d [(0, 3)]"]);
        assert!(
            tasks.stop(Duration::from_secs(5)).await,
            "the sender stops at shutdown"
        );
    }
}
