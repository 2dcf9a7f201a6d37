//! The `keygate` binary: parses arguments and hands over to the library.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use keygate::cli::{self, CreateArgs, ListArgs};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "API-key gateway for OpenAI-compatible inference servers"
)]
struct Cli {
    /// Path to gateway.toml (default: ./gateway.toml, or built-in defaults if it does not exist).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Run the gateway with a built-in mock upstream and a demo key, for a first look.
    Demo {
        /// Listen here instead of the configured address (e.g. 127.0.0.1:0 for any free port).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate gateway.toml and the key file; exits non-zero with the reason.
    Check,
    /// Manage API keys in the key file.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run only the mock OpenAI-compatible upstream (for benchmarks and experiments).
    Mock {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; its plaintext is printed once.
    Create(CreateArgs),
    /// List keys (masked).
    List(ListArgs),
    /// Show one key (masked).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Give a key a new secret; the old one stops now or after --grace.
    Rotate {
        id: String,
        /// How long the old secret keeps working, e.g. 24h (default: it stops at once).
        #[arg(long)]
        grace: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once.
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let c = cli.config;
    let result = match cli.command {
        Command::Serve => keygate::run::serve(c),
        Command::Demo { listen } => keygate::run::demo(c, listen),
        Command::Check => cli::check(c),
        Command::Mock { listen } => keygate::run::mock(&listen),
        Command::Keys { command } => match command {
            KeysCommand::Create(a) => cli::create(c, a),
            KeysCommand::List(a) => cli::list(c, a),
            KeysCommand::Show { id, json } => cli::show(c, &id, json),
            KeysCommand::Rotate { id, grace, json } => cli::rotate(c, &id, grace.as_deref(), json),
            KeysCommand::Revoke { id, json } => cli::revoke(c, &id, json),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
