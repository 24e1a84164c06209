//! A user's push rules as stored and served: ruma's ruleset, which
//! evaluation reads, beside every room rule in its order.
//!
//! ruma types a room rule's id as a room id, but clients name room rules as
//! they like (SyTest adds `#spam:example.com`; Synapse accepts any id, and a
//! rule whose id is no room id matches no room). So the room rules live
//! here, ids as strings, and those whose id is a room id are copied into the
//! ruleset after each change, in the same order.

use indexmap::IndexSet;
use ruma::{
    OwnedRoomId, UserId,
    push::{
        Action, AnyPushRuleRef, InsertPushRuleError, NewPushRule, RuleKind, Ruleset,
        SimplePushRule, SimplePushRuleInit, insert_and_move_rule,
    },
};
use serde_json::{Value, json};

/// The kinds of rule, in the order a ruleset lists them.
const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

#[derive(Debug, Clone)]
pub struct PushRules {
    /// What evaluation reads; its room rules are `room`'s with a room id.
    set: Ruleset,
    /// Every room rule, in priority order.
    room: IndexSet<SimplePushRule<String>>,
}

impl PushRules {
    /// The spec's server-default rules for `user`.
    pub fn server_default(user: &UserId) -> Self {
        Self {
            set: Ruleset::server_default(user),
            room: IndexSet::new(),
        }
    }

