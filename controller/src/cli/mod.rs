//! The `infrapilot` command line: one clap definition, every option also settable from the
//! environment (`env =`), defaults documented in the help.

mod crd;
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
    /// Print the CustomResourceDefinitions, or write one file per kind.
    Crd(crd::Args),
    /// Check manifests offline, with the messages the operator gives.
    Validate(validate::Args),
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd(args) => crd::run(&args),
        Command::Validate(args) => validate::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
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
