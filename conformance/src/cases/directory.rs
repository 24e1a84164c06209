use anyhow::{Result, ensure};
use serde_json::json;

use crate::client::{Ctx, enc, random_name, room_path};

crate::cases!(
    alias_create_resolve_delete,
    alias_duplicate_conflicts,
    alias_unknown_404,
    room_aliases_lists_alias,
    public_rooms_lists_published_room,
    public_rooms_search_term,
    room_visibility_roundtrip,
    user_directory_finds_room_mates,
    user_directory_hides_strangers,
    user_directory_does_not_find_the_searcher_through_private_rooms,
);

async fn alias_create_resolve_delete(ctx: Ctx) -> Result<()> {
    let u = ctx.register("al").await?;
    let room = u.create_room(json!({})).await?;
    let alias = format!("#{}:{}", random_name("al"), u.server_name());
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));
    u.put(&path, json!({"room_id": room})).await?.ok()?;
    let r = u.get(&path).await?;
    ensure!(r.ok()?["room_id"] == room.as_str(), "{}", r.body);
    ensure!(
        r.body["servers"].as_array().is_some_and(|s| !s.is_empty()),
        "{}",
        r.body
    );
    u.delete(&path).await?.ok()?;
    u.get(&path).await?.expect(404, Some("M_NOT_FOUND"))?;
    Ok(())
}

async fn alias_duplicate_conflicts(ctx: Ctx) -> Result<()> {
    let u = ctx.register("ald").await?;
    let room = u.create_room(json!({})).await?;
    let alias = format!("#{}:{}", random_name("ald"), u.server_name());
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));
    u.put(&path, json!({"room_id": room})).await?.ok()?;
    u.put(&path, json!({"room_id": room}))
        .await?
        .expect(409, None)?;
    Ok(())
}

async fn alias_unknown_404(ctx: Ctx) -> Result<()> {
    let u = ctx.register("alu").await?;
    let alias = format!("#{}:{}", random_name("none"), u.server_name());
    u.get(&format!(
        "/_matrix/client/v3/directory/room/{}",
        enc(&alias)
    ))
    .await?
    .expect(404, Some("M_NOT_FOUND"))?;
    Ok(())
}

async fn room_aliases_lists_alias(ctx: Ctx) -> Result<()> {
    let u = ctx.register("ala").await?;
    let local = random_name("ala");
    let room = u.create_room(json!({"room_alias_name": local})).await?;
    let r = u.get(&room_path(&room, "aliases")).await?;
    let alias = format!("#{local}:{}", u.server_name());
    ensure!(
        r.ok()?["aliases"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(alias))),
        "{}",
        r.body
    );
    Ok(())
}

async fn public_rooms_lists_published_room(ctx: Ctx) -> Result<()> {
    let u = ctx.register("pr").await?;
    let name = random_name("Public ");
    let room = u
        .create_room(json!({"preset": "public_chat", "visibility": "public", "name": name}))
        .await?;
    let filter = json!({"limit": 500, "filter": {"generic_search_term": name}});
    let r = u.post("/_matrix/client/v3/publicRooms", filter).await?;
    let chunk = r.ok()?["chunk"].as_array().cloned().unwrap_or_default();
    let entry = chunk.iter().find(|e| e["room_id"] == room.as_str());
    ensure!(
        entry.is_some_and(|e| e["name"] == name.as_str() && e["num_joined_members"] == 1),
        "{}",
        r.body
    );
    let r = ctx.get("/_matrix/client/v3/publicRooms?limit=1").await?;
    ensure!(r.ok()?["chunk"].is_array(), "{}", r.body);
    Ok(())
}

