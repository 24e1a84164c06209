use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::client::{Ctx, User, enc, room_path};

crate::cases!(
    send_returns_event_id,
    send_same_txn_is_idempotent,
    send_different_txn_differs,
    state_put_get_and_list,
    state_missing_is_404,
    members_and_joined_members,
    get_event_by_id,
    get_unknown_event_404,
    context_has_before_and_after,
    messages_backwards_and_forwards,
    messages_paginate_with_end_token,
    messages_filter_by_type,
    messages_filter_not_senders,
    redaction_strips_content,
    cannot_redact_others_without_power,
);

async fn room_with_messages(ctx: &Ctx, n: usize) -> Result<(User, String, Vec<String>)> {
    let u = ctx.register("msg").await?;
    let room = u.create_room(json!({})).await?;
    let mut ids = vec![];
    for i in 0..n {
        ids.push(u.send_text(&room, &format!("m{i}")).await?);
    }
    Ok((u, room, ids))
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn send_returns_event_id(ctx: Ctx) -> Result<()> {
    let (_, _, ids) = room_with_messages(&ctx, 1).await?;
    ensure!(ids[0].starts_with('$'), "{}", ids[0]);
    Ok(())
}

async fn send_same_txn_is_idempotent(ctx: Ctx) -> Result<()> {
    let u = ctx.register("txn").await?;
    let room = u.create_room(json!({})).await?;
    let path = room_path(&room, "send/m.room.message/same-txn");
    let a = u
        .put(&path, json!({"msgtype": "m.text", "body": "once"}))
        .await?
        .str("event_id")?;
    let b = u
        .put(&path, json!({"msgtype": "m.text", "body": "once"}))
        .await?
        .str("event_id")?;
    ensure!(a == b, "{a} != {b}");
    let r = u.get(&room_path(&room, "messages?dir=b&limit=50")).await?;
    ensure!(
        bodies(&r.ok()?["chunk"]) == vec!["once".to_owned()],
        "{}",
        r.body
    );
    Ok(())
}

async fn send_different_txn_differs(ctx: Ctx) -> Result<()> {
    let (_, _, ids) = room_with_messages(&ctx, 2).await?;
    ensure!(ids[0] != ids[1]);
    Ok(())
}

async fn state_put_get_and_list(ctx: Ctx) -> Result<()> {
    let u = ctx.register("st").await?;
    let room = u.create_room(json!({})).await?;
    u.put(
        &room_path(&room, "state/m.room.name"),
        json!({"name": "No key"}),
    )
    .await?
    .ok()?;
    u.put_state(&room, "org.example.thing", "key1", json!({"a": 1}))
        .await?;
    ensure!(u.state_content(&room, "m.room.name", "").await?["name"] == "No key");
    ensure!(u.state_content(&room, "org.example.thing", "key1").await?["a"] == 1);
    let r = u.get(&room_path(&room, "state")).await?;
    let all = r.ok()?.as_array().cloned().unwrap_or_default();
    ensure!(
        all.iter().any(|e| e["type"] == "m.room.create"),
        "no create in state"
    );
    ensure!(
        all.iter()
            .any(|e| e["type"] == "org.example.thing" && e["state_key"] == "key1")
    );
    Ok(())
}

async fn state_missing_is_404(ctx: Ctx) -> Result<()> {
    let u = ctx.register("st404").await?;
    let room = u.create_room(json!({})).await?;
    u.get(&room_path(&room, "state/org.example.none/"))
        .await?
        .expect(404, Some("M_NOT_FOUND"))?;
    Ok(())
}

async fn members_and_joined_members(ctx: Ctx) -> Result<()> {
    let (a, b, room) = ctx.public_room_pair("mem").await?;
    let r = a.get(&room_path(&room, "members")).await?;
    let chunk = r.ok()?["chunk"].as_array().cloned().unwrap_or_default();
    ensure!(
        chunk
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .count()
            >= 2,
        "{}",
        r.body
    );
    let r = a.get(&room_path(&room, "joined_members")).await?;
    let joined = &r.ok()?["joined"];
    ensure!(
        joined[&a.user_id].is_object() && joined[&b.user_id].is_object(),
        "{joined}"
    );
    ensure!(
        joined[&b.user_id]["display_name"] == b.localpart.as_str(),
        "{joined}"
    );
    Ok(())
}

async fn get_event_by_id(ctx: Ctx) -> Result<()> {
    let (u, room, ids) = room_with_messages(&ctx, 1).await?;
    let r = u
        .get(&room_path(&room, &format!("event/{}", enc(&ids[0]))))
        .await?;
    let ev = r.ok()?;
    ensure!(
        ev["event_id"] == ids[0].as_str()
            && ev["content"]["body"] == "m0"
            && ev["sender"] == u.user_id.as_str(),
        "{ev}"
    );
    Ok(())
}

async fn get_unknown_event_404(ctx: Ctx) -> Result<()> {
    let (u, room, _) = room_with_messages(&ctx, 0).await?;
    u.get(&room_path(
        &room,
        &format!("event/{}", enc("$doesnotexist")),
    ))
    .await?
    .expect(404, Some("M_NOT_FOUND"))?;
    Ok(())
}

async fn context_has_before_and_after(ctx: Ctx) -> Result<()> {
    let (u, room, ids) = room_with_messages(&ctx, 5).await?;
    let r = u
        .get(&room_path(
            &room,
            &format!("context/{}?limit=4", enc(&ids[2])),
        ))
        .await?;
    let c = r.ok()?;
    ensure!(c["event"]["event_id"] == ids[2].as_str(), "{c}");
    ensure!(
        bodies(&c["events_before"]).first().map(String::as_str) == Some("m1"),
        "{c}"
    );
    ensure!(
        bodies(&c["events_after"]).first().map(String::as_str) == Some("m3"),
        "{c}"
    );
    ensure!(
        c["start"].is_string() && c["end"].is_string() && c["state"].is_array(),
        "{c}"
    );
    Ok(())
}

async fn messages_backwards_and_forwards(ctx: Ctx) -> Result<()> {
    let (u, room, _) = room_with_messages(&ctx, 6).await?;
    let r = u.get(&room_path(&room, "messages?dir=b&limit=3")).await?;
    ensure!(
        bodies(&r.ok()?["chunk"]) == ["m5", "m4", "m3"],
        "{}",
        r.body
    );
    let r = u.get(&room_path(&room, "messages?dir=f&limit=100")).await?;
    let fwd = bodies(&r.ok()?["chunk"]);
    ensure!(fwd == ["m0", "m1", "m2", "m3", "m4", "m5"], "{fwd:?}");
    Ok(())
}

async fn messages_paginate_with_end_token(ctx: Ctx) -> Result<()> {
    let (u, room, _) = room_with_messages(&ctx, 6).await?;
    let r = u.get(&room_path(&room, "messages?dir=b&limit=2")).await?;
    let end = r.str("end")?;
    let r2 = u
        .get(&room_path(
            &room,
            &format!("messages?dir=b&limit=2&from={}", enc(&end)),
        ))
        .await?;
    ensure!(bodies(&r2.ok()?["chunk"]) == ["m3", "m2"], "{}", r2.body);
    // And forwards again from the second page's start returns the newer events.
    let start = r2.str("start")?;
    let r3 = u
        .get(&room_path(
            &room,
            &format!("messages?dir=f&limit=2&from={}", enc(&start)),
        ))
        .await?;
    ensure!(bodies(&r3.ok()?["chunk"]) == ["m4", "m5"], "{}", r3.body);
    Ok(())
}

async fn messages_filter_by_type(ctx: Ctx) -> Result<()> {
    let (u, room, _) = room_with_messages(&ctx, 2).await?;
    u.send(&room, "org.example.other", json!({"x": 1})).await?;
    let filter = enc(r#"{"types":["org.example.other"]}"#);
    let r = u
        .get(&room_path(
            &room,
            &format!("messages?dir=b&limit=10&filter={filter}"),
        ))
        .await?;
    let chunk = r.ok()?["chunk"].as_array().cloned().unwrap_or_default();
    ensure!(
        !chunk.is_empty() && chunk.iter().all(|e| e["type"] == "org.example.other"),
        "{}",
        r.body
    );
    Ok(())
}

async fn messages_filter_not_senders(ctx: Ctx) -> Result<()> {
    let (a, b, room) = ctx.public_room_pair("fns").await?;
    a.send_text(&room, "from a").await?;
    b.send_text(&room, "from b").await?;
    let filter = enc(&json!({"not_senders": [a.user_id]}).to_string());
    let r = b
        .get(&room_path(
            &room,
            &format!("messages?dir=b&limit=20&filter={filter}"),
        ))
        .await?;
    let chunk = r.ok()?["chunk"].as_array().cloned().unwrap_or_default();
    ensure!(
        chunk.iter().all(|e| e["sender"] != a.user_id.as_str()),
        "{}",
        r.body
    );
    ensure!(bodies(&r.body["chunk"]) == ["from b"], "{}", r.body);
    Ok(())
}

async fn redaction_strips_content(ctx: Ctx) -> Result<()> {
    let (u, room, ids) = room_with_messages(&ctx, 1).await?;
    let r = u
        .put(
            &room_path(&room, &format!("redact/{}/rtxn", enc(&ids[0]))),
            json!({"reason": "oops"}),
        )
        .await?;
    let redaction = r.str("event_id")?;
    ensure!(redaction.starts_with('$'));
    let ev = u
        .get(&room_path(&room, &format!("event/{}", enc(&ids[0]))))
        .await?;
    let ev = ev.ok()?;
    ensure!(
        ev["content"].as_object().is_some_and(|c| c.is_empty()),
        "content kept: {ev}"
    );
    ensure!(
        ev["unsigned"]["redacted_because"]["event_id"] == redaction.as_str(),
        "{ev}"
    );
    Ok(())
}

async fn cannot_redact_others_without_power(ctx: Ctx) -> Result<()> {
    let (a, b, room) = ctx.public_room_pair("rdp").await?;
    let id = a.send_text(&room, "mine").await?;
    b.put(
        &room_path(&room, &format!("redact/{}/x", enc(&id))),
        json!({}),
    )
    .await?
    .expect(403, Some("M_FORBIDDEN"))?;
    Ok(())
}
