use std::sync::Arc;

use axum::Router;
use hearth_core::Hearth;

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
}
