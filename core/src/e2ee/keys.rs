//! Device keys, one-time and fallback keys, cross-signing keys and their
//! signatures: uploaded by a user's devices, read by everyone who shares a
//! room with them (here or over federation). The server stores public keys
//! and checks that what it stores is well-formed and belongs to the uploader;
//! it never holds a private key or a plaintext.

use std::collections::BTreeMap;

use ruma::{OwnedUserId, UserId};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::E2ee;
use crate::{Error, Result};

/// Cross-signing key types as named in `/keys/query` answers.
pub const CROSS_SIGNING: [(&str, &str); 3] = [
    ("master", "master_keys"),
    ("self_signing", "self_signing_keys"),
    ("user_signing", "user_signing_keys"),
];

/// `algorithm:key_id` → (algorithm, key_id).
fn split_key_id(id: &str) -> Result<(&str, &str)> {
    id.split_once(':')
        .filter(|(a, k)| !a.is_empty() && !k.is_empty())
        .ok_or_else(|| Error::invalid_param(format!("Key id {id:?} is not algorithm:key_id")))
}

/// Keys to claim or query, grouped by the server of their user.
fn by_server<T: serde::Serialize>(
    map: &BTreeMap<OwnedUserId, T>,
) -> BTreeMap<String, Map<String, Value>> {
    let mut out: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (user, v) in map {
        out.entry(user.server_name().to_string())
            .or_default()
            .insert(user.to_string(), json!(v));
    }
    out
}

impl E2ee {
    /// `POST /keys/upload`: the device's identity keys, one-time keys and
    /// fallback keys. Returns the device's one-time key counts.
    /// The device's one-time key counts after the upload.
    pub async fn upload_keys(
        &self,
        user: &UserId,
        device: &str,
        body: &Value,
    ) -> Result<KeyCounts> {
        if device.is_empty() {
            return Err(Error::forbidden("Uploading keys needs a device"));
        }
        // Check everything before storing anything.
        let device_keys = body.get("device_keys").filter(|v| !v.is_null());
        if let Some(keys) = device_keys {
            check_device_keys(keys, user, device)?;
        }
        let mut one_time = vec![];
        if let Some(map) = body.get("one_time_keys").filter(|v| !v.is_null()) {
            let map = map
                .as_object()
                .ok_or_else(|| Error::bad_json("one_time_keys must be an object"))?;
            for (id, key) in map {
                let (algorithm, key_id) = split_key_id(id)?;
                check_key_value(key, id)?;
                one_time.push((algorithm.to_owned(), key_id.to_owned(), key.clone()));
            }
        }
        let mut fallback = vec![];
        let fallback_map = body
            .get("fallback_keys")
            .or_else(|| body.get("org.matrix.msc2732.fallback_keys"))
            .filter(|v| !v.is_null());
        if let Some(map) = fallback_map {
            let map = map
                .as_object()
                .ok_or_else(|| Error::bad_json("fallback_keys must be an object"))?;
            for (id, key) in map {
                let (algorithm, key_id) = split_key_id(id)?;
                check_key_value(key, id)?;
                fallback.push((algorithm.to_owned(), key_id.to_owned(), key.clone()));
            }
        }

        if let Some(keys) = device_keys
            && self
                .store
                .put_device_keys(user.as_str(), device, keys)
                .await?
                .is_some()
        {
            self.device_list_changed(user, Some(device), false).await?;
        }
        if !one_time.is_empty() {
            self.store
                .add_one_time_keys(user.as_str(), device, &one_time)
                .await?;
        }
        for (algorithm, key_id, key) in &fallback {
            self.store
                .put_fallback_key(user.as_str(), device, algorithm, key_id, key)
                .await?;
        }
        self.forget_key_counts(user.as_str(), device);
        let (counts, _) = self.key_counts(user.as_str(), device).await?;
        Ok(counts_object(&counts))
    }

