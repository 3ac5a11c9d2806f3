//! `infrapilot run`: the operator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::state::StateArgs;
use crate::standalone::runtime::{self, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or directories to reconcile without a cluster (standalone mode). Every
    /// `*.yaml` / `*.yml` below a directory is read and watched for changes. Repeatable.
    #[arg(
        long = "manifests",
        required = true,
        env = "INFRAPILOT_MANIFESTS",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub manifests: Vec<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
    /// The audit log's HMAC key file, generated on first start [default: STATE_DIR/audit.key].
    #[arg(long, env = "INFRAPILOT_AUDIT_KEY", value_name = "FILE")]
    pub audit_key: Option<PathBuf>,
    /// How often every object is reconciled again even when nothing changed.
    #[arg(long, env = "INFRAPILOT_RESYNC", default_value = "10m", value_parser = parse_duration)]
    pub resync: Duration,
    /// How long one notification delivery may take.
    #[arg(long, env = "INFRAPILOT_DELIVERY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::api::common::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 30s, 10m or 1h"))
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let options = Options {
        manifests: args.manifests.clone(),
        state_url: args.state.url(),
        audit_key: args
            .audit_key
            .clone()
            .unwrap_or_else(|| args.state.state_dir.join("audit.key")),
        resync: args.resync,
        delivery_timeout: args.delivery_timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(runtime::run(options, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM (service managers, `docker stop`, Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
