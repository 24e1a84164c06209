//! Two processes of one server sharing a Postgres database and a Redis: what
//! a client does on one process reaches clients of the other, and a Redis
//! outage costs only the sharing of typing and presence, which comes back
//! with Redis.

mod common;

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Client, TestServer, create_database_on, drop_database_on, enc, message_ids, stored_parents,
    typing_in,
};
use serde_json::{Value, json};

const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// A Redis of the test's own, so it can be stopped without touching anyone's.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        let mut r = PrivateRedis { port, child: None };
        r.resume().then_some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts redis-server on the same port; false if it cannot be run here.
    fn resume(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The test's database, dropped however the test ends.
struct Database(String);

impl Drop for Database {
    fn drop(&mut self) {
        drop_database_on(PG, &self.0);
    }
}

/// What the processes of one test share: a Redis of the test's own, a
/// database, and the flags that point a process at both (with the test's
/// own).
struct Shared {
    redis: PrivateRedis,
    db: Database,
    flags: Vec<String>,
}

impl Shared {
    /// None (the test is skipped) where redis-server cannot be run here.
    /// `tag` keeps the test's Redis keys apart from other tests'.
    fn start(tag: &str, extra: &[&str]) -> Option<Self> {
        let Some(redis) = PrivateRedis::start() else {
            eprintln!("redis-server cannot be run here; skipping");
            return None;
        };
        let db = Database(create_database_on(PG));
        let prefix = format!("hearth-test-{tag}{}", std::process::id());
        let mut flags = vec![
            "--redis-url".to_owned(),
            redis.url(),
            "--redis-prefix".to_owned(),
            prefix,
        ];
        flags.extend(extra.iter().map(|f| f.to_string()));
        Some(Shared { redis, db, flags })
    }

    fn args(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }
}

/// Long-polls /sync from `since` until `found` holds for a response or the
/// deadline passes; returns that response.
async fn sync_until(
    c: &Client,
    since: &mut String,
    within: Duration,
    found: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let (status, body) = c
            .get(&format!(
                "/_matrix/client/v3/sync?timeout=1000&since={since}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        if let Some(next) = body["next_batch"].as_str() {
            *since = next.to_owned();
        }
        if found(&body) {
            return Some(body);
        }
    }
    None
}

fn has_message(body: &Value, room: &str, text: &str) -> bool {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .is_some_and(|evs| evs.iter().any(|e| e["content"]["body"] == text))
}

/// Two processes A and B of one server on `db`, started with `args`: alice
/// registered on A, bob on B, both in a public room alice created. Without
/// `[cluster]` leases (not configured here) one process must write the room,
/// so bob joins through A.
struct TwoProcesses {
    a: TestServer,
    b: TestServer,
    alice: Client,
    bob_on_b: Client,
    room: String,
}

impl TwoProcesses {
    async fn start(db: &str, args: &[&str], room_name: &str) -> Self {
        let a = TestServer::start_with_databases(db, &[], args).await;
        let b = TestServer::start_with_databases(db, &[], args).await;
        let alice = a.register("alice", "pw-alice").await;
        let bob_on_b = b.register("bob", "pw-bob").await;
        let bob_on_a = Client {
            base: a.url.clone(),
            ..bob_on_b.clone()
        };
        let room = alice
            .create_room(json!({"preset": "public_chat", "name": room_name}))
            .await;
        bob_on_a.join(&room).await;
        TwoProcesses {
            a,
            b,
            alice,
            bob_on_b,
            room,
        }
    }
}

#[tokio::test]
async fn two_processes_share_wakeups_typing_and_presence_and_survive_redis_stopping() {
    let Some(mut shared) = Shared::start("", &[]) else {
        return;
    };
    let (db, args) = (shared.db.0.clone(), shared.args());
    let TwoProcesses {
        a,
        b,
        alice,
        bob_on_b,
        room,
        ..
    } = TwoProcesses::start(&db, &args, "two processes").await;
    let alice_id = "@alice:localhost";

    // Bob syncs on B; a message sent on A wakes him at once.
    let (status, body) = bob_on_b.get("/_matrix/client/v3/sync").await;
    assert_eq!(status, 200, "{body}");
    let mut since = body["next_batch"].as_str().expect("next_batch").to_owned();
    let sent = Instant::now();
    alice.send_text(&room, "m1", "over the bus").await;
    sync_until(&bob_on_b, &mut since, Duration::from_secs(5), |b| {
        has_message(b, &room, "over the bus")
    })
    .await
    .expect("message sent on A reaches a sync on B");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "woken by the bus, not a timer: {:?}",
        sent.elapsed()
    );

    // Typing and presence set on A are seen on B.
    alice.set_typing(&room, alice_id, true, 30000).await;
    sync_until(&bob_on_b, &mut since, Duration::from_secs(5), |b| {
        typing_in(b, &room).is_some_and(|u| u == [alice_id])
    })
    .await
    .expect("typing on A seen on B");
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(alice_id)),
            json!({"presence": "online", "status_msg": "in the cluster"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = get_presence(&bob_on_b, alice_id).await;
        if p["presence"] == "online" && p["status_msg"] == "in the cluster" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence set on A not seen on B: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Redis stops: messages still flow between the processes (read from the
    // database), and typing still works within a process.
    shared.redis.stop();
    alice.send_text(&room, "m2", "without redis").await;
    sync_until(&bob_on_b, &mut since, Duration::from_secs(10), |b| {
        has_message(b, &room, "without redis")
    })
    .await
    .expect("message sent on A reaches B with Redis down");
    alice.set_typing(&room, alice_id, false, 30000).await;
    let (status, body) = alice.get("/_matrix/client/v3/sync").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        typing_in(&body, &room),
        None,
        "typing off is seen on its own process: {body}"
    );
    let mut alice_since = body["next_batch"].as_str().expect("next_batch").to_owned();
    alice.set_typing(&room, alice_id, true, 30000).await;
    sync_until(&alice, &mut alice_since, Duration::from_secs(5), |b| {
        typing_in(b, &room).is_some_and(|u| u == [alice_id])
    })
    .await
    .expect("typing works on its own process with Redis down");

    // Redis returns: sharing resumes without a restart.
    assert!(shared.redis.resume(), "redis restarts");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut typing = false;
    loop {
        alice.set_typing(&room, alice_id, typing, 30000).await;
        let want: Vec<String> = if typing {
            vec![alice_id.to_owned()]
        } else {
            vec![]
        };
        let seen = sync_until(&bob_on_b, &mut since, Duration::from_millis(1500), |b| {
            typing_in(b, &room).is_some_and(|u| u == want)
        })
        .await;
        if seen.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "typing sharing did not recover after Redis returned"
        );
        typing = !typing;
    }
    alice.send_text(&room, "m3", "redis is back").await;
    sync_until(&bob_on_b, &mut since, Duration::from_secs(5), |b| {
        has_message(b, &room, "redis is back")
    })
    .await
    .expect("messages flow after Redis returned");
    drop((a, b));
}

