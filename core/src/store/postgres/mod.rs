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
    next_stream_id: "SELECT nextval(pg_get_serial_sequence('events', 'stream_ordering'))"
);

pub type PgStore = SqlStore<Postgres>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl SqlStore<Postgres> {
    /// Connects to the database at `url` and applies migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)?
            .application_name("hearth")
            .options([("synchronous_commit", "on")]);
        let writer = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        from_pools(pool, writer).await
    }
}
