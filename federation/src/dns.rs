//! DNS for federation: SRV and address lookups through hickory, pointed at
//! the system's resolvers or at configured name servers (tests run their own).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hickory_resolver::{
    Resolver, TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RData,
};
use parking_lot::Mutex;

use crate::FedError;

pub struct Dns {
    resolver: TokioResolver,
}

/// One SRV answer, in the order it should be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub target: String,
    pub port: u16,
}

impl Dns {
    /// With no name servers, the system's (`/etc/resolv.conf`).
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, FedError> {
        let resolver = if nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| FedError::Dns(e.to_string()))?
                .build()
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut b = Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b.build()
        }
        .map_err(|e| FedError::Dns(e.to_string()))?;
        Ok(Self { resolver })
    }

    /// SRV targets for `name` (e.g. `_matrix-fed._tcp.example.org`), lowest
    /// priority first and, within a priority, heavier weights first; empty
    /// when there is no such record.
    pub async fn srv(&self, name: &str) -> Result<Vec<SrvTarget>, FedError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = match self.resolver.srv_lookup(fqdn).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(vec![]),
            Err(e) => return Err(FedError::Dns(e.to_string())),
        };
        let mut found: Vec<(u16, u16, SrvTarget)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some((
                    srv.priority,
                    srv.weight,
                    SrvTarget {
                        target: srv.target.to_ascii().trim_end_matches('.').to_owned(),
                        port: srv.port,
                    },
                )),
                _ => None,
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        Ok(found.into_iter().map(|(_, _, t)| t).collect())
    }

    /// The addresses of a host name (AAAA and A, following CNAMEs).
    pub async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, FedError> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn).await {
            Ok(l) => Ok(l.iter().collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(vec![]),
            Err(e) => Err(FedError::Dns(e.to_string())),
        }
    }
}

/// Lets reqwest connect where discovery said, whatever the URL's host is
/// (the Host header and TLS name stay the server's, as the spec requires).
/// Names discovery has not pinned are resolved through `Dns`.
pub struct HttpResolver {
    pub dns: Arc<Dns>,
    pinned: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

impl HttpResolver {
    pub fn new(dns: Arc<Dns>) -> Self {
        Self {
            dns,
            pinned: Mutex::default(),
        }
    }

    pub fn pin(&self, host: &str, addrs: Vec<SocketAddr>) {
        self.pinned.lock().insert(host.to_ascii_lowercase(), addrs);
    }
}

impl reqwest::dns::Resolve for HttpResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let pinned = self.pinned.lock().get(&host).cloned();
        let dns = self.dns.clone();
        Box::pin(async move {
            let addrs = match pinned {
                Some(a) => a,
                // Port 0: the URL's port is used.
                None => dns
                    .ips(&host)
                    .await?
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .collect(),
            };
            if addrs.is_empty() {
                return Err(Box::new(FedError::Dns(format!("{host} has no address")))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
