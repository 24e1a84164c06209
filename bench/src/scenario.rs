//! Scenarios: rooms of members who send as fast as acks return (or at a set
//! pace) while every member long-polls /sync and records what arrives.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use serde_json::json;

use crate::{
    Server,
    client::{Client, http_client, random_suffix},
};

pub struct Scenario {
    rooms: usize,
    members: usize,
    senders: usize,
    duration: Duration,
    pace: Option<Duration>,
    idle: Option<usize>,
    /// Idle connections are WebSockets (Hearth's sync socket) instead of long-polls.
    websocket: bool,
    /// Messages go device to device (`/sendToDevice`) instead of into rooms.
    to_device: bool,
    /// One member sends over its WebSocket sync, each send as soon as the
    /// previous one is acked.
    ws_sends: bool,
}

#[derive(Default, Clone, Copy)]
pub struct Percentiles {
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

fn percentiles(mut v: Vec<Duration>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: Some(at(0.5)),
        p99: Some(at(0.99)),
    }
}

#[derive(Default)]
pub struct Outcome {
    pub ack: Percentiles,
    pub deliver: Percentiles,
    pub sends_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub peak_rss_kb: Option<u64>,
    pub rss_per_conn_kb: Option<f64>,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub delivered: u64,
}

impl Outcome {
    /// `n` sends numbered 0..n in `elapsed` (`acks`: each one's time to its
    /// ack) and what came back of them (`seen`: number and delivery latency,
    /// in the order received): delivered, lost, duplicated, out of order.
    fn of_numbered(
        acks: Vec<Duration>,
        seen: &[(u64, Duration)],
        n: u64,
        elapsed: Duration,
    ) -> Self {
        let unique: HashSet<u64> = seen.iter().map(|(n, _)| *n).collect();
        Outcome {
            ack: percentiles(acks),
            deliver: percentiles(seen.iter().map(|(_, d)| *d).collect()),
            sends_per_sec: n as f64 / elapsed.as_secs_f64(),
            delivered: seen.len() as u64,
            lost: n - (0..n).filter(|i| unique.contains(i)).count() as u64,
            duplicated: (seen.len() - unique.len()) as u64,
            out_of_order: seen.windows(2).filter(|w| w[1].0 < w[0].0).count() as u64,
            ..Default::default()
        }
    }
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Everything receivers saw: per (receiver, room), the (sender, seq) in arrival order.
type Seen = Arc<Mutex<HashMap<(usize, usize), Vec<(usize, u64)>>>>;
type SentAt = Arc<Mutex<HashMap<(usize, usize, u64), Instant>>>;
/// What a sender reports: its room, its index, how many it sent, the acks' latencies.
type SenderResult = (usize, usize, u64, Vec<Duration>);

impl Scenario {
    pub fn named(name: &str, duration: Duration, idle: usize, smoke: bool) -> Result<Self> {
        let s = |rooms, members, senders, pace| Scenario {
            rooms,
            members,
            senders,
            duration,
            pace,
            idle: None,
            websocket: false,
            to_device: false,
            ws_sends: false,
        };
        Ok(match name {
            "unloaded" => s(1, 2, 1, Some(Duration::from_millis(50))),
            "pairs" => s(5, 2, 2, None),
            "group8" => s(2, 8, 8, None),
            "rooms5" => s(4, 5, 5, None),
            "room256" => s(1, if smoke { 16 } else { 256 }, 4, None),
            "to_device" => Scenario {
                to_device: true,
                ..s(0, 2, 1, Some(Duration::from_millis(50)))
            },
            "ws_sends" => Scenario {
                ws_sends: true,
                ..s(1, 1, 1, None)
            },
            "idle" => Scenario {
                idle: Some(if smoke { 50 } else { idle }),
                ..s(0, 0, 0, None)
            },
            "idle_ws" => Scenario {
                idle: Some(if smoke { 50 } else { idle }),
                websocket: true,
                ..s(0, 0, 0, None)
            },
            other => bail!("unknown scenario {other}"),
        })
    }

    pub async fn run(&self, server: &Server) -> Result<Outcome> {
        match self.idle {
            Some(n) if self.websocket => self.run_idle_ws(server, n).await,
            Some(n) => self.run_idle(server, n).await,
            None if self.to_device => self.run_to_device(server).await,
            None if self.ws_sends => self.run_ws_sends(server).await,
            None => self.run_rooms(server).await,
        }
    }

