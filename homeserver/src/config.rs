//! Configuration: defaults, then a TOML file, then `HEARTH_*` environment
//! variables, then command-line flags; each layer overrides the one before.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result, bail};
use hearth_core::{
    CoreConfig,
    config::{ClusterConfig, RateLimitConfig, RedisConfig},
    ruma::{OwnedServerName, RoomVersionId, ServerName},
};
use hearth_federation::FederationConfig;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server_name: Option<String>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub public_base_url: Option<String>,
    pub default_room_version: Option<String>,
    pub max_upload_size: Option<u64>,
    #[serde(default)]
    pub registration: RegistrationSection,
    #[serde(default)]
    pub rate_limits: RateLimitSection,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub redis: RedisSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub presence: PresenceSection,
    #[serde(default)]
    pub federation: FederationSection,
    #[serde(default)]
    pub appservices: AppServicesSection,
    #[serde(default)]
    pub push: PushSection,
}

/// Pushes to users' push gateways (spec/push.md).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PushSection {
    /// How long a user's first pending notification waits for more before
    /// one push carries the newest (milliseconds, default 1000).
    pub coalesce_ms: Option<u64>,
    /// First retry delay while a gateway fails (milliseconds, default 500;
    /// doubles up to `backoff_max_ms`).
    pub backoff_start_ms: Option<u64>,
    /// Longest retry delay (milliseconds, default 300000).
    pub backoff_max_ms: Option<u64>,
}

/// Application services (bridges): their registration files (YAML, as
/// Synapse reads them), checked at start-up.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AppServicesSection {
    pub registrations: Option<Vec<PathBuf>>,
}

/// Talking to other servers (spec/federation.md). Without `listen` this
/// server does not federate.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    /// TLS listener for other servers, e.g. "0.0.0.0:8448".
    pub listen: Option<String>,
    /// PEM certificate chain and key for that listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for outgoing requests.
    pub ca_files: Option<Vec<PathBuf>>,
    /// Name servers ("ip:port") to ask instead of the system's.
    pub nameservers: Option<Vec<String>>,
    /// Notaries asked for a server's keys when it cannot be reached.
    pub trusted_key_servers: Option<Vec<String>>,
    /// Served as m.server in /.well-known/matrix/server.
    pub well_known_server: Option<String>,
}

/// When presence changes by itself (seconds).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PresenceSection {
    /// Without activity for this long, an online user shows as unavailable
    /// (default 300).
    pub idle_after_secs: Option<f64>,
    /// Without a heartbeat (a sync, a WebSocket ping, an action) for this
    /// long, a user shows as offline (default 150; keep it above the longest
    /// sync long-poll clients use).
    pub offline_after_secs: Option<f64>,
}

/// Several processes writing rooms (spec/cluster.md): room writer leases,
/// sends forwarded to the room's writer. Needs Postgres and Redis.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Shared by the server's processes; turns room writer leases on.
    pub secret: Option<String>,
    /// How the other processes reach this one (default http://<listen>).
    pub address: Option<String>,
}

/// Redis, for several processes serving one server: the bus between them,
/// typing and presence. Absent, everything stays in this process.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: Option<String>,
    /// Prefix of every key and channel (default "hearth:<server_name>").
    pub key_prefix: Option<String>,
}

/// Where the data lives: absent `url` means the embedded SQLite file in
/// `data_dir`; a `postgres://` url means Postgres.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    pub url: Option<String>,
    /// Event shards (Postgres urls); with them `url` is the main database.
    /// Append to the list to add a shard; never reorder or remove one.
    pub shards: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RegistrationSection {
    pub enabled: Option<bool>,
    pub tokens: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub enabled: Option<bool>,
    pub messages_per_second: Option<f64>,
    pub messages_burst: Option<f64>,
    pub login_per_second: Option<f64>,
    pub login_burst: Option<f64>,
    pub register_per_second: Option<f64>,
    pub register_burst: Option<f64>,
}

