//! The application service API (spec/appservices.md): registration files
//! loaded and checked at start-up (`registration.rs`), the client-API
//! endpoints only services use (`routes.rs`), and the calls Hearth makes to
//! the services (`client.rs`).

mod client;
pub mod registration;
mod routes;
mod thirdparty;
mod transactions;

pub use client::AsClient;
pub use registration::{RegistrationError, load_registrations};
pub use routes::router;
pub use transactions::start_senders;
