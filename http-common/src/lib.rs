//! The HTTP edge every Hearth API crate shares (client, federation,
//! application services): failures leave as Matrix errors, and request
//! bodies and access tokens are read the same way everywhere; requests read
//! as ruma's request types and replies written from its response types.

pub mod error;
pub mod extract;
pub mod nul;
pub mod openid;
pub mod outgoing;
pub mod plain_errors;
pub mod typed;
