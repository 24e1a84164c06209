//! All cases, one module per area of the client-server API.

mod account_data;
mod accounts;
mod bad_input;
mod devices;
mod directory;
mod discovery;
mod e2ee;
mod ephemeral;
mod media;
mod membership;
mod messages;
mod profile;
mod rooms;
mod sync;

pub fn all() -> Vec<crate::Case> {
    [
        discovery::cases(),
        accounts::cases(),
        devices::cases(),
        profile::cases(),
        rooms::cases(),
        membership::cases(),
        messages::cases(),
        sync::cases(),
        ephemeral::cases(),
        account_data::cases(),
        media::cases(),
        directory::cases(),
        e2ee::cases(),
        bad_input::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
