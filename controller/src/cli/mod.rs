//! The `infrapilot` command line: one clap definition, every option also settable from the
//! environment (`env =`), defaults documented in the help.

mod alerts;
mod audit;
mod crd;
mod describe;
mod get;
mod rbac;
mod run;
mod state;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// InfraPilot: reconciles nginx proxies, alerts, PostgreSQL tenants and backup validations
/// around your Docker hosts from declarative YAML.
#[derive(Debug, Parser)]
#[command(name = "infrapilot", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator. With --manifests: standalone mode, reconciling the YAML in those
    /// files and directories with state in a local database.
    Run(Box<run::Args>),
    /// Show objects and their status, like `kubectl get`.
    Get(get::Args),
    /// List every pending and firing alert across AlertRules, like `amtool alert`.
    Alerts(alerts::Args),
    /// Show one object in full: spec, status, conditions and recent events.
    Describe(describe::Args),
    /// Read, export and verify the audit log of side effects.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Print the CustomResourceDefinitions, or write one file per kind.
    Crd(crd::Args),
    /// Check manifests offline, with the messages the operator gives.
    Validate(validate::Args),
    /// Print the ClusterRole the operator needs: exactly the requests of its controllers.
    Rbac(rbac::Args),
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            init_logging();
            run::run(&args)
        }
        Command::Get(args) => get::run(&args),
        Command::Alerts(args) => alerts::run(&args),
        Command::Describe(args) => describe::run(&args),
        Command::Audit(command) => audit::run(&command),
        Command::Crd(args) => crd::run(&args),
        Command::Validate(args) => validate::run(&args),
        Command::Rbac(args) => rbac::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes a command's output. A reader that closed the pipe early (`infrapilot crd | head`)
/// has all it wanted: that is not an error.
pub(crate) fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Whether `error` comes from writing to a pipe whose reader has gone.
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_option_can_be_set_from_the_environment() {
        fn check(command: &clap::Command) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                assert!(
                    builtin || arg.is_positional() || arg.get_env().is_some(),
                    "--{} of `{}` has no env",
                    arg.get_id(),
                    command.get_name()
                );
            }
            command.get_subcommands().for_each(check);
        }
        check(&Cli::command());
    }
}
