//! The server-server API (spec/federation.md): `/_matrix/key/v2/*` (this
//! server's keys, and a notary for others'), `/_matrix/federation/*` with
//! X-Matrix request signatures, discovery of other servers, and the signed
//! client that reaches them. Served over TLS on its own listener.

mod acl;
mod auth;
mod backfill;
mod client;
pub mod discovery;
pub mod dns;
mod e2ee;
mod error;
mod gaps;
mod history;
mod keyring;
mod membership;
mod pdu;
mod presence;
mod queries;
mod query;
mod routes;
mod server_keys;
pub mod tls;
mod transactions;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use hearth_core::Hearth;

pub use crate::error::FedError;
use crate::{discovery::Discovery, dns::Dns, keyring::KeyRing};

/// How this server takes part in federation.
#[derive(Debug, Clone, Default)]
pub struct FederationConfig {
    /// The TLS listener for other servers.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain and private key for that listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted for outgoing requests besides the
    /// built-in web roots: a private CA, or a test's (the binary adds the
    /// ones it trusts for all outgoing HTTP).
    pub ca_files: Vec<PathBuf>,
    /// Name servers to ask instead of the system's (`ip:port`).
    pub nameservers: Vec<SocketAddr>,
    /// Notaries asked for a server's keys when it cannot be reached itself.
    pub trusted_key_servers: Vec<String>,
    /// Served as `m.server` in `/.well-known/matrix/server` when set.
    pub well_known_server: Option<String>,
}

/// Everything federation needs, shared by its handlers and the client.
pub struct Federation {
    pub hearth: Arc<Hearth>,
    pub config: FederationConfig,
    discovery: Discovery,
    /// Sends signed requests; connects where discovery pinned each host.
    http: reqwest::Client,
    resolver: Arc<dns::HttpResolver>,
    keyring: KeyRing,
    transactions: transactions::Transactions,
    /// Rooms this server is joining (a lock per room): joins of one room
    /// run one at a time, and its relayed events wait until the room is in.
    joining: parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Federation {
    pub fn new(hearth: Arc<Hearth>, config: FederationConfig) -> Result<Arc<Self>, FedError> {
        // One process-wide rustls provider (ring) for the listener and clients.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dns = Arc::new(Dns::new(&config.nameservers)?);
        let resolver = Arc::new(dns::HttpResolver::new(dns.clone()));
        let mut well_known = client_builder(&config)?;
        well_known = well_known.dns_resolver(Arc::new(dns::HttpResolver::new(dns.clone())));
        let well_known = well_known
            .build()
            .map_err(|e| FedError::Config(e.to_string()))?;
        let http = client_builder(&config)?
            .dns_resolver(resolver.clone())
            .build()
            .map_err(|e| FedError::Config(e.to_string()))?;
        let fed = Arc::new(Self {
            hearth: hearth.clone(),
            config,
            discovery: Discovery::new(dns, well_known),
            http,
            resolver,
            keyring: KeyRing::default(),
            transactions: Default::default(),
            joining: Default::default(),
        });
        let _ = hearth
            .links
            .remote
            .set(Arc::new(queries::RemoteQueries(Arc::downgrade(&fed))));
        hearth.tasks.spawn({
            let fed = fed.clone();
            async move { fed.resume_queues().await }
        });
        hearth.tasks.spawn(fed.clone().repeat_presence());
        Ok(fed)
    }

    /// The lock a join of `room` holds.
    fn join_lock(&self, room: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.joining
            .lock()
            .entry(room.to_owned())
            .or_default()
            .clone()
    }

    /// Whether a join of `room` is under way here.
    fn is_joining(&self, room: &str) -> bool {
        let lock = self.joining.lock().get(room).cloned();
        lock.is_some_and(|l| l.try_lock().is_err())
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.hearth.config.server_name
    }
}

fn client_builder(config: &FederationConfig) -> Result<reqwest::ClientBuilder, FedError> {
    let roots = hearth_http_common::outgoing::load_ca_files(&config.ca_files)
        .map_err(|e| FedError::Config(e.to_string()))?;
    let b = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        // Redirects are followed for well-known only (and to a bounded depth).
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("Hearth/", env!("CARGO_PKG_VERSION")));
    Ok(hearth_http_common::outgoing::trusting(b, &roots))
}

pub use routes::router;

/// Percent-encodes a path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
