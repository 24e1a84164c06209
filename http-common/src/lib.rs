//! The HTTP edge every Hearth API crate shares (client, federation,
//! application services): failures leave as Matrix errors, and request
//! bodies and access tokens are read the same way everywhere.

pub mod error;
pub mod extract;
