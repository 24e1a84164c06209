//! Hearth-specific behaviour of the real binary: durability across a crash,
//! idempotent retries, signed events, hashed tokens, registration controls,
//! rate limits and body limits.

mod common;

use std::process::Command;

use common::{
    TestServer, binary, enc, free_addr, message_bodies, message_events, message_ids, run_admin,
    stored_parents, temp_dir, temp_file,
};
use hearth_core::{
    ruma::{
        CanonicalJsonObject, RoomVersionId,
        serde::Base64,
        signatures::{PublicKeyMap, PublicKeySet, verify_event},
    },
    store::{
        MainStore, RoomStore, Stores, postgres::PgStore, sharded::ShardedStore, sqlite::SqliteStore,
    },
};
use serde_json::{Value, json};

#[tokio::test]
async fn acknowledged_events_survive_a_crash_and_retries_stay_idempotent() {
    let mut hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw-alice").await;
    let room = alice.create_room(json!({"name": "durable"})).await;
    let mut ids = vec![];
    for i in 0..20 {
        ids.push(
            alice
                .send_text(&room, &format!("txn{i}"), &format!("m{i}"))
                .await,
        );
    }

    hs.crash_and_restart().await;

    // The same token still works, the retry returns the original id, and the
    // room holds exactly the 20 messages in send order.
    let again = alice.send_text(&room, "txn7", "m7").await;
    assert_eq!(again, ids[7]);
    let bodies = message_bodies(&alice.messages(&room, "dir=b&limit=100").await);
    let expected: Vec<String> = (0..20).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected);

    // A new message after the restart continues the same order.
    let next = alice.send_text(&room, "after", "m20").await;
    let page = alice.messages(&room, "dir=b&limit=1").await;
    assert_eq!(page["chunk"][0]["event_id"], json!(next));
}

#[tokio::test]
async fn events_are_hashed_and_signed_and_tokens_stored_hashed() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    let event_id = alice.send_text(&room, "t1", "signed").await;
    let token = alice.token.clone().expect("token");

    // Read what the server wrote, straight from its database.
    let opened = open_store(&hs).await;
    let ev = opened
        .rooms()
        .get_event(&event_id)
        .await
        .expect("read")
        .expect("event stored");
    let keys = opened.main().server_keys().await.expect("keys");
    let key = keys.last().expect("a signing key").clone();
    assert_eq!(key.expired_ts, None, "the newest key signs");
    let key_id = key.key_id;
    let pair = hearth_core::ruma::signatures::Ed25519KeyPair::from_der(
        &key.pkcs8,
        key_id.trim_start_matches("ed25519:").into(),
    )
    .expect("key");
    let mut set = PublicKeySet::new();
    set.insert(key_id.clone(), Base64::new(pair.public_key().to_vec()));
    let mut map = PublicKeyMap::new();
    map.insert("localhost".to_owned(), set);

    let mut json = ev.pdu.json.clone();
    json.remove("unsigned");
    let obj: CanonicalJsonObject =
        serde_json::from_value(Value::Object(json.clone())).expect("canonical");
    let rules = RoomVersionId::V12.rules().expect("rules");
    verify_event(&map, &obj, &rules).expect("signature and content hash verify");

    // A tampered body no longer verifies.
    json["content"]["body"] = json!("forged");
    let forged: CanonicalJsonObject =
        serde_json::from_value(Value::Object(json)).expect("canonical");
    let verified =
        verify_event(&map, &forged, &rules).expect("signature still valid on redacted form");
    assert_eq!(
        verified,
        hearth_core::ruma::signatures::Verified::Signatures,
        "hash mismatch must be detected"
    );

    // The access token is nowhere in the database in clear.
    let stored_plain = opened.main().find_token(&token).await.expect("query");
    assert_eq!(stored_plain, None, "the token is stored in clear");
    if let Opened::Sqlite(s) = &opened {
        s.close().await;
        for f in ["hearth.db", "hearth.db-wal"] {
            if let Ok(bytes) = std::fs::read(hs.data_dir().join(f)) {
                let found = bytes.windows(token.len()).any(|w| w == token.as_bytes());
                assert!(!found, "plaintext token found in {f}");
            }
        }
    }
}

#[tokio::test]
async fn registration_tokens_gate_registration() {
    let hs = TestServer::start(&["--registration-tokens", "let-me-in"]).await;
    let c = hs.client();
    let (s, body) = c
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "carol", "password": "pw"}),
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        body["flows"][0]["stages"],
        json!(["m.login.registration_token"])
    );
    let session = body["session"].as_str().expect("session").to_owned();

    let (s, body) = c
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "carol", "password": "pw",
                   "auth": {"type": "m.login.registration_token", "token": "wrong", "session": session}}),
        )
        .await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (s, body) = c
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "carol", "password": "pw", "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_eq!(s, 400, "dummy must not bypass the token: {body}");

    let (s, body) = c
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "carol", "password": "pw",
                   "auth": {"type": "m.login.registration_token", "token": "let-me-in", "session": session}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["user_id"], "@carol:localhost");
}

