//! The Hearth homeserver: `homeserver` serves; `homeserver create-user` is the
//! operator's way to add accounts when registration is closed.

mod config;
mod lock;

/// mimalloc hands freed memory back to the OS, where glibc's per-thread arenas
/// keep the peaks of bursty work (password hashing, big sync responses).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use hearth_core::{
    Hearth,
    store::{Stores, postgres::PgStore, sharded::ShardedStore, sqlite::SqliteStore},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "homeserver", version, about = "Hearth, a Matrix homeserver")]
struct Cli {
    #[command(flatten)]
    overrides: config::Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Create a user account.
    CreateUser {
        /// Localpart of the new user (e.g. `alice` for @alice:server).
        username: String,
        /// Password; read from HEARTH_NEW_PASSWORD when not given.
        #[arg(long, env = "HEARTH_NEW_PASSWORD")]
        password: String,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Make a new signing key current (the old one stays published for the
    /// events it signed). Takes effect when the server next starts.
    RotateKey,
}

/// How long shutdown waits for the background tasks (senders, sweepers,
/// the bus) once told to stop; they stop at their next wait, so this only
/// bounds one in-flight request or write.
const TASKS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<()> {
    init_tracing();
    raise_open_file_limit();
    let cli = Cli::parse();
    let cfg = config::load(&cli.overrides)?;
    // Every command writes the database: serving, and the admin commands.
    let _data_dir_lock = match &cfg.database_url {
        None => Some(lock::acquire(&cfg.core.data_dir)?),
        Some(_) => None,
    };
    let backend = open_backend(&cfg).await?;
    let hearth = Hearth::new(cfg.core.clone(), backend.stores()).await?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CreateUser {
            username,
            password,
            admin,
        } => {
            let id = hearth
                .accounts
                .create_account(&username, Some(&password), admin)
                .await?;
            println!("created {id}");
        }
        Command::RotateKey => {
            let key_id =
                hearth_core::keys::ServerKeys::add_key(backend.stores().main.as_ref()).await?;
            println!("new signing key {key_id}; restart the server to sign with it");
        }
        Command::Serve => serve(&cfg, hearth).await?,
    }
    backend.close().await;
    Ok(())
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // ruma's auth checks log every event they allow at info.
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,ruma_state_res=warn")),
        )
        .init();
}

async fn open_backend(cfg: &config::Config) -> Result<Backend> {
    Ok(match &cfg.database_url {
        Some(url) if !cfg.database_shards.is_empty() => Backend::Sharded(Arc::new(
            ShardedStore::connect(url, &cfg.database_shards)
                .await
                .context("connecting to the main database and its shards")?,
        )),
        Some(url) => Backend::Postgres(Arc::new(
            PgStore::connect(url)
                .await
                .context("connecting to the Postgres database")?,
        )),
        None => Backend::Sqlite(Arc::new(
            SqliteStore::open(&cfg.core.data_dir.join("hearth.db"))
                .await
                .context("opening the database")?,
        )),
    })
}

/// Serves until a signal, then drains: long-polls and sockets first, then
/// the federation listener, then the background tasks.
async fn serve(cfg: &config::Config, hearth: Arc<Hearth>) -> Result<()> {
    let listener = bind(cfg.listen).await?;
    tracing::info!(
        server_name = %cfg.core.server_name,
        listen = %listener.local_addr()?,
        data_dir = %cfg.core.data_dir.display(),
        "Hearth is ready"
    );
    hearth_appservices::start_senders(hearth.clone(), &cfg.extra_roots)
        .context("building the application service client")?;
    hearth_client_api::start_push(&hearth, &cfg.extra_roots);
    let app = hearth_client_api::router_with(hearth.clone(), hearth_appservices::router());
    let federation = start_federation(cfg, &hearth).await?;
    let listener = listener
        // Back-to-back small writes (a WebSocket sync frame, then the
        // send's ack) would otherwise wait for the client's delayed
        // ACK: ~40 ms each. Also serves the cluster's internal port.
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown({
        let hearth = hearth.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("draining: answering long-polls, asking sockets to reconnect");
            hearth.shutdown.send_replace(true);
        }
    })
    .await?;
    shut_down(&hearth, federation).await;
    Ok(())
}

async fn bind(listen: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))
}

type FederationListener = tokio::task::JoinHandle<Result<(), hearth_federation::FedError>>;

/// Starts federation and its TLS listener, which stops when draining starts.
async fn start_federation(
    cfg: &config::Config,
    hearth: &Arc<Hearth>,
) -> Result<Option<FederationListener>> {
    let Some(fc) = cfg.federation.clone() else {
        return Ok(None);
    };
    let fed =
        hearth_federation::Federation::new(hearth.clone(), fc).context("setting up federation")?;
    let mut stop = hearth.shutdown.subscribe();
    let serve = hearth_federation::tls::bind(fed, async move {
        let _ = stop.wait_for(|draining| *draining).await;
    })
    .await
    .context("starting the federation listener")?;
    Ok(Some(tokio::spawn(serve)))
}

/// After the HTTP server has drained: sockets, the federation listener, then
/// the background tasks, each given a bounded time.
async fn shut_down(hearth: &Hearth, federation: Option<FederationListener>) {
    // Upgraded sockets outlive the server's graceful shutdown: give
    // them a moment to tell their clients when to come back.
    hearth_client_api::wait_for_sockets(std::time::Duration::from_secs(3)).await;
    if let Some(f) = federation {
        match f.await {
            Ok(Err(e)) => tracing::error!(error = %e, "federation listener failed"),
            Err(e) => tracing::error!(error = %e, "federation listener panicked"),
            Ok(Ok(())) => {}
        }
    }
    if !hearth.tasks.stop(TASKS_GRACE).await {
        tracing::warn!(
            still_running = hearth.tasks.running(),
            "background tasks did not stop in time"
        );
    }
    tracing::info!("shutting down");
}

enum Backend {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
    Sharded(Arc<ShardedStore>),
}

impl Backend {
    /// The main role and the room role: one database plays both, unless
    /// sharded (the router for rooms, its main database for the rest).
    fn stores(&self) -> Stores {
        match self {
            Backend::Sqlite(s) => Stores::single(s.clone()),
            Backend::Postgres(s) => Stores::single(s.clone()),
            Backend::Sharded(s) => Stores {
                main: s.main(),
                rooms: s.clone(),
            },
        }
    }

    async fn close(&self) {
        match self {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(s) => s.close().await,
            Backend::Sharded(s) => s.close().await,
        }
    }
}

/// Every connection, WebSocket and database file is a descriptor, and the soft
/// limit a process inherits is often 1024 (or lower): with it, accepts fail
/// with EMFILE at a few hundred clients. The soft limit may be raised to the
/// hard one without privileges; raising the hard one is the operator's (see
/// README, "Open files").
fn raise_open_file_limit() {
    let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else {
        tracing::warn!("cannot read the open-file limit");
        return;
    };
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) => tracing::info!(
            open_files = now,
            was = soft,
            hard_limit = hard,
            "open-file limit"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            open_files = soft,
            hard_limit = hard,
            "cannot raise the open-file limit"
        ),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