/// Sends `count` messages with txn ids `{tag}{i}`, each retried with the same
/// txn id on the next server of `bases` until acknowledged; returns the
/// acknowledged event ids in send order and when each was acknowledged.
async fn send_series(
    client: Client,
    bases: Vec<String>,
    room: String,
    tag: &'static str,
    count: usize,
) -> Vec<(String, Instant)> {
    let mut acked = vec![];
    let mut base = 0;
    for i in 0..count {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A refused connection (the process is gone) is status 0.
            let sent = client
                .http
                .put(format!(
                    "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{tag}{i}",
                    bases[base],
                    enc(&room)
                ))
                .bearer_auth(client.token.as_deref().unwrap_or_default())
                .json(&json!({"msgtype": "m.text", "body": format!("{tag} {i}")}))
                .send()
                .await;
            let (status, body) = match sent {
                Ok(r) => (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or_default(),
                ),
                Err(e) => (0, json!({"error": e.to_string()})),
            };
            if status == 200
                && let Some(id) = body["event_id"].as_str()
            {
                acked.push((id.to_owned(), Instant::now()));
                // Paced, so the load spans the kill.
                tokio::time::sleep(Duration::from_millis(10)).await;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tag}{i} never acknowledged: {status} {body}"
            );
            // The process may be gone: the next one.
            if status == 0 || status >= 500 {
                base = (base + 1) % bases.len();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    acked
}

#[tokio::test]
async fn any_process_accepts_sends_and_a_killed_writer_is_taken_over() {
    let Some(shared) = Shared::start("writers-", &["--cluster-secret", "test-cluster-secret"])
    else {
        return;
    };
    let (db, args) = (&shared.db, shared.args());
    let mut a = TestServer::start_with_databases(&db.0, &[], &args).await;
    let b = TestServer::start_with_databases(&db.0, &[], &args).await;

    // The room is created on A, so A writes it; bob joins through B, which
    // forwards the join to A.
    let alice = a.register("alice", "pw-alice").await;
    let bob = b.register("bob", "pw-bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "writers"}))
        .await;
    let (status, body) = bob.join_with(&room, "").await;
    assert_eq!(status, 200, "join forwarded to the room's writer: {body}");

    // A forwarded send with a wrong secret is refused.
    let (status, body) = Client {
        base: a.url.clone(),
        token: Some("test-cluster-secre7".into()),
        http: reqwest::Client::new(),
    }
    .post(
        &format!("/_hearth/internal/v1/rooms/{}/send", enc(&room)),
        json!({"sender": "@alice:localhost", "kind": "m.room.message",
               "content": {"body": "forged"}, "state_key": null, "redacts": null, "txn": null}),
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // Alice sends through B (forwarded to A), bob through A (A writes);
    // A is killed mid-load, and both carry on through B.
    let senders = [
        tokio::spawn(send_series(
            alice.clone(),
            vec![b.url.clone()],
            room.clone(),
            "alice",
            150,
        )),
        tokio::spawn(send_series(
            bob.clone(),
            vec![a.url.clone(), b.url.clone()],
            room.clone(),
            "bob",
            150,
        )),
    ];
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.kill();
    let killed = Instant::now();
    let mut acked = vec![];
    for s in senders {
        acked.push(s.await.expect("sender"));
    }
    // B took the room over within seconds: the longest silence between two
    // acknowledgements (of either sender) is the outage.
    let mut times: Vec<Instant> = acked.iter().flatten().map(|(_, at)| *at).collect();
    times.sort();
    assert!(times.iter().any(|t| *t > killed), "acks after the kill");
    let takeover = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!("writer taken over: longest gap between acks {takeover:?}");
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}"
    );

    // Every acknowledged event is in the room once, in each sender's order,
    // and every event's parents are stored (one order, no fork).
    let timeline = message_ids(&bob.messages(&room, "dir=f&limit=1000").await);
    for series in &acked {
        let ids: Vec<&String> = series.iter().map(|(id, _)| id).collect();
        let positions: Vec<usize> = ids
            .iter()
            .map(|id| {
                let found: Vec<usize> = timeline
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t == id)
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(found.len(), 1, "{id} appears {} times", found.len());
                found[0]
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "a sender's messages out of order"
        );
    }
    assert_eq!(timeline.len(), 300, "no duplicates: {}", timeline.len());
    let store = hearth_core::store::postgres::PgStore::connect(&db.0)
        .await
        .expect("connect");
    let mut heads = 0;
    for id in &timeline {
        heads += usize::from(stored_parents(&store, id).await.len() != 1);
    }
    assert_eq!(heads, 0, "every message has one parent: a single chain");
    store.close().await;
    drop(b);
}

fn presence_of(body: &Value, user: &str) -> Option<String> {
    body["presence"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["sender"] == user)
        .and_then(|e| e["content"]["presence"].as_str().map(str::to_owned))
}

async fn get_presence(c: &Client, user: &str) -> Value {
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(user));
    let (status, body) = c.get(&path).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// One long-poll of `c`'s sync from `since` that leaves `c`'s own presence
/// alone (`set_presence=offline`); moves `since` on.
async fn sync_offline(c: &Client, since: &mut String) -> Value {
    let (status, body) = c
        .get(&format!(
            "/_matrix/client/v3/sync?timeout=1000&set_presence=offline&since={since}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    *since = body["next_batch"].as_str().expect("next_batch").to_owned();
    body
}

#[tokio::test]
async fn presence_lives_on_heartbeats_heard_by_any_process_and_typing_reaches_a_late_process() {
    let Some(shared) = Shared::start("presence-", &["--presence-offline-after-secs", "3"]) else {
        return;
    };
    let (db, args) = (&shared.db, shared.args());
    let TwoProcesses {
        a: _a,
        b: _b,
        alice,
        bob_on_b,
        room,
    } = TwoProcesses::start(&db.0, &args, "presence").await;
    let alice_id = "@alice:localhost";

    // Alice's client beats on A only (a sync a second) for three TTLs:
    // B hears no announcement of those heartbeats, yet never shows her
    // offline (no flapping in bob's sync on B), because it reads her key in
    // Redis before letting time act. Bob's own polling must not count for
    // her, and set_presence=offline keeps him out of it.
    let (status, body) = bob_on_b
        .get("/_matrix/client/v3/sync?set_presence=offline")
        .await;
    assert_eq!(status, 200, "{body}");
    let mut since = body["next_batch"].as_str().expect("next_batch").to_owned();
    let beating_until = Instant::now() + Duration::from_secs(9);
    // When alice's last heartbeat was answered: the TTL runs from there.
    let mut last_beat = Instant::now();
    while Instant::now() < beating_until {
        let (status, body) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
        last_beat = Instant::now();
        assert_eq!(status, 200, "{body}");
        let body = sync_offline(&bob_on_b, &mut since).await;
        assert_ne!(
            presence_of(&body, alice_id).as_deref(),
            Some("offline"),
            "alice shown offline on B while her client beats on A: {body}"
        );
    }
    let seen_on_b = get_presence(&bob_on_b, alice_id).await;
    assert_eq!(seen_on_b["presence"], "online", "{seen_on_b}");

    // Her client stops: within the TTL (and a sweep) bob's sync on B is told
    // she went offline, and both processes say so. Measured from her last
    // heartbeat: on a loaded machine the loop above may end well after it.
    let stopped = last_beat;
    let mut told = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while told.is_none() && Instant::now() < deadline {
        let body = sync_offline(&bob_on_b, &mut since).await;
        if presence_of(&body, alice_id).as_deref() == Some("offline") {
            told = Some(stopped.elapsed());
        }
    }
    let told = told.expect("bob's sync on B hears alice went offline");
    assert!(
        told >= Duration::from_secs(2),
        "offline only once the heartbeat lapsed, not at once: {told:?}"
    );
    for (process, c) in [("A", &alice), ("B", &bob_on_b)] {
        let p = get_presence(c, alice_id).await;
        assert_eq!(p["presence"], "offline", "on {process}: {p}");
    }

    // Typing set on A while C is not running reaches C's syncs when it
    // starts: C reads it from Redis, not from an announcement it missed.
    alice.set_typing(&room, alice_id, true, 30000).await;
    let c = TestServer::start_with_databases(&db.0, &[], &args).await;
    let bob_on_c = Client {
        base: c.url.clone(),
        ..bob_on_b.clone()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = bob_on_c.get("/_matrix/client/v3/sync").await;
        assert_eq!(status, 200, "{body}");
        if typing_in(&body, &room).is_some_and(|u| u == [alice_id]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "typing set before C started not seen on C: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
