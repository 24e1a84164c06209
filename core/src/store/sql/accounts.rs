//! Accounts, devices, tokens and filters, in SQL both backends accept.

/// Expands to the implementation for `SqlStore<$db>`; invoke it inside a
/// module of its own (it brings its own imports).
macro_rules! impl_account_store {
    ($db:ty) => {
        use async_trait::async_trait;
        use serde_json::Value;
        use sqlx::Row;

        use crate::store::sql::now_ms;
        use crate::{
            Error, Result,
            store::{AccountStore, DeviceRecord, UserRecord},
        };

        fn user_from_row(row: &<$db as sqlx::Database>::Row) -> Result<UserRecord> {
            Ok(UserRecord {
                user_id: row.try_get("user_id")?,
                password_hash: row.try_get("password_hash")?,
                is_admin: row.try_get::<i64, _>("is_admin")? != 0,
                deactivated: row.try_get::<i64, _>("deactivated")? != 0,
                displayname: row.try_get("displayname")?,
                avatar_url: row.try_get("avatar_url")?,
            })
        }

        fn device_from_row(row: &<$db as sqlx::Database>::Row) -> Result<DeviceRecord> {
            Ok(DeviceRecord {
                device_id: row.try_get("device_id")?,
                display_name: row.try_get("display_name")?,
                last_seen_ip: row.try_get("last_seen_ip")?,
                last_seen_ts: row.try_get("last_seen_ts")?,
            })
        }

        /// Sets one nullable text column of a user's row.
        async fn set_user_column(
            store: &crate::store::sql::SqlStore<$db>,
            column: &str,
            value: Option<&str>,
            user_id: &str,
        ) -> Result<()> {
            sqlx::query(&format!("UPDATE users SET {column} = $1 WHERE user_id = $2"))
                .bind(value)
                .bind(user_id)
                .execute(&store.writer)
                .await?;
            Ok(())
        }

        /// Which of a user's devices a deletion takes.
        enum Devices<'a> {
            All,
            One(&'a str),
            AllBut(&'a str),
        }

        /// Deletes the access tokens and device rows of the user's devices
        /// that `which` names.
        async fn delete_sessions(
            tx: &mut sqlx::Transaction<'_, $db>,
            user_id: &str,
            which: Devices<'_>,
        ) -> Result<()> {
            let (clause, device) = match which {
                Devices::All => ("", None),
                Devices::One(d) => (" AND device_id = $2", Some(d)),
                Devices::AllBut(d) => (" AND device_id != $2", Some(d)),
            };
            for table in ["access_tokens", "devices"] {
                let sql = format!("DELETE FROM {table} WHERE user_id = $1{clause}");
                let mut query = sqlx::query(&sql).bind(user_id);
                if let Some(d) = device {
                    query = query.bind(d);
                }
                query.execute(&mut **tx).await?;
            }
            Ok(())
        }

        #[async_trait]
        impl AccountStore for crate::store::sql::SqlStore<$db> {
            async fn create_user(
                &self,
                user_id: &str,
                password_hash: Option<&str>,
                is_admin: bool,
            ) -> Result<()> {
                let res = sqlx::query(
                    "INSERT INTO users (user_id, password_hash, is_admin, created_ts) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user_id)
                .bind(password_hash)
                .bind(is_admin as i64)
                .bind(now_ms())
                .execute(&self.writer)
                .await?;
                if res.rows_affected() == 0 {
                    return Err(Error::UserInUse);
                }
                Ok(())
            }

            async fn get_user(&self, user_id: &str) -> Result<Option<UserRecord>> {
                let row = sqlx::query("SELECT * FROM users WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<()> {
                set_user_column(self, "password_hash", Some(hash), user_id).await
            }

            async fn deactivate_user(&self, user_id: &str) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                sqlx::query("UPDATE users SET deactivated = 1, password_hash = NULL, displayname = NULL, avatar_url = NULL WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                delete_sessions(&mut tx, user_id, Devices::All).await?;
                tx.commit().await?;
                self.tokens.forget_all();
                Ok(())
            }

            async fn set_displayname(&self, user_id: &str, name: Option<&str>) -> Result<()> {
                set_user_column(self, "displayname", name, user_id).await
            }

            async fn set_avatar_url(&self, user_id: &str, url: Option<&str>) -> Result<()> {
                set_user_column(self, "avatar_url", url, user_id).await
            }

            async fn search_users(&self, term: &str, limit: i64) -> Result<Vec<UserRecord>> {
                let pattern = format!(
                    "%{}%",
                    term.to_lowercase().replace('%', "\\%").replace('_', "\\_")
                );
                let rows = sqlx::query(
                    "SELECT * FROM users WHERE deactivated = 0 AND
                     (lower(user_id) LIKE $1 ESCAPE '\\' OR lower(coalesce(displayname, '')) LIKE $2 ESCAPE '\\')
                     ORDER BY user_id LIMIT $3",
                )
                .bind(&pattern)
                .bind(&pattern)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(user_from_row).collect()
            }

            async fn add_device_token(
                &self,
                user_id: &str,
                device_id: &str,
                display_name: Option<&str>,
                token_hash: &str,
            ) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                sqlx::query(
                    "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (user_id, device_id) DO UPDATE SET
                       display_name = coalesce(excluded.display_name, devices.display_name)",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(display_name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                // Logging in again with an existing device id replaces its old tokens.
                sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)")
                    .bind(token_hash)
                    .bind(user_id)
                    .bind(device_id)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.tokens
                    .forget_where(|_, (u, d)| u == user_id && d == device_id);
                Ok(())
            }

            async fn find_token(&self, token_hash: &str) -> Result<Option<(String, String)>> {
                if let Some(owner) = self.tokens.get(token_hash) {
                    return Ok(Some(owner));
                }
                let generation = self.tokens.generation();
                let row = sqlx::query("SELECT user_id, device_id FROM access_tokens WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(r) = row else { return Ok(None) };
                let owner: (String, String) = (r.try_get(0)?, r.try_get(1)?);
                self.tokens
                    .insert(generation, token_hash.to_owned(), owner.clone());
                Ok(Some(owner))
            }

            async fn delete_token(&self, token_hash: &str) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                let row = sqlx::query(
                    "DELETE FROM access_tokens WHERE token_hash = $1 RETURNING user_id, device_id",
                )
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?;
                // Logging out removes the device, as the spec says.
                if let Some(r) = row {
                    let (u, d): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                    sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
                        .bind(u)
                        .bind(d)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                self.tokens.forget_all();
                Ok(())
            }

            async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRecord>> {
                let rows = sqlx::query("SELECT * FROM devices WHERE user_id = $1 ORDER BY device_id")
                    .bind(user_id)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(device_from_row).collect()
            }

            async fn get_device(&self, user_id: &str, device_id: &str) -> Result<Option<DeviceRecord>> {
                let row = sqlx::query("SELECT * FROM devices WHERE user_id = $1 AND device_id = $2")
                    .bind(user_id)
                    .bind(device_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(device_from_row).transpose()
            }

            async fn rename_device(
                &self,
                user_id: &str,
                device_id: &str,
                name: Option<&str>,
            ) -> Result<bool> {
                let res =
                    sqlx::query("UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3")
                        .bind(name)
                        .bind(user_id)
                        .bind(device_id)
                        .execute(&self.writer)
                        .await?;
                Ok(res.rows_affected() > 0)
            }

            async fn delete_devices(&self, user_id: &str, device_ids: Option<&[String]>) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                match device_ids {
                    None => delete_sessions(&mut tx, user_id, Devices::All).await?,
                    Some(ids) => {
                        for d in ids {
                            delete_sessions(&mut tx, user_id, Devices::One(d)).await?;
                        }
                    }
                }
                tx.commit().await?;
                self.tokens.forget_all();
                Ok(())
            }

            async fn delete_other_tokens(
                &self,
                user_id: &str,
                keep_token_hash: Option<&str>,
            ) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                let keep_device: Option<String> = match keep_token_hash {
                    Some(h) => {
                        sqlx::query_scalar("SELECT device_id FROM access_tokens WHERE token_hash = $1")
                            .bind(h)
                            .fetch_optional(&mut *tx)
                            .await?
                    }
                    None => None,
                };
                let keep_device = keep_device.unwrap_or_default();
                delete_sessions(&mut tx, user_id, Devices::AllBut(&keep_device)).await?;
                tx.commit().await?;
                self.tokens.forget_all();
                Ok(())
            }

            async fn touch_device(
                &self,
                user_id: &str,
                device_id: &str,
                ip: Option<&str>,
                ts: i64,
            ) -> Result<()> {
                sqlx::query("UPDATE devices SET last_seen_ip = coalesce($1, last_seen_ip), last_seen_ts = $2 WHERE user_id = $3 AND device_id = $4")
                    .bind(ip)
                    .bind(ts)
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn save_filter(&self, user_id: &str, filter: &Value) -> Result<String> {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO filters (user_id, filter_json) VALUES ($1, $2) RETURNING filter_id",
                )
                .bind(user_id)
                .bind(filter.to_string())
                .fetch_one(&self.writer)
                .await?;
                Ok(id.to_string())
            }

            async fn uia_session(
                &self,
                session: &str,
                since_ms: i64,
            ) -> Result<Option<(String, Vec<String>)>> {
                let row: Option<(String, String)> = sqlx::query_as(
                    "SELECT binding, completed FROM uia_sessions WHERE session_id = $1 AND touched_ts >= $2",
                )
                .bind(session)
                .bind(since_ms)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|(binding, completed)| Ok((binding, serde_json::from_str(&completed)?)))
                    .transpose()
            }

            async fn put_uia_session(
                &self,
                session: &str,
                binding: &str,
                completed: &[String],
                expire_before_ms: i64,
            ) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                sqlx::query("DELETE FROM uia_sessions WHERE touched_ts < $1")
                    .bind(expire_before_ms)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO uia_sessions (session_id, binding, completed, touched_ts) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (session_id) DO UPDATE SET binding = excluded.binding,
                       completed = excluded.completed, touched_ts = excluded.touched_ts",
                )
                .bind(session)
                .bind(binding)
                .bind(serde_json::to_string(completed)?)
                .bind(crate::store::sql::now_ms())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn delete_uia_session(&self, session: &str) -> Result<()> {
                sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1")
                    .bind(session)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn add_openid_token(
                &self,
                token_hash: &str,
                user_id: &str,
                expires_ms: i64,
                now_ms: i64,
            ) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                sqlx::query("DELETE FROM openid_tokens WHERE expires_ts < $1")
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)",
                )
                .bind(token_hash)
                .bind(user_id)
                .bind(expires_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn openid_token_user(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts >= $2",
                )
                .bind(token_hash)
                .bind(now_ms)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn uia_session_params(&self, session: &str) -> Result<Option<Value>> {
                let text: Option<Option<String>> =
                    sqlx::query_scalar("SELECT params FROM uia_sessions WHERE session_id = $1")
                        .bind(session)
                        .fetch_optional(&self.pool)
                        .await?;
                text.flatten()
                    .map(|t| Ok(serde_json::from_str(&t)?))
                    .transpose()
            }

            async fn set_uia_session_params(&self, session: &str, params: &Value) -> Result<()> {
                sqlx::query("UPDATE uia_sessions SET params = $1 WHERE session_id = $2")
                    .bind(params.to_string())
                    .bind(session)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn get_filter(&self, user_id: &str, filter_id: &str) -> Result<Option<Value>> {
                let Ok(id) = filter_id.parse::<i64>() else {
                    return Ok(None);
                };
                let json: Option<String> = sqlx::query_scalar(
                    "SELECT filter_json FROM filters WHERE user_id = $1 AND filter_id = $2",
                )
                .bind(user_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match json {
                    Some(j) => Some(serde_json::from_str(&j)?),
                    None => None,
                })
            }
        }

    };
}
pub(crate) use impl_account_store;
