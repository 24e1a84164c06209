//! Account data, media records and server keys (the main database's role);
//! receipts and the outgoing queue (a room shard's role).

/// Expands to the implementation for `SqlStore<$db>`; invoke it inside a
/// module of its own (it brings its own imports).
macro_rules! impl_data_store {
    ($db:ty, $next_stream_id:literal, $stream_lock:expr) => {
        use async_trait::async_trait;
        use serde_json::Value;
        use sqlx::{QueryBuilder, Row};

        use crate::store::sql::now_ms;
        use crate::{
            Result,
            store::{
                AccountDataRecord, DataStore, MediaRecord, OutgoingStore, QueuedPdu, ReceiptRecord,
                ReceiptStore, StoredServerKey,
            },
        };

        /// Account data, receipts and the end-to-end encryption streams
        /// (`keys`) draw positions from one shared sequence, bumped inside
        /// the writing transaction so positions commit in order.
        pub(super) async fn next_misc_id(tx: &mut sqlx::Transaction<'_, $db>) -> Result<i64> {
            Ok(sqlx::query_scalar(
                "UPDATE stream_ids SET value = value + 1 WHERE name = 'misc' RETURNING value",
            )
            .fetch_one(&mut **tx)
            .await?)
        }

        fn receipt_from_row(row: &<$db as sqlx::Database>::Row) -> Result<ReceiptRecord> {
            Ok(ReceiptRecord {
                room_id: row.try_get("room_id")?,
                receipt_type: row.try_get("receipt_type")?,
                user_id: row.try_get("user_id")?,
                thread_id: row.try_get("thread_id")?,
                event_id: row.try_get("event_id")?,
                ts: row.try_get("ts")?,
                stream_id: row.try_get("stream_id")?,
            })
        }

        #[async_trait]
        impl DataStore for crate::store::sql::SqlStore<$db> {
            async fn put_account_data(
                &self,
                user_id: &str,
                room_id: &str,
                data_type: &str,
                content: &Value,
            ) -> Result<i64> {
                let mut tx = self.writer.begin().await?;
                let id = next_misc_id(&mut tx).await?;
                sqlx::query(
                    "INSERT INTO account_data (user_id, room_id, data_type, content, stream_id) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET content = excluded.content, stream_id = excluded.stream_id",
                )
                .bind(user_id)
                .bind(room_id)
                .bind(data_type)
                .bind(content.to_string())
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                self.positions.advance_misc(id);
                Ok(id)
            }

            async fn get_account_data(
                &self,
                user_id: &str,
                room_id: &str,
                data_type: &str,
            ) -> Result<Option<Value>> {
                let v: Option<String> = sqlx::query_scalar(
                    "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3",
                )
                .bind(user_id)
                .bind(room_id)
                .bind(data_type)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match v {
                    Some(s) => Some(serde_json::from_str(&s)?),
                    None => None,
                })
            }

            async fn account_data_since(
                &self,
                user_id: &str,
                after: i64,
                upto: i64,
            ) -> Result<Vec<AccountDataRecord>> {
                let rows = sqlx::query(
                    "SELECT room_id, data_type, content, stream_id FROM account_data
                     WHERE user_id = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id",
                )
                .bind(user_id)
                .bind(after)
                .bind(upto)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let content: String = r.try_get(2)?;
                        Ok(AccountDataRecord {
                            room_id: r.try_get(0)?,
                            data_type: r.try_get(1)?,
                            content: serde_json::from_str(&content)?,
                            stream_id: r.try_get(3)?,
                        })
                    })
                    .collect()
            }

            async fn max_misc_stream_id(&self) -> Result<i64> {
                Ok(self.positions.misc())
            }

            async fn put_media(&self, m: &MediaRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO media (media_id, content_type, filename, size, uploader, created_ts) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&m.media_id)
                .bind(&m.content_type)
                .bind(&m.filename)
                .bind(m.size)
                .bind(&m.uploader)
                .bind(m.created_ts)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn get_media(&self, media_id: &str) -> Result<Option<MediaRecord>> {
                let row = sqlx::query("SELECT * FROM media WHERE media_id = $1")
                    .bind(media_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(r) => Some(MediaRecord {
                        media_id: r.try_get("media_id")?,
                        content_type: r.try_get("content_type")?,
                        filename: r.try_get("filename")?,
                        size: r.try_get("size")?,
                        uploader: r.try_get("uploader")?,
                        created_ts: r.try_get("created_ts")?,
                    }),
                    None => None,
                })
            }

            async fn server_keys(&self) -> Result<Vec<StoredServerKey>> {
                let rows = sqlx::query(
                    "SELECT key_id, pkcs8, expired_ts FROM server_keys ORDER BY created_ts",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(StoredServerKey {
                            key_id: r.try_get(0)?,
                            pkcs8: r.try_get(1)?,
                            expired_ts: r.try_get(2)?,
                        })
                    })
                    .collect()
            }

            async fn add_server_key(&self, key_id: &str, pkcs8: &[u8]) -> Result<()> {
                // Whatever key signed until now retires as this one takes over.
                let now = now_ms();
                let mut tx = self.writer.begin().await?;
                sqlx::query("UPDATE server_keys SET expired_ts = $1 WHERE expired_ts IS NULL")
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO server_keys (key_id, pkcs8, created_ts) VALUES ($1, $2, $3)")
                    .bind(key_id)
                    .bind(pkcs8)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait]
        impl ReceiptStore for crate::store::sql::SqlStore<$db> {
            async fn put_receipt(&self, r: &ReceiptRecord) -> Result<i64> {
                let mut tx = self.writer.begin().await?;
                const STREAM_LOCK: Option<&str> = $stream_lock;
                if let Some(lock) = STREAM_LOCK {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                // A position in the shard stream, drawn inside the writer's
                // transaction so positions commit in order.
                let id: i64 = sqlx::query_scalar($next_stream_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| crate::Error::internal("receipt before any event"))?;
                sqlx::query(
                    "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET
                       event_id = excluded.event_id, ts = excluded.ts, stream_id = excluded.stream_id",
                )
                .bind(&r.room_id)
                .bind(&r.receipt_type)
                .bind(&r.user_id)
                .bind(&r.thread_id)
                .bind(&r.event_id)
                .bind(r.ts)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                self.positions.record_receipt(&r.room_id, id);
                self.positions.advance_events(id);
                Ok(id)
            }

            async fn receipts_since(
                &self,
                room_ids: &[String],
                after: &[i64],
                upto: &[i64],
            ) -> Result<Vec<ReceiptRecord>> {
                // This database is one shard: the first position is its own.
                let (after, upto) = (crate::store::sql::own(after), crate::store::sql::own(upto));
                if room_ids.is_empty() || after >= upto {
                    return Ok(vec![]);
                }
                // Only the rooms that had receipts since, when memory knows.
                let moved = self.positions.rooms_with_receipts(room_ids, after);
                let room_ids = moved.as_deref().unwrap_or(room_ids);
                if room_ids.is_empty() {
                    return Ok(vec![]);
                }
                let mut qb: QueryBuilder<$db> =
                    QueryBuilder::new("SELECT * FROM receipts WHERE stream_id > ");
                qb.push_bind(after)
                    .push(" AND stream_id <= ")
                    .push_bind(upto)
                    .push(" AND room_id IN (");
                let mut sep = qb.separated(", ");
                for id in room_ids {
                    sep.push_bind(id);
                }
                qb.push(") ORDER BY stream_id");
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter().map(receipt_from_row).collect()
            }

            async fn read_position(&self, room_id: &str, user_id: &str) -> Result<Option<i64>> {
                Ok(sqlx::query_scalar(
                    "SELECT MAX(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id
                     WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type IN ('m.read', 'm.read.private')",
                )
                .bind(room_id)
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?)
            }
        }

        #[async_trait]
        impl OutgoingStore for crate::store::sql::SqlStore<$db> {
            async fn queue_outgoing(
                &self,
                room_id: &str,
                txn: Option<(String, String, String)>,
                event_id: &str,
                destinations: &[String],
                pdu_json: &str,
            ) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                if let Some((user, device, txn_id)) = &txn {
                    super::events::claim_txn(&mut *tx, room_id, (user, device, txn_id), event_id).await?;
                }
                for d in destinations {
                    sqlx::query("INSERT INTO federation_queue (destination, pdu) VALUES ($1, $2)")
                        .bind(d)
                        .bind(pdu_json)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn outgoing_batch(&self, destination: &str, limit: usize) -> Result<Vec<QueuedPdu>> {
                let rows = sqlx::query(
                    "SELECT id, pdu FROM federation_queue WHERE destination = $1 ORDER BY id LIMIT $2",
                )
                .bind(destination)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(QueuedPdu {
                            source: 0,
                            id: r.try_get(0)?,
                            pdu: r.try_get(1)?,
                        })
                    })
                    .collect()
            }

            async fn outgoing_ack(&self, destination: &str, upto: &[(usize, i64)]) -> Result<()> {
                for (_, id) in upto.iter().filter(|(source, _)| *source == 0) {
                    sqlx::query("DELETE FROM federation_queue WHERE destination = $1 AND id <= $2")
                        .bind(destination)
                        .bind(id)
                        .execute(&self.writer)
                        .await?;
                }
                Ok(())
            }

            async fn outgoing_destinations(&self) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar("SELECT DISTINCT destination FROM federation_queue")
                    .fetch_all(&self.pool)
                    .await?)
            }
        }

    };
}
pub(crate) use impl_data_store;
