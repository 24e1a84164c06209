//! Other servers' signing keys: fetched from the server itself, else from
//! trusted notaries; verified (self-signed, and notary-signed when relayed);
//! cached until they expire, or until something signed by a key id the
//! cache lacks asks for them again. Fetches of one server are coalesced and
//! at most one per `REFETCH_INTERVAL`, so neither the notary nor signed
//! requests can be used to hammer a server.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use hearth_core::ids::now_ms;
use parking_lot::Mutex;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet, verify_json},
};
use serde_json::{Value, json};

use crate::{FedError, Federation};

/// A key response is trusted for a week at most, whatever it claims.
const MAX_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;
/// The least time between two fetches of one server's keys.
const REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// Servers whose last fetch time is kept before the stale ones are dropped.
const MAX_FETCH_RECORDS: usize = 10_000;

/// One server's keys as it published them.
#[derive(Debug)]
pub struct ServerKeySet {
    /// The response as the server signed it (relayed as is by the notary).
    pub raw: CanonicalJsonObject,
    /// Until when `verify_keys` may be trusted (unix ms).
    pub valid_until_ts: u64,
    /// Keys that sign requests and events now.
    pub verify_keys: PublicKeySet,
    /// Keys that signed events until `expired_ts` (unix ms): they verify
    /// events sent before then.
    pub old_verify_keys: Vec<(String, Base64, u64)>,
}

impl ServerKeySet {
    /// Whether this copy holds every key of `key_ids` (current or old) and
    /// is valid until `min_valid_until`.
    fn satisfies(&self, key_ids: &[&str], min_valid_until: u64) -> bool {
        self.valid_until_ts >= min_valid_until
            && key_ids.iter().all(|id| {
                self.verify_keys.contains_key(*id)
                    || self.old_verify_keys.iter().any(|(old, _, _)| old == id)
            })
    }

    /// The keys that may have signed an event sent at `ts`.
    pub fn keys_for_event(&self, ts: u64) -> PublicKeySet {
        let mut set = self.verify_keys.clone();
        for (id, key, expired) in &self.old_verify_keys {
            if ts < *expired {
                set.insert(id.clone(), key.clone());
            }
        }
        set
    }
}

/// How a key lookup may go about fetching.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// From the server, else from the notaries; waits for a fetch of the
    /// same server under way.
    Full,
    /// A notary's own keys, needed while another server's keys are being
    /// fetched: from the notary itself only, and never waiting for another
    /// fetch (two fetches each waiting for the other's notary would hang).
    NotaryOwn,
}

/// When a server's keys were last fetched (or tried), behind the lock a
/// fetch of them holds.
type FetchGate = Arc<tokio::sync::Mutex<Option<Instant>>>;

#[derive(Default)]
pub struct KeyRing {
    cache: Mutex<HashMap<String, Arc<ServerKeySet>>>,
    /// This server's own keys, parsed once: they do not change while it
    /// runs, and events it signed come back in every relay.
    own: std::sync::OnceLock<Arc<ServerKeySet>>,
    /// Per server: one fetch at a time, and when the last one was.
    fetches: Mutex<HashMap<String, FetchGate>>,
}

impl KeyRing {
    fn cached(&self, server: &str) -> Option<Arc<ServerKeySet>> {
        self.cache.lock().get(server).cloned()
    }

    fn gate(&self, server: &str) -> FetchGate {
        let mut fetches = self.fetches.lock();
        if fetches.len() >= MAX_FETCH_RECORDS {
            // Dropped: gates nobody holds whose interval is over.
            fetches.retain(|_, g| {
                let recent = match g.try_lock() {
                    Ok(at) => (*at).is_some_and(|t| t.elapsed() < REFETCH_INTERVAL),
                    // A fetch under way.
                    Err(_) => true,
                };
                recent || Arc::strong_count(g) > 1
            });
        }
        fetches.entry(server.to_owned()).or_default().clone()
    }

    fn remember(&self, server: &str, keys: Arc<ServerKeySet>) {
        self.cache.lock().insert(server.to_owned(), keys);
    }
}

impl Federation {
    fn own_key_set(&self) -> Result<Arc<ServerKeySet>, FedError> {
        if let Some(k) = self.keyring.own.get() {
            return Ok(k.clone());
        }
        let keys = Arc::new(parse_key_response(
            self.server_name().as_str(),
            self.own_keys(),
            None,
        )?);
        Ok(self.keyring.own.get_or_init(|| keys).clone())
    }

