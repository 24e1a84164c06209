//! Group commit: events from every room share one writer task, which commits
//! whatever is queued in one transaction (one fsync) and then answers each
//! sender. Under load the fsync is paid once per batch instead of once per
//! event; alone, an event waits for nothing but its own commit.

use std::sync::Arc;

use sqlx::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{Positions, read_cache::ReadCache};
use crate::store::MembershipRecord;
use crate::{Error, Result, store::EventToPersist};

/// Most events in one transaction; bounds how long the first of them waits.
const MAX_BATCH: usize = 256;
/// Queued events before senders wait for room in the queue.
const QUEUE: usize = 4096;

/// A backend that can write a batch of events in one transaction, answering
/// each event's stream ordering or why it was refused.
#[async_trait::async_trait]
pub(crate) trait CommitEvents: sqlx::Database {
    async fn commit_batch(
        writer: &Pool<Self>,
        batch: &[&EventToPersist],
    ) -> Result<Vec<Result<i64>>>;

    /// Where the streams stand: the newest position of the events stream
    /// (events and receipts) and of the account-data stream.
    async fn stream_heads(pool: &Pool<Self>) -> Result<(i64, i64)>;
}

struct Job {
    ev: EventToPersist,
    done: oneshot::Sender<Result<i64>>,
}

#[derive(Clone)]
pub(crate) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    pub(crate) fn start<DB: CommitEvents>(
        writer: Pool<DB>,
        positions: Arc<Positions>,
        memberships: Arc<ReadCache<String, Vec<MembershipRecord>>>,
    ) -> Self {
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, positions, memberships, rx));
        Self { jobs }
    }

    /// Persists one event; returns its stream ordering once it is durable.
    pub(crate) async fn persist(&self, ev: EventToPersist) -> Result<i64> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { ev, done })
            .await
            .map_err(|_| Error::internal("event writer has stopped"))?;
        answer
            .await
            .map_err(|_| Error::internal("event writer dropped a commit"))?
    }
}

async fn run<DB: CommitEvents>(
    writer: Pool<DB>,
    positions: Arc<Positions>,
    memberships: Arc<ReadCache<String, Vec<MembershipRecord>>>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let events: Vec<&EventToPersist> = batch.iter().map(|j: &Job| &j.ev).collect();
        let results = match DB::commit_batch(&writer, &events).await {
            Ok(results) => {
                // A member event changed the index row of the user it is about.
                for (job, result) in batch.iter().zip(&results) {
                    if result.is_ok()
                        && job.ev.pdu.kind.to_string() == "m.room.member"
                        && let Some(user) = &job.ev.pdu.state_key
                    {
                        memberships.forget(user.as_str());
                    }
                }
                if let Some(max) = results.iter().filter_map(|r| r.as_ref().ok()).max() {
                    positions.advance_events(*max);
                }
                results
            }
            Err(e) => {
                tracing::error!(events = batch.len(), "event batch failed to commit: {e}");
                batch.iter().map(|_| Err(Error::internal(&e))).collect()
            }
        };
        for (job, result) in batch.drain(..).zip(results) {
            // A sender that gave up (client went away) needs no answer.
            let _ = job.done.send(result);
        }
    }
}