    /// `POST /keys/query` for a local client: local users answered here,
    /// remote ones asked of their servers (a server that fails is listed in
    /// `failures`).
    pub async fn query_keys(&self, requester: &UserId, body: &Value) -> Result<QueriedKeys> {
        let wanted = parse_user_map::<Vec<String>>(body.get("device_keys"), "device_keys")?;
        let mut local = BTreeMap::new();
        let mut remote = BTreeMap::new();
        for (user, devices) in wanted {
            if self.is_local(user.as_str()) {
                local.insert(user, devices);
            } else {
                remote.insert(user, devices);
            }
        }
        let mut out = self.local_keys(Some(requester), &local).await?;
        let mut failures = Map::new();
        if !remote.is_empty() {
            let link = self.links.remote.get();
            for (server, users) in by_server(&remote) {
                let answer = match link {
                    Some(r) => r.query_keys(&server, json!({"device_keys": users})).await,
                    None => Err(Error::Unavailable("federation is not configured".into())),
                };
                match answer {
                    Ok(a) => merge_remote_keys(&mut out, &a, &server),
                    Err(e) => {
                        tracing::info!(%server, error = %e, "remote key query failed");
                        failures.insert(
                            server,
                            json!({"errcode": "M_UNAVAILABLE", "error": e.to_string()}),
                        );
                    }
                }
            }
        }
        out.failures = Some(failures);
        Ok(out)
    }

    /// The keys of local users: `device_keys` and the cross-signing keys.
    /// `requester` (a local user, or `None` for another server) also sees
    /// their own user-signing key and their signatures of others' master
    /// keys.
    pub async fn local_keys(
        &self,
        requester: Option<&UserId>,
        wanted: &BTreeMap<OwnedUserId, Vec<String>>,
    ) -> Result<QueriedKeys> {
        let mut device_keys = Map::new();
        let mut cross: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        for (user, devices) in wanted {
            if !self.is_local(user.as_str()) {
                continue;
            }
            let names = self.device_names(user.as_str()).await?;
            let mut mine = Map::new();
            for (device, mut keys) in self.store.device_keys(user.as_str()).await? {
                if !devices.is_empty() && !devices.contains(&device) {
                    continue;
                }
                // Always present (clients and SyTest read it as an
                // object); the name only when the device has one.
                keys["unsigned"] = match names.get(&device) {
                    Some(Some(name)) => json!({"device_display_name": name}),
                    _ => json!({}),
                };
                mine.insert(device, keys);
            }
            device_keys.insert(user.to_string(), Value::Object(mine));
            let user_sigs = match requester {
                Some(r) if r != user => {
                    self.store
                        .user_signatures(r.as_str(), user.as_str())
                        .await?
                }
                _ => vec![],
            };
            for (kind, mut key) in self.store.cross_signing_keys(user.as_str()).await? {
                let Some((_, field)) = CROSS_SIGNING.iter().find(|(k, _)| *k == kind) else {
                    continue;
                };
                if kind == "user_signing" && requester != Some(user.as_ref()) {
                    continue;
                }
                let public = key_public(&key);
                for (target_key, key_id, sig) in &user_sigs {
                    if Some(target_key.as_str()) == public.as_deref()
                        && let Some(r) = requester
                    {
                        key["signatures"][r.as_str()][key_id] = json!(sig);
                    }
                }
                cross
                    .entry(field)
                    .or_default()
                    .insert(user.to_string(), key);
            }
        }
        let mut take = |field| cross.remove(field).unwrap_or_default();
        Ok(QueriedKeys {
            device_keys,
            failures: None,
            master_keys: take("master_keys"),
            self_signing_keys: take("self_signing_keys"),
            user_signing_keys: requester.map(|_| take("user_signing_keys")),
        })
    }

