//! `GET /keys/changes`: whose device lists a user must fetch again (or may
//! forget) between two sync tokens, as sync's `device_lists` says it. Users
//! count when they share any room with the user, encrypted or not (the spec
//! does not restrict device-list tracking to encrypted rooms).

use std::collections::BTreeSet;

use ruma::{UserId, events::room::member::MembershipState};

use super::SyncToken;
use crate::{Result, rooms::membership_state};

/// `/keys/changes`' answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Users whose devices changed, or who newly share a room with the user.
    pub changed: Vec<String>,
    /// Users who no longer share any room with the user.
    pub left: Vec<String>,
}

/// Membership changes in the user's rooms between two tokens: users who
/// joined a room with the user, and users (maybe) no longer sharing one.
#[derive(Default)]
struct MemberMoves {
    joined: BTreeSet<String>,
    left: BTreeSet<String>,
}

impl super::Syncer {
    /// Device-list changes of users sharing a room with `user` (and the
    /// user's own) between `from` and `to`, and the membership changes in
    /// the user's rooms meanwhile: a join makes the member's devices news,
    /// a leave that ends the last shared room puts them under `left`.
    pub async fn key_changes(
        &self,
        user: &UserId,
        from: &SyncToken,
        to: &SyncToken,
    ) -> Result<KeyChanges> {
        let mut changed: BTreeSet<String> = self
            .e2ee
            .key_changes(user, from.misc, to.misc)
            .await?
            .into_iter()
            .collect();
        let moves = self.member_moves(user, from, to).await?;
        changed.extend(moves.joined.into_iter().filter(|u| u != user.as_str()));
        let left = self.no_longer_shared(user, moves.left, &changed).await?;
        Ok(KeyChanges {
            changed: changed.into_iter().collect(),
            left: left.into_iter().collect(),
        })
    }

    /// Read from the member events of the user's rooms with events between
    /// the tokens (latest per member: a leave and rejoin is a join).
    async fn member_moves(
        &self,
        user: &UserId,
        from: &SyncToken,
        to: &SyncToken,
    ) -> Result<MemberMoves> {
        let rooms: Vec<String> = self
            .main
            .memberships_of_user(user.as_str())
            .await?
            .into_iter()
            .map(|m| m.room_id)
            .collect();
        let mut moves = MemberMoves::default();
        if rooms.is_empty() || from.shards == to.shards {
            return Ok(moves);
        }
        let moved = self
            .store
            .rooms_with_events(&rooms, &from.shards, &to.shards)
            .await?;
        for (room, _) in moved {
            let shard = self.store.shard_of(&room).await?;
            let changes = self
                .store
                .state_changes(&room, from.shard(shard), to.shard(shard))
                .await?;
            for e in changes
                .iter()
                .filter(|e| e.pdu.kind.to_string() == "m.room.member")
            {
                let Some(target) = e.pdu.state_key.as_deref() else {
                    continue;
                };
                let into = match e.pdu.membership_state() {
                    Some(MembershipState::Join) => &mut moves.joined,
                    Some(MembershipState::Leave | MembershipState::Ban) => &mut moves.left,
                    _ => continue,
                };
                if target == user.as_str() {
                    // The user's own join or leave: every member is news, or
                    // maybe no longer shared.
                    for m in self.main.room_members(&room, None).await? {
                        if membership_state(&m) == MembershipState::Join {
                            into.insert(m.user_id);
                        }
                    }
                } else {
                    into.insert(target.to_owned());
                }
            }
        }
        Ok(moves)
    }
}
