//! Display names and avatars: read here or from the user's server; a change
//! is mirrored into the user's member event in every joined room.

use std::sync::Arc;

use ruma::{RoomId, UserId, events::room::member::MembershipState};

use crate::{
    Error, Links, Result,
    appservice::ToAppServices,
    rooms::{NewEvent, RoomWriter, membership_state},
};

/// A user's display name and avatar URL.
#[derive(Debug, Default)]
pub struct Profile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

/// Users' profiles: read here or asked of their server, and changes
/// mirrored into their member events.
pub struct Profiles {
    store: Arc<dyn crate::store::MainStore>,
    server_name: ruma::OwnedServerName,
    /// Asks other servers for their users' profiles.
    links: Arc<Links>,
    /// Whether a local user exists (an application service's namespace too).
    to_appservices: Arc<ToAppServices>,
    /// Re-sends the user's member events.
    writer: Arc<RoomWriter>,
}

impl Profiles {
    pub(crate) fn new(
        store: Arc<dyn crate::store::MainStore>,
        server_name: ruma::OwnedServerName,
        links: Arc<Links>,
        to_appservices: Arc<ToAppServices>,
        writer: Arc<RoomWriter>,
    ) -> Self {
        Self {
            store,
            server_name,
            links,
            to_appservices,
            writer,
        }
    }

    /// The profile of any user; another server's user is asked for it
    /// (`field` narrows the question to one field).
    pub async fn profile(&self, user: &UserId, field: Option<&str>) -> Result<Profile> {
        if user.server_name() != self.server_name {
            let remote = self.links.remote.get().ok_or_else(|| {
                Error::not_found("Profile not found (this server does not federate)")
            })?;
            let v = remote.query_profile(user, field).await?;
            let text = |k: &str| v[k].as_str().map(str::to_owned);
            return Ok(Profile {
                displayname: text("displayname"),
                avatar_url: text("avatar_url"),
            });
        }
        if !self.to_appservices.local_user_exists(user).await? {
            return Err(Error::not_found("Profile not found"));
        }
        match self.store.get_user(user.as_str()).await? {
            Some(u) if !u.deactivated => Ok(Profile {
                displayname: u.displayname,
                avatar_url: u.avatar_url,
            }),
            _ => Err(Error::not_found("Profile not found")),
        }
    }

    /// Sets (or with `None` clears) the user's display name, at most 256 bytes.
    pub async fn set_displayname(&self, user: &UserId, name: Option<&str>) -> Result<()> {
        if name.is_some_and(|n| n.len() > 256) {
            return Err(Error::invalid_param("displayname is too long"));
        }
        if let Some(name) = name {
            crate::input::check_text("displayname", name)?;
        }
        self.store.set_displayname(user.as_str(), name).await?;
        self.update_memberships(user).await
    }

    /// Sets (or with `None` or "" clears) the user's avatar, an `mxc://` URI.
    pub async fn set_avatar_url(&self, user: &UserId, url: Option<&str>) -> Result<()> {
        let url = url.filter(|u| !u.is_empty());
        if let Some(u) = url
            && !u.starts_with("mxc://")
        {
            return Err(Error::invalid_param("avatar_url must be an mxc:// URI"));
        }
        self.store.set_avatar_url(user.as_str(), url).await?;
        self.update_memberships(user).await
    }

    /// Re-sends the user's join event in every joined room with the new
    /// profile; a room that refuses it keeps the old one.
    async fn update_memberships(&self, user: &UserId) -> Result<()> {
        for m in self.store.memberships_of_user(user.as_str()).await? {
            if membership_state(&m) != MembershipState::Join {
                continue;
            }
            let Ok(room) = RoomId::parse(&m.room_id) else {
                continue;
            };
            let content = self.writer.member_content(user, "join", None).await?;
            if let Err(e) = self
                .writer
                .send_event(
                    &room,
                    NewEvent::state(user.to_owned(), "m.room.member", user.as_str(), content),
                )
                .await
            {
                tracing::warn!(room = %room, user = %user, "profile update not applied to room: {e}");
            }
        }
        Ok(())
    }
}
