//! Server-side key backup (`/room_keys`): versions whose `auth_data` the
//! clients define, holding session keys encrypted by the client. The server
//! only decides which of two copies of a session key to keep.

use std::{collections::BTreeMap, sync::Arc};

use ruma::UserId;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    Error, Result,
    store::{BackupKey, MainStore},
};

/// Which part of a backup a request reads, writes or deletes.
#[derive(Debug, Clone, Copy)]
pub struct BackupScope<'a> {
    pub room: Option<&'a str>,
    pub session: Option<&'a str>,
}

fn parse_version(v: &str) -> Result<i64> {
    v.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::not_found(format!("Unknown backup version {v:?}")))
}

/// Users' key backups; nothing else reads them.
pub struct KeyBackup {
    store: Arc<dyn MainStore>,
}

impl KeyBackup {
    pub(crate) fn new(store: Arc<dyn MainStore>) -> Self {
        Self { store }
    }

    /// The new version's name.
    pub async fn create_backup_version(&self, user: &UserId, body: &Value) -> Result<String> {
        let (algorithm, auth_data) = backup_body(body)?;
        let version = self
            .store
            .create_backup(user.as_str(), algorithm, auth_data)
            .await?;
        Ok(version.to_string())
    }

    /// A version's description (the newest when `version` is `None`).
    pub async fn backup_info(&self, user: &UserId, version: Option<&str>) -> Result<BackupInfo> {
        let wanted = version.map(parse_version).transpose()?;
        let b = self
            .store
            .backup_version(user.as_str(), wanted)
            .await?
            .ok_or_else(|| Error::not_found("No backup version found"))?;
        let count = self
            .store
            .backup_key_count(user.as_str(), b.version)
            .await?;
        Ok(BackupInfo {
            algorithm: b.algorithm,
            auth_data: b.auth_data,
            count,
            etag: b.etag.to_string(),
            version: b.version.to_string(),
        })
    }

    pub async fn update_backup_version(
        &self,
        user: &UserId,
        version: &str,
        body: &Value,
    ) -> Result<()> {
        let n = parse_version(version)?;
        let (algorithm, auth_data) = backup_body(body)?;
        if let Some(v) = body.get("version").and_then(Value::as_str)
            && v != version
        {
            return Err(Error::invalid_param(
                "The body's version differs from the path's",
            ));
        }
        let current = self
            .store
            .backup_version(user.as_str(), Some(n))
            .await?
            .ok_or_else(|| Error::not_found("Unknown backup version"))?;
        if current.algorithm != algorithm {
            return Err(Error::invalid_param("A backup's algorithm cannot change"));
        }
        self.store
            .update_backup(user.as_str(), n, auth_data)
            .await?;
        Ok(())
    }

    pub async fn delete_backup_version(&self, user: &UserId, version: &str) -> Result<()> {
        let n = parse_version(version)?;
        if !self.store.delete_backup(user.as_str(), n).await? {
            return Err(Error::not_found("Unknown backup version"));
        }
        Ok(())
    }