    /// `POST /keys/claim`: one key per (user, device, algorithm).
    pub async fn claim_keys(&self, body: &Value) -> Result<ClaimedKeys> {
        let wanted =
            parse_user_map::<BTreeMap<String, String>>(body.get("one_time_keys"), "one_time_keys")?;
        let (local, remote): (BTreeMap<_, _>, BTreeMap<_, _>) = wanted
            .into_iter()
            .partition(|(u, _)| self.is_local(u.as_str()));
        let mut keys = self.claim_local_keys(&local).await?;
        let mut failures = Map::new();
        let link = self.links.remote.get();
        for (server, users) in by_server(&remote) {
            let answer = match link {
                Some(r) => r.claim_keys(&server, json!({"one_time_keys": users})).await,
                None => Err(Error::Unavailable("federation is not configured".into())),
            };
            match answer {
                Ok(a) => {
                    for (user, devices) in a["one_time_keys"].as_object().into_iter().flatten() {
                        let from_server = UserId::parse(user.as_str())
                            .is_ok_and(|u| u.server_name() == server.as_str());
                        if from_server {
                            keys.insert(user.clone(), devices.clone());
                        }
                    }
                }
                Err(e) => {
                    tracing::info!(%server, error = %e, "remote key claim failed");
                    failures.insert(
                        server,
                        json!({"errcode": "M_UNAVAILABLE", "error": e.to_string()}),
                    );
                }
            }
        }
        Ok(ClaimedKeys {
            failures,
            one_time_keys: keys,
        })
    }

    /// Claims keys of local users (for a client here or another server).
    pub async fn claim_local_keys(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for (user, devices) in wanted {
            if !self.is_local(user.as_str()) {
                continue;
            }
            let mut mine = Map::new();
            for (device, algorithm) in devices {
                let claimed = self
                    .store
                    .claim_key(user.as_str(), device, algorithm)
                    .await?;
                self.forget_key_counts(user.as_str(), device);
                if let Some((id, key)) = claimed {
                    mine.insert(device.clone(), json!({ id: key }));
                }
            }
            if !mine.is_empty() {
                out.insert(user.to_string(), Value::Object(mine));
            }
        }
        Ok(out)
    }

    /// Whether the user has a master cross-signing key: replacing one needs
    /// the password again, the first upload does not (spec v1.11, MSC3967).
    pub async fn has_master_cross_signing_key(&self, user: &UserId) -> Result<bool> {
        Ok(self
            .store
            .cross_signing_keys(user.as_str())
            .await?
            .iter()
            .any(|(k, _)| k == "master"))
    }

    /// `POST /keys/device_signing/upload`: new cross-signing keys. A key
    /// signed by the master key must be signed by the (new or current) one.
    pub async fn upload_cross_signing_keys(&self, user: &UserId, body: &Value) -> Result<()> {
        let current: BTreeMap<String, Value> = self
            .store
            .cross_signing_keys(user.as_str())
            .await?
            .into_iter()
            .collect();
        let mut new = vec![];
        for (kind, field) in [
            ("master", "master_key"),
            ("self_signing", "self_signing_key"),
            ("user_signing", "user_signing_key"),
        ] {
            if let Some(key) = body.get(field).filter(|v| !v.is_null()) {
                check_cross_signing_key(key, user, kind, field)?;
                new.push((kind.to_owned(), key.clone()));
            }
        }
        if new.is_empty() {
            return Err(Error::MissingParam("No cross-signing keys given".into()));
        }
        let master = new
            .iter()
            .find(|(k, _)| k == "master")
            .map(|(_, v)| v)
            .or_else(|| current.get("master"))
            .ok_or_else(|| Error::invalid_param("A master key is needed first"))?;
        let (master_id, master_public) = single_key(master)
            .ok_or_else(|| Error::invalid_param("master_key must hold one ed25519 key"))?;
        for (kind, key) in new.iter().filter(|(k, _)| k != "master") {
            verify_signed_by(key, user, &master_id, &master_public).map_err(|_| {
                Error::invalid_param(format!("{kind} key is not signed by the master key"))
            })?;
        }
        self.store
            .put_cross_signing_keys(user.as_str(), &new)
            .await?;
        self.device_list_changed(user, None, true).await
    }

