//! Federation between real Hearth processes: four servers, each found a
//! different way (default port 8448, SRV, well-known delegation, IP
//! literal), over TLS from a test CA, with a DNS server run by the test.
// The lock policy (parking_lot) is for the server; a test's own
// bookkeeping may use std's locks.
#![allow(clippy::disallowed_types)]

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use common::{Client, TestServer, assert_error, ca::TestCa, enc, message_events, typing_in};
use hickory_server::{
    Server,
    net::runtime::TokioRuntimeProvider,
    proto::rr::{
        LowerName, Name, RData, Record,
        rdata::{A, SOA, SRV},
    },
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType},
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    serde::Base64,
    signatures::{Ed25519KeyPair, PublicKeyMap, PublicKeySet, verify_json},
};
use serde_json::{Value, json};

/// A DNS server for the zone `test.`, answering what the test put in it.
struct TestDns {
    addr: SocketAddr,
    _server: Server<Catalog>,
}

impl TestDns {
    async fn start(a: &[(&str, Ipv4Addr)], srv: &[(&str, u16, &str)]) -> Self {
        let origin = Name::from_ascii("test.").expect("origin");
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let name = |n: &str| Name::from_ascii(format!("{n}.")).expect("name");
        let soa = SOA::new(name("ns.test"), name("admin.test"), 1, 60, 60, 60, 1);
        zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
        for (host, ip) in a {
            zone.upsert_mut(Record::from_rdata(name(host), 1, RData::A(A(*ip))), 1);
        }
        for (service, port, target) in srv {
            let rdata = RData::SRV(SRV::new(10, 5, *port, name(target)));
            zone.upsert_mut(Record::from_rdata(name(service), 1, rdata), 1);
        }
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::from(origin),
            vec![Arc::new(zone) as Arc<dyn ZoneHandler>],
        );
        let mut server = Server::new(catalog);
        // UDP and TCP on one port: a free UDP port may be taken for TCP.
        let (udp, tcp, addr) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("dns udp");
            let addr = udp.local_addr().expect("dns addr");
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                break (udp, tcp, addr);
            }
        };
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 32);
        TestDns {
            addr,
            _server: server,
        }
    }
}

/// Loopback addresses of this test's own (x.y random) for the federation
/// listeners, which use fixed ports (8448, 443).
fn loopback_block() -> [Ipv4Addr; 5] {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    let (x, y) = (1 + (n % 250) as u8, 1 + ((n >> 8) % 250) as u8);
    [11, 12, 13, 14, 15].map(|h| Ipv4Addr::new(127, x, y, h))
}

fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One federating Hearth: its server name, its user, where its federation
/// listener is.
struct Fed {
    name: String,
    hs: TestServer,
    user: Client,
    user_id: String,
    listener: SocketAddr,
}

async fn start_fed(
    name: &str,
    listener: SocketAddr,
    (cert, key): (PathBuf, PathBuf),
    ca: &Path,
    dns: SocketAddr,
    extra: &[&str],
) -> Fed {
    let mut args = vec![
        "--server-name".to_string(),
        name.to_string(),
        "--federation-listen".into(),
        listener.to_string(),
        "--federation-tls-cert".into(),
        cert.display().to_string(),
        "--federation-tls-key".into(),
        key.display().to_string(),
        "--federation-ca-files".into(),
        ca.display().to_string(),
        "--federation-nameservers".into(),
        dns.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let hs = TestServer::start(&refs).await;
    let user = hs.register("user", "pw-user").await;
    let (s, body) = user
        .put(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&format!("@user:{name}"))
            ),
            json!({"displayname": format!("user of {name}")}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    Fed {
        name: name.to_owned(),
        user_id: format!("@user:{name}"),
        hs,
        user,
        listener,
    }
}

/// Four servers: `a.test` on port 8448 (no SRV, no well-known), `b.test`
/// by SRV to `fed-b.test`, `c.test` delegated by well-known to
/// `fed-c.test:443`, and an IP literal with a port.
struct World {
    servers: Vec<Fed>,
    ca: TestCa,
    _dns: TestDns,
    /// Where `evil.test` (played by a test) listens.
    evil: SocketAddr,
}

impl World {
    async fn start() -> World {
        let [ip_a, ip_b, ip_c, ip_d, ip_e] = loopback_block();
        let port_b = free_port(ip_b);
        let port_d = free_port(ip_d);
        let dns = TestDns::start(
            &[
                ("a.test", ip_a),
                ("fed-b.test", ip_b),
                ("c.test", ip_c),
                ("fed-c.test", ip_c),
                // A server the test plays itself (port 8448).
                ("evil.test", ip_e),
            ],
            &[("_matrix-fed._tcp.b.test", port_b, "fed-b.test")],
        )
        .await;
        let ca = TestCa::new();
        let d_name = format!("{ip_d}:{port_d}");
        let ca_file = ca.ca_file();
        let a = start_fed(
            "a.test",
            SocketAddr::new(ip_a.into(), 8448),
            ca.issue("a", &["a.test"]),
            &ca_file,
            dns.addr,
            &[],
        )
        .await;
        // The certificate names b.test only: with SRV, the server name is
        // what TLS checks, not the SRV target.
        let b = start_fed(
            "b.test",
            SocketAddr::new(ip_b.into(), port_b),
            ca.issue("b", &["b.test"]),
            &ca_file,
            dns.addr,
            &[],
        )
        .await;
        // Serves its own well-known on 443, delegating to fed-c.test:443.
        let c = start_fed(
            "c.test",
            SocketAddr::new(ip_c.into(), 443),
            ca.issue("c", &["c.test", "fed-c.test"]),
            &ca_file,
            dns.addr,
            &["--federation-well-known-server", "fed-c.test:443"],
        )
        .await;
        let d = start_fed(
            &d_name,
            SocketAddr::new(ip_d.into(), port_d),
            ca.issue("d", &[&ip_d.to_string()]),
            &ca_file,
            dns.addr,
            &[],
        )
        .await;
        World {
            servers: vec![a, b, c, d],
            ca,
            _dns: dns,
            evil: SocketAddr::new(ip_e.into(), 8448),
        }
    }
}

impl World {
    /// Only `a.test`, with the `evil.test` a test plays: for tests of one
    /// server's dealings with another.
    async fn start_one() -> World {
        let [ip_a, _, _, _, ip_e] = loopback_block();
        let dns = TestDns::start(&[("a.test", ip_a), ("evil.test", ip_e)], &[]).await;
        let ca = TestCa::new();
        let a = start_fed(
            "a.test",
            SocketAddr::new(ip_a.into(), 8448),
            ca.issue("a", &["a.test"]),
            &ca.ca_file(),
            dns.addr,
            &[],
        )
        .await;
        World {
            servers: vec![a],
            ca,
            _dns: dns,
            evil: SocketAddr::new(ip_e.into(), 8448),
        }
    }
}

/// An HTTPS client that reaches `server`'s federation listener directly,
/// trusting the test CA only, by the server's own name.
fn direct(ca: &TestCa, server: &Fed) -> (reqwest::Client, String) {
    let root = reqwest::Certificate::from_pem(&ca.ca_pem()).expect("ca");
    let host = server.name.split(':').next().expect("host").to_owned();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve(&host, server.listener)
        .build()
        .expect("client");
    (http, format!("https://{host}:{}", server.listener.port()))
}

fn object(v: &Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(v.clone()) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        other => panic!("not an object: {other:?}"),
    }
}

/// `server`'s verify keys from a key response.
fn verify_keys(v: &Value) -> PublicKeySet {
    v["verify_keys"]
        .as_object()
        .expect("verify_keys")
        .iter()
        .map(|(id, k)| {
            let key = Base64::parse(k["key"].as_str().expect("key")).expect("base64");
            (id.clone(), key)
        })
        .collect()
}

/// Checks `entity`'s signature on `v` with `keys`.
fn check_signed(v: &Value, entity: &str, keys: &PublicKeySet) {
    let mut obj = object(v);
    if let Some(CanonicalJsonValue::Object(sigs)) = obj.get_mut("signatures") {
        sigs.retain(|k, _| k == entity);
    }
    let mut map = PublicKeyMap::new();
    map.insert(entity.to_owned(), keys.clone());
    verify_json(&map, &obj).unwrap_or_else(|e| panic!("{entity}'s signature on {v}: {e}"));
}

