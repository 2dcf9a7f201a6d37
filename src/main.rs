//! The `keygate` binary: parses arguments and hands over to the library (`keygate::cli`).
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a request allocates and frees many small blocks across
/// tasks, and with hundreds of connections glibc's free lists cost several percent of the CPU
/// (measured in benches/RESULTS.md). The only static in the binary; the library has none.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    keygate::cli::run(keygate::cli::Cli::parse())
}
