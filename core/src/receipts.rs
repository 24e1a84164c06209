//! Read receipts and the fully-read marker, however a local user sets them
//! (`/receipt`, `/read_markers`, the WebSocket, an application service
//! acting for its user): stored, shown to the room, and public receipts
//! (`m.read`, threaded or not) sent to the room's other servers as an
//! `m.receipt` EDU. Private receipts (`m.read.private`) and the fully-read
//! marker stay on this server.

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use std::sync::Arc;

use crate::{
    Error, Result, appservice::ToAppServices, ephemeral::Ephemeral, ids::now_ms, rooms::Rooms,
    store::ReceiptRecord,
};

/// One marker to set: its type (`m.read`, `m.read.private`,
/// `m.fully_read`), the event it points at, and for a threaded receipt
/// its thread.
#[derive(Debug, Clone, Copy)]
pub struct ReceiptUpdate<'a> {
    pub kind: &'a str,
    pub event_id: &'a str,
    pub thread_id: Option<&'a str>,
}

impl ReceiptUpdate<'_> {
    fn check(&self) -> Result<()> {
        if !matches!(self.kind, "m.read" | "m.read.private" | "m.fully_read") {
            return Err(Error::invalid_param(format!(
                "Unknown receipt type {}",
                self.kind
            )));
        }
        if self.kind == "m.fully_read" && self.thread_id.is_some() {
            return Err(Error::invalid_param("m.fully_read cannot be threaded"));
        }
        Ok(())
    }
}

/// Receipts and the fully-read marker, set here or by another server.
pub struct Receipts {
    store: Arc<dyn crate::store::RoomStore>,
    main: Arc<dyn crate::store::MainStore>,
    rooms: Arc<Rooms>,
    to_appservices: Arc<ToAppServices>,
    /// A receipt counts as activity for presence.
    ephemeral: Arc<Ephemeral>,
}

impl Receipts {
    pub(crate) fn new(
        store: Arc<dyn crate::store::RoomStore>,
        main: Arc<dyn crate::store::MainStore>,
        rooms: Arc<Rooms>,
        to_appservices: Arc<ToAppServices>,
        ephemeral: Arc<Ephemeral>,
    ) -> Self {
        Self {
            store,
            main,
            rooms,
            to_appservices,
            ephemeral,
        }
    }

    /// Sets one receipt or the fully-read marker for a local user.
    pub async fn set_receipt(
        &self,
        room: &RoomId,
        user: &UserId,
        update: ReceiptUpdate<'_>,
    ) -> Result<()> {
        self.set_receipts(room, user, &[update]).await
    }

    /// Sets several markers at once (`/read_markers`): each checked before
    /// any is stored, the room woken once.
    pub async fn set_receipts(
        &self,
        room: &RoomId,
        user: &UserId,
        updates: &[ReceiptUpdate<'_>],
    ) -> Result<()> {
        for u in updates {
            u.check()?;
        }
        self.rooms.require_joined(room, user).await?;
        let ts = now_ms();
        for u in updates {
            self.store_receipt(room, user, u, ts).await?;
        }
        self.rooms.notify_room(room).await;
        for u in updates.iter().filter(|u| u.kind == "m.read") {
            self.share_receipt(room, user.as_str(), u.event_id, u.thread_id, ts)
                .await;
        }
        self.ephemeral.presence_active(user.as_str());
        Ok(())
    }

    /// Stores one marker after checking its event is in the room.
    async fn store_receipt(
        &self,
        room: &RoomId,
        user: &UserId,
        u: &ReceiptUpdate<'_>,
        ts: u64,
    ) -> Result<()> {
        let known = self
            .store
            .get_event(u.event_id)
            .await?
            .is_some_and(|e| e.pdu.room_id == room);
        if !known {
            return Err(Error::not_found("Event not found"));
        }
        if u.kind == "m.fully_read" {
            let content = json!({"event_id": u.event_id});
            self.main
                .put_account_data(user.as_str(), room.as_str(), "m.fully_read", &content)
                .await?;
            return Ok(());
        }
        self.store
            .put_receipt(&ReceiptRecord {
                room_id: room.to_string(),
                receipt_type: u.kind.to_owned(),
                user_id: user.to_string(),
                thread_id: u.thread_id.unwrap_or_default().to_owned(),
                event_id: u.event_id.to_owned(),
                ts: ts as i64,
                stream_id: 0,
            })
            .await?;
        Ok(())
    }

    /// A local user's public read receipt, for the room's application
    /// services and other servers (with its thread, if it has one).
    async fn share_receipt(
        &self,
        room: &RoomId,
        user: &str,
        event_id: &str,
        thread_id: Option<&str>,
        ts: u64,
    ) {
        let mut data = json!({"ts": ts});
        if let Some(t) = thread_id {
            data["thread_id"] = json!(t);
        }
        let mut by_event = Map::new();
        by_event.insert(event_id.to_owned(), json!({"m.read": {user: data}}));
        self.to_appservices
            .appservice_ephemeral(
                room,
                json!({"type": "m.receipt", "room_id": room, "content": by_event}),
            )
            .await;
        let mut by_user = Map::new();
        by_user.insert(
            user.to_owned(),
            json!({"event_ids": [event_id], "data": data}),
        );
        let mut by_room = Map::new();
        by_room.insert(room.to_string(), json!({"m.read": by_user}));
        self.rooms
            .share_with_servers(
                room,
                json!({"edu_type": "m.receipt", "content": Value::Object(by_room)}),
            )
            .await;
    }

    /// An `m.read` receipt another server sent for its user (already
    /// checked to be joined): stored when the event is known here and in
    /// the room, and the room woken; otherwise dropped. `data` may carry
    /// `ts` and a `thread_id`.
    pub async fn receive_remote_receipt(
        &self,
        room: &RoomId,
        user: &str,
        event_id: &str,
        data: &Value,
    ) {
        let known = matches!(
            self.store.get_event(event_id).await,
            Ok(Some(e)) if e.pdu.room_id == room
        );
        if !known {
            return;
        }
        let receipt = ReceiptRecord {
            room_id: room.to_string(),
            receipt_type: "m.read".into(),
            user_id: user.to_owned(),
            // A threaded receipt stays one (spec: `data.thread_id`).
            thread_id: data["thread_id"].as_str().unwrap_or_default().to_owned(),
            event_id: event_id.to_owned(),
            ts: data["ts"].as_i64().unwrap_or_else(|| now_ms() as i64),
            stream_id: 0,
        };
        match self.store.put_receipt(&receipt).await {
            Ok(_) => self.rooms.notify_room(room).await,
            Err(e) => tracing::warn!(room = %room, %user, error = %e, "cannot store a receipt"),
        }
    }
}
