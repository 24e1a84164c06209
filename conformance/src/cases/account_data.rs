use anyhow::{Result, ensure};
use serde_json::json;

use crate::client::{Ctx, enc};

crate::cases!(
    global_account_data_roundtrip_and_sync,
    room_account_data_roundtrip,
    missing_account_data_404,
    cannot_touch_other_users_account_data,
    tags_put_get_delete_and_sync
);

async fn global_account_data_roundtrip_and_sync(ctx: Ctx) -> Result<()> {
    let mut u = ctx.register("ad").await?;
    u.sync("").await?;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.settings",
        enc(&u.user_id)
    );
    u.put(&path, json!({"theme": "dark"})).await?.ok()?;
    ensure!(u.get(&path).await?.ok()?["theme"] == "dark");
    u.sync_until(10, "", |b| {
        b["account_data"]["events"].as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["type"] == "org.example.settings" && e["content"]["theme"] == "dark")
        })
    })
    .await?;
    Ok(())
}

async fn room_account_data_roundtrip(ctx: Ctx) -> Result<()> {
    let u = ctx.register("adr").await?;
    let room = u.create_room(json!({})).await?;
    let path = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.r",
        enc(&u.user_id),
        enc(&room)
    );
    u.put(&path, json!({"n": 3})).await?.ok()?;
    ensure!(u.get(&path).await?.ok()?["n"] == 3);
    Ok(())
}

async fn missing_account_data_404(ctx: Ctx) -> Result<()> {
    let u = ctx.register("adm").await?;
    u.get(&format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.none",
        enc(&u.user_id)
    ))
    .await?
    .expect(404, Some("M_NOT_FOUND"))?;
    Ok(())
}

async fn cannot_touch_other_users_account_data(ctx: Ctx) -> Result<()> {
    let a = ctx.register("ado").await?;
    let b = ctx.register("adob").await?;
    a.put(
        &format!(
            "/_matrix/client/v3/user/{}/account_data/org.example.x",
            enc(&b.user_id)
        ),
        json!({}),
    )
    .await?
    .expect(403, Some("M_FORBIDDEN"))?;
    Ok(())
}

async fn tags_put_get_delete_and_sync(ctx: Ctx) -> Result<()> {
    let mut u = ctx.register("tag").await?;
    let room = u.create_room(json!({})).await?;
    u.sync("").await?;
    let base = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/tags",
        enc(&u.user_id),
        enc(&room)
    );
    u.put(&format!("{base}/m.favourite"), json!({"order": 0.5}))
        .await?
        .ok()?;
    let r = u.get(&base).await?;
    ensure!(r.ok()?["tags"]["m.favourite"]["order"] == 0.5, "{}", r.body);
    u.sync_until(10, "", |b| {
        b["rooms"]["join"][&room]["account_data"]["events"]
            .as_array()
            .is_some_and(|a| {
                a.iter().any(|e| {
                    e["type"] == "m.tag" && e["content"]["tags"]["m.favourite"].is_object()
                })
            })
    })
    .await?;
    u.delete(&format!("{base}/m.favourite")).await?.ok()?;
    let r = u.get(&base).await?;
    ensure!(
        r.ok()?["tags"].as_object().is_some_and(|t| t.is_empty()),
        "{}",
        r.body
    );
    Ok(())
}
