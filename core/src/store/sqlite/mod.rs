//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed transaction is on disk before a send is acknowledged.

mod accounts;
mod data;
mod group_commit;
mod rooms;
mod token_cache;

use std::{
    path::Path,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use sqlx::{
    Row, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use crate::{
    Error, Result,
    pdu::{Pdu, StoredEvent},
};

const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Reads go to a pool of connections; every write goes through one writer
/// connection, so writers queue in order instead of colliding on SQLite's lock
/// and sleeping in its busy handler.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    commits: group_commit::GroupCommit,
    positions: Arc<Positions>,
    tokens: Arc<token_cache::TokenCache>,
}

/// The newest committed position of each stream. Only this process writes the
/// file, so it can keep them in memory instead of asking SQLite on every sync.
#[derive(Default)]
pub(crate) struct Positions {
    events: AtomicI64,
    misc: AtomicI64,
}

impl Positions {
    /// Called after a commit, never before: a reader that sees a position can
    /// read everything up to it.
    pub(crate) fn advance_events(&self, to: i64) {
        self.events.fetch_max(to, Ordering::AcqRel);
    }

    pub(crate) fn advance_misc(&self, to: i64) {
        self.misc.fetch_max(to, Ordering::AcqRel);
    }

    pub(crate) fn events(&self) -> i64 {
        self.events.load(Ordering::Acquire)
    }

    pub(crate) fn misc(&self) -> i64 {
        self.misc.load(Ordering::Acquire)
    }
}

impl SqliteStore {
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
        let positions = Arc::new(Positions::default());
        let events: Option<i64> = sqlx::query_scalar("SELECT max(stream_ordering) FROM events")
            .fetch_one(&pool)
            .await?;
        positions.advance_events(events.unwrap_or(0));
        let misc: i64 = sqlx::query_scalar("SELECT value FROM stream_ids WHERE name = 'misc'")
            .fetch_one(&pool)
            .await?;
        positions.advance_misc(misc);
        let commits = group_commit::GroupCommit::start(writer.clone(), positions.clone());
        let store = Self {
            pool,
            writer,
            commits,
            positions,
            tokens: Arc::default(),
        };
        store.spawn_checkpointer();
        Ok(store)
    }

    /// Copies the WAL back into the database file in the background. PASSIVE
    /// never blocks the writer or readers; SQLite restarts the WAL from its
    /// start once a checkpoint has caught up, so the file stays bounded.
    fn spawn_checkpointer(&self) {
        let pool = self.pool.clone();
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

    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Rows selected with `EVENT_COLUMNS` become `StoredEvent`s.
pub(crate) const EVENT_COLUMNS: &str =
    "e.event_id, e.json, e.stream_ordering, e.txn_device, e.txn_id";

pub(crate) fn event_from_row(row: &SqliteRow) -> Result<StoredEvent> {
    let event_id: String = row.try_get(0)?;
    let json: String = row.try_get(1)?;
    let stream_ordering: i64 = row.try_get(2)?;
    let txn_device: Option<String> = row.try_get(3)?;
    let txn_id: Option<String> = row.try_get(4)?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json)?;
    let event_id = ruma::OwnedEventId::try_from(event_id).map_err(Error::internal)?;
    let pdu = Pdu::from_json(event_id, map)?;
    Ok(StoredEvent {
        pdu,
        stream_ordering,
        txn: txn_device.zip(txn_id),
    })
}