    async fn run_idle(&self, server: &Server, n: usize) -> Result<Outcome> {
        let http = http_client();
        let user =
            Client::register(&server.url, &http, &format!("idle{}", random_suffix())).await?;
        let first = user.sync(None, 0).await?;
        let since = first["next_batch"].as_str().unwrap_or_default().to_owned();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.pid.and_then(rss_kb);
        let mut tasks = vec![];
        for _ in 0..n {
            // Each long-poll needs its own connection.
            let c = Client {
                http: http_client(),
                ..user.clone()
            };
            let since = since.clone();
            tasks.push(tokio::spawn(
                async move { c.sync(Some(&since), 60_000).await },
            ));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = server.pid.and_then(rss_kb);
        let finished_early = tasks.iter().filter(|t| t.is_finished()).count();
        for t in &tasks {
            t.abort();
        }
        let mut o = Outcome {
            peak_rss_kb: after,
            ..Default::default()
        };
        if let (Some(b), Some(a)) = (before, after) {
            o.rss_per_conn_kb = Some(a.saturating_sub(b) as f64 / n as f64);
        }
        // An idle long-poll that returned early was not held open.
        o.lost = finished_early as u64;
        Ok(o)
    }

    /// Holds `n` idle WebSocket syncs open and reports RSS per connection. A
    /// server without Hearth's sync socket reports nothing (shown as "-").
    async fn run_idle_ws(&self, server: &Server, n: usize) -> Result<Outcome> {
        use tokio_tungstenite::{connect_async, tungstenite::client::IntoClientRequest};
        let http = http_client();
        let user =
            Client::register(&server.url, &http, &format!("idlews{}", random_suffix())).await?;
        let first = user.sync(None, 0).await?;
        let since = first["next_batch"].as_str().unwrap_or_default().to_owned();
        let url = format!(
            "{}/_matrix/client/unstable/org.hearth.ws/sync?since={}",
            server.url.replacen("http", "ws", 1),
            crate::client::enc(&since)
        );
        let connect = |url: String, token: String| async move {
            let mut req = url.into_client_request().ok()?;
            req.headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().ok()?);
            connect_async(req).await.ok().map(|(ws, _)| ws)
        };
        let Some(probe) = connect(url.clone(), user.token.clone()).await else {
            return Ok(Outcome::default());
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.pid.and_then(rss_kb);
        let sockets: Vec<_> = futures::stream::iter(0..n)
            .map(|_| connect(url.clone(), user.token.clone()))
            .buffer_unordered(100)
            .collect()
            .await;
        let open = sockets.iter().filter(|s| s.is_some()).count();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = server.pid.and_then(rss_kb);
        let mut o = Outcome {
            peak_rss_kb: after,
            lost: (n - open) as u64,
            ..Default::default()
        };
        if let (Some(b), Some(a)) = (before, after) {
            o.rss_per_conn_kb = Some(a.saturating_sub(b) as f64 / open.max(1) as f64);
        }
        drop(sockets);
        drop(probe);
        Ok(o)
    }

    /// Back-to-back sends over Hearth's WebSocket sync: each `send` frame
    /// goes as soon as the previous one's `ack` arrives; "ack" is send →
    /// ack, "deliver" send → the event in a `sync` frame on the same socket.
    /// The server writes the sync frame and the ack back to back, so this is
    /// what Nagle's algorithm with the client's delayed ACK slows down. A
    /// server without the sync socket reports nothing (shown as "-").
    async fn run_ws_sends(&self, server: &Server) -> Result<Outcome> {
        use crate::client::WsSync;
        let http = http_client();
        let run = random_suffix();
        let user = Client::register(&server.url, &http, &format!("wss{run}")).await?;
        let room = user.create_room().await?;
        let first = user.sync(None, 0).await?;
        let since = first["next_batch"].as_str().unwrap_or_default();
        let Some(mut ws) = WsSync::connect(&user, since).await else {
            return Ok(Outcome::default());
        };
        let mut sent_at: HashMap<u64, Instant> = HashMap::new();
        let mut seen: Vec<(u64, Duration)> = vec![];
        let (mut acks, mut n) = (vec![], 0u64);
        let start = Instant::now();
        while start.elapsed() < self.duration {
            let content = json!({"msgtype": "m.text", "body": format!("ws {n}"),
                                 "bench": {"run": run, "n": n}});
            let t0 = Instant::now();
            sent_at.entry(n).or_insert(t0);
            ws.send_event(n, &room, &format!("{run}-{n}"), &content)
                .await?;
            // A failed send is retried with the same txn id.
            if ws.await_answer(n, &run, &sent_at, &mut seen).await? {
                acks.push(t0.elapsed());
                n += 1;
            }
        }
        let elapsed = start.elapsed();
        let catch_up = Instant::now() + Duration::from_secs(10);
        while (seen.len() as u64) < n && Instant::now() < catch_up {
            ws.next_sync(&run, &sent_at, &mut seen).await?;
        }
        Ok(Outcome {
            deliveries_per_sec: seen.len() as f64 / start.elapsed().as_secs_f64(),
            ..Outcome::of_numbered(acks, &seen, n, elapsed)
        })
    }

    /// One device sends to-device messages to another at the scenario's pace
    /// while the receiver long-polls; latency is send → seen in `to_device`.
    async fn run_to_device(&self, server: &Server) -> Result<Outcome> {
        let http = http_client();
        let run = random_suffix();
        let sender = Client::register(&server.url, &http, &format!("tds{run}")).await?;
        let receiver = Client::register(&server.url, &http, &format!("tdr{run}")).await?;
        let first = receiver.sync(None, 0).await?;
        let since = first["next_batch"].as_str().unwrap_or_default().to_owned();
        let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let seen: Arc<Mutex<Vec<(u64, Duration)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(receive_to_device(
            receiver.clone(),
            since,
            run.clone(),
            sent_at.clone(),
            seen.clone(),
            stop.clone(),
        ));
        let start = Instant::now();
        let (mut n, mut acks) = (0u64, vec![]);
        while start.elapsed() < self.duration {
            let content = json!({"bench": {"run": run, "n": n}, "ciphertext": "x".repeat(400)});
            let t0 = Instant::now();
            sent_at.lock().insert(n, t0);
            let txn = format!("{run}-{n}");
            if sender
                .send_to_device(&receiver.user_id, &receiver.device_id, &txn, &content)
                .await
                .is_err()
            {
                continue;
            }
            acks.push(t0.elapsed());
            n += 1;
            if let Some(p) = self.pace {
                tokio::time::sleep(p).await;
            }
        }
        let elapsed = start.elapsed();
        let catch_up = Instant::now() + Duration::from_secs(20);
        while (seen.lock().len() as u64) < n && Instant::now() < catch_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        reader.abort();
        let seen = seen.lock().clone();
        Ok(Outcome::of_numbered(acks, &seen, n, elapsed))
    }

    async fn run_rooms(&self, server: &Server) -> Result<Outcome> {
        let run = random_suffix();
        let (users, rooms) = self.setup_rooms(server, &run).await?;
        let shared = Shared {
            run,
            seen: Arc::default(),
            sent_at: Arc::default(),
            deliver_lat: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            room_index: Arc::new(
                rooms
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(i, r)| (r, i))
                    .collect(),
            ),
        };
        let receivers = self.spawn_receivers(&users, &shared).await?;
        let peak = Arc::new(Mutex::new(None::<u64>));
        let sampler = server
            .pid
            .map(|pid| spawn_rss_sampler(pid, peak.clone(), shared.stop.clone()));

        let start = Instant::now();
        let senders = self.spawn_senders(&users, &rooms, &shared, start + self.duration);
        let mut ack_lat = vec![];
        let mut sent_counts: HashMap<(usize, usize), u64> = HashMap::new();
        for t in senders {
            let (r, s, n, acks) = t.await?;
            sent_counts.insert((r, s), n);
            ack_lat.extend(acks);
        }
        let elapsed = start.elapsed();
        let total_sent: u64 = sent_counts.values().sum();
        self.wait_for_delivery(users.len(), &shared.seen, &sent_counts)
            .await;
        let delivery_window = start.elapsed();
        shared.stop.store(true, Ordering::Relaxed);
        for t in receivers.into_iter().chain(sampler) {
            t.abort();
        }
        let deliver = shared.deliver_lat.lock().clone();
        let mut o = Outcome {
            ack: percentiles(ack_lat),
            deliver: percentiles(deliver),
            sends_per_sec: total_sent as f64 / elapsed.as_secs_f64(),
            peak_rss_kb: *peak.lock(),
            ..Default::default()
        };
        let seen = shared.seen.lock().clone();
        self.check_deliveries(&seen, &sent_counts, &mut o);
        o.deliveries_per_sec = o.delivered as f64 / delivery_window.as_secs_f64();
        Ok(o)
    }

