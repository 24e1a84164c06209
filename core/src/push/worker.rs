//! The push worker: hears every event this process commits (from the
//! store's commit hook, in commit order), evaluates it against the push rules
//! of the room's local joined members (and of a local invitee), records a
//! notification row for each member it notifies, and wakes the senders of
//! those who have pushers.
//!
//! Crash window: an event committed but not yet recorded here when the
//! process dies raises no notification (it still counts in sync, which
//! evaluates rules itself). See spec/push.md.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{OwnedUserId, UserId, events::room::member::MembershipState};

use super::Push;
use crate::{Result, pdu::StoredEvent, store::NewNotification};

/// Events taken from the channel per round at most (their rows go in one
/// transaction).
const BATCH: usize = 4096;
/// The longest a round waits for more events after the first.
const GATHER: std::time::Duration = std::time::Duration::from_millis(250);
/// A round stops gathering when no event came for this long: a lone event
/// (a quiet room) is evaluated at once, while a busy server's events keep
/// arriving closer than this and share one round.
const QUIET: std::time::Duration = std::time::Duration::from_millis(5);

/// Adds the events that keep arriving to `batch`: the rows share the
/// database writer with the events themselves, and a commit per event or two
/// halved the server's send throughput (bench group8). It waits while events
/// come less than [`QUIET`] apart, [`GATHER`] at most, so a lone event is not
/// held back: a push gateway hears of a message within milliseconds.
async fn gather(
    inbox: &mut tokio::sync::mpsc::UnboundedReceiver<Arc<StoredEvent>>,
    batch: &mut Vec<Arc<StoredEvent>>,
) {
    let deadline = tokio::time::Instant::now() + GATHER;
    while batch.len() < BATCH {
        let quiet = (tokio::time::Instant::now() + QUIET).min(deadline);
        let room = BATCH - batch.len();
        match tokio::time::timeout_at(quiet, inbox.recv_many(batch, room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

impl Push {
    /// Starts the worker (once; later calls do nothing).
    pub(crate) fn spawn_push_worker(self: &Arc<Self>) {
        let Some(mut inbox) = self.inbox.lock().take() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while tasks
                .until_stopped(inbox.recv_many(&mut batch, BATCH))
                .await
                .is_some_and(|n| n > 0)
            {
                gather(&mut inbox, &mut batch).await;
                let Some(h) = weak.upgrade() else { break };
                h.record_notifications(&batch).await;
                batch.clear();
            }
        });
    }

    async fn record_notifications(self: &Arc<Self>, events: &[Arc<StoredEvent>]) {
        let mut rows = vec![];
        for e in events {
            match self.notifications_for(e).await {
                Ok(r) => rows.extend(r),
                Err(err) => tracing::warn!(
                    event = %e.pdu.event_id, error = %err,
                    "cannot evaluate push rules for an event; it raises no notification"
                ),
            }
        }
        if rows.is_empty() {
            return;
        }
        if let Err(e) = self.store.add_notifications(&rows).await {
            tracing::error!(error = %e, count = rows.len(), "cannot record notifications; they will not be pushed");
            return;
        }
        let users: BTreeSet<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
        for user in users {
            self.schedule_push(user).await;
        }
    }

    /// The notifications one event raises for local users.
    async fn notifications_for(&self, e: &StoredEvent) -> Result<Vec<NewNotification>> {
        let pdu = &e.pdu;
        let Some(room) = self.room_push_ctx(&pdu.room_id).await? else {
            return Ok(vec![]);
        };
        let server = self.server_name.as_str();
        // An invitee is not joined yet, and `.m.rule.invite_for_me` is theirs.
        let invitee: Option<OwnedUserId> = (pdu.kind.to_string() == "m.room.member"
            && pdu.membership_state() == Some(MembershipState::Invite))
        .then_some(pdu.state_key.as_deref())
        .flatten()
        .and_then(|k| UserId::parse(k).ok())
        .filter(|u| u.server_name() == server && !room.local_joined.contains(u));
        let mut rows = vec![];
        for user in room.local_joined.iter().chain(invitee.iter()) {
            if *user == pdu.sender {
                continue;
            }
            let eval = self.evaluate_push(e, user, &room).await?;
            // Rows are kept for what is pushed (users with pushers) only:
            // one row per member per message cost a busy room three quarters
            // of its send throughput (spec/push.md, "Notification rows").
            // `/notifications` and the badge evaluate the timeline as sync's
            // counts do.
            if !eval.notifies() || !self.has_pushers(user.as_str()).await? {
                continue;
            }
            rows.push(NewNotification {
                user_id: user.to_string(),
                room_id: pdu.room_id.to_string(),
                event_id: pdu.event_id.to_string(),
                stream_ordering: e.stream_ordering,
                highlight: eval.highlights(),
                actions: serde_json::to_value(&eval.actions)?,
                ts: i64::from(pdu.origin_server_ts.get()),
            });
        }
        Ok(rows)
    }
}