/// Values given on the command line (they win over file and environment).
#[derive(Debug, Default, clap::Args)]
pub struct Overrides {
    /// Path to a TOML configuration file.
    #[arg(long, short, env = "HEARTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// The server name (the part after ':' in user ids).
    #[arg(long, env = "HEARTH_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Address for the client API, e.g. 127.0.0.1:8008.
    #[arg(long, env = "HEARTH_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the database, media and keys.
    #[arg(long, env = "HEARTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Allow open registration (true/false).
    #[arg(long, env = "HEARTH_REGISTRATION_ENABLED")]
    pub registration_enabled: Option<bool>,
    /// Comma-separated registration tokens; when set, registration requires one.
    #[arg(long, env = "HEARTH_REGISTRATION_TOKENS", value_delimiter = ',')]
    pub registration_tokens: Option<Vec<String>>,
    /// Turn rate limiting on or off.
    #[arg(long, env = "HEARTH_RATE_LIMITS")]
    pub rate_limits: Option<bool>,
    /// Postgres database url (postgres://…); without it data is kept in SQLite.
    #[arg(long, env = "HEARTH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Comma-separated Postgres urls of the event shards (needs --database-url).
    #[arg(long, env = "HEARTH_DATABASE_SHARDS", value_delimiter = ',')]
    pub database_shards: Option<Vec<String>>,
    /// Redis url (redis://…) shared by this server's processes.
    #[arg(long, env = "HEARTH_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of this server's Redis keys and channels.
    #[arg(long, env = "HEARTH_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Secret shared by this server's processes; turns on room writer leases
    /// (several processes writing rooms).
    #[arg(long, env = "HEARTH_CLUSTER_SECRET")]
    pub cluster_secret: Option<String>,
    /// How the other processes reach this one (default http://<listen>).
    #[arg(long, env = "HEARTH_CLUSTER_ADDRESS")]
    pub cluster_address: Option<String>,
    /// Seconds without a heartbeat after which a user shows as offline.
    #[arg(long, env = "HEARTH_PRESENCE_OFFLINE_AFTER_SECS")]
    pub presence_offline_after_secs: Option<f64>,
    /// Seconds without activity after which a user shows as unavailable.
    #[arg(long, env = "HEARTH_PRESENCE_IDLE_AFTER_SECS")]
    pub presence_idle_after_secs: Option<f64>,
    /// TLS listener for other servers (turns federation on), e.g. 0.0.0.0:8448.
    #[arg(long, env = "HEARTH_FEDERATION_LISTEN")]
    pub federation_listen: Option<String>,
    /// PEM certificate chain for the federation listener.
    #[arg(long, env = "HEARTH_FEDERATION_TLS_CERT")]
    pub federation_tls_cert: Option<PathBuf>,
    /// PEM private key for the federation listener.
    #[arg(long, env = "HEARTH_FEDERATION_TLS_KEY")]
    pub federation_tls_key: Option<PathBuf>,
    /// Comma-separated extra CA files (PEM) trusted for outgoing requests.
    #[arg(long, env = "HEARTH_FEDERATION_CA_FILES", value_delimiter = ',')]
    pub federation_ca_files: Option<Vec<PathBuf>>,
    /// Comma-separated name servers (ip:port) instead of the system's.
    #[arg(long, env = "HEARTH_FEDERATION_NAMESERVERS", value_delimiter = ',')]
    pub federation_nameservers: Option<Vec<String>>,
    /// Comma-separated notaries asked for keys of unreachable servers.
    #[arg(
        long,
        env = "HEARTH_FEDERATION_TRUSTED_KEY_SERVERS",
        value_delimiter = ','
    )]
    pub federation_trusted_key_servers: Option<Vec<String>>,
    /// Served as m.server in /.well-known/matrix/server.
    #[arg(long, env = "HEARTH_FEDERATION_WELL_KNOWN_SERVER")]
    pub federation_well_known_server: Option<String>,
    /// Largest media upload in bytes.
    #[arg(long, env = "HEARTH_MAX_UPLOAD_SIZE")]
    pub max_upload_size: Option<u64>,
    /// Comma-separated application service registration files (YAML).
    #[arg(long, env = "HEARTH_APPSERVICE_REGISTRATIONS", value_delimiter = ',')]
    pub appservice_registrations: Option<Vec<PathBuf>>,
    /// Milliseconds a user's first pending notification waits for more
    /// before one push carries the newest.
    #[arg(long, env = "HEARTH_PUSH_COALESCE_MS")]
    pub push_coalesce_ms: Option<u64>,
    /// Milliseconds before the first retry of a failing push gateway.
    #[arg(long, env = "HEARTH_PUSH_BACKOFF_START_MS")]
    pub push_backoff_start_ms: Option<u64>,
    /// Longest wait, in milliseconds, between retries of a failing gateway.
    #[arg(long, env = "HEARTH_PUSH_BACKOFF_MAX_MS")]
    pub push_backoff_max_ms: Option<u64>,
}

