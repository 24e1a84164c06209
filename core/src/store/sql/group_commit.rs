//! Group commit: events from every room share one writer task, which commits
//! whatever is queued in one transaction (one fsync) and then answers each
//! sender. Under load the fsync is paid once per batch instead of once per
//! event; alone, an event waits for nothing but its own commit.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use sqlx::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{positions::Positions, read_cache::ReadCache};
use crate::store::{CommitHook, MembershipRecord, PendingCommit};
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
    hook: Arc<OnceLock<CommitHook>>,
}

impl GroupCommit {
    pub(crate) fn start<DB: CommitEvents>(
        writer: Pool<DB>,
        positions: Arc<Positions>,
        memberships: Arc<ReadCache<String, Vec<MembershipRecord>>>,
    ) -> Self {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let hook = Arc::new(OnceLock::new());
        let committer = Committer {
            positions,
            memberships,
            hook: hook.clone(),
            refused: HashMap::new(),
        };
        tokio::spawn(committer.run(writer, rx));
        Self { jobs, hook }
    }

    pub(crate) fn on_commit(&self, hook: CommitHook) {
        let _ = self.hook.set(hook);
    }

    /// Queues one event behind those submitted before it; the returned future
    /// resolves to its stream ordering once it is durable.
    pub(crate) async fn submit(&self, ev: EventToPersist) -> Result<PendingCommit> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { ev, done })
            .await
            .map_err(|_| Error::internal("event writer has stopped"))?;
        Ok(Box::pin(async move {
            answer
                .await
                .map_err(|_| Error::internal("event writer dropped a commit"))?
        }))
    }
}

struct Committer {
    positions: Arc<Positions>,
    memberships: Arc<ReadCache<String, Vec<MembershipRecord>>>,
    hook: Arc<OnceLock<CommitHook>>,
    /// room → the newest writer generation with a refused event: its later
    /// events were built on that event and must not commit without it.
    refused: HashMap<String, u64>,
}

impl Committer {
    async fn run<DB: CommitEvents>(mut self, writer: Pool<DB>, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // Events built on a refused one are refused before the database
            // sees them; the rest go in one transaction.
            let mut results: Vec<Option<Result<i64>>> = batch
                .iter()
                .map(|j: &Job| self.superseded(&j.ev).then_some(Err(Error::Superseded)))
                .collect();
            let events: Vec<&EventToPersist> = batch
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_none())
                .map(|(j, _)| &j.ev)
                .collect();
            let committed = match DB::commit_batch(&writer, &events).await {
                Ok(committed) => committed,
                Err(e) => {
                    tracing::error!(events = events.len(), "event batch failed to commit: {e}");
                    events.iter().map(|_| Err(Error::internal(&e))).collect()
                }
            };
            let mut committed = committed.into_iter();
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                *slot = committed.next();
            }
            let mut newest = None;
            for (job, result) in batch.iter().zip(&mut results) {
                let room = job.ev.pdu.room_id.as_str();
                match result {
                    Some(Ok(position)) => {
                        self.committed(&job.ev, *position);
                        newest = newest.max(Some(*position));
                    }
                    _ => {
                        // Within a batch, later events of this generation
                        // were built on this one.
                        self.refused.insert(room.to_owned(), job.ev.generation);
                    }
                }
            }
            if let Some(newest) = newest {
                self.positions.advance_events(newest);
            }
            for (job, result) in batch.drain(..).zip(results) {
                let result = result.unwrap_or_else(|| Err(Error::internal("event not committed")));
                // A sender that gave up (client went away) needs no answer.
                let _ = job.done.send(result);
            }
        }
    }

    /// Whether an event was built on one this committer refused.
    fn superseded(&mut self, ev: &EventToPersist) -> bool {
        let room = ev.pdu.room_id.as_str();
        match self.refused.get(room) {
            Some(&generation) if ev.generation <= generation => true,
            // A newer view of the room: the refusal no longer matters.
            Some(_) => {
                self.refused.remove(room);
                false
            }
            None => false,
        }
    }

    /// Bookkeeping for a committed event, before its position is published.
    fn committed(&self, ev: &EventToPersist, position: i64) {
        self.positions
            .record_event(ev.pdu.room_id.as_str(), position);
        // Member state changed the index rows of the users it is about.
        for change in ev.state.iter().filter(|c| c.membership.is_some()) {
            self.memberships.forget(change.state_key.as_str());
        }
        if let Some(hook) = self.hook.get() {
            hook(ev, position);
        }
    }
}
