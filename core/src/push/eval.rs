//! Push rule evaluation: which actions a user's rules give an event.
//!
//! A room's context (member count, power levels, members' display names,
//! its local joined members and name) is read once from the room's view and
//! cached until a state event that changes it commits. An event is flattened
//! once for all the members evaluating it.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    OwnedUserId, RoomId, UInt, UserId,
    events::room::member::MembershipState,
    events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsSource},
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    serde::Raw,
};
use serde_json::Value;

use super::Push;
use crate::{Result, pdu::StoredEvent, rooms::RoomCache};

/// State event types whose change invalidates a room's context.
pub(crate) fn changes_room_ctx(kind: &str) -> bool {
    matches!(
        kind,
        "m.room.member"
            | "m.room.power_levels"
            | "m.room.create"
            | "m.room.name"
            | "m.room.canonical_alias"
    )
}

/// What evaluation needs of a room, shared by its members.
pub(crate) struct RoomCtx {
    /// With a placeholder user: each evaluation sets its own.
    base: PushConditionRoomCtx,
    /// Joined members' display names in the room.
    names: HashMap<OwnedUserId, String>,
    /// This server's joined members.
    pub(crate) local_joined: Vec<OwnedUserId>,
    pub(crate) room_name: Option<String>,
    /// The room's canonical alias, which pushes show.
    pub(crate) room_alias: Option<String>,
}

impl RoomCtx {
    pub(crate) fn display_name(&self, user: &UserId) -> Option<&str> {
        self.names.get(user).map(String::as_str)
    }

    fn for_user(&self, user: &UserId) -> PushConditionRoomCtx {
        let mut ctx = self.base.clone();
        ctx.user_id = user.to_owned();
        ctx.user_display_name = self.names.get(user).cloned().unwrap_or_default();
        ctx
    }
}

/// What one event is to one user.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub actions: Vec<Action>,
}

impl Evaluation {
    pub fn notifies(&self) -> bool {
        self.actions.iter().any(Action::should_notify)
    }

    pub fn highlights(&self) -> bool {
        self.notifies() && self.actions.iter().any(Action::is_highlight)
    }
}

fn build_ctx(c: &RoomCache, room_id: &RoomId, server: &str) -> Option<RoomCtx> {
    let mut names = HashMap::new();
    let mut local_joined = vec![];
    for ((kind, key), pdu) in &c.state {
        if kind != "m.room.member" || pdu.membership_state() != Some(MembershipState::Join) {
            continue;
        }
        let Ok(user) = OwnedUserId::try_from(key.as_str()) else {
            continue;
        };
        if user.server_name() == server {
            local_joined.push(user.clone());
        }
        if let Some(name) = pdu
            .json
            .get("content")
            .and_then(|c| c.get("displayname"))
            .and_then(Value::as_str)
        {
            names.insert(user, name.to_owned());
        }
    }
    let member_count = UInt::try_from(
        c.state
            .iter()
            .filter(|((kind, _), p)| {
                kind == "m.room.member" && p.membership_state() == Some(MembershipState::Join)
            })
            .count() as u64,
    )
    .unwrap_or(UInt::MAX);
    let room_name = state_string(c, "m.room.name", "name");
    let room_alias = state_string(c, "m.room.canonical_alias", "alias");
    let placeholder = local_joined
        .first()
        .cloned()
        .or_else(|| ruma::UserId::parse(format!("@_:{server}")).ok())?;
    let mut base =
        PushConditionRoomCtx::new(room_id.to_owned(), member_count, placeholder, String::new());
    base.power_levels = power_levels(c);
    Some(RoomCtx {
        base,
        names,
        local_joined,
        room_name,
        room_alias,
    })
}

/// A non-empty string field of a state event's content (`m.room.name`'s
/// `name`, say).
fn state_string(c: &RoomCache, kind: &str, field: &str) -> Option<String> {
    c.state
        .get(&(kind.to_owned(), String::new()))
        .and_then(|p| {
            p.json
                .get("content")?
                .get(field)?
                .as_str()
                .map(str::to_owned)
        })
        .filter(|v| !v.is_empty())
}

