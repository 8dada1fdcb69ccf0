//! The `ecr-push` binary: parse, run, exit. Exit codes are documented in `--help` and README.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = ecr_push::cli::Cli::parse();
    ecr_push::app::run(cli, &ecr_push::env::Env::from_process())
}
