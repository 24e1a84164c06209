//! Scale-out mode with one event shard stopped: rooms on the other shard keep
//! working, rooms on the stopped one answer 503 `M_UNAVAILABLE` promptly
//! instead of hanging, and they recover once the shard is back, without
//! restarting Hearth.
//!
//! The main database and shard 0 live on the shared Postgres at
//! 127.0.0.1:5432; shard 1 on a private cluster this test creates, so that it
//! can be stopped without disturbing anything else.

mod common;

use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{Client, TestServer, create_database_on, drop_database_on, enc, next_batch, temp_dir};
use serde_json::{Value, json};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const SHARED: &str = "postgres://postgres@127.0.0.1:5432";

/// A request on the stopped shard must be answered within this.
const PROMPT: Duration = Duration::from_secs(8);
/// A request on a frozen shard: Hearth's request deadline (15 s) and slack.
const FROZEN_PROMPT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_stopped_shard_answers_503_while_other_shards_work_and_recovers_on_restart() {
    let started = Instant::now();
    let Some(Outage {
        cluster,
        shared: _shared,
        hs,
        alice,
        up,
        down,
    }) = Outage::set_up().await
    else {
        return;
    };

    let mut before = vec![];
    for i in 0..3 {
        before.push(
            alice
                .send_text(&down, &format!("before{i}"), &format!("b{i}"))
                .await,
        );
        alice
            .send_text(&up, &format!("up-before{i}"), &format!("u{i}"))
            .await;
    }
    let since = next_batch(&alice.sync("timeout=0").await);

    cluster.stop();

    // The stopped shard's room: a prompt 503, twice (the second send finds
    // the room's view dropped after the first failed commit and reloads it).
    for txn in ["outage0", "outage1"] {
        let (elapsed, (s, body)) = timed(send(&alice, &down, txn, "lost?")).await;
        assert_eq!(s, 503, "send on the stopped shard: {body}");
        assert_eq!(body["errcode"], "M_UNAVAILABLE", "{body}");
        eprintln!("send on the stopped shard: 503 after {elapsed:?}");
    }
    let (elapsed, (s, body)) = timed(alice.get(&messages(&down, 10))).await;
    assert_eq!(s, 503, "/messages on the stopped shard: {body}");
    eprintln!("/messages on the stopped shard: 503 after {elapsed:?}");

    // The other shard's room is untouched.
    send_on_running_shard(&alice, &up, "up-during", "u-during").await;
    let (s, page) = timed(alice.get(&messages(&up, 10))).await.1;
    assert_eq!(s, 200, "/messages on the running shard: {page}");
    assert_eq!(
        bodies(&page),
        ["u-during", "u2", "u1", "u0"],
        "/messages on the running shard"
    );

    // A sync covers both shards. It must answer, not hang; what it answers
    // is reported. (Today: the incremental one is served from memory and
    // carries the running shard's news; the initial one reads every room's
    // state from its shard and answers 503.)
    for (what, path) in [
        (
            "incremental",
            format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
        ),
        ("initial", "/_matrix/client/v3/sync?timeout=0".to_owned()),
    ] {
        let (elapsed, (s, body)) = timed(alice.get(&path)).await;
        assert!(
            s == 200 || s == 503,
            "{what} sync during the outage: {s} {body}"
        );
        if s == 503 {
            assert_eq!(body["errcode"], "M_UNAVAILABLE", "{body}");
        } else if what == "incremental" {
            assert_eq!(timeline(&body, &up), ["u-during"], "{body}");
        }
        eprintln!("{what} sync during the outage: {s} after {elapsed:?}");
    }

    cluster.start();
    let restarted = Instant::now();

    // Back without restarting Hearth: the client retries its failed send
    // (same transaction id) until it goes through.
    let recovered = retry_until_stored(
        &alice,
        &down,
        ("outage0", "after"),
        PROMPT,
        Duration::from_secs(15),
    )
    .await;
    eprintln!(
        "the stopped shard's room took a send {:?} after the restart",
        restarted.elapsed()
    );
    // The retry is idempotent now that it committed once.
    let (s, again) = send(&alice, &down, "outage0", "after").await;
    assert_eq!(
        (s, again["event_id"].as_str()),
        (200, Some(recovered.as_str()))
    );

    // What was acknowledged before the outage is there, in order, and
    // nothing of the refused sends.
    let (s, page) = alice.get(&messages(&down, 10)).await;
    assert_eq!(s, 200, "/messages after recovery: {page}");
    assert_eq!(bodies(&page), ["after", "b2", "b1", "b0"]);
    let ids: Vec<&str> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    let expected: Vec<&str> = std::iter::once(recovered.as_str())
        .chain(before.iter().rev().map(String::as_str))
        .collect();
    assert_eq!(ids, expected);

    // And sync catches up with both rooms.
    let (s, body) = timed(alice.get(&format!("/_matrix/client/v3/sync?timeout=0&since={since}")))
        .await
        .1;
    assert_eq!(s, 200, "sync after recovery: {body}");
    assert_eq!(timeline(&body, &down), ["after"]);
    assert_eq!(timeline(&body, &up), ["u-during"]);

    drop(hs);
    eprintln!("shard outage test took {:?}", started.elapsed());
}

