//! The settings the domain needs; the binary fills them from file, env and flags.

use std::path::PathBuf;

use ruma::{OwnedServerName, RoomVersionId};

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub server_name: OwnedServerName,
    pub data_dir: PathBuf,
    pub registration_enabled: bool,
    /// When non-empty, registration requires one of these (`m.login.registration_token`).
    pub registration_tokens: Vec<String>,
    pub default_room_version: RoomVersionId,
    pub max_upload_size: u64,
    /// Advertised in /.well-known/matrix/client when set.
    pub public_base_url: Option<String>,
    pub rate_limits: RateLimitConfig,
    /// Redis, when several processes serve this server: the bus between them,
    /// shared typing and presence. None keeps everything in this process.
    pub redis: Option<RedisConfig>,
    /// Several processes writing rooms (spec/cluster.md): room writer leases
    /// and forwarding. None: this process writes every room.
    pub cluster: Option<ClusterConfig>,
    /// When presence turns unavailable and offline by itself.
    pub presence: crate::ephemeral::PresenceTimes,
    /// Application services, from their registration files.
    pub appservices: Vec<crate::appservice::AppService>,
    /// Pushes to users' push gateways (spec/push.md).
    pub push: crate::push::PushConfig,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where the other processes reach this one's client listener.
    pub address: String,
    /// Shared by the processes; authenticates forwarded sends.
    pub secret: String,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// Prefixes every key and channel, so servers (and tests) can share a Redis.
    pub key_prefix: String,
}

/// Also the `[rate_limits]` table of the configuration file as it stands:
/// the binary reads it straight into this.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained rate and burst for message sends, per user.
    pub messages_per_second: f64,
    pub messages_burst: f64,
    pub login_per_second: f64,
    pub login_burst: f64,
    pub register_per_second: f64,
    pub register_burst: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            messages_per_second: 10.0,
            messages_burst: 50.0,
            login_per_second: 0.5,
            login_burst: 5.0,
            register_per_second: 0.2,
            register_burst: 5.0,
        }
    }
}

impl CoreConfig {
    pub fn new(server_name: OwnedServerName, data_dir: PathBuf) -> Self {
        Self {
            server_name,
            data_dir,
            registration_enabled: true,
            registration_tokens: vec![],
            default_room_version: RoomVersionId::V12,
            max_upload_size: 50 * 1024 * 1024,
            public_base_url: None,
            rate_limits: RateLimitConfig::default(),
            redis: None,
            cluster: None,
            presence: Default::default(),
            appservices: vec![],
            push: Default::default(),
        }
    }

    pub fn supported_room_versions() -> &'static [RoomVersionId] {
        &[
            RoomVersionId::V3,
            RoomVersionId::V4,
            RoomVersionId::V5,
            RoomVersionId::V6,
            RoomVersionId::V7,
            RoomVersionId::V8,
            RoomVersionId::V9,
            RoomVersionId::V10,
            RoomVersionId::V11,
            RoomVersionId::V12,
        ]
    }
}
