//! `/pushers` and `/pushers/set`: a pusher request is checked in full before
//! anything is stored, so a bad request changes nothing.

use serde::Serialize;
use serde_json::{Map, Value};

use super::Push;
use crate::{Error, Result, store::PusherRecord};

/// The path every push gateway serves (push gateway API).
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// What a valid `/pushers/set` body asks for.
#[derive(Debug, PartialEq)]
pub enum PusherChange {
    Set {
        pusher: Box<PusherRecord>,
        append: bool,
    },
    Delete {
        app_id: String,
        pushkey: String,
    },
}

fn string_field(body: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::invalid_param(format!("'{name}' must be a string"))),
    }
}

/// Checks a `/pushers/set` body for `user`; `now_ms` dates the pushkey.
pub fn parse_pusher_request(
    user: &str,
    body: &Map<String, Value>,
    now_ms: i64,
) -> Result<PusherChange> {
    let f = required_fields(body)?;
    check_pusher_key(&f.app_id, &f.pushkey)?;
    let Some(kind) = f.kind else {
        return Ok(PusherChange::Delete {
            app_id: f.app_id,
            pushkey: f.pushkey,
        });
    };
    if kind != "http" {
        return Err(Error::invalid_param(format!(
            "Unsupported pusher kind {kind:?}: only \"http\" is supported"
        )));
    }
    let Some(Value::Object(data)) = f.data else {
        return Err(Error::invalid_param("'data' must be an object"));
    };
    check_http_data(data)?;
    let profile_tag = string_field(body, "profile_tag")?;
    let append = append_field(body)?;
    Ok(PusherChange::Set {
        pusher: Box::new(PusherRecord {
            user_id: user.to_owned(),
            device_id: String::new(),
            app_id: f.app_id,
            pushkey: f.pushkey,
            kind,
            app_display_name: f.app_display_name.unwrap_or_default(),
            device_display_name: f.device_display_name.unwrap_or_default(),
            profile_tag,
            lang: f.lang.unwrap_or_default(),
            data: Value::Object(data.clone()),
            pushkey_ts: now_ms,
            last_notification: 0,
        }),
        append,
    })
}

/// The fields a pusher request must carry: `app_id` and `pushkey` always;
/// names, `lang` and `data` too when it sets a pusher (names a `kind`).
struct PusherFields<'a> {
    app_id: String,
    pushkey: String,
    kind: Option<String>,
    app_display_name: Option<String>,
    device_display_name: Option<String>,
    lang: Option<String>,
    data: Option<&'a Value>,
}

/// Reads the fields, refusing a mistyped one, then names every missing one
/// in a single error.
fn required_fields(body: &Map<String, Value>) -> Result<PusherFields<'_>> {
    let mut missing = vec![];
    if !body.contains_key("kind") {
        missing.push("kind");
    }
    let app_id = string_field(body, "app_id")?;
    let pushkey = string_field(body, "pushkey")?;
    if app_id.is_none() {
        missing.push("app_id");
    }
    if pushkey.is_none() {
        missing.push("pushkey");
    }
    let kind = string_field(body, "kind")?;
    let (app_display_name, device_display_name, lang) = (
        string_field(body, "app_display_name")?,
        string_field(body, "device_display_name")?,
        string_field(body, "lang")?,
    );
    let data = body.get("data").filter(|d| !d.is_null());
    if kind.is_some() {
        for (name, v) in [
            ("app_display_name", app_display_name.is_none()),
            ("device_display_name", device_display_name.is_none()),
            ("lang", lang.is_none()),
            ("data", data.is_none()),
        ] {
            if v {
                missing.push(name);
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::MissingParam(format!(
            "Missing parameters: {}",
            missing.join(", ")
        )));
    }
    let (Some(app_id), Some(pushkey)) = (app_id, pushkey) else {
        return Err(Error::MissingParam(
            "Missing parameters: app_id, pushkey".into(),
        ));
    };
    Ok(PusherFields {
        app_id,
        pushkey,
        kind,
        app_display_name,
        device_display_name,
        lang,
        data,
    })
}

/// The (app_id, pushkey) pair names the pusher: both bounded as the spec says.
fn check_pusher_key(app_id: &str, pushkey: &str) -> Result<()> {
    if app_id.is_empty() || app_id.chars().count() > 64 {
        return Err(Error::invalid_param("'app_id' must be 1 to 64 characters"));
    }
    if pushkey.is_empty() || pushkey.len() > 512 {
        return Err(Error::invalid_param("'pushkey' must be 1 to 512 bytes"));
    }
    Ok(())
}

/// `append`: keep other users' pushers with the same key (default false).
fn append_field(body: &Map<String, Value>) -> Result<bool> {
    match body.get("append") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Error::invalid_param("'append' must be a boolean")),
    }
}

