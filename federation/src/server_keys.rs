//! `/_matrix/key/v2/server` (this server's keys, self-signed) and the notary
//! endpoints `/_matrix/key/v2/query`, which relay other servers' keys with
//! this server's signature added.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, Query, State},
};
use hearth_core::{Error, ids::now_ms};
use hearth_http_common::error::ApiError;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, ServerName, signatures::sign_json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Federation;

/// How long others may trust our published keys before asking again.
const OWN_KEYS_VALID_MS: u64 = 24 * 3600 * 1000;
/// Servers one notary request may ask about.
const MAX_SERVERS_PER_QUERY: usize = 100;

impl Federation {
    /// This server's key response, signed by its current key.
    pub(crate) fn own_keys(&self) -> CanonicalJsonObject {
        let keys = &self.hearth.keys;
        let old: serde_json::Map<String, Value> = keys
            .old
            .iter()
            .map(|k| {
                (
                    k.key_id.clone(),
                    json!({"key": k.public_key, "expired_ts": k.expired_ts}),
                )
            })
            .collect();
        let v = json!({
            "server_name": self.server_name(),
            "valid_until_ts": now_ms() + OWN_KEYS_VALID_MS,
            "verify_keys": {keys.key_id.clone(): {"key": keys.public_key_base64()}},
            "old_verify_keys": old,
        });
        let mut obj = match CanonicalJsonValue::try_from(v) {
            Ok(CanonicalJsonValue::Object(o)) => o,
            _ => CanonicalJsonObject::new(),
        };
        self.sign(&mut obj);
        obj
    }

    /// Adds this server's signature to a JSON object.
    pub(crate) fn sign(&self, obj: &mut CanonicalJsonObject) {
        if let Err(e) = sign_json(self.server_name().as_str(), &self.hearth.keys.key_pair, obj) {
            tracing::error!(error = %e, "signing a JSON object failed");
        }
    }

    /// `server`'s keys as a notary relays them (its response, our signature):
    /// fetched again when the cached copy lacks one of `key_ids` or expires
    /// before `min_valid_until`.
    async fn notarised(
        &self,
        server: &str,
        key_ids: &[&str],
        min_valid_until: u64,
    ) -> Option<Value> {
        if ServerName::parse(server).is_err() {
            return None;
        }
        if server == self.server_name().as_str() {
            // Freshly signed, with a validity counted from now.
            return Some(CanonicalJsonValue::Object(self.own_keys()).into());
        }
        match self
            .server_keys_with(server, key_ids, min_valid_until)
            .await
        {
            Ok(keys) => {
                let mut obj = keys.raw.clone();
                self.sign(&mut obj);
                Some(CanonicalJsonValue::Object(obj).into())
            }
            Err(e) => {
                tracing::info!(%server, error = %e, "notary: no keys to relay");
                None
            }
        }
    }
}

pub(crate) async fn own(State(fed): State<Arc<Federation>>) -> Json<Value> {
    Json(CanonicalJsonValue::Object(fed.own_keys()).into())
}

/// The deprecated form naming a key id: the same response.
pub(crate) async fn own_by_id(
    State(fed): State<Arc<Federation>>,
    Path(_key_id): Path<String>,
) -> Json<Value> {
    own(State(fed)).await
}

#[derive(Deserialize)]
pub(crate) struct MinValid {
    minimum_valid_until_ts: Option<u64>,
}

pub(crate) async fn query_one(
    State(fed): State<Arc<Federation>>,
    Path(server): Path<String>,
    Query(q): Query<MinValid>,
) -> Json<Value> {
    let min = q.minimum_valid_until_ts.unwrap_or_else(now_ms);
    let keys: Vec<Value> = fed.notarised(&server, &[], min).await.into_iter().collect();
    Json(json!({"server_keys": keys}))
}

#[derive(Deserialize)]
pub(crate) struct BatchQuery {
    server_keys: BTreeMap<String, BTreeMap<String, Criteria>>,
}

#[derive(Deserialize)]
pub(crate) struct Criteria {
    minimum_valid_until_ts: Option<u64>,
}

pub(crate) async fn query_batch(
    State(fed): State<Arc<Federation>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let q: BatchQuery =
        serde_json::from_slice(&body).map_err(|e| Error::bad_json(format!("server_keys: {e}")))?;
    if q.server_keys.len() > MAX_SERVERS_PER_QUERY {
        return Err(
            Error::TooLarge(format!("at most {MAX_SERVERS_PER_QUERY} servers per query")).into(),
        );
    }
    let mut out = vec![];
    for (server, keys) in q.server_keys {
        let min = keys
            .values()
            .filter_map(|c| c.minimum_valid_until_ts)
            .max()
            .unwrap_or_else(now_ms);
        let key_ids: Vec<&str> = keys.keys().map(String::as_str).collect();
        out.extend(fed.notarised(&server, &key_ids, min).await);
    }
    Ok(Json(json!({"server_keys": out})))
}
