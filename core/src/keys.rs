//! The server's ed25519 signing key: generated on first start and kept in the
//! database, so event signatures stay verifiable across restarts.

use base64::Engine;
use ruma::signatures::{Ed25519KeyPair, KeyPair};

use crate::{Error, Result, store::Store};

pub struct ServerKeys {
    pub key_pair: Ed25519KeyPair,
    pub key_id: String,
}

impl ServerKeys {
    pub async fn load_or_generate(store: &dyn Store) -> Result<Self> {
        let existing = store.server_keys().await?;
        let (key_id, der) = match existing.into_iter().last() {
            Some(k) => k,
            None => {
                let der = Ed25519KeyPair::generate();
                let version: String = crate::ids::random_string(6);
                let key_id = format!("ed25519:{version}");
                store.add_server_key(&key_id, &der).await?;
                (key_id, der.to_vec())
            }
        };
        let version = key_id.trim_start_matches("ed25519:").to_owned();
        let key_pair = Ed25519KeyPair::from_der(&der, version).map_err(Error::internal)?;
        Ok(Self { key_pair, key_id })
    }

    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.key_pair.public_key())
    }

    pub fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        self.key_pair.sign(msg).as_bytes().to_vec()
    }
}
