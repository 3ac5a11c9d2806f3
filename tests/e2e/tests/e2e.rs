//! InfraPilot's end-to-end tests, in one binary (see Cargo.toml), a module per area.
//!
//! Run them with `tests/run.sh` (README.md, "Tests"), which provisions the dependencies they
//! talk to. A test whose dependency is missing fails and says what is missing.

mod alert_rule;
mod audit;
mod backup;
mod backup_engine;
mod cli;
mod delivery;
mod docker_host;
mod install;
mod kubernetes;
mod proxy;
mod smoke;
mod standalone;
mod state;