/// The power levels rules that `sender_notification_permission` reads,
/// honouring v12's privileged creators.
fn power_levels(c: &RoomCache) -> Option<PushConditionPowerLevelsCtx> {
    let rules = c.version.rules()?;
    let create = c.state.get(&("m.room.create".to_owned(), String::new()));
    let mut creators: Vec<OwnedUserId> = create.map(|p| p.sender.clone()).into_iter().collect();
    if let Some(extra) = create.and_then(|p| {
        p.json
            .get("content")?
            .get("additional_creators")?
            .as_array()
            .cloned()
    }) {
        creators.extend(
            extra
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|u| OwnedUserId::try_from(u).ok()),
        );
    }
    let source = match c
        .state
        .get(&("m.room.power_levels".to_owned(), String::new()))
    {
        Some(p) => match serde_json::from_str(p.content.get()) {
            Ok(content) => RoomPowerLevelsSource::Original(content),
            Err(e) => {
                tracing::warn!(room = %p.room_id, error = %e, "unreadable power levels; push rules use the defaults");
                RoomPowerLevelsSource::None
            }
        },
        None => RoomPowerLevelsSource::None,
    };
    Some(RoomPowerLevels::new(source, &rules.authorization, creators).into())
}

impl Push {
    /// The room's evaluation context, from the cache or the room's view.
    pub(crate) async fn room_push_ctx(&self, room_id: &RoomId) -> Result<Option<Arc<RoomCtx>>> {
        if let Some(ctx) = self.rooms.get(room_id.as_str()) {
            return Ok(Some(ctx));
        }
        let server = self.server_name.to_string();
        let ctx = self
            .views
            .with_view(room_id.as_str(), |c| build_ctx(c, room_id, &server))
            .await?;
        let Some(ctx) = ctx.map(Arc::new) else {
            return Ok(None);
        };
        self.rooms.put(room_id.as_str().to_owned(), ctx.clone());
        Ok(Some(ctx))
    }

    /// The event as rules read it, flattened once for every reader.
    fn flattened(&self, event: &StoredEvent) -> Result<Arc<FlattenedJson>> {
        if let Some(f) = self.flattened.get(&event.pdu.event_id) {
            return Ok(f);
        }
        let mut json = event.pdu.json.clone();
        json.insert("event_id".into(), event.pdu.event_id.as_str().into());
        json.insert("room_id".into(), event.pdu.room_id.as_str().into());
        let raw = Raw::new(&json)?;
        let flat = Arc::new(FlattenedJson::from_raw(&raw));
        self.flattened.put(event.pdu.event_id.clone(), flat.clone());
        Ok(flat)
    }

    /// The actions the user's push rules give the event (none for the
    /// user's own events).
    pub(crate) async fn evaluate_push(
        &self,
        event: &StoredEvent,
        user: &UserId,
        room: &RoomCtx,
    ) -> Result<Evaluation> {
        if event.pdu.sender == user {
            return Ok(Evaluation::default());
        }
        let (rules, default) = self.push_rules_of(user).await?;
        // Under the default rules an event means the same to every member it
        // does not single out: one evaluation serves a whole room.
        let generic = default && !singles_out(event, user);
        if generic && let Some(e) = self.generic.get(&event.pdu.event_id) {
            return Ok((*e).clone());
        }
        let flat = self.flattened(event)?;
        let ctx = room.for_user(user);
        let mut result = Evaluation::default();
        for rule in rules.ruleset().iter() {
            if rule.applies(&flat, &ctx).await {
                result.actions = rule.actions().to_vec();
                break;
            }
        }
        if generic {
            self.generic
                .put(event.pdu.event_id.clone(), Arc::new(result.clone()));
        }
        Ok(result)
    }
}

/// Whether the server-default rules can treat `user` differently from the
/// room's other members for this event: only the rules about the user's own
/// membership (`.m.rule.invite_for_me`) and mentions of the user
/// (`.m.rule.is_user_mention`) name the user. (ruma's defaults follow the
/// current spec, which dropped the legacy display-name and user-name rules:
/// they read no display name.)
fn singles_out(event: &StoredEvent, user: &UserId) -> bool {
    if event.pdu.state_key.as_deref() == Some(user.as_str()) {
        return true;
    }
    event
        .pdu
        .json
        .get("content")
        .and_then(|c| c.get("m.mentions"))
        .and_then(|m| m.get("user_ids"))
        .and_then(Value::as_array)
        .is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(user.as_str())))
}
