//! The scale-out backend: Postgres, through the same queries as SQLite. A
//! commit returns once Postgres has flushed it (`synchronous_commit` on).

use std::{str::FromStr, time::Duration};

use sqlx::{
    Postgres,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::sql::{SqlStore, from_pools};
use crate::Result;

super::sql::sql_backend!(
    sqlx::Postgres,
    join_rule: "(e.json::jsonb -> 'content' ->> 'join_rule')",
    next_stream_id: "SELECT nextval(pg_get_serial_sequence('events', 'stream_ordering'))",
    // Several processes may write this database: a position is drawn and
    // committed under one lock, so positions become visible in order and a
    // reader that sees position N can read everything below it.
    stream_lock: Some("SELECT pg_advisory_xact_lock(7226115)"),
    now_ms: "(extract(epoch from clock_timestamp()) * 1000)::bigint",
    row_lock: " FOR SHARE"
);

pub type PgStore = SqlStore<Postgres>;

/// How long a query waits for a connection, reconnect attempts included
/// (sqlx 0.8 has no separate connect timeout: the pool bounds each attempt by
/// what is left of this). When the database is down, a request touching it
/// fails after this long with 503 instead of hanging. A healthy pool lends a
/// connection far sooner; waiting this long means the database is overwhelmed,
/// and 503 is the right answer then too.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(2500);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl SqlStore<Postgres> {
    /// Connects to the database at `url` and applies migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)?
            .application_name("hearth")
            .options([("synchronous_commit", "on")]);
        // Both pools test a connection before lending it (sqlx's default) and
        // replace a dead one, so after an outage they reconnect by themselves.
        let writer = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await?;
        from_pools(pool, writer).await
    }
}