async fn own_keys(ca: &TestCa, server: &Fed) -> Value {
    let (http, base) = direct(ca, server);
    let resp = http
        .get(format!("{base}/_matrix/key/v2/server"))
        .send()
        .await
        .expect("key request");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

#[tokio::test]
async fn servers_found_by_port_srv_well_known_and_ip_literal_answer_signed_queries() {
    let world = World::start().await;
    let names: Vec<&str> = world.servers.iter().map(|s| s.name.as_str()).collect();
    eprintln!("servers: {names:?}");

    // Every server looks up every other server's user: discovery, TLS,
    // signed request, key fetch and verification, each way.
    for asker in &world.servers {
        for target in &world.servers {
            if asker.name == target.name {
                continue;
            }
            let (s, body) = asker
                .user
                .get(&format!(
                    "/_matrix/client/v3/profile/{}",
                    enc(&target.user_id)
                ))
                .await;
            assert_eq!(
                s, 200,
                "{} asking {} for {}: {body}",
                asker.name, target.name, target.user_id
            );
            assert_eq!(body["displayname"], format!("user of {}", target.name));
        }
    }

    let [a, b, c, d] = &world.servers[..] else {
        unreachable!()
    };
    // A missing remote user is the remote server's 404.
    let (s, body) = a
        .user
        .get(&format!(
            "/_matrix/client/v3/profile/{}/displayname",
            enc("@nobody:b.test")
        ))
        .await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    // A remote alias resolves through the alias's server.
    let room = b
        .user
        .create_room(json!({"room_alias_name": "lobby", "preset": "public_chat"}))
        .await;
    let (s, body) = c
        .user
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc("#lobby:b.test")
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["room_id"], room);
    assert_eq!(body["servers"], json!(["b.test"]));

    // Each server's keys are self-signed; a notary (A) relays B's and D's
    // with both signatures.
    let a_keys = own_keys(&world.ca, a).await;
    check_signed(&a_keys, "a.test", &verify_keys(&a_keys));
    assert!(a_keys["valid_until_ts"].as_u64().expect("valid_until_ts") > now_ms());
    let b_keys = own_keys(&world.ca, b).await;
    check_signed(&b_keys, "b.test", &verify_keys(&b_keys));
    let (http, base) = direct(&world.ca, a);
    let resp: Value = http
        .post(format!("{base}/_matrix/key/v2/query"))
        .json(&json!({"server_keys": {"b.test": {}, "unknown.test": {}, &d.name: {"ed25519:x": {"minimum_valid_until_ts": 0}}}}))
        .send()
        .await
        .expect("notary query")
        .json()
        .await
        .expect("json");
    let relayed = resp["server_keys"].as_array().expect("server_keys");
    assert_eq!(relayed.len(), 2, "b.test and D, not unknown.test: {resp}");
    for r in relayed {
        check_signed(r, r["server_name"].as_str().expect("name"), &verify_keys(r));
        check_signed(r, "a.test", &verify_keys(&a_keys));
    }
    let relayed_b = relayed
        .iter()
        .find(|r| r["server_name"] == "b.test")
        .expect("b.test relayed");
    assert_eq!(relayed_b["verify_keys"], b_keys["verify_keys"]);
    let resp: Value = http
        .get(format!("{base}/_matrix/key/v2/query/c.test"))
        .send()
        .await
        .expect("notary get")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["server_keys"][0]["server_name"], "c.test", "{resp}");
    check_signed(&resp["server_keys"][0], "a.test", &verify_keys(&a_keys));

    // Other servers' requests must be signed by them, for us.
    let url = format!(
        "{base}/_matrix/federation/v1/query/profile?user_id={}",
        enc(&a.user_id)
    );
    let path = url.trim_start_matches(&base).to_owned();
    let refused = |resp: reqwest::Response, why: &'static str| async move {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 401, "{why}: {body}");
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{why}: {body}");
    };
    let resp = http.get(&url).send().await.expect("unsigned");
    refused(resp, "no Authorization").await;
    let resp = http
        .get(&url)
        .header("Authorization", "X-Matrix origin=b.test,key=\"ed25519:x\"")
        .send()
        .await
        .expect("malformed");
    refused(resp, "malformed header").await;
    let forger = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "forged".to_owned())
        .expect("key pair");
    let sign_as = |origin: &str, destination: &str| {
        let req = http::Request::builder()
            .method("GET")
            .uri(&path)
            .body(Vec::<u8>::new())
            .expect("request");
        XMatrix::sign_http_request(
            &req,
            XMatrixSigningInput::new(
                origin.try_into().expect("origin"),
                destination.try_into().expect("destination"),
                &forger,
            ),
        )
        .expect("sign")
        .to_string()
    };
    let resp = http
        .get(&url)
        .header("Authorization", sign_as("b.test", "a.test"))
        .send()
        .await
        .expect("forged");
    refused(resp, "signed with a key b.test does not have").await;
    let resp = http
        .get(&url)
        .header("Authorization", sign_as("b.test", "elsewhere.test"))
        .send()
        .await
        .expect("misaddressed");
    refused(resp, "addressed to another server").await;

    // Unauthenticated endpoints, and the unknown ones.
    let v: Value = http
        .get(format!("{base}/_matrix/federation/v1/version"))
        .send()
        .await
        .expect("version")
        .json()
        .await
        .expect("json");
    assert_eq!(v["server"]["name"], "Hearth");
    let resp = http
        .get(format!("{base}/_matrix/federation/v1/nothing"))
        .send()
        .await
        .expect("unknown");
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["errcode"], "M_UNRECOGNIZED");
}

