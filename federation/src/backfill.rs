//! Asking other servers for a room's history older than what this server
//! holds (`/backfill`), for core's `Hearth::backfill` (spec/federation.md,
//! "Filling gaps").

use hearth_core::{pdu::Pdu, rooms::Backfilled};
use ruma::{OwnedEventId, RoomId, RoomVersionId};

use crate::{FedError, Federation, enc};

/// Servers tried, in turn, before giving up for this page.
const SERVERS_TRIED: usize = 3;
/// Auth events fetched per `/backfill` answer, beyond which the events
/// naming them wait for a later page.
const MAX_AUTH_FETCHES: usize = 50;

impl Federation {
    /// `/backfill` from the first of `servers` that answers.
    pub(crate) async fn backfill_from(
        &self,
        room: &RoomId,
        servers: &[String],
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Backfilled, FedError> {
        let version = self.hearth.rooms.room_version_of(room).await?;
        let mut failure = FedError::Remote("no server to ask for the room's history".into());
        for server in servers.iter().take(SERVERS_TRIED) {
            match self.backfill_via(server, &version, room, from, limit).await {
                Ok(got) => return Ok(got),
                Err(e) => {
                    tracing::warn!(room = %room, %server, error = %e, "backfill failed");
                    failure = e;
                }
            }
        }
        Err(failure)
    }

    async fn backfill_via(
        &self,
        server: &str,
        version: &RoomVersionId,
        room: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Backfilled, FedError> {
        let mut path = format!(
            "/_matrix/federation/v1/backfill/{}?limit={limit}",
            enc(room.as_str())
        );
        for id in from {
            path.push_str(&format!("&v={}", enc(id.as_str())));
        }
        let answer = self.request(server, http::Method::GET, &path, None).await?;
        let mut events = vec![];
        for json in answer["pdus"].as_array().into_iter().flatten() {
            match self.check_pdu(json, version).await {
                Ok(p) if p.room_id == *room => events.push(p),
                Ok(p) => {
                    tracing::warn!(event = %p.event_id, %server, "backfill returned another room's event")
                }
                Err(e) => tracing::warn!(room = %room, %server, error = %e,
                    "backfill returned an event that fails its checks"),
            }
        }
        let auth = self.lacking_auth(server, version, room, &events).await?;
        Ok(Backfilled { events, auth })
    }

    /// The auth events `events` name that are neither among them nor held
    /// here, from `server` (`/event`).
    async fn lacking_auth(
        &self,
        server: &str,
        version: &RoomVersionId,
        room: &RoomId,
        events: &[Pdu],
    ) -> Result<Vec<Pdu>, FedError> {
        let mut wanted: Vec<OwnedEventId> = events
            .iter()
            .flat_map(|p| p.auth_events.iter())
            .filter(|id| !events.iter().any(|p| p.event_id == **id))
            .cloned()
            .collect();
        wanted.sort();
        wanted.dedup();
        let mut lacking = self.hearth.rooms.unknown_events(room, &wanted).await?;
        lacking.truncate(MAX_AUTH_FETCHES);
        self.fetch_events(server, version, room, lacking).await
    }
}
