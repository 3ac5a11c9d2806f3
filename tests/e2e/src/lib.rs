//! Helpers shared by InfraPilot's end-to-end tests.
//!
//! Every helper talks to the real thing: the Docker engine, the throwaway PostgreSQL server,
//! pebble, the SMTP sink and kmock's Kubernetes emulator that `tests/run.sh` provisions. They
//! find those through `INFRAPILOT_TEST_*` environment variables; a helper whose dependency is
//! missing fails the test with a message naming what is missing and how to get it, never skips.
//!
//! Everything a test creates is its own: uniquely named, labelled, and removed when the owning
//! value is dropped, including when the test panics.

pub mod alertmanager;
pub mod docker;
pub mod dumps;
pub mod edge;
pub mod env;
pub mod kmock;
pub mod mail;
pub mod names;
pub mod operator;
pub mod pebble;
pub mod postgres;
pub mod process;
pub mod wait;
pub mod webhook;

/// The result type of the helpers: test code wants context, not error matching.
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;
