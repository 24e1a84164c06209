//! `/_matrix/media/v3` (legacy) and `/_matrix/client/v1/media` (authenticated).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hearth_core::{
    Error, Hearth,
    media::{MediaFile, ThumbnailMethod},
};
use serde::Deserialize;
use serde_json::json;

use super::JsonResult;
use crate::{
    error::{ApiError, ApiResult},
    extract::{Auth, read_body},
};

pub fn routes() -> Router<Arc<Hearth>> {
    let mut r = Router::new();
    for prefix in ["/_matrix/media/v3", "/_matrix/media/r0"] {
        r = r
            .route(&format!("{prefix}/upload"), post(upload))
            .route(&format!("{prefix}/config"), get(config_legacy))
            .route(
                &format!("{prefix}/download/{{server}}/{{media_id}}"),
                get(download_legacy),
            )
            .route(
                &format!("{prefix}/download/{{server}}/{{media_id}}/"),
                get(download_legacy),
            )
            .route(
                &format!("{prefix}/download/{{server}}/{{media_id}}/{{filename}}"),
                get(download_named_legacy),
            )
            .route(
                &format!("{prefix}/thumbnail/{{server}}/{{media_id}}"),
                get(thumbnail_legacy),
            );
    }
    r.route("/_matrix/client/v1/media/config", get(config))
        .route(
            "/_matrix/client/v1/media/download/{server}/{media_id}",
            get(download),
        )
        // Some clients (matrix-nio) add an empty filename segment.
        .route(
            "/_matrix/client/v1/media/download/{server}/{media_id}/",
            get(download),
        )
        .route(
            "/_matrix/client/v1/media/download/{server}/{media_id}/{filename}",
            get(download_named),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server}/{media_id}",
            get(thumbnail),
        )
}

#[derive(Deserialize)]
struct UploadQuery {
    filename: Option<String>,
}

async fn upload(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    req: Request,
) -> JsonResult {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > h.config.max_upload_size
    {
        return Err(Error::TooLarge("Upload is larger than the server allows".into()).into());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = read_body(req, &h).await?;
    let id = h
        .media
        .upload_media(
            s.user_id.as_str(),
            content_type.as_deref(),
            q.filename.as_deref(),
            bytes,
        )
        .await?;
    tracing::debug!(media = %id, user = %s.user_id, "uploaded");
    Ok(Json(
        json!({"content_uri": format!("mxc://{}/{id}", h.config.server_name)}),
    ))
}

async fn config_body(h: &Hearth) -> JsonResult {
    Ok(Json(json!({"m.upload.size": h.config.max_upload_size})))
}

async fn config(State(h): State<Arc<Hearth>>, Auth(_): Auth) -> JsonResult {
    config_body(&h).await
}

async fn config_legacy(State(h): State<Arc<Hearth>>, Auth(_): Auth) -> JsonResult {
    config_body(&h).await
}

fn check_server(h: &Hearth, server: &str) -> ApiResult<()> {
    if server != h.config.server_name.as_str() {
        return Err(Error::not_found("Remote media is not available").into());
    }
    Ok(())
}

/// Types a browser may render inline without risk; everything else downloads.
fn inline_safe(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or_default().trim();
    matches!(
        base,
        "text/plain"
            | "text/css"
            | "text/csv"
            | "application/json"
            | "application/ld+json"
            | "image/jpeg"
            | "image/gif"
            | "image/png"
            | "image/apng"
            | "image/webp"
            | "image/avif"
            | "video/mp4"
            | "video/webm"
            | "video/ogg"
            | "video/quicktime"
            | "audio/mp4"
            | "audio/webm"
            | "audio/aac"
            | "audio/mpeg"
            | "audio/ogg"
            | "audio/wave"
            | "audio/wav"
            | "audio/x-wav"
            | "audio/x-pn-wav"
            | "audio/flac"
            | "audio/x-flac"
    )
}

fn media_response(file: MediaFile, filename: Option<String>) -> Response {
    let disposition_kind = if inline_safe(&file.content_type) {
        "inline"
    } else {
        "attachment"
    };
    let disposition = match filename.or(file.filename) {
        Some(name) => {
            let encoded: String =
                percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            format!("{disposition_kind}; filename*=utf-8''{encoded}")
        }
        None => disposition_kind.to_owned(),
    };
    let mut resp = (StatusCode::OK, file.bytes).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&file.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
        ),
    );
    h.insert(
        "Cross-Origin-Resource-Policy",
        HeaderValue::from_static("cross-origin"),
    );
    resp
}

async fn serve(
    h: &Hearth,
    server: &str,
    media_id: &str,
    filename: Option<String>,
) -> Result<Response, ApiError> {
    check_server(h, server)?;
    Ok(media_response(h.media.get_media(media_id).await?, filename))
}

async fn download(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    Path((server, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    serve(&h, &server, &id, None).await
}

async fn download_named(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    Path((server, id, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    serve(&h, &server, &id, Some(name)).await
}

async fn download_legacy(
    State(h): State<Arc<Hearth>>,
    Path((server, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    serve(&h, &server, &id, None).await
}

async fn download_named_legacy(
    State(h): State<Arc<Hearth>>,
    Path((server, id, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    serve(&h, &server, &id, Some(name)).await
}

#[derive(Deserialize)]
struct ThumbQuery {
    width: Option<String>,
    height: Option<String>,
    method: Option<String>,
}

async fn thumb(h: &Hearth, server: &str, id: &str, q: &ThumbQuery) -> Result<Response, ApiError> {
    check_server(h, server)?;
    let dim = |v: &Option<String>, name: &str| -> ApiResult<u32> {
        let v = v
            .as_deref()
            .ok_or_else(|| Error::MissingParam(format!("Missing {name}")))?;
        v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error::invalid_param(format!("{name} must be a positive integer")).into()
        })
    };
    let (w, hgt) = (dim(&q.width, "width")?, dim(&q.height, "height")?);
    let method = match q.method.as_deref() {
        None | Some("scale") => ThumbnailMethod::Scale,
        Some("crop") => ThumbnailMethod::Crop,
        Some(m) => return Err(Error::invalid_param(format!("Unknown method {m}")).into()),
    };
    let file = h.media.thumbnail(id, w, hgt, method).await?;
    Ok(media_response(file, None))
}

async fn thumbnail(
    State(h): State<Arc<Hearth>>,
    Auth(_): Auth,
    Path((server, id)): Path<(String, String)>,
    Query(q): Query<ThumbQuery>,
) -> Result<Response, ApiError> {
    thumb(&h, &server, &id, &q).await
}

async fn thumbnail_legacy(
    State(h): State<Arc<Hearth>>,
    Path((server, id)): Path<(String, String)>,
    Query(q): Query<ThumbQuery>,
) -> Result<Response, ApiError> {
    thumb(&h, &server, &id, &q).await
}
