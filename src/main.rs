//! The `keygate` binary: parses arguments and hands over to the library (`keygate::cli`).
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    keygate::cli::run(keygate::cli::Cli::parse())
}
