//! End-to-end encryption endpoints against the real binary: one-time keys
//! claimed exactly once under concurrency, fallback keys, to-device delivery
//! and removal, device lists, cross-signing with its UIA and signature
//! checks, and key backup. (Real clients doing real cryptography are in
//! tests/clients/test_e2ee.py.)

mod common;

use base64::Engine;
use common::{TestServer, assert_error, enc};
use ruma::{
    CanonicalJsonObject,
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

fn device_keys(user: &str, device: &str, curve: &str) -> Value {
    json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): curve,
            format!("ed25519:{device}"): format!("ed-{curve}"),
        },
        "signatures": {user: {format!("ed25519:{device}"): "self-signature"}},
    })
}

async fn sync(c: &common::Client, since: Option<&str>) -> Value {
    match since {
        Some(s) => c.sync(&format!("timeout=0&since={}", enc(s))).await,
        None => c.sync("timeout=0").await,
    }
}

#[tokio::test]
async fn one_time_keys_are_claimed_once_then_the_fallback_key() {
    let server = TestServer::start(&[]).await;
    let alice = server.register("alice", "pw-alice-1").await;
    let bob = server.register("bob", "pw-bob-1").await;
    let (alice_id, device) = alice.whoami().await;

    let mut otks = serde_json::Map::new();
    for i in 0..5 {
        otks.insert(
            format!("signed_curve25519:K{i}"),
            json!({"key": format!("otk{i}"), "signatures": {}}),
        );
    }
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys(&alice_id, &device, "c1"),
                "one_time_keys": otks,
                "fallback_keys": {"signed_curve25519:FB": {"key": "fallback", "fallback": true, "signatures": {}}},
            }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["one_time_key_counts"]["signed_curve25519"], 5);

    // Keys claiming to be another user's are refused, and nothing of the
    // request is stored (its one-time key included).
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys("@mallory:localhost", &device, "evil"),
                "one_time_keys": {"signed_curve25519:EXTRA": {"key": "x", "signatures": {}}},
            }),
        )
        .await;
    assert_error(s, &b, 400, "M_INVALID_PARAM");
    let (s, b) = alice
        .post("/_matrix/client/v3/keys/upload", json!({}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["one_time_key_counts"]["signed_curve25519"], 5, "{b}");
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"one_time_keys": {"no-colon": {"key": "x", "signatures": {}}}}),
        )
        .await;
    assert_eq!(s, 400, "{b}");

    let b = bob.query_keys(&alice_id).await;
    assert_eq!(
        b["device_keys"][&alice_id][&device]["keys"][format!("curve25519:{device}")],
        "c1"
    );

    // 12 claims at once for 5 one-time keys: each key goes out once, the
    // other 7 get the fallback key.
    let claims = (0..12).map(|_| {
        bob.post(
            "/_matrix/client/v3/keys/claim",
            json!({"one_time_keys": {alice_id.clone(): {device.clone(): "signed_curve25519"}}}),
        )
    });
    let answers = futures::future::join_all(claims).await;
    let mut ids = vec![];
    for (s, b) in answers {
        assert_eq!(s, 200, "{b}");
        let keys = b["one_time_keys"][&alice_id][&device]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(keys.len(), 1, "{b}");
        ids.extend(keys.keys().cloned());
    }
    let fallback = ids.iter().filter(|i| *i == "signed_curve25519:FB").count();
    let mut one_time: Vec<&String> = ids
        .iter()
        .filter(|i| *i != "signed_curve25519:FB")
        .collect();
    one_time.sort();
    one_time.dedup();
    assert_eq!((one_time.len(), fallback), (5, 7), "claims: {ids:?}");

    // The device sees it has no one-time keys left and its fallback key used.
    let b = sync(&alice, None).await;
    assert_eq!(
        b["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{b}"
    );
    assert_eq!(b["device_unused_fallback_key_types"], json!([]));
    let (s, _) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"fallback_keys": {"signed_curve25519:FB2": {"key": "fallback2", "fallback": true, "signatures": {}}}}),
        )
        .await;
    assert_eq!(s, 200);
    let b = sync(&alice, None).await;
    assert_eq!(
        b["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
}

#[tokio::test]
async fn to_device_messages_arrive_once_and_go_after_the_device_syncs_past_them() {
    let server = TestServer::start(&[]).await;
    let alice = server.register("alice", "pw-alice-1").await;
    let bob = server.register("bob", "pw-bob-1").await;
    let (bob_id, bob_device) = bob.whoami().await;
    let s0 = sync(&bob, None).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let path = "/_matrix/client/v3/sendToDevice/m.test/txn1";
    let body = json!({"messages": {bob_id.clone(): {bob_device.clone(): {"n": 1}}}});
    for _ in 0..2 {
        let (s, b) = alice.put(path, body.clone()).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, _) = alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/txn2",
            json!({"messages": {bob_id.clone(): {"*": {"n": 2}}}}),
        )
        .await;
    assert_eq!(s, 200);
    for bad in [
        json!({}),
        json!({"messages": []}),
        json!({"messages": {"not-a-user": {}}}),
    ] {
        let (s, b) = alice
            .put("/_matrix/client/v3/sendToDevice/m.test/bad", bad.clone())
            .await;
        assert_eq!(s, 400, "{bad} → {b}");
    }

    let first = sync(&bob, Some(&s0)).await;
    let events = first["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ns: Vec<&Value> = events.iter().map(|e| &e["content"]["n"]).collect();
    assert_eq!(ns, [&json!(1), &json!(2)], "{first}");
    assert_eq!(events[0]["sender"], "@alice:localhost");
    assert_eq!(events[0]["type"], "m.test");
    // Not yet acknowledged: a retry from the same token gets them again.
    let again = sync(&bob, Some(&s0)).await;
    assert_eq!(
        again["to_device"]["events"].as_array().map(Vec::len),
        Some(2)
    );
    // Syncing past them acknowledges them: they are gone, even from the old
    // token.
    let s1 = first["next_batch"].as_str().unwrap_or_default();
    let next = sync(&bob, Some(s1)).await;
    assert_eq!(next["to_device"]["events"], json!([]), "{next}");
    let old = sync(&bob, Some(&s0)).await;
    assert_eq!(old["to_device"]["events"], json!([]), "{old}");
}

/// An ed25519 cross-signing key pair whose key id is its public key.
fn cross_key() -> (Ed25519KeyPair, String) {
    let doc = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&doc, "x".into()).expect("key pair");
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(probe.public_key());
    (
        Ed25519KeyPair::from_der(&doc, public.clone()).expect("key pair"),
        public,
    )
}

