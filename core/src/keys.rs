//! The server's ed25519 signing keys: generated on first start and kept in
//! the database, so signatures stay verifiable across restarts. A rotated-out
//! key is still published (as an old verify key) for the events it signed.

use base64::Engine;
use ruma::signatures::{Ed25519KeyPair, KeyPair};

use crate::{Error, Result, store::MainStore};

pub struct ServerKeys {
    pub key_pair: Ed25519KeyPair,
    pub key_id: String,
    /// Keys that no longer sign, with when they stopped (unix ms).
    pub old: Vec<OldKey>,
}

#[derive(Debug, Clone)]
pub struct OldKey {
    pub key_id: String,
    /// Unpadded standard base64 of the public key.
    pub public_key: String,
    pub expired_ts: u64,
}

impl ServerKeys {
    pub async fn load_or_generate(store: &dyn MainStore) -> Result<Self> {
        if !store
            .server_keys()
            .await?
            .iter()
            .any(|k| k.expired_ts.is_none())
        {
            Self::add_key(store).await?;
        }
        let keys = store.server_keys().await?;
        let mut old = vec![];
        let mut current = None;
        for k in keys {
            let pair = key_pair(&k.key_id, &k.pkcs8)?;
            match k.expired_ts {
                Some(ts) => old.push(OldKey {
                    public_key: b64(&pair.public_key()),
                    key_id: k.key_id,
                    expired_ts: ts.max(0) as u64,
                }),
                // The newest unexpired key signs (there is one unless two
                // processes generated at once; either works then).
                None => current = Some((k.key_id, pair)),
            }
        }
        let (key_id, key_pair) =
            current.ok_or_else(|| Error::internal("no current signing key"))?;
        Ok(Self {
            key_pair,
            key_id,
            old,
        })
    }

    /// Makes a new signing key current; the one before it expires now. Takes
    /// effect when the server next starts.
    pub async fn add_key(store: &dyn MainStore) -> Result<String> {
        let der = Ed25519KeyPair::generate();
        let key_id = format!("ed25519:{}", crate::ids::random_string(6));
        store.add_server_key(&key_id, &der).await?;
        Ok(key_id)
    }

    pub fn public_key_base64(&self) -> String {
        b64(&self.key_pair.public_key())
    }

    pub fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        self.key_pair.sign(msg).as_bytes().to_vec()
    }
}

fn key_pair(key_id: &str, der: &[u8]) -> Result<Ed25519KeyPair> {
    let version = key_id.trim_start_matches("ed25519:").to_owned();
    Ed25519KeyPair::from_der(der, version).map_err(Error::internal)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}
