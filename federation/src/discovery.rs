//! Where a server name is served (server-server API, "Resolving server
//! names"): IP literal, explicit port, `/.well-known/matrix/server`, SRV
//! `_matrix-fed._tcp` then `_matrix._tcp`, then port 8448, in that order.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use serde_json::Value;

use crate::{FedError, dns::Dns};

pub const DEFAULT_PORT: u16 = 8448;
/// Well-known answers without caching headers are kept this long…
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// …and none longer than this.
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// A failed well-known lookup is remembered this long (spec: up to an hour).
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(600);
/// A well-known body larger than this is not a delegation.
const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;

/// Where to send requests for a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The host requests name (URL host, `Host` header, TLS name).
    pub host: String,
    /// The port written in the URL; `None` when the port came from SRV
    /// (then the URL has none and `Host` is the bare host, as specified).
    pub url_port: Option<u16>,
    /// Where to connect.
    pub addrs: Vec<SocketAddr>,
}

impl Resolved {
    pub fn base_url(&self) -> String {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.host.clone(),
        };
        match self.url_port {
            Some(p) => format!("https://{host}:{p}"),
            None => format!("https://{host}"),
        }
    }
}

pub struct Discovery {
    dns: Arc<Dns>,
    /// Fetches well-known files (ordinary DNS, port 443, no pinning).
    http: reqwest::Client,
    well_known: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

/// Splits a server name into host and optional port (`[v6]:port` aware).
pub fn split_server_name(name: &str) -> Result<(String, Option<u16>), FedError> {
    let bad = || FedError::BadServerName(name.to_owned());
    if let Some(rest) = name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        return Ok((ip.to_owned(), port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_owned(), Some(port.parse().map_err(|_| bad())?))),
        None => Ok((name.to_owned(), None)),
    }
}

impl Discovery {
    pub fn new(dns: Arc<Dns>, http: reqwest::Client) -> Self {
        Self {
            dns,
            http,
            well_known: Mutex::default(),
        }
    }

    pub async fn resolve(&self, server_name: &str) -> Result<Resolved, FedError> {
        let (host, port) = split_server_name(server_name)?;
        // 1. An IP literal: that address, the given port or 8448.
        if let Ok(ip) = host.parse::<IpAddr>() {
            let port = port.unwrap_or(DEFAULT_PORT);
            return Ok(Resolved {
                host,
                url_port: Some(port),
                addrs: vec![SocketAddr::new(ip, port)],
            });
        }
        // 2. A host name with an explicit port: its addresses, that port.
        if let Some(port) = port {
            return self.by_address(&host, port).await;
        }
        // 3. Delegated by /.well-known/matrix/server.
        if let Some(delegated) = self.well_known(&host).await {
            let (dh, dp) = split_server_name(&delegated)?;
            if let Ok(ip) = dh.parse::<IpAddr>() {
                let port = dp.unwrap_or(DEFAULT_PORT);
                return Ok(Resolved {
                    host: dh,
                    url_port: Some(port),
                    addrs: vec![SocketAddr::new(ip, port)],
                });
            }
            if let Some(port) = dp {
                return self.by_address(&dh, port).await;
            }
            return self.by_srv_or_default(&dh).await;
        }
        // 4–6. SRV records of the name itself, else port 8448.
        self.by_srv_or_default(&host).await
    }

    async fn by_address(&self, host: &str, port: u16) -> Result<Resolved, FedError> {
        let addrs: Vec<SocketAddr> = self
            .dns
            .ips(host)
            .await?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if addrs.is_empty() {
            return Err(FedError::Dns(format!("{host} has no address")));
        }
        Ok(Resolved {
            host: host.to_owned(),
            url_port: Some(port),
            addrs,
        })
    }

