//! The outgoing queue: what this server owes other servers (signed PDUs) and
//! application services (event ids), written in the same transaction as the
//! event it carries, so nothing committed is lost to a crash. Its rows are
//! per destination; an application service's destination is `!as/<id>`
//! (server names cannot start with '!'). Senders read a batch, deliver it,
//! then acknowledge it; what is not acknowledged goes out again after a
//! restart. The table keeps its first name, `federation_queue`.

use std::sync::Arc;

use crate::{
    Result,
    pdu::StoredEvent,
    store::{QueuedPdu, RoomStore},
};

/// What the senders read of the outgoing queue and acknowledge.
pub struct Outgoing {
    store: Arc<dyn RoomStore>,
}

impl Outgoing {
    pub(crate) fn new(store: Arc<dyn RoomStore>) -> Self {
        Self { store }
    }

    /// Servers with something queued (application services left out: their
    /// senders start from the registrations).
    pub async fn queued_servers(&self) -> Result<Vec<String>> {
        let mut dests = self.store.outgoing_destinations().await?;
        dests.retain(|d| !d.starts_with('!'));
        Ok(dests)
    }

    /// The oldest `limit` rows queued for a destination.
    pub async fn outgoing_batch(&self, destination: &str, limit: usize) -> Result<Vec<QueuedPdu>> {
        self.store.outgoing_batch(destination, limit).await
    }

    /// Drops what a destination acknowledged: per database, every row up to
    /// and including the id given.
    pub async fn outgoing_ack(&self, destination: &str, upto: &[(usize, i64)]) -> Result<()> {
        self.store.outgoing_ack(destination, upto).await
    }

    /// The events an application service's rows name, in the order given
    /// (those no longer stored are left out).
    pub async fn appservice_batch_events(&self, ids: &[String]) -> Result<Vec<StoredEvent>> {
        let found = self.store.get_events(ids).await?;
        Ok(ids
            .iter()
            .filter_map(|id| found.iter().find(|e| e.pdu.event_id.as_str() == id))
            .cloned()
            .collect())
    }
}
