use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId, events::room::member::MembershipState,
};
use serde_json::{Map, Value, json};

use super::NewEvent;
use super::RoomWriter;
use crate::{Error, Result, config::CoreConfig, input::check_event_field};

/// A createRoom request, already validated for shape by the API layer.
#[derive(Debug, Default, Clone)]
pub struct CreateRoom {
    pub preset: Option<String>,
    pub visibility_public: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub initial_state: Vec<(String, String, Value)>,
    pub room_alias_name: Option<String>,
    pub power_level_content_override: Option<serde_json::Map<String, Value>>,
    pub room_version: Option<String>,
    pub creation_content: Option<serde_json::Map<String, Value>>,
}

/// The presets of the spec's createRoom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preset {
    Public,
    Private,
    TrustedPrivate,
}

impl Preset {
    fn of(req: &CreateRoom) -> Result<Self> {
        match req.preset.as_deref() {
            None if req.visibility_public => Ok(Self::Public),
            None => Ok(Self::Private),
            Some("public_chat") => Ok(Self::Public),
            Some("private_chat") => Ok(Self::Private),
            Some("trusted_private_chat") => Ok(Self::TrustedPrivate),
            Some(other) => Err(Error::invalid_param(format!("Unknown preset {other}"))),
        }
    }
}

impl RoomWriter {
    /// createRoom: the create event, the creator's join, then the room's
    /// initial state in the spec's order, the alias and directory entry,
    /// and the invites.
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let version = self.room_version_for(req.room_version.as_deref())?;
        let preset = Preset::of(&req)?;
        // Refused before anything is written: a bad initial state must not
        // leave half a room behind.
        for (kind, key, _) in &req.initial_state {
            check_event_field("Event type", kind)?;
            check_event_field("State key", key)?;
        }
        let alias = self.free_alias(req.room_alias_name.as_deref()).await?;
        let rules = version
            .rules()
            .ok_or_else(|| Error::UnsupportedRoomVersion(version.to_string()))?;
        let privileged_creators = rules.authorization.explicitly_privilege_room_creators;
        let mut content = create_content(&req, &version, preset, privileged_creators);
        if rules.authorization.use_room_create_sender {
            content.remove("creator");
        } else {
            content.insert("creator".into(), json!(creator));
        }
        let room_id = self
            .create_room_event(&version, creator, Value::Object(content))
            .await?;
        // Before the initial state: its m.room.canonical_alias must name an
        // alias that already points to the room.
        if let Some(alias) = &alias {
            self.main
                .create_alias(alias, room_id.as_str(), creator.as_str())
                .await?;
        }
        let join = self.member_content(creator, "join", None).await?;
        let owner = creator.to_owned();
        let mut events = vec![NewEvent::state(
            owner.clone(),
            "m.room.member",
            creator.as_str(),
            join,
        )];
        let pl = power_levels(creator, &req, preset, privileged_creators);
        events.push(NewEvent::state(
            owner.clone(),
            "m.room.power_levels",
            "",
            pl,
        ));
        events.extend(initial_state(&owner, &req, preset, alias.as_deref()));
        for event in events {
            self.send_event(&room_id, event).await?;
        }
        if req.visibility_public {
            self.main.set_room_public(room_id.as_str(), true).await?;
        }
        for invitee in &req.invite {
            self.invite(&room_id, creator, invitee, None, req.is_direct)
                .await?;
        }
        Ok(room_id)
    }

    fn room_version_for(&self, asked: Option<&str>) -> Result<RoomVersionId> {
        match asked {
            Some(v) => RoomVersionId::try_from(v)
                .ok()
                .filter(|v| CoreConfig::supported_room_versions().contains(v))
                .ok_or_else(|| Error::UnsupportedRoomVersion(v.to_owned())),
            None => Ok(self.config.default_room_version.clone()),
        }
    }

    /// The full alias for `room_alias_name`, checked and not yet taken.
    async fn free_alias(&self, local: Option<&str>) -> Result<Option<String>> {
        let Some(local) = local else {
            return Ok(None);
        };
        crate::input::check_text("room_alias_name", local)?;
        let alias = format!("#{local}:{}", self.config.server_name);
        if local.is_empty() || local.contains(':') || ruma::RoomAliasId::parse(&alias).is_err() {
            return Err(Error::invalid_param("Invalid room_alias_name"));
        }
        if self.main.resolve_alias(&alias).await?.is_some() {
            return Err(Error::RoomInUse);
        }
        Ok(Some(alias))
    }

    /// m.room.member content carrying the user's profile, as other servers do.
    pub async fn member_content(
        &self,
        user: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<Value> {
        let mut c = json!({"membership": membership});
        if matches!(
            MembershipState::from(membership),
            MembershipState::Join | MembershipState::Invite | MembershipState::Knock
        ) && let Some(u) = self.main.get_user(user.as_str()).await?
        {
            if let Some(d) = u.displayname {
                c["displayname"] = json!(d);
            }
            if let Some(a) = u.avatar_url {
                c["avatar_url"] = json!(a);
            }
        }
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        Ok(c)
    }

    pub async fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        invitee: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<()> {
        if invitee.server_name() == self.config.server_name {
            let mut user = self.main.get_user(invitee.as_str()).await?;
            // A user of a service's namespace may exist once it is asked.
            if user.is_none() && self.to_appservices.local_user_exists(invitee).await? {
                user = self.main.get_user(invitee.as_str()).await?;
            }
            match user {
                Some(u) if !u.deactivated => {}
                _ => return Err(Error::not_found("Unknown user")),
            }
        } else if self.links.remote.get().is_none() {
            return Err(Error::Forbidden(
                "Federation is not enabled on this server".into(),
            ));
        }
        let mut content = self.member_content(invitee, "invite", reason).await?;
        if is_direct {
            content["is_direct"] = json!(true);
        }
        self.send_event(
            room_id,
            NewEvent::state(
                sender.to_owned(),
                "m.room.member",
                invitee.as_str(),
                content,
            ),
        )
        .await?;
        Ok(())
    }
}

