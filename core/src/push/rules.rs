//! A user's push rules: the spec's server-default rule set until the user
//! changes something, then the whole set as the user's global account data
//! `m.push_rules` (`{"global": ruleset}`, as Synapse stores it, so clients
//! see it in sync's `account_data`). Parsed sets are cached per user and
//! replaced on each change.

use std::sync::Arc;

use ruma::{
    OwnedUserId, UserId,
    push::{
        Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule,
        NewSimplePushRule, PushCondition, RuleKind,
    },
};
use serde_json::{Map, Value, json};

use super::{Push, ruleset::PushRules};
use crate::{Error, Result};

/// The account data type holding a user's rules.
pub const PUSH_RULES_TYPE: &str = "m.push_rules";

/// Why a rule request cannot be served; each maps to one Matrix error.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("Unknown push rule scope {0:?}: only \"global\" exists")]
    Scope(String),
    #[error("Unknown push rule kind {0:?}")]
    Kind(String),
    #[error("Push rule not found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("Server-default rules cannot be deleted")]
    ServerDefault,
    #[error("The rule named by 'before' or 'after' does not exist")]
    RelativeNotFound,
    /// The path names no push rule resource (no scope, no kind, no rule id,
    /// an unknown attribute, a list without its trailing slash).
    #[error("{0}")]
    Path(&'static str),
}

impl From<RuleError> for Error {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::NotFound | RuleError::RelativeNotFound => Error::not_found(e.to_string()),
            RuleError::Scope(_)
            | RuleError::Kind(_)
            | RuleError::Invalid(_)
            | RuleError::ServerDefault
            | RuleError::Path(_) => Error::invalid_param(e.to_string()),
        }
    }
}

/// Where a rule sits: `/pushrules/{scope}/{kind}/{rule_id}`.
pub struct RulePath<'a> {
    pub scope: &'a str,
    pub kind: &'a str,
    pub rule_id: &'a str,
}

impl RulePath<'_> {
    fn kind(&self) -> std::result::Result<RuleKind, RuleError> {
        let kind = rule_kind(self.scope, self.kind)?;
        if self.rule_id.is_empty() {
            return Err(RuleError::Path("The rule id is missing"));
        }
        Ok(kind)
    }
}

/// The kind a path names, under the one scope there is.
fn rule_kind(scope: &str, kind: &str) -> std::result::Result<RuleKind, RuleError> {
    if scope != "global" {
        return Err(RuleError::Scope(scope.to_owned()));
    }
    match kind {
        "override" => Ok(RuleKind::Override),
        "underride" => Ok(RuleKind::Underride),
        "sender" => Ok(RuleKind::Sender),
        "room" => Ok(RuleKind::Room),
        "content" => Ok(RuleKind::Content),
        other => Err(RuleError::Kind(other.to_owned())),
    }
}

fn parse_actions(v: Option<&Value>) -> std::result::Result<Vec<Action>, RuleError> {
    let v = v.ok_or_else(|| RuleError::Invalid("'actions' is required".into()))?;
    let Some(list) = v.as_array() else {
        return Err(RuleError::Invalid("'actions' must be an array".into()));
    };
    // ruma keeps any action it does not know as a custom one; the spec's
    // are `notify`, `set_tweak` objects and the legacy `dont_notify` and
    // `coalesce` (ignored), and Synapse refuses the rest.
    if let Some(bad) = list.iter().find(|a| match a {
        Value::String(s) => !matches!(s.as_str(), "notify" | "dont_notify" | "coalesce"),
        Value::Object(o) => !o.get("set_tweak").is_some_and(Value::is_string),
        _ => true,
    }) {
        return Err(RuleError::Invalid(format!("unknown action {bad}")));
    }
    serde_json::from_value(v.clone())
        .map_err(|e| RuleError::Invalid(format!("invalid 'actions': {e}")))
}

/// A condition's shape, which ruma does not check: a condition it does not
/// know (or one of the wrong shape) it keeps as a custom one, which would
/// store `{"kind": "event_match", "pattern": 5}` as if it were valid.
fn check_condition(c: &Value) -> std::result::Result<(), RuleError> {
    let invalid = |why: &str| Err(RuleError::Invalid(format!("invalid condition: {why}")));
    let Some(c) = c.as_object() else {
        return invalid("not an object");
    };
    if !c.get("kind").is_some_and(Value::is_string) {
        return invalid("'kind' must be a string");
    }
    for field in ["key", "pattern", "is"] {
        if c.get(field).is_some_and(|v| !v.is_string()) {
            return invalid(&format!("'{field}' must be a string"));
        }
    }
    let needs: &[&str] = match c.get("kind").and_then(Value::as_str) {
        Some("event_match") => &["key", "pattern"],
        Some("event_property_is" | "event_property_contains") => &["key", "value"],
        Some("sender_notification_permission") => &["key"],
        _ => &[],
    };
    match needs.iter().find(|f| !c.contains_key(**f)) {
        Some(missing) => invalid(&format!("'{missing}' is required")),
        None => Ok(()),
    }
}

