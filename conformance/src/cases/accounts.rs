use anyhow::{Result, ensure};
use serde_json::json;

use crate::client::{Ctx, random_name};

crate::cases!(
    register_challenge_offers_dummy_flow,
    register_returns_token_that_works,
    register_available_for_free_name,
    register_available_rejects_taken,
    register_taken_name_is_user_in_use,
    register_invalid_username,
    login_flows_include_password,
    login_with_localpart,
    login_with_full_user_id,
    login_wrong_password_forbidden,
    logout_invalidates_token,
    logout_all_invalidates_every_token,
    whoami_reports_user_and_device,
    missing_token_is_missing_token,
    bad_token_is_unknown_token,
    change_password_requires_uia_then_works,
    deactivate_blocks_login,
);

async fn register_challenge_offers_dummy_flow(ctx: Ctx) -> Result<()> {
    let r = ctx
        .post(
            "/_matrix/client/v3/register",
            json!({"username": random_name("c"), "password": "pw-1234"}),
        )
        .await?;
    r.expect(401, None)?;
    ensure!(r.body["session"].is_string(), "no session: {}", r.body);
    let flows = r.body["flows"].as_array().cloned().unwrap_or_default();
    ensure!(
        flows
            .iter()
            .any(|f| f["stages"] == json!(["m.login.dummy"])),
        "no dummy flow: {}",
        r.body
    );
    Ok(())
}

async fn register_returns_token_that_works(ctx: Ctx) -> Result<()> {
    let u = ctx.register("reg").await?;
    ensure!(
        u.user_id.starts_with(&format!("@{}:", u.localpart)),
        "user id {}",
        u.user_id
    );
    u.get("/_matrix/client/v3/account/whoami").await?.ok()?;
    Ok(())
}

async fn register_available_for_free_name(ctx: Ctx) -> Result<()> {
    let r = ctx
        .get(&format!(
            "/_matrix/client/v3/register/available?username={}",
            random_name("free")
        ))
        .await?;
    ensure!(r.ok()?["available"] == true, "{}", r.body);
    Ok(())
}

async fn register_available_rejects_taken(ctx: Ctx) -> Result<()> {
    let u = ctx.register("taken").await?;
    let r = ctx
        .get(&format!(
            "/_matrix/client/v3/register/available?username={}",
            u.localpart
        ))
        .await?;
    r.expect(400, Some("M_USER_IN_USE"))?;
    Ok(())
}

async fn register_taken_name_is_user_in_use(ctx: Ctx) -> Result<()> {
    let u = ctx.register("dup").await?;
    let r = ctx
        .post(
            "/_matrix/client/v3/register",
            json!({"username": u.localpart, "password": "pw-other", "auth": {"type": "m.login.dummy"}}),
        )
        .await?;
    r.expect(400, Some("M_USER_IN_USE"))?;
    Ok(())
}

async fn register_invalid_username(ctx: Ctx) -> Result<()> {
    let r = ctx
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "Bad Name!", "password": "pw-1234", "auth": {"type": "m.login.dummy"}}),
        )
        .await?;
    r.expect(400, Some("M_INVALID_USERNAME"))?;
    Ok(())
}

async fn login_flows_include_password(ctx: Ctx) -> Result<()> {
    let r = ctx.get("/_matrix/client/v3/login").await?;
    let flows = r.ok()?["flows"].as_array().cloned().unwrap_or_default();
    ensure!(
        flows.iter().any(|f| f["type"] == "m.login.password"),
        "{}",
        r.body
    );
    Ok(())
}

async fn login(ctx: &Ctx, user: &str, password: &str) -> Result<crate::client::Resp> {
    ctx.post(
        "/_matrix/client/v3/login",
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
    )
    .await
}

async fn login_with_localpart(ctx: Ctx) -> Result<()> {
    let u = ctx.register("login").await?;
    let r = login(&ctx, &u.localpart, &u.password).await?;
    ensure!(r.ok()?["user_id"] == u.user_id.as_str(), "{}", r.body);
    ensure!(
        r.body["access_token"].is_string() && r.body["device_id"].is_string(),
        "{}",
        r.body
    );
    Ok(())
}

async fn login_with_full_user_id(ctx: Ctx) -> Result<()> {
    let u = ctx.register("loginfull").await?;
    let r = login(&ctx, &u.user_id, &u.password).await?;
    ensure!(r.ok()?["user_id"] == u.user_id.as_str(), "{}", r.body);
    Ok(())
}

