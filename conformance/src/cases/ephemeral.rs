use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::client::{Ctx, User, enc, room_path};

crate::cases!(
    read_receipt_reaches_other_member,
    private_receipt_only_visible_to_self,
    threaded_receipt_accepted,
    read_markers_set_fully_read,
    typing_on_and_off,
    presence_set_and_get,
);

async fn pair(ctx: &Ctx) -> Result<(User, User, String)> {
    let (a, b, room) = ctx.public_room_pair("eph").await?;
    Ok((a, b, room))
}

fn ephemeral(body: &Value, room: &str, kind: &str) -> Vec<Value> {
    body["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

fn has_receipt(body: &Value, room: &str, event: &str, kind: &str, user: &str) -> bool {
    ephemeral(body, room, "m.receipt")
        .iter()
        .any(|e| e["content"][event][kind][user].is_object())
}

async fn read_receipt_reaches_other_member(ctx: Ctx) -> Result<()> {
    let (mut a, b, room) = pair(&ctx).await?;
    let ev = a.send_text(&room, "read me").await?;
    a.sync("").await?;
    b.post(
        &room_path(&room, &format!("receipt/m.read/{}", enc(&ev))),
        json!({}),
    )
    .await?
    .ok()?;
    a.sync_until(10, "", |body| {
        has_receipt(body, &room, &ev, "m.read", &b.user_id)
    })
    .await?;
    Ok(())
}

async fn private_receipt_only_visible_to_self(ctx: Ctx) -> Result<()> {
    let (a, mut b, room) = pair(&ctx).await?;
    let ev = a.send_text(&room, "private read").await?;
    b.post(
        &room_path(&room, &format!("receipt/m.read.private/{}", enc(&ev))),
        json!({}),
    )
    .await?
    .ok()?;
    let me = b.user_id.clone();
    b.sync_until(10, "", |body| {
        has_receipt(body, &room, &ev, "m.read.private", &me)
    })
    .await?;
    let mut a2 = a.clone();
    let body = a2.sync("").await?;
    ensure!(
        !has_receipt(&body, &room, &ev, "m.read.private", &b.user_id),
        "private receipt leaked: {body}"
    );
    Ok(())
}

async fn threaded_receipt_accepted(ctx: Ctx) -> Result<()> {
    let (a, b, room) = pair(&ctx).await?;
    let ev = a.send_text(&room, "thread root").await?;
    b.post(
        &room_path(&room, &format!("receipt/m.read/{}", enc(&ev))),
        json!({"thread_id": "main"}),
    )
    .await?
    .ok()?;
    Ok(())
}

async fn read_markers_set_fully_read(ctx: Ctx) -> Result<()> {
    let (a, b, room) = pair(&ctx).await?;
    let ev = a.send_text(&room, "marker").await?;
    b.post(
        &room_path(&room, "read_markers"),
        json!({"m.fully_read": ev, "m.read": ev}),
    )
    .await?
    .ok()?;
    let r = b
        .get(&format!(
            "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read",
            enc(&b.user_id),
            enc(&room)
        ))
        .await?;
    ensure!(r.ok()?["event_id"] == ev.as_str(), "{}", r.body);
    Ok(())
}

async fn typing_on_and_off(ctx: Ctx) -> Result<()> {
    let (mut a, b, room) = pair(&ctx).await?;
    a.sync("").await?;
    let path = room_path(&room, &format!("typing/{}", enc(&b.user_id)));
    b.put(&path, json!({"typing": true, "timeout": 20000}))
        .await?
        .ok()?;
    let typing_users = |body: &Value| -> Vec<String> {
        ephemeral(body, &room, "m.typing")
            .iter()
            .flat_map(|e| {
                e["content"]["user_ids"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect()
    };
    a.sync_until(10, "", |body| typing_users(body).contains(&b.user_id))
        .await?;
    b.put(&path, json!({"typing": false})).await?.ok()?;
    a.sync_until(10, "", |body| {
        !ephemeral(body, &room, "m.typing").is_empty() && !typing_users(body).contains(&b.user_id)
    })
    .await?;
    Ok(())
}

async fn presence_set_and_get(ctx: Ctx) -> Result<()> {
    let u = ctx.register("pres").await?;
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&u.user_id));
    u.put(&path, json!({"presence": "online", "status_msg": "here"}))
        .await?
        .ok()?;
    let r = u.get(&path).await?;
    let p = r.ok()?;
    ensure!(
        p["presence"] == "online" && p["status_msg"] == "here",
        "{p}"
    );
    u.put(&path, json!({"presence": "sleeping"}))
        .await?
        .expect(400, None)?;
    Ok(())
}
