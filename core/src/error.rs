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
    #[error("{0}")]
    InvalidRoomState(String),
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
    /// The (user, device, txn id) already named a committed event; the store
    /// refused the new one and the caller answers with the first.
    #[error("transaction already sent as {event_id}")]
    DuplicateTransaction { event_id: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
