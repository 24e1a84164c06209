//! Pushing events to application services: each service's queue (rows of
//! the outgoing queue under `appservice_destination(id)`, written with the
//! event) is sent oldest first as transactions, one at a time, retried with
//! the same id and body until the service takes it. A service that is down
//! delays nothing but its own queue.

use std::{sync::Arc, time::Duration};

use hearth_core::{
    Hearth, appservice::AppService, backoff::Backoff, store::appservice_destination,
};
use serde_json::{Value, json};

use crate::AsClient;

/// Events per transaction.
const BATCH: usize = 100;
/// Retry delays while a service fails: from 200 ms, doubling up to a minute.
const BACKOFF: Backoff = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(60));
/// A look at the queue even without a wake-up (one lost to a race, or
/// events another process queued).
const POLL: Duration = Duration::from_secs(2);

/// Starts a sender for every service with a url, and lets core ask the
/// services about users and aliases.
pub fn start_senders(hearth: Arc<Hearth>) {
    let _ = hearth
        .appservice_link
        .set(Arc::new(AsClient::shared().clone()));
    for service in hearth.appservices.all() {
        if service.url.is_some() {
            hearth
                .tasks
                .spawn(send_loop(hearth.clone(), service.clone()));
        }
    }
}

struct Transaction {
    id: String,
    body: Value,
    /// The last queue row of each source (shard) it carries.
    ack: Vec<(usize, i64)>,
}

async fn send_loop(hearth: Arc<Hearth>, service: Arc<AppService>) {
    let destination = appservice_destination(&service.id);
    let client = AsClient::shared();
    let mut pending: Option<Transaction> = None;
    let mut failures: u32 = 0;
    let mut delays = BACKOFF.delays();
    // Names transactions that carry only ephemeral events.
    let mut ephemeral_only = EphemeralIds {
        started_ms: hearth_core::ids::now_ms(),
        next: 0,
    };
    let tasks = hearth.tasks.clone();
    loop {
        // Registered before the queue is read, so a wake-up in between
        // is not lost.
        let woken = hearth.appservice_queued.notified();
        let txn = match pending.take() {
            Some(t) => t,
            None => {
                match next_transaction(&hearth, &service, &destination, &mut ephemeral_only).await {
                    Ok(Some(t)) => t,
                    Ok(None) => {
                        let waited = tasks.until_stopped(async {
                            tokio::select! {
                                _ = woken => {}
                                _ = tokio::time::sleep(POLL) => {}
                            }
                        });
                        if waited.await.is_none() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(appservice = %service.id, error = %e, "cannot read the queue");
                        if !tasks.sleep(POLL).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        match client.put_transaction(&service, &txn.id, &txn.body).await {
            Ok(()) => {
                if !txn.ack.is_empty()
                    && let Err(e) = hearth.outgoing_ack(&destination, &txn.ack).await
                {
                    tracing::warn!(appservice = %service.id, error = %e, "cannot acknowledge a transaction");
                }
                if failures > 0 {
                    tracing::info!(appservice = %service.id, "application service reachable again");
                }
                failures = 0;
                delays = BACKOFF.delays();
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(appservice = %service.id, error = %e, "application service unreachable; retrying with backoff");
                }
                let delay = delays.next_wait();
                pending = Some(txn);
                // What is not acknowledged stays queued for the next start.
                if !tasks.sleep(delay).await {
                    return;
                }
            }
        }
    }
}

struct EphemeralIds {
    started_ms: u64,
    next: u64,
}

/// The oldest queued events, with the ephemeral events waiting (typing,
/// receipts; for services that asked), as a transaction. Its id names the
/// queue rows it carries, so a transaction sent again after a restart keeps
/// its id.
async fn next_transaction(
    hearth: &Hearth,
    service: &AppService,
    destination: &str,
    ephemeral_ids: &mut EphemeralIds,
) -> hearth_core::Result<Option<Transaction>> {
    let rows = hearth.outgoing_batch(destination, BATCH).await?;
    let ephemeral = if service.receive_ephemeral {
        hearth.appservice_ephemeral.take(&service.id, BATCH)
    } else {
        vec![]
    };
    if rows.is_empty() {
        if ephemeral.is_empty() {
            return Ok(None);
        }
        ephemeral_ids.next += 1;
        return Ok(Some(Transaction {
            id: format!("e{}.{}", ephemeral_ids.started_ms, ephemeral_ids.next),
            body: json!({"events": [], "ephemeral": ephemeral}),
            ack: vec![],
        }));
    }
    let ids: Vec<String> = rows.iter().map(|r| r.pdu.clone()).collect();
    let events: Vec<Value> = hearth
        .appservice_batch_events(&ids)
        .await?
        .iter()
        .map(|e| e.to_client(None))
        .collect();
    let mut ack: Vec<(usize, i64)> = vec![];
    let mut first: Vec<(usize, i64)> = vec![];
    for r in &rows {
        match ack.iter_mut().find(|(s, _)| *s == r.source) {
            Some(a) => a.1 = a.1.max(r.id),
            None => {
                ack.push((r.source, r.id));
                first.push((r.source, r.id));
            }
        }
    }
    let id = ack
        .iter()
        .map(|(source, last)| {
            let from = first
                .iter()
                .find(|(s, _)| s == source)
                .map_or(*last, |f| f.1);
            format!("{source}.{from}-{last}")
        })
        .collect::<Vec<_>>()
        .join("_");
    Ok(Some(Transaction {
        id,
        body: if ephemeral.is_empty() {
            json!({"events": events})
        } else {
            json!({"events": events, "ephemeral": ephemeral})
        },
        ack,
    }))
}