    /// Registers every member (spread over the server's processes) and puts
    /// them in their rooms.
    async fn setup_rooms(&self, server: &Server, run: &str) -> Result<(Vec<Client>, Vec<String>)> {
        let http = http_client();
        let users: Vec<Client> = futures::stream::iter(0..self.rooms * self.members)
            .map(|i| {
                let http = http.clone();
                let name = format!("b{run}u{i}");
                let url = server.urls[i % server.urls.len()].clone();
                async move { Client::register(&url, &http, &name).await }
            })
            .buffered(8)
            .try_collect()
            .await?;
        let mut rooms = vec![];
        for r in 0..self.rooms {
            let members = &users[r * self.members..(r + 1) * self.members];
            let room = members[0].create_room().await?;
            let via = members[0].server_name.clone();
            futures::stream::iter(members[1..].iter())
                .map(|m| m.join(&room, &via))
                .buffer_unordered(8)
                .try_collect::<Vec<()>>()
                .await?;
            rooms.push(room);
        }
        Ok((users, rooms))
    }

    /// Receivers: every member long-polls from its current position and
    /// records the bench messages it sees.
    async fn spawn_receivers(
        &self,
        users: &[Client],
        shared: &Shared,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>> {
        let mut receivers = vec![];
        for (idx, user) in users.iter().enumerate() {
            let first = user.sync(None, 0).await?;
            let since = first["next_batch"].as_str().unwrap_or_default().to_owned();
            let (user, shared, members) = (user.clone(), shared.clone(), self.members);
            receivers.push(tokio::spawn(async move {
                receive(user, since, idx, members, shared).await
            }));
        }
        Ok(receivers)
    }

    /// Senders: the first `senders` members of each room send until
    /// `deadline`; each task returns (room, sender, count, ack latencies).
    fn spawn_senders(
        &self,
        users: &[Client],
        rooms: &[String],
        shared: &Shared,
        deadline: Instant,
    ) -> Vec<tokio::task::JoinHandle<SenderResult>> {
        let mut senders = vec![];
        for (r, room) in rooms.iter().enumerate() {
            for s in 0..self.senders {
                let user = users[r * self.members + s].clone();
                let (room, sent_at, run, pace) = (
                    room.clone(),
                    shared.sent_at.clone(),
                    shared.run.clone(),
                    self.pace,
                );
                senders.push(tokio::spawn(async move {
                    let mut acks = vec![];
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let content = json!({"msgtype": "m.text", "body": format!("bench {s} {n}"),
                                             "bench": {"run": run, "s": s, "n": n}});
                        let t0 = Instant::now();
                        sent_at.lock().insert((r, s, n), t0);
                        if user
                            .send(&room, &format!("{run}-{s}-{n}"), &content)
                            .await
                            .is_err()
                        {
                            // A failed send is retried with the same txn id: it must not duplicate.
                            continue;
                        }
                        acks.push(t0.elapsed());
                        n += 1;
                        if let Some(p) = pace {
                            tokio::time::sleep(p).await;
                        }
                    }
                    (r, s, n, acks)
                }));
            }
        }
        senders
    }