    /// `_matrix-fed._tcp`, then the deprecated `_matrix._tcp`, then 8448.
    /// With SRV, requests still name `host` (Host header, certificate).
    async fn by_srv_or_default(&self, host: &str) -> Result<Resolved, FedError> {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let targets = self.dns.srv(&format!("{service}.{host}")).await?;
            if targets.is_empty() {
                continue;
            }
            let mut addrs = vec![];
            for t in &targets {
                for ip in self.dns.ips(&t.target).await? {
                    addrs.push(SocketAddr::new(ip, t.port));
                }
            }
            if addrs.is_empty() {
                return Err(FedError::Dns(format!(
                    "the SRV targets of {service}.{host} have no address"
                )));
            }
            return Ok(Resolved {
                host: host.to_owned(),
                url_port: None,
                addrs,
            });
        }
        self.by_address(host, DEFAULT_PORT).await
    }

    /// The delegated server name from `https://host/.well-known/matrix/server`,
    /// cached as the spec asks; `None` when there is no valid one.
    async fn well_known(&self, host: &str) -> Option<String> {
        if let Some((answer, until)) = self.well_known.lock().get(host)
            && Instant::now() < *until
        {
            return answer.clone();
        }
        let (answer, ttl) = match self.fetch_well_known(host).await {
            Ok((server, ttl)) => (Some(server), ttl),
            Err(e) => {
                tracing::debug!(%host, error = %e, "no well-known delegation");
                (None, WELL_KNOWN_ERROR_TTL)
            }
        };
        self.well_known
            .lock()
            .insert(host.to_owned(), (answer.clone(), Instant::now() + ttl));
        answer
    }

    async fn fetch_well_known(&self, host: &str) -> Result<(String, Duration), FedError> {
        let url = format!("https://{host}/.well-known/matrix/server");
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| FedError::Unreachable(format!("{url}: {e}")))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(FedError::Remote(format!("{url}: {}", resp.status())));
        }
        let ttl = cache_ttl(resp.headers());
        let body = resp
            .bytes()
            .await
            .map_err(|e| FedError::Unreachable(format!("{url}: {e}")))?;
        if body.len() > WELL_KNOWN_MAX_BYTES {
            return Err(FedError::Remote(format!("{url}: body too large")));
        }
        // JSON whatever the content type says.
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| FedError::Remote(format!("{url}: not JSON: {e}")))?;
        let server = v["m.server"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| FedError::Remote(format!("{url}: no m.server")))?;
        split_server_name(server)?;
        Ok((server.to_owned(), ttl))
    }
}

/// How long a well-known answer may be cached: `Cache-Control: max-age`
/// (no-store/no-cache: not at all), else a day; never over two days.
fn cache_ttl(headers: &reqwest::header::HeaderMap) -> Duration {
    let Some(cc) = headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    else {
        return WELL_KNOWN_DEFAULT_TTL;
    };
    let mut ttl = WELL_KNOWN_DEFAULT_TTL;
    for directive in cc.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(secs) = lower
            .strip_prefix("max-age=")
            .and_then(|s| s.parse::<u64>().ok())
        {
            ttl = Duration::from_secs(secs);
        }
    }
    ttl.min(WELL_KNOWN_MAX_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_split_into_host_and_port() {
        let ok = |n: &str| split_server_name(n).expect(n);
        assert_eq!(ok("example.org"), ("example.org".into(), None));
        assert_eq!(ok("example.org:8449"), ("example.org".into(), Some(8449)));
        assert_eq!(ok("1.2.3.4:80"), ("1.2.3.4".into(), Some(80)));
        assert_eq!(ok("[::1]"), ("::1".into(), None));
        assert_eq!(ok("[::1]:8448"), ("::1".into(), Some(8448)));
        for bad in ["example.org:", "example.org:99999", "[::1", "[::1]x"] {
            assert!(split_server_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn well_known_ttl_follows_cache_control_within_two_days() {
        let with = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::CACHE_CONTROL, v.parse().expect("header"));
            cache_ttl(&h)
        };
        assert_eq!(cache_ttl(&Default::default()), WELL_KNOWN_DEFAULT_TTL);
        assert_eq!(with("public, max-age=60"), Duration::from_secs(60));
        assert_eq!(with("max-age=9999999"), WELL_KNOWN_MAX_TTL);
        assert_eq!(with("no-store"), Duration::ZERO);
    }

    #[test]
    fn base_urls_carry_the_port_only_when_not_from_srv() {
        let r = |host: &str, url_port| Resolved {
            host: host.into(),
            url_port,
            addrs: vec![],
        };
        assert_eq!(r("a.test", None).base_url(), "https://a.test");
        assert_eq!(r("a.test", Some(8448)).base_url(), "https://a.test:8448");
        assert_eq!(r("::1", Some(8448)).base_url(), "https://[::1]:8448");
    }
}
