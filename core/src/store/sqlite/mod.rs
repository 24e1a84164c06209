//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed transaction is on disk before a send is acknowledged.

mod accounts;
mod data;
mod rooms;

use std::{path::Path, str::FromStr, time::Duration};

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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn close(&self) {
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
