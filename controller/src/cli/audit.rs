//! `infrapilot audit`: the record of every side effect, and proof that it was not altered.

use std::path::PathBuf;
use std::process::ExitCode;

use super::state::StateArgs;
use crate::audit::{AuditKey, AuditLog, ExportFormat, Filter};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List records, oldest first.
    List(ListArgs),
    /// Write records as JSON, CSV or CEF (for a SIEM).
    Export(ExportArgs),
    /// Check the hash chain; exits 1 and names the first bad record when the log was altered.
    Verify(KeyArgs),
}

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The audit log's HMAC key file [default: STATE_DIR/audit.key].
    #[arg(long, env = "INFRAPILOT_AUDIT_KEY", value_name = "FILE")]
    pub audit_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Only records at or after this time (RFC 3339, such as 2026-11-22T00:00:00Z).
    #[arg(long, env = "INFRAPILOT_AUDIT_SINCE")]
    pub since: Option<jiff::Timestamp>,
    /// Only records about objects of this kind (such as AlertChannel).
    #[arg(long, env = "INFRAPILOT_AUDIT_KIND")]
    pub kind: Option<String>,
    /// Only records about objects with this name.
    #[arg(long, env = "INFRAPILOT_AUDIT_NAME")]
    pub name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// json, csv or cef.
    #[arg(long, env = "INFRAPILOT_AUDIT_FORMAT", default_value = "json")]
    pub format: ExportFormat,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            since: self.since,
            kind: self.kind.clone(),
            name: self.name.clone(),
            limit: None,
        }
    }
}

async fn open(args: &KeyArgs) -> anyhow::Result<AuditLog> {
    let state = args.state.open_existing().await?;
    let key_path = args
        .audit_key
        .clone()
        .unwrap_or_else(|| args.state.state_dir.join("audit.key"));
    anyhow::ensure!(
        key_path.exists(),
        "the audit key {} does not exist",
        key_path.display()
    );
    AuditLog::open(state.pool(), AuditKey::load_or_create(&key_path)?).await
}

pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            Command::List(args) => {
                let log = open(&args.key).await?;
                let mut out = String::new();
                for r in log.list(&args.filter.filter()).await? {
                    let object = match &r.object.namespace {
                        Some(ns) => format!("{} {ns}/{}", r.object.kind, r.object.name),
                        None => format!("{} {}", r.object.kind, r.object.name),
                    };
                    out.push_str(&format!(
                        "{:>6}  {}  {:<8} {:<24} {:<40} {} -> {} ({})\n",
                        r.seq,
                        r.time,
                        r.outcome,
                        r.action,
                        object,
                        r.controller,
                        r.target,
                        r.detail
                    ));
                }
                super::write_stdout(&out)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Export(args) => {
                let log = open(&args.key).await?;
                let mut out = std::io::stdout().lock();
                match log
                    .export(&args.filter.filter(), args.format, &mut out)
                    .await
                {
                    Err(error) if !super::is_broken_pipe(&error) => Err(error),
                    _ => Ok(ExitCode::SUCCESS),
                }
            }
            Command::Verify(args) => {
                let log = open(args).await?;
                match log.verify().await {
                    Ok(count) => {
                        #[allow(clippy::print_stdout)]
                        {
                            println!("the audit log is intact: {count} records verified");
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(error) => {
                        eprintln!("{error}");
                        Ok(ExitCode::from(1))
                    }
                }
            }
        }
    })
}
