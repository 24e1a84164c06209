//! Long-poll /sync and filter storage.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post},
};
use hearth_core::{Error, Hearth, sync::SyncRequest};
use ruma_client_api::filter::{create_filter, get_filter};
use serde::Deserialize;
use serde_json::Value;

use super::{JsonResult, parse_user_id};
use crate::{
    extract::{Auth, JsonBody},
    typed::{Ruma, RumaResult},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/sync", get(sync))
        .route("/user/{user_id}/filter", post(create_filter))
        .route("/user/{user_id}/filter/{filter_id}", get(get_filter))
}

/// Longest long-poll we hold open, whatever the client asks.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Deserialize)]
struct SyncQuery {
    since: Option<String>,
    filter: Option<String>,
    #[serde(default)]
    full_state: Option<String>,
    set_presence: Option<String>,
    timeout: Option<String>,
}

async fn sync(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Query(q): Query<SyncQuery>,
) -> JsonResult {
    let since = q
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .transpose()?;
    let filter = h
        .filters
        .sync_filter(&s.user_id, q.filter.as_deref())
        .await?;
    let timeout = match &q.timeout {
        Some(t) => Duration::from_millis(
            t.parse()
                .map_err(|_| Error::invalid_param("timeout must be an integer"))?,
        ),
        None => Duration::ZERO,
    };
    let full_state = matches!(q.full_state.as_deref(), Some("true"));
    let presence = q.set_presence.as_deref().unwrap_or("online");
    match presence {
        "online" | "offline" | "unavailable" => {}
        _ => return Err(Error::invalid_param("Invalid set_presence").into()),
    }
    h.ephemeral.presence_sync(s.user_id.as_str(), presence);
    let req = SyncRequest {
        since,
        full_state,
        filter,
        timeout: timeout.min(MAX_TIMEOUT),
    };
    let bound = req.timeout + crate::REQUEST_DEADLINE;
    match tokio::time::timeout(bound, h.sync.sync(&s.user_id, &s.device_id, &req)).await {
        Ok(body) => Ok(Json(body?)),
        Err(_) => {
            tracing::error!(user = %s.user_id, "sync passed its deadline; is a database hung?");
            Err(Error::Unavailable("sync could not be answered in time; retry later".into()).into())
        }
    }
}

async fn create_filter(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Path(user_id): Path<String>,
    JsonBody(filter): JsonBody<Value>,
) -> RumaResult<create_filter::v3::Response> {
    let user = parse_user_id(&user_id)?;
    if user != s.user_id {
        return Err(Error::forbidden("Cannot create filters for other users").into());
    }
    let id = h.filters.save_filter(&s.user_id, &filter).await?;
    Ok(create_filter::v3::Response::new(id).into())
}

/// The filter goes back as it was stored, not as ruma's `FilterDefinition`
/// (which would drop what it does not know). Creating one keeps Hearth's
/// body parsing: ruma's filter type refuses shapes Synapse takes.
async fn get_filter(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<get_filter::v3::Request>,
) -> JsonResult {
    if req.user_id != s.user_id {
        return Err(Error::forbidden("Cannot read other users' filters").into());
    }
    Ok(Json(
        h.filters.stored_filter(&s.user_id, &req.filter_id).await?,
    ))
}
