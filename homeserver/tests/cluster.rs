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

use common::{Client, TestServer, create_database_on, drop_database_on, enc};
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

fn typing_users(body: &Value, room: &str) -> Option<Vec<String>> {
    body["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.typing")
        .and_then(|e| e["content"]["user_ids"].as_array())
        .map(|ids| {
            ids.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
}

async fn set_typing(c: &Client, room: &str, user: &str, typing: bool) {
    let (status, body) = c
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(room),
                enc(user)
            ),
            json!({"typing": typing, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn two_processes_share_wakeups_typing_and_presence_and_survive_redis_stopping() {
    let Some(mut redis) = PrivateRedis::start() else {
        eprintln!("redis-server cannot be run here; skipping");
        return;
    };
    let db = Database(create_database_on(PG));
    let prefix = format!("hearth-test-{}", std::process::id());
    let args = ["--redis-url", &redis.url(), "--redis-prefix", &prefix];
    let a = TestServer::start_with_databases(&db.0, &[], &args).await;
    let b = TestServer::start_with_databases(&db.0, &[], &args).await;

    let alice = a.register("alice", "pw-alice").await;
    let bob_on_b = b.register("bob", "pw-bob").await;
    // Until room writers are shared between processes, one process writes
    // the room: bob's own writes go through process A.
    let bob_on_a = Client {
        base: a.url.clone(),
        ..bob_on_b.clone()
    };
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "two processes"}))
        .await;
    let (status, body) = bob_on_a
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
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
    set_typing(&alice, &room, alice_id, true).await;
    sync_until(&bob_on_b, &mut since, Duration::from_secs(5), |b| {
        typing_users(b, &room).is_some_and(|u| u == [alice_id])
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
        let (status, p) = bob_on_b
            .get(&format!(
                "/_matrix/client/v3/presence/{}/status",
                enc(alice_id)
            ))
            .await;
        assert_eq!(status, 200, "{p}");
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
    redis.stop();
    alice.send_text(&room, "m2", "without redis").await;
    sync_until(&bob_on_b, &mut since, Duration::from_secs(10), |b| {
        has_message(b, &room, "without redis")
    })
    .await
    .expect("message sent on A reaches B with Redis down");
    set_typing(&alice, &room, alice_id, false).await;
    let (status, body) = alice.get("/_matrix/client/v3/sync").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        typing_users(&body, &room),
        None,
        "typing off is seen on its own process: {body}"
    );
    let mut alice_since = body["next_batch"].as_str().expect("next_batch").to_owned();
    set_typing(&alice, &room, alice_id, true).await;
    sync_until(&alice, &mut alice_since, Duration::from_secs(5), |b| {
        typing_users(b, &room).is_some_and(|u| u == [alice_id])
    })
    .await
    .expect("typing works on its own process with Redis down");

    // Redis returns: sharing resumes without a restart.
    assert!(redis.resume(), "redis restarts");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut typing = false;
    loop {
        set_typing(&alice, &room, alice_id, typing).await;
        let want: Vec<String> = if typing {
            vec![alice_id.to_owned()]
        } else {
            vec![]
        };
        let seen = sync_until(&bob_on_b, &mut since, Duration::from_millis(1500), |b| {
            typing_users(b, &room).is_some_and(|u| u == want)
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
