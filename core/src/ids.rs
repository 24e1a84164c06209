//! Random identifiers and secret hashing.

use rand::{Rng, distributions::Alphanumeric};
use sha2::{Digest, Sha256};

pub fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub fn new_device_id() -> String {
    random_string(10).to_uppercase()
}

pub fn new_access_token() -> String {
    format!("hth_{}", random_string(40))
}

/// Access tokens are stored only as this hash.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `user` is a well-formed user id of `server`: what every
/// service's `is_local` asks of this server's name.
pub fn user_on_server(user: &str, server: &ruma::ServerName) -> bool {
    ruma::UserId::parse(user).is_ok_and(|u| u.server_name() == server)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