fn signed(user: &str, value: Value, by: &Ed25519KeyPair) -> Value {
    let mut obj: CanonicalJsonObject = serde_json::from_value(value).expect("canonical");
    sign_json(user, by, &mut obj).expect("sign");
    serde_json::to_value(obj).expect("json")
}

fn cross_signing_key(user: &str, usage: &str, public: &str) -> Value {
    json!({"user_id": user, "usage": [usage], "keys": {format!("ed25519:{public}"): public}})
}

#[tokio::test]
async fn device_lists_and_cross_signing() {
    let server = TestServer::start(&[]).await;
    let alice = server.register("alice", "pw-alice-1").await;
    let bob = server.register("bob", "pw-bob-1").await;
    let (alice_id, device) = alice.whoami().await;
    let (bob_id, _) = bob.whoami().await;
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob_id.clone()]}))
        .await;
    bob.join(&room).await;
    let since = sync(&bob, None).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // A device's new keys show up in the sync of everyone sharing a room.
    let (s, _) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys(&alice_id, &device, "c1")}),
        )
        .await;
    assert_eq!(s, 200);
    let b = sync(&bob, Some(&since)).await;
    assert_eq!(
        b["device_lists"]["changed"],
        json!([alice_id.clone()]),
        "{b}"
    );
    let to = b["next_batch"].as_str().unwrap_or_default().to_owned();
    let (s, c) = bob
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={}&to={}",
            enc(&since),
            enc(&to)
        ))
        .await;
    assert_eq!((s, &c["changed"]), (200, &json!([alice_id.clone()])), "{c}");

    // Cross-signing keys: the first upload needs no password.
    let (master, master_pub) = cross_key();
    let (self_signing, self_pub) = cross_key();
    let (_user_signing, user_pub) = cross_key();
    let master_key = signed(
        &alice_id,
        cross_signing_key(&alice_id, "master", &master_pub),
        &master,
    );
    let ssk = signed(
        &alice_id,
        cross_signing_key(&alice_id, "self_signing", &self_pub),
        &master,
    );
    let usk = signed(
        &alice_id,
        cross_signing_key(&alice_id, "user_signing", &user_pub),
        &master,
    );
    // A self-signing key the master key did not sign is refused.
    let (forger, _) = cross_key();
    let bad_ssk = signed(
        &alice_id,
        cross_signing_key(&alice_id, "self_signing", &self_pub),
        &forger,
    );
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            json!({"master_key": master_key, "self_signing_key": bad_ssk}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let upload =
        json!({"master_key": master_key, "self_signing_key": ssk, "user_signing_key": usk});
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            upload.clone(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // Replacing them needs the password (UIA).
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            upload.clone(),
        )
        .await;
    assert_eq!(s, 401, "{b}");
    assert!(b["flows"].is_array(), "{b}");
    let mut with_auth = upload.clone();
    with_auth["auth"] = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "pw-alice-1",
        "session": b["session"],
    });
    let (s, b) = alice
        .post("/_matrix/client/v3/keys/device_signing/upload", with_auth)
        .await;
    assert_eq!(s, 200, "{b}");

    // Alice signs her device with the self-signing key; a forged signature
    // is reported and not stored.
    let (_, keys) = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {alice_id.clone(): [device.clone()]}}),
        )
        .await;
    let mut dk = keys["device_keys"][&alice_id][&device].clone();
    // `unsigned` is always an object; a device without a name shows none.
    assert!(dk["unsigned"].is_object(), "{dk}");
    assert!(dk["unsigned"].get("device_display_name").is_none(), "{dk}");
    if let Some(o) = dk.as_object_mut() {
        o.remove("unsigned");
        o.remove("signatures");
    }
    let good = signed(&alice_id, dk.clone(), &self_signing);
    let mut forged = signed(&alice_id, dk.clone(), &forger);
    forged["signatures"][&alice_id] = json!({
        format!("ed25519:{self_pub}"): forged["signatures"][&alice_id][format!("ed25519:{}", forger.version())].clone()
    });
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({alice_id.clone(): {device.clone(): forged}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["failures"][&alice_id][&device]["errcode"], "M_INVALID_SIGNATURE",
        "{b}"
    );
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({alice_id.clone(): {device.clone(): good}}),
        )
        .await;
    assert_eq!((s, &b["failures"]), (200, &json!({})), "{b}");

    let q = bob.query_keys(&alice_id).await;
    let sigs = &q["device_keys"][&alice_id][&device]["signatures"][&alice_id];
    assert!(sigs.get(format!("ed25519:{self_pub}")).is_some(), "{q}");
    assert_eq!(
        q["master_keys"][&alice_id]["keys"][format!("ed25519:{master_pub}")],
        master_pub
    );
    assert!(q["self_signing_keys"][&alice_id].is_object(), "{q}");
    // Only alice sees her user-signing key.
    assert!(q["user_signing_keys"].get(&alice_id).is_none(), "{q}");
    let own = alice.query_keys(&alice_id).await;
    assert!(own["user_signing_keys"][&alice_id].is_object(), "{own}");

    // Bob leaves their only shared room: alice's sync lists him as left.
    let since = sync(&alice, None).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (s, _) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    let b = sync(&alice, Some(&since)).await;
    assert_eq!(b["device_lists"]["left"], json!([bob_id]), "{b}");
}