    /// A stored ruleset (`global` of `m.push_rules`), with server-default
    /// rules added since it was stored joining it.
    pub fn from_stored(user: &UserId, global: &Value) -> serde_json::Result<Self> {
        let mut global = global.clone();
        let stored_room = global
            .as_object_mut()
            .and_then(|g| g.insert("room".into(), json!([])));
        let mut set: Ruleset = serde_json::from_value(global)?;
        set.update_with_server_default(Ruleset::server_default(user));
        let mut room = IndexSet::new();
        for r in stored_room
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match serde_json::from_value::<SimplePushRule<String>>(r.clone()) {
                Ok(rule) => {
                    room.insert(rule);
                }
                Err(e) => {
                    tracing::warn!(%user, error = %e, rule = %r, "unreadable stored room rule dropped")
                }
            }
        }
        let mut rules = Self { set, room };
        rules.copy_room_rules();
        Ok(rules)
    }

    /// What evaluation reads.
    pub fn ruleset(&self) -> &Ruleset {
        &self.set
    }

    /// The ruleset as clients read it and as it is stored: every kind, each
    /// a list (empty ones too, as Synapse answers).
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for kind in KINDS {
            out.insert(kind.into(), self.kind_json(kind));
        }
        Value::Object(out)
    }

    /// The rules of one kind (`override`, `room`, …), in priority order.
    pub fn kind_json(&self, kind: &str) -> Value {
        if kind == "room" {
            return serde_json::to_value(&self.room).unwrap_or_else(|_| json!([]));
        }
        let set = serde_json::to_value(&self.set).unwrap_or(Value::Null);
        match set.get(kind) {
            Some(rules) => rules.clone(),
            None => json!([]),
        }
    }

    /// One rule as clients see it (`PushRule` in the spec).
    pub fn rule_json(&self, kind: RuleKind, rule_id: &str) -> Option<Value> {
        if kind == RuleKind::Room {
            return self
                .room
                .get(rule_id)
                .and_then(|r| serde_json::to_value(r).ok());
        }
        let v = match self.set.get(kind, rule_id)? {
            AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r) => serde_json::to_value(r),
            AnyPushRuleRef::Content(r) => serde_json::to_value(r),
            AnyPushRuleRef::Room(r) => serde_json::to_value(r),
            AnyPushRuleRef::Sender(r) => serde_json::to_value(r),
            _ => return None,
        };
        v.ok()
    }

    pub fn enabled(&self, kind: RuleKind, rule_id: &str) -> Option<bool> {
        if kind == RuleKind::Room {
            return self.room.get(rule_id).map(|r| r.enabled);
        }
        self.set.get(kind, rule_id).map(|r| r.enabled())
    }

    pub fn actions(&self, kind: RuleKind, rule_id: &str) -> Option<&[Action]> {
        if kind == RuleKind::Room {
            return self.room.get(rule_id).map(|r| r.actions.as_slice());
        }
        self.set.get(kind, rule_id).map(|r| r.actions())
    }

    /// Adds or replaces a rule of any kind but room (`insert_room` is for
    /// those), as ruma places it.
    pub fn insert(
        &mut self,
        rule: NewPushRule,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<(), InsertPushRuleError> {
        self.set.insert(rule, after, before)
    }

    /// Adds or replaces a room rule with the checks and placement ruma gives
    /// the other kinds: new rules first unless placed, a replaced rule keeps
    /// its place and whether it is enabled.
    pub fn insert_room(
        &mut self,
        rule_id: &str,
        actions: Vec<Action>,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<(), InsertPushRuleError> {
        if rule_id.starts_with('.') {
            return Err(InsertPushRuleError::ServerDefaultRuleId);
        }
        if rule_id.is_empty() || rule_id.contains(['/', '\\']) {
            return Err(InsertPushRuleError::InvalidRuleId);
        }
        if after.is_some_and(|s| s.starts_with('.')) || before.is_some_and(|s| s.starts_with('.')) {
            return Err(InsertPushRuleError::RelativeToServerDefaultRule);
        }
        let enabled = self.room.get(rule_id).is_none_or(|r| r.enabled);
        let rule = SimplePushRule::from(SimplePushRuleInit {
            actions,
            default: false,
            enabled,
            rule_id: rule_id.to_owned(),
        });
        // Placement is checked on a copy: a refused request changes nothing.
        let mut room = self.room.clone();
        insert_and_move_rule(&mut room, rule, 0, after, before)?;
        self.room = room;
        self.copy_room_rules();
        Ok(())
    }

    /// Removes a user rule; `Err(true)` for a server-default one, `Err(false)`
    /// for one that does not exist.
    pub fn remove(&mut self, kind: RuleKind, rule_id: &str) -> Result<(), bool> {
        if kind == RuleKind::Room {
            self.room.shift_remove(rule_id).then_some(()).ok_or(false)?;
            self.copy_room_rules();
            return Ok(());
        }
        self.set
            .remove(kind, rule_id)
            .map_err(|e| matches!(e, ruma::push::RemovePushRuleError::ServerDefault))
    }

    /// Sets whether a rule is enabled; `false` when there is no such rule.
    pub fn set_enabled(&mut self, kind: RuleKind, rule_id: &str, enabled: bool) -> bool {
        if kind == RuleKind::Room {
            return self.change_room_rule(rule_id, |r| r.enabled = enabled);
        }
        self.set.set_enabled(kind, rule_id, enabled).is_ok()
    }

    /// Sets a rule's actions; `false` when there is no such rule.
    pub fn set_actions(&mut self, kind: RuleKind, rule_id: &str, actions: Vec<Action>) -> bool {
        if kind == RuleKind::Room {
            return self.change_room_rule(rule_id, |r| r.actions = actions);
        }
        self.set.set_actions(kind, rule_id, actions).is_ok()
    }

    fn change_room_rule(
        &mut self,
        rule_id: &str,
        change: impl FnOnce(&mut SimplePushRule<String>),
    ) -> bool {
        let Some(index) = self.room.get_index_of(rule_id) else {
            return false;
        };
        let Some(mut rule) = self.room.get_index(index).cloned() else {
            return false;
        };
        change(&mut rule);
        // Same id, same hash: replaced in place.
        self.room.replace(rule);
        self.copy_room_rules();
        true
    }

    /// The ruleset's room rules: `room`'s whose id is a room id, in order.
    fn copy_room_rules(&mut self) {
        self.set.room = self
            .room
            .iter()
            .filter_map(|r| {
                let room_id = OwnedRoomId::try_from(r.rule_id.as_str()).ok()?;
                Some(SimplePushRule::from(SimplePushRuleInit {
                    actions: r.actions.clone(),
                    default: r.default,
                    enabled: r.enabled,
                    rule_id: room_id,
                }))
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use ruma::{push::Action, user_id};

    use super::*;

    fn ids(rules: &PushRules, kind: &str) -> Vec<String> {
        rules
            .kind_json(kind)
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["rule_id"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn room_rules_take_any_id_and_only_room_ids_reach_evaluation() {
        let user = user_id!("@a:hs");
        let mut rules = PushRules::server_default(user);
        let notify = || vec![Action::Notify];
        assert!(
            rules
                .insert_room("#a:example.com", notify(), None, None)
                .is_ok()
        );
        assert!(rules.insert_room("!r:hs", notify(), None, None).is_ok());
        assert!(
            rules
                .insert_room("#b:example.com", notify(), Some("!r:hs"), None)
                .is_ok()
        );
        assert_eq!(
            ids(&rules, "room"),
            ["!r:hs", "#b:example.com", "#a:example.com"]
        );
        assert_eq!(rules.ruleset().room.len(), 1);
        assert!(matches!(
            rules.insert_room(".x", notify(), None, None),
            Err(InsertPushRuleError::ServerDefaultRuleId)
        ));
        assert!(matches!(
            rules.insert_room("#c:x", notify(), None, Some("missing")),
            Err(InsertPushRuleError::UnknownRuleId)
        ));
        assert_eq!(ids(&rules, "room").len(), 3);

        // Stored and read back, the order and state stay.
        assert!(rules.set_enabled(RuleKind::Room, "#a:example.com", false));
        let stored = rules.to_json();
        let back = PushRules::from_stored(user, &stored).expect("readable");
        assert_eq!(back.to_json(), stored);
        assert_eq!(back.enabled(RuleKind::Room, "#a:example.com"), Some(false));
        assert_eq!(back.ruleset().room.len(), 1);

        assert_eq!(rules.remove(RuleKind::Room, "!r:hs"), Ok(()));
        assert!(rules.ruleset().room.is_empty());
        assert_eq!(rules.remove(RuleKind::Room, "!r:hs"), Err(false));
        assert_eq!(
            rules.remove(RuleKind::Override, ".m.rule.master"),
            Err(true)
        );
    }
}
