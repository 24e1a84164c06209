//! Push rules (`/pushrules`), pushers (`/pushers`, `/pushers/set`) and
//! `/notifications`; the logic is in `hearth_core::push`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{any, get, post},
};
use hearth_core::{
    Hearth,
    push::{Notifications, Pushers, RuleError, RulePath},
};
use ruma_client_api::push::{
    delete_pushrule, get_pushers, get_pushrule_enabled, set_pusher, set_pushrule,
    set_pushrule_actions, set_pushrule_enabled,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::JsonResult;
use crate::{
    error::ApiResult,
    extract::{Auth, JsonBody},
    typed::{Ruma, RumaResult},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        // `GET /pushrules` (no slash) is left unknown, as Synapse leaves it.
        .route("/pushrules/", get(all_rules).fallback(no_scope))
        .route("/pushrules/{scope}", any(scope_without_slash))
        .route("/pushrules/{scope}/", get(scope_rules).fallback(no_kind))
        .route("/pushrules/{scope}/{kind}", any(kind_without_slash))
        .route(
            "/pushrules/{scope}/{kind}/",
            get(kind_rules).fallback(no_rule_id),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}",
            get(get_rule).put(put_rule).delete(delete_rule),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}/enabled",
            get(get_enabled).put(put_enabled),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}/actions",
            get(get_actions).put(put_actions),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}/{attribute}",
            any(unknown_attribute),
        )
        .route("/pushers", get(pushers))
        .route("/pushers/set", post(set_pusher))
        .route("/notifications", get(notifications))
}

/// A push-rule path that names no resource: 400, as Synapse answers (SyTest
/// `61push/80torture.pl`), after the token is checked.
fn malformed(why: &'static str) -> JsonResult {
    Err(hearth_core::Error::from(RuleError::Path(why)).into())
}

async fn no_scope(Auth(_): Auth) -> JsonResult {
    malformed("The push rule scope is missing")
}

async fn scope_without_slash(Auth(_): Auth) -> JsonResult {
    malformed("The push rule kind is missing (a scope's rules end in '/')")
}

async fn no_kind(Auth(_): Auth) -> JsonResult {
    malformed("The push rule kind is missing")
}

async fn kind_without_slash(Auth(_): Auth) -> JsonResult {
    malformed("The push rule id is missing (a kind's rules end in '/')")
}

async fn no_rule_id(Auth(_): Auth) -> JsonResult {
    malformed("The push rule id is missing")
}

async fn unknown_attribute(Auth(_): Auth) -> JsonResult {
    malformed("Unknown push rule attribute: only 'enabled' and 'actions' exist")
}

async fn all_rules(State(h): State<Arc<Hearth>>, Auth(s): Auth) -> JsonResult {
    let rules = h.push.scope_push_rules(&s.user_id, "global").await?;
    Ok(Json(json!({ "global": rules })))
}

async fn scope_rules(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(scope): Path<String>,
) -> JsonResult {
    Ok(Json(h.push.scope_push_rules(&s.user_id, &scope).await?))
}

async fn kind_rules(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path((scope, kind)): Path<(String, String)>,
) -> JsonResult {
    Ok(Json(
        h.push.kind_push_rules(&s.user_id, &scope, &kind).await?,
    ))
}

type RuleParams = Path<(String, String, String)>;

fn at(p: &(String, String, String)) -> RulePath<'_> {
    RulePath {
        scope: &p.0,
        kind: &p.1,
        rule_id: &p.2,
    }
}

async fn get_rule(State(h): State<Arc<Hearth>>, Auth(s): Auth, Path(p): RuleParams) -> JsonResult {
    Ok(Json(h.push.push_rule(&s.user_id, &at(&p)).await?))
}

#[derive(Deserialize)]
struct Placement {
    before: Option<String>,
    after: Option<String>,
}

async fn put_rule(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(p): RuleParams,
    Query(q): Query<Placement>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> RumaResult<set_pushrule::v3::Response> {
    h.push
        .put_push_rule(
            &s.user_id,
            &at(&p),
            &body,
            q.before.as_deref().filter(|b| !b.is_empty()),
            q.after.as_deref().filter(|a| !a.is_empty()),
        )
        .await?;
    Ok(set_pushrule::v3::Response::new().into())
}

async fn delete_rule(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(p): RuleParams,
) -> RumaResult<delete_pushrule::v3::Response> {
    h.push.delete_push_rule(&s.user_id, &at(&p)).await?;
    Ok(delete_pushrule::v3::Response::new().into())
}

async fn get_enabled(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(p): RuleParams,
) -> RumaResult<get_pushrule_enabled::v3::Response> {
    let enabled = h.push.push_rule_enabled(&s.user_id, &at(&p)).await?;
    Ok(get_pushrule_enabled::v3::Response::new(enabled).into())
}

async fn put_enabled(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(p): RuleParams,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> RumaResult<set_pushrule_enabled::v3::Response> {
    let Some(enabled) = body.get("enabled").and_then(Value::as_bool) else {
        return Err(hearth_core::Error::invalid_param("'enabled' must be a boolean").into());
    };
    h.push
        .set_push_rule_enabled(&s.user_id, &at(&p), enabled)
        .await?;
    Ok(set_pushrule_enabled::v3::Response::new().into())
}

async fn get_actions(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(p): RuleParams,
) -> JsonResult {
    let actions = h.push.push_rule_actions(&s.user_id, &at(&p)).await?;
    Ok(Json(json!({ "actions": actions })))
}

async fn put_actions(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(p): RuleParams,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> RumaResult<set_pushrule_actions::v3::Response> {
    h.push
        .set_push_rule_actions(&s.user_id, &at(&p), body.get("actions"))
        .await?;
    Ok(set_pushrule_actions::v3::Response::new().into())
}

async fn pushers(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(_): Ruma<get_pushers::v3::Request>,
) -> ApiResult<Json<Pushers>> {
    Ok(Json(h.push.pushers(s.user_id.as_str()).await?))
}

async fn set_pusher(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> RumaResult<set_pusher::v3::Response> {
    h.push
        .set_pusher(s.user_id.as_str(), &s.device_id, &body)
        .await?;
    Ok(set_pusher::v3::Response::new().into())
}

/// Read by hand rather than as ruma's request: a negative `limit` is taken
/// (as one), where ruma's unsigned field would refuse it.
#[derive(Deserialize)]
struct NotificationsQuery {
    from: Option<String>,
    limit: Option<String>,
    only: Option<String>,
}

async fn notifications(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Query(q): Query<NotificationsQuery>,
) -> ApiResult<Json<Notifications>> {
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => Some(
            l.parse::<i64>()
                .map_err(|_| hearth_core::Error::invalid_param(format!("Invalid limit {l:?}")))?,
        ),
    };
    Ok(Json(
        h.push
            .notifications_page(&s.user_id, q.from.as_deref(), limit, q.only.as_deref())
            .await?,
    ))
}
