//! `GET /notifications`: the events that notified the user, newest first,
//! each with whether the user has read it (their `m.read`/`m.read.private`
//! receipt in the room is at or after it).

use std::collections::HashMap;

use ruma::UserId;
use serde::Serialize;
use serde_json::Value;

use super::Push;
use crate::{Error, Result};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;

impl Push {
    /// `from` is a `next_token` from an earlier page; `only` may be
    /// `"highlight"`.
    pub async fn notifications_page(
        &self,
        user: &UserId,
        from: Option<&str>,
        limit: Option<i64>,
        only: Option<&str>,
    ) -> Result<Notifications> {
        let before = match from.filter(|f| !f.is_empty()) {
            None => None,
            Some(f) => Some(
                f.parse::<i64>()
                    .map_err(|_| Error::invalid_param(format!("Invalid 'from' token {f:?}")))?,
            ),
        };
        let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let only_highlight = only.is_some_and(|o| o.contains("highlight"));
        let who = user.as_str();
        let rows = self
            .store
            .notifications_before(who, before, limit, only_highlight)
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
        let events = self.room_store.get_events(&ids).await?;
        let mut read_positions: HashMap<&str, i64> = HashMap::new();
        let mut out = vec![];
        for n in &rows {
            let Some(event) = events
                .iter()
                .find(|e| e.pdu.event_id.as_str() == n.event_id)
            else {
                continue;
            };
            let read = match read_positions.get(n.room_id.as_str()) {
                Some(r) => *r,
                None => {
                    let r = self
                        .room_store
                        .read_position(&n.room_id, who)
                        .await?
                        .unwrap_or(0);
                    read_positions.insert(&n.room_id, r);
                    r
                }
            };
            out.push(Notification {
                actions: n.actions.clone(),
                event: event.to_client(None),
                read: n.stream_ordering <= read,
                room_id: n.room_id.clone(),
                ts: n.ts,
            });
        }
        let next_token = rows
            .last()
            .filter(|_| rows.len() as i64 == limit)
            .map(|last| last.id.to_string());
        Ok(Notifications {
            next_token,
            notifications: out,
        })
    }
}

/// A page of `GET /notifications`. Hearth's shape: the event goes as the
/// client API shows it and the actions as stored, which ruma's typed
/// notification would re-read (and could refuse). Fields in the order
/// `json!` wrote them, so the bytes sent stay.
#[derive(Debug, Serialize)]
pub struct Notifications {
    /// Where the next (older) page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    pub notifications: Vec<Notification>,
}

/// One event that notified the user.
#[derive(Debug, Serialize)]
pub struct Notification {
    pub actions: Value,
    pub event: Value,
    pub read: bool,
    pub room_id: String,
    pub ts: i64,
}
