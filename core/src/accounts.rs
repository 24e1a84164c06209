//! Accounts, devices and access tokens.

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use std::sync::Arc;

mod openid;
mod threepid;
pub use openid::{OPENID_TOKEN_SECS, OpenIdToken};
pub use threepid::ThreepidPurpose;

use ruma::{OwnedServerName, OwnedUserId, UserId};

use crate::{
    Error, Result,
    appservice::{AppService, AppServices},
    e2ee::E2ee,
    ids::{hash_token, new_access_token, new_device_id},
    store::MainStore,
};

/// An authenticated requester.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub token_hash: String,
    /// Set when an application service makes the request (its `as_token`),
    /// acting as `user_id`.
    pub appservice: Option<std::sync::Arc<crate::appservice::AppService>>,
}

/// Argon2 takes ~19 MiB per hash by design; bounding how many run at once
/// bounds that memory (and keeps a registration burst from starving the CPU).
fn hashing_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        tokio::sync::Semaphore::new(cpus)
    })
}

pub async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    let _permit = hashing_permits().acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(Error::internal)
    })
    .await
    .map_err(Error::internal)?
}

async fn verify_password(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    let Ok(_permit) = hashing_permits().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Localparts we accept for new accounts (the spec's historical-compatible subset).
pub fn valid_localpart(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= 200
        && local.bytes().all(
            |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'),
        )
}

/// Accounts and access tokens: registration, login, passwords, logout.
pub struct Accounts {
    store: Arc<dyn MainStore>,
    server_name: OwnedServerName,
    /// Names application services hold exclusively are not registrable.
    appservices: Arc<AppServices>,
    /// Logging out deletes the device with its keys and inbox.
    e2ee: Arc<E2ee>,
}

impl Accounts {
    pub(crate) fn new(
        store: Arc<dyn MainStore>,
        server_name: OwnedServerName,
        appservices: Arc<AppServices>,
        e2ee: Arc<E2ee>,
    ) -> Self {
        Self {
            store,
            server_name,
            appservices,
            e2ee,
        }
    }

    pub fn user_id_for(&self, local: &str) -> Result<OwnedUserId> {
        UserId::parse(format!("@{local}:{}", self.server_name))
            .map_err(|e| Error::InvalidUsername(format!("Invalid user id: {e}")))
    }

    /// Parses a login identifier: a bare localpart or a full user id of this server.
    pub fn parse_local_user(&self, user: &str) -> Result<OwnedUserId> {
        if user.starts_with('@') {
            let id = UserId::parse(user.to_lowercase())
                .map_err(|_| Error::InvalidUsername("Invalid user id".into()))?;
            if id.server_name() != self.server_name {
                return Err(Error::forbidden("User is not on this server"));
            }
            Ok(id)
        } else {
            self.user_id_for(&user.to_lowercase())
        }
    }

    /// A local account that exists and is not deactivated (`None`
    /// otherwise): whom other servers may look up or invite.
    pub async fn active_user(&self, user: &str) -> Result<Option<crate::store::UserRecord>> {
        Ok(self.store.get_user(user).await?.filter(|u| !u.deactivated))
    }

    pub async fn check_username_available(&self, local: &str) -> Result<OwnedUserId> {
        if !valid_localpart(local) {
            return Err(Error::InvalidUsername(
                "User ID can only contain characters a-z, 0-9, or '=_-./+'".into(),
            ));
        }
        let id = self.user_id_for(local)?;
        if self.store.get_user(id.as_str()).await?.is_some() {
            return Err(Error::UserInUse);
        }
        Ok(id)
    }

    /// `check_username_available` for an ordinary user's registration: also
    /// refuses names an application service holds exclusively.
    pub async fn check_username_claimable(&self, local: &str) -> Result<OwnedUserId> {
        let id = self.check_username_available(local).await?;
        self.appservices.check_user_not_exclusive(&id)?;
        Ok(id)
    }

    /// An application service acting through its `as_token`: as its own
    /// user, or as `user` (`?user_id=`) when its namespaces cover that user
    /// and the user is registered; with `device` (`?device_id=`) when that is
    /// one of the user's devices.
    pub async fn authenticate_appservice(
        &self,
        service: &std::sync::Arc<crate::appservice::AppService>,
        user: Option<&str>,
        device: Option<&str>,
    ) -> Result<Session> {
        let user_id = match user {
            Some(u) => OwnedUserId::try_from(u)
                .map_err(|_| Error::invalid_param(format!("Invalid user_id {u}")))?,
            None => service.sender.clone(),
        };
        if !service.may_act_as(&user_id) {
            return Err(Error::forbidden(format!(
                "Application service cannot masquerade as this user ({user_id})"
            )));
        }
        if self.store.get_user(user_id.as_str()).await?.is_none() {
            return Err(Error::forbidden(format!(
                "Application service has not registered this user ({user_id})"
            )));
        }
        let device_id = match device {
            Some(d) => {
                if self.store.get_device(user_id.as_str(), d).await?.is_none() {
                    return Err(Error::UnknownDevice(format!(
                        "{d} is not a device of {user_id}"
                    )));
                }
                d.to_owned()
            }
            None => String::new(),
        };
        Ok(Session {
            user_id,
            device_id,
            token_hash: crate::ids::hash_token(&service.as_token),
            appservice: Some(service.clone()),
        })
    }

    /// Creates an account; the operator CLI and /register both come here.
    pub async fn create_account(
        &self,
        local: &str,
        password: Option<&str>,
        is_admin: bool,
    ) -> Result<OwnedUserId> {
        let id = self.check_username_available(local).await?;
        let hash = match password {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        self.store
            .create_user(id.as_str(), hash.as_deref(), is_admin)
            .await?;
        self.set_profile_defaults(&id).await?;
        Ok(id)
    }

    /// Creates an account whose password was hashed earlier (a registration
    /// session remembers only the hash).
    pub(crate) async fn create_account_hashed(
        &self,
        local: &str,
        password_hash: &str,
    ) -> Result<OwnedUserId> {
        let id = self.check_username_available(local).await?;
        self.store
            .create_user(id.as_str(), Some(password_hash), false)
            .await?;
        self.set_profile_defaults(&id).await?;
        Ok(id)
    }

    async fn set_profile_defaults(&self, id: &UserId) -> Result<()> {
        self.store
            .set_displayname(id.as_str(), Some(id.localpart()))
            .await
    }

    /// A fresh numeric localpart for registrations that give none.
    pub async fn generate_localpart(&self) -> Result<String> {
        loop {
            let n: u64 = rand::random::<u64>() % 1_000_000_000;
            let local = n.to_string();
            if self
                .store
                .get_user(self.user_id_for(&local)?.as_str())
                .await?
                .is_none()
            {
                return Ok(local);
            }
        }
    }

    /// Issues a device (new or given) and an access token for it.
    pub async fn issue_token(
        &self,
        user: &UserId,
        device_id: Option<&str>,
        display_name: Option<&str>,
    ) -> Result<(String, String)> {
        let device_id = device_id.map(str::to_owned).unwrap_or_else(new_device_id);
        let token = new_access_token();
        self.store
            .add_device_token(user.as_str(), &device_id, display_name, &hash_token(&token))
            .await?;
        self.e2ee.device_added(user).await?;
        Ok((token, device_id))
    }

    /// Verifies a password login; a generic M_FORBIDDEN either way, so the
    /// response does not reveal which accounts exist.
    pub async fn check_password(&self, user: &UserId, password: &str) -> Result<()> {
        let rec = self.store.get_user(user.as_str()).await?;
        match rec {
            Some(u) if u.deactivated => Err(Error::UserDeactivated(
                "This account has been deactivated".into(),
            )),
            Some(u) => match u.password_hash {
                Some(h) if verify_password(password, &h).await => Ok(()),
                _ => Err(Error::forbidden("Invalid username or password")),
            },
            None => Err(Error::forbidden("Invalid username or password")),
        }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Session> {
        let token_hash = hash_token(token);
        match self.store.find_token(&token_hash).await? {
            Some((user, device)) => Ok(Session {
                user_id: OwnedUserId::try_from(user).map_err(Error::internal)?,
                device_id: device,
                token_hash,
                appservice: None,
            }),
            None => Err(Error::UnknownToken { soft_logout: false }),
        }
    }

    pub async fn change_password(
        &self,
        user: &UserId,
        new_password: &str,
        logout_devices: bool,
        keep: Option<&Session>,
    ) -> Result<()> {
        let hash = hash_password(new_password).await?;
        self.store.set_password_hash(user.as_str(), &hash).await?;
        if logout_devices {
            // The other devices end as a logout ends them: keys and
            // pushers go too (a phone whose session is revoked must stop
            // getting pushes), and those tracking the user are told.
            let kept = keep.map_or("", |s| s.device_id.as_str());
            let others: Vec<String> = self
                .store
                .list_devices(user.as_str())
                .await?
                .into_iter()
                .map(|d| d.device_id)
                .filter(|d| d != kept)
                .collect();
            let keep_token = keep.map(|s| s.token_hash.as_str());
            self.store
                .delete_other_tokens(user.as_str(), keep_token)
                .await?;
            if !others.is_empty() {
                self.e2ee.delete_devices(user, Some(&others)).await?;
            }
        }
        Ok(())
    }

    /// An application service registers a user of its namespaces (no
    /// password: its `as_token` stands for the user).
    pub async fn register_appservice_user(
        &self,
        service: &AppService,
        local: &str,
    ) -> Result<OwnedUserId> {
        if !valid_localpart(local) {
            return Err(Error::InvalidUsername(
                "User ID can only contain characters a-z, 0-9, or '=_-./+'".into(),
            ));
        }
        let user = self.user_id_for(local)?;
        self.check_appservice_covers(service, &user)?;
        if self.store.get_user(user.as_str()).await?.is_some() {
            return Err(Error::UserInUse);
        }
        let user = self.create_account(local, None, false).await?;
        tracing::info!(user = %user, appservice = %service.id, "registered by an application service");
        Ok(user)
    }

    /// The user an application service logs in as (`m.login.application_service`):
    /// one of its namespaces, registered and not deactivated.
    pub async fn appservice_login_user(
        &self,
        service: &AppService,
        user: &str,
    ) -> Result<OwnedUserId> {
        let user_id = self.parse_local_user(user)?;
        self.check_appservice_covers(service, &user_id)?;
        match self.store.get_user(user_id.as_str()).await? {
            Some(u) if !u.deactivated => Ok(user_id),
            _ => Err(Error::forbidden(format!("{user_id} is not registered"))),
        }
    }

    fn check_appservice_covers(&self, service: &AppService, user: &UserId) -> Result<()> {
        if !service.may_act_as(user) {
            return Err(Error::Exclusive(format!(
                "{user} is outside application service {}'s namespaces",
                service.id
            )));
        }
        Ok(())
    }

    /// Creates each service's own user if it does not exist yet.
    pub async fn ensure_appservice_users(&self) -> Result<()> {
        for s in self.appservices.all() {
            if self.store.get_user(s.sender.as_str()).await?.is_none() {
                self.create_account(s.sender.localpart(), None, false)
                    .await?;
                tracing::info!(appservice = %s.id, user = %s.sender, "application service user created");
            }
        }
        Ok(())
    }

    /// Logging out ends the device: its token, keys and to-device inbox go.
    pub async fn logout(&self, session: &Session) -> Result<()> {
        self.store.delete_token(&session.token_hash).await?;
        if !session.device_id.is_empty() {
            self.e2ee
                .delete_devices(
                    &session.user_id,
                    Some(std::slice::from_ref(&session.device_id)),
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_localpart;

    #[test]
    fn localpart_rules() {
        for ok in ["alice", "a.b_c=d-e/f+g", "123"] {
            assert!(valid_localpart(ok), "{ok}");
        }
        for bad in ["", "Alice", "bad name", "é", "a:b", &"x".repeat(201)] {
            assert!(!valid_localpart(bad), "{bad}");
        }
    }
}
