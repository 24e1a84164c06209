//! Push storage (spec/push.md): pushers and the notifications push rules
//! raised. Both live in the main database (the sharded store routes here).

use async_trait::async_trait;
use serde_json::Value;

use crate::Result;

/// A pusher as `/pushers/set` stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct PusherRecord {
    pub user_id: String,
    /// The device that set it ("" when it had none).
    pub device_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// The `data` object as given (with `url`).
    pub data: Value,
    /// When the pushkey was last set (unix ms).
    pub pushkey_ts: i64,
    /// The newest notification id this pusher has dealt with.
    pub last_notification: i64,
}

/// A notification to record: an event that notified a user.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub user_id: String,
    pub room_id: String,
    pub event_id: String,
    pub stream_ordering: i64,
    pub actions: Value,
    pub highlight: bool,
    pub ts: i64,
}

/// A recorded notification.
#[derive(Debug, Clone)]
pub struct NotificationRecord {
    pub id: i64,
    pub room_id: String,
    pub event_id: String,
    pub stream_ordering: i64,
    pub actions: Value,
    pub highlight: bool,
    pub ts: i64,
}

#[async_trait]
pub trait PushStore: Send + Sync {
    /// Adds or replaces the user's pusher (app_id, pushkey). Unless
    /// `append`, other users' pushers with the same app_id and pushkey go.
    /// A new pusher starts after the user's newest notification.
    async fn set_pusher(&self, p: &PusherRecord, append: bool) -> Result<()>;
    /// Whether there was such a pusher.
    async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<bool>;
    /// Deletes the pushers the user's `devices` set.
    async fn delete_device_pushers(&self, user_id: &str, devices: &[String]) -> Result<()>;
    async fn pushers(&self, user_id: &str) -> Result<Vec<PusherRecord>>;
    /// Users with a pusher behind their newest notification (work left
    /// over from before a restart).
    async fn users_with_pending_pushes(&self) -> Result<Vec<String>>;
    /// Moves a pusher's `last_notification` forward (never back).
    async fn pusher_delivered(
        &self,
        user_id: &str,
        app_id: &str,
        pushkey: &str,
        upto: i64,
    ) -> Result<()>;
    /// Records notifications (an event already recorded for a user is
    /// skipped), in one transaction.
    async fn add_notifications(&self, rows: &[NewNotification]) -> Result<()>;
    /// The user's notifications with `id > after`, newest first.
    async fn notifications_after(
        &self,
        user_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>>;
}

/// Expands to the implementation for `SqlStore<$db>`; invoke it inside a
/// module of its own (it brings its own imports).
macro_rules! impl_push_store {
    ($db:ty) => {
        use async_trait::async_trait;
        use sqlx::Row;

        /// Notification rows per INSERT (7 parameters each: well under
        /// SQLite's and Postgres's parameter limits).
        const INSERT_CHUNK: usize = 500;

        use crate::{
            Result,
            store::{NewNotification, NotificationRecord, PushStore, PusherRecord},
        };

        const PUSHER_COLUMNS: &str = "user_id, device_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data, pushkey_ts, last_notification";
        const NOTIFICATION_COLUMNS: &str =
            "id, room_id, event_id, stream_ordering, actions, highlight, ts";

        fn pusher_from_row(r: &<$db as sqlx::Database>::Row) -> Result<PusherRecord> {
            let data: String = r.try_get("data")?;
            Ok(PusherRecord {
                user_id: r.try_get("user_id")?,
                device_id: r.try_get("device_id")?,
                app_id: r.try_get("app_id")?,
                pushkey: r.try_get("pushkey")?,
                kind: r.try_get("kind")?,
                app_display_name: r.try_get("app_display_name")?,
                device_display_name: r.try_get("device_display_name")?,
                profile_tag: r.try_get("profile_tag")?,
                lang: r.try_get("lang")?,
                data: serde_json::from_str(&data)?,
                pushkey_ts: r.try_get("pushkey_ts")?,
                last_notification: r.try_get("last_notification")?,
            })
        }

        /// A user's notifications with ids strictly inside `(after, before)`
        /// (only highlights, if asked), newest first, at most `limit`.
        async fn notifications_between(
            store: &crate::store::sql::SqlStore<$db>,
            user_id: &str,
            (after, before): (i64, i64),
            only_highlight: bool,
            limit: i64,
        ) -> Result<Vec<NotificationRecord>> {
            let rows = sqlx::query(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM push_notifications
                 WHERE user_id = $1 AND id > $2 AND id < $3 AND highlight >= $4
                 ORDER BY id DESC LIMIT $5"
            ))
            .bind(user_id)
            .bind(after)
            .bind(before)
            .bind(i64::from(only_highlight))
            .bind(limit)
            .fetch_all(&store.pool)
            .await?;
            rows.iter().map(notification_from_row).collect()
        }

        fn notification_from_row(r: &<$db as sqlx::Database>::Row) -> Result<NotificationRecord> {
            let actions: String = r.try_get("actions")?;
            Ok(NotificationRecord {
                id: r.try_get("id")?,
                room_id: r.try_get("room_id")?,
                event_id: r.try_get("event_id")?,
                stream_ordering: r.try_get("stream_ordering")?,
                actions: serde_json::from_str(&actions)?,
                highlight: r.try_get::<i64, _>("highlight")? != 0,
                ts: r.try_get("ts")?,
            })
        }

        #[async_trait]
        impl PushStore for crate::store::sql::SqlStore<$db> {
            async fn set_pusher(&self, p: &PusherRecord, append: bool) -> Result<()> {
                let mut tx = self.writer.begin().await?;
                if !append {
                    sqlx::query(
                        "DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3",
                    )
                    .bind(&p.app_id)
                    .bind(&p.pushkey)
                    .bind(&p.user_id)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, device_display_name,
                       profile_tag, lang, data, pushkey_ts, last_notification, device_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                       COALESCE((SELECT MAX(id) FROM push_notifications WHERE user_id = $1), 0), $11)
                     ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET
                       device_id = excluded.device_id, kind = excluded.kind, app_display_name = excluded.app_display_name,
                       device_display_name = excluded.device_display_name,
                       profile_tag = excluded.profile_tag, lang = excluded.lang,
                       data = excluded.data, pushkey_ts = excluded.pushkey_ts",
                )
                .bind(&p.user_id)
                .bind(&p.app_id)
                .bind(&p.pushkey)
                .bind(&p.kind)
                .bind(&p.app_display_name)
                .bind(&p.device_display_name)
                .bind(&p.profile_tag)
                .bind(&p.lang)
                .bind(p.data.to_string())
                .bind(p.pushkey_ts)
                .bind(&p.device_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn delete_device_pushers(&self, user_id: &str, devices: &[String]) -> Result<()> {
                for device in devices {
                    sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND device_id = $2")
                        .bind(user_id)
                        .bind(device)
                        .execute(&self.writer)
                        .await?;
                }
                Ok(())
            }

            async fn delete_pusher(
                &self,
                user_id: &str,
                app_id: &str,
                pushkey: &str,
            ) -> Result<bool> {
                let res = sqlx::query(
                    "DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
                )
                .bind(user_id)
                .bind(app_id)
                .bind(pushkey)
                .execute(&self.writer)
                .await?;
                Ok(res.rows_affected() > 0)
            }

            async fn pushers(&self, user_id: &str) -> Result<Vec<PusherRecord>> {
                let rows = sqlx::query(&format!(
                    "SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey"
                ))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(pusher_from_row).collect()
            }

            async fn users_with_pending_pushes(&self) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT DISTINCT p.user_id FROM pushers p WHERE EXISTS
                       (SELECT 1 FROM push_notifications n WHERE n.user_id = p.user_id AND n.id > p.last_notification)",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn pusher_delivered(
                &self,
                user_id: &str,
                app_id: &str,
                pushkey: &str,
                upto: i64,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE pushers SET last_notification = $4
                     WHERE user_id = $1 AND app_id = $2 AND pushkey = $3 AND last_notification < $4",
                )
                .bind(user_id)
                .bind(app_id)
                .bind(pushkey)
                .bind(upto)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn add_notifications(&self, rows: &[NewNotification]) -> Result<()> {
                if rows.is_empty() {
                    return Ok(());
                }
                // Many rows per statement: a busy room raises one row per
                // member per message, and one statement per row cost more than
                // the commits of the messages themselves.
                let mut tx = self.writer.begin().await?;
                for chunk in rows.chunks(INSERT_CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO push_notifications (user_id, room_id, event_id, stream_ordering, actions, highlight, ts) ",
                    );
                    q.push_values(chunk, |mut b, n| {
                        b.push_bind(&n.user_id)
                            .push_bind(&n.room_id)
                            .push_bind(&n.event_id)
                            .push_bind(n.stream_ordering)
                            .push_bind(n.actions.to_string())
                            .push_bind(i64::from(n.highlight))
                            .push_bind(n.ts);
                    });
                    q.push(" ON CONFLICT (user_id, event_id) DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn notifications_after(
                &self,
                user_id: &str,
                after: i64,
                limit: i64,
            ) -> Result<Vec<NotificationRecord>> {
                notifications_between(self, user_id, (after, i64::MAX), false, limit).await
            }
        }
    };
}
pub(crate) use impl_push_store;
