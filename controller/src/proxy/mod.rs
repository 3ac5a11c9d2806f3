//! Proxies: nginx in front of containers. The pure parts live here — the grammar user values
//! must pass and the configuration built from them; the edge container and Docker sit behind
//! the traits in [`crate::docker`].

pub mod acme;
pub mod certificate;
pub mod follow;
pub mod grammar;
pub mod site;
pub mod upstream;
