//! The `keygate` binary: parses arguments and hands over to the library (`keygate::cli`).
#![forbid(unsafe_code)]

use clap::Parser as _;
use std::process::ExitCode;

// jemalloc, not glibc's malloc: see Cargo.toml. The one static the binary has, by the
// language's design.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match keygate::cli::Cli::try_parse() {
        Ok(cli) => keygate::cli::run(cli),
        Err(e) => keygate::cli::parse_failed(&e),
    }
}
