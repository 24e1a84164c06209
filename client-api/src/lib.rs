//! `/_matrix/client/*` and `/_matrix/media/*`: HTTP in, calls on
//! [`hearth_core::Hearth`] out. Each `routes` module owns one area of the API.

pub use hearth_http_common::{error, typed};
pub mod extract;
mod forward;
mod push_gateway;
mod routes;

pub use push_gateway::start_push;
pub use routes::ws::wait_for_sockets;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hearth_core::Hearth;
use tower_http::cors::{Any, CorsLayer};

use crate::error::ApiError;

/// Request bodies other than media uploads are capped here.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// Longest a request (other than a sync's wait and a media transfer) may
/// take. Reaching it means a database stopped answering without closing its
/// connections; the client gets 503 and may retry (sends are idempotent by
/// transaction id) instead of hanging.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(15);

/// Client endpoints served under both `/v3` and the legacy `/r0` prefix.
fn client_routes() -> Router<Arc<Hearth>> {
    Router::new()
        .merge(routes::account::routes())
        .merge(routes::devices::routes())
        .merge(routes::profile::routes())
        .merge(routes::rooms::routes())
        .merge(routes::messages::routes())
        .merge(routes::ephemeral::routes())
        .merge(routes::account_data::routes())
        .merge(routes::directory::routes())
        .merge(routes::keys::routes())
        .merge(routes::push::routes())
        .merge(routes::openid::routes())
        .merge(routes::threepid::routes())
        .layer(axum::middleware::from_fn(deadline))
        // Sync bounds itself: its wait is part of the request.
        .merge(routes::sync::routes())
}

async fn deadline(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!(%path, "request passed its deadline; is a database hung?");
            ApiError::from(hearth_core::Error::Unavailable(format!(
                "no answer within {} s (a database is not responding); retry later",
                REQUEST_DEADLINE.as_secs()
            )))
            .into_response()
        }
    }
}

pub fn router(hearth: Arc<Hearth>) -> Router {
    router_with(hearth, Router::new())
}

/// The client API with `extra` routes served beside it (the application
/// service endpoints), under the same limits, CORS and fallback.
pub fn router_with(hearth: Arc<Hearth>, extra: Router<Arc<Hearth>>) -> Router {
    if let Some(cluster) = &hearth.config.cluster {
        match forward::HttpForwarder::new(&cluster.secret) {
            Ok(f) => {
                let _ = hearth.links.forwarder.set(Arc::new(f));
            }
            Err(e) => tracing::error!("cannot forward sends to other processes: {e}"),
        }
    }
    let media_limit = hearth.config.max_upload_size as usize;
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(Any);
    Router::new()
        .merge(routes::discovery::routes())
        .merge(routes::ws::routes())
        .merge(routes::internal::routes())
        .merge(routes::openid::userinfo_routes())
        .nest("/_matrix/client/v3", client_routes())
        .nest("/_matrix/client/r0", client_routes())
        .merge(routes::media::routes().layer(DefaultBodyLimit::max(media_limit)))
        .merge(extra)
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn(
            hearth_http_common::nul::refuse_nul,
        ))
        .layer(axum::middleware::from_fn(
            hearth_http_common::plain_errors::matrix_errors,
        ))
        .layer(cors)
        .with_state(hearth)
}

async fn unknown_endpoint() -> ApiError {
    ApiError::unrecognized("Unrecognized request")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "Method not allowed",
    )
}
