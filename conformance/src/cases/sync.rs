use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::client::{Ctx, User, enc, room_path};

crate::cases!(
    initial_sync_has_room_state_and_timeline,
    incremental_sync_returns_only_new_events,
    long_poll_wakes_on_message,
    long_poll_times_out_when_idle,
    timeline_limit_sets_limited_and_prev_batch,
    lazy_load_members_includes_senders,
    full_state_returns_state,
    filter_upload_and_get,
    filter_id_applies_to_sync,
    leave_appears_in_leave_section,
    set_presence_parameter_accepted,
);

fn timeline_bodies(body: &Value, room: &str) -> Vec<String> {
    User::timeline(body, room)
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The events of a joined room in a sync: its state, then its timeline.
fn state_and_timeline(joined: &Value) -> impl Iterator<Item = &Value> {
    let events = |part: &str| joined[part]["events"].as_array().into_iter().flatten();
    events("state").chain(events("timeline"))
}

async fn initial_sync_has_room_state_and_timeline(ctx: Ctx) -> Result<()> {
    let mut u = ctx.register("sy").await?;
    let room = u.create_room(json!({"name": "synced"})).await?;
    u.send_text(&room, "hello").await?;
    let body = u.sync("").await?;
    ensure!(body["next_batch"].is_string(), "{body}");
    let joined = &body["rooms"]["join"][&room];
    ensure!(joined.is_object(), "room missing from sync: {body}");
    let mut types: Vec<String> = state_and_timeline(joined)
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    types.sort();
    ensure!(
        types.iter().any(|t| t == "m.room.create") && types.iter().any(|t| t == "m.room.name"),
        "{types:?}"
    );
    ensure!(timeline_bodies(&body, &room) == ["hello"], "{body}");
    Ok(())
}

async fn incremental_sync_returns_only_new_events(ctx: Ctx) -> Result<()> {
    let mut u = ctx.register("syi").await?;
    let room = u.create_room(json!({})).await?;
    u.send_text(&room, "old").await?;
    u.sync("").await?;
    u.send_text(&room, "new").await?;
    let body = u
        .sync_until(10, "", |b| b["rooms"]["join"][&room].is_object())
        .await?;
    ensure!(timeline_bodies(&body, &room) == ["new"], "{body}");
    Ok(())
}

async fn long_poll_wakes_on_message(ctx: Ctx) -> Result<()> {
    let mut reader = ctx.register("lp").await?;
    let writer = ctx.register("lpw").await?;
    let room = writer.create_room(json!({"preset": "public_chat"})).await?;
    reader.join(&room).await?;
    reader.sync("").await?;
    let since = reader.since.clone().unwrap_or_default();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        writer.send_text(&room, "wake up").await
    });
    // A long-poll may also return early for other news (the writer's
    // presence, say): a client then polls again from the new position.
    let start = Instant::now();
    let mut since = since;
    let r = loop {
        let r = reader
            .get(&format!(
                "/_matrix/client/v3/sync?timeout=20000&since={}",
                enc(&since)
            ))
            .await?;
        r.ok()?;
        let joined = r.body["rooms"]["join"]
            .as_object()
            .is_some_and(|j| !j.is_empty());
        if joined || start.elapsed() >= Duration::from_secs(10) {
            break r;
        }
        since = r.body["next_batch"].as_str().unwrap_or_default().to_owned();
    };
    let waited = start.elapsed();
    send.await??;
    ensure!(
        waited < Duration::from_secs(10),
        "long-poll took {waited:?}"
    );
    ensure!(
        r.body["rooms"]["join"]
            .as_object()
            .is_some_and(|j| !j.is_empty()),
        "{}",
        r.body
    );
    Ok(())
}

async fn long_poll_times_out_when_idle(ctx: Ctx) -> Result<()> {
    let mut u = ctx.register("lpt").await?;
    u.sync("").await?;
    let since = u.since.clone().unwrap_or_default();
    let start = Instant::now();
    let r = u
        .get(&format!(
            "/_matrix/client/v3/sync?timeout=1000&since={}",
            enc(&since)
        ))
        .await?;
    r.ok()?;
    ensure!(
        start.elapsed() >= Duration::from_millis(800),
        "returned after {:?}",
        start.elapsed()
    );
    ensure!(r.body["next_batch"].is_string());
    Ok(())
}

