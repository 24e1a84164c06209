//! Configuration: one tree of settings ([`Settings`], the TOML file's shape),
//! layered by figment: defaults, then the TOML file, then `HEARTH_*`
//! environment variables and command-line flags (clap reads both; a flag wins
//! over its variable). [`load`] then checks the merged tree once and turns it
//! into the typed configs the crates take.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use hearth_core::{
    CoreConfig,
    config::{ClusterConfig, RateLimitConfig, RedisConfig},
    push::PushConfig,
    ruma::{OwnedServerName, RoomVersionId, ServerName},
};
use hearth_federation::FederationConfig;
use serde::{Deserialize, Serialize};

/// Every setting. Each section is a table of the TOML file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The part after ':' in user ids.
    pub server_name: String,
    /// The client API listener.
    pub listen: String,
    /// The embedded database, media and keys.
    pub data_dir: PathBuf,
    /// Advertised in /.well-known/matrix/client.
    pub public_base_url: Option<String>,
    pub default_room_version: Option<String>,
    pub max_upload_size: Option<u64>,
    /// Extra CA certificates (PEM files) trusted by every outgoing HTTPS
    /// request (federation, push gateways, application services) besides
    /// the built-in web roots: a private CA in front of a gateway or bridge.
    pub extra_ca_files: Vec<PathBuf>,
    pub registration: RegistrationSection,
    pub rate_limits: RateLimitConfig,
    pub database: DatabaseSection,
    pub redis: RedisSection,
    pub cluster: ClusterSection,
    pub presence: PresenceSection,
    pub federation: FederationSection,
    pub appservices: AppServicesSection,
    pub push: PushSection,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            listen: "127.0.0.1:8008".into(),
            data_dir: PathBuf::from("./data"),
            public_base_url: None,
            default_room_version: None,
            max_upload_size: None,
            extra_ca_files: Vec::new(),
            registration: RegistrationSection::default(),
            rate_limits: RateLimitConfig::default(),
            database: DatabaseSection::default(),
            redis: RedisSection::default(),
            cluster: ClusterSection::default(),
            presence: PresenceSection::default(),
            federation: FederationSection::default(),
            appservices: AppServicesSection::default(),
            push: PushSection::default(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationSection {
    pub enabled: bool,
    /// When non-empty, registering needs one of these.
    pub tokens: Vec<String>,
}

impl Default for RegistrationSection {
    fn default() -> Self {
        Self {
            enabled: true,
            tokens: vec![],
        }
    }
}

/// Where the data lives: absent `url` means the embedded SQLite file in
/// `data_dir`; a `postgres://` url means Postgres.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    pub url: Option<String>,
    /// Event shards (Postgres urls); with them `url` is the main database.
    /// Append to the list to add a shard; never reorder or remove one.
    pub shards: Vec<String>,
}

/// Redis, for several processes serving one server: the bus between them,
/// typing and presence. Absent, everything stays in this process.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    pub url: Option<String>,
    /// Prefix of every key and channel (default "hearth:<server_name>").
    pub key_prefix: Option<String>,
}

/// Several processes writing rooms (spec/cluster.md): room writer leases,
/// sends forwarded to the room's writer. Needs Postgres and Redis.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Shared by the server's processes; turns room writer leases on.
    pub secret: Option<String>,
    /// How the other processes reach this one (default http://<listen>).
    pub address: Option<String>,
}

/// When presence changes by itself (seconds; absent keeps core's defaults).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSection {
    /// Without activity for this long, an online user shows as unavailable.
    pub idle_after_secs: Option<f64>,
    /// Without a heartbeat (a sync, a WebSocket ping, an action) for this
    /// long, a user shows as offline; keep it above the longest sync
    /// long-poll clients use.
    pub offline_after_secs: Option<f64>,
}

