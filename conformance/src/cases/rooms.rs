use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::client::{Ctx, enc, random_name};

crate::cases!(
    create_private_chat_is_invite_only,
    create_public_chat_is_public,
    create_trusted_private_chat_gives_invitee_power,
    create_with_name_and_topic,
    create_with_invite_reaches_invitee,
    create_is_direct_marks_invite,
    create_with_initial_state,
    create_with_alias_resolves,
    create_with_power_level_override,
    create_with_room_version_10,
    create_with_unknown_version_rejected,
    create_with_taken_alias_rejected,
);

async fn create_private_chat_is_invite_only(ctx: Ctx) -> Result<()> {
    let u = ctx.register("rp").await?;
    let room = u.create_room(json!({"preset": "private_chat"})).await?;
    let jr = u.state_content(&room, "m.room.join_rules", "").await?;
    ensure!(jr["join_rule"] == "invite", "{jr}");
    Ok(())
}

async fn create_public_chat_is_public(ctx: Ctx) -> Result<()> {
    let u = ctx.register("rpub").await?;
    let room = u.create_room(json!({"preset": "public_chat"})).await?;
    let jr = u.state_content(&room, "m.room.join_rules", "").await?;
    ensure!(jr["join_rule"] == "public", "{jr}");
    let other = ctx.register("rpubjoin").await?;
    other.join(&room).await?;
    Ok(())
}

async fn create_trusted_private_chat_gives_invitee_power(ctx: Ctx) -> Result<()> {
    let u = ctx.register("rt").await?;
    let friend = ctx.register("rtf").await?;
    let room = u
        .create_room(json!({"preset": "trusted_private_chat", "invite": [friend.user_id]}))
        .await?;
    // Before v12 the invitee gets power 100; from v12 it becomes an additional creator.
    let pl = u.state_content(&room, "m.room.power_levels", "").await?;
    let create = u.state_content(&room, "m.room.create", "").await?;
    let co_creator = create["additional_creators"]
        .as_array()
        .is_some_and(|a| a.contains(&json!(friend.user_id)));
    ensure!(
        pl["users"][&friend.user_id] == 100 || co_creator,
        "{pl} {create}"
    );
    Ok(())
}

async fn create_with_name_and_topic(ctx: Ctx) -> Result<()> {
    let u = ctx.register("rn").await?;
    let room = u
        .create_room(json!({"name": "The Name", "topic": "The Topic"}))
        .await?;
    ensure!(u.state_content(&room, "m.room.name", "").await?["name"] == "The Name");
    ensure!(u.state_content(&room, "m.room.topic", "").await?["topic"] == "The Topic");
    Ok(())
}

async fn create_with_invite_reaches_invitee(ctx: Ctx) -> Result<()> {
    let u = ctx.register("ri").await?;
    let mut friend = ctx.register("rif").await?;
    let room = u
        .create_room(json!({"invite": [friend.user_id], "name": "inv"}))
        .await?;
    let body = friend
        .sync_until(15, "", |b| b["rooms"]["invite"][&room].is_object())
        .await?;
    let stripped = body["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        stripped
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == friend.user_id.as_str()),
        "invite_state lacks the invite: {stripped:?}"
    );
    Ok(())
}

async fn create_is_direct_marks_invite(ctx: Ctx) -> Result<()> {
    let u = ctx.register("rd").await?;
    let friend = ctx.register("rdf").await?;
    let room = u
        .create_room(json!({"invite": [friend.user_id], "is_direct": true}))
        .await?;
    let member = u
        .state_content(&room, "m.room.member", &friend.user_id)
        .await?;
    ensure!(
        member["membership"] == "invite" && member["is_direct"] == true,
        "{member}"
    );
    Ok(())
}

async fn create_with_initial_state(ctx: Ctx) -> Result<()> {
    let u = ctx.register("ris").await?;
    let room = u
        .create_room(json!({"initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}},
            {"type": "org.example.custom", "state_key": "k", "content": {"v": 1}}]}))
        .await?;
    ensure!(
        u.state_content(&room, "m.room.history_visibility", "")
            .await?["history_visibility"]
            == "joined"
    );
    ensure!(u.state_content(&room, "org.example.custom", "k").await?["v"] == 1);
    Ok(())
}

async fn create_with_alias_resolves(ctx: Ctx) -> Result<()> {
    let u = ctx.register("ra").await?;
    let local = random_name("alias");
    let room = u.create_room(json!({"room_alias_name": local})).await?;
    let alias = format!("#{local}:{}", u.server_name());
    let r = u
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&alias)
        ))
        .await?;
    ensure!(r.ok()?["room_id"] == room.as_str(), "{}", r.body);
    ensure!(u.state_content(&room, "m.room.canonical_alias", "").await?["alias"] == alias.as_str());
    Ok(())
}

async fn create_with_power_level_override(ctx: Ctx) -> Result<()> {
    let u = ctx.register("rpl").await?;
    let room = u
        .create_room(json!({"power_level_content_override": {"events_default": 42, "kick": 77}}))
        .await?;
    let pl = u.state_content(&room, "m.room.power_levels", "").await?;
    ensure!(pl["events_default"] == 42 && pl["kick"] == 77, "{pl}");
    Ok(())
}

async fn create_with_room_version_10(ctx: Ctx) -> Result<()> {
    let u = ctx.register("rv").await?;
    let room = u.create_room(json!({"room_version": "10"})).await?;
    let create: Value = u.state_content(&room, "m.room.create", "").await?;
    ensure!(create["room_version"] == "10", "{create}");
    Ok(())
}

async fn create_with_unknown_version_rejected(ctx: Ctx) -> Result<()> {
    let u = ctx.register("rvx").await?;
    u.post(
        "/_matrix/client/v3/createRoom",
        json!({"room_version": "999"}),
    )
    .await?
    .expect(400, Some("M_UNSUPPORTED_ROOM_VERSION"))?;
    Ok(())
}

async fn create_with_taken_alias_rejected(ctx: Ctx) -> Result<()> {
    let u = ctx.register("rat").await?;
    let local = random_name("dupalias");
    u.create_room(json!({"room_alias_name": local})).await?;
    u.post(
        "/_matrix/client/v3/createRoom",
        json!({"room_alias_name": local}),
    )
    .await?
    .expect(400, Some("M_ROOM_IN_USE"))?;
    Ok(())
}