/// An http pusher's `data`: a gateway url, and a format as a string.
fn check_http_data(data: &Map<String, Value>) -> Result<()> {
    let url = match data.get("url") {
        None | Some(Value::Null) => {
            return Err(Error::MissingParam(
                "'data.url' is required for an http pusher".into(),
            ));
        }
        Some(Value::String(u)) => u,
        Some(_) => return Err(Error::invalid_param("'data.url' must be a string")),
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let valid = rest.is_some_and(|r| {
        let (host, path) = r.split_at(r.find('/').unwrap_or(r.len()));
        !host.is_empty()
            && !host.contains(char::is_whitespace)
            && path.ends_with(NOTIFY_PATH)
            && !path.contains(['?', '#'])
    });
    if !valid {
        return Err(Error::invalid_param(format!(
            "'data.url' must be an http(s) URL with the path {NOTIFY_PATH}"
        )));
    }
    // The spec defines one format, "event_id_only"; any other is taken as
    // Synapse takes it, and gets the full event (as with no format).
    match data.get("format") {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(Error::invalid_param("'data.format' must be a string")),
    }
}

/// A pusher as `GET /pushers` lists it: Hearth's shape, since `data` goes
/// back as the client gave it (ruma's pusher keeps only the fields it
/// knows). Fields in the order `json!` wrote them, so the bytes sent stay.
#[derive(Debug, Serialize)]
pub struct PusherView {
    pub app_display_name: String,
    pub app_id: String,
    pub data: Value,
    pub device_display_name: String,
    pub kind: String,
    pub lang: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_tag: Option<String>,
    pub pushkey: String,
}

impl From<PusherRecord> for PusherView {
    fn from(p: PusherRecord) -> Self {
        Self {
            app_display_name: p.app_display_name,
            app_id: p.app_id,
            data: p.data,
            device_display_name: p.device_display_name,
            kind: p.kind,
            lang: p.lang,
            profile_tag: p.profile_tag,
            pushkey: p.pushkey,
        }
    }
}

/// `GET /pushers`' answer.
#[derive(Debug, Serialize)]
pub struct Pushers {
    pub pushers: Vec<PusherView>,
}

impl Push {
    /// `POST /pushers/set` from `device`, which owns the pusher from then on.
    pub async fn set_pusher(
        &self,
        user: &str,
        device: &str,
        body: &Map<String, Value>,
    ) -> Result<()> {
        let change = parse_pusher_request(user, body, crate::ids::now_ms() as i64)
            .inspect_err(|e| tracing::info!(%user, error = %e, "pusher request refused"))?;
        match change {
            PusherChange::Set { mut pusher, append } => {
                pusher.device_id = device.to_owned();
                self.store.set_pusher(&pusher, append).await?;
                // Other users may have lost a pusher with this key too.
                if !append {
                    self.has_pushers.clear();
                }
            }
            PusherChange::Delete { app_id, pushkey } => {
                self.store.delete_pusher(user, &app_id, &pushkey).await?;
            }
        }
        self.forget_pushers(user);
        Ok(())
    }

    /// `GET /pushers`.
    pub async fn pushers(&self, user: &str) -> Result<Pushers> {
        let pushers = self.store.pushers(user).await?;
        Ok(Pushers {
            pushers: pushers.into_iter().map(PusherView::from).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn good() -> Value {
        json!({
            "kind": "http", "app_id": "org.example.app", "pushkey": "key",
            "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
            "data": {"url": "https://push.example.org/_matrix/push/v1/notify", "format": "event_id_only"}
        })
    }

    #[test]
    fn accepts_a_valid_http_pusher() {
        let change = parse_pusher_request("@a:hs", &body(good()), 5);
        assert!(matches!(
            change,
            Ok(PusherChange::Set { append: false, .. })
        ));
    }

    #[test]
    fn accepts_a_format_of_its_own() {
        let mut other = good();
        other["data"]["format"] = json!("id_event_only");
        assert!(matches!(
            parse_pusher_request("@a:hs", &body(other), 0),
            Ok(PusherChange::Set { .. })
        ));
    }

    #[test]
    fn null_kind_deletes() {
        let change = parse_pusher_request(
            "@a:hs",
            &body(json!({"kind": null, "app_id": "a", "pushkey": "k"})),
            0,
        );
        assert_eq!(
            change.ok(),
            Some(PusherChange::Delete {
                app_id: "a".into(),
                pushkey: "k".into()
            })
        );
    }

    #[test]
    fn refuses_bad_bodies() {
        let mut missing_url = good();
        missing_url["data"] = json!({});
        assert!(matches!(
            parse_pusher_request("@a:hs", &body(missing_url), 0),
            Err(Error::MissingParam(_))
        ));
        let mut bad_path = good();
        bad_path["data"]["url"] = json!("https://push.example.org/notify");
        assert!(matches!(
            parse_pusher_request("@a:hs", &body(bad_path), 0),
            Err(Error::InvalidParam(_))
        ));
        let mut bad_kind = good();
        bad_kind["kind"] = json!("carrier-pigeon");
        assert!(matches!(
            parse_pusher_request("@a:hs", &body(bad_kind), 0),
            Err(Error::InvalidParam(_))
        ));
        let mut no_lang = good();
        if let Some(o) = no_lang.as_object_mut() {
            o.remove("lang");
        }
        assert!(matches!(
            parse_pusher_request("@a:hs", &body(no_lang), 0),
            Err(Error::MissingParam(_))
        ));
        let mut bad_format = good();
        bad_format["data"]["format"] = json!(1);
        assert!(matches!(
            parse_pusher_request("@a:hs", &body(bad_format), 0),
            Err(Error::InvalidParam(_))
        ));
    }
}
