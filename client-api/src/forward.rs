//! Reaches the process holding a room's writer lease over HTTP
//! (`routes/internal.rs` on the other side).

use std::time::Duration;

use hearth_core::{
    Error, Forwarder, Result,
    rooms::NewEvent,
    ruma::{OwnedEventId, RoomId},
};
use serde_json::Value;

use crate::routes::internal::{NOT_WRITER, SEND_PATH};

pub struct HttpForwarder {
    http: reqwest::Client,
    secret: String,
}

impl HttpForwarder {
    pub fn new(secret: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            // A live writer answers within its commit; a dead one must not
            // hold the send for long before the room is taken over.
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(Error::internal)?;
        Ok(Self {
            http,
            secret: secret.to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl Forwarder for HttpForwarder {
    async fn send(
        &self,
        address: &str,
        room_id: &RoomId,
        event: &NewEvent,
    ) -> Result<OwnedEventId> {
        let path = SEND_PATH.replace("{room_id}", &percent_encode(room_id.as_str()));
        let url = format!("{}{path}", address.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.secret)
            .json(event)
            .send()
            .await
            .map_err(|e| Error::WriterUnreachable(e.to_string()))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| Error::WriterUnreachable(e.to_string()))?;
        if status.is_success() {
            return body["event_id"]
                .as_str()
                .and_then(|id| OwnedEventId::try_from(id).ok())
                .ok_or_else(|| Error::internal("the room's writer answered without an event id"));
        }
        let errcode = body["errcode"].as_str().unwrap_or("M_UNKNOWN");
        if errcode == NOT_WRITER {
            return Err(Error::LeaseLost);
        }
        Err(Error::Forwarded {
            status: status.as_u16(),
            errcode: errcode.to_owned(),
            message: body["error"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
