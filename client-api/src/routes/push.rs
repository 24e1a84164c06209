//! Push rules (`/pushrules`), pushers (`/pushers`, `/pushers/set`) and
//! `/notifications`; the logic is in `hearth_core::push`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post},
};
use hearth_core::{
    Hearth,
    push::{Notifications, Pushers, RulePath},
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
        .route("/pushrules", get(all_rules))
        .route("/pushrules/", get(all_rules))
        .route("/pushrules/{scope}", get(scope_rules))
        .route("/pushrules/{scope}/", get(scope_rules))
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
        .route("/pushers", get(pushers))
        .route("/pushers/set", post(set_pusher))
        .route("/notifications", get(notifications))
}

async fn all_rules(State(h): State<Arc<Hearth>>, Auth(s): Auth) -> JsonResult {
    let rules = h.push.push_rules(&s.user_id).await?;
    let rules = serde_json::to_value(&*rules).map_err(hearth_core::Error::from)?;
    Ok(Json(json!({ "global": rules })))
}

async fn scope_rules(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(scope): Path<String>,
) -> JsonResult {
    if scope != "global" {
        return Err(hearth_core::Error::from(hearth_core::push::RuleError::Scope(scope)).into());
    }
    let rules = h.push.push_rules(&s.user_id).await?;
    Ok(Json(
        serde_json::to_value(&*rules).map_err(hearth_core::Error::from)?,
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
