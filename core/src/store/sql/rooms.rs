//! Rooms, the event timeline and state (`EventStore`, a room shard's role); the
//! room directory, the membership index and aliases (`DirectoryStore`, main's).
//! `$join_rule` is the dialect's expression for an `m.room.join_rules`
//! event's `join_rule`, with the event's JSON text in `e.json`.

/// Expands to the implementation for `SqlStore<$db>`; invoke it inside a
/// module of its own (it brings its own imports).
macro_rules! impl_room_store {
    ($db:ty, $join_rule:literal) => {
        use async_trait::async_trait;
        use serde_json::Value;
        use sqlx::{QueryBuilder, Row};

        use crate::store::sql::{EVENT_COLUMNS, now_ms};

        fn event_from_row(row: &<$db as sqlx::Database>::Row) -> Result<StoredEvent> {
            crate::store::sql::event_from_parts(
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            )
        }
        use crate::{
            Error, Result,
            pdu::{StateMap, StoredEvent},
            store::{DirectoryStore, Direction, EventToPersist, EventStore, MembershipRecord},
        };

        fn membership_from_row(row: &<$db as sqlx::Database>::Row) -> Result<MembershipRecord> {
            Ok(MembershipRecord {
                room_id: row.try_get("room_id")?,
                user_id: row.try_get("user_id")?,
                membership: row.try_get("membership")?,
                event_id: row.try_get("event_id")?,
                stream_ordering: row.try_get("stream_ordering")?,
                forgotten: row.try_get::<i64, _>("forgotten")? != 0,
            })
        }

        /// What the sharded store needs of a main database or a shard beyond
        /// the store traits.
        impl crate::store::sql::SqlStore<$db> {
            /// Records a room in the directory with the shard holding its events.
            pub async fn insert_room(
                &self,
                room_id: &str,
                version: &str,
                creator: &str,
                shard: i64,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO rooms (room_id, room_version, creator, created_ts, shard) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(room_id)
                .bind(version)
                .bind(creator)
                .bind(now_ms())
                .bind(shard)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            pub async fn room_shard(&self, room_id: &str) -> Result<Option<i64>> {
                Ok(sqlx::query_scalar("SELECT shard FROM rooms WHERE room_id = $1")
                    .bind(room_id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            /// Upserts membership index rows; a row only replaces an older one.
            pub async fn index_memberships(&self, rows: &[MembershipRecord]) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                for m in rows {
                    sqlx::query(
                        "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_ordering, forgotten)
                         VALUES ($1, $2, $3, $4, $5, 0)
                         ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,
                           event_id = excluded.event_id, stream_ordering = excluded.stream_ordering, forgotten = 0
                         WHERE memberships.stream_ordering < excluded.stream_ordering",
                    )
                    .bind(&m.room_id)
                    .bind(&m.user_id)
                    .bind(&m.membership)
                    .bind(&m.event_id)
                    .bind(m.stream_ordering)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                for m in rows {
                    self.memberships.forget(m.user_id.as_str());
                }
                Ok(())
            }

            /// Every membership row this database holds.
            pub async fn all_memberships(&self) -> Result<Vec<MembershipRecord>> {
                let rows = sqlx::query("SELECT * FROM memberships")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(membership_from_row).collect()
            }

            /// Rooms whose current join rule is public.
            pub async fn rooms_with_public_join_rule(&self) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar(concat!(
                    "SELECT c.room_id FROM current_state c JOIN events e ON e.event_id = c.event_id
                     WHERE c.event_type = 'm.room.join_rules' AND c.state_key = '' AND ",
                    $join_rule,
                    " = 'public'"
                ))
                .fetch_all(&self.pool)
                .await?)
            }

            /// Users joined to any of these rooms.
            pub async fn joined_users_in(&self, room_ids: &[String]) -> Result<Vec<String>> {
                if room_ids.is_empty() {
                    return Ok(vec![]);
                }
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT DISTINCT user_id FROM memberships WHERE membership = 'join' AND room_id IN (",
                );
                let mut sep = qb.separated(", ");
                for id in room_ids {
                    sep.push_bind(id);
                }
                qb.push(")");
                Ok(qb.build_query_scalar().fetch_all(&self.pool).await?)
            }
        }

        #[async_trait]
        impl EventStore for crate::store::sql::SqlStore<$db> {
            async fn create_room(&self, room_id: &str, version: &str, creator: &str) -> Result<()> {
                self.insert_room(room_id, version, creator, 0).await
            }

            async fn submit_event(&self, ev: EventToPersist) -> Result<crate::store::PendingCommit> {
                self.commits.submit(ev).await
            }

            fn on_commit(&self, hook: crate::store::CommitHook) {
                self.commits.on_commit(hook);
            }

            async fn acquire_room_lease(
                &self,
                room_id: &str,
                holder: &str,
                address: &str,
                ttl_ms: i64,
            ) -> Result<crate::store::Lease> {
                self.acquire_lease(room_id, holder, address, ttl_ms).await
            }

            async fn renew_room_leases(
                &self,
                room_ids: &[String],
                holder: &str,
                ttl_ms: i64,
            ) -> Result<Vec<String>> {
                self.renew_leases(room_ids, holder, ttl_ms).await
            }

            async fn txn_event(
                &self,
                room_id: &str,
                user_id: &str,
                device_id: &str,
                txn_id: &str,
            ) -> Result<Option<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT event_id FROM txn_ids WHERE room_id = $1 AND user_id = $2 AND device_id = $3 AND txn_id = $4",
                )
                .bind(room_id)
                .bind(user_id)
                .bind(device_id)
                .bind(txn_id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn get_event(&self, event_id: &str) -> Result<Option<StoredEvent>> {
                let row = sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = $1"
                ))
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(event_from_row).transpose()
            }

            async fn store_redacted(
                &self,
                event_id: &str,
                redacted_json: &Value,
                redacted_by: &str,
            ) -> Result<()> {
                sqlx::query("UPDATE events SET json = $1, redacted_by = $2 WHERE event_id = $3")
                    .bind(redacted_json.to_string())
                    .bind(redacted_by)
                    .bind(event_id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn redactions_of(&self, room_id: &str, event_id: &str) -> Result<Vec<StoredEvent>> {
                let rows = sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE e.redacts = $1 AND e.room_id = $2
                     ORDER BY e.stream_ordering"
                ))
                .bind(event_id)
                .bind(room_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(event_from_row).collect()
            }

            async fn latest_event(&self, room_id: &str) -> Result<Option<StoredEvent>> {
                let row = sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 ORDER BY e.stream_ordering DESC LIMIT 1"
                ))
                .bind(room_id)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(event_from_row).transpose()
            }

            async fn current_state(&self, room_id: &str) -> Result<Vec<StoredEvent>> {
                let rows = sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM current_state c JOIN events e ON e.event_id = c.event_id
                     WHERE c.room_id = $1 ORDER BY e.stream_ordering"
                ))
                .bind(room_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(event_from_row).collect()
            }

            async fn state_at(&self, room_id: &str, at: i64) -> Result<StateMap<String>> {
                let rows = sqlx::query(
                    "SELECT event_type, state_key, event_id FROM state_events s
                     WHERE room_id = $1 AND stream_ordering = (
                       SELECT max(stream_ordering) FROM state_events s2
                       WHERE s2.room_id = s.room_id AND s2.event_type = s.event_type
                         AND s2.state_key = s.state_key AND s2.stream_ordering <= $2)",
                )
                .bind(room_id)
                .bind(at)
                .fetch_all(&self.pool)
                .await?;
                let mut map = StateMap::new();
                for r in rows {
                    map.insert((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
                }
                Ok(map)
            }

            async fn state_event_at(
                &self,
                room_id: &str,
                kind: &str,
                state_key: &str,
                at: i64,
            ) -> Result<Option<StoredEvent>> {
                let row = sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM state_events s JOIN events e ON e.event_id = s.event_id
                     WHERE s.room_id = $1 AND s.event_type = $2 AND s.state_key = $3 AND s.stream_ordering <= $4
                     ORDER BY s.stream_ordering DESC LIMIT 1"
                ))
                .bind(room_id)
                .bind(kind)
                .bind(state_key)
                .bind(at)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(event_from_row).transpose()
            }

            async fn state_changes(
                &self,
                room_id: &str,
                after: i64,
                upto: i64,
            ) -> Result<Vec<StoredEvent>> {
                let rows = sqlx::query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM state_events s JOIN events e ON e.event_id = s.event_id
                     WHERE s.room_id = $1 AND s.stream_ordering > $2 AND s.stream_ordering <= $3
                       AND s.stream_ordering = (
                         SELECT max(stream_ordering) FROM state_events s2
                         WHERE s2.room_id = s.room_id AND s2.event_type = s.event_type
                           AND s2.state_key = s.state_key AND s2.stream_ordering <= $4)
                     ORDER BY s.stream_ordering"
                ))
                .bind(room_id)
                .bind(after)
                .bind(upto)
                .bind(upto)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(event_from_row).collect()
            }

            async fn get_events(&self, event_ids: &[String]) -> Result<Vec<StoredEvent>> {
                if event_ids.is_empty() {
                    return Ok(vec![]);
                }
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id IN ("
                ));
                let mut sep = qb.separated(", ");
                for id in event_ids {
                    sep.push_bind(id);
                }
                qb.push(") ORDER BY e.stream_ordering");
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter().map(event_from_row).collect()
            }

            async fn backfill_frontier(&self, room_id: &str) -> Result<Vec<(String, i64)>> {
                let rows = sqlx::query("SELECT event_id, depth FROM backfill_frontier WHERE room_id = $1")
                    .bind(room_id)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            }

            async fn store_history(
                &self,
                room_id: &str,
                events: &[crate::pdu::Pdu],
                frontier: &[(String, i64)],
            ) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                // Below every position of this database, newest first: the
                // stream only grows upwards, so history never looks new.
                let lowest: Option<i64> = sqlx::query_scalar("SELECT min(stream_ordering) FROM events")
                    .fetch_one(&mut *tx)
                    .await?;
                let mut next = lowest.unwrap_or(0).min(0) - 1;
                for pdu in events {
                    let stored = sqlx::query(
                        "INSERT INTO events (stream_ordering, event_id, room_id, sender, event_type, state_key, depth,
                                             origin_server_ts, json, relates_to, redacts)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (event_id) DO NOTHING",
                    )
                    .bind(next)
                    .bind(pdu.event_id.as_str())
                    .bind(room_id)
                    .bind(pdu.sender.as_str())
                    .bind(pdu.kind.to_string())
                    .bind(pdu.state_key.as_deref())
                    .bind(pdu.depth as i64)
                    .bind(i64::from(pdu.origin_server_ts.get()))
                    .bind(serde_json::to_string(&pdu.json)?)
                    .bind(crate::store::sql::relates_to(pdu))
                    .bind(pdu.redacts.as_ref().map(|r| r.as_str()))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if stored == 0 {
                        continue;
                    }
                    if let Some(state_key) = &pdu.state_key {
                        sqlx::query(
                            "INSERT INTO state_events (room_id, event_type, state_key, event_id, stream_ordering)
                             VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(room_id)
                        .bind(pdu.kind.to_string())
                        .bind(state_key)
                        .bind(pdu.event_id.as_str())
                        .bind(next)
                        .execute(&mut *tx)
                        .await?;
                    }
                    next -= 1;
                }
                sqlx::query("DELETE FROM backfill_frontier WHERE room_id = $1")
                    .bind(room_id)
                    .execute(&mut *tx)
                    .await?;
                for (event_id, depth) in frontier {
                    sqlx::query("INSERT INTO backfill_frontier (room_id, event_id, depth) VALUES ($1, $2, $3)")
                        .bind(room_id)
                        .bind(event_id)
                        .bind(depth)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn room_events(
                &self,
                room_id: &str,
                from: i64,
                to: Option<i64>,
                dir: Direction,
                limit: i64,
            ) -> Result<Vec<StoredEvent>> {
                let sql = match dir {
                    Direction::Backward => format!(
                        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.stream_ordering <= $2
                         AND e.stream_ordering > $3 ORDER BY e.stream_ordering DESC LIMIT $4"
                    ),
                    Direction::Forward => format!(
                        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.stream_ordering > $2
                         AND e.stream_ordering <= $3 ORDER BY e.stream_ordering ASC LIMIT $4"
                    ),
                };
                let other = to.unwrap_or(match dir {
                    // Backfilled history sits below zero.
                    Direction::Backward => i64::MIN,
                    Direction::Forward => i64::MAX,
                });
                let rows = sqlx::query(&sql)
                    .bind(room_id)
                    .bind(from)
                    .bind(other)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(event_from_row).collect()
            }

            async fn rooms_with_events(
                &self,
                room_ids: &[String],
                after: &[i64],
                upto: &[i64],
            ) -> Result<Vec<(String, i64)>> {
                // This database is one shard: the first position is its own.
                let (after, upto) = (crate::store::sql::own(after), crate::store::sql::own(upto));
                if room_ids.is_empty() || after >= upto {
                    return Ok(vec![]);
                }
                if let Some(moved) = self.positions.rooms_with_events(room_ids, after, upto) {
                    return Ok(moved);
                }
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT room_id, max(stream_ordering) FROM events WHERE stream_ordering > ",
                );
                qb.push_bind(after)
                    .push(" AND stream_ordering <= ")
                    .push_bind(upto)
                    .push(" AND room_id IN (");
                let mut sep = qb.separated(", ");
                for id in room_ids {
                    sep.push_bind(id);
                }
                qb.push(") GROUP BY room_id");
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            }

            async fn refresh_stream_heads(&self) -> Result<bool> {
                let (events, misc) =
                    <$db as crate::store::sql::group_commit::CommitEvents>::stream_heads(&self.pool).await?;
                let moved = self.positions.advance_events(events) | self.positions.advance_misc(misc);
                Ok(moved)
            }

            fn share_with_other_processes(&self) {
                self.positions.share();
                self.tokens.disable();
                self.memberships.disable();
            }

            async fn stream_positions(&self) -> Result<Vec<i64>> {
                Ok(vec![self.positions.events()])
            }

            async fn shard_of(&self, _room_id: &str) -> Result<usize> {
                Ok(0)
            }

            async fn users_in_public_rooms(&self) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar(
                    concat!(
                        "SELECT DISTINCT m.user_id FROM memberships m JOIN current_state c
                           ON c.room_id = m.room_id AND c.event_type = 'm.room.join_rules' AND c.state_key = ''
                         JOIN events e ON e.event_id = c.event_id
                         WHERE m.membership = 'join' AND ",
                        $join_rule,
                        " = 'public'"
                    ),
                )
                .fetch_all(&self.pool)
                .await?)
            }
        }

        #[async_trait]
        impl DirectoryStore for crate::store::sql::SqlStore<$db> {
            async fn room_version(&self, room_id: &str) -> Result<Option<String>> {
                Ok(
                    sqlx::query_scalar("SELECT room_version FROM rooms WHERE room_id = $1")
                        .bind(room_id)
                        .fetch_optional(&self.pool)
                        .await?,
                )
            }

            async fn set_room_public(&self, room_id: &str, public: bool) -> Result<()> {
                sqlx::query("UPDATE rooms SET is_public = $1 WHERE room_id = $2")
                    .bind(public as i64)
                    .bind(room_id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn is_room_public(&self, room_id: &str) -> Result<bool> {
                let v: Option<i64> = sqlx::query_scalar("SELECT is_public FROM rooms WHERE room_id = $1")
                    .bind(room_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(v == Some(1))
            }

            async fn public_rooms(&self) -> Result<Vec<String>> {
                Ok(
                    sqlx::query_scalar("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY created_ts")
                        .fetch_all(&self.pool)
                        .await?,
                )
            }

            async fn set_appservice_room_public(
                &self,
                appservice_id: &str,
                network_id: &str,
                room_id: &str,
                public: bool,
            ) -> Result<()> {
                let sql = if public {
                    "INSERT INTO appservice_room_lists (appservice_id, network_id, room_id)
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
                } else {
                    "DELETE FROM appservice_room_lists
                     WHERE appservice_id = $1 AND network_id = $2 AND room_id = $3"
                };
                sqlx::query(sql)
                    .bind(appservice_id)
                    .bind(network_id)
                    .bind(room_id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn appservice_public_rooms(
                &self,
                list: Option<(&str, &str)>,
            ) -> Result<Vec<String>> {
                Ok(match list {
                    Some((service, network)) => sqlx::query_scalar(
                        "SELECT room_id FROM appservice_room_lists
                         WHERE appservice_id = $1 AND network_id = $2 ORDER BY room_id",
                    )
                    .bind(service)
                    .bind(network)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query_scalar(
                        "SELECT DISTINCT room_id FROM appservice_room_lists ORDER BY room_id",
                    )
                    .fetch_all(&self.pool)
                    .await?,
                })
            }

            async fn memberships_of_user(&self, user_id: &str) -> Result<Vec<MembershipRecord>> {
                if let Some(cached) = self.memberships.get(user_id) {
                    return Ok(cached);
                }
                let generation = self.memberships.generation();
                let rows = sqlx::query("SELECT * FROM memberships WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_all(&self.pool)
                    .await?;
                let records = rows
                    .iter()
                    .map(membership_from_row)
                    .collect::<Result<Vec<_>>>()?;
                self.memberships
                    .insert(generation, user_id.to_owned(), records.clone());
                Ok(records)
            }

            async fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<MembershipRecord>> {
                let row = sqlx::query("SELECT * FROM memberships WHERE room_id = $1 AND user_id = $2")
                    .bind(room_id)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(membership_from_row).transpose()
            }

            async fn room_members(
                &self,
                room_id: &str,
                membership: Option<&str>,
            ) -> Result<Vec<MembershipRecord>> {
                let rows = match membership {
                    Some(m) => sqlx::query(
                        "SELECT * FROM memberships WHERE room_id = $1 AND membership = $2 ORDER BY user_id",
                    )
                    .bind(room_id)
                    .bind(m)
                    .fetch_all(&self.pool)
                    .await?,
                    None => {
                        sqlx::query("SELECT * FROM memberships WHERE room_id = $1 ORDER BY user_id")
                            .bind(room_id)
                            .fetch_all(&self.pool)
                            .await?
                    }
                };
                rows.iter().map(membership_from_row).collect()
            }

            async fn forget_room(&self, room_id: &str, user_id: &str) -> Result<()> {
                sqlx::query("UPDATE memberships SET forgotten = 1 WHERE room_id = $1 AND user_id = $2")
                    .bind(room_id)
                    .bind(user_id)
                    .execute(&self.writer)
                    .await?;
                self.memberships.forget(user_id);
                Ok(())
            }

            async fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT DISTINCT m2.user_id FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
                     WHERE m1.user_id = $1 AND m1.membership = 'join' AND m2.membership = 'join'",
                )
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn create_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<()> {
                let res = sqlx::query("INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(alias)
                    .bind(room_id)
                    .bind(creator)
                    .execute(&self.writer)
                    .await?;
                if res.rows_affected() == 0 {
                    return Err(Error::RoomInUse);
                }
                Ok(())
            }

            async fn resolve_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
                let row = sqlx::query("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
                    .bind(alias)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
                    None => None,
                })
            }

            async fn delete_alias(&self, alias: &str) -> Result<bool> {
                let res = sqlx::query("DELETE FROM room_aliases WHERE alias = $1")
                    .bind(alias)
                    .execute(&self.writer)
                    .await?;
                Ok(res.rows_affected() > 0)
            }

            async fn room_aliases(&self, room_id: &str) -> Result<Vec<String>> {
                Ok(
                    sqlx::query_scalar("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
                        .bind(room_id)
                        .fetch_all(&self.pool)
                        .await?,
                )
            }
        }

    };
}
pub(crate) use impl_room_store;