pub struct Config {
    pub core: CoreConfig,
    pub listen: SocketAddr,
    /// Postgres url, or None for the embedded SQLite database.
    pub database_url: Option<String>,
    /// Event shard urls; empty keeps events in the main database.
    pub database_shards: Vec<String>,
    /// Federation, when a listener is configured.
    pub federation: Option<FederationConfig>,
}

pub fn load(o: &Overrides) -> Result<Config> {
    let file: FileConfig = match &o.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let server_name = o
        .server_name
        .clone()
        .or(file.server_name)
        .unwrap_or_else(|| "localhost".into());
    let server_name: OwnedServerName = ServerName::parse(&server_name)
        .with_context(|| format!("invalid server_name {server_name:?}"))?;
    let listen = o
        .listen
        .clone()
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:8008".into());
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("invalid listen address {listen:?}"))?;
    let data_dir = o
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./data"));

    let database_url = o.database_url.clone().or(file.database.url);
    let mut database_shards = o
        .database_shards
        .clone()
        .or(file.database.shards)
        .unwrap_or_default();
    database_shards.retain(|u| !u.is_empty());
    for url in database_url.iter().chain(&database_shards) {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("database urls must start with postgres:// (got {url:?})");
        }
    }
    if database_url.is_none() && !database_shards.is_empty() {
        bail!("database shards need a main database url ([database] url)");
    }

    let redis_url = o
        .redis_url
        .clone()
        .or(file.redis.url)
        .filter(|u| !u.is_empty());
    if let Some(url) = &redis_url
        && !(url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        bail!("the redis url must start with redis:// (got {url:?})");
    }
    let redis = redis_url.map(|url| RedisConfig {
        url,
        key_prefix: o
            .redis_prefix
            .clone()
            .or(file.redis.key_prefix)
            .unwrap_or_else(|| format!("hearth:{server_name}")),
    });

    let cluster_secret = o
        .cluster_secret
        .clone()
        .or(file.cluster.secret)
        .filter(|s| !s.is_empty());
    let cluster = match cluster_secret {
        None => None,
        Some(secret) => {
            if database_url.is_none() || redis.is_none() {
                bail!(
                    "several processes ([cluster] secret) need Postgres ([database] url) and [redis]"
                );
            }
            let address = o
                .cluster_address
                .clone()
                .or(file.cluster.address)
                .unwrap_or_else(|| format!("http://{listen}"));
            Some(ClusterConfig { address, secret })
        }
    };

    let mut core = CoreConfig::new(server_name, data_dir);
    core.redis = redis;
    core.cluster = cluster;
    core.public_base_url = file.public_base_url;
    if let Some(v) = file.default_room_version {
        let v = RoomVersionId::try_from(v.as_str())
            .with_context(|| format!("invalid room version {v:?}"))?;
        if !CoreConfig::supported_room_versions().contains(&v) {
            bail!("default_room_version {v} is not supported");
        }
        core.default_room_version = v;
    }
    if let Some(m) = o.max_upload_size.or(file.max_upload_size) {
        core.max_upload_size = m;
    }
    core.registration_enabled = o
        .registration_enabled
        .or(file.registration.enabled)
        .unwrap_or(true);
    core.registration_tokens = o
        .registration_tokens
        .clone()
        .or(file.registration.tokens)
        .unwrap_or_default();
    core.registration_tokens.retain(|t| !t.is_empty());

    let p = file.presence;
    let seconds = |v: Option<f64>, name: &str, default: std::time::Duration| match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 => Ok(std::time::Duration::from_secs_f64(s)),
        Some(s) => bail!("presence {name} must be a positive number of seconds (got {s})"),
    };
    let d = core.presence;
    core.presence.idle_after = seconds(
        o.presence_idle_after_secs.or(p.idle_after_secs),
        "idle_after_secs",
        d.idle_after,
    )?;
    core.presence.offline_after = seconds(
        o.presence_offline_after_secs.or(p.offline_after_secs),
        "offline_after_secs",
        d.offline_after,
    )?;

    let r = file.rate_limits;
    let d = RateLimitConfig::default();
    core.rate_limits = RateLimitConfig {
        enabled: o.rate_limits.or(r.enabled).unwrap_or(d.enabled),
        messages_per_second: r.messages_per_second.unwrap_or(d.messages_per_second),
        messages_burst: r.messages_burst.unwrap_or(d.messages_burst),
        login_per_second: r.login_per_second.unwrap_or(d.login_per_second),
        login_burst: r.login_burst.unwrap_or(d.login_burst),
        register_per_second: r.register_per_second.unwrap_or(d.register_per_second),
        register_burst: r.register_burst.unwrap_or(d.register_burst),
    };
    let registrations = o
        .appservice_registrations
        .clone()
        .or(file.appservices.registrations)
        .unwrap_or_default();
    core.appservices = hearth_appservices::load_registrations(&registrations, &core.server_name)?;
    core.push = push_config(o, &file.push)?;
    let federation = federation_config(o, file.federation)?;
    Ok(Config {
        core,
        listen,
        database_url,
        database_shards,
        federation,
    })
}