/// The rule a PUT body describes for its kind (room rules are
/// `PushRules::insert_room`'s).
fn new_rule(
    kind: &RuleKind,
    rule_id: &str,
    body: &Map<String, Value>,
) -> std::result::Result<NewPushRule, RuleError> {
    let actions = parse_actions(body.get("actions"))?;
    let conditions = || -> std::result::Result<Vec<PushCondition>, RuleError> {
        match body.get("conditions") {
            None => Ok(vec![]),
            Some(Value::Array(list)) => {
                list.iter().try_for_each(check_condition)?;
                serde_json::from_value(Value::Array(list.clone()))
                    .map_err(|e| RuleError::Invalid(format!("invalid 'conditions': {e}")))
            }
            Some(_) => Err(RuleError::Invalid("'conditions' must be an array".into())),
        }
    };
    Ok(match kind {
        RuleKind::Override => NewPushRule::Override(NewConditionalPushRule::new(
            rule_id.to_owned(),
            conditions()?,
            actions,
        )),
        RuleKind::Underride => NewPushRule::Underride(NewConditionalPushRule::new(
            rule_id.to_owned(),
            conditions()?,
            actions,
        )),
        RuleKind::Content => {
            let pattern = body
                .get("pattern")
                .and_then(Value::as_str)
                .ok_or_else(|| RuleError::Invalid("content rules need a 'pattern'".into()))?;
            NewPushRule::Content(NewPatternedPushRule::new(
                rule_id.to_owned(),
                pattern.to_owned(),
                actions,
            ))
        }
        RuleKind::Sender => {
            let user = OwnedUserId::try_from(rule_id)
                .map_err(|_| RuleError::Invalid("a sender rule's id must be a user id".into()))?;
            NewPushRule::Sender(NewSimplePushRule::new(user, actions))
        }
        other => return Err(RuleError::Kind(other.to_string())),
    })
}

/// Why ruma (or `PushRules::insert_room`) refused to place a rule.
fn insert_error(e: InsertPushRuleError) -> RuleError {
    match e {
        InsertPushRuleError::ServerDefaultRuleId => {
            RuleError::Invalid("rule ids starting with '.' are the server's".into())
        }
        InsertPushRuleError::InvalidRuleId => {
            RuleError::Invalid("rule ids cannot be empty or contain '/' or '\\'".into())
        }
        InsertPushRuleError::RelativeToServerDefaultRule => {
            RuleError::Invalid("a rule cannot be placed relative to a server-default rule".into())
        }
        InsertPushRuleError::UnknownRuleId => RuleError::RelativeNotFound,
        other => RuleError::Invalid(other.to_string()),
    }
}

impl Push {
    /// The user's push rules (the server defaults until they change any).
    pub async fn push_rules(&self, user: &UserId) -> Result<Arc<PushRules>> {
        Ok(self.push_rules_of(user).await?.0)
    }

    /// `GET /pushrules/{scope}/`: the user's rules of every kind.
    pub async fn scope_push_rules(&self, user: &UserId, scope: &str) -> Result<Value> {
        if scope != "global" {
            return Err(RuleError::Scope(scope.to_owned()).into());
        }
        Ok(self.push_rules(user).await?.to_json())
    }

    /// `GET /pushrules/{scope}/{kind}/`: the user's rules of one kind, in
    /// priority order (not in the current spec; Synapse serves it and
    /// SyTest reads it).
    pub async fn kind_push_rules(&self, user: &UserId, scope: &str, kind: &str) -> Result<Value> {
        rule_kind(scope, kind)?;
        Ok(self.push_rules(user).await?.kind_json(kind))
    }