async fn login_wrong_password_forbidden(ctx: Ctx) -> Result<()> {
    let u = ctx.register("wrongpw").await?;
    login(&ctx, &u.localpart, "not-the-password")
        .await?
        .expect(403, Some("M_FORBIDDEN"))?;
    Ok(())
}

async fn logout_invalidates_token(ctx: Ctx) -> Result<()> {
    let u = ctx.register("logout").await?;
    u.post("/_matrix/client/v3/logout", json!({})).await?.ok()?;
    u.get("/_matrix/client/v3/account/whoami")
        .await?
        .expect(401, Some("M_UNKNOWN_TOKEN"))?;
    Ok(())
}

async fn logout_all_invalidates_every_token(ctx: Ctx) -> Result<()> {
    let u = ctx.register("logoutall").await?;
    let second = login(&ctx, &u.localpart, &u.password).await?;
    let token2 = second.str("access_token")?;
    u.post("/_matrix/client/v3/logout/all", json!({}))
        .await?
        .ok()?;
    u.get("/_matrix/client/v3/account/whoami")
        .await?
        .expect(401, Some("M_UNKNOWN_TOKEN"))?;
    ctx.call(
        reqwest::Method::GET,
        "/_matrix/client/v3/account/whoami",
        Some(&token2),
        None,
    )
    .await?
    .expect(401, Some("M_UNKNOWN_TOKEN"))?;
    Ok(())
}

async fn whoami_reports_user_and_device(ctx: Ctx) -> Result<()> {
    let u = ctx.register("who").await?;
    let r = u.get("/_matrix/client/v3/account/whoami").await?;
    ensure!(
        r.ok()?["user_id"] == u.user_id.as_str() && r.body["device_id"] == u.device_id.as_str(),
        "{}",
        r.body
    );
    Ok(())
}

async fn missing_token_is_missing_token(ctx: Ctx) -> Result<()> {
    ctx.get("/_matrix/client/v3/account/whoami")
        .await?
        .expect(401, Some("M_MISSING_TOKEN"))?;
    Ok(())
}

async fn bad_token_is_unknown_token(ctx: Ctx) -> Result<()> {
    ctx.call(
        reqwest::Method::GET,
        "/_matrix/client/v3/account/whoami",
        Some("not-a-real-token"),
        None,
    )
    .await?
    .expect(401, Some("M_UNKNOWN_TOKEN"))?;
    Ok(())
}

async fn change_password_requires_uia_then_works(ctx: Ctx) -> Result<()> {
    let u = ctx.register("pwchange").await?;
    // UIA resubmits the same request with `auth` added: Hearth refuses a
    // session used for a changed body (Synapse only logs it).
    let first = u
        .post(
            "/_matrix/client/v3/account/password",
            json!({"new_password": "new-pw-1234", "logout_devices": false}),
        )
        .await?;
    first.expect(401, None)?;
    let session = first.str("session")?;
    u.post(
        "/_matrix/client/v3/account/password",
        json!({"new_password": "new-pw-1234", "logout_devices": false, "auth": {
            "type": "m.login.password", "session": session,
            "identifier": {"type": "m.id.user", "user": u.localpart}, "password": u.password}}),
    )
    .await?
    .ok()?;
    login(&ctx, &u.localpart, "new-pw-1234").await?.ok()?;
    login(&ctx, &u.localpart, &u.password)
        .await?
        .expect(403, Some("M_FORBIDDEN"))?;
    Ok(())
}

async fn deactivate_blocks_login(ctx: Ctx) -> Result<()> {
    let u = ctx.register("deact").await?;
    let first = u
        .post("/_matrix/client/v3/account/deactivate", json!({}))
        .await?;
    first.expect(401, None)?;
    let session = first.str("session")?;
    u.post(
        "/_matrix/client/v3/account/deactivate",
        json!({"auth": {"type": "m.login.password", "session": session,
                         "identifier": {"type": "m.id.user", "user": u.localpart}, "password": u.password}}),
    )
    .await?
    .ok()?;
    let r = login(&ctx, &u.localpart, &u.password).await?;
    ensure!(
        r.status == 403,
        "login after deactivation: {} {}",
        r.status,
        r.body
    );
    u.get("/_matrix/client/v3/account/whoami")
        .await?
        .expect(401, Some("M_UNKNOWN_TOKEN"))?;
    Ok(())
}
