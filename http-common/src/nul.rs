//! NUL characters in a request's path or query string are refused before
//! any route reads them: path segments and query values become ids and
//! stored text, which Postgres cannot hold with a NUL (SQLite can), so the
//! same request would otherwise succeed on one backend and fail with 500
//! on the other. Bodies are checked in core, field by field, since JSON
//! content (a message's body) may carry `\u0000` and is stored escaped.

use axum::{
    extract::Request,
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::ApiError;

/// Middleware: 400 M_INVALID_PARAM for a `%00` anywhere in the path or query.
pub async fn refuse_nul(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let encoded = [uri.path(), uri.query().unwrap_or("")];
    if encoded.iter().any(|s| has_nul(s)) {
        tracing::debug!(path = %uri.path(), "request refused: NUL in path or query");
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "The path or query must not contain a NUL character",
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a percent-encoded string decodes to something holding NUL.
fn has_nul(encoded: &str) -> bool {
    percent_encoding::percent_decode_str(encoded).any(|b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::has_nul;

    #[test]
    fn finds_encoded_nul() {
        assert!(has_nul("/send/m.room.message/a%00b"));
        assert!(has_nul("term=%00"));
        assert!(!has_nul("/send/m.room.message/a%20b"));
        assert!(!has_nul("filter=%7B%7D"));
    }
}
