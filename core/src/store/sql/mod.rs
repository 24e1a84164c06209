//! What the two relational backends share. The queries are written once, with
//! `$N` placeholders that SQLite and Postgres both accept, and each backend
//! instantiates them for its driver (`sqlite/`, `postgres/`); only opening a
//! database and a few dialect expressions differ.
//!
//! Both keep the same shape: reads on a pool, every write through one writer
//! connection (writers queue in order instead of colliding on locks), events
//! through the group-commit writer, stream positions and access tokens in
//! memory because this process is the database's only writer.
//!
//! Why macros per driver rather than code generic over `sqlx::Database`: a
//! generic query has to carry, at every function, the bounds that sqlx
//! states per driver — `Executor` for the pool and for a transaction's
//! connection at every lifetime (`for<'c> &'c mut DB::Connection:
//! Executor<'c>`), `Encode + Type` for each value bound, `Decode` and
//! `ColumnIndex` for each column read — and inside `#[async_trait]` methods
//! (whose futures must be `Send`) such code runs into "implementation of
//! `Executor` is not general enough" even with them spelled out. Expanded
//! once per driver, every query is type-checked against the concrete
//! `Sqlite` or `Postgres` types with no bounds to keep in step, and each
//! dialect's statements and fragments (the `sql_backend!` arguments below)
//! are compile-time literals, a fragment joined into its query by `concat!`,
//! so no SQL is formatted at run time. The cost: an error in a query is
//! reported in the macro's expansion, once per driver.

/// Instantiates every query module for one driver: `$join_rule` is the
/// dialect's expression for an `m.room.join_rules` event's rule (event JSON in
/// `e.json`), `$next_stream_id` the statement that draws the next position of
/// the events stream (for a receipt), `$stream_lock` the statement (if any)
/// that a transaction drawing events-stream positions takes first, `$now_ms`
/// the database clock in unix ms and `$row_lock` the clause that keeps a read
/// row locked until commit (room writer leases).
macro_rules! sql_backend {
    ($db:ty, join_rule: $join_rule:literal, next_stream_id: $next_stream_id:literal, stream_lock: $stream_lock:expr,
     now_ms: $now_ms:literal, row_lock: $row_lock:literal) => {
        mod accounts {
            crate::store::sql::accounts::impl_account_store!($db);
        }
        mod data {
            crate::store::sql::data::impl_data_store!($db, $next_stream_id, $stream_lock);
        }
        mod keys {
            crate::store::sql::keys::impl_key_store!($db);
        }
        mod leases {
            crate::store::sql::leases::impl_room_leases!($db, $now_ms, $row_lock);
        }
        mod events {
            crate::store::sql::events::impl_commit_events!($db, $stream_lock);
        }
        mod rooms {
            crate::store::sql::rooms::impl_room_store!($db, $join_rule);
        }
        mod push {
            crate::store::sql::push::impl_push_store!($db);
        }
    };
}
pub(crate) use sql_backend;

pub(crate) mod accounts;
pub(crate) mod data;
pub(crate) mod events;
pub(crate) mod group_commit;
pub(crate) mod keys;
pub(crate) mod leases;
pub(crate) mod positions;
pub(crate) mod push;
pub(crate) mod read_cache;
pub(crate) mod rooms;

use std::sync::Arc;

use positions::Positions;
use sqlx::Pool;

use crate::{
    Error, Result,
    pdu::{Pdu, StoredEvent},
};

/// Users (and tokens) whose rows are kept in memory.
const CACHED_USERS: usize = 100_000;

/// A relational store: SQLite or Postgres.
pub struct SqlStore<DB: sqlx::Database> {
    pub(crate) pool: Pool<DB>,
    pub(crate) writer: Pool<DB>,
    pub(crate) commits: group_commit::GroupCommit,
    pub(crate) positions: Arc<Positions>,
    /// token hash → (user, device)
    pub(crate) tokens: Arc<read_cache::ReadCache<String, (String, String)>>,
    /// user → their membership records
    pub(crate) memberships: Arc<read_cache::ReadCache<String, Vec<crate::store::MembershipRecord>>>,
}

/// Wraps opened, migrated pools; reads where the streams stand.
pub(crate) async fn from_pools<DB: group_commit::CommitEvents>(
    pool: Pool<DB>,
    writer: Pool<DB>,
) -> Result<SqlStore<DB>> {
    let (events, misc) = DB::stream_heads(&pool).await?;
    let positions = Arc::new(Positions::starting_at(events, misc));
    let memberships = Arc::new(read_cache::ReadCache::new(CACHED_USERS));
    let commits =
        group_commit::GroupCommit::start(writer.clone(), positions.clone(), memberships.clone());
    Ok(SqlStore {
        pool,
        writer,
        commits,
        positions,
        tokens: Arc::new(read_cache::ReadCache::new(CACHED_USERS)),
        memberships,
    })
}

impl<DB: sqlx::Database> SqlStore<DB> {
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// This database's own position in a list of positions per shard (a store
/// used on its own is shard 0; the sharded store hands each shard its own).
pub(crate) fn own(positions: &[i64]) -> i64 {
    positions.first().copied().unwrap_or(0)
}

/// The event an event relates to (`content.m.relates_to.event_id`), kept
/// in its own column for relation lookups.
pub(crate) fn relates_to(pdu: &crate::pdu::Pdu) -> Option<&str> {
    pdu.json
        .get("content")
        .and_then(|c| c.get("m.relates_to"))
        .and_then(|r| r.get("event_id"))
        .and_then(serde_json::Value::as_str)
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

pub(crate) fn event_from_parts(
    event_id: String,
    json: String,
    stream_ordering: i64,
    txn_device: Option<String>,
    txn_id: Option<String>,
) -> Result<StoredEvent> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json)?;
    let event_id = ruma::OwnedEventId::try_from(event_id).map_err(Error::internal)?;
    let pdu = Pdu::from_json(event_id, map)?;
    Ok(StoredEvent {
        pdu,
        stream_ordering,
        txn: txn_device.zip(txn_id),
    })
}