async fn timeline_limit_sets_limited_and_prev_batch(ctx: Ctx) -> Result<()> {
    let mut u = ctx.register("syl").await?;
    let room = u.create_room(json!({})).await?;
    for i in 0..5 {
        u.send_text(&room, &format!("n{i}")).await?;
    }
    let filter = enc(r#"{"room":{"timeline":{"limit":2}}}"#);
    let body = u.sync(&format!("filter={filter}")).await?;
    let tl = &body["rooms"]["join"][&room]["timeline"];
    ensure!(tl["limited"] == true, "{tl}");
    ensure!(timeline_bodies(&body, &room) == ["n3", "n4"], "{tl}");
    let prev = tl["prev_batch"].as_str().unwrap_or_default();
    let r = u
        .get(&room_path(
            &room,
            &format!("messages?dir=b&limit=2&from={}", enc(prev)),
        ))
        .await?;
    let older: Vec<&str> = r.ok()?["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    ensure!(older == ["n2", "n1"], "{}", r.body);
    Ok(())
}

async fn lazy_load_members_includes_senders(ctx: Ctx) -> Result<()> {
    let a = ctx.register("ll").await?;
    let mut b = ctx.register("llb").await?;
    let c = ctx.register("llc").await?;
    let room = a.create_room(json!({"preset": "public_chat"})).await?;
    b.join(&room).await?;
    c.join(&room).await?;
    c.send_text(&room, "from c").await?;
    let filter = enc(r#"{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}"#);
    let body = b.sync(&format!("filter={filter}")).await?;
    let joined = &body["rooms"]["join"][&room];
    let members: Vec<&str> = state_and_timeline(joined)
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    ensure!(
        members.contains(&c.user_id.as_str()),
        "sender's member event missing: {members:?}"
    );
    Ok(())
}

async fn full_state_returns_state(ctx: Ctx) -> Result<()> {
    let mut u = ctx.register("syf").await?;
    let room = u.create_room(json!({"name": "full"})).await?;
    u.sync("").await?;
    let body = u.sync("full_state=true").await?;
    let state = body["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tl = User::timeline(&body, &room);
    ensure!(
        state
            .iter()
            .chain(tl.iter())
            .any(|e| e["type"] == "m.room.name"),
        "full_state lacks m.room.name: {body}"
    );
    Ok(())
}

async fn filter_upload_and_get(ctx: Ctx) -> Result<()> {
    let u = ctx.register("flt").await?;
    let filter = json!({"room": {"timeline": {"limit": 7}}});
    let r = u
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&u.user_id)),
            filter.clone(),
        )
        .await?;
    let id = r.str("filter_id")?;
    let got = u
        .get(&format!(
            "/_matrix/client/v3/user/{}/filter/{}",
            enc(&u.user_id),
            enc(&id)
        ))
        .await?;
    ensure!(got.ok()?["room"]["timeline"]["limit"] == 7, "{}", got.body);
    Ok(())
}

async fn filter_id_applies_to_sync(ctx: Ctx) -> Result<()> {
    let mut u = ctx.register("flta").await?;
    let room = u.create_room(json!({})).await?;
    for i in 0..4 {
        u.send_text(&room, &format!("f{i}")).await?;
    }
    let r = u
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&u.user_id)),
            json!({"room": {"timeline": {"limit": 1}}}),
        )
        .await?;
    let id = r.str("filter_id")?;
    let body = u.sync(&format!("filter={}", enc(&id))).await?;
    ensure!(timeline_bodies(&body, &room) == ["f3"], "{body}");
    Ok(())
}

async fn leave_appears_in_leave_section(ctx: Ctx) -> Result<()> {
    let (_, mut b, room) = ctx.public_room_pair("syv").await?;
    b.sync("").await?;
    b.post(&room_path(&room, "leave"), json!({})).await?.ok()?;
    b.sync_until(10, "", |body| body["rooms"]["leave"][&room].is_object())
        .await?;
    Ok(())
}

async fn set_presence_parameter_accepted(ctx: Ctx) -> Result<()> {
    let u = ctx.register("sp").await?;
    u.get("/_matrix/client/v3/sync?set_presence=unavailable")
        .await?
        .ok()?;
    u.get("/_matrix/client/v3/sync?set_presence=offline")
        .await?
        .ok()?;
    Ok(())
}