    /// A server's keys, valid at least until `min_valid_until` when they can
    /// be had; an older copy when neither the server nor a notary answers.
    pub(crate) async fn server_keys_of(
        &self,
        server: &str,
        min_valid_until: u64,
    ) -> Result<Arc<ServerKeySet>, FedError> {
        self.server_keys_with(server, &[], min_valid_until).await
    }

    /// `server_keys_of`, also holding each of `key_ids` when the server
    /// has published it: a cached copy without one of them is fetched
    /// again (at most once per `REFETCH_INTERVAL`).
    pub(crate) async fn server_keys_with(
        &self,
        server: &str,
        key_ids: &[&str],
        min_valid_until: u64,
    ) -> Result<Arc<ServerKeySet>, FedError> {
        self.keys_with(server, key_ids, min_valid_until, Lookup::Full)
            .await
    }

    async fn keys_with(
        &self,
        server: &str,
        key_ids: &[&str],
        min_valid_until: u64,
        how: Lookup,
    ) -> Result<Arc<ServerKeySet>, FedError> {
        if server == self.server_name().as_str() {
            return self.own_key_set();
        }
        if let Some(k) = self.keyring.cached(server)
            && k.satisfies(key_ids, min_valid_until)
        {
            return Ok(k);
        }
        let gate = self.keyring.gate(server);
        let last = match how {
            Lookup::Full => Some(gate.lock().await),
            Lookup::NotaryOwn => gate.try_lock().ok(),
        };
        // Another caller may have fetched them while this one waited.
        let cached = self.keyring.cached(server);
        if let Some(k) = &cached
            && k.satisfies(key_ids, min_valid_until)
        {
            return Ok(k.clone());
        }
        let mut last = match last {
            Some(l) if (*l).is_none_or(|at| at.elapsed() >= REFETCH_INTERVAL) => l,
            _ => {
                tracing::debug!(%server, "keys being fetched or fetched moments ago; not asking again yet");
                return cached.ok_or_else(|| FedError::NoKeys(server.to_owned()));
            }
        };
        *last = Some(Instant::now());
        match self.fetch_keys(server, how).await {
            Ok(k) => {
                let k = Arc::new(k);
                self.keyring.remember(server, k.clone());
                Ok(k)
            }
            Err(e) => match cached {
                Some(stale) => {
                    tracing::warn!(%server, error = %e, "no fresh keys; using the cached ones");
                    Ok(stale)
                }
                None => Err(e),
            },
        }
    }

    /// A fresh copy of `server`'s keys: from the server, else (for a full
    /// lookup) from the notaries.
    async fn fetch_keys(&self, server: &str, how: Lookup) -> Result<ServerKeySet, FedError> {
        match self.fetch_keys_directly(server).await {
            Ok(k) => Ok(k),
            Err(direct) if how == Lookup::Full => {
                tracing::info!(%server, error = %direct, "keys not fetched directly; asking notaries");
                self.fetch_keys_from_notaries(server)
                    .await
                    .map_err(|_| direct)
            }
            Err(direct) => Err(direct),
        }
    }

    async fn fetch_keys_directly(&self, server: &str) -> Result<ServerKeySet, FedError> {
        let v = self
            .request_unsigned(server, http::Method::GET, "/_matrix/key/v2/server", None)
            .await?;
        parse_key_response(server, to_object(v)?, None)
    }