    /// `POST /keys/signatures/upload`: signatures of the uploader's own
    /// devices and keys, or of another user's master key (with the
    /// uploader's user-signing key). Each signature is checked; a bad one is
    /// reported in `failures` and not stored.
    pub async fn upload_signatures(
        &self,
        signer: &UserId,
        body: &Value,
    ) -> Result<SignatureFailures> {
        let body = body
            .as_object()
            .ok_or_else(|| Error::bad_json("Body must be an object"))?;
        let own: BTreeMap<String, Value> = self
            .store
            .cross_signing_keys(signer.as_str())
            .await?
            .into_iter()
            .collect();
        let mut failures: Map<String, Value> = Map::new();
        let mut fail = |user: &str, key: &str, code: &str, msg: String| {
            failures
                .entry(user.to_owned())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .map(|m| m.insert(key.to_owned(), json!({"errcode": code, "error": msg})));
        };
        for (target, keys) in body {
            let Ok(target_id) = UserId::parse(target.as_str()) else {
                fail(target, "", "M_INVALID_PARAM", "Not a user id".into());
                continue;
            };
            for (key_name, signed) in keys.as_object().into_iter().flatten() {
                let result = if target_id == signer {
                    self.sign_own_key(signer, key_name, signed, &own).await
                } else {
                    self.sign_other_master(signer, &target_id, key_name, signed, &own)
                        .await
                };
                if let Err(e) = result {
                    let code = match e {
                        Error::NotFound(_) => "M_NOT_FOUND",
                        Error::InvalidParam(_) => "M_INVALID_SIGNATURE",
                        _ => "M_UNKNOWN",
                    };
                    fail(target, key_name, code, e.to_string());
                }
            }
        }
        Ok(SignatureFailures { failures })
    }

    /// A signature of one of the signer's own devices (with the self-signing
    /// key) or of their master key (with a device key).
    async fn sign_own_key(
        &self,
        user: &UserId,
        key_name: &str,
        signed: &Value,
        own: &BTreeMap<String, Value>,
    ) -> Result<()> {
        let devices: BTreeMap<String, Value> = self
            .store
            .device_keys(user.as_str())
            .await?
            .into_iter()
            .collect();
        let sigs = signed
            .get("signatures")
            .and_then(|s| s.get(user.as_str()))
            .and_then(Value::as_object)
            .ok_or_else(|| Error::invalid_param("No signatures by the user"))?;
        // Which of the user's keys may sign this one.
        let signers: Vec<(String, String)> = if devices.contains_key(key_name) {
            own.get("self_signing")
                .and_then(single_key)
                .into_iter()
                .collect()
        } else {
            devices
                .values()
                .filter_map(|d| {
                    let device = d.get("device_id")?.as_str()?;
                    let public = d.get("keys")?.get(format!("ed25519:{device}"))?.as_str()?;
                    Some((format!("ed25519:{device}"), public.to_owned()))
                })
                .collect()
        };
        let mut accepted = Map::new();
        for (key_id, sig) in sigs {
            let Some((_, public)) = signers.iter().find(|(id, _)| id == key_id) else {
                continue;
            };
            verify_signed_by(signed, user, key_id, public)?;
            accepted.insert(key_id.clone(), sig.clone());
        }
        if accepted.is_empty() {
            return Err(Error::invalid_param(
                "No signature by a key that may sign this",
            ));
        }
        let mut by = Map::new();
        by.insert(user.to_string(), Value::Object(accepted));
        if !self
            .store
            .add_key_signatures(user.as_str(), key_name, &by)
            .await?
        {
            return Err(Error::not_found("Unknown key"));
        }
        self.device_list_changed(user, None, false).await
    }

