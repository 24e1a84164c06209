//! User-interactive authentication against the real binary: a session
//! completes only the request that started it.

mod common;

use common::{Client, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

/// Logs `user` in again as a new device with the given id.
async fn login_device(hs: &TestServer, user: &str, password: &str, device: &str) {
    let (s, body) = hs
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                   "password": password, "device_id": device}),
        )
        .await;
    assert_eq!(s, 200, "login {device}: {body}");
}

/// The request without `auth`: a 401 with a fresh session id.
async fn start_session(c: &Client, method: Method, path: &str, body: Value) -> String {
    let (s, challenge) = c.request(method, path, Some(body)).await;
    assert_eq!(s, 401, "{challenge}");
    challenge["session"].as_str().expect("session").to_owned()
}

fn with_password(mut body: Value, session: &str) -> Value {
    body["auth"] = json!({"type": "m.login.password", "session": session,
                          "identifier": {"type": "m.id.user", "user": "alice"},
                          "password": "pw-alice"});
    body
}

async fn device_exists(c: &Client, device: &str) -> bool {
    let (s, body) = c.get(&format!("/_matrix/client/v3/devices/{device}")).await;
    assert!(s == 200 || s == 404, "{s} {body}");
    s == 200
}

#[tokio::test]
async fn a_session_started_for_one_device_cannot_delete_another() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw-alice").await;
    login_device(&hs, "alice", "pw-alice", "DEVA").await;
    login_device(&hs, "alice", "pw-alice", "DEVB").await;

    let session = start_session(
        &alice,
        Method::DELETE,
        "/_matrix/client/v3/devices/DEVA",
        json!({}),
    )
    .await;
    let (s, body) = alice
        .request(
            Method::DELETE,
            "/_matrix/client/v3/devices/DEVB",
            Some(with_password(json!({}), &session)),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert!(device_exists(&alice, "DEVB").await, "DEVB was deleted");

    // The request the session was started for goes through, also on
    // another version prefix.
    let (s, body) = alice
        .request(
            Method::DELETE,
            "/_matrix/client/r0/devices/DEVA",
            Some(with_password(json!({}), &session)),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(!device_exists(&alice, "DEVA").await, "DEVA still exists");
    assert!(device_exists(&alice, "DEVB").await);
}

#[tokio::test]
async fn a_session_is_bound_to_the_request_body() {
    let hs = TestServer::start(&[]).await;
    let alice = hs.register("alice", "pw-alice").await;
    login_device(&hs, "alice", "pw-alice", "DEVA").await;
    login_device(&hs, "alice", "pw-alice", "DEVB").await;

    let path = "/_matrix/client/v3/delete_devices";
    let session = start_session(&alice, Method::POST, path, json!({"devices": ["DEVA"]})).await;
    let (s, body) = alice
        .post(path, with_password(json!({"devices": ["DEVB"]}), &session))
        .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert!(device_exists(&alice, "DEVB").await, "DEVB was deleted");

    // Another user's session is not this user's either.
    let bob = hs.register("bob", "pw-bob").await;
    let bobs = start_session(&bob, Method::POST, path, json!({"devices": ["DEVA"]})).await;
    let (s, body) = alice
        .post(path, with_password(json!({"devices": ["DEVA"]}), &bobs))
        .await;
    assert_eq!(s, 403, "{body}");
    assert!(device_exists(&alice, "DEVA").await, "DEVA was deleted");

    let (s, body) = alice
        .post(path, with_password(json!({"devices": ["DEVA"]}), &session))
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(!device_exists(&alice, "DEVA").await, "DEVA still exists");
    assert!(device_exists(&alice, "DEVB").await);
}

const REGISTER: &str = "/_matrix/client/v3/register";

fn dummy(session: &str) -> Value {
    json!({"type": "m.login.dummy", "session": session})
}

#[tokio::test]
async fn registration_remembers_the_first_requests_parameters() {
    let hs = TestServer::start(&[]).await;
    let c = hs.client();
    let session = start_session(
        &c,
        Method::POST,
        REGISTER,
        json!({"username": "carol", "password": "übers3kr1t", "device_id": "XYZZY",
               "initial_device_display_name": "display_name"}),
    )
    .await;
    let (s, body) = c.post(REGISTER, json!({"auth": dummy(&session)})).await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body["user_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("@carol:"),
        "{body}"
    );
    assert_eq!(body["device_id"], "XYZZY", "{body}");
    let mut carol = hs.client();
    carol.token = body["access_token"].as_str().map(str::to_owned);
    let (s, device) = carol.get("/_matrix/client/v3/devices/XYZZY").await;
    assert_eq!(s, 200, "{device}");
    assert_eq!(device["display_name"], "display_name");
    // The remembered password is the account's.
    login_device(&hs, "carol", "übers3kr1t", "OTHER").await;
}

#[tokio::test]
async fn registration_remembers_inhibit_login() {
    let hs = TestServer::start(&[]).await;
    let c = hs.client();
    let session = start_session(
        &c,
        Method::POST,
        REGISTER,
        json!({"username": "dora", "password": "pw", "inhibit_login": true}),
    )
    .await;
    let (s, body) = c.post(REGISTER, json!({"auth": dummy(&session)})).await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body["user_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("@dora:"),
        "{body}"
    );
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(body.get("device_id").is_none(), "{body}");
}

#[tokio::test]
async fn completing_a_registration_session_twice_gives_the_same_user() {
    let hs = TestServer::start(&[]).await;
    let c = hs.client();
    for username in [None, Some("erin")] {
        let mut params = json!({"password": "sUp3rs3kr1t"});
        if let Some(u) = username {
            params["username"] = json!(u);
        }
        let session = start_session(&c, Method::POST, REGISTER, params.clone()).await;
        let mut done = params.clone();
        done["auth"] = dummy(&session);
        let (s, first) = c.post(REGISTER, done.clone()).await;
        assert_eq!(s, 200, "{first}");
        let (s, second) = c.post(REGISTER, done).await;
        assert_eq!(s, 200, "{second}");
        assert_eq!(first["user_id"], second["user_id"]);
        assert!(second["access_token"].is_string(), "{second}");
    }
}

#[tokio::test]
async fn a_registration_session_refuses_other_parameters() {
    let hs = TestServer::start(&[]).await;
    let c = hs.client();
    let session = start_session(
        &c,
        Method::POST,
        REGISTER,
        json!({"username": "frank", "password": "pw"}),
    )
    .await;
    let (s, body) = c
        .post(
            REGISTER,
            json!({"username": "mallory", "password": "pw", "auth": dummy(&session)}),
        )
        .await;
    common::assert_error(s, &body, 403, "M_FORBIDDEN");
    // The session still completes the registration it was started for.
    let (s, body) = c.post(REGISTER, json!({"auth": dummy(&session)})).await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body["user_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("@frank:"),
        "{body}"
    );
}