async fn public_rooms_search_term(ctx: Ctx) -> Result<()> {
    let u = ctx.register("prs").await?;
    let topic = random_name("topicword");
    let room = u
        .create_room(json!({"preset": "public_chat", "visibility": "public", "topic": topic}))
        .await?;
    u.create_room(json!({"preset": "public_chat", "visibility": "public", "topic": "unrelated"}))
        .await?;
    let r = u
        .post(
            "/_matrix/client/v3/publicRooms",
            json!({"filter": {"generic_search_term": topic}}),
        )
        .await?;
    let chunk = r.ok()?["chunk"].as_array().cloned().unwrap_or_default();
    ensure!(
        chunk.len() == 1 && chunk[0]["room_id"] == room.as_str(),
        "{}",
        r.body
    );
    Ok(())
}

async fn room_visibility_roundtrip(ctx: Ctx) -> Result<()> {
    let u = ctx.register("vis").await?;
    let room = u.create_room(json!({})).await?;
    let path = format!("/_matrix/client/v3/directory/list/room/{}", enc(&room));
    ensure!(u.get(&path).await?.ok()?["visibility"] == "private");
    u.put(&path, json!({"visibility": "public"})).await?.ok()?;
    ensure!(u.get(&path).await?.ok()?["visibility"] == "public");
    Ok(())
}

async fn user_directory_finds_room_mates(ctx: Ctx) -> Result<()> {
    let a = ctx.register("ud").await?;
    let b = ctx.register("udb").await?;
    let room = a.create_room(json!({})).await?;
    a.invite(&room, &b.user_id).await?;
    b.join(&room).await?;
    let display = random_name("Findable ");
    b.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&b.user_id)),
        json!({"displayname": display}),
    )
    .await?
    .ok()?;
    // Directories may update asynchronously: poll briefly.
    for _ in 0..50 {
        let r = a
            .post(
                "/_matrix/client/v3/user_directory/search",
                json!({"search_term": display}),
            )
            .await?;
        if r.ok()?["results"]
            .as_array()
            .is_some_and(|res| res.iter().any(|x| x["user_id"] == b.user_id.as_str()))
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    anyhow::bail!("room mate not found in user directory")
}

async fn user_directory_hides_strangers(ctx: Ctx) -> Result<()> {
    let a = ctx.register("uds").await?;
    let b = ctx.register("udsb").await?;
    let r = a
        .post(
            "/_matrix/client/v3/user_directory/search",
            json!({"search_term": b.localpart}),
        )
        .await?;
    ensure!(
        !r.ok()?["results"]
            .as_array()
            .is_some_and(|res| res.iter().any(|x| x["user_id"] == b.user_id.as_str())),
        "stranger visible: {}",
        r.body
    );
    Ok(())
}

/// The searcher shares a private room only with others, not with
/// themselves: searching their own name finds nobody (SyTest
/// 52user-directory; Synapse answers so), while the room mate finds them.
async fn user_directory_does_not_find_the_searcher_through_private_rooms(ctx: Ctx) -> Result<()> {
    let a = ctx.register("udself").await?;
    let b = ctx.register("udselfb").await?;
    let room = a
        .create_room(json!({"preset": "private_chat", "invite": [b.user_id]}))
        .await?;
    b.join(&room).await?;
    let display = random_name("Selfsearch ");
    a.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&a.user_id)),
        json!({"displayname": display}),
    )
    .await?
    .ok()?;
    let finds_a = |r: &serde_json::Value| {
        r["results"]
            .as_array()
            .is_some_and(|res| res.iter().any(|x| x["user_id"] == a.user_id.as_str()))
    };
    let search = json!({"search_term": display});
    // Directories may update asynchronously: wait until the mate sees a.
    let mut seen = false;
    for _ in 0..50 {
        let r = b
            .post("/_matrix/client/v3/user_directory/search", search.clone())
            .await?;
        if finds_a(r.ok()?) {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    ensure!(seen, "the room mate never found the user");
    let r = a
        .post("/_matrix/client/v3/user_directory/search", search)
        .await?;
    ensure!(
        !finds_a(r.ok()?),
        "the searcher found themselves: {}",
        r.body
    );
    Ok(())
}