    /// A signature of another user's master key by the signer's
    /// user-signing key.
    async fn sign_other_master(
        &self,
        signer: &UserId,
        target: &UserId,
        key_name: &str,
        signed: &Value,
        own: &BTreeMap<String, Value>,
    ) -> Result<()> {
        let (usk_id, usk_public) = own
            .get("user_signing")
            .and_then(single_key)
            .ok_or_else(|| Error::invalid_param("The signer has no user-signing key"))?;
        let sig = signed
            .get("signatures")
            .and_then(|s| s.get(signer.as_str()))
            .and_then(|s| s.get(&usk_id))
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid_param("Not signed by the user-signing key"))?;
        verify_signed_by(signed, signer, &usk_id, &usk_public)?;
        if signed.get("user_id").and_then(Value::as_str) != Some(target.as_str()) {
            return Err(Error::invalid_param("The key is not the target user's"));
        }
        self.store
            .add_user_signatures(
                signer.as_str(),
                target.as_str(),
                key_name,
                &[(usk_id.clone(), sig.to_owned())],
            )
            .await?;
        self.notifier.notify_users([signer.as_str()]);
        Ok(())
    }

    /// `GET /keys/changes`: users sharing a room with `user` whose keys
    /// changed between two positions of the misc stream.
    pub async fn key_changes(&self, user: &UserId, from: i64, to: i64) -> Result<Vec<String>> {
        let changed = self.store.device_list_changes(from, to).await?;
        if changed.is_empty() {
            return Ok(changed);
        }
        let sharing: std::collections::BTreeSet<String> = self
            .store
            .users_sharing_rooms(user.as_str())
            .await?
            .into_iter()
            .collect();
        Ok(changed
            .into_iter()
            .filter(|u| u == user.as_str() || sharing.contains(u))
            .collect())
    }
}

/// A device's unclaimed one-time keys by algorithm.
pub type KeyCounts = BTreeMap<String, i64>;

/// `{"signed_curve25519": n, ...}`, always naming signed_curve25519 (clients
/// read a missing count as "upload more").
pub fn counts_object(counts: &[(String, i64)]) -> KeyCounts {
    let mut out = KeyCounts::new();
    out.insert("signed_curve25519".into(), 0);
    out.extend(counts.iter().cloned());
    out
}

fn parse_user_map<T: serde::de::DeserializeOwned>(
    v: Option<&Value>,
    field: &str,
) -> Result<BTreeMap<OwnedUserId, T>> {
    let v = v.ok_or_else(|| Error::MissingParam(format!("{field} is required")))?;
    serde_json::from_value(v.clone()).map_err(|e| Error::bad_json(format!("{field}: {e}")))
}

/// Merges a remote server's `/user/keys/query` answer, keeping only users of
/// that server (a server speaks only for its own users).
fn merge_remote_keys(out: &mut QueriedKeys, answer: &Value, server: &str) {
    let ours = |u: &str| UserId::parse(u).is_ok_and(|u| u.server_name() == server);
    for (field, into) in [
        ("device_keys", &mut out.device_keys),
        ("master_keys", &mut out.master_keys),
        ("self_signing_keys", &mut out.self_signing_keys),
    ] {
        for (user, v) in answer[field].as_object().into_iter().flatten() {
            if ours(user) {
                into.insert(user.clone(), v.clone());
            }
        }
    }
}

/// The keys a `/keys/query` found, by user (their devices' keys and their
/// cross-signing keys), as uploaded. Hearth's shape rather than ruma's
/// response: the keys go on as the devices and other servers gave them,
/// unchecked. Fields in the order `json!` wrote them, so the bytes stay.
#[derive(Debug, Default, Serialize)]
pub struct QueriedKeys {
    pub device_keys: Map<String, Value>,
    /// Servers that could not be asked (a client's query only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<Map<String, Value>>,
    pub master_keys: Map<String, Value>,
    pub self_signing_keys: Map<String, Value>,
    /// Only for a user asking: their own user-signing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_signing_keys: Option<Map<String, Value>>,
}

/// The signatures an upload could not store, by target user and key, each
/// with its errcode. Hearth's shape: a target that is not a user id is
/// named as given, which ruma's map (keyed by user ids) could not hold.
#[derive(Debug, Serialize)]
pub struct SignatureFailures {
    pub failures: Map<String, Value>,
}