#[tokio::test]
async fn a_rotated_key_stays_published_as_an_old_key() {
    let [ip, ..] = loopback_block();
    let dns = TestDns::start(&[], &[]).await;
    let ca = TestCa::new();
    let listener = SocketAddr::new(ip.into(), free_port(ip));
    let mut r = start_fed(
        "r.test",
        listener,
        ca.issue("r", &["r.test"]),
        &ca.ca_file(),
        dns.addr,
        &[],
    )
    .await;
    let before = own_keys(&ca, &r).await;
    let old = verify_keys(&before);
    assert_eq!(old.len(), 1, "{before}");
    assert_eq!(before["old_verify_keys"], json!({}));

    // Rotation happens with the server stopped; it signs with the new key
    // once started again.
    r.hs.kill();
    let mut rotate = r.hs.data_args();
    rotate.push("rotate-key".to_owned());
    common::run_admin(&rotate);
    r.hs.start_again().await;
    let after = own_keys(&ca, &r).await;
    let new = verify_keys(&after);
    assert_eq!(new.len(), 1, "{after}");
    let (old_id, old_key) = old.iter().next().expect("old key");
    assert!(!new.contains_key(old_id), "{after}");
    check_signed(&after, "r.test", &new);
    let kept = &after["old_verify_keys"][old_id];
    assert_eq!(kept["key"], before["verify_keys"][old_id]["key"], "{after}");
    assert_eq!(
        Base64::parse(kept["key"].as_str().expect("key")).expect("b64"),
        *old_key
    );
    let expired = kept["expired_ts"].as_u64().expect("expired_ts");
    assert!(expired <= now_ms(), "{after}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The room's messages as `c` sees them, oldest first: (event id, body).
async fn timeline(c: &Client, room: &str) -> Vec<(String, String)> {
    let page = c.messages(room, "dir=b&limit=500").await;
    let mut out: Vec<(String, String)> = message_events(&page)
        .into_iter()
        .map(|e| {
            (
                e["event_id"].as_str().expect("event_id").to_owned(),
                e["content"]["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.reverse();
    out
}

/// Waits until every one of `servers` shows `count` messages in `room`;
/// returns each one's timeline.
async fn wait_for_messages(
    servers: &[&Fed],
    room: &str,
    count: usize,
) -> Vec<Vec<(String, String)>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = vec![];
        for s in servers {
            all.push(timeline(&s.user, room).await);
        }
        if all.iter().all(|t| t.len() >= count) {
            return all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every server shows {count} messages: {:?}",
            all.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Joins `who` to the room (through its own server, over federation).
async fn join(who: &Fed, target: &str, via: &str) -> String {
    let (s, body) = who.user.join_with(target, &format!("?via={via}")).await;
    assert_eq!(s, 200, "{} joining {target}: {body}", who.name);
    body["room_id"].as_str().expect("room_id").to_owned()
}

#[tokio::test]
async fn users_on_three_servers_share_a_room_in_its_owners_order() {
    let world = World::start().await;
    let [a, b, c, _] = &world.servers[..] else {
        unreachable!()
    };
    let room = a
        .user
        .create_room(json!({"preset": "public_chat", "room_alias_name": "town"}))
        .await;
    // By alias (resolved over federation), and by room id through a server.
    assert_eq!(join(b, "#town:a.test", "a.test").await, room);
    assert_eq!(join(c, &room, "a.test").await, room);
    let members = a.user.joined_members(&room).await;
    for f in [a, b, c] {
        assert!(
            members["joined"].get(&f.user_id).is_some(),
            "{} not joined on the owner: {members}",
            f.user_id
        );
    }

    // All three send at once, five messages each.
    let mut tasks = vec![];
    for f in [a, b, c] {
        let (user, name) = (f.user.clone(), f.name.clone());
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                user.send_text(&room, &format!("t{i}"), &format!("{name} {i}"))
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let seen = wait_for_messages(&[a, b, c], &room, 15).await;
    assert_eq!(seen[0].len(), 15, "{:?}", seen[0]);
    assert_eq!(seen[0], seen[1], "a.test and b.test differ");
    assert_eq!(seen[0], seen[2], "a.test and c.test differ");
    for f in [a, b, c] {
        let mine: Vec<&str> = seen[0]
            .iter()
            .filter(|(_, body)| body.starts_with(&format!("{} ", f.name)))
            .map(|(_, body)| body.as_str())
            .collect();
        let sent: Vec<String> = (0..5).map(|i| format!("{} {i}", f.name)).collect();
        assert_eq!(mine, sent, "{}'s messages out of their order", f.name);
    }

    // Typing on b.test and a read receipt on c.test reach a.test's syncs.
    b.user.set_typing(&room, &b.user_id, true, 20000).await;
    let last = seen[0].last().expect("a message").0.clone();
    c.user.read_receipt(&room, &last, json!({})).await;
    let (mut typing_seen, mut receipt_seen) = (false, false);
    let mut since: Option<String> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(typing_seen && receipt_seen) {
        assert!(
            std::time::Instant::now() < deadline,
            "typing seen: {typing_seen}, receipt seen: {receipt_seen}"
        );
        let path = match &since {
            Some(t) => format!("/_matrix/client/v3/sync?timeout=1000&since={t}"),
            None => "/_matrix/client/v3/sync".to_owned(),
        };
        let (s, body) = a.user.get(&path).await;
        assert_eq!(s, 200, "{body}");
        since = body["next_batch"].as_str().map(str::to_owned);
        for e in body["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if e["type"] == "m.typing"
                && e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|u| *u == b.user_id.as_str()))
            {
                typing_seen = true;
            }
            if e["type"] == "m.receipt" && e["content"][&last]["m.read"].get(&c.user_id).is_some() {
                receipt_seen = true;
            }
        }
    }
}

/// A user's OpenID token checked on the federation listener, as another
/// server (or a third party speaking to it) does: unsigned, it names the
/// user and nothing else.
#[tokio::test]
async fn the_federation_listener_names_the_user_of_an_openid_token() {
    let world = World::start().await;
    let a = &world.servers[0];
    let path = format!(
        "/_matrix/client/v3/user/{}/openid/request_token",
        enc(&a.user_id)
    );
    let (s, token) = a.user.post(&path, json!({})).await;
    assert_eq!(s, 200, "{token}");
    let (http, base) = direct(&world.ca, a);
    let ask = |t: &str| {
        http.get(format!(
            "{base}/_matrix/federation/v1/openid/userinfo?access_token={}",
            enc(t)
        ))
        .send()
    };
    let answer = ask(token["access_token"].as_str().expect("token"))
        .await
        .expect("userinfo");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body, json!({"sub": a.user_id}));
    let answer = ask("not-a-token").await.expect("userinfo");
    assert_eq!(answer.status(), 401);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{body}");
}

/// The event types of the room as `c` reads it backwards, oldest first.
async fn event_types(c: &Client, room: &str) -> Vec<(String, String)> {
    let page = c.messages(room, "dir=b&limit=500").await;
    let mut out: Vec<(String, String)> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| {
            let kind = e["type"].as_str().unwrap_or_default().to_owned();
            let body = e["content"]["body"]
                .as_str()
                .or(e["state_key"].as_str())
                .unwrap_or_default()
                .to_owned();
            (kind, body)
        })
        .collect();
    out.reverse();
    out
}

/// The room's server sends the joiner's own join back in a transaction; its
/// parent, a message sent just before the join, is history the joiner never
/// had. It must stay history: not be fetched and appended after the join, as
/// if it had just been said (SyTest "remote user can join room with version").
#[tokio::test]
async fn the_joiners_own_join_sent_back_pulls_no_history_after_it() {
    let world = World::start().await;
    let [a, b, _, _] = &world.servers[..] else {
        unreachable!()
    };
    let room = a.user.create_room(json!({"preset": "public_chat"})).await;
    a.user.send_text(&room, "t0", "before").await;
    let (s, first) = b.user.get("/_matrix/client/v3/sync").await;
    assert_eq!(s, 200, "{first}");
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    assert_eq!(join(b, &room, "a.test").await, room);
    // No /messages yet: it would backfill "before" and hide the bug. a.test
    // sends the join back while b.test is still joining, and again once
    // that transaction is retried; "after" comes behind it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.user.send_text(&room, "t1", "after").await;
    let said = |body: &Value| {
        body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let mut heard = vec![];
    let mut since = since;
    while !heard.iter().any(|b| b == "after") {
        let body = sync_until(&b.user, &since, |body| !said(body).is_empty()).await;
        heard.extend(said(&body));
        since = body["next_batch"].as_str().expect("next_batch").to_owned();
    }
    let seen = event_types(&b.user, &room).await;
    let join_at = seen
        .iter()
        .position(|(k, who)| k == "m.room.member" && *who == b.user_id)
        .expect("b's join in its own timeline");
    assert!(
        !seen[join_at..]
            .iter()
            .any(|(k, body)| k == "m.room.message" && body == "before"),
        "the message from before the join came after it: {seen:?}"
    );
}

#[tokio::test]
async fn sends_queue_while_a_server_is_down_and_arrive_in_order_when_it_returns() {
    let mut world = World::start().await;
    let room = world.servers[0]
        .user
        .create_room(json!({"preset": "public_chat"}))
        .await;
    join(&world.servers[1], &room, "a.test").await;

    // The owner is down: b.test's sends are acknowledged (queued durably)
    // and reach the room, in order, once it is back.
    world.servers[0].hs.kill();
    for i in 0..3 {
        world.servers[1]
            .user
            .send_text(&room, &format!("down{i}"), &format!("while a is down {i}"))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.servers[0].hs.start_again().await;
    let [a, b, ..] = &world.servers[..] else {
        unreachable!()
    };
    let seen = wait_for_messages(&[a, b], &room, 3).await;
    let bodies: Vec<&str> = seen[0].iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "while a is down 0",
            "while a is down 1",
            "while a is down 2"
        ]
    );
    assert_eq!(seen[0], seen[1]);

    // A participant down: what the owner relays meanwhile waits in its
    // queue and arrives when the participant is back.
    world.servers[1].hs.kill();
    for i in 0..3 {
        world.servers[0]
            .user
            .send_text(&room, &format!("pdown{i}"), &format!("while b is down {i}"))
            .await;
    }
    world.servers[1].hs.start_again().await;
    let [a, b, ..] = &world.servers[..] else {
        unreachable!()
    };
    let seen = wait_for_messages(&[a, b], &room, 6).await;
    assert_eq!(seen[0], seen[1], "b.test caught up differently");
    let bodies: Vec<&str> = seen[1][3..].iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "while b is down 0",
            "while b is down 1",
            "while b is down 2"
        ]
    );
}

/// `evil.test`, played by the test: it publishes a signing key over TLS and
/// signs what it sends with it, so it can join a room like any server and
/// then send PDUs that are not what they claim.
struct EvilServer {
    key: Ed25519KeyPair,
    handle: axum_server::Handle<SocketAddr>,
    /// The transactions other servers sent it, as received.
    received: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl EvilServer {
    async fn start(world: &World) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let der = Ed25519KeyPair::generate();
        let key = Ed25519KeyPair::from_der(&der, "evil1".into()).expect("key");
        let published = {
            let mut keys = object(&json!({
                "server_name": "evil.test",
                "valid_until_ts": now_ms() + 3_600_000,
                "verify_keys": {"ed25519:evil1": {"key": Base64::<ruma::serde::base64::Standard>::new(key.public_key().to_vec()).encode()}},
                "old_verify_keys": {},
            }));
            ruma::signatures::sign_json("evil.test", &key, &mut keys).expect("sign keys");
            Value::from(CanonicalJsonValue::Object(keys))
        };
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let app = axum::Router::new()
            .route(
                "/_matrix/key/v2/server",
                axum::routing::get(move || {
                    let published = published.clone();
                    async move { axum::Json(published) }
                }),
            )
            // What a.test sends it is taken and only recorded.
            .route(
                "/_matrix/federation/v1/send/{txn}",
                axum::routing::put(move |body: axum::body::Bytes| {
                    let sink = sink.clone();
                    async move {
                        let txn = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        sink.lock().expect("lock").push(txn);
                        axum::Json(json!({"pdus": {}}))
                    }
                }),
            );
        let (cert, key_file) = world.ca.issue("evil", &["evil.test"]);
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key_file)
            .await
            .expect("evil tls");
        let handle = axum_server::Handle::new();
        let server = axum_server::bind_rustls(world.evil, tls).handle(handle.clone());
        tokio::spawn(server.serve(app.into_make_service()));
        handle.listening().await.expect("evil.test listening");
        EvilServer {
            key,
            handle,
            received,
        }
    }

    /// The EDUs of one type it received so far, oldest first.
    fn edus(&self, edu_type: &str) -> Vec<Value> {
        let txns = self.received.lock().expect("lock");
        txns.iter()
            .flat_map(|t| t["edus"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["edu_type"] == edu_type)
            .collect()
    }

    /// Waits until an EDU of the type satisfies `found`; returns it.
    async fn wait_for_edu(&self, edu_type: &str, found: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.edus(edu_type).into_iter().find(|e| found(e)) {
                return e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such {edu_type} EDU came; got {:?}",
                self.edus(edu_type)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An event of eve's in `room` built on `prev` (at `depth`), signed
    /// by evil.test; the event and its id.
    fn eve_event(
        &self,
        room: &str,
        kind: &str,
        content: Value,
        (prev, depth): (&str, i64),
        auth: &[&str],
    ) -> (CanonicalJsonObject, String) {
        let mut event = object(&json!({
            "room_id": room,
            "sender": "@eve:evil.test",
            "type": kind,
            "content": content,
            "prev_events": [prev],
            "auth_events": auth,
            "depth": depth,
            "origin_server_ts": now_ms(),
        }));
        let id = EvilServer::sign_event(&mut event, "evil.test", &self.key);
        (event, id)
    }

    /// PDUs in a transaction to `to`; each must be taken.
    async fn send_pdus(&self, world: &World, to: &Fed, txn: &str, pdus: &[&CanonicalJsonObject]) {
        let pdus: Vec<Value> = pdus
            .iter()
            .map(|o| CanonicalJsonValue::Object((*o).clone()).into())
            .collect();
        let ids: Vec<String> = pdus
            .iter()
            .map(|p| {
                let rules = ruma::RoomVersionId::V12.rules().expect("rules");
                format!(
                    "${}",
                    ruma::signatures::reference_hash(&object(p), &rules).expect("hash")
                )
            })
            .collect();
        let body = json!({"origin": "evil.test", "origin_server_ts": now_ms(), "pdus": pdus});
        let (s, answer) = self.send_txn(world, to, txn, body).await;
        assert_eq!(s, 200, "{answer}");
        for id in ids {
            assert_eq!(answer["pdus"][&id], json!({}), "{id} refused: {answer}");
        }
    }

    /// Every PDU and EDU a.test has sent it so far.
    fn received(&self) -> (Vec<Value>, Vec<Value>) {
        let txns = self.received.lock().expect("received").clone();
        let all = |field: &str| {
            txns.iter()
                .flat_map(|t| t[field].as_array().cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        (all("pdus"), all("edus"))
    }

    /// Waits until a.test has sent it the event `id`.
    async fn wait_for_pdu(&self, id: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ids_of(&Value::Array(self.received().0))
            .iter()
            .any(|p| p == id)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never reached evil.test"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A request to `to` signed by evil.test; (status, body).
    async fn request(
        &self,
        world: &World,
        to: &Fed,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        signed_request(&world.ca, to, ("evil.test", &self.key), method, path, body).await
    }

    async fn get(&self, world: &World, to: &Fed, path: &str) -> (u16, Value) {
        self.request(world, to, "GET", path, None).await
    }

    /// `/event/{id}` asked of `to`; the answer as it came.
    async fn event(&self, world: &World, to: &Fed, id: &str) -> (u16, Value) {
        let path = format!("/_matrix/federation/v1/event/{}", enc(id));
        self.get(world, to, &path).await
    }

    /// The ids of the room's state before `event`, as `to` answers
    /// `/state_ids` (which must succeed); with the whole answer.
    async fn state_ids(
        &self,
        world: &World,
        to: &Fed,
        room: &str,
        event: &str,
    ) -> (Vec<String>, Value) {
        let (room, event) = (enc(room), enc(event));
        let path = format!("/_matrix/federation/v1/state_ids/{room}?event_id={event}");
        let (s, ids) = self.get(world, to, &path).await;
        assert_eq!(s, 200, "{ids}");
        let pdu_ids = ids["pdu_ids"]
            .as_array()
            .expect("pdu_ids")
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect();
        (pdu_ids, ids)
    }

    /// A federation transaction `txn` with `body` sent to `to`.
    async fn send_txn(&self, world: &World, to: &Fed, txn: &str, body: Value) -> (u16, Value) {
        let path = format!("/_matrix/federation/v1/send/{txn}");
        self.request(world, to, "PUT", &path, Some(body)).await
    }

    /// A public room (version 12) of `to`'s user that eve joined; its id,
    /// with what `membership` returns for the join.
    async fn joined_public_room(
        &self,
        world: &World,
        to: &Fed,
    ) -> (String, (CanonicalJsonObject, String, Value)) {
        let room = to
            .user
            .create_room(json!({"preset": "public_chat", "room_version": "12"}))
            .await;
        let join = self.membership(world, to, &room, "join").await;
        (room, join)
    }

    /// Eve's join or leave through `to`, as a server does it: `make_join`
    /// (or `make_leave`), sign the template, `send_join` (`send_leave`).
    /// Returns the signed event, its id and the answer to the send.
    async fn membership(
        &self,
        world: &World,
        to: &Fed,
        room: &str,
        membership: &str,
    ) -> (CanonicalJsonObject, String, Value) {
        let eve = "@eve:evil.test";
        let versions = if membership == "join" { "?ver=12" } else { "" };
        let (s, made) = self
            .get(
                world,
                to,
                &format!(
                    "/_matrix/federation/v1/make_{membership}/{}/{}{versions}",
                    enc(room),
                    enc(eve)
                ),
            )
            .await;
        assert_eq!(s, 200, "make_{membership}: {made}");
        let mut event = object(&made["event"]);
        let id = EvilServer::sign_event(&mut event, "evil.test", &self.key);
        let (s, answer) = self
            .request(
                world,
                to,
                "PUT",
                &format!(
                    "/_matrix/federation/v2/send_{membership}/{}/{}",
                    enc(room),
                    enc(&id)
                ),
                Some(CanonicalJsonValue::Object(event.clone()).into()),
            )
            .await;
        assert_eq!(s, 200, "send_{membership}: {answer}");
        (event, id, answer)
    }

    /// Hashes and signs an event as `signer` would, with `key`; its id.
    fn sign_event(obj: &mut CanonicalJsonObject, signer: &str, key: &Ed25519KeyPair) -> String {
        let rules = ruma::RoomVersionId::V12.rules().expect("rules");
        ruma::signatures::hash_and_sign_event(signer, key, obj, &rules.redaction).expect("sign");
        format!(
            "${}",
            ruma::signatures::reference_hash(obj, &rules).expect("hash")
        )
    }
}

impl Drop for EvilServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// The id of a (v12) state event of a `send_join` answer's state.
fn state_event_id(joined: &Value, kind: &str) -> String {
    joined["state"]
        .as_array()
        .expect("state")
        .iter()
        .find(|e| e["type"] == kind)
        .and_then(|e| {
            ruma::signatures::reference_hash(
                &object(e),
                &ruma::RoomVersionId::V12.rules().expect("rules"),
            )
            .ok()
        })
        .map(|h| format!("${h}"))
        .unwrap_or_else(|| panic!("no {kind} in the state"))
}

#[tokio::test]
async fn forged_signatures_are_refused_and_a_bad_content_hash_is_stored_redacted() {
    let world = World::start().await;
    let a = &world.servers[0];
    let evil = EvilServer::start(&world).await;
    let room = a
        .user
        .create_room(json!({"preset": "public_chat", "room_version": "12", "visibility": "public"}))
        .await;

    // evil.test joins @eve:evil.test as any server would.
    let (join, join_id, joined) = evil.membership(&world, a, &room, "join").await;
    let power = state_event_id(&joined, "m.room.power_levels");
    let depth = join["depth"].as_integer().map(i64::from).expect("depth") + 1;
    let message = |sender: &str, body: &str| {
        object(&json!({
            "room_id": room,
            "sender": sender,
            "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": body},
            "prev_events": [join_id],
            "auth_events": [power, join_id],
            "depth": depth,
            "origin_server_ts": now_ms(),
        }))
    };

    // 1. Signed properly, then its content changed: the hash no longer
    //    matches, the signature (over the redacted form) still does.
    let mut tampered = message("@eve:evil.test", "what eve said");
    let tampered_id = EvilServer::sign_event(&mut tampered, "evil.test", &evil.key);
    tampered.insert(
        "content".into(),
        object(&json!({"msgtype": "m.text", "body": "what eve did not say"})).into(),
    );
    // 2. Signed by a key evil.test never published.
    let other =
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "evil1".into()).expect("other key");
    let mut forged_key = message("@eve:evil.test", "forged key");
    let forged_key_id = EvilServer::sign_event(&mut forged_key, "evil.test", &other);
    // 3. Claims to come from a.test's user: a.test never signed it.
    let mut forged_sender = message(&a.user_id, "forged sender");
    let forged_sender_id = EvilServer::sign_event(&mut forged_sender, "evil.test", &evil.key);

    let pdus: Vec<Value> = [&tampered, &forged_key, &forged_sender]
        .into_iter()
        .map(|o| CanonicalJsonValue::Object(o.clone()).into())
        .collect();
    let txn = json!({"origin": "evil.test", "origin_server_ts": now_ms(), "pdus": pdus});
    let (s, answer) = evil.send_txn(&world, a, "t1", txn.clone()).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["pdus"][&tampered_id], json!({}), "{answer}");
    for id in [&forged_key_id, &forged_sender_id] {
        assert!(
            answer["pdus"][id]["error"].is_string(),
            "{id} accepted: {answer}"
        );
    }
    // The same transaction again: the same answer, nothing new.
    let (s, again) = evil.send_txn(&world, a, "t1", txn).await;
    assert_eq!(s, 200);
    assert_eq!(again, answer);

    // Alice sees eve's event without its content, and neither forgery.
    let page = a.user.messages(&room, "dir=b&limit=50").await;
    let chunk = page["chunk"].as_array().expect("chunk");
    let stored = chunk
        .iter()
        .find(|e| e["event_id"] == tampered_id.as_str())
        .unwrap_or_else(|| panic!("{tampered_id} not stored: {page}"));
    assert_eq!(stored["content"], json!({}), "stored unredacted: {stored}");
    for id in [&forged_key_id, &forged_sender_id] {
        assert!(
            chunk.iter().all(|e| e["event_id"] != id.as_str()),
            "forgery {id} stored: {page}"
        );
    }

    // A server in the room may fetch its events; the published room list
    // is there for any signed request.
    let (s, got) = evil.event(&world, a, &tampered_id).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["pdus"][0]["content"], json!({}), "{got}");
    let (s, listed) = evil
        .get(&world, a, "/_matrix/federation/v1/publicRooms")
        .await;
    assert_eq!(s, 200, "{listed}");
    assert!(
        listed["chunk"]
            .as_array()
            .is_some_and(|c| c.iter().any(|r| r["room_id"] == room.as_str())),
        "{listed}"
    );

    // Eve leaves the way she joined: make_leave, then send_leave.
    evil.membership(&world, a, &room, "leave").await;
    let members = a.user.joined_members(&room).await;
    assert!(
        members["joined"].get("@eve:evil.test").is_none(),
        "{members}"
    );
    // Out of the room, evil.test may no longer read its events.
    let (s, body) = evil.event(&world, a, &tampered_id).await;
    assert_eq!(s, 403, "{body}");
    // Nor make a template for another server's user.
    let (s, body) = evil
        .get(
            &world,
            a,
            &format!(
                "/_matrix/federation/v1/make_join/{}/{}?ver=12",
                enc(&room),
                enc(&a.user_id)
            ),
        )
        .await;
    assert_eq!(s, 403, "{body}");

    // More than 50 PDUs in one transaction is refused whole.
    let many: Vec<Value> = (0..51).map(|_| json!({})).collect();
    let (s, body) = evil
        .send_txn(
            &world,
            a,
            "t2",
            json!({"origin": "evil.test", "origin_server_ts": now_ms(), "pdus": many}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    // A transaction claiming another origin than its signer's.
    let (s, body) = evil
        .send_txn(
            &world,
            a,
            "t3",
            json!({"origin": "b.test", "origin_server_ts": now_ms(), "pdus": []}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
}

#[tokio::test]
async fn several_users_of_one_server_join_a_remote_room_at_once() {
    let world = World::start().await;
    let [a, b, ..] = &world.servers[..] else {
        unreachable!()
    };
    let room = a.user.create_room(json!({"preset": "public_chat"})).await;
    let mut users = vec![];
    for i in 0..4 {
        users.push(b.hs.register(&format!("joiner{i}"), "pw").await);
    }
    let joins = users.iter().map(|u| {
        let room = room.clone();
        async move { u.join_with(&room, "?via=a.test").await }
    });
    for (s, body) in futures::future::join_all(joins).await {
        assert_eq!(s, 200, "{body}");
    }
    // Every joiner shows as joined on the owner.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let members = a.user.joined_members(&room).await;
        let joined = (0..4)
            .filter(|i| {
                members["joined"]
                    .get(format!("@joiner{i}:b.test"))
                    .is_some()
            })
            .count();
        if joined == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{joined} of 4 joined: {members}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_user_invited_from_another_server_sees_the_invite_and_joins() {
    let world = World::start().await;
    let [a, _, c, _] = &world.servers[..] else {
        unreachable!()
    };
    // An invite-only room: c.test's user can only join once invited.
    let room = a
        .user
        .create_room(json!({"preset": "private_chat", "name": "by invitation"}))
        .await;
    let (s, body) = c.user.join_with(&room, "?via=a.test").await;
    assert_eq!(s, 403, "joined an invite-only room uninvited: {body}");

    a.user.invite(&room, &c.user_id).await;
    assert_stripped_state(c, &room, "invite", "by invitation").await;

    // Accepting: a join by room id, through the inviter's server.
    join_and_hear(a, c, &room, "welcome", "welcome, c").await;
}

/// Asserts `who`'s sync shows the room under `membership` (`invite` or
/// `knock`), its stripped state naming the room `name` and holding `who`'s
/// membership.
async fn assert_stripped_state(who: &Fed, room: &str, membership: &str, name: &str) {
    let sync = who.user.sync("").await;
    let events = sync["rooms"][membership][room][format!("{membership}_state")]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no {membership} in sync: {sync}"));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == name),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == who.user_id.as_str()
            && e["content"]["membership"] == membership),
        "{events:?}"
    );
}

/// `c`'s user joins the room by its id through the inviter's server `a`
/// (an invite or knock let them in), then both servers show `a`'s
/// greeting, in one timeline.
async fn join_and_hear(a: &Fed, c: &Fed, room: &str, txn: &str, greeting: &str) {
    let (s, body) = c
        .user
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(room)),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    a.user.send_text(room, txn, greeting).await;
    let seen = wait_for_messages(&[a, c], room, 1).await;
    assert_eq!(seen[0], seen[1]);
}

/// The event ids of a list of PDUs.
fn ids_of(pdus: &Value) -> Vec<String> {
    pdus.as_array()
        .unwrap_or_else(|| panic!("not a list: {pdus}"))
        .iter()
        .map(|p| {
            format!(
                "${}",
                ruma::signatures::reference_hash(
                    &object(p),
                    &ruma::RoomVersionId::V12.rules().expect("rules")
                )
                .expect("hash")
            )
        })
        .collect()
}

#[tokio::test]
async fn a_server_in_the_room_reads_its_state_and_history_as_its_users_may() {
    let world = World::start().await;
    let a = &world.servers[0];
    let evil = EvilServer::start(&world).await;
    // History visible to members only from when they joined: what came
    // before eve's join reaches evil.test redacted.
    let room = a
        .user
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "joined"}}],
        }))
        .await;
    let before = a
        .user
        .send_text(&room, "before", "said before eve came")
        .await;
    let (_, join_id, _) = evil.membership(&world, a, &room, "join").await;
    let mut after = vec![];
    for i in 0..4 {
        after.push(
            a.user
                .send_text(&room, &format!("after{i}"), &format!("said to eve {i}"))
                .await,
        );
    }

    // The state before a message: the room's state with eve in it.
    let (pdu_ids, ids) = evil.state_ids(&world, a, &room, &after[0]).await;
    assert!(pdu_ids.contains(&join_id), "{ids}");
    assert!(!pdu_ids.contains(&after[0]), "{ids}");
    assert!(!ids["auth_chain_ids"].as_array().expect("chain").is_empty());
    let (s, state) = evil
        .get(
            &world,
            a,
            &format!(
                "/_matrix/federation/v1/state/{}?event_id={}",
                enc(&room),
                enc(&after[0])
            ),
        )
        .await;
    assert_eq!(s, 200, "{state}");
    let mut full = ids_of(&state["pdus"]);
    full.sort();
    let mut listed: Vec<String> = pdu_ids.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(full, listed, "/state and /state_ids name the same events");
    assert!(
        state["pdus"]
            .as_array()
            .expect("pdus")
            .iter()
            .any(|p| p["type"] == "m.room.create"),
        "{state}"
    );
    let mut chain = ids_of(&state["auth_chain"]);
    chain.sort();
    let mut chain_ids: Vec<String> = ids["auth_chain_ids"]
        .as_array()
        .expect("chain")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    chain_ids.sort();
    assert_eq!(chain, chain_ids);

    // The auth chain of one event: what its auth events reach, not itself
    // (in v12 the create event is the room id, never an auth event).
    let (s, auth) = evil
        .get(
            &world,
            a,
            &format!(
                "/_matrix/federation/v1/event_auth/{}/{}",
                enc(&room),
                enc(&after[0])
            ),
        )
        .await;
    assert_eq!(s, 200, "{auth}");
    let auth_types: Vec<(&str, &str)> = auth["auth_chain"]
        .as_array()
        .expect("auth_chain")
        .iter()
        .map(|p| {
            (
                p["type"].as_str().unwrap_or_default(),
                p["state_key"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for wanted in [
        ("m.room.power_levels", ""),
        ("m.room.member", a.user_id.as_str()),
    ] {
        assert!(
            auth_types.contains(&wanted),
            "{wanted:?} not in {auth_types:?}"
        );
    }
    assert!(!ids_of(&auth["auth_chain"]).contains(&after[0]), "{auth}");
    assert!(
        auth_types
            .iter()
            .all(|(kind, _)| !["m.room.message", "m.room.create"].contains(kind)),
        "{auth_types:?}"
    );
    let (s, body) = evil
        .get(
            &world,
            a,
            &format!(
                "/_matrix/federation/v1/event_auth/{}/{}",
                enc(&room),
                enc("$not-an-event")
            ),
        )
        .await;
    assert_eq!(
        (s, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{body}"
    );

    // Backfill from the newest message: newest first, through the graph.
    let (s, back) = evil
        .get(
            &world,
            a,
            &format!(
                "/_matrix/federation/v1/backfill/{}?v={}&limit=7",
                enc(&room),
                enc(after.last().expect("sent"))
            ),
        )
        .await;
    assert_eq!(s, 200, "{back}");
    let got = ids_of(&back["pdus"]);
    assert_eq!(got.len(), 7, "{back}");
    let mut expected: Vec<String> = after.iter().rev().cloned().collect();
    expected.push(join_id.clone());
    expected.push(before.clone());
    assert_eq!(&got[..6], &expected[..], "{back}");
    let pdus = back["pdus"].as_array().expect("pdus");
    assert_eq!(pdus[0]["content"]["body"], "said to eve 3");
    // Eve could not see what was said before she joined.
    assert_eq!(pdus[5]["type"], "m.room.message");
    assert_eq!(pdus[5]["content"], json!({}), "{}", pdus[5]);

    // What lies between eve's join and the newest message, oldest first.
    let (s, missing) = evil
        .request(
            &world,
            a,
            "POST",
            &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room)),
            Some(json!({
                "earliest_events": [join_id],
                "latest_events": [after.last()],
                "limit": 10,
            })),
        )
        .await;
    assert_eq!(s, 200, "{missing}");
    assert_eq!(ids_of(&missing["events"]), after[..3].to_vec(), "{missing}");

    // Bad requests, and an event of no room the asker may read.
    let (s, body) = evil
        .get(
            &world,
            a,
            &format!("/_matrix/federation/v1/state_ids/{}", enc(&room)),
        )
        .await;
    assert_eq!(
        (s, body["errcode"].as_str()),
        (400, Some("M_MISSING_PARAM"))
    );
    let (s, _) = evil
        .get(
            &world,
            a,
            &format!(
                "/_matrix/federation/v1/state_ids/{}?event_id=%24nope",
                enc(&room)
            ),
        )
        .await;
    assert_eq!(s, 404);
    // Room versions the asking server lacks, or nobody has.
    let (s, body) = evil
        .get(
            &world,
            a,
            &format!(
                "/_matrix/federation/v1/make_join/{}/{}?ver=1&ver=2",
                enc(&room),
                enc("@eve2:evil.test")
            ),
        )
        .await;
    assert_error(s, &body, 400, "M_INCOMPATIBLE_ROOM_VERSION");
    let (s, body) = evil
        .get(
            &world,
            a,
            &format!(
                "/_matrix/federation/v1/make_knock/{}/{}?ver=12",
                enc(&room),
                enc("@eve2:evil.test")
            ),
        )
        .await;
    assert_eq!(s, 403, "knocking on a public room: {body}");
    let (s, body) = evil
        .request(
            &world,
            a,
            "PUT",
            &format!(
                "/_matrix/federation/v2/invite/{}/{}",
                enc(&room),
                enc("$whatever")
            ),
            Some(json!({"room_version": "999", "event": {}, "invite_room_state": []})),
        )
        .await;
    assert_error(s, &body, 400, "M_INCOMPATIBLE_ROOM_VERSION");
    let other = a
        .user
        .create_room(json!({"preset": "private_chat", "room_version": "12"}))
        .await;
    let secret = a.user.send_text(&other, "s", "not for eve").await;
    for path in [
        format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(&other),
            enc(&secret)
        ),
        format!(
            "/_matrix/federation/v1/backfill/{}?v={}&limit=5",
            enc(&other),
            enc(&secret)
        ),
    ] {
        let (s, body) = evil.get(&world, a, &path).await;
        assert_eq!(
            (s, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{path}: {body}"
        );
    }
}

/// `who`'s membership in `room` as `viewer`'s server has it.
async fn membership_seen(viewer: &Fed, room: &str, who: &Fed) -> Value {
    let (s, body) = viewer
        .user
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(&who.user_id)
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    body
}

#[tokio::test]
async fn knocks_declined_invites_and_presence_cross_servers() {
    let world = World::start().await;
    let [a, b, c, _] = &world.servers[..] else {
        unreachable!()
    };
    let knock_room = |name: &'static str| {
        a.user.create_room(json!({
            "preset": "private_chat",
            "name": name,
            "room_version": "12",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                               "content": {"join_rule": "knock"}}],
        }))
    };
    let room = knock_room("knock knock").await;

    // c.test's user knocks through a.test, and sees the knock in sync.
    let (s, body) = c
        .user
        .post(
            &format!("/_matrix/client/v3/knock/{}?via=a.test", enc(&room)),
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_stripped_state(c, &room, "knock", "knock knock").await;
    let seen = membership_seen(a, &room, c).await;
    assert_eq!(
        (seen["membership"].as_str(), seen["reason"].as_str()),
        (Some("knock"), Some("let me in")),
        "{seen}"
    );
    // Knocking again while knocking is allowed; joining uninvited is not.
    let (s, body) = c.user.join_with(&room, "?via=a.test").await;
    assert_eq!(s, 403, "joined a knock room uninvited: {body}");

    // a.test's user lets them in: an invite, then a join.
    a.user.invite(&room, &c.user_id).await;
    join_and_hear(a, c, &room, "in", "come in").await;

    // b.test's user declines an invite, and withdraws a knock: both reach
    // a.test, the room's server, though b.test is not in the rooms.
    let room2 = a
        .user
        .create_room(json!({"preset": "private_chat", "invite": [b.user_id]}))
        .await;
    let (s, sync) = b.user.get("/_matrix/client/v3/sync").await;
    assert_eq!(s, 200);
    assert!(sync["rooms"]["invite"][&room2].is_object(), "{sync}");
    let (s, body) = b
        .user
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room2)),
            json!({"reason": "no thanks"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let seen = membership_seen(a, &room2, b).await;
    assert_eq!(seen["membership"], "leave", "{seen}");
    assert_eq!(seen["reason"], "no thanks", "{seen}");
    let room3 = knock_room("another door").await;
    let (s, body) = b
        .user
        .post(
            &format!("/_matrix/client/v3/knock/{}?via=a.test", enc(&room3)),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(membership_seen(a, &room3, b).await["membership"], "knock");
    let (s, body) = b
        .user
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room3)),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(membership_seen(a, &room3, b).await["membership"], "leave");
    let (s, sync) = b.user.get("/_matrix/client/v3/sync").await;
    assert_eq!(s, 200);
    assert!(sync["rooms"]["knock"][&room3].is_null(), "{sync}");

    // Presence: c.test's user sets a status; a.test's user, who shares the
    // room, hears of it.
    let (s, body) = c
        .user
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&c.user_id)),
            json!({"presence": "online", "status_msg": "on a train"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = a
            .user
            .get(&format!(
                "/_matrix/client/v3/presence/{}/status",
                enc(&c.user_id)
            ))
            .await;
        assert_eq!(s, 200, "{body}");
        if body["status_msg"] == "on a train" {
            assert_eq!(body["presence"], "online", "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "c's presence never reached a.test: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, sync) = a.user.get("/_matrix/client/v3/sync").await;
    assert_eq!(s, 200);
    let events = sync["presence"]["events"].as_array().expect("presence");
    assert!(
        events.iter().any(
            |e| e["sender"] == c.user_id.as_str() && e["content"]["status_msg"] == "on a train"
        ),
        "{sync}"
    );
    // b.test shares no room with c and hears nothing of them.
    let (s, sync) = b.user.get("/_matrix/client/v3/sync").await;
    assert_eq!(s, 200);
    assert!(
        !sync["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["sender"] == c.user_id.as_str()),
        "{sync}"
    );
}

/// The room's name as `who`'s server has it.
async fn room_name(who: &Fed, room: &str) -> Value {
    let (s, body) = who
        .user
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.name/",
            enc(room)
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    body["name"].clone()
}

#[tokio::test]
async fn a_fork_in_the_event_graph_settles_by_state_resolution_on_every_server() {
    let world = World::start().await;
    let [a, b, _, _] = &world.servers[..] else {
        unreachable!()
    };
    let evil = EvilServer::start(&world).await;
    let room = a
        .user
        .create_room(json!({"preset": "public_chat", "room_version": "12"}))
        .await;
    join(b, &room, "a.test").await;
    let (_, eve_join, _) = evil.membership(&world, a, &room, "join").await;
    // Eve may rename the room.
    let (s, mut power) = a
        .user
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(&room)
        ))
        .await;
    assert_eq!(s, 200, "{power}");
    power["users"]["@eve:evil.test"] = json!(50);
    power["events"]["m.room.name"] = json!(50);
    let (s, body) = a
        .user
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                enc(&room)
            ),
            power,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let power_id = body["event_id"].as_str().expect("event_id").to_owned();
    let base = a.user.send_text(&room, "base", "before the fork").await;
    let pdu = |id: String| {
        let evil = &evil;
        let world = &world;
        async move {
            let (s, body) = evil.event(world, a, &id).await;
            assert_eq!(s, 200, "{body}");
            body["pdus"][0].clone()
        }
    };
    let base_depth = pdu(base.clone()).await["depth"].as_u64().expect("depth");

    // a.test renames the room; eve renames it "at the same time", on top of
    // the event before a.test's rename.
    let (s, body) = a
        .user
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            json!({"name": "from a"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let renamed = pdu(body["event_id"].as_str().expect("event_id").to_owned()).await;
    let renamed_ts = renamed["origin_server_ts"].as_u64().expect("ts");
    let eve_rename = |name: &str, ts: u64| {
        let mut e = object(&json!({
            "room_id": room,
            "sender": "@eve:evil.test",
            "type": "m.room.name",
            "state_key": "",
            "content": {"name": name},
            "prev_events": [base],
            "auth_events": [power_id, eve_join],
            "depth": base_depth + 1,
            "origin_server_ts": ts,
        }));
        let id = EvilServer::sign_event(&mut e, "evil.test", &evil.key);
        (id, Value::from(CanonicalJsonValue::Object(e)))
    };
    let send = |txn: &'static str, id: String, event: Value| {
        let evil = &evil;
        let world = &world;
        async move {
            let (s, answer) = evil
                .request(
                    world,
                    a,
                    "PUT",
                    &format!("/_matrix/federation/v1/send/{txn}"),
                    Some(json!({"origin": "evil.test", "origin_server_ts": now_ms(), "pdus": [event]})),
                )
                .await;
            assert_eq!(s, 200, "{answer}");
            assert_eq!(answer["pdus"][&id], json!({}), "{answer}");
        }
    };
    // Sent earlier than a.test's rename: resolution orders it first, so
    // a.test's rename stays (appending in arrival order would lose it).
    let (early, event) = eve_rename("from eve, earlier", renamed_ts - 60_000);
    send("fork1", early.clone(), event).await;
    assert_eq!(room_name(a, &room).await, "from a");

    // a.test's next event joins the branches: both tips are its parents.
    let joined = a.user.send_text(&room, "after", "after the fork").await;
    let parents = pdu(joined.clone()).await["prev_events"].clone();
    let parents: Vec<&str> = parents
        .as_array()
        .expect("prev_events")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(parents.len(), 2, "{parents:?}");
    assert!(parents.contains(&early.as_str()), "{parents:?}");

    // Sent later than a.test's rename: resolution lets it win.
    let (late, event) = eve_rename("from eve, later", renamed_ts + 60_000);
    send("fork2", late.clone(), event).await;
    assert_eq!(room_name(a, &room).await, "from eve, later");

    // b.test applies the owner's sequence and settles the same way.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = b.user.messages(&room, "dir=b&limit=50").await;
        if page["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .any(|e| e["event_id"] == late.as_str())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b.test never got {late}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(room_name(b, &room).await, "from eve, later");

    // The state before a.test's joining event, as a server asks for it:
    // a.test's rename, not eve's earlier one.
    let (state, ids) = evil.state_ids(&world, a, &room, &joined).await;
    let renamed_id = ids_of(&json!([renamed]))[0].clone();
    assert!(state.contains(&renamed_id), "{ids}");
    assert!(!state.contains(&early), "{ids}");
}

/// The (user, device) a client's token belongs to.
async fn whoami(c: &Client) -> (String, String) {
    let (s, b) = c.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(s, 200, "{b}");
    (
        b["user_id"].as_str().unwrap_or_default().to_owned(),
        b["device_id"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Uploads identity keys (the curve25519 key named `curve`) and one
/// one-time key for a client's device.
async fn upload_device_keys(c: &Client, curve: &str) {
    let (user, device) = whoami(c).await;
    let (s, b) = c
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": {
                    "user_id": user, "device_id": device,
                    "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                    "keys": {format!("curve25519:{device}"): curve, format!("ed25519:{device}"): "ed"},
                    "signatures": {},
                },
                "one_time_keys": {format!("signed_curve25519:{curve}"): {"key": format!("otk-{curve}"), "signatures": {}}},
            }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

/// Syncs `c` from `since` until `found` holds for an answer (at most 20 s).
async fn sync_until(c: &Client, since: &str, found: impl Fn(&Value) -> bool) -> Value {
    let mut since = since.to_owned();
    for _ in 0..40 {
        let (s, b) = c
            .get(&format!(
                "/_matrix/client/v3/sync?timeout=500&since={}",
                enc(&since)
            ))
            .await;
        assert_eq!(s, 200, "{b}");
        if found(&b) {
            return b;
        }
        since = b["next_batch"].as_str().unwrap_or_default().to_owned();
    }
    panic!("sync never showed what was expected");
}

#[tokio::test]
async fn keys_and_to_device_messages_cross_servers() {
    let world = World::start().await;
    let [a, _, c, _] = &world.servers[..] else {
        unreachable!()
    };
    let (a_user, a_device) = whoami(&a.user).await;
    let (c_user, c_device) = whoami(&c.user).await;
    upload_device_keys(&a.user, "a1").await;
    upload_device_keys(&c.user, "c1").await;
    let room = a
        .user
        .create_room(json!({"preset": "public_chat", "name": "keys"}))
        .await;
    join(c, &room, "a.test").await;

    // c.test's client reads a.test's user's keys through a.test, and claims
    // a one-time key there; a.test's user's key can be claimed only once.
    let q = c.user.query_keys(&a_user).await;
    assert_eq!(
        q["device_keys"][&a_user][&a_device]["keys"][format!("curve25519:{a_device}")],
        "a1",
        "{q}"
    );
    assert_eq!(q["failures"], json!({}), "{q}");
    let claim = json!({"one_time_keys": {a_user.clone(): {a_device.clone(): "signed_curve25519"}}});
    let (s, k) = c
        .user
        .post("/_matrix/client/v3/keys/claim", claim.clone())
        .await;
    assert_eq!(s, 200, "{k}");
    assert_eq!(
        k["one_time_keys"][&a_user][&a_device]["signed_curve25519:a1"]["key"], "otk-a1",
        "{k}"
    );
    let (_, k) = c.user.post("/_matrix/client/v3/keys/claim", claim).await;
    assert_eq!(k["one_time_keys"], json!({}), "claimed twice: {k}");

    // A to-device message from a.test reaches c.test's device once.
    let (s, b) = c.user.get("/_matrix/client/v3/sync").await;
    assert_eq!(s, 200, "{b}");
    let since = b["next_batch"].as_str().unwrap_or_default().to_owned();
    let message =
        json!({"messages": {c_user.clone(): {c_device.clone(): {"ciphertext": "opaque"}}}});
    for _ in 0..2 {
        let (s, b) = a
            .user
            .put(
                "/_matrix/client/v3/sendToDevice/m.room.encrypted/t1",
                message.clone(),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    let got = sync_until(&c.user, &since, |b| {
        b["to_device"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    })
    .await;
    let events = &got["to_device"]["events"];
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{got}");
    assert_eq!(events[0]["sender"], a_user.as_str());
    assert_eq!(events[0]["content"]["ciphertext"], "opaque");

    // New keys on a.test reach c.test as a device-list update.
    let since = got["next_batch"].as_str().unwrap_or_default().to_owned();
    upload_device_keys(&a.user, "a2").await;
    sync_until(&c.user, &since, |b| {
        b["device_lists"]["changed"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u == a_user.as_str()))
    })
    .await;
    let q = c.user.query_keys(&a_user).await;
    assert_eq!(
        q["device_keys"][&a_user][&a_device]["keys"][format!("curve25519:{a_device}")],
        "a2",
        "{q}"
    );
}

/// An event's depth as a server in the room reads it.
async fn depth_of(world: &World, evil: &EvilServer, room_server: &Fed, id: &str) -> i64 {
    let (s, got) = evil.event(world, room_server, id).await;
    assert_eq!(s, 200, "{got}");
    got["pdus"][0]["depth"].as_i64().expect("depth")
}

#[tokio::test]
async fn a_remote_redaction_applies_only_where_its_sender_may_redact() {
    let world = World::start_one().await;
    let a = &world.servers[0];
    let evil = EvilServer::start(&world).await;
    let (room, (_, join_id, joined)) = evil.joined_public_room(&world, a).await;
    let power = state_event_id(&joined, "m.room.power_levels");
    let auth = [power.as_str(), join_id.as_str()];
    let alices = a.user.send_text(&room, "a1", "alice's words").await;
    let depth = depth_of(&world, &evil, a, &alices).await;

    // Eve (power 0, another server) redacts alice's event: the redaction is
    // taken and stored, alice's event stays as it was.
    let (r1, r1_id) = evil.eve_event(
        &room,
        "m.room.redaction",
        json!({"redacts": alices}),
        (&alices, depth + 1),
        &auth,
    );
    evil.send_pdus(&world, a, "r1", &[&r1]).await;
    assert_eq!(
        a.user.content_of(&room, &r1_id).await["redacts"],
        alices.as_str()
    );
    assert_eq!(
        a.user.content_of(&room, &alices).await["body"],
        "alice's words"
    );

    // Eve's own event she may redact.
    let (e1, e1_id) = evil.eve_event(
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "eve's words"}),
        (&r1_id, depth + 2),
        &auth,
    );
    let (r2, r2_id) = evil.eve_event(
        &room,
        "m.room.redaction",
        json!({"redacts": e1_id}),
        (&e1_id, depth + 3),
        &auth,
    );
    evil.send_pdus(&world, a, "e1", &[&e1, &r2]).await;
    assert_eq!(a.user.content_of(&room, &e1_id).await, json!({}));

    // A redaction that comes before its target is kept, and applied when
    // the target arrives.
    let (e2, e2_id) = evil.eve_event(
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "eve's later words"}),
        (&r2_id, depth + 4),
        &auth,
    );
    let (r3, _) = evil.eve_event(
        &room,
        "m.room.redaction",
        json!({"redacts": e2_id}),
        (&r2_id, depth + 4),
        &auth,
    );
    evil.send_pdus(&world, a, "r3", &[&r3]).await;
    evil.send_pdus(&world, a, "e2", &[&e2]).await;
    assert_eq!(a.user.content_of(&room, &e2_id).await, json!({}));
    // And alice's event is still whole.
    assert_eq!(
        a.user.content_of(&room, &alices).await["body"],
        "alice's words"
    );
}

#[tokio::test]
async fn every_public_read_receipt_reaches_the_rooms_other_servers() {
    let world = World::start_one().await;
    let a = &world.servers[0];
    let evil = EvilServer::start(&world).await;
    let (room, _) = evil.joined_public_room(&world, a).await;
    let first = a.user.send_text(&room, "m1", "one").await;
    let second = a.user.send_text(&room, "m2", "two").await;
    let third = a.user.send_text(&room, "m3", "three").await;
    let fourth = a.user.send_text(&room, "m4", "four").await;
    let user = a.user_id.clone();
    // alice's m.read receipt data for `event` in an m.receipt EDU, if any.
    let read_of = |edu: &Value, event: &str| -> Option<Value> {
        let r = &edu["content"][&room]["m.read"][&user];
        r["event_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|i| i == event))
            .then(|| r["data"].clone())
    };

    // /read_markers, as Element and nio send it.
    let (s, body) = a
        .user
        .post(
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
            json!({"m.fully_read": first, "m.read": first}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let edu = evil
        .wait_for_edu("m.receipt", |e| read_of(e, &first).is_some())
        .await;
    assert!(
        read_of(&edu, &first).is_some_and(|d| d["ts"].is_u64()),
        "{edu}"
    );

    // A threaded receipt (nio's default) keeps its thread.
    a.user
        .read_receipt(&room, &second, json!({"thread_id": "main"}))
        .await;
    let edu = evil
        .wait_for_edu("m.receipt", |e| read_of(e, &second).is_some())
        .await;
    assert_eq!(read_of(&edu, &second).expect("data")["thread_id"], "main");

    // A private receipt stays here; a public one after it does not.
    for (kind, event) in [("m.read.private", &third), ("m.read", &fourth)] {
        let (s, body) = a
            .user
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
                    enc(&room),
                    enc(event)
                ),
                json!({}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    evil.wait_for_edu("m.receipt", |e| read_of(e, &fourth).is_some())
        .await;
    for edu in evil.edus("m.receipt") {
        assert!(
            read_of(&edu, &third).is_none(),
            "private receipt sent: {edu}"
        );
        assert!(
            edu["content"][&room].get("m.read.private").is_none(),
            "private receipt sent: {edu}"
        );
    }

    // Eve's threaded receipt, coming in, keeps its thread too.
    let receipt = json!({"edu_type": "m.receipt", "content": {&room: {"m.read": {
        "@eve:evil.test": {"event_ids": [first], "data": {"ts": now_ms(), "thread_id": "main"}}
    }}}});
    let (s, answer) = evil
        .send_txn(&world, a, "rcpt1", json!({"origin": "evil.test", "origin_server_ts": now_ms(), "pdus": [], "edus": [receipt]}))
.await;
    assert_eq!(s, 200, "{answer}");
    let (s, synced) = a.user.get("/_matrix/client/v3/sync").await;
    assert_eq!(s, 200, "{synced}");
    let receipts: Vec<Value> = synced["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let eves = receipts
        .iter()
        .find_map(|e| {
            let r = &e["content"][&first]["m.read"]["@eve:evil.test"];
            r.is_object().then(|| r.clone())
        })
        .unwrap_or_else(|| panic!("no receipt of eve's: {receipts:?}"));
    assert_eq!(eves["thread_id"], "main", "{eves}");
}

/// What `c` sees of a room's ephemeral events now: who is typing, and the
/// users with a read receipt on each event.
async fn ephemeral(c: &Client, room: &str) -> (Vec<String>, Value) {
    let body = c.sync("timeout=0").await;
    let events = body["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let typing = typing_in(&body, room).unwrap_or_default();
    let mut receipts = serde_json::Map::new();
    for e in events.iter().filter(|e| e["type"] == "m.receipt") {
        for (event, kinds) in e["content"].as_object().into_iter().flatten() {
            receipts.insert(event.clone(), kinds["m.read"].clone());
        }
    }
    (typing, Value::Object(receipts))
}

/// An `m.typing` and an `m.receipt` EDU of eve's, as evil.test sends them.
fn eve_edus(room: &str, typing: bool, read: &str) -> Value {
    json!([
        {"edu_type": "m.typing",
         "content": {"room_id": room, "user_id": "@eve:evil.test", "typing": typing}},
        {"edu_type": "m.receipt",
         "content": {room: {"m.read": {"@eve:evil.test":
             {"event_ids": [read], "data": {"ts": now_ms()}}}}}},
    ])
}

#[tokio::test]
async fn a_server_the_room_acl_denies_is_refused_and_sent_nothing() {
    let world = World::start().await;
    let a = &world.servers[0];
    let evil = EvilServer::start(&world).await;
    let (room, (join, join_id, joined)) = evil.joined_public_room(&world, a).await;
    let first = a.user.send_text(&room, "m1", "before the ACL").await;
    evil.wait_for_pdu(&first).await;

    // Before the ACL evil.test's EDUs count: eve types and reads.
    let (s, body) = evil
        .send_txn(
            &world,
            a,
            "e1",
            json!({"origin": "evil.test", "origin_server_ts": now_ms(),
                        "pdus": [], "edus": eve_edus(&room, true, &first)}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (typing, receipts) = ephemeral(&a.user, &room).await;
    assert!(typing.iter().any(|u| u == "@eve:evil.test"), "{typing:?}");
    assert!(
        receipts[&first].get("@eve:evil.test").is_some(),
        "{receipts}"
    );
    let stop = json!([{"edu_type": "m.typing",
        "content": {"room_id": room, "user_id": "@eve:evil.test", "typing": false}}]);
    let (s, body) = evil
        .send_txn(
            &world,
            a,
            "e2",
            json!({"origin": "evil.test", "origin_server_ts": now_ms(),
                        "pdus": [], "edus": stop}),
        )
        .await;
    assert_eq!(s, 200, "{body}");

    // The room now denies evil.test (eve is still joined).
    let (s, body) = a
        .user
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                enc(&room)
            ),
            json!({"allow": ["*"], "deny": ["evil.*"], "allow_ip_literals": false}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let acl_id = body["event_id"].as_str().expect("event_id").to_owned();

    // Every room-scoped request of evil.test: 403 M_FORBIDDEN.
    let r = enc(&room);
    let eve = enc("@eve:evil.test");
    let first_enc = enc(&first);
    let refused: Vec<(&str, String, Option<Value>)> = vec![
        (
            "GET",
            format!("/_matrix/federation/v1/make_join/{r}/{eve}?ver=12"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/make_leave/{r}/{eve}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/make_knock/{r}/{eve}?ver=12"),
            None,
        ),
        (
            "PUT",
            format!("/_matrix/federation/v2/send_join/{r}/{first_enc}"),
            Some(json!({})),
        ),
        (
            "PUT",
            format!("/_matrix/federation/v2/send_leave/{r}/{first_enc}"),
            Some(json!({})),
        ),
        (
            "PUT",
            format!("/_matrix/federation/v1/send_knock/{r}/{first_enc}"),
            Some(json!({})),
        ),
        (
            "PUT",
            format!("/_matrix/federation/v2/invite/{r}/{first_enc}"),
            Some(json!({})),
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/state/{r}?event_id={first_enc}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/state_ids/{r}?event_id={first_enc}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/backfill/{r}?v={first_enc}&limit=5"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/event/{first_enc}"),
            None,
        ),
        (
            "POST",
            format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(json!({"earliest_events": [], "latest_events": [first], "limit": 5})),
        ),
    ];
    for (method, path, body) in refused {
        let (s, answer) = evil.request(&world, a, method, &path, body).await;
        assert_eq!(
            (s, answer["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{method} {path}: {answer}"
        );
    }

    // Its PDU is refused (the transaction itself answered), its EDUs dropped.
    let power = joined["state"]
        .as_array()
        .expect("state")
        .iter()
        .find(|e| e["type"] == "m.room.power_levels")
        .map(|e| ids_of(&json!([e]))[0].clone())
        .expect("power levels in the state");
    let mut message = object(&json!({
        "room_id": room,
        "sender": "@eve:evil.test",
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": "eve despite the ACL"},
        "prev_events": [join_id],
        "auth_events": [power, join_id],
        "depth": join["depth"].as_integer().map(i64::from).expect("depth") + 1,
        "origin_server_ts": now_ms(),
    }));
    let message_id = EvilServer::sign_event(&mut message, "evil.test", &evil.key);
    let (s, answer) = evil
        .send_txn(
            &world,
            a,
            "e3",
            json!({"origin": "evil.test", "origin_server_ts": now_ms(),
                        "pdus": [CanonicalJsonValue::Object(message)],
                        "edus": eve_edus(&room, true, &acl_id)}),
        )
        .await;
    assert_eq!(s, 200, "{answer}");
    assert!(answer["pdus"][&message_id]["error"].is_string(), "{answer}");
    let page = a.user.messages(&room, "dir=b&limit=50").await;
    assert!(
        page["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .all(|e| e["event_id"] != message_id.as_str()),
        "stored: {page}"
    );
    let (typing, receipts) = ephemeral(&a.user, &room).await;
    assert!(typing.iter().all(|u| u != "@eve:evil.test"), "{typing:?}");
    assert!(receipts.get(&acl_id).is_none(), "{receipts}");

    // And a.test sends it nothing more of the room: the ACL event itself
    // was the last (it was addressed before it took effect).
    evil.wait_for_pdu(&acl_id).await;
    let after = a.user.send_text(&room, "m2", "after the ACL").await;
    a.user.set_typing(&room, &a.user_id, true, 20000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pdus, edus) = evil.received();
    assert!(
        !ids_of(&Value::Array(pdus)).contains(&after),
        "{after} sent to a denied server"
    );
    assert!(
        edus.iter().all(|e| e["edu_type"] != "m.typing"),
        "typing sent to a denied server: {edus:?}"
    );
}

/// A request to `to` signed as `origin` with `key`; (status, body).
async fn signed_request(
    ca: &TestCa,
    to: &Fed,
    (origin, key): (&str, &Ed25519KeyPair),
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (http, base) = direct(ca, to);
    let bytes = body
        .as_ref()
        .map(|b| serde_json::to_vec(b).expect("json"))
        .unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(bytes.clone())
        .expect("request");
    let auth = XMatrix::sign_http_request(
        &req,
        XMatrixSigningInput::new(
            origin.try_into().expect("origin"),
            to.name.as_str().try_into().expect("destination"),
            key,
        ),
    )
    .expect("sign");
    let mut r = http
        .request(method.parse().expect("method"), format!("{base}{path}"))
        .header("Authorization", auth.to_string());
    if body.is_some() {
        r = r.header("Content-Type", "application/json").body(bytes);
    }
    let resp = r.send().await.expect("signed request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The keys `keys.test` (played by the test) publishes now: its current
/// key, the keys it had before, and how long the response is valid.
struct Published {
    key: Arc<Ed25519KeyPair>,
    old: Vec<(String, String)>,
    valid_until_ts: u64,
}

/// `keys.test`: publishes a signing key the test rotates at will, and
/// counts how often it is asked for it.
struct KeyOrigin {
    published: Arc<std::sync::Mutex<Published>>,
    asked: Arc<std::sync::atomic::AtomicUsize>,
    handle: axum_server::Handle<SocketAddr>,
}

fn new_key(id: &str) -> Arc<Ed25519KeyPair> {
    Arc::new(Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), id.into()).expect("key"))
}

fn public_b64(key: &Ed25519KeyPair) -> String {
    Base64::<ruma::serde::base64::Standard>::new(key.public_key().to_vec()).encode()
}

impl KeyOrigin {
    async fn start(ca: &TestCa, at: SocketAddr, key: Arc<Ed25519KeyPair>, valid_for: u64) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let published = Arc::new(std::sync::Mutex::new(Published {
            key,
            old: vec![],
            valid_until_ts: now_ms() + valid_for,
        }));
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/_matrix/key/v2/server",
            axum::routing::get({
                let (published, asked) = (published.clone(), asked.clone());
                move || {
                    asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let p = published.lock().expect("published");
                    let old: serde_json::Map<String, Value> = p
                        .old
                        .iter()
                        .map(|(id, k)| (id.clone(), json!({"key": k, "expired_ts": now_ms()})))
                        .collect();
                    let mut keys = object(&json!({
                        "server_name": "keys.test",
                        "valid_until_ts": p.valid_until_ts,
                        "verify_keys": {format!("ed25519:{}", p.key.version()): {"key": public_b64(&p.key)}},
                        "old_verify_keys": old,
                    }));
                    ruma::signatures::sign_json("keys.test", &*p.key, &mut keys).expect("sign");
                    let body = Value::from(CanonicalJsonValue::Object(keys));
                    async move { axum::Json(body) }
                }
            }),
        );
        let (cert, key_file) = ca.issue("keys", &["keys.test"]);
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key_file)
            .await
            .expect("keys tls");
        let handle = axum_server::Handle::new();
        let server = axum_server::bind_rustls(at, tls).handle(handle.clone());
        tokio::spawn(server.serve(app.into_make_service()));
        handle.listening().await.expect("keys.test listening");
        KeyOrigin {
            published,
            asked,
            handle,
        }
    }

    /// Signs with `key` from now on; the previous key is published as old.
    fn rotate(&self, key: Arc<Ed25519KeyPair>, valid_for: u64) {
        let mut p = self.published.lock().expect("published");
        let old_id = format!("ed25519:{}", p.key.version());
        let old_key = public_b64(&p.key);
        p.old.push((old_id, old_key));
        p.key = key;
        p.valid_until_ts = now_ms() + valid_for;
    }

    fn extend(&self, valid_for: u64) {
        self.published.lock().expect("published").valid_until_ts = now_ms() + valid_for;
    }

    fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for KeyOrigin {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// What the notary `n` relays of keys.test for a POST query naming
/// `key_ids`: (its verify key ids, its valid_until_ts).
async fn notary_post(ca: &TestCa, n: &Fed, key_ids: &[&str]) -> (Vec<String>, u64) {
    let criteria: serde_json::Map<String, Value> = key_ids
        .iter()
        .map(|id| (id.to_string(), json!({})))
        .collect();
    let (http, base) = direct(ca, n);
    let resp = http
        .post(format!("{base}/_matrix/key/v2/query"))
        .json(&json!({"server_keys": {"keys.test": criteria}}))
        .send()
        .await
        .expect("notary query");
    assert_eq!(resp.status(), 200);
    relayed(resp.json().await.expect("json"))
}

fn relayed(answer: Value) -> (Vec<String>, u64) {
    let keys = &answer["server_keys"][0];
    let ids = keys["verify_keys"]
        .as_object()
        .unwrap_or_else(|| panic!("no keys relayed: {answer}"))
        .keys()
        .cloned()
        .collect();
    (
        ids,
        keys["valid_until_ts"].as_u64().expect("valid_until_ts"),
    )
}

#[tokio::test]
async fn the_notary_and_signed_requests_refetch_keys_they_lack_at_most_every_five_seconds() {
    let [ip_n, ip_k, ..] = loopback_block();
    let dns = TestDns::start(&[("keys.test", ip_k)], &[]).await;
    let ca = TestCa::new();
    let n = start_fed(
        "n.test",
        SocketAddr::new(ip_n.into(), free_port(ip_n)),
        ca.issue("n", &["n.test"]),
        &ca.ca_file(),
        dns.addr,
        &[],
    )
    .await;
    let hour = 3_600_000;
    let origin =
        KeyOrigin::start(&ca, SocketAddr::new(ip_k.into(), 8448), new_key("k1"), hour).await;

    // The first query fetches and caches k1.
    let (ids, _) = notary_post(&ca, &n, &[]).await;
    assert_eq!(ids, ["ed25519:k1"]);
    assert_eq!(origin.asked(), 1);

    // keys.test rotates to k2: asked for k2, the notary fetches again
    // (once five seconds have passed since the last fetch).
    origin.rotate(new_key("k2"), hour);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let (ids, _) = notary_post(&ca, &n, &["ed25519:k2"]).await;
    assert_eq!(ids, ["ed25519:k2"], "the notary relayed its stale copy");
    assert_eq!(origin.asked(), 2);
    // A key id nobody published, asked for again and again: keys.test is
    // not asked again within five seconds.
    for _ in 0..3 {
        let (ids, _) = notary_post(&ca, &n, &["ed25519:nope"]).await;
        assert_eq!(ids, ["ed25519:k2"]);
    }
    assert_eq!(origin.asked(), 2, "keys.test asked again within 5 s");

    // keys.test rotates to k3 and signs a request with it: n.test fetches
    // its keys again and takes the request.
    let k3 = new_key("k3");
    origin.rotate(k3.clone(), hour);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let (s, body) = signed_request(
        &ca,
        &n,
        ("keys.test", &k3),
        "GET",
        &format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            enc("@user:n.test")
        ),
        None,
    )
    .await;
    assert_eq!(s, 200, "a request signed by the new key refused: {body}");
    assert_eq!(origin.asked(), 3);

    // Cached until an hour from now; a query wanting two hours has it
    // fetched again, now valid for three.
    origin.extend(3 * hour);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let (http, base) = direct(&ca, &n);
    let wanted = now_ms() + 2 * hour;
    let resp = http
        .get(format!(
            "{base}/_matrix/key/v2/query/keys.test?minimum_valid_until_ts={wanted}"
        ))
        .send()
        .await
        .expect("notary query");
    assert_eq!(resp.status(), 200);
    let (ids, valid_until) = relayed(resp.json().await.expect("json"));
    assert_eq!(ids, ["ed25519:k3"]);
    assert!(
        valid_until >= wanted,
        "stale validity {valid_until} < {wanted}"
    );
    assert_eq!(origin.asked(), 4);
    // Wanting more than keys.test gives does not have it asked again and
    // again: the freshest copy is relayed.
    for _ in 0..3 {
        let resp = http
            .get(format!(
                "{base}/_matrix/key/v2/query/keys.test?minimum_valid_until_ts={}",
                now_ms() + 10 * hour
            ))
            .send()
            .await
            .expect("notary query");
        assert_eq!(resp.status(), 200);
        assert_eq!(relayed(resp.json().await.expect("json")).0, ["ed25519:k3"]);
    }
    assert_eq!(origin.asked(), 4, "keys.test asked again within 5 s");
}