/// Talking to other servers (spec/federation.md). Without `listen` this
/// server does not federate.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSection {
    /// TLS listener for other servers, e.g. "0.0.0.0:8448".
    pub listen: Option<String>,
    /// PEM certificate chain and key for that listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for outgoing requests.
    pub ca_files: Vec<PathBuf>,
    /// Name servers ("ip:port") to ask instead of the system's.
    pub nameservers: Vec<String>,
    /// Notaries asked for a server's keys when it cannot be reached.
    pub trusted_key_servers: Vec<String>,
    /// Served as m.server in /.well-known/matrix/server.
    pub well_known_server: Option<String>,
}

/// Application services (bridges): their registration files (YAML, as
/// Synapse reads them), checked at start-up.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppServicesSection {
    pub registrations: Vec<PathBuf>,
}

/// Pushes to users' push gateways (spec/push.md), in milliseconds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    /// How long a user's first pending notification waits for more before
    /// one push carries the newest.
    pub coalesce_ms: u64,
    /// First retry delay while a gateway fails (doubles up to `backoff_max_ms`).
    pub backoff_start_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
}

impl Default for PushSection {
    fn default() -> Self {
        let d = PushConfig::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            coalesce_ms: ms(d.coalesce),
            backoff_start_ms: ms(d.backoff_start),
            backoff_max_ms: ms(d.backoff_max),
        }
    }
}

/// Values given as `HEARTH_*` variables or flags: the last layer. Each group
/// serializes into the section of [`Settings`] it overrides; values not
/// given are left out, so they override nothing.
#[derive(Debug, Default, clap::Args, Serialize)]
pub struct Overrides {
    /// Path to a TOML configuration file.
    #[arg(long, short, env = "HEARTH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The server name (the part after ':' in user ids).
    #[arg(long, env = "HEARTH_SERVER_NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Address for the client API, e.g. 127.0.0.1:8008.
    #[arg(long, env = "HEARTH_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Directory for the database, media and keys.
    #[arg(long, env = "HEARTH_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Largest media upload in bytes.
    #[arg(long, env = "HEARTH_MAX_UPLOAD_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_upload_size: Option<u64>,
    /// Comma-separated extra CA files (PEM) trusted by all outgoing HTTPS
    /// (federation, push gateways, application services).
    #[arg(long, env = "HEARTH_EXTRA_CA_FILES", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_ca_files: Option<Vec<PathBuf>>,
    #[command(flatten)]
    pub registration: RegistrationFlags,
    #[command(flatten)]
    pub rate_limits: RateLimitFlags,
    #[command(flatten)]
    pub database: DatabaseFlags,
    #[command(flatten)]
    pub redis: RedisFlags,
    #[command(flatten)]
    pub cluster: ClusterFlags,
    #[command(flatten)]
    pub presence: PresenceFlags,
    #[command(flatten)]
    pub federation: FederationFlags,
    #[command(flatten)]
    pub appservices: AppServicesFlags,
    #[command(flatten)]
    pub push: PushFlags,
}

// Field names below are unique across groups because clap names each
// argument after its field; `serde(rename)` maps them onto the section's keys.

