//! The `ecr-push` binary: parse, run, exit. Exit codes are documented in `--help` and README.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let env = ecr_push::env::Env::from_process();
    // `try_parse`, not `parse`: clap's own exit would skip the GitHub annotation.
    match ecr_push::cli::Cli::try_parse() {
        Ok(cli) => ecr_push::app::run(cli, &env),
        Err(error) => ecr_push::app::refused_command_line(&error, &env),
    }
}