/// A server whose shard 0 is on the shared Postgres and shard 1 on a private
/// cluster, with a room on each. Fields drop in order: the server first, the
/// databases last.
struct Outage {
    hs: TestServer,
    alice: Client,
    /// A room on shard 0 (stays up).
    up: String,
    /// A room on shard 1 (the private cluster).
    down: String,
    shared: SharedDatabases,
    cluster: PrivateCluster,
}

impl Outage {
    /// None (the test is skipped) where no PostgreSQL binaries are installed
    /// to run a private cluster with.
    async fn set_up() -> Option<Self> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            eprintln!("skipped: no PostgreSQL binaries under {PG_BIN}");
            return None;
        }
        let cluster = PrivateCluster::create();
        let shared = SharedDatabases(vec![create_database_on(SHARED), create_database_on(SHARED)]);
        let shard1 = create_database_on(&cluster.base());
        let shards = [shared.0[1].clone(), shard1];
        let hs = TestServer::start_with_databases(&shared.0[0], &shards, &[]).await;
        let alice = hs.register("alice", "pw-alice").await;
        // Rooms hash over the shards; create until each shard holds one, and
        // ask the main database where each went.
        let mut on_shard: [Option<String>; 2] = [None, None];
        for i in 0..40 {
            if on_shard.iter().all(Option::is_some) {
                break;
            }
            let room = alice.create_room(json!({"name": format!("r{i}")})).await;
            let shard = psql_scalar(
                &shared.0[0],
                &format!("SELECT shard FROM rooms WHERE room_id = '{room}'"),
            );
            match shard.as_str() {
                "0" => on_shard[0].get_or_insert(room),
                "1" => on_shard[1].get_or_insert(room),
                other => panic!("room {room} on unexpected shard {other:?}"),
            };
        }
        let [Some(up), Some(down)] = on_shard else {
            panic!("40 rooms and still not one on each shard: {on_shard:?}");
        };
        Some(Outage {
            hs,
            alice,
            up,
            down,
            shared,
            cluster,
        })
    }
}

