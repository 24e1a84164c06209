//! Group commit: events from every room share one writer task, which commits
//! whatever is queued in one transaction (one fsync) and then answers each
//! sender. Under load the fsync is paid once per batch instead of once per
//! event; alone, an event waits for nothing but its own commit.

use serde_json::Value;
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::Positions;
use crate::{Error, Result, store::EventToPersist};

/// Most events in one transaction; bounds how long the first of them waits.
const MAX_BATCH: usize = 256;
/// Queued events before senders wait for room in the queue.
const QUEUE: usize = 4096;

struct Job {
    ev: EventToPersist,
    done: oneshot::Sender<Result<i64>>,
}

#[derive(Clone)]
pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    pub(super) fn start(writer: SqlitePool, positions: Arc<Positions>) -> Self {
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, positions, rx));
        Self { jobs }
    }

    /// Persists one event; returns its stream ordering once it is durable.
    pub(super) async fn persist(&self, ev: EventToPersist) -> Result<i64> {
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

async fn run(writer: SqlitePool, positions: Arc<Positions>, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let results = match commit_batch(&writer, &batch).await {
            Ok(results) => {
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

/// One transaction for the batch; each event in its own savepoint so one bad
/// event (say a duplicate txn id) fails alone.
async fn commit_batch(writer: &SqlitePool, batch: &[Job]) -> Result<Vec<Result<i64>>> {
    let mut conn = writer.acquire().await?;
    let mut tx = conn.begin().await?;
    if let [job] = batch {
        // Alone in the batch: no savepoint needed, the transaction is the event.
        return Ok(match insert_event(&mut tx, &job.ev).await {
            Ok(ordering) => {
                tx.commit().await?;
                vec![Ok(ordering)]
            }
            Err(e) => {
                tx.rollback().await?;
                vec![Err(e)]
            }
        });
    }
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut sp = tx.begin().await?;
        match insert_event(&mut sp, &job.ev).await {
            Ok(ordering) => {
                sp.commit().await?;
                results.push(Ok(ordering));
            }
            Err(e) => {
                sp.rollback().await?;
                results.push(Err(e));
            }
        }
    }
    tx.commit().await?;
    Ok(results)
}

/// Writes one event and what it changes (state, membership, txn id).
pub(super) async fn insert_event(conn: &mut SqliteConnection, ev: &EventToPersist) -> Result<i64> {
    let pdu = &ev.pdu;
    let json = serde_json::to_string(&pdu.json)?;
    let kind = pdu.kind.to_string();
    let relates_to = pdu
        .json
        .get("content")
        .and_then(|c| c.get("m.relates_to"))
        .and_then(|r| r.get("event_id"))
        .and_then(Value::as_str);
    // The transaction id first: a client retry is refused here, before
    // anything else is written, and answered with the first event's id.
    if let Some((user, device, txn_id)) = &ev.txn {
        let claimed = sqlx::query(
            "INSERT INTO txn_ids (user_id, device_id, txn_id, event_id) VALUES (?, ?, ?, ?)
             ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
        )
        .bind(user)
        .bind(device)
        .bind(txn_id)
        .bind(pdu.event_id.as_str())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if claimed == 0 {
            let event_id: String = sqlx::query_scalar(
                "SELECT event_id FROM txn_ids WHERE user_id = ? AND device_id = ? AND txn_id = ?",
            )
            .bind(user)
            .bind(device)
            .bind(txn_id)
            .fetch_one(&mut *conn)
            .await?;
            return Err(Error::DuplicateTransaction { event_id });
        }
    }
    let ordering: i64 = sqlx::query_scalar(
        "INSERT INTO events (event_id, room_id, sender, event_type, state_key, depth, origin_server_ts,
                             json, txn_device, txn_id, relates_to)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING stream_ordering",
    )
    .bind(pdu.event_id.as_str())
    .bind(pdu.room_id.as_str())
    .bind(pdu.sender.as_str())
    .bind(&kind)
    .bind(pdu.state_key.as_deref())
    .bind(pdu.depth as i64)
    .bind(i64::from(pdu.origin_server_ts.get()))
    .bind(&json)
    .bind(ev.txn.as_ref().map(|t| t.1.as_str()))
    .bind(ev.txn.as_ref().map(|t| t.2.as_str()))
    .bind(relates_to)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(state_key) = &pdu.state_key {
        sqlx::query(
            "INSERT INTO state_events (room_id, event_type, state_key, event_id, stream_ordering) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(pdu.room_id.as_str())
        .bind(&kind)
        .bind(state_key)
        .bind(pdu.event_id.as_str())
        .bind(ordering)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO current_state (room_id, event_type, state_key, event_id, stream_ordering) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET
               event_id = excluded.event_id, stream_ordering = excluded.stream_ordering",
        )
        .bind(pdu.room_id.as_str())
        .bind(&kind)
        .bind(state_key)
        .bind(pdu.event_id.as_str())
        .bind(ordering)
        .execute(&mut *conn)
        .await?;
        if kind == "m.room.member" {
            let membership = pdu
                .json
                .get("content")
                .and_then(|c| c.get("membership"))
                .and_then(Value::as_str)
                .unwrap_or("leave");
            sqlx::query(
                "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_ordering, forgotten)
                 VALUES (?, ?, ?, ?, ?, 0)
                 ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,
                   event_id = excluded.event_id, stream_ordering = excluded.stream_ordering, forgotten = 0",
            )
            .bind(pdu.room_id.as_str())
            .bind(state_key)
            .bind(membership)
            .bind(pdu.event_id.as_str())
            .bind(ordering)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(ordering)
}