    /// The user's push rules, and whether they are the server defaults
    /// (never changed).
    pub(crate) async fn push_rules_of(&self, user: &UserId) -> Result<(Arc<PushRules>, bool)> {
        if let Some(r) = self.rulesets.get(user.as_str()) {
            return Ok(r);
        }
        let stored = self
            .store
            .get_account_data(user.as_str(), "", PUSH_RULES_TYPE)
            .await?;
        let default = stored.is_none();
        let rules = match stored.and_then(|v| v.get("global").cloned()) {
            // Server-default rules added since the user's set was stored
            // join it (with the user's enabled/actions kept for the rest).
            Some(global) => PushRules::from_stored(user, &global).unwrap_or_else(|e| {
                tracing::warn!(%user, error = %e, "stored push rules unreadable; using the defaults");
                PushRules::server_default(user)
            }),
            None => PushRules::server_default(user),
        };
        let rules = Arc::new(rules);
        self.rulesets
            .put(user.as_str().to_owned(), (rules.clone(), default));
        Ok((rules, default))
    }

    /// Applies a change to the user's rules and stores the result.
    async fn change_push_rules(
        &self,
        user: &UserId,
        change: impl FnOnce(&mut PushRules) -> std::result::Result<(), RuleError>,
    ) -> Result<()> {
        let mut rules = (*self.push_rules(user).await?).clone();
        change(&mut rules)?;
        let content = json!({ "global": rules.to_json() });
        self.store
            .put_account_data(user.as_str(), "", PUSH_RULES_TYPE, &content)
            .await?;
        self.rulesets
            .put(user.as_str().to_owned(), (Arc::new(rules), false));
        // Counts in sync follow the new rules from the next tally on.
        self.unread.forget_user(user.as_str());
        self.notifier.notify_users([user.as_str()]);
        Ok(())
    }

    /// `GET /pushrules/global/{kind}/{ruleId}`.
    pub async fn push_rule(&self, user: &UserId, at: &RulePath<'_>) -> Result<Value> {
        let kind = at.kind()?;
        let rules = self.push_rules(user).await?;
        Ok(rules
            .rule_json(kind, at.rule_id)
            .ok_or(RuleError::NotFound)?)
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}` (`before`/`after` place it).
    pub async fn put_push_rule(
        &self,
        user: &UserId,
        at: &RulePath<'_>,
        body: &Map<String, Value>,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<()> {
        let kind = at.kind()?;
        if kind == RuleKind::Room {
            let actions = parse_actions(body.get("actions"))?;
            return self
                .change_push_rules(user, |rules| {
                    rules
                        .insert_room(at.rule_id, actions, after, before)
                        .map_err(insert_error)
                })
                .await;
        }
        let rule = new_rule(&kind, at.rule_id, body)?;
        self.change_push_rules(user, |rules| {
            rules.insert(rule, after, before).map_err(insert_error)
        })
        .await
    }

    /// `DELETE /pushrules/global/{kind}/{ruleId}`.
    pub async fn delete_push_rule(&self, user: &UserId, at: &RulePath<'_>) -> Result<()> {
        let kind = at.kind()?;
        self.change_push_rules(user, |rules| {
            rules.remove(kind, at.rule_id).map_err(|server_default| {
                if server_default {
                    RuleError::ServerDefault
                } else {
                    RuleError::NotFound
                }
            })
        })
        .await
    }

    /// `GET …/enabled`.
    pub async fn push_rule_enabled(&self, user: &UserId, at: &RulePath<'_>) -> Result<bool> {
        let kind = at.kind()?;
        let rules = self.push_rules(user).await?;
        Ok(rules.enabled(kind, at.rule_id).ok_or(RuleError::NotFound)?)
    }

    /// `PUT …/enabled`.
    pub async fn set_push_rule_enabled(
        &self,
        user: &UserId,
        at: &RulePath<'_>,
        enabled: bool,
    ) -> Result<()> {
        let kind = at.kind()?;
        self.change_push_rules(user, |rules| {
            rules
                .set_enabled(kind, at.rule_id, enabled)
                .then_some(())
                .ok_or(RuleError::NotFound)
        })
        .await
    }

    /// `GET …/actions`.
    pub async fn push_rule_actions(&self, user: &UserId, at: &RulePath<'_>) -> Result<Value> {
        let kind = at.kind()?;
        let rules = self.push_rules(user).await?;
        let actions = rules.actions(kind, at.rule_id).ok_or(RuleError::NotFound)?;
        Ok(serde_json::to_value(actions)?)
    }

    /// `PUT …/actions` with the body's `actions`.
    pub async fn set_push_rule_actions(
        &self,
        user: &UserId,
        at: &RulePath<'_>,
        actions: Option<&Value>,
    ) -> Result<()> {
        let kind = at.kind()?;
        let actions = parse_actions(actions)?;
        self.change_push_rules(user, |rules| {
            rules
                .set_actions(kind, at.rule_id, actions)
                .then_some(())
                .ok_or(RuleError::NotFound)
        })
        .await
    }
}