/// A shard that stops answering without closing its connections (the
/// machine froze, a network partition): requests on its rooms answer 503,
/// never hang: once the pool gives up checking a connection out (each
/// checkout pings it), or, for a query already in flight, once the request
/// deadline passes. Other rooms are untouched. Once
/// the shard answers again, retries find every message stored exactly once.
#[tokio::test]
async fn a_frozen_shard_answers_503_not_a_hang_and_retries_find_each_send_stored_once() {
    let Some(Outage {
        cluster,
        shared: _shared,
        hs,
        alice,
        up,
        down,
    }) = Outage::set_up().await
    else {
        return;
    };

    // Sends one after another into the shard's room until one fails, so the
    // freeze catches a commit in flight.
    let sender = {
        let (alice, down) = (alice.clone(), down.clone());
        tokio::spawn(async move {
            let mut acked = vec![];
            for i in 0.. {
                let txn = format!("load{i}");
                let (elapsed, (s, body)) =
                    timed_within(FROZEN_PROMPT, send(&alice, &down, &txn, &txn)).await;
                if s != 200 {
                    return (acked, txn, s, body, elapsed);
                }
                acked.push(txn);
            }
            unreachable!()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.freeze();
    let (acked, caught, s, body, elapsed) = sender.await.expect("sender");
    assert_eq!(s, 503, "send caught by the freeze: {body}");
    assert_eq!(body["errcode"], "M_UNAVAILABLE", "{body}");
    assert!(!acked.is_empty(), "nothing was sent before the freeze");
    eprintln!(
        "send caught by the freeze: 503 after {elapsed:?} ({} acknowledged before)",
        acked.len()
    );

    let (elapsed, (s, body)) =
        timed_within(FROZEN_PROMPT, send(&alice, &down, "later", "later")).await;
    assert_eq!(s, 503, "a later send on the frozen shard: {body}");
    eprintln!("later send on the frozen shard: 503 after {elapsed:?}");
    let (elapsed, (s, body)) = timed_within(FROZEN_PROMPT, alice.get(&messages(&down, 10))).await;
    assert_eq!(s, 503, "/messages on the frozen shard: {body}");
    eprintln!("/messages on the frozen shard: 503 after {elapsed:?}");
    send_on_running_shard(&alice, &up, "up-frozen", "u").await;

    cluster.thaw();
    let thawed = Instant::now();
    // The client retries what failed, with the same transaction ids.
    for txn in [caught.as_str(), "later"] {
        retry_until_stored(
            &alice,
            &down,
            (txn, txn),
            FROZEN_PROMPT,
            Duration::from_secs(20),
        )
        .await;
    }
    eprintln!("retries stored {:?} after the thaw", thawed.elapsed());
    // Whether the caught send committed when the shard came back or only on
    // its retry, the room holds every message exactly once, in send order.
    let limit = acked.len() as u32 + 20;
    let (s, page) = alice.get(&messages(&down, limit)).await;
    assert_eq!(s, 200, "/messages after the thaw: {page}");
    let mut stored = bodies(&page);
    stored.reverse();
    let mut expected = acked.clone();
    expected.push(caught.clone());
    expected.push("later".into());
    assert_eq!(stored, expected);
    drop(hs);
}

/// A send in the running shard's room: 200, well under the pool's acquire
/// timeout (nothing waited on the other shard).
async fn send_on_running_shard(c: &Client, room: &str, txn: &str, body: &str) {
    let (elapsed, (s, answer)) = timed(send(c, room, txn, body)).await;
    assert_eq!(s, 200, "send on the running shard: {answer}");
    assert!(
        elapsed < Duration::from_secs(2),
        "slow send on the running shard: {elapsed:?}"
    );
}

/// Retries a send as a client would, with the same transaction id, every
/// 200 ms until it is stored (each attempt answered within `attempt`, all of
/// them within `within`); returns its event id.
async fn retry_until_stored(
    c: &Client,
    room: &str,
    (txn, body): (&str, &str),
    attempt: Duration,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (s, answer) = timed_within(attempt, send(c, room, txn, body)).await.1;
        if s == 200 {
            return answer["event_id"].as_str().expect("event_id").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "retry of {txn} not stored within {within:?}: {s} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `request`, failing the test if it takes longer than `PROMPT`.
async fn timed<T>(request: impl Future<Output = T>) -> (Duration, T) {
    timed_within(PROMPT, request).await
}

/// Runs `request`, failing the test if it takes longer than `limit`.
async fn timed_within<T>(limit: Duration, request: impl Future<Output = T>) -> (Duration, T) {
    let start = Instant::now();
    let out = tokio::time::timeout(limit, request)
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}"));
    (start.elapsed(), out)
}

async fn send(c: &Client, room: &str, txn: &str, body: &str) -> (u16, Value) {
    c.send_message(room, txn, body).await
}

fn messages(room: &str, limit: u32) -> String {
    format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
        enc(room)
    )
}

/// The bodies of a page's messages, newest first.
fn bodies(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// The bodies of the messages a sync response carries for `room`.
fn timeline(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One value from a query, as text.
fn psql_scalar(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql {sql}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Databases on the shared server, dropped however the test ends.
struct SharedDatabases(Vec<String>);

impl Drop for SharedDatabases {
    fn drop(&mut self) {
        for url in &self.0 {
            drop_database_on(SHARED, url);
        }
    }
}

/// A Postgres cluster of this test's own in a temporary directory, on a free
/// port of 127.0.0.1; stopped and removed however the test ends.
struct PrivateCluster {
    dir: PathBuf,
    port: u16,
    /// initdb and postgres refuse to run as root: as root, run them as the
    /// `postgres` user.
    as_postgres: bool,
}

impl PrivateCluster {
    fn create() -> Self {
        let dir = temp_dir("pg");
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown {} to postgres", dir.display());
        }
        let mut cluster = PrivateCluster {
            dir,
            port: 0,
            as_postgres,
        };
        let data = cluster.data();
        let out = cluster.pg(
            "initdb",
            &[
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
                &data,
            ],
        );
        assert!(out.status.success(), "initdb: {}", stderr(&out));
        // Another process may take the port between our probe and the
        // server's bind; a few tries make that harmless.
        for _ in 0..5 {
            cluster.port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("no free port");
            if cluster.try_start().status.success() {
                return cluster;
            }
        }
        panic!("private Postgres did not start: {}", cluster.log());
    }

    /// `postgres://…` of this server, without a database.
    fn base(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn try_start(&self) -> Output {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "30",
                "-o",
                &options,
                "-l",
                &log,
                "-D",
                &self.data(),
            ],
        )
    }

    fn start(&self) {
        let out = self.try_start();
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            stderr(&out),
            self.log()
        );
    }

    /// Stops the server as a crash would: backends are killed, nothing is
    /// flushed, clients see their connections drop.
    fn stop(&self) {
        let out = self.pg(
            "pg_ctl",
            &["stop", "-w", "-m", "immediate", "-D", &self.data()],
        );
        assert!(out.status.success(), "pg_ctl stop: {}", stderr(&out));
    }

    /// Freezes every process of the server (SIGSTOP): connections stay
    /// open, nothing answers.
    fn freeze(&self) {
        self.signal("-STOP");
    }

    fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pidfile = self.dir.join("data").join("postmaster.pid");
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
        else {
            return;
        };
        let children = Command::new("pgrep")
            .args(["-P", &pid])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut pids: Vec<&str> = children.split_whitespace().collect();
        pids.push(&pid);
        let status = Command::new("kill").arg(signal).args(&pids).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pids:?}");
    }

    /// Runs one of the Postgres binaries on this cluster, as `postgres` when
    /// this test runs as root.
    fn pg(&self, bin: &str, args: &[&str]) -> Output {
        let bin = Path::new(PG_BIN).join(bin);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.args(args)
            // The postgres user may not be able to enter the test's cwd.
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run a PostgreSQL binary")
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.port != 0 {
            // A frozen server would never stop.
            self.signal("-CONT");
            let _ = self.pg(
                "pg_ctl",
                &["stop", "-w", "-m", "immediate", "-D", &self.data()],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