    async fn fetch_keys_from_notaries(&self, server: &str) -> Result<ServerKeySet, FedError> {
        let mut last = FedError::NoKeys(server.to_owned());
        for notary in &self.config.trusted_key_servers {
            if notary == server {
                continue;
            }
            let attempt = async {
                let notary_keys =
                    Box::pin(self.keys_with(notary, &[], now_ms(), Lookup::NotaryOwn)).await?;
                let body = json!({"server_keys": {server: {}}});
                let v = self
                    .request_unsigned(
                        notary,
                        http::Method::POST,
                        "/_matrix/key/v2/query",
                        Some(&body),
                    )
                    .await?;
                let responses = v["server_keys"].as_array().cloned().unwrap_or_default();
                let mut best: Option<ServerKeySet> = None;
                for r in responses {
                    let Ok(obj) = to_object(r) else { continue };
                    if obj.get("server_name").and_then(|s| s.as_str()) != Some(server) {
                        continue;
                    }
                    match parse_key_response(
                        server,
                        obj,
                        Some((notary.as_str(), &notary_keys.verify_keys)),
                    ) {
                        Ok(k)
                            if best
                                .as_ref()
                                .is_none_or(|b| k.valid_until_ts > b.valid_until_ts) =>
                        {
                            best = Some(k)
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(%server, %notary, error = %e, "notary relayed bad keys")
                        }
                    }
                }
                best.ok_or_else(|| FedError::NoKeys(server.to_owned()))
            };
            match attempt.await {
                Ok(k) => return Ok(k),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

fn to_object(v: Value) -> Result<CanonicalJsonObject, FedError> {
    match CanonicalJsonValue::try_from(v) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        _ => Err(FedError::Remote(
            "a key response is not a JSON object".into(),
        )),
    }
}

/// Only `entity`'s signatures, so one signer is checked at a time.
fn signed_by(obj: &CanonicalJsonObject, entity: &str) -> CanonicalJsonObject {
    let mut copy = obj.clone();
    if let Some(CanonicalJsonValue::Object(sigs)) = copy.get_mut("signatures") {
        sigs.retain(|k, _| k == entity);
    }
    copy
}

fn key_set(obj: &CanonicalJsonObject, field: &str) -> Result<PublicKeySet, FedError> {
    let mut set = PublicKeySet::new();
    if let Some(CanonicalJsonValue::Object(keys)) = obj.get(field) {
        for (id, k) in keys {
            let b64 = match k {
                CanonicalJsonValue::Object(k) => k.get("key").and_then(|v| v.as_str()),
                _ => None,
            };
            let key = b64
                .and_then(|s| Base64::parse(s).ok())
                .ok_or_else(|| FedError::Remote(format!("{field}.{id} has no valid key")))?;
            set.insert(id.clone(), key);
        }
    }
    Ok(set)
}

/// Checks a key response for `server`: its name, its own signature with its
/// own keys, and the notary's when one relayed it.
pub(crate) fn parse_key_response(
    server: &str,
    obj: CanonicalJsonObject,
    notary: Option<(&str, &PublicKeySet)>,
) -> Result<ServerKeySet, FedError> {
    if obj.get("server_name").and_then(|s| s.as_str()) != Some(server) {
        return Err(FedError::Remote(format!(
            "key response is not for {server}"
        )));
    }
    let verify_keys = key_set(&obj, "verify_keys")?;
    if verify_keys.is_empty() {
        return Err(FedError::NoKeys(server.to_owned()));
    }
    let old_keys = key_set(&obj, "old_verify_keys")?;
    let old_verify_keys = old_keys
        .into_iter()
        .map(|(id, key)| {
            let expired = match &obj.get("old_verify_keys") {
                Some(CanonicalJsonValue::Object(o)) => match o.get(&id) {
                    Some(CanonicalJsonValue::Object(k)) => match k.get("expired_ts") {
                        Some(CanonicalJsonValue::Integer(i)) => {
                            u64::try_from(i64::from(*i)).unwrap_or(0)
                        }
                        _ => 0,
                    },
                    _ => 0,
                },
                _ => 0,
            };
            (id, key, expired)
        })
        .collect();
    let mut map = PublicKeyMap::new();
    map.insert(server.to_owned(), verify_keys.clone());
    verify_json(&map, &signed_by(&obj, server))
        .map_err(|e| FedError::Remote(format!("{server}'s key response signature: {e}")))?;
    if let Some((notary, keys)) = notary {
        let mut map = PublicKeyMap::new();
        map.insert(notary.to_owned(), keys.clone());
        verify_json(&map, &signed_by(&obj, notary))
            .map_err(|e| FedError::Remote(format!("{notary}'s notary signature: {e}")))?;
    }
    let claimed = match obj.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
        _ => {
            return Err(FedError::Remote(
                "key response without valid_until_ts".into(),
            ));
        }
    };
    Ok(ServerKeySet {
        valid_until_ts: claimed.min(now_ms() + MAX_VALIDITY_MS),
        raw: obj,
        verify_keys,
        old_verify_keys,
    })
}