#[tokio::test]
async fn closed_registration_and_admin_create_user() {
    let dir = temp_dir("admin");
    let out = run_admin(&[
        "--data-dir",
        &dir.display().to_string(),
        "create-user",
        "dave",
        "--password",
        "pw-dave",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("@dave:localhost"));

    let addr = free_addr();
    let mut child = Command::new(binary())
        .args([
            "--data-dir",
            &dir.display().to_string(),
            "--listen",
            &addr,
            "--registration-enabled",
            "false",
        ])
        .spawn()
        .expect("spawn");
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..300 {
        if http
            .get(format!("{url}/_matrix/client/versions"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "server did not start");
    let reg = http
        .post(format!("{url}/_matrix/client/v3/register"))
        .json(&json!({"username": "eve", "password": "pw", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .expect("register");
    assert_eq!(reg.status().as_u16(), 403);
    let login = http
        .post(format!("{url}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "dave"}, "password": "pw-dave"}))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status().as_u16(), 200);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn message_rate_limit_refuses_without_writing() {
    let (dir, cfg) = temp_file(
        "rl-config",
        "hearth.toml",
        "[rate_limits]\nenabled = true\nmessages_per_second = 0.01\nmessages_burst = 3\n",
    );
    let hs = TestServer::start(&[
        "--config",
        &cfg.display().to_string(),
        "--rate-limits",
        "true",
    ])
    .await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    for i in 0..3 {
        alice.send_text(&room, &format!("ok{i}"), "fine").await;
    }
    let (s, body) = alice.send_message(&room, "over", "too many").await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    let texts = message_events(&alice.messages(&room, "dir=b&limit=50").await).len();
    assert_eq!(texts, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/big",
        enc(&room)
    );

    // Just over the 1 MiB JSON limit, so the whole body fits in socket buffers
    // and the client reads the answer instead of a reset.
    let huge = "x".repeat(1024 * 1024 + 1000);
    let (s, body) = alice
        .put(&path, json!({"msgtype": "m.text", "body": huge}))
        .await;
    assert_eq!(s, 413, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE");

    // An event over 64 KiB but under the body limit is also refused.
    let (s, body) = alice
        .put(
            &path,
            json!({"msgtype": "m.text", "body": "y".repeat(70_000)}),
        )
        .await;
    assert_eq!(s, 413, "{body}");

    // Floats are not canonical JSON.
    let (s, body) = alice
        .put(&path, json!({"msgtype": "m.text", "body": "f", "n": 1.5}))
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    let raw = alice
        .http
        .put(format!("{}{}", alice.base, path))
        .bearer_auth(alice.token.as_deref().unwrap_or_default())
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status().as_u16(), 400);
    let body: Value = raw.json().await.expect("json");
    assert_eq!(body["errcode"], "M_NOT_JSON");

    // The retry slot "big" was never used: a valid send with it now succeeds
    // and is the only message in the room.
    let (s, _) = alice
        .put(&path, json!({"msgtype": "m.text", "body": "small"}))
        .await;
    assert_eq!(s, 200);
    let page = alice.messages(&room, "dir=b&limit=50").await;
    let texts = message_events(&page);
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0]["content"]["body"], "small");
}

#[tokio::test]
async fn uploads_over_the_configured_limit_are_refused() {
    let hs = TestServer::start(&["--max-upload-size", "1024"]).await;
    let alice = hs.register("alice", "pw").await;
    let token = alice.token.clone().unwrap_or_default();
    let upload = |len: usize| {
        alice
            .http
            .post(format!(
                "{}/_matrix/media/v3/upload?filename=f.bin",
                alice.base
            ))
            .bearer_auth(&token)
            .header("Content-Type", "application/octet-stream")
            .body(vec![7u8; len])
            .send()
    };
    let ok = upload(1000).await.expect("upload");
    assert_eq!(ok.status().as_u16(), 200);
    let big = upload(2048).await.expect("upload");
    assert_eq!(big.status().as_u16(), 413);
    let body: Value = big.json().await.expect("json");
    assert_eq!(body["errcode"], "M_TOO_LARGE");
    let (s, cfg) = alice.get("/_matrix/client/v1/media/config").await;
    assert_eq!(s, 200);
    assert_eq!(cfg["m.upload.size"], 1024);
}

/// Retries of one transaction racing each other and other rooms' sends (so
/// they meet in one group commit) still make exactly one event; the same txn
/// id in another room is a different request and makes its own event.
#[tokio::test]
async fn racing_retries_make_one_event_per_room() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let rooms = [
        alice.create_room(json!({})).await,
        alice.create_room(json!({})).await,
        alice.create_room(json!({})).await,
    ];
    let mut sends = vec![];
    for round in 0..8 {
        for room in &rooms {
            let (alice, room) = (alice.clone(), room.clone());
            // Every room gets the shared txn id "same" eight times, and a
            // distinct txn id per round.
            sends.push(tokio::spawn(async move {
                let same = alice.send_text(&room, "same", "once per room").await;
                let own = alice
                    .send_text(&room, &format!("own{round}"), "one each")
                    .await;
                (room, same, own)
            }));
        }
    }
    let mut same_ids: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for s in sends {
        let (room, same, _) = s.await.expect("send task");
        same_ids.entry(room).or_default().insert(same);
    }
    let mut all_same = std::collections::HashSet::new();
    for room in &rooms {
        let ids = &same_ids[room];
        assert_eq!(ids.len(), 1, "retries in {room} made {} events", ids.len());
        all_same.extend(ids.iter().cloned());
        let bodies = message_bodies(&alice.messages(room, "dir=b&limit=100").await);
        assert_eq!(bodies.iter().filter(|b| *b == "once per room").count(), 1);
        assert_eq!(bodies.iter().filter(|b| *b == "one each").count(), 8);
    }
    assert_eq!(
        all_same.len(),
        rooms.len(),
        "one event per room, not shared"
    );
}

/// The test server's database, opened beside it.
enum Opened {
    Sqlite(SqliteStore),
    Other(Stores),
}

impl Opened {
    /// Keys and tokens live here.
    fn main(&self) -> &dyn MainStore {
        match self {
            Opened::Sqlite(s) => s,
            Opened::Other(s) => s.main.as_ref(),
        }
    }

    /// Events live here (on the shards when sharded).
    fn rooms(&self) -> &dyn RoomStore {
        match self {
            Opened::Sqlite(s) => s,
            Opened::Other(s) => s.rooms.as_ref(),
        }
    }
}

async fn open_store(hs: &TestServer) -> Opened {
    match &hs.database_url {
        // Events live on the shards when sharded; keys and tokens on main.
        Some(url) if !hs.database_shards.is_empty() => {
            let sharded = std::sync::Arc::new(
                ShardedStore::connect(url, &hs.database_shards)
                    .await
                    .expect("connect db"),
            );
            Opened::Other(Stores {
                main: sharded.main(),
                rooms: sharded,
            })
        }
        Some(url) => Opened::Other(Stores::single(std::sync::Arc::new(
            PgStore::connect(url).await.expect("connect db"),
        ))),
        None => Opened::Sqlite(
            SqliteStore::open(&hs.data_dir().join("hearth.db"))
                .await
                .expect("open db"),
        ),
    }
}

#[tokio::test]
async fn a_retry_refused_at_commit_leaves_no_event_built_on_it() {
    let mut hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw").await;
    let room = alice.create_room(json!({})).await;
    let mut first = vec![];
    for i in 0..4 {
        first.push(alice.send_text(&room, &format!("early{i}"), "early").await);
    }
    // After a restart the writer has no memory of those transactions, so a
    // retry is only caught when the store refuses it, while other sends of
    // the room are already queued behind it, built on top of it.
    hs.crash_and_restart().await;
    let mut sent = vec![];
    for (i, early) in first.iter().enumerate() {
        let mut tasks = vec![];
        let retry = {
            let alice = alice.clone();
            let room = room.clone();
            tokio::spawn(async move { alice.send_text(&room, &format!("early{i}"), "early").await })
        };
        for j in 0..6 {
            let (alice, room) = (alice.clone(), room.clone());
            tasks.push(tokio::spawn(async move {
                alice
                    .send_text(&room, &format!("late{i}-{j}"), &format!("late {i} {j}"))
                    .await
            }));
        }
        assert_eq!(
            &retry.await.expect("retry"),
            early,
            "the retry answers the first event"
        );
        for t in tasks {
            sent.push(t.await.expect("send"));
        }
    }

    // Every acknowledged event is in the room once, and every event's
    // parents are stored: nothing was built on the refused retries.
    let ids = message_ids(&alice.messages(&room, "dir=b&limit=200").await);
    assert_eq!(ids.len(), first.len() + sent.len(), "{ids:?}");
    for id in first.iter().chain(&sent) {
        assert_eq!(ids.iter().filter(|i| *i == id).count(), 1, "{id} once");
    }
    let opened = open_store(&hs).await;
    for id in &ids {
        stored_parents(opened.rooms(), id).await;
    }
}

/// OpenID: a user's token names them to a third party, which asks this
/// server (`openid/userinfo`, where clients reach it) and learns nothing
/// more. The token is no access token, an access token is no OpenID token,
/// and nobody gets one for another user.
#[tokio::test]
async fn an_openid_token_names_its_user_to_a_third_party_and_opens_nothing_else() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw-alice-long").await;
    let bob = hs.register("bob", "pw-bob-long").await;
    let (s, me) = alice.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(s, 200, "{me}");
    let alice_id = me["user_id"].as_str().expect("user_id").to_owned();
    let server_name = alice_id.split_once(':').expect("server name").1.to_owned();
    let path = format!(
        "/_matrix/client/v3/user/{}/openid/request_token",
        enc(&alice_id)
    );
    let (s, token) = alice.post(&path, json!({})).await;
    assert_eq!(s, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer", "{token}");
    assert_eq!(token["matrix_server_name"], server_name.as_str(), "{token}");
    assert!(
        token["expires_in"].as_u64().is_some_and(|s| s > 0),
        "{token}"
    );
    let openid = token["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();

    let third_party = hs.client();
    let userinfo = |t: &str| {
        format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={}",
            enc(t)
        )
    };
    let (s, info) = third_party.get(&userinfo(&openid)).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info, json!({"sub": alice_id}));

    for bad in ["an/invalid/token", alice.token.as_deref().expect("token")] {
        let (s, body) = third_party.get(&userinfo(bad)).await;
        assert_eq!(s, 401, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{body}");
    }
    let (s, body) = third_party
        .get("/_matrix/federation/v1/openid/userinfo")
        .await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN", "{body}");

    // The OpenID token opens no client endpoint.
    let mut holder = hs.client();
    holder.token = Some(openid);
    let (s, body) = holder.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(s, 401, "{body}");
    // Bob may not have one made for alice.
    let (s, body) = bob.post(&path, json!({})).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
}

/// Third-party identifiers: Hearth binds none, and says so the way the spec
/// words it rather than with 404s (Element reads the list on its settings
/// page): an empty list, `M_THREEPID_DENIED` for validating an address,
/// `M_THREEPID_NOT_FOUND` for a reset by address; and registration tokens
/// can be checked before registering.
#[tokio::test]
async fn threepid_endpoints_answer_that_none_are_bound_and_tokens_can_be_checked() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw-alice-long").await;
    let (s, list) = alice.get("/_matrix/client/v3/account/3pid").await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list, json!({"threepids": []}));
    let anon = hs.client();
    let (s, body) = anon.get("/_matrix/client/v3/account/3pid").await;
    assert_eq!(s, 401, "{body}");

    let ask = json!({"client_secret": "s3cret", "email": "a@example.org", "send_attempt": 1});
    for (client, path, status, errcode) in [
        (
            &anon,
            "/register/email/requestToken",
            403,
            "M_THREEPID_DENIED",
        ),
        (
            &anon,
            "/register/msisdn/requestToken",
            403,
            "M_THREEPID_DENIED",
        ),
        (
            &alice,
            "/account/3pid/email/requestToken",
            403,
            "M_THREEPID_DENIED",
        ),
        (
            &anon,
            "/account/password/email/requestToken",
            400,
            "M_THREEPID_NOT_FOUND",
        ),
        (
            &anon,
            "/register/carrier-pigeon/requestToken",
            404,
            "M_UNRECOGNIZED",
        ),
    ] {
        let (s, body) = client
            .post(&format!("/_matrix/client/v3{path}"), ask.clone())
            .await;
        assert_eq!(
            (s, body["errcode"].as_str()),
            (status, Some(errcode)),
            "{path}: {body}"
        );
    }
    let (s, body) = anon
        .request(
            reqwest::Method::POST,
            "/_matrix/client/v3/register/email/requestToken",
            Some(json!("not an object")),
        )
        .await;
    assert_eq!(s, 400, "{body}");

    let validity = "/_matrix/client/v3/register/m.login.registration_token/validity";
    let (s, body) = anon.get(&format!("{validity}?token=let-me-in")).await;
    assert_eq!(
        (s, &body),
        (200, &json!({"valid": false})),
        "no tokens configured"
    );
    let gated = TestServer::start(&["--registration-tokens", "let-me-in"]).await;
    let anon = gated.client();
    let (s, body) = anon.get(&format!("{validity}?token=let-me-in")).await;
    assert_eq!((s, &body), (200, &json!({"valid": true})));
    let (s, body) = anon.get(&format!("{validity}?token=nope")).await;
    assert_eq!((s, &body), (200, &json!({"valid": false})));
    let (s, body) = anon.get(validity).await;
    assert_eq!(
        (s, body["errcode"].as_str()),
        (400, Some("M_MISSING_PARAM")),
        "{body}"
    );
}