#[derive(Debug, Default, clap::Args, Serialize)]
pub struct RegistrationFlags {
    /// Allow open registration (true/false).
    #[arg(long, env = "HEARTH_REGISTRATION_ENABLED")]
    #[serde(rename = "enabled", skip_serializing_if = "Option::is_none")]
    pub registration_enabled: Option<bool>,
    /// Comma-separated registration tokens; when set, registration requires one.
    #[arg(long, env = "HEARTH_REGISTRATION_TOKENS", value_delimiter = ',')]
    #[serde(rename = "tokens", skip_serializing_if = "Option::is_none")]
    pub registration_tokens: Option<Vec<String>>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
pub struct RateLimitFlags {
    /// Turn rate limiting on or off.
    #[arg(long, env = "HEARTH_RATE_LIMITS")]
    #[serde(rename = "enabled", skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<bool>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
pub struct DatabaseFlags {
    /// Postgres database url (postgres://…); without it data is kept in SQLite.
    #[arg(long, env = "HEARTH_DATABASE_URL")]
    #[serde(rename = "url", skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Comma-separated Postgres urls of the event shards (needs --database-url).
    #[arg(long, env = "HEARTH_DATABASE_SHARDS", value_delimiter = ',')]
    #[serde(rename = "shards", skip_serializing_if = "Option::is_none")]
    pub database_shards: Option<Vec<String>>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
pub struct RedisFlags {
    /// Redis url (redis://…) shared by this server's processes.
    #[arg(long, env = "HEARTH_REDIS_URL")]
    #[serde(rename = "url", skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Prefix of this server's Redis keys and channels.
    #[arg(long, env = "HEARTH_REDIS_PREFIX")]
    #[serde(rename = "key_prefix", skip_serializing_if = "Option::is_none")]
    pub redis_prefix: Option<String>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
pub struct ClusterFlags {
    /// Secret shared by this server's processes; turns on room writer leases
    /// (several processes writing rooms).
    #[arg(long, env = "HEARTH_CLUSTER_SECRET")]
    #[serde(rename = "secret", skip_serializing_if = "Option::is_none")]
    pub cluster_secret: Option<String>,
    /// How the other processes reach this one (default http://<listen>).
    #[arg(long, env = "HEARTH_CLUSTER_ADDRESS")]
    #[serde(rename = "address", skip_serializing_if = "Option::is_none")]
    pub cluster_address: Option<String>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
pub struct PresenceFlags {
    /// Seconds without a heartbeat after which a user shows as offline.
    #[arg(long, env = "HEARTH_PRESENCE_OFFLINE_AFTER_SECS")]
    #[serde(rename = "offline_after_secs", skip_serializing_if = "Option::is_none")]
    pub presence_offline_after_secs: Option<f64>,
    /// Seconds without activity after which a user shows as unavailable.
    #[arg(long, env = "HEARTH_PRESENCE_IDLE_AFTER_SECS")]
    #[serde(rename = "idle_after_secs", skip_serializing_if = "Option::is_none")]
    pub presence_idle_after_secs: Option<f64>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
pub struct FederationFlags {
    /// TLS listener for other servers (turns federation on), e.g. 0.0.0.0:8448.
    #[arg(long, env = "HEARTH_FEDERATION_LISTEN")]
    #[serde(rename = "listen", skip_serializing_if = "Option::is_none")]
    pub federation_listen: Option<String>,
    /// PEM certificate chain for the federation listener.
    #[arg(long, env = "HEARTH_FEDERATION_TLS_CERT")]
    #[serde(rename = "tls_cert", skip_serializing_if = "Option::is_none")]
    pub federation_tls_cert: Option<PathBuf>,
    /// PEM private key for the federation listener.
    #[arg(long, env = "HEARTH_FEDERATION_TLS_KEY")]
    #[serde(rename = "tls_key", skip_serializing_if = "Option::is_none")]
    pub federation_tls_key: Option<PathBuf>,
    /// Comma-separated extra CA files (PEM) trusted for outgoing requests.
    #[arg(long, env = "HEARTH_FEDERATION_CA_FILES", value_delimiter = ',')]
    #[serde(rename = "ca_files", skip_serializing_if = "Option::is_none")]
    pub federation_ca_files: Option<Vec<PathBuf>>,
    /// Comma-separated name servers (ip:port) instead of the system's.
    #[arg(long, env = "HEARTH_FEDERATION_NAMESERVERS", value_delimiter = ',')]
    #[serde(rename = "nameservers", skip_serializing_if = "Option::is_none")]
    pub federation_nameservers: Option<Vec<String>>,
    /// Comma-separated notaries asked for keys of unreachable servers.
    #[arg(
        long,
        env = "HEARTH_FEDERATION_TRUSTED_KEY_SERVERS",
        value_delimiter = ','
    )]
    #[serde(
        rename = "trusted_key_servers",
        skip_serializing_if = "Option::is_none"
    )]
    pub federation_trusted_key_servers: Option<Vec<String>>,
    /// Served as m.server in /.well-known/matrix/server.
    #[arg(long, env = "HEARTH_FEDERATION_WELL_KNOWN_SERVER")]
    #[serde(rename = "well_known_server", skip_serializing_if = "Option::is_none")]
    pub federation_well_known_server: Option<String>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
pub struct AppServicesFlags {
    /// Comma-separated application service registration files (YAML).
    #[arg(long, env = "HEARTH_APPSERVICE_REGISTRATIONS", value_delimiter = ',')]
    #[serde(rename = "registrations", skip_serializing_if = "Option::is_none")]
    pub appservice_registrations: Option<Vec<PathBuf>>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
pub struct PushFlags {
    /// Milliseconds a user's first pending notification waits for more
    /// before one push carries the newest.
    #[arg(long, env = "HEARTH_PUSH_COALESCE_MS")]
    #[serde(rename = "coalesce_ms", skip_serializing_if = "Option::is_none")]
    pub push_coalesce_ms: Option<u64>,
    /// Milliseconds before the first retry of a failing push gateway.
    #[arg(long, env = "HEARTH_PUSH_BACKOFF_START_MS")]
    #[serde(rename = "backoff_start_ms", skip_serializing_if = "Option::is_none")]
    pub push_backoff_start_ms: Option<u64>,
    /// Longest wait, in milliseconds, between retries of a failing gateway.
    #[arg(long, env = "HEARTH_PUSH_BACKOFF_MAX_MS")]
    #[serde(rename = "backoff_max_ms", skip_serializing_if = "Option::is_none")]
    pub push_backoff_max_ms: Option<u64>,
}

/// What the binary runs with, checked.
pub struct Config {
    pub core: CoreConfig,
    pub listen: SocketAddr,
    /// Postgres url, or None for the embedded SQLite database.
    pub database_url: Option<String>,
    /// Event shard urls; empty keeps events in the main database.
    pub database_shards: Vec<String>,
    /// Federation, when a listener is configured (its `ca_files` include
    /// `extra_roots`' files).
    pub federation: Option<FederationConfig>,
    /// Trusted by every outgoing HTTPS request besides the built-in roots.
    pub extra_roots: Vec<reqwest::Certificate>,
}

/// Merges the layers into one [`Settings`] tree.
pub fn settings(o: &Overrides) -> Result<Settings> {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(path) = &o.config {
        // figment ignores a missing file; a named one must exist.
        if !path.is_file() {
            bail!("reading {}: no such file", path.display());
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Serialized::defaults(o))
        .extract()
        .context("reading the configuration")
}

pub fn load(o: &Overrides) -> Result<Config> {
    checked(settings(o)?)
}

/// Checks the merged settings and builds the crates' configs from them.
fn checked(s: Settings) -> Result<Config> {
    let server_name: OwnedServerName = ServerName::parse(&s.server_name)
        .with_context(|| format!("invalid server_name {:?}", s.server_name))?;
    let listen: SocketAddr = s
        .listen
        .parse()
        .with_context(|| format!("invalid listen address {:?}", s.listen))?;
    let (database_url, database_shards) = database(s.database)?;
    let redis = redis(s.redis, &server_name)?;
    let cluster = cluster(s.cluster, &listen, database_url.is_some(), redis.is_some())?;

    let mut core = CoreConfig::new(server_name, s.data_dir);
    core.redis = redis;
    core.cluster = cluster;
    core.public_base_url = s.public_base_url;
    if let Some(v) = s.default_room_version {
        core.default_room_version = room_version(&v)?;
    }
    if let Some(m) = s.max_upload_size {
        core.max_upload_size = m;
    }
    core.registration_enabled = s.registration.enabled;
    core.registration_tokens = non_empty(s.registration.tokens);
    presence(&mut core, &s.presence)?;
    core.rate_limits = s.rate_limits;
    core.appservices =
        hearth_appservices::load_registrations(&s.appservices.registrations, &core.server_name)?;
    core.push = push(&s.push)?;
    Ok(Config {
        core,
        listen,
        database_url,
        database_shards,
        federation: federation(s.federation, &s.extra_ca_files)?,
        extra_roots: hearth_http_common::outgoing::load_ca_files(&s.extra_ca_files)?,
    })
}

/// Lists given as comma-separated variables may hold empty items.
fn non_empty(v: Vec<String>) -> Vec<String> {
    v.into_iter().filter(|s| !s.is_empty()).collect()
}

fn database(d: DatabaseSection) -> Result<(Option<String>, Vec<String>)> {
    let shards = non_empty(d.shards);
    for url in d.url.iter().chain(&shards) {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("database urls must start with postgres:// (got {url:?})");
        }
    }
    if d.url.is_none() && !shards.is_empty() {
        bail!("database shards need a main database url ([database] url)");
    }
    Ok((d.url, shards))
}

fn redis(r: RedisSection, server_name: &ServerName) -> Result<Option<RedisConfig>> {
    let Some(url) = r.url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        bail!("the redis url must start with redis:// (got {url:?})");
    }
    Ok(Some(RedisConfig {
        url,
        key_prefix: r
            .key_prefix
            .unwrap_or_else(|| format!("hearth:{server_name}")),
    }))
}

fn cluster(
    c: ClusterSection,
    listen: &SocketAddr,
    postgres: bool,
    redis: bool,
) -> Result<Option<ClusterConfig>> {
    let Some(secret) = c.secret.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if !postgres || !redis {
        bail!("several processes ([cluster] secret) need Postgres ([database] url) and [redis]");
    }
    let address = c.address.unwrap_or_else(|| format!("http://{listen}"));
    Ok(Some(ClusterConfig { address, secret }))
}

fn room_version(v: &str) -> Result<RoomVersionId> {
    let v = RoomVersionId::try_from(v).with_context(|| format!("invalid room version {v:?}"))?;
    if !CoreConfig::supported_room_versions().contains(&v) {
        bail!("default_room_version {v} is not supported");
    }
    Ok(v)
}

fn presence(core: &mut CoreConfig, p: &PresenceSection) -> Result<()> {
    let seconds = |v: Option<f64>, name: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => bail!("presence {name} must be a positive number of seconds (got {s})"),
    };
    let d = core.presence;
    core.presence.idle_after = seconds(p.idle_after_secs, "idle_after_secs", d.idle_after)?;
    core.presence.offline_after =
        seconds(p.offline_after_secs, "offline_after_secs", d.offline_after)?;
    Ok(())
}

fn push(p: &PushSection) -> Result<PushConfig> {
    let cfg = PushConfig {
        coalesce: Duration::from_millis(p.coalesce_ms),
        backoff_start: Duration::from_millis(p.backoff_start_ms),
        backoff_max: Duration::from_millis(p.backoff_max_ms),
    };
    if cfg.backoff_start.is_zero() || cfg.backoff_max < cfg.backoff_start {
        bail!("push backoff_start_ms must be positive and at most backoff_max_ms");
    }
    Ok(cfg)
}

fn federation(
    f: FederationSection,
    extra_ca_files: &[PathBuf],
) -> Result<Option<FederationConfig>> {
    let Some(listen) = f.listen else {
        return Ok(None);
    };
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("invalid federation listen address {listen:?}"))?;
    if f.tls_cert.is_none() || f.tls_key.is_none() {
        bail!("federation needs a TLS certificate and key ([federation] tls_cert, tls_key)");
    }
    let nameservers = non_empty(f.nameservers)
        .into_iter()
        .map(|n| {
            n.parse::<SocketAddr>()
                .with_context(|| format!("invalid federation name server {n:?} (ip:port)"))
        })
        .collect::<Result<Vec<_>>>()?;
    let trusted_key_servers = non_empty(f.trusted_key_servers)
        .into_iter()
        .map(|n| {
            ServerName::parse(&n)
                .map(|s| s.to_string())
                .with_context(|| format!("invalid trusted key server {n:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(FederationConfig {
        listen: Some(listen),
        tls_cert: f.tls_cert,
        tls_key: f.tls_key,
        ca_files: f
            .ca_files
            .into_iter()
            .chain(extra_ca_files.iter().cloned())
            .collect(),
        nameservers,
        trusted_key_servers,
        well_known_server: f.well_known_server.filter(|s| !s.is_empty()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_file(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("hearth-config-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn defaults_alone_give_a_local_server() {
        let cfg = load(&Overrides::default()).expect("load");
        assert_eq!(cfg.core.server_name.as_str(), "localhost");
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8008");
        assert!(cfg.core.registration_enabled);
        assert!(cfg.database_url.is_none() && cfg.federation.is_none());
        assert_eq!(
            cfg.core.rate_limits.messages_burst,
            RateLimitConfig::default().messages_burst
        );
    }

    #[test]
    fn the_file_overrides_defaults_and_flags_override_the_file() {
        let path = toml_file(
            "layers",
            "server_name = \"file.example\"\nlisten = \"127.0.0.9:9000\"\n\
             [rate_limits]\nenabled = false\nmessages_burst = 3\n\
             [push]\ncoalesce_ms = 20\n",
        );
        let mut o = Overrides {
            config: Some(path.clone()),
            server_name: Some("flag.example".into()),
            ..Default::default()
        };
        o.rate_limits.rate_limits = Some(true);
        let cfg = load(&o).expect("load");
        std::fs::remove_file(&path).ok();
        assert_eq!(cfg.core.server_name.as_str(), "flag.example");
        assert_eq!(cfg.listen.to_string(), "127.0.0.9:9000");
        assert!(cfg.core.rate_limits.enabled);
        assert_eq!(cfg.core.rate_limits.messages_burst, 3.0);
        assert_eq!(cfg.core.push.coalesce, Duration::from_millis(20));
        assert_eq!(cfg.core.push.backoff_max, PushConfig::default().backoff_max);
    }

    #[test]
    fn unknown_keys_and_missing_files_are_refused() {
        let path = toml_file("unknown", "[registration]\nenabeld = true\n");
        let o = Overrides {
            config: Some(path.clone()),
            ..Default::default()
        };
        let err = load(&o).err().map(|e| format!("{e:#}"));
        std::fs::remove_file(&path).ok();
        assert!(err.is_some_and(|e| e.contains("enabeld")));
        let o = Overrides {
            config: Some(PathBuf::from("/nonexistent/hearth.toml")),
            ..Default::default()
        };
        assert!(load(&o).is_err());
    }

    #[test]
    fn empty_list_items_are_dropped_and_bad_combinations_refused() {
        let mut o = Overrides::default();
        o.registration.registration_tokens = Some(vec!["".into(), "t1".into()]);
        let cfg = load(&o).expect("load");
        assert_eq!(cfg.core.registration_tokens, vec!["t1".to_string()]);

        let mut o = Overrides::default();
        o.cluster.cluster_secret = Some("s".into());
        assert!(load(&o).is_err(), "a cluster needs Postgres and Redis");

        let mut o = Overrides::default();
        o.database.database_shards = Some(vec!["postgres://x/y".into()]);
        assert!(load(&o).is_err(), "shards need a main database");

        let mut o = Overrides::default();
        o.push.push_backoff_start_ms = Some(0);
        assert!(load(&o).is_err());
    }
}