fn push_config(o: &Overrides, p: &PushSection) -> Result<hearth_core::push::PushConfig> {
    let d = hearth_core::push::PushConfig::default();
    let ms = |v: Option<u64>, default: std::time::Duration| {
        v.map_or(default, std::time::Duration::from_millis)
    };
    let cfg = hearth_core::push::PushConfig {
        coalesce: ms(o.push_coalesce_ms.or(p.coalesce_ms), d.coalesce),
        backoff_start: ms(
            o.push_backoff_start_ms.or(p.backoff_start_ms),
            d.backoff_start,
        ),
        backoff_max: ms(o.push_backoff_max_ms.or(p.backoff_max_ms), d.backoff_max),
    };
    if cfg.backoff_start.is_zero() || cfg.backoff_max < cfg.backoff_start {
        bail!("push backoff_start_ms must be positive and at most backoff_max_ms");
    }
    Ok(cfg)
}

fn federation_config(o: &Overrides, f: FederationSection) -> Result<Option<FederationConfig>> {
    let Some(listen) = o.federation_listen.clone().or(f.listen) else {
        return Ok(None);
    };
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("invalid federation listen address {listen:?}"))?;
    let tls_cert = o.federation_tls_cert.clone().or(f.tls_cert);
    let tls_key = o.federation_tls_key.clone().or(f.tls_key);
    if tls_cert.is_none() || tls_key.is_none() {
        bail!("federation needs a TLS certificate and key ([federation] tls_cert, tls_key)");
    }
    let nameservers = o
        .federation_nameservers
        .clone()
        .or(f.nameservers)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse::<SocketAddr>()
                .with_context(|| format!("invalid federation name server {n:?} (ip:port)"))
        })
        .collect::<Result<Vec<_>>>()?;
    let trusted_key_servers = o
        .federation_trusted_key_servers
        .clone()
        .or(f.trusted_key_servers)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !n.is_empty())
        .map(|n| {
            ServerName::parse(&n)
                .map(|s| s.to_string())
                .with_context(|| format!("invalid trusted key server {n:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(FederationConfig {
        listen: Some(listen),
        tls_cert,
        tls_key,
        ca_files: o
            .federation_ca_files
            .clone()
            .or(f.ca_files)
            .unwrap_or_default(),
        nameservers,
        trusted_key_servers,
        well_known_server: o
            .federation_well_known_server
            .clone()
            .or(f.well_known_server)
            .filter(|s| !s.is_empty()),
    }))
}
