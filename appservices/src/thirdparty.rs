//! `/_matrix/client/v3/thirdparty/*`: lookups of users and locations on
//! the networks bridges connect, answered by asking the services that
//! declared each protocol.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    routing::get,
};
use hearth_core::{Error, Hearth, appservice::AppService};
use hearth_http_common::{error::ApiError, extract::Auth};
use serde_json::{Map, Value};

use crate::{AsClient, client::enc};

pub fn routes() -> Router<Arc<Hearth>> {
    let r = Router::new()
        .route("/thirdparty/protocols", get(protocols))
        .route("/thirdparty/protocol/{protocol}", get(protocol))
        .route("/thirdparty/location/{protocol}", get(location_by_protocol))
        .route("/thirdparty/user/{protocol}", get(user_by_protocol))
        .route("/thirdparty/location", get(location_by_alias))
        .route("/thirdparty/user", get(user_by_id));
    Router::new()
        .nest("/_matrix/client/v3", r.clone())
        .nest("/_matrix/client/r0", r)
}

fn serving(h: &Hearth, protocol: &str) -> Vec<Arc<AppService>> {
    h.appservices
        .all()
        .iter()
        .filter(|s| s.protocols.iter().any(|p| p == protocol))
        .cloned()
        .collect()
}

/// Every service's answer that is a list, joined.
async fn gather(services: &[Arc<AppService>], path: &str) -> Vec<Value> {
    let mut out = vec![];
    for s in services {
        if let Some(Value::Array(items)) = AsClient::shared().get_json(s, path).await {
            out.extend(items);
        }
    }
    out
}

/// `path` with the client's lookup fields; its `access_token`, if sent in
/// the query string, is the client's secret and never reaches a service
/// (which is told who asks by the hs_token in the Authorization header).
fn with_query(path: String, query: Option<String>) -> String {
    let fields = query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some("access_token"))
        .collect::<Vec<_>>()
        .join("&");
    if fields.is_empty() {
        path
    } else {
        format!("{path}?{fields}")
    }
}

async fn protocols(State(h): State<Arc<Hearth>>, Auth(_): Auth) -> Result<Json<Value>, ApiError> {
    let mut out = Map::new();
    for s in h.appservices.all() {
        for p in &s.protocols {
            if let Some(info) = AsClient::shared().protocol_info(s, p).await {
                merge_protocol(&mut out, p, info);
            }
        }
    }
    Ok(Json(Value::Object(out)))
}

/// Two services may serve one protocol: their instances are listed together.
fn merge_protocol(out: &mut Map<String, Value>, protocol: &str, info: Map<String, Value>) {
    match out.get_mut(protocol) {
        Some(Value::Object(existing)) => {
            let more = info.get("instances").and_then(Value::as_array).cloned();
            if let (Some(Value::Array(instances)), Some(more)) =
                (existing.get_mut("instances"), more)
            {
                instances.extend(more);
            }
        }
        _ => {
            out.insert(protocol.to_owned(), Value::Object(info));
        }
    }
}

async fn protocol(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    Path(protocol): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut out = Map::new();
    for s in serving(&h, &protocol) {
        if let Some(info) = AsClient::shared().protocol_info(&s, &protocol).await {
            merge_protocol(&mut out, &protocol, info);
        }
    }
    out.remove(&protocol)
        .map(Json)
        .ok_or_else(|| Error::not_found(format!("No bridge serves protocol {protocol}")).into())
}

async fn location_by_protocol(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    Path(protocol): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    lookup(&h, &protocol, "location", query).await
}

async fn user_by_protocol(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    Path(protocol): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    lookup(&h, &protocol, "user", query).await
}

async fn lookup(
    h: &Hearth,
    protocol: &str,
    kind: &str,
    query: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let services = serving(h, protocol);
    if services.is_empty() {
        return Err(Error::not_found(format!("No bridge serves protocol {protocol}")).into());
    }
    let path = with_query(
        format!("/_matrix/app/v1/thirdparty/{kind}/{}", enc(protocol)),
        query,
    );
    Ok(Json(Value::Array(gather(&services, &path).await)))
}

async fn location_by_alias(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let path = with_query("/_matrix/app/v1/thirdparty/location".into(), query);
    Ok(Json(Value::Array(gather(h.appservices.all(), &path).await)))
}

async fn user_by_id(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let path = with_query("/_matrix/app/v1/thirdparty/user".into(), query);
    Ok(Json(Value::Array(gather(h.appservices.all(), &path).await)))
}