    /// Writes keys into the current version: `body` is `{rooms}`, a room's
    /// `{sessions}` or one `KeyBackupData`, as the scope says. A stored copy
    /// that is better (verified, or earlier first index, or fewer forwards)
    /// is kept.
    pub async fn put_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        scope: BackupScope<'_>,
        body: &Value,
    ) -> Result<BackupCounts> {
        let n = self.current_backup(user, version).await?;
        let incoming = keys_of(scope, body)?;
        let mut existing: BTreeMap<(String, String), Value> = BTreeMap::new();
        let rooms: std::collections::BTreeSet<&str> =
            incoming.iter().map(|(r, _, _)| r.as_str()).collect();
        for room in rooms {
            for (r, s, v) in self
                .store
                .backup_keys(user.as_str(), n, Some(room), None)
                .await?
            {
                existing.insert((r, s), v);
            }
        }
        let to_write: Vec<BackupKey> = incoming
            .into_iter()
            .filter(|(r, s, new)| {
                existing
                    .get(&(r.clone(), s.clone()))
                    .is_none_or(|old| better(new, old))
            })
            .collect();
        self.store
            .put_backup_keys(user.as_str(), n, &to_write)
            .await?;
        self.backup_counts(user, n).await
    }

    pub async fn get_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        scope: BackupScope<'_>,
    ) -> Result<BackupKeys> {
        let n = parse_version(version)?;
        self.store
            .backup_version(user.as_str(), Some(n))
            .await?
            .ok_or_else(|| Error::not_found("Unknown backup version"))?;
        let keys = self
            .store
            .backup_keys(user.as_str(), n, scope.room, scope.session)
            .await?;
        if scope.session.is_some() {
            return keys
                .into_iter()
                .next()
                .map(|(_, _, v)| BackupKeys::Session(v))
                .ok_or_else(|| Error::not_found("No key for that session"));
        }
        let mut rooms: BTreeMap<String, RoomBackup> = BTreeMap::new();
        for (room, session, data) in keys {
            rooms
                .entry(room)
                .or_default()
                .sessions
                .insert(session, data);
        }
        Ok(match scope.room {
            Some(room) => BackupKeys::Room(rooms.remove(room).unwrap_or_default()),
            None => BackupKeys::Rooms { rooms },
        })
    }

    pub async fn delete_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        scope: BackupScope<'_>,
    ) -> Result<BackupCounts> {
        let n = parse_version(version)?;
        self.store
            .backup_version(user.as_str(), Some(n))
            .await?
            .ok_or_else(|| Error::not_found("Unknown backup version"))?;
        self.store
            .delete_backup_keys(user.as_str(), n, scope.room, scope.session)
            .await?;
        self.backup_counts(user, n).await
    }

    /// Keys are only written to the newest version: a client still writing
    /// to an older one is told which is current.
    async fn current_backup(&self, user: &UserId, version: &str) -> Result<i64> {
        let current = self
            .store
            .backup_version(user.as_str(), None)
            .await?
            .ok_or_else(|| Error::not_found("No backup version found"))?;
        if version.parse::<i64>().ok() != Some(current.version) {
            return Err(Error::WrongRoomKeysVersion {
                current: current.version.to_string(),
            });
        }
        Ok(current.version)
    }

    async fn backup_counts(&self, user: &UserId, version: i64) -> Result<BackupCounts> {
        let count = self.store.backup_key_count(user.as_str(), version).await?;
        let etag = self
            .store
            .backup_version(user.as_str(), Some(version))
            .await?
            .map_or(0, |b| b.etag);
        Ok(BackupCounts {
            count: u64::try_from(count).unwrap_or(0),
            etag: etag.to_string(),
        })
    }
}

/// A backup version as `GET /room_keys/version` shows it. Hearth's shape:
/// `auth_data` goes back as the client defined it. Fields in the order
/// `json!` wrote them, so the bytes sent stay.
#[derive(Debug, Serialize)]
pub struct BackupInfo {
    pub algorithm: String,
    pub auth_data: Value,
    pub count: i64,
    pub etag: String,
    pub version: String,
}

/// How many keys a version holds after a write or delete, and its etag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupCounts {
    pub count: u64,
    pub etag: String,
}

/// The stored keys a read asked for: every room's, one room's or one
/// session's, each shaped as the spec's answer at that scope.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum BackupKeys {
    Rooms {
        rooms: BTreeMap<String, RoomBackup>,
    },
    Room(RoomBackup),
    /// One session's `KeyBackupData`, as it was stored.
    Session(Value),
}

/// One room's backed-up sessions.
#[derive(Debug, Default, Serialize)]
pub struct RoomBackup {
    pub sessions: BTreeMap<String, Value>,
}