#[tokio::test]
async fn key_backup_versions_and_keys() {
    let server = TestServer::start(&[]).await;
    let alice = server.register("alice", "pw-alice-1").await;
    let (s, b) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_error(s, &b, 404, "M_NOT_FOUND");
    let algorithm = "m.megolm_backup.v1.curve25519-aes-sha2";
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/room_keys/version",
            json!({"algorithm": algorithm, "auth_data": {"public_key": "abc"}}),
        )
        .await;
    assert_eq!((s, &b["version"]), (200, &json!("1")), "{b}");
    let (_, v) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(
        (&v["count"], &v["etag"], &v["algorithm"]),
        (&json!(0), &json!("0"), &json!(algorithm))
    );

    let key = |index: u64| {
        json!({"first_message_index": index, "forwarded_count": 0, "is_verified": false,
               "session_data": {"ciphertext": format!("ct{index}"), "ephemeral": "e", "mac": "m"}})
    };
    let room = "!room:localhost";
    let session_path = format!(
        "/_matrix/client/v3/room_keys/keys/{}/sess1?version=1",
        enc(room)
    );
    let (s, b) = alice.put(&session_path, key(5)).await;
    assert_eq!((s, &b["count"]), (200, &json!(1)), "{b}");
    let etag1 = b["etag"].clone();
    assert_ne!(etag1, json!("0"));
    // A copy that decrypts less (later first index) does not replace it; one
    // that decrypts more does.
    let (_, _) = alice.put(&session_path, key(9)).await;
    let (_, got) = alice.get(&session_path).await;
    assert_eq!(got["first_message_index"], 5, "{got}");
    let (_, b) = alice
        .put(
            "/_matrix/client/v3/room_keys/keys?version=1",
            json!({"rooms": {room: {"sessions": {"sess1": key(2), "sess2": key(0)}}}}),
        )
        .await;
    assert_eq!(b["count"], 2, "{b}");
    assert_ne!(b["etag"], etag1);
    let (_, all) = alice
        .get("/_matrix/client/v3/room_keys/keys?version=1")
        .await;
    assert_eq!(
        all["rooms"][room]["sessions"]["sess1"]["first_message_index"], 2,
        "{all}"
    );

    // Malformed key data is refused and changes nothing.
    let (s, _) = alice
        .put(&session_path, json!({"first_message_index": 0}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = alice
        .get("/_matrix/client/v3/room_keys/keys?version=1")
        .await;
    assert_eq!(s, 200);

    // A newer version makes version 1 read-only for writers.
    let (_, b) = alice
        .post(
            "/_matrix/client/v3/room_keys/version",
            json!({"algorithm": algorithm, "auth_data": {"public_key": "def"}}),
        )
        .await;
    assert_eq!(b["version"], "2");
    let (s, b) = alice.put(&session_path, key(0)).await;
    assert_eq!(
        (s, b["errcode"].as_str(), b["current_version"].as_str()),
        (403, Some("M_WRONG_ROOM_KEYS_VERSION"), Some("2")),
        "{b}"
    );
    let (s, b) = alice
        .delete(&format!(
            "/_matrix/client/v3/room_keys/keys/{}?version=1",
            enc(room)
        ))
        .await;
    assert_eq!((s, &b["count"]), (200, &json!(0)), "{b}");
    let (s, _) = alice.delete("/_matrix/client/v3/room_keys/version/2").await;
    assert_eq!(s, 200);
    let (_, v) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(v["version"], "1", "{v}");
    let (s, _) = alice.get("/_matrix/client/v3/room_keys/version/2").await;
    assert_eq!(s, 404);
}
