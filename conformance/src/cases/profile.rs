use anyhow::{Result, ensure};
use serde_json::json;

use crate::client::{Ctx, enc};

crate::cases!(
    displayname_set_and_get,
    avatar_set_and_get,
    cannot_set_other_users_profile,
    profile_of_unknown_user_404,
    displayname_change_updates_member_event
);

async fn displayname_set_and_get(ctx: Ctx) -> Result<()> {
    let u = ctx.register("prof").await?;
    let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(&u.user_id));
    u.put(&path, json!({"displayname": "Prof Name"}))
        .await?
        .ok()?;
    let r = ctx.get(&path).await?;
    ensure!(r.ok()?["displayname"] == "Prof Name", "{}", r.body);
    let r = u
        .get(&format!("/_matrix/client/v3/profile/{}", enc(&u.user_id)))
        .await?;
    ensure!(r.ok()?["displayname"] == "Prof Name", "{}", r.body);
    Ok(())
}

async fn avatar_set_and_get(ctx: Ctx) -> Result<()> {
    let u = ctx.register("avatar").await?;
    let path = format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&u.user_id));
    let url = format!("mxc://{}/someavatar", u.server_name());
    u.put(&path, json!({"avatar_url": url})).await?.ok()?;
    let r = u.get(&path).await?;
    ensure!(r.ok()?["avatar_url"] == url.as_str(), "{}", r.body);
    Ok(())
}

async fn cannot_set_other_users_profile(ctx: Ctx) -> Result<()> {
    let a = ctx.register("pa").await?;
    let b = ctx.register("pb").await?;
    let r = a
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&b.user_id)),
            json!({"displayname": "hijack"}),
        )
        .await?;
    // Refused with M_FORBIDDEN; Synapse answers 400, others 403.
    ensure!(
        matches!(r.status, 400 | 403) && r.body["errcode"] == "M_FORBIDDEN",
        "{} {}",
        r.status,
        r.body
    );
    Ok(())
}

async fn profile_of_unknown_user_404(ctx: Ctx) -> Result<()> {
    let u = ctx.register("p404").await?;
    let ghost = format!("@nobody-{}:{}", u.localpart, u.server_name());
    // The spec fixes the status, not the errcode (Synapse says M_UNKNOWN).
    u.get(&format!("/_matrix/client/v3/profile/{}", enc(&ghost)))
        .await?
        .expect(404, None)?;
    Ok(())
}

async fn displayname_change_updates_member_event(ctx: Ctx) -> Result<()> {
    let u = ctx.register("pmem").await?;
    let room = u.create_room(json!({})).await?;
    u.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&u.user_id)),
        json!({"displayname": "Renamed"}),
    )
    .await?
    .ok()?;
    // Servers may apply the change to rooms in the background: poll briefly.
    let mut member = json!(null);
    for _ in 0..50 {
        member = u.state_content(&room, "m.room.member", &u.user_id).await?;
        if member["displayname"] == "Renamed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    ensure!(
        member["displayname"] == "Renamed" && member["membership"] == "join",
        "{member}"
    );
    Ok(())
}
