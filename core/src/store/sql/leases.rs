//! Room writer leases (spec/cluster.md): which process may append to a room,
//! kept on the room's own database so the check that fences a commit runs in
//! the commit's transaction. Times are the database's clock, the one clock
//! every process agrees on.

/// Expands to the lease queries for `$db`; `$now_ms` is the dialect's
/// expression for the current unix time in ms, `$row_lock` what makes a read
/// hold the row until commit (empty where the database has one writer).
macro_rules! impl_room_leases {
    ($db:ty, $now_ms:literal, $row_lock:literal) => {
        use crate::{
            Result,
            store::{Fence, Lease},
        };

        impl crate::store::sql::SqlStore<$db> {
            /// Takes the room's lease for `holder` if it is free, expired or
            /// already theirs (renewing it); else says who holds it.
            pub(crate) async fn acquire_lease(
                &self,
                room_id: &str,
                holder: &str,
                address: &str,
                ttl_ms: i64,
            ) -> Result<Lease> {
                let epoch: Option<i64> = sqlx::query_scalar(concat!(
                    "INSERT INTO room_writers (room_id, holder, address, epoch, expires_at)
                     VALUES ($1, $2, $3, 1, ",
                    $now_ms,
                    " + $4)
                     ON CONFLICT (room_id) DO UPDATE SET
                       holder = excluded.holder, address = excluded.address,
                       epoch = CASE WHEN room_writers.holder = excluded.holder
                                    THEN room_writers.epoch ELSE room_writers.epoch + 1 END,
                       expires_at = excluded.expires_at
                     WHERE room_writers.holder = excluded.holder OR room_writers.expires_at < ",
                    $now_ms,
                    "
                     RETURNING epoch"
                ))
                .bind(room_id)
                .bind(holder)
                .bind(address)
                .bind(ttl_ms)
                .fetch_optional(&self.writer)
                .await?;
                if let Some(epoch) = epoch {
                    return Ok(Lease::Held { epoch });
                }
                let address: Option<String> =
                    sqlx::query_scalar("SELECT address FROM room_writers WHERE room_id = $1")
                        .bind(room_id)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(Lease::HeldBy {
                    address: address.unwrap_or_default(),
                })
            }

            /// Extends `holder`'s leases on these rooms; returns the rooms
            /// whose lease it still holds.
            pub(crate) async fn renew_leases(
                &self,
                room_ids: &[String],
                holder: &str,
                ttl_ms: i64,
            ) -> Result<Vec<String>> {
                if room_ids.is_empty() {
                    return Ok(vec![]);
                }
                let mut qb: sqlx::QueryBuilder<$db> = sqlx::QueryBuilder::new(concat!(
                    "UPDATE room_writers SET expires_at = ",
                    $now_ms,
                    " + "
                ));
                qb.push_bind(ttl_ms)
                    .push(concat!(" WHERE expires_at >= ", $now_ms, " AND holder = "))
                    .push_bind(holder)
                    .push(" AND room_id IN (");
                let mut sep = qb.separated(", ");
                for id in room_ids {
                    sep.push_bind(id);
                }
                qb.push(") RETURNING room_id");
                Ok(qb.build_query_scalar().fetch_all(&self.writer).await?)
            }
        }

        /// Whether `fence` still holds its room's lease; inside a commit's
        /// transaction, the row stays locked until the commit, so a taker
        /// waits for it (and then sees what it wrote).
        pub(crate) async fn fence_holds(
            conn: &mut <$db as sqlx::Database>::Connection,
            room_id: &str,
            fence: &Fence,
        ) -> Result<bool> {
            let held: Option<i64> = sqlx::query_scalar(concat!(
                "SELECT epoch FROM room_writers
                 WHERE room_id = $1 AND holder = $2 AND epoch = $3 AND expires_at > ",
                $now_ms,
                $row_lock
            ))
            .bind(room_id)
            .bind(fence.holder.as_ref())
            .bind(fence.epoch)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(held.is_some())
        }
    };
}
pub(crate) use impl_room_leases;
