//! Display names and avatars; a change is mirrored into every joined room.

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use hearth_core::{Error, Hearth, accounts::Session, profile::Profile, ruma::UserId};
use ruma_client_api::profile::{
    get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name,
};
use serde_json::Value;

use crate::{
    error::ApiResult,
    extract::Auth,
    typed::{Ruma, RumaResult},
};

pub fn routes() -> Router<Arc<Hearth>> {
    Router::new()
        .route("/profile/{user_id}", get(get_profile))
        .route(
            "/profile/{user_id}/displayname",
            get(get_displayname).put(set_displayname),
        )
        .route(
            "/profile/{user_id}/avatar_url",
            get(get_avatar).put(set_avatar),
        )
}

async fn get_profile(
    State(h): State<Arc<Hearth>>,
    Ruma(req): Ruma<get_profile::v3::Request>,
) -> RumaResult<get_profile::v3::Response> {
    let Profile {
        displayname,
        avatar_url,
    } = h.profiles.profile(&req.user_id, None).await?;
    let fields = [("displayname", displayname), ("avatar_url", avatar_url)];
    let response: get_profile::v3::Response = fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), Value::String(v?))))
        .collect();
    Ok(response.into())
}

async fn get_displayname(
    State(h): State<Arc<Hearth>>,
    Ruma(req): Ruma<get_display_name::v3::Request>,
) -> RumaResult<get_display_name::v3::Response> {
    let p = h
        .profiles
        .profile(&req.user_id, Some("displayname"))
        .await?;
    match p.displayname {
        Some(n) => Ok(get_display_name::v3::Response::new(Some(n)).into()),
        None => Err(Error::not_found("No display name set").into()),
    }
}

async fn get_avatar(
    State(h): State<Arc<Hearth>>,
    Ruma(req): Ruma<get_avatar_url::v3::Request>,
) -> RumaResult<get_avatar_url::v3::Response> {
    let p = h.profiles.profile(&req.user_id, Some("avatar_url")).await?;
    match p.avatar_url {
        Some(a) => Ok(get_avatar_url::v3::Response::new(Some(a.into())).into()),
        None => Err(Error::not_found("No avatar set").into()),
    }
}

fn ensure_self(s: &Session, user: &UserId) -> ApiResult<()> {
    if user != s.user_id {
        return Err(Error::forbidden("You cannot change another user's profile").into());
    }
    Ok(())
}

async fn set_displayname(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<set_display_name::v3::Request>,
) -> RumaResult<set_display_name::v3::Response> {
    ensure_self(&s, &req.user_id)?;
    h.profiles
        .set_displayname(&s.user_id, req.displayname.as_deref())
        .await?;
    Ok(set_display_name::v3::Response::new().into())
}

async fn set_avatar(
    State(h): State<Arc<Hearth>>,
    Auth(s): Auth,
    Ruma(req): Ruma<set_avatar_url::v3::Request>,
) -> RumaResult<set_avatar_url::v3::Response> {
    ensure_self(&s, &req.user_id)?;
    let url = req.avatar_url.as_ref().map(|u| u.as_str());
    h.profiles.set_avatar_url(&s.user_id, url).await?;
    Ok(set_avatar_url::v3::Response::new().into())
}
