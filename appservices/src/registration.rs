//! Registration files (YAML, the format Synapse reads): parsed, checked,
//! and turned into core's `AppService`. A bad file stops start-up with an
//! error naming the file and the field.

use std::{collections::HashSet, path::Path};

use hearth_core::appservice::{AppService, NamespaceRule};
use hearth_core::ruma::{OwnedServerName, UserId};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("application service registration {file}: {field}: {reason}")]
pub struct RegistrationError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

#[derive(Deserialize)]
struct RegistrationFile {
    id: Option<String>,
    #[serde(default)]
    url: Option<String>,
    as_token: Option<String>,
    hs_token: Option<String>,
    sender_localpart: Option<String>,
    #[serde(default)]
    namespaces: Namespaces,
    #[serde(default)]
    rate_limited: Option<bool>,
    #[serde(default)]
    protocols: Option<Vec<String>>,
    #[serde(default)]
    receive_ephemeral: Option<bool>,
    /// The name MSC2409 used before it was merged.
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    push_ephemeral: Option<bool>,
}

#[derive(Deserialize, Default)]
struct Namespaces {
    #[serde(default)]
    users: Vec<Namespace>,
    #[serde(default)]
    aliases: Vec<Namespace>,
    #[serde(default)]
    rooms: Vec<Namespace>,
}

#[derive(Deserialize)]
struct Namespace {
    #[serde(default)]
    exclusive: bool,
    regex: Option<String>,
}

/// Loads every registration file; fails on the first bad one, or on two
/// services sharing an id or a token.
pub fn load_registrations(
    paths: &[impl AsRef<Path>],
    server_name: &OwnedServerName,
) -> Result<Vec<AppService>, RegistrationError> {
    let mut services: Vec<AppService> = vec![];
    let mut seen_tokens: HashSet<String> = HashSet::new();
    for path in paths {
        let path = path.as_ref();
        let file = path.display().to_string();
        let fail = |field: &str, reason: String| RegistrationError {
            file: file.clone(),
            field: field.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail("(file)", e.to_string()))?;
        let service = parse(&text, server_name).map_err(|(field, reason)| fail(&field, reason))?;
        if services.iter().any(|s| s.id == service.id) {
            return Err(fail(
                "id",
                format!("{} is used by another registration", service.id),
            ));
        }
        for (field, token) in [
            ("as_token", &service.as_token),
            ("hs_token", &service.hs_token),
        ] {
            if !seen_tokens.insert(token.clone()) {
                return Err(fail(
                    field,
                    "the same token appears in another registration (or twice here)".into(),
                ));
            }
        }
        tracing::info!(appservice = %service.id, file = %file, "application service registered");
        services.push(service);
    }
    Ok(services)
}

/// One registration's text: the service, or (field, what is wrong).
pub fn parse(text: &str, server_name: &OwnedServerName) -> Result<AppService, (String, String)> {
    let reg: RegistrationFile =
        yaml_serde::from_str(text).map_err(|e| ("(yaml)".to_owned(), e.to_string()))?;
    let required = |field: &str, v: Option<String>| -> Result<String, (String, String)> {
        match v {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err((field.to_owned(), "missing or empty".to_owned())),
        }
    };
    let id = required("id", reg.id)?;
    let as_token = required("as_token", reg.as_token)?;
    let hs_token = required("hs_token", reg.hs_token)?;
    if as_token == hs_token {
        return Err(("hs_token".into(), "must differ from as_token".into()));
    }
    let localpart = required("sender_localpart", reg.sender_localpart)?;
    let sender = UserId::parse(format!("@{localpart}:{server_name}"))
        .ok()
        .filter(|_| hearth_core::accounts::valid_localpart(&localpart))
        .ok_or_else(|| {
            (
                "sender_localpart".to_owned(),
                format!("{localpart} is not a valid user localpart"),
            )
        })?;
    let url = match reg.url {
        Some(u) if u.trim().is_empty() => None,
        Some(u) => {
            let parsed =
                reqwest::Url::parse(&u).map_err(|e| ("url".to_owned(), format!("{u}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err((
                    "url".into(),
                    format!("{u}: only http and https are supported"),
                ));
            }
            Some(u.trim_end_matches('/').to_owned())
        }
        None => None,
    };
    let rules =
        |kind: &str, list: Vec<Namespace>| -> Result<Vec<NamespaceRule>, (String, String)> {
            list.into_iter()
                .enumerate()
                .map(|(i, n)| {
                    let field = format!("namespaces.{kind}[{i}].regex");
                    let pattern = n
                        .regex
                        .ok_or_else(|| (field.clone(), "missing".to_owned()))?;
                    NamespaceRule::new(&pattern, n.exclusive)
                        .map_err(|e| (field, format!("{pattern}: {e}")))
                })
                .collect()
        };
    Ok(AppService {
        id,
        url,
        as_token,
        hs_token,
        sender,
        users: rules("users", reg.namespaces.users)?,
        aliases: rules("aliases", reg.namespaces.aliases)?,
        rooms: rules("rooms", reg.namespaces.rooms)?,
        rate_limited: reg.rate_limited.unwrap_or(true),
        protocols: reg.protocols.unwrap_or_default(),
        receive_ephemeral: reg
            .receive_ephemeral
            .or(reg.push_ephemeral)
            .unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> OwnedServerName {
        OwnedServerName::try_from("example.org").expect("name")
    }

    const GOOD: &str = r##"
id: irc
url: "http://127.0.0.1:9000/"
as_token: secret-as
hs_token: secret-hs
sender_localpart: ircbot
rate_limited: false
protocols: ["irc"]
receive_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: "@_irc_.*:example\\.org"
  aliases:
    - exclusive: false
      regex: "#_irc_.*"
"##;

    #[test]
    fn a_synapse_style_registration_parses() {
        let s = parse(GOOD, &server()).expect("parses");
        assert_eq!(s.id, "irc");
        assert_eq!(s.url.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.sender.as_str(), "@ircbot:example.org");
        assert!(!s.rate_limited && s.receive_ephemeral);
        assert_eq!(s.protocols, vec!["irc".to_owned()]);
        assert_eq!((s.users.len(), s.aliases.len(), s.rooms.len()), (1, 1, 0));
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases = [
            (GOOD.replace("as_token: secret-as\n", ""), "as_token"),
            (GOOD.replace("secret-hs", "secret-as"), "hs_token"),
            (GOOD.replace("ircbot", "IRC bot"), "sender_localpart"),
            (GOOD.replace("http://127.0.0.1:9000/", "ftp://x"), "url"),
            (
                GOOD.replace("\"@_irc_.*:example\\\\.org\"", "\"@_irc_(\""),
                "namespaces.users[0].regex",
            ),
            ("id: [unclosed".to_owned(), "(yaml)"),
        ];
        for (text, field) in cases {
            match parse(&text, &server()) {
                Err((f, _)) => assert_eq!(f, field, "{text}"),
                Ok(_) => panic!("accepted: {text}"),
            }
        }
    }
}