/// One-time keys claimed, by user, and servers that could not be asked.
#[derive(Debug, Serialize)]
pub struct ClaimedKeys {
    pub failures: Map<String, Value>,
    pub one_time_keys: Map<String, Value>,
}

/// A one-time or fallback key: a bare key string, or a `KeyObject` with
/// its `key` and `signatures`.
fn check_key_value(key: &Value, id: &str) -> Result<()> {
    let object_ok = key.get("key").is_some_and(Value::is_string)
        && key.get("signatures").is_some_and(Value::is_object);
    if key.is_string() || object_ok {
        Ok(())
    } else {
        Err(Error::bad_json(format!(
            "Key {id} must be a string or an object with key and signatures"
        )))
    }
}

fn check_device_keys(keys: &Value, user: &UserId, device: &str) -> Result<()> {
    if keys.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(Error::invalid_param(
            "device_keys.user_id is not the uploader",
        ));
    }
    if keys.get("device_id").and_then(Value::as_str) != Some(device) {
        return Err(Error::invalid_param(
            "device_keys.device_id is not this device",
        ));
    }
    if !keys.get("algorithms").is_some_and(Value::is_array) {
        return Err(Error::bad_json("device_keys.algorithms must be a list"));
    }
    if !keys.get("keys").is_some_and(Value::is_object) {
        return Err(Error::bad_json("device_keys.keys must be an object"));
    }
    Ok(())
}

fn check_cross_signing_key(key: &Value, user: &UserId, kind: &str, field: &str) -> Result<()> {
    if key.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(Error::invalid_param(format!(
            "{field}.user_id is not the uploader"
        )));
    }
    let usage_ok = key
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(kind)));
    if !usage_ok {
        return Err(Error::invalid_param(format!(
            "{field}.usage must include {kind:?}"
        )));
    }
    if single_key(key).is_none() {
        return Err(Error::invalid_param(format!(
            "{field} must hold one ed25519 key"
        )));
    }
    Ok(())
}

/// A cross-signing key's one `ed25519:<public>` entry: (key id, public key).
fn single_key(key: &Value) -> Option<(String, String)> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, public) = keys.iter().next()?;
    id.starts_with("ed25519:")
        .then(|| (id.clone(), public.as_str().map(str::to_owned)))
        .and_then(|(id, p)| Some((id, p?)))
}

fn key_public(key: &Value) -> Option<String> {
    single_key(key).map(|(_, p)| p)
}

/// Checks `user`'s signature `key_id` over a signed JSON object.
fn verify_signed_by(signed: &Value, user: &UserId, key_id: &str, public_b64: &str) -> Result<()> {
    let public = ruma::serde::Base64::parse(public_b64)
        .map_err(|_| Error::invalid_param("Malformed public key"))?;
    let object: ruma::CanonicalJsonObject = serde_json::from_value(signed.clone())
        .map_err(|e| Error::bad_json(format!("Not canonical JSON: {e}")))?;
    // Only this signature: others in the object are not ours to check here.
    let mut keys = BTreeMap::new();
    keys.insert(key_id.to_owned(), public);
    let mut public_keys = BTreeMap::new();
    public_keys.insert(user.to_string(), keys);
    let mut only = object.clone();
    if let Some(ruma::CanonicalJsonValue::Object(sigs)) = object.get("signatures") {
        let mine = sigs
            .get(user.as_str())
            .and_then(|s| match s {
                ruma::CanonicalJsonValue::Object(o) => o.get(key_id).cloned(),
                _ => None,
            })
            .ok_or_else(|| Error::invalid_param("Signature missing"))?;
        let mut by = ruma::CanonicalJsonObject::new();
        by.insert(key_id.to_owned(), mine);
        let mut all = ruma::CanonicalJsonObject::new();
        all.insert(user.to_string(), ruma::CanonicalJsonValue::Object(by));
        only.insert("signatures".into(), ruma::CanonicalJsonValue::Object(all));
    }
    ruma::signatures::verify_json(&public_keys, &only)
        .map_err(|e| Error::invalid_param(format!("Bad signature: {e}")))
}
