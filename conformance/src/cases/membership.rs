use anyhow::{Result, ensure};
use serde_json::json;

use crate::client::{Ctx, enc, random_name, room_path};

crate::cases!(
    join_by_room_id_and_leave,
    join_by_alias,
    invite_then_join,
    invite_only_room_refuses_uninvited,
    kick_with_reason,
    ban_blocks_join_and_unban_allows_invite,
    insufficient_power_cannot_kick,
    non_member_cannot_invite,
    non_member_cannot_send,
    non_member_cannot_read_private_history,
    joined_rooms_lists_rooms,
    forget_after_leave,
);

async fn membership_of(u: &crate::client::User, room: &str, who: &str) -> Result<String> {
    Ok(
        u.state_content(room, "m.room.member", who).await?["membership"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn join_by_room_id_and_leave(ctx: Ctx) -> Result<()> {
    let a = ctx.register("mj").await?;
    let b = ctx.register("mjb").await?;
    let room = a.create_room(json!({"preset": "public_chat"})).await?;
    b.post(&room_path(&room, "join"), json!({})).await?.ok()?;
    ensure!(membership_of(&a, &room, &b.user_id).await? == "join");
    b.post(&room_path(&room, "leave"), json!({})).await?.ok()?;
    ensure!(membership_of(&a, &room, &b.user_id).await? == "leave");
    Ok(())
}

async fn join_by_alias(ctx: Ctx) -> Result<()> {
    let a = ctx.register("mja").await?;
    let b = ctx.register("mjab").await?;
    let local = random_name("joinalias");
    let room = a
        .create_room(json!({"preset": "public_chat", "room_alias_name": local}))
        .await?;
    let alias = format!("#{local}:{}", a.server_name());
    let r = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            json!({}),
        )
        .await?;
    ensure!(r.ok()?["room_id"] == room.as_str(), "{}", r.body);
    Ok(())
}

async fn invite_then_join(ctx: Ctx) -> Result<()> {
    let a = ctx.register("mi").await?;
    let b = ctx.register("mib").await?;
    let room = a.create_room(json!({})).await?;
    a.invite(&room, &b.user_id).await?;
    ensure!(membership_of(&a, &room, &b.user_id).await? == "invite");
    b.join(&room).await?;
    ensure!(membership_of(&a, &room, &b.user_id).await? == "join");
    Ok(())
}

async fn invite_only_room_refuses_uninvited(ctx: Ctx) -> Result<()> {
    let a = ctx.register("mio").await?;
    let b = ctx.register("miob").await?;
    let room = a.create_room(json!({"preset": "private_chat"})).await?;
    b.post(&room_path(&room, "join"), json!({}))
        .await?
        .expect(403, Some("M_FORBIDDEN"))?;
    Ok(())
}

async fn kick_with_reason(ctx: Ctx) -> Result<()> {
    let (a, b, room) = ctx.public_room_pair("mk").await?;
    a.post(
        &room_path(&room, "kick"),
        json!({"user_id": b.user_id, "reason": "spam"}),
    )
    .await?
    .ok()?;
    let m = a.state_content(&room, "m.room.member", &b.user_id).await?;
    ensure!(m["membership"] == "leave" && m["reason"] == "spam", "{m}");
    Ok(())
}

async fn ban_blocks_join_and_unban_allows_invite(ctx: Ctx) -> Result<()> {
    let (a, b, room) = ctx.public_room_pair("mb").await?;
    a.post(
        &room_path(&room, "ban"),
        json!({"user_id": b.user_id, "reason": "bye"}),
    )
    .await?
    .ok()?;
    ensure!(membership_of(&a, &room, &b.user_id).await? == "ban");
    // 403; the errcode varies (Synapse: M_BAD_STATE).
    b.post(&room_path(&room, "join"), json!({}))
        .await?
        .expect(403, None)?;
    a.post(&room_path(&room, "unban"), json!({"user_id": b.user_id}))
        .await?
        .ok()?;
    ensure!(membership_of(&a, &room, &b.user_id).await? == "leave");
    b.join(&room).await?;
    Ok(())
}

async fn insufficient_power_cannot_kick(ctx: Ctx) -> Result<()> {
    let (a, b, room) = ctx.public_room_pair("mp").await?;
    b.post(&room_path(&room, "kick"), json!({"user_id": a.user_id}))
        .await?
        .expect(403, Some("M_FORBIDDEN"))?;
    ensure!(membership_of(&a, &room, &a.user_id).await? == "join");
    Ok(())
}

async fn non_member_cannot_invite(ctx: Ctx) -> Result<()> {
    let a = ctx.register("mn").await?;
    let b = ctx.register("mnb").await?;
    let c = ctx.register("mnc").await?;
    let room = a.create_room(json!({})).await?;
    b.post(&room_path(&room, "invite"), json!({"user_id": c.user_id}))
        .await?
        .expect(403, Some("M_FORBIDDEN"))?;
    Ok(())
}

async fn non_member_cannot_send(ctx: Ctx) -> Result<()> {
    let a = ctx.register("ms").await?;
    let b = ctx.register("msb").await?;
    let room = a.create_room(json!({"preset": "public_chat"})).await?;
    let r = b
        .put(
            &format!("{}/m.room.message/x1", room_path(&room, "send")),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await?;
    r.expect(403, Some("M_FORBIDDEN"))?;
    Ok(())
}

async fn non_member_cannot_read_private_history(ctx: Ctx) -> Result<()> {
    let a = ctx.register("mr").await?;
    let b = ctx.register("mrb").await?;
    let room = a.create_room(json!({"preset": "private_chat"})).await?;
    a.send_text(&room, "secret").await?;
    b.get(&format!("{}?dir=b", room_path(&room, "messages")))
        .await?
        .expect(403, Some("M_FORBIDDEN"))?;
    Ok(())
}

async fn joined_rooms_lists_rooms(ctx: Ctx) -> Result<()> {
    let a = ctx.register("mjr").await?;
    let r1 = a.create_room(json!({})).await?;
    let r2 = a.create_room(json!({})).await?;
    let r = a.get("/_matrix/client/v3/joined_rooms").await?;
    let rooms = r.ok()?["joined_rooms"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        rooms.contains(&json!(r1)) && rooms.contains(&json!(r2)),
        "{}",
        r.body
    );
    Ok(())
}

async fn forget_after_leave(ctx: Ctx) -> Result<()> {
    let a = ctx.register("mf").await?;
    let room = a.create_room(json!({})).await?;
    a.post(&room_path(&room, "leave"), json!({})).await?.ok()?;
    a.post(&room_path(&room, "forget"), json!({})).await?.ok()?;
    let r = a.get("/_matrix/client/v3/joined_rooms").await?;
    ensure!(
        !r.ok()?["joined_rooms"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(room))),
        "{}",
        r.body
    );
    Ok(())
}
