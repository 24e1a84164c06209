//! Pushing events to application services: each service's queue (rows of
//! the outgoing queue under `appservice_destination(id)`, written with the
//! event) is sent oldest first as transactions, one at a time, retried with
//! the same id and body until the service takes it. A service that is down
//! delays nothing but its own queue.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hearth_core::{
    Hearth,
    appservice::AppService,
    backoff::Backoff,
    queue_sender::{self, Deliver, Pacing, SendError, Transaction},
    store::appservice_destination,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::AsClient;

/// Events per transaction.
const BATCH: usize = 100;
/// A service's sender: a look at the queue every 2 s even without a
/// wake-up (one lost to a race, or events another process queued); retry
/// delays while a service fails from 200 ms, doubling up to a minute.
const PACING: Pacing = Pacing {
    poll: Duration::from_secs(2),
    read_retry: Duration::from_secs(2),
    backoff: Backoff::doubling(Duration::from_millis(200), Duration::from_secs(60)),
};

/// Starts a sender for every service with a url, and lets core ask the
/// services about users and aliases; calls to services trust `roots`
/// besides the built-in CAs.
pub fn start_senders(
    hearth: Arc<Hearth>,
    roots: &[reqwest::Certificate],
) -> Result<(), reqwest::Error> {
    let client = AsClient::init(roots)?;
    let _ = hearth.links.appservice.set(Arc::new(client.clone()));
    for service in hearth.appservices.all() {
        if service.url.is_some() {
            let destination = appservice_destination(&service.id);
            let to = ServiceQueue {
                hearth: hearth.clone(),
                service: service.clone(),
                destination: destination.clone(),
                ephemeral_ids: EphemeralIds {
                    started_ms: hearth_core::ids::now_ms(),
                    next: AtomicU64::new(0),
                },
            };
            let (tasks, queue) = (hearth.tasks.clone(), hearth.outgoing.clone());
            let send = queue_sender::run(tasks, queue, destination, PACING, to);
            hearth.tasks.spawn(send);
        }
    }
    Ok(())
}

/// One service's queue, as a queue sender sees it.
struct ServiceQueue {
    hearth: Arc<Hearth>,
    service: Arc<AppService>,
    destination: String,
    /// Names transactions that carry only ephemeral events.
    ephemeral_ids: EphemeralIds,
}

#[async_trait::async_trait]
impl Deliver for ServiceQueue {
    fn wake(&self) -> &Notify {
        &self.hearth.appservice_queued
    }

    async fn next(&self) -> Result<Option<Transaction>, SendError> {
        let (hearth, service) = (&self.hearth, &self.service);
        Ok(next_transaction(hearth, service, &self.destination, &self.ephemeral_ids).await?)
    }

    async fn send(&self, txn: &Transaction) -> Result<(), SendError> {
        let client = AsClient::shared();
        Ok(client
            .put_transaction(&self.service, &txn.id, &txn.body)
            .await?)
    }
}

struct EphemeralIds {
    started_ms: u64,
    next: AtomicU64,
}

/// The oldest queued events, with the ephemeral events waiting (typing,
/// receipts; for services that asked), as a transaction. Its id names the
/// queue rows it carries, so a transaction sent again after a restart keeps
/// its id.
async fn next_transaction(
    hearth: &Hearth,
    service: &AppService,
    destination: &str,
    ephemeral_ids: &EphemeralIds,
) -> hearth_core::Result<Option<Transaction>> {
    let rows = hearth.outgoing.outgoing_batch(destination, BATCH).await?;
    let ephemeral = if service.receive_ephemeral {
        hearth.appservice_ephemeral.take(&service.id, BATCH)
    } else {
        vec![]
    };
    if rows.is_empty() {
        if ephemeral.is_empty() {
            return Ok(None);
        }
        let next = ephemeral_ids.next.fetch_add(1, Ordering::Relaxed) + 1;
        return Ok(Some(Transaction {
            id: format!("e{}.{next}", ephemeral_ids.started_ms),
            body: json!({"events": [], "ephemeral": ephemeral}),
            ack: vec![],
        }));
    }
    let ids: Vec<String> = rows.iter().map(|r| r.pdu.clone()).collect();
    let events: Vec<Value> = hearth
        .outgoing
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
