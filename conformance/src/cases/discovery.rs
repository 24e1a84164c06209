use anyhow::{Result, ensure};
use reqwest::Method;

use crate::client::Ctx;

crate::cases!(
    versions_lists_v1_versions,
    well_known_client_is_valid_or_absent,
    capabilities_report_room_versions_and_password,
    capabilities_require_auth,
    unknown_endpoint_is_unrecognized,
    wrong_method_is_405,
);

async fn versions_lists_v1_versions(ctx: Ctx) -> Result<()> {
    let r = ctx.get("/_matrix/client/versions").await?;
    let versions = r.ok()?["versions"].as_array().cloned().unwrap_or_default();
    ensure!(
        versions
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.starts_with("v1."))),
        "no v1.x in {versions:?}"
    );
    Ok(())
}

async fn well_known_client_is_valid_or_absent(ctx: Ctx) -> Result<()> {
    let r = ctx.get("/.well-known/matrix/client").await?;
    match r.status {
        200 => ensure!(
            r.body["m.homeserver"]["base_url"].is_string(),
            "base_url missing: {}",
            r.body
        ),
        404 => {}
        s => anyhow::bail!("unexpected status {s}"),
    }
    Ok(())
}

async fn capabilities_report_room_versions_and_password(ctx: Ctx) -> Result<()> {
    let u = ctx.register("cap").await?;
    let r = u.get("/_matrix/client/v3/capabilities").await?;
    let caps = &r.ok()?["capabilities"];
    let default = caps["m.room_versions"]["default"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        caps["m.room_versions"]["available"][default].is_string(),
        "default version not available: {caps}"
    );
    ensure!(
        caps["m.change_password"]["enabled"].is_boolean(),
        "m.change_password missing: {caps}"
    );
    Ok(())
}

async fn capabilities_require_auth(ctx: Ctx) -> Result<()> {
    ctx.get("/_matrix/client/v3/capabilities")
        .await?
        .expect(401, Some("M_MISSING_TOKEN"))?;
    Ok(())
}

async fn unknown_endpoint_is_unrecognized(ctx: Ctx) -> Result<()> {
    ctx.get("/_matrix/client/v3/no_such_endpoint_hearth")
        .await?
        .expect(404, Some("M_UNRECOGNIZED"))?;
    Ok(())
}

async fn wrong_method_is_405(ctx: Ctx) -> Result<()> {
    let r = ctx
        .call(Method::DELETE, "/_matrix/client/versions", None, None)
        .await?;
    r.expect(405, Some("M_UNRECOGNIZED"))?;
    Ok(())
}