    /// Waits (up to 20 s) for every member to have everything its room sent.
    async fn wait_for_delivery(
        &self,
        users: usize,
        seen: &Seen,
        sent_counts: &HashMap<(usize, usize), u64>,
    ) {
        let expected_per_room: Vec<u64> = (0..self.rooms)
            .map(|r| {
                (0..self.senders)
                    .map(|s| sent_counts.get(&(r, s)).copied().unwrap_or(0))
                    .sum()
            })
            .collect();
        let catch_up = Instant::now() + Duration::from_secs(20);
        loop {
            let done = {
                let m = seen.lock();
                (0..users).all(|i| {
                    let r = i / self.members.max(1);
                    m.get(&(i, r)).map_or(0, |v| v.len() as u64) >= expected_per_room[r]
                })
            };
            if done || Instant::now() > catch_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Counts what was delivered, lost, duplicated and seen out of order
    /// (per sender, and between members of one room).
    fn check_deliveries(
        &self,
        seen: &HashMap<(usize, usize), Vec<(usize, u64)>>,
        sent_counts: &HashMap<(usize, usize), u64>,
        o: &mut Outcome,
    ) {
        let empty = vec![];
        for r in 0..self.rooms {
            let mut reference: Option<&Vec<(usize, u64)>> = None;
            for m in 0..self.members {
                let got = seen.get(&(r * self.members + m, r)).unwrap_or(&empty);
                o.delivered += got.len() as u64;
                let unique: HashSet<&(usize, u64)> = got.iter().collect();
                o.duplicated += (got.len() - unique.len()) as u64;
                for s in 0..self.senders {
                    let want = sent_counts.get(&(r, s)).copied().unwrap_or(0);
                    let have = (0..want).filter(|n| unique.contains(&(s, *n))).count() as u64;
                    o.lost += want - have;
                    let seq: Vec<u64> = got
                        .iter()
                        .filter(|(ss, _)| *ss == s)
                        .map(|(_, n)| *n)
                        .collect();
                    o.out_of_order += seq.windows(2).filter(|w| w[1] < w[0]).count() as u64;
                }
                // Every member must see the room in one and the same order.
                match reference {
                    None => reference = Some(got),
                    Some(first) if first != got && unique.len() == first.len() => {
                        o.out_of_order += 1
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What the senders and receivers of a rooms scenario share.
#[derive(Clone)]
struct Shared {
    run: String,
    seen: Seen,
    sent_at: SentAt,
    deliver_lat: Arc<Mutex<Vec<Duration>>>,
    stop: Arc<AtomicBool>,
    room_index: Arc<HashMap<String, usize>>,
}

/// One member's long-poll loop (member `idx`, `members` to a room).
async fn receive(user: Client, mut since: String, idx: usize, members: usize, shared: Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(body) = user.sync(Some(&since), 2_000).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let now = Instant::now();
        since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
        let Some(joined) = body["rooms"]["join"].as_object() else {
            continue;
        };
        for (room_id, room) in joined {
            let Some(&r) = shared.room_index.get(room_id) else {
                continue;
            };
            for ev in room["timeline"]["events"].as_array().into_iter().flatten() {
                let b = &ev["content"]["bench"];
                if b["run"] != shared.run.as_str() {
                    continue;
                }
                let (Some(s), Some(n)) = (b["s"].as_u64(), b["n"].as_u64()) else {
                    continue;
                };
                let s = s as usize;
                shared.seen.lock().entry((idx, r)).or_default().push((s, n));
                // Latency counts deliveries to members other than the sender.
                if s != idx % members
                    && let Some(t0) = shared.sent_at.lock().get(&(r, s, n)).copied()
                {
                    shared.deliver_lat.lock().push(now - t0);
                }
            }
        }
    }
}

/// Samples the server's resident memory every 100 ms, keeping the peak.
fn spawn_rss_sampler(
    pid: u32,
    peak: Arc<Mutex<Option<u64>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Some(kb) = rss_kb(pid) {
                let mut p = peak.lock();
                *p = Some(p.map_or(kb, |m: u64| m.max(kb)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The to-device receiver's long-poll loop: records when each bench message
/// of this run arrives.
async fn receive_to_device(
    receiver: Client,
    mut since: String,
    run: String,
    sent_at: Arc<Mutex<HashMap<u64, Instant>>>,
    seen: Arc<Mutex<Vec<(u64, Duration)>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(body) = receiver.sync(Some(&since), 2_000).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let now = Instant::now();
        since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
        for ev in body["to_device"]["events"].as_array().into_iter().flatten() {
            let b = &ev["content"]["bench"];
            let Some(n) = b["n"].as_u64().filter(|_| b["run"] == run.as_str()) else {
                continue;
            };
            let t0 = sent_at.lock().get(&n).copied();
            if let Some(t0) = t0 {
                seen.lock().push((n, now - t0));
            }
        }
    }
}
