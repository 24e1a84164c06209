//! End-to-end encryption storage: device and cross-signing keys, one-time and
//! fallback keys, the device-list stream, to-device inboxes, key backups.

/// Expands to the `KeyStore` implementation for `SqlStore<$db>`.
macro_rules! impl_key_store {
    ($db:ty) => {
        use async_trait::async_trait;
        use serde_json::{Map, Value};
        use sqlx::Row;

        // Positions drawn here share the misc sequence with account data.
        use super::data::next_misc_id;
        use crate::store::sql::now_ms;
        use crate::{
            Error, Result,
            store::{BackupKey, BackupVersion, KeyStore},
        };


        async fn record_change(
            tx: &mut sqlx::Transaction<'_, $db>,
            users: &[String],
        ) -> Result<i64> {
            let id = next_misc_id(tx).await?;
            for user in users {
                sqlx::query(
                    "INSERT INTO device_list_changes (user_id, stream_id) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                )
                .bind(user)
                .bind(id)
                .execute(&mut **tx)
                .await?;
            }
            Ok(id)
        }

        /// Records a device-list change for `users` as the last write of
        /// `tx`, commits it, and publishes the position it drew.
        async fn commit_change(
            store: &crate::store::sql::SqlStore<$db>,
            mut tx: sqlx::Transaction<'_, $db>,
            users: &[String],
        ) -> Result<i64> {
            let id = record_change(&mut tx, users).await?;
            tx.commit().await?;
            store.positions.advance_misc(id);
            Ok(id)
        }

        /// Bumps a backup version's etag: its keys changed.
        async fn bump_etag(
            tx: &mut sqlx::Transaction<'_, $db>,
            user: &str,
            version: i64,
        ) -> Result<()> {
            sqlx::query(
                "UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2",
            )
            .bind(user)
            .bind(version)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        fn parse(s: &str) -> Result<Value> {
            Ok(serde_json::from_str(s)?)
        }

        /// Rows of (a column, a JSON text column), the JSON parsed.
        fn with_json<K>(rows: Vec<(K, String)>) -> Result<Vec<(K, Value)>> {
            rows.into_iter()
                .map(|(k, json)| Ok((k, parse(&json)?)))
                .collect()
        }

        /// Merges `signatures` (signer → key id → signature) into a key's
        /// `signatures` object.
        fn merge_signatures(key: &mut Value, signatures: &Map<String, Value>) {
            if !key.get("signatures").is_some_and(Value::is_object) {
                key["signatures"] = Value::Object(Map::new());
            }
            for (signer, sigs) in signatures {
                let Some(sigs) = sigs.as_object() else {
                    continue;
                };
                let entry = &mut key["signatures"][signer];
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                for (key_id, sig) in sigs {
                    entry[key_id] = sig.clone();
                }
            }
        }

        const BACKUP_FILTER: &str = "user_id = $1 AND version = $2
             AND ($3 IS NULL OR room_id = $3) AND ($4 IS NULL OR session_id = $4)";

        #[async_trait]
        impl KeyStore for crate::store::sql::SqlStore<$db> {
            async fn put_device_keys(
                &self,
                user: &str,
                device: &str,
                keys: &Value,
            ) -> Result<Option<i64>> {
                let mut tx = self.writer.begin().await?;
                let old: Option<String> = sqlx::query_scalar(
                    "SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2",
                )
                .bind(user)
                .bind(device)
                .fetch_optional(&mut *tx)
                .await?;
                let mut keys = keys.clone();
                if let Some(old) = old {
                    let old = parse(&old)?;
                    // Signatures others added (cross-signing) survive a
                    // re-upload of the same keys.
                    if let Some(sigs) = old.get("signatures").and_then(Value::as_object) {
                        let mut merged = old.clone();
                        merged["signatures"] = Value::Object(sigs.clone());
                        if let Some(new_sigs) = keys.get("signatures").and_then(Value::as_object) {
                            merge_signatures(&mut merged, new_sigs);
                        }
                        let sigs = merged["signatures"].clone();
                        keys["signatures"] = sigs;
                    }
                    if old == keys {
                        return Ok(None);
                    }
                }
                sqlx::query(
                    "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                )
                .bind(user)
                .bind(device)
                .bind(keys.to_string())
                .execute(&mut *tx)
                .await?;
                Ok(Some(commit_change(self, tx, &[user.to_owned()]).await?))
            }

            async fn device_keys(&self, user: &str) -> Result<Vec<(String, Value)>> {
                with_json(
                    sqlx::query_as(
                        "SELECT device_id, key_json FROM e2e_device_keys WHERE user_id = $1 ORDER BY device_id",
                    )
                    .bind(user)
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            async fn add_one_time_keys(
                &self,
                user: &str,
                device: &str,
                keys: &[(String, String, Value)],
            ) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                for (algorithm, key_id, key) in keys {
                    let held: Option<String> = sqlx::query_scalar(
                        "SELECT key_json FROM e2e_one_time_keys
                         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
                    )
                    .bind(user)
                    .bind(device)
                    .bind(algorithm)
                    .bind(key_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match held {
                        Some(h) if parse(&h)? == *key => continue,
                        Some(_) => {
                            return Err(Error::invalid_param(format!(
                                "One time key {algorithm}:{key_id} already exists with different content"
                            )));
                        }
                        None => {}
                    }
                    sqlx::query(
                        "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json)
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(user)
                    .bind(device)
                    .bind(algorithm)
                    .bind(key_id)
                    .bind(key.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn put_fallback_key(
                &self,
                user: &str,
                device: &str,
                algorithm: &str,
                key_id: &str,
                key: &Value,
            ) -> Result<()> {
                // Re-uploading the same key keeps its used flag.
                sqlx::query(
                    "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
                     VALUES ($1, $2, $3, $4, $5, 0)
                     ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET
                       used = CASE WHEN e2e_fallback_keys.key_id = excluded.key_id
                                    AND e2e_fallback_keys.key_json = excluded.key_json
                                   THEN e2e_fallback_keys.used ELSE 0 END,
                       key_id = excluded.key_id, key_json = excluded.key_json",
                )
                .bind(user)
                .bind(device)
                .bind(algorithm)
                .bind(key_id)
                .bind(key.to_string())
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn key_counts(
                &self,
                user: &str,
                device: &str,
            ) -> Result<(Vec<(String, i64)>, Vec<String>)> {
                // One round trip: this runs on every sync.
                let rows = sqlx::query(
                    "SELECT algorithm, COUNT(*) AS n, CAST(0 AS BIGINT) AS fallback FROM e2e_one_time_keys
                       WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
                     UNION ALL
                     SELECT algorithm, CAST(0 AS BIGINT) AS n, CAST(1 AS BIGINT) AS fallback FROM e2e_fallback_keys
                       WHERE user_id = $1 AND device_id = $2 AND used = 0",
                )
                .bind(user)
                .bind(device)
                .fetch_all(&self.pool)
                .await?;
                let (mut counts, mut fallback) = (vec![], vec![]);
                for r in &rows {
                    let algorithm: String = r.try_get(0)?;
                    let is_fallback: i64 = r.try_get(2)?;
                    if is_fallback == 1 {
                        fallback.push(algorithm);
                    } else {
                        counts.push((algorithm, r.try_get(1)?));
                    }
                }
                Ok((counts, fallback))
            }

            async fn claim_key(
                &self,
                user: &str,
                device: &str,
                algorithm: &str,
            ) -> Result<Option<(String, Value)>> {
                // A concurrent claim (this process's writer is one connection,
                // but other processes share Postgres) may take the row between
                // our select and delete: the delete then takes nothing and we
                // pick again. No key is ever handed out twice.
                for _ in 0..8 {
                    let mut tx = self.writer.begin().await?;
                    let pick: Option<(String, String)> = sqlx::query_as(
                        "SELECT key_id, key_json FROM e2e_one_time_keys
                         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                         ORDER BY key_id LIMIT 1",
                    )
                    .bind(user)
                    .bind(device)
                    .bind(algorithm)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((key_id, key)) = pick else {
                        break;
                    };
                    let taken = sqlx::query(
                        "DELETE FROM e2e_one_time_keys
                         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
                    )
                    .bind(user)
                    .bind(device)
                    .bind(algorithm)
                    .bind(&key_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    tx.commit().await?;
                    if taken == 1 {
                        return Ok(Some((format!("{algorithm}:{key_id}"), parse(&key)?)));
                    }
                }
                let fallback: Option<(String, String)> = sqlx::query_as(
                    "UPDATE e2e_fallback_keys SET used = 1
                     WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                     RETURNING key_id, key_json",
                )
                .bind(user)
                .bind(device)
                .bind(algorithm)
                .fetch_optional(&self.writer)
                .await?;
                fallback
                    .map(|(id, key)| Ok((format!("{algorithm}:{id}"), parse(&key)?)))
                    .transpose()
            }

            async fn put_cross_signing_keys(
                &self,
                user: &str,
                keys: &[(String, Value)],
            ) -> Result<i64> {
                let mut tx = self.writer.begin().await?;
                for (kind, key) in keys {
                    sqlx::query(
                        "INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
                         ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                    )
                    .bind(user)
                    .bind(kind)
                    .bind(key.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                commit_change(self, tx, &[user.to_owned()]).await
            }

            async fn cross_signing_keys(&self, user: &str) -> Result<Vec<(String, Value)>> {
                with_json(
                    sqlx::query_as(
                        "SELECT key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = $1",
                    )
                    .bind(user)
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            async fn add_key_signatures(
                &self,
                user: &str,
                key: &str,
                signatures: &Map<String, Value>,
            ) -> Result<bool> {
                let mut tx = self.writer.begin().await?;
                let device: Option<String> = sqlx::query_scalar(
                    "SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2",
                )
                .bind(user)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(json) = device {
                    let mut v = parse(&json)?;
                    merge_signatures(&mut v, signatures);
                    sqlx::query(
                        "UPDATE e2e_device_keys SET key_json = $3 WHERE user_id = $1 AND device_id = $2",
                    )
                    .bind(user)
                    .bind(key)
                    .bind(v.to_string())
                    .execute(&mut *tx)
                    .await?;
                } else {
                    let rows = sqlx::query(
                        "SELECT key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = $1",
                    )
                    .bind(user)
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut found = None;
                    for r in &rows {
                        let v = parse(&r.try_get::<String, _>(1)?)?;
                        let holds = v
                            .get("keys")
                            .and_then(Value::as_object)
                            .is_some_and(|k| k.values().any(|p| p.as_str() == Some(key)));
                        if holds {
                            found = Some((r.try_get::<String, _>(0)?, v));
                        }
                    }
                    let Some((kind, mut v)) = found else {
                        return Ok(false);
                    };
                    merge_signatures(&mut v, signatures);
                    sqlx::query(
                        "UPDATE e2e_cross_signing_keys SET key_json = $3 WHERE user_id = $1 AND key_type = $2",
                    )
                    .bind(user)
                    .bind(kind)
                    .bind(v.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                commit_change(self, tx, &[user.to_owned()]).await?;
                Ok(true)
            }

            async fn add_user_signatures(
                &self,
                signer: &str,
                target: &str,
                target_key: &str,
                signatures: &[(String, String)],
            ) -> Result<i64> {
                let mut tx = self.writer.begin().await?;
                for (key_id, sig) in signatures {
                    sqlx::query(
                        "INSERT INTO e2e_user_signatures (signer, target_user, target_key, key_id, signature)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (signer, target_user, target_key, key_id) DO UPDATE SET signature = excluded.signature",
                    )
                    .bind(signer)
                    .bind(target)
                    .bind(target_key)
                    .bind(key_id)
                    .bind(sig)
                    .execute(&mut *tx)
                    .await?;
                }
                commit_change(self, tx, &[signer.to_owned(), target.to_owned()]).await
            }

            async fn user_signatures(
                &self,
                signer: &str,
                target: &str,
            ) -> Result<Vec<(String, String, String)>> {
                Ok(sqlx::query_as(
                    "SELECT target_key, key_id, signature FROM e2e_user_signatures
                     WHERE signer = $1 AND target_user = $2",
                )
                .bind(signer)
                .bind(target)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn device_lists_changed(&self, users: &[String]) -> Result<i64> {
                let tx = self.writer.begin().await?;
                commit_change(self, tx, users).await
            }

            async fn device_list_changes(&self, after: i64, upto: i64) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT DISTINCT user_id FROM device_list_changes WHERE stream_id > $1 AND stream_id <= $2",
                )
                .bind(after)
                .bind(upto)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn device_list_position(&self, user: &str) -> Result<i64> {
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(stream_id) FROM device_list_changes WHERE user_id = $1",
                )
                .bind(user)
                .fetch_one(&self.pool)
                .await?;
                Ok(id.unwrap_or(0))
            }

            async fn delete_device_keys(&self, user: &str, devices: &[String]) -> Result<i64> {
                let mut tx = self.writer.begin().await?;
                for table in [
                    "e2e_device_keys",
                    "e2e_one_time_keys",
                    "e2e_fallback_keys",
                    "to_device_inbox",
                ] {
                    for device in devices {
                        sqlx::query(&format!(
                            "DELETE FROM {table} WHERE user_id = $1 AND device_id = $2"
                        ))
                        .bind(user)
                        .bind(device)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                commit_change(self, tx, &[user.to_owned()]).await
            }

            async fn queue_to_device(
                &self,
                txn: Option<(&str, &str, &str)>,
                messages: &[(String, String, Value)],
            ) -> Result<Option<i64>> {
                let mut tx = self.writer.begin().await?;
                if let Some((user, device, txn_id)) = txn {
                    let fresh = sqlx::query(
                        "INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(user)
                    .bind(device)
                    .bind(txn_id)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if fresh == 0 {
                        return Ok(None);
                    }
                }
                if messages.is_empty() {
                    tx.commit().await?;
                    return Ok(Some(0));
                }
                // One position for the whole request: a device gets all of a
                // request's messages in the same sync.
                let id = next_misc_id(&mut tx).await?;
                for (user, device, message) in messages {
                    sqlx::query(
                        "INSERT INTO to_device_inbox (stream_id, user_id, device_id, message)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(user)
                    .bind(device)
                    .bind(message.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                self.positions.advance_misc(id);
                Ok(Some(id))
            }

            async fn to_device_messages(
                &self,
                user: &str,
                device: &str,
                after: i64,
                upto: i64,
                limit: i64,
            ) -> Result<Vec<(i64, Value)>> {
                with_json(
                    sqlx::query_as(
                        "SELECT stream_id, message FROM to_device_inbox
                         WHERE user_id = $1 AND device_id = $2 AND stream_id > $3 AND stream_id <= $4
                         ORDER BY stream_id LIMIT $5",
                    )
                    .bind(user)
                    .bind(device)
                    .bind(after)
                    .bind(upto)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            async fn delete_to_device(&self, user: &str, device: &str, upto: i64) -> Result<()> {
                sqlx::query(
                    "DELETE FROM to_device_inbox WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3",
                )
                .bind(user)
                .bind(device)
                .bind(upto)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn create_backup(
                &self,
                user: &str,
                algorithm: &str,
                auth_data: &Value,
            ) -> Result<i64> {
                let mut tx = self.writer.begin().await?;
                let last: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(version) FROM backup_versions WHERE user_id = $1")
                        .bind(user)
                        .fetch_one(&mut *tx)
                        .await?;
                let version = last.unwrap_or(0) + 1;
                sqlx::query(
                    "INSERT INTO backup_versions (user_id, version, algorithm, auth_data, etag, deleted)
                     VALUES ($1, $2, $3, $4, 0, 0)",
                )
                .bind(user)
                .bind(version)
                .bind(algorithm)
                .bind(auth_data.to_string())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(version)
            }

            async fn backup_version(
                &self,
                user: &str,
                version: Option<i64>,
            ) -> Result<Option<BackupVersion>> {
                let row = sqlx::query(
                    "SELECT version, algorithm, auth_data, etag FROM backup_versions
                     WHERE user_id = $1 AND deleted = 0 AND ($2 IS NULL OR version = $2)
                     ORDER BY version DESC LIMIT 1",
                )
                .bind(user)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(BackupVersion {
                        version: r.try_get(0)?,
                        algorithm: r.try_get(1)?,
                        auth_data: parse(&r.try_get::<String, _>(2)?)?,
                        etag: r.try_get(3)?,
                    })
                })
                .transpose()
            }

            async fn update_backup(
                &self,
                user: &str,
                version: i64,
                auth_data: &Value,
            ) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE backup_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2 AND deleted = 0",
                )
                .bind(user)
                .bind(version)
                .bind(auth_data.to_string())
                .execute(&self.writer)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn delete_backup(&self, user: &str, version: i64) -> Result<bool> {
                let mut tx = self.writer.begin().await?;
                let n = sqlx::query(
                    "UPDATE backup_versions SET deleted = 1 WHERE user_id = $1 AND version = $2 AND deleted = 0",
                )
                .bind(user)
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                sqlx::query("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2")
                    .bind(user)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn put_backup_keys(
                &self,
                user: &str,
                version: i64,
                keys: &[BackupKey],
            ) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                for (room, session, data) in keys {
                    sqlx::query(
                        "INSERT INTO backup_keys (user_id, version, room_id, session_id, key_json)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET key_json = excluded.key_json",
                    )
                    .bind(user)
                    .bind(version)
                    .bind(room)
                    .bind(session)
                    .bind(data.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                if !keys.is_empty() {
                    bump_etag(&mut tx, user, version).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn backup_keys(
                &self,
                user: &str,
                version: i64,
                room: Option<&str>,
                session: Option<&str>,
            ) -> Result<Vec<BackupKey>> {
                let rows = sqlx::query(&format!(
                    "SELECT room_id, session_id, key_json FROM backup_keys WHERE {BACKUP_FILTER}
                     ORDER BY room_id, session_id"
                ))
                .bind(user)
                .bind(version)
                .bind(room)
                .bind(session)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get(0)?,
                            r.try_get(1)?,
                            parse(&r.try_get::<String, _>(2)?)?,
                        ))
                    })
                    .collect()
            }

            async fn delete_backup_keys(
                &self,
                user: &str,
                version: i64,
                room: Option<&str>,
                session: Option<&str>,
            ) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                sqlx::query(&format!("DELETE FROM backup_keys WHERE {BACKUP_FILTER}"))
                    .bind(user)
                    .bind(version)
                    .bind(room)
                    .bind(session)
                    .execute(&mut *tx)
                    .await?;
                bump_etag(&mut tx, user, version).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn backup_key_count(&self, user: &str, version: i64) -> Result<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM backup_keys WHERE user_id = $1 AND version = $2",
                )
                .bind(user)
                .bind(version)
                .fetch_one(&self.pool)
                .await?)
            }
        }
    };
}
pub(crate) use impl_key_store;
