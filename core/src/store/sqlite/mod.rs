//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed transaction is on disk before a send is acknowledged.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    Sqlite, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::sql::{SqlStore, from_pools};
use crate::Result;

super::sql::sql_backend!(
    sqlx::Sqlite,
    join_rule: "json_extract(e.json, '$.content.join_rule')",
    next_stream_id: "UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'events' RETURNING seq",
    // One writer connection in one process: positions commit in order.
    stream_lock: None,
    now_ms: "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    row_lock: ""
);

pub type SqliteStore = SqlStore<Sqlite>;

const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false);
        // Checkpoints run beside the writer (see `spawn_checkpointer`), never
        // inside a commit that a client is waiting on.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(opts.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        MIGRATOR.run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        spawn_checkpointer(pool.clone());
        from_pools(pool, writer).await
    }
}

/// Copies the WAL back into the database file in the background. PASSIVE
/// never blocks the writer or readers; SQLite restarts the WAL from its start
/// once a checkpoint has caught up, so the file stays bounded.
fn spawn_checkpointer(pool: SqlitePool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.is_closed() {
                break;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&pool)
                .await
            {
                tracing::warn!("WAL checkpoint failed: {e}");
            }
        }
    });
}
