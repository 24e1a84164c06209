//! Domain errors. Each variant corresponds to one Matrix `errcode`, so the HTTP
//! layer can map them without guessing.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    #[error("User ID already taken")]
    UserInUse,
    #[error("{0}")]
    InvalidUsername(String),
    #[error("{0}")]
    Exclusive(String),
    #[error("{0}")]
    UnknownDevice(String),
    #[error("Invalid access token")]
    UnknownToken { soft_logout: bool },
    #[error("Too many requests")]
    LimitExceeded { retry_after_ms: u64 },
    #[error("{0}")]
    TooLarge(String),
    #[error("Unsupported room version: {0}")]
    UnsupportedRoomVersion(String),
    #[error("Room alias already exists")]
    RoomInUse,
    /// A canonical alias that does not point to its room (M_BAD_ALIAS).
    #[error("{0}")]
    BadAlias(String),
    #[error("{0}")]
    InvalidRoomState(String),
    /// A third-party identifier this server will not bind (M_THREEPID_DENIED).
    #[error("{0}")]
    ThreepidDenied(String),
    /// No account has the third-party identifier (M_THREEPID_NOT_FOUND).
    #[error("{0}")]
    ThreepidNotFound(String),
    #[error("{0}")]
    Unrecognized(String),
    #[error("Registration is disabled")]
    RegistrationDisabled,
    #[error("{0}")]
    UserDeactivated(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unknown(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Key backup writes go to the newest version only.
    #[error("Wrong backup version: the current one is {current}")]
    WrongRoomKeysVersion { current: String },
    /// The (user, device, txn id) already named a committed event; the store
    /// refused the new one and the caller answers with the first.
    #[error("transaction already sent as {event_id}")]
    DuplicateTransaction { event_id: String },
    /// The event was built on one the store refused; the writer rebuilds it.
    #[error("event built on a refused event")]
    Superseded,
    /// Another process holds the room's writer lease (spec/cluster.md).
    #[error("the room is written by the process at {address}")]
    NotWriter { address: String },
    /// This process's writer lease on the room lapsed before the commit.
    #[error("the room's writer lease was lost")]
    LeaseLost,
    /// The process holding the room's writer lease did not answer.
    #[error("the room's writer cannot be reached: {0}")]
    WriterUnreachable(String),
    /// The room's writer process answered a forwarded request with an error.
    #[error("{message}")]
    Forwarded {
        status: u16,
        errcode: String,
        message: String,
    },
    /// A database failure other than the database being out of reach (that
    /// one is `Unavailable`, see `From<sqlx::Error>`).
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Error::Forbidden(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn bad_json(msg: impl Into<String>) -> Self {
        Error::BadJson(msg.into())
    }
    pub fn invalid_param(msg: impl Into<String>) -> Self {
        Error::InvalidParam(msg.into())
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }
}

impl From<sqlx::Error> for Error {
    /// A database that cannot be reached right now (stopped, restarting,
    /// network gone) answers 503 so clients retry, rather than 500 as if the
    /// request had hit a bug; in the sharded layout only the rooms on that
    /// database are affected.
    fn from(e: sqlx::Error) -> Self {
        if is_unreachable(&e) {
            tracing::warn!("database unavailable: {e}");
            Error::Unavailable(format!("database unavailable: {e}"))
        } else {
            Error::Database(e)
        }
    }
}

/// Whether `e` says the database is out of reach, as opposed to refusing or
/// failing this particular statement.
fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        // No connection came free before the pool's acquire timeout; with the
        // server gone, that is every reconnect attempt failing.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| unreachable_sqlstate(&code)),
        _ => false,
    }
}

/// Postgres SQLSTATEs of a server going away or not yet accepting connections:
/// class 08 (connection exception), 57P01 admin shutdown, 57P02 crash
/// shutdown, 57P03 cannot connect now. SQLite's codes are plain numbers and
/// never match.
fn unreachable_sqlstate(code: &str) -> bool {
    code.len() == 5 && (code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03"))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_unavailable_and_other_failures_are_not() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            assert!(matches!(Error::from(e), Error::Unavailable(_)));
        }
        assert!(matches!(
            Error::from(sqlx::Error::RowNotFound),
            Error::Database(_)
        ));
        for code in ["08006", "08001", "57P01", "57P02", "57P03"] {
            assert!(unreachable_sqlstate(code), "{code}");
        }
        // Unique violation, statement timeout, a SQLite busy code.
        for code in ["23505", "57014", "5"] {
            assert!(!unreachable_sqlstate(code), "{code}");
        }
    }
}
