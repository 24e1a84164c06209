//! Federation failures, and how they reach a caller.

use axum::http::StatusCode;
use hearth_core::Error;
use hearth_http_common::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum FedError {
    #[error("invalid server name {0:?}")]
    BadServerName(String),
    #[error("DNS: {0}")]
    Dns(String),
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    #[error("the server answered badly: {0}")]
    Remote(String),
    /// The remote server answered with a Matrix error.
    #[error("{server} answered {status} {errcode}: {message}")]
    Matrix {
        server: String,
        status: u16,
        errcode: String,
        message: String,
    },
    #[error("no valid signing keys for {0}")]
    NoKeys(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("federation configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Core(#[from] Error),
}

impl From<FedError> for Error {
    fn from(e: FedError) -> Self {
        match e {
            FedError::Core(e) => e,
            FedError::Matrix {
                status,
                errcode,
                message,
                ..
            } => Error::Forwarded {
                status,
                errcode,
                message,
            },
            FedError::BadServerName(_) => Error::InvalidParam(e.to_string()),
            other => Error::Unavailable(other.to_string()),
        }
    }
}

impl From<FedError> for ApiError {
    fn from(e: FedError) -> Self {
        match e {
            FedError::Unauthorized(msg) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", msg)
            }
            other => ApiError::from(Error::from(other)),
        }
    }
}
