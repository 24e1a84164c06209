use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde_json::{Value, json};

use super::NewEvent;
use crate::{Error, Hearth, Result, config::CoreConfig};

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

impl Hearth {
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let version = match &req.room_version {
            Some(v) => RoomVersionId::try_from(v.as_str())
                .ok()
                .filter(|v| CoreConfig::supported_room_versions().contains(v))
                .ok_or_else(|| Error::UnsupportedRoomVersion(v.clone()))?,
            None => self.config.default_room_version.clone(),
        };
        let preset = req.preset.clone().unwrap_or_else(|| {
            if req.visibility_public {
                "public_chat"
            } else {
                "private_chat"
            }
            .to_owned()
        });
        if !["public_chat", "private_chat", "trusted_private_chat"].contains(&preset.as_str()) {
            return Err(Error::invalid_param(format!("Unknown preset {preset}")));
        }
        let alias = match &req.room_alias_name {
            Some(local) => {
                let alias = format!("#{local}:{}", self.config.server_name);
                if local.is_empty()
                    || local.contains(':')
                    || ruma::RoomAliasId::parse(&alias).is_err()
                {
                    return Err(Error::invalid_param("Invalid room_alias_name"));
                }
                if self.store.resolve_alias(&alias).await?.is_some() {
                    return Err(Error::RoomInUse);
                }
                Some(alias)
            }
            None => None,
        };

        let rules = version
            .rules()
            .ok_or_else(|| Error::UnsupportedRoomVersion(version.to_string()))?;
        let mut create_content = req.creation_content.clone().unwrap_or_default();
        create_content.insert("room_version".into(), json!(version.as_str()));
        // Declares the room ordered by its creator's server (our protocol);
        // part of the signed create event, so every server reads the same.
        create_content.insert(super::ORDERING_KEY.into(), json!(super::ORDERING_OWNER));
        let privileged_creators = rules.authorization.explicitly_privilege_room_creators;
        // Trusted private chats make invitees co-owners: from v12 that is done
        // by naming them creators (they then hold unlimited power).
        if privileged_creators && preset == "trusted_private_chat" && !req.invite.is_empty() {
            let mut creators: Vec<String> = create_content
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
            create_content.insert("additional_creators".into(), json!(creators));
        }
        if rules.authorization.use_room_create_sender {
            create_content.remove("creator");
        } else {
            create_content.insert("creator".into(), json!(creator));
        }
        let room_id = self
            .create_room_event(&version, creator, Value::Object(create_content))
            .await?;
        let owner = creator.to_owned();
        let join = self.member_content(creator, "join", None).await?;
        self.send_event(
            &room_id,
            NewEvent::state(owner.clone(), "m.room.member", creator.as_str(), join),
        )
        .await?;

        // From v12 creators hold unlimited power and must not be listed in `users`.
        let mut users = serde_json::Map::new();
        if !privileged_creators {
            users.insert(creator.to_string(), json!(100));
        }
        if preset == "trusted_private_chat" && !privileged_creators {
            for u in &req.invite {
                users.insert(u.to_string(), json!(100));
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
        self.send_event(
            &room_id,
            NewEvent::state(owner.clone(), "m.room.power_levels", "", pl),
        )
        .await?;

        if let Some(alias) = &alias {
            self.send_event(
                &room_id,
                NewEvent::state(
                    owner.clone(),
                    "m.room.canonical_alias",
                    "",
                    json!({"alias": alias}),
                ),
            )
            .await?;
        }
        let join_rule = if preset == "public_chat" {
            "public"
        } else {
            "invite"
        };
        let mut preset_state = vec![
            ("m.room.join_rules", json!({"join_rule": join_rule})),
            (
                "m.room.history_visibility",
                json!({"history_visibility": "shared"}),
            ),
        ];
        if preset != "public_chat" {
            preset_state.push(("m.room.guest_access", json!({"guest_access": "can_join"})));
        }
        for (kind, content) in preset_state {
            let overridden = req
                .initial_state
                .iter()
                .any(|(t, sk, _)| t == kind && sk.is_empty());
            if !overridden {
                self.send_event(&room_id, NewEvent::state(owner.clone(), kind, "", content))
                    .await?;
            }
        }
        for (kind, sk, content) in &req.initial_state {
            self.send_event(
                &room_id,
                NewEvent::state(owner.clone(), kind, sk, content.clone()),
            )
            .await?;
        }
        if let Some(name) = &req.name {
            self.send_event(
                &room_id,
                NewEvent::state(owner.clone(), "m.room.name", "", json!({"name": name})),
            )
            .await?;
        }
        if let Some(topic) = &req.topic {
            self.send_event(
                &room_id,
                NewEvent::state(owner.clone(), "m.room.topic", "", json!({"topic": topic})),
            )
            .await?;
        }
        if let Some(alias) = &alias {
            self.store
                .create_alias(alias, room_id.as_str(), creator.as_str())
                .await?;
        }
        if req.visibility_public {
            self.store.set_room_public(room_id.as_str(), true).await?;
        }
        for invitee in &req.invite {
            self.invite(&room_id, creator, invitee, None, req.is_direct)
                .await?;
        }
        Ok(room_id)
    }

    /// m.room.member content carrying the user's profile, as other servers do.
    pub async fn member_content(
        &self,
        user: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<Value> {
        let mut c = json!({"membership": membership});
        if matches!(membership, "join" | "invite" | "knock")
            && let Some(u) = self.store.get_user(user.as_str()).await?
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
            match self.store.get_user(invitee.as_str()).await? {
                Some(u) if !u.deactivated => {}
                _ => return Err(Error::not_found("Unknown user")),
            }
        } else if self.remote.get().is_none() {
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