/// The create event's content, without `creator` (which depends on the
/// room version).
fn create_content(
    req: &CreateRoom,
    version: &RoomVersionId,
    preset: Preset,
    privileged_creators: bool,
) -> Map<String, Value> {
    let mut content = req.creation_content.clone().unwrap_or_default();
    content.insert("room_version".into(), json!(version.as_str()));
    // Declares the room ordered by its creator's server (our protocol);
    // part of the signed create event, so every server reads the same.
    content.insert(super::ORDERING_KEY.into(), json!(super::ORDERING_OWNER));
    // Trusted private chats make invitees co-owners: from v12 that is done
    // by naming them creators (they then hold unlimited power).
    if privileged_creators && preset == Preset::TrustedPrivate && !req.invite.is_empty() {
        let mut creators: Vec<String> = content
            .get("additional_creators")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        creators.extend(req.invite.iter().map(|u| u.to_string()));
        creators.sort();
        creators.dedup();
        content.insert("additional_creators".into(), json!(creators));
    }
    content
}

/// The initial power levels, with the request's override on top.
fn power_levels(
    creator: &UserId,
    req: &CreateRoom,
    preset: Preset,
    privileged_creators: bool,
) -> Value {
    // From v12 creators hold unlimited power and must not be listed in `users`.
    let mut users = Map::new();
    if !privileged_creators {
        users.insert(creator.to_string(), json!(100));
        if preset == Preset::TrustedPrivate {
            for u in &req.invite {
                users.insert(u.to_string(), json!(100));
            }
        }
    }
    let mut pl = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50, "invite": 0,
        "historical": 100,
        "notifications": {"room": 50}
    });
    if let Some(over) = &req.power_level_content_override {
        for (k, v) in over {
            pl[k] = v.clone();
        }
    }
    pl
}

/// The state after the power levels, in the spec's order: the canonical
/// alias, the preset's state (unless `initial_state` sets the same type),
/// `initial_state`, the name, the topic.
fn initial_state(
    owner: &OwnedUserId,
    req: &CreateRoom,
    preset: Preset,
    alias: Option<&str>,
) -> Vec<NewEvent> {
    let state =
        |kind: &str, key: &str, content: Value| NewEvent::state(owner.clone(), kind, key, content);
    let mut out = vec![];
    if let Some(alias) = alias {
        out.push(state("m.room.canonical_alias", "", json!({"alias": alias})));
    }
    let join_rule = match preset {
        Preset::Public => "public",
        _ => "invite",
    };
    let mut preset_state = vec![
        ("m.room.join_rules", json!({"join_rule": join_rule})),
        (
            "m.room.history_visibility",
            json!({"history_visibility": "shared"}),
        ),
    ];
    if preset != Preset::Public {
        preset_state.push(("m.room.guest_access", json!({"guest_access": "can_join"})));
    }
    for (kind, content) in preset_state {
        let overridden = req
            .initial_state
            .iter()
            .any(|(t, sk, _)| t == kind && sk.is_empty());
        if !overridden {
            out.push(state(kind, "", content));
        }
    }
    for (kind, key, content) in &req.initial_state {
        out.push(state(kind, key, content.clone()));
    }
    if let Some(name) = &req.name {
        out.push(state("m.room.name", "", json!({"name": name})));
    }
    if let Some(topic) = &req.topic {
        out.push(state("m.room.topic", "", json!({"topic": topic})));
    }
    out
}
