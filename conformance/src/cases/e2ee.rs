use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::client::{Ctx, User, enc};

crate::cases!(
    keys_upload_query_and_claim,
    keys_for_another_device_are_refused,
    to_device_is_delivered_once_per_transaction,
    key_backup_counts_and_versions
);

fn device_keys(u: &User, curve: &str) -> Value {
    json!({
        "user_id": u.user_id,
        "device_id": u.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", u.device_id): curve,
            format!("ed25519:{}", u.device_id): format!("ed-{curve}"),
        },
        "signatures": {},
    })
}

async fn keys_upload_query_and_claim(ctx: Ctx) -> Result<()> {
    let alice = ctx.register("keysa").await?;
    let bob = ctx.register("keysb").await?;
    let r = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys(&alice, "curveA"),
                "one_time_keys": {
                    "signed_curve25519:AAAAAQ": {"key": "one", "signatures": {}},
                    "signed_curve25519:AAAAAg": {"key": "two", "signatures": {}},
                },
            }),
        )
        .await?;
    ensure!(
        r.ok()?["one_time_key_counts"]["signed_curve25519"] == 2,
        "{}",
        r.body
    );
    let r = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {alice.user_id.clone(): []}}),
        )
        .await?;
    let keys = &r.ok()?["device_keys"][&alice.user_id][&alice.device_id]["keys"];
    ensure!(
        keys[format!("curve25519:{}", alice.device_id)] == "curveA",
        "{}",
        r.body
    );
    let r = bob
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}}),
        )
        .await?;
    let claimed = r.ok()?["one_time_keys"][&alice.user_id][&alice.device_id]
        .as_object()
        .cloned()
        .unwrap_or_default();
    ensure!(claimed.len() == 1, "{}", r.body);
    let r = alice
        .post("/_matrix/client/v3/keys/upload", json!({}))
        .await?;
    ensure!(
        r.ok()?["one_time_key_counts"]["signed_curve25519"] == 1,
        "{}",
        r.body
    );
    Ok(())
}

async fn keys_for_another_device_are_refused(ctx: Ctx) -> Result<()> {
    let u = ctx.register("keysbad").await?;
    let mut keys = device_keys(&u, "curve");
    keys["device_id"] = json!("SOMEONEELSE");
    u.post(
        "/_matrix/client/v3/keys/upload",
        json!({"device_keys": keys}),
    )
    .await?
    .expect(400, None)?;
    Ok(())
}

async fn to_device_is_delivered_once_per_transaction(ctx: Ctx) -> Result<()> {
    let alice = ctx.register("tda").await?;
    let mut bob = ctx.register("tdb").await?;
    bob.sync("timeout=0").await?;
    let body =
        json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"secret": "opaque"}}}});
    for _ in 0..2 {
        alice
            .put("/_matrix/client/v3/sendToDevice/m.test/txn-1", body.clone())
            .await?
            .ok()?;
    }
    let got = bob
        .sync_until(10, "", |b| {
            b["to_device"]["events"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        })
        .await?;
    let events = got["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(events.len() == 1, "{got}");
    ensure!(
        events[0]["sender"] == alice.user_id.as_str()
            && events[0]["type"] == "m.test"
            && events[0]["content"]["secret"] == "opaque",
        "{got}"
    );
    // Nothing again once the device synced past it.
    let next = bob.sync("timeout=0").await?;
    ensure!(
        next["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{next}"
    );
    Ok(())
}

async fn key_backup_counts_and_versions(ctx: Ctx) -> Result<()> {
    let u = ctx.register("backup").await?;
    u.get("/_matrix/client/v3/room_keys/version")
        .await?
        .expect(404, Some("M_NOT_FOUND"))?;
    let algorithm = "m.megolm_backup.v1.curve25519-aes-sha2";
    let r = u
        .post(
            "/_matrix/client/v3/room_keys/version",
            json!({"algorithm": algorithm, "auth_data": {"public_key": "abcdef"}}),
        )
        .await?;
    let version = r.str("version")?;
    let key = json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": false,
                     "session_data": {"ciphertext": "c", "ephemeral": "e", "mac": "m"}});
    let path = format!(
        "/_matrix/client/v3/room_keys/keys/{}/session1?version={}",
        enc("!room:example.org"),
        enc(&version)
    );
    let r = u.put(&path, key.clone()).await?;
    ensure!(
        r.ok()?["count"] == 1 && r.body["etag"].is_string(),
        "{}",
        r.body
    );
    let r = u.get("/_matrix/client/v3/room_keys/version").await?;
    ensure!(
        r.ok()?["count"] == 1 && r.body["version"] == version.as_str(),
        "{}",
        r.body
    );
    let r = u
        .post(
            "/_matrix/client/v3/room_keys/version",
            json!({"algorithm": algorithm, "auth_data": {"public_key": "ghijkl"}}),
        )
        .await?;
    ensure!(r.str("version")? != version, "{}", r.body);
    // Writes go to the newest version only. (Synapse 1.163 names the
    // requested version as `current_version`, so only its presence is
    // checked here; Hearth's own tests check it names the newest.)
    let r = u.put(&path, key).await?;
    r.expect(403, Some("M_WRONG_ROOM_KEYS_VERSION"))?;
    ensure!(r.body["current_version"].is_string(), "{}", r.body);
    Ok(())
}
