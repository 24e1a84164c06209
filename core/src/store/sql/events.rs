//! Writing one accepted event: the transaction id claim, the event, its state
//! and membership index rows.

/// Expands to `CommitEvents` for `$db`; invoke it inside a module of its own.
macro_rules! impl_commit_events {
    ($db:ty, $stream_lock:expr) => {
        use sqlx::Connection;

        use crate::{
            Error, Result,
            store::{EventToPersist, sql::group_commit::CommitEvents},
        };

        #[async_trait::async_trait]
        impl CommitEvents for $db {
            async fn commit_batch(
                writer: &sqlx::Pool<$db>,
                batch: &[&EventToPersist],
            ) -> Result<Vec<Result<i64>>> {
                match commit_all(writer, batch).await {
                    // The group committer answers a failed batch as an
                    // internal error; answered per event, an unreachable
                    // database stays a 503 the client retries.
                    Err(Error::Unavailable(why)) => Ok(batch
                        .iter()
                        .map(|_| Err(Error::Unavailable(why.clone())))
                        .collect()),
                    other => other,
                }
            }

            async fn stream_heads(pool: &sqlx::Pool<$db>) -> Result<(i64, i64)> {
                // Receipts draw from the events sequence too, so the head is
                // the newest of either.
                let events: Option<i64> = sqlx::query_scalar(
                    "SELECT max(p) FROM (SELECT max(stream_ordering) AS p FROM events
                     UNION ALL SELECT max(stream_id) AS p FROM receipts) heads",
                )
                .fetch_one(pool)
                .await?;
                let misc: i64 = sqlx::query_scalar("SELECT value FROM stream_ids WHERE name = 'misc'")
                    .fetch_one(pool)
                    .await?;
                Ok((events.unwrap_or(0), misc))
            }
        }

        /// Writes a batch in one transaction: each event's stream ordering or
        /// why it was refused.
        async fn commit_all(
            writer: &sqlx::Pool<$db>,
            batch: &[&EventToPersist],
        ) -> Result<Vec<Result<i64>>> {
            let mut conn = writer.acquire().await?;
            // Usually every event is fine: write them all in one plain
            // transaction (two statements per event).
            let mut tx = conn.begin().await?;
            lock_stream(&mut tx).await?;
            let lapsed = fenced_out(&mut tx, batch).await?;
            let mut orderings = Vec::with_capacity(batch.len());
            let mut clean = true;
            for (ev, out) in batch.iter().zip(&lapsed) {
                if *out {
                    orderings.push(Err(Error::LeaseLost));
                    continue;
                }
                match insert_event(&mut tx, ev).await {
                    Ok(ordering) => orderings.push(Ok(ordering)),
                    Err(_) => {
                        clean = false;
                        break;
                    }
                }
            }
            if clean {
                tx.commit().await?;
                return Ok(orderings);
            }
            tx.rollback().await?;
            tracing::debug!(events = batch.len(), "an event was refused; committing the batch event by event");
            // One was refused (say a retried txn id): again, each event in
            // its own savepoint, so it fails alone.
            let mut tx = conn.begin().await?;
            lock_stream(&mut tx).await?;
            let lapsed = fenced_out(&mut tx, batch).await?;
            let mut results = Vec::with_capacity(batch.len());
            // room → writer generation of a refused event: the events
            // after it of that generation were built on it.
            let mut refused: std::collections::HashMap<&str, u64> = Default::default();
            for (ev, out) in batch.iter().zip(&lapsed) {
                let room = ev.pdu.room_id.as_str();
                if *out {
                    results.push(Err(Error::LeaseLost));
                    continue;
                }
                if refused.get(room).is_some_and(|g| ev.generation <= *g) {
                    results.push(Err(Error::Superseded));
                    continue;
                }
                let mut sp = tx.begin().await?;
                match insert_event(&mut sp, ev).await {
                    Ok(ordering) => {
                        sp.commit().await?;
                        results.push(Ok(ordering));
                    }
                    Err(e) => {
                        sp.rollback().await?;
                        refused.insert(room, ev.generation);
                        results.push(Err(e));
                    }
                }
            }
            tx.commit().await?;
            Ok(results)
        }

        /// Which events were built by a writer that no longer holds its
        /// room's lease (checked once per room, rows locked till commit).
        async fn fenced_out(
            conn: &mut <$db as sqlx::Database>::Connection,
            batch: &[&EventToPersist],
        ) -> Result<Vec<bool>> {
            let mut verdicts: std::collections::HashMap<(&str, i64), bool> = Default::default();
            let mut out = Vec::with_capacity(batch.len());
            for ev in batch {
                let Some(fence) = &ev.fence else {
                    out.push(false);
                    continue;
                };
                let room = ev.pdu.room_id.as_str();
                let lost = match verdicts.get(&(room, fence.epoch)) {
                    Some(lost) => *lost,
                    None => {
                        let lost = !super::leases::fence_holds(&mut *conn, room, fence).await?;
                        verdicts.insert((room, fence.epoch), lost);
                        lost
                    }
                };
                out.push(lost);
            }
            Ok(out)
        }

        /// Takes the lock under which positions are drawn and committed,
        /// where the backend needs one.
        async fn lock_stream(conn: &mut <$db as sqlx::Database>::Connection) -> Result<()> {
            const STREAM_LOCK: Option<&str> = $stream_lock;
            if let Some(lock) = STREAM_LOCK {
                sqlx::query(lock).execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// Claims a client's transaction id in a room for an event; a retry
        /// fails with `DuplicateTransaction` naming the first event.
        pub(super) async fn claim_txn(
            conn: &mut <$db as sqlx::Database>::Connection,
            room_id: &str,
            (user, device, txn_id): (&str, &str, &str),
            event_id: &str,
        ) -> Result<()> {
            let claimed = sqlx::query(
                "INSERT INTO txn_ids (room_id, user_id, device_id, txn_id, event_id) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (room_id, user_id, device_id, txn_id) DO NOTHING",
            )
            .bind(room_id)
            .bind(user)
            .bind(device)
            .bind(txn_id)
            .bind(event_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if claimed == 0 {
                let event_id: String = sqlx::query_scalar(
                    "SELECT event_id FROM txn_ids WHERE room_id = $1 AND user_id = $2 AND device_id = $3 AND txn_id = $4",
                )
                .bind(room_id)
                .bind(user)
                .bind(device)
                .bind(txn_id)
                .fetch_one(&mut *conn)
                .await?;
                return Err(Error::DuplicateTransaction { event_id });
            }
            Ok(())
        }

        /// Writes one event and what it changes (state, membership, txn id).
        pub(super) async fn insert_event(conn: &mut <$db as sqlx::Database>::Connection, ev: &EventToPersist) -> Result<i64> {
            let pdu = &ev.pdu;
            let json = serde_json::to_string(&pdu.json)?;
            let kind = pdu.kind.to_string();
            let relates_to = crate::store::sql::relates_to(pdu);
            // The transaction id first: a client retry is refused here, before
            // anything else is written, and answered with the first event's id.
            if let Some((user, device, txn_id)) = &ev.txn {
                claim_txn(&mut *conn, pdu.room_id.as_str(), (user, device, txn_id), pdu.event_id.as_str()).await?;
            }
            let ordering: i64 = sqlx::query_scalar(
                "INSERT INTO events (event_id, room_id, sender, event_type, state_key, depth, origin_server_ts,
                                     json, txn_device, txn_id, relates_to, redacts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING stream_ordering",
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
            .bind(pdu.redacts.as_ref().map(|r| r.as_str()))
            .fetch_one(&mut *conn)
            .await?;
            queue_for_destinations(&mut *conn, ev).await?;
            for change in &ev.state {
                record_state_change(&mut *conn, pdu.room_id.as_str(), change, ordering).await?;
            }
            Ok(ordering)
        }


        /// Queues the event for the servers it is relayed to and the
        /// application services interested in it, in the same transaction.
        async fn queue_for_destinations(conn: &mut <$db as sqlx::Database>::Connection, ev: &EventToPersist) -> Result<()> {
            let pdu = &ev.pdu;
            let relayed = match ev.relay.is_empty() {
                true => String::new(),
                false => serde_json::to_string(&pdu.as_sent())?,
            };
            for destination in &ev.relay {
                sqlx::query("INSERT INTO federation_queue (destination, pdu) VALUES ($1, $2)")
                    .bind(destination)
                    .bind(&relayed)
                    .execute(&mut *conn)
                    .await?;
            }
            for service in &ev.appservices {
                sqlx::query("INSERT INTO federation_queue (destination, pdu) VALUES ($1, $2)")
                    .bind(crate::store::appservice_destination(service))
                    .bind(pdu.event_id.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }

        /// One state change of an event at `ordering`: the state history, the
        /// current state and, for a member event, the membership index.
        async fn record_state_change(
            conn: &mut <$db as sqlx::Database>::Connection,
            room_id: &str,
            change: &crate::store::StateChange,
            ordering: i64,
        ) -> Result<()> {
            // The state history row and the current state, with the same values.
            for sql in [
                "INSERT INTO state_events (room_id, event_type, state_key, event_id, stream_ordering) VALUES ($1, $2, $3, $4, $5)",
                "INSERT INTO current_state (room_id, event_type, state_key, event_id, stream_ordering) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET
                   event_id = excluded.event_id, stream_ordering = excluded.stream_ordering",
            ] {
                sqlx::query(sql)
                    .bind(room_id)
                    .bind(&change.kind)
                    .bind(&change.state_key)
                    .bind(&change.event_id)
                    .bind(ordering)
                    .execute(&mut *conn)
                    .await?;
            }
            if let Some(membership) = &change.membership {
                sqlx::query(
                    "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_ordering, forgotten)
                     VALUES ($1, $2, $3, $4, $5, 0)
                     ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,
                       event_id = excluded.event_id, stream_ordering = excluded.stream_ordering, forgotten = 0",
                )
                .bind(room_id)
                .bind(&change.state_key)
                .bind(membership)
                .bind(&change.event_id)
                .bind(ordering)
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
        }

    };
}
pub(crate) use impl_commit_events;