/// The backup algorithms this server stores: the spec's one, and the name
/// it had before it was finalised, which older clients (and SyTest) send.
const BACKUP_ALGORITHMS: &[&str] = &[
    "m.megolm_backup.v1.curve25519-aes-sha2",
    "m.megolm_backup.v1",
];

fn backup_body(body: &Value) -> Result<(&str, &Value)> {
    let algorithm = body
        .get("algorithm")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::MissingParam("algorithm is required".into()))?;
    if !BACKUP_ALGORITHMS.contains(&algorithm) {
        return Err(Error::invalid_param(format!(
            "Unsupported backup algorithm: {algorithm}"
        )));
    }
    let auth_data = body
        .get("auth_data")
        .filter(|v| v.is_object())
        .ok_or_else(|| Error::MissingParam("auth_data (an object) is required".into()))?;
    Ok((algorithm, auth_data))
}

/// The (room, session, data) triples a PUT body carries at its scope.
fn keys_of(scope: BackupScope<'_>, body: &Value) -> Result<Vec<BackupKey>> {
    let mut out = vec![];
    let mut add_sessions = |room: &str, sessions: &Value| -> Result<()> {
        let sessions = sessions
            .as_object()
            .ok_or_else(|| Error::bad_json("sessions must be an object"))?;
        for (session, data) in sessions {
            check_key_data(data)?;
            out.push((room.to_owned(), session.clone(), data.clone()));
        }
        Ok(())
    };
    match (scope.room, scope.session) {
        (Some(room), Some(session)) => {
            let mut one = Map::new();
            one.insert(session.to_owned(), body.clone());
            add_sessions(room, &Value::Object(one))?;
        }
        (Some(room), None) => add_sessions(room, &body["sessions"])?,
        _ => {
            let rooms = body["rooms"]
                .as_object()
                .ok_or_else(|| Error::bad_json("rooms must be an object"))?;
            for (room, r) in rooms {
                add_sessions(room, &r["sessions"])?;
            }
        }
    }
    Ok(out)
}

fn check_key_data(data: &Value) -> Result<()> {
    let ok = data["first_message_index"].is_u64()
        && data["forwarded_count"].is_u64()
        && data["is_verified"].is_boolean()
        && data["session_data"].is_object();
    if ok {
        Ok(())
    } else {
        Err(Error::bad_json(
            "KeyBackupData needs first_message_index, forwarded_count, is_verified and session_data",
        ))
    }
}

/// Whether a new copy of a session key should replace the stored one: a
/// verified copy beats an unverified one, then the lower first message index
/// (it decrypts more), then fewer forwards.
fn better(new: &Value, old: &Value) -> bool {
    let key = |v: &Value| {
        (
            !v["is_verified"].as_bool().unwrap_or(false),
            v["first_message_index"].as_u64().unwrap_or(u64::MAX),
            v["forwarded_count"].as_u64().unwrap_or(u64::MAX),
        )
    };
    key(new) < key(old)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn data(verified: bool, index: u64, forwards: u64) -> Value {
        json!({"is_verified": verified, "first_message_index": index,
               "forwarded_count": forwards, "session_data": {}})
    }

    #[test]
    fn verified_then_earlier_then_fewer_forwards_wins() {
        assert!(better(&data(true, 9, 9), &data(false, 0, 0)));
        assert!(!better(&data(false, 0, 0), &data(true, 9, 9)));
        assert!(better(&data(false, 1, 5), &data(false, 2, 0)));
        assert!(better(&data(false, 2, 0), &data(false, 2, 1)));
        assert!(!better(&data(false, 2, 1), &data(false, 2, 1)));
    }

    #[test]
    fn malformed_key_data_is_refused() {
        let scope = BackupScope {
            room: Some("!r:hs"),
            session: Some("s"),
        };
        assert!(keys_of(scope, &json!({"first_message_index": 1})).is_err());
        assert_eq!(
            keys_of(scope, &data(true, 1, 0)).map(|k| k.len()).ok(),
            Some(1)
        );
    }
}
