//! The command line: `serve`, `demo`, `check`, `keys …`, `usage`, `mock`, `completions`. Human output
//! on stdout (`output`), errors on stderr with exit status 1, or 2 for a usage error (`error`).

pub mod args;
pub mod check;
pub mod config;
pub mod demo;
pub mod edit;
pub mod error;
pub mod keys;
pub mod list;
pub mod output;
pub mod serve;
pub mod store;
pub mod usage;

use args::{duration_arg, key_id_arg, CreateArgs, ListArgs};
use clap::{CommandFactory, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const EXIT_STATUS: &str = "Exit status: 0 success; 1 the command failed (configuration, key file, \
                           disk, network); 2 usage error (an unknown flag or a bad value).";

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "API-key gateway for OpenAI-compatible inference servers",
    after_help = EXIT_STATUS
)]
pub struct Cli {
    /// Path to gateway.toml (default: ./gateway.toml, or built-in defaults if it does not exist).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve,
    /// Run the gateway with a built-in mock upstream and a demo key, for a first look.
    Demo {
        /// Listen here instead of the configured address (e.g. 127.0.0.1:0 for any free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Validate gateway.toml (including upstream credentials from the environment) and the
    /// key file; exits non-zero with the reason.
    Check,
    /// Manage API keys in the key file.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Usage over time (requests, tokens, errors, refusals) by key, model, day or hour, from
    /// the state file, or from Redis (every replica's) when [cluster] is set.
    Usage(usage::UsageArgs),
    /// Run only the mock OpenAI-compatible upstream (for benchmarks and experiments).
    Mock {
        /// The address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
    },
    /// Print a shell completion script, e.g. `keygate completions bash > ~/.local/share/bash-completion/completions/keygate`.
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; its plaintext is printed once.
    Create(Box<CreateArgs>),
    /// List keys (masked), filtered, as the key file is read.
    List(ListArgs),
    /// Show one key (masked), with its saved usage.
    Show {
        /// The key's id (`key_…`, as `keygate keys list` shows it).
        #[arg(value_name = "ID", value_parser = key_id_arg)]
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give a key a new secret; the old one stops now or after --grace.
    Rotate {
        /// The key's id (`key_…`, as `keygate keys list` shows it).
        #[arg(value_name = "ID", value_parser = key_id_arg)]
        id: String,
        /// How long the old secret keeps working, e.g. 24h (default: it stops at once); a
        /// secret retired earlier stops then too if it would have worked longer.
        #[arg(long, value_name = "DURATION", value_parser = duration_arg, allow_hyphen_values = true)]
        grace: Option<Duration>,
        /// Print the rotated key as JSON (with its new plaintext in `key`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a key's description, labels, scopes, models, expiry, limits or quotas (its
    /// name is fixed).
    Update(Box<edit::UpdateArgs>),
    /// Disable a key: refused (401 disabled_api_key) until enabled again.
    Disable {
        /// The key's id (`key_…`, as `keygate keys list` shows it).
        #[arg(value_name = "ID", value_parser = key_id_arg)]
        id: String,
        /// Print the key as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Enable a disabled key again.
    Enable {
        /// The key's id (`key_…`, as `keygate keys list` shows it).
        #[arg(value_name = "ID", value_parser = key_id_arg)]
        id: String,
        /// Print the key as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Redis key store: restore the store from a replica's snapshot (records the store
    /// lacks or holds older), give it a new epoch and allow writes again.
    Push {
        /// The snapshot to push (default: [keys] file, with its journal).
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
    /// Redis key store: write every record of the store to a key file (backup, GitOps).
    Pull {
        /// The key file to write (atomically; replaced if it exists), or `-` for stdout.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Revoke a key at once, with every secret it had (final: it cannot be enabled again).
    Revoke {
        /// The key's id (`key_…`, as `keygate keys list` shows it).
        #[arg(value_name = "ID", value_parser = key_id_arg)]
        id: String,
        /// Print the revoked key as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command `cli` names; its exit status.
/// clap's own answers (help, version, a mistake in what was typed), printed as clap prints
/// them; a failure to print is exit 1, as any command's output (clap would exit 0).
pub fn parse_failed(e: &clap::Error) -> ExitCode {
    let code = u8::try_from(e.exit_code()).unwrap_or(1);
    match output::written(e.print(), output::Did::Nothing) {
        Ok(()) => ExitCode::from(code),
        Err(err) => {
            output::say(format_args!("error: {err}"));
            ExitCode::from(err.exit_code())
        }
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let c = cli.config;
    let result = match cli.command {
        Command::Serve => serve::serve(c),
        Command::Demo { listen } => demo::demo(c, listen),
        Command::Check => check::check(c),
        Command::Usage(a) => usage::usage(c, a),
        Command::Mock { listen } => serve::mock(listen),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a write that fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "keygate", &mut script);
            let out = std::io::Write::write_all(&mut std::io::stdout().lock(), &script);
            output::written(out, output::Did::Nothing)
        }
        Command::Keys { command } => match command {
            KeysCommand::Create(a) => keys::create(c, *a),
            KeysCommand::List(a) => list::list(c, a),
            KeysCommand::Show { id, json } => keys::show(c, &id, json),
            KeysCommand::Rotate { id, grace, json } => keys::rotate(c, &id, grace, json),
            KeysCommand::Revoke { id, json } => keys::revoke(c, &id, json),
            KeysCommand::Push { from } => store::push(c, from),
            KeysCommand::Pull { out } => store::pull(c, &out),
            KeysCommand::Update(a) => edit::update(c, *a),
            KeysCommand::Disable { id, json } => edit::set_enabled(c, &id, false, json),
            KeysCommand::Enable { id, json } => edit::set_enabled(c, &id, true, json),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Messages can quote the key file (a hand-edited name or id): never raw.
            output::say(format_args!(
                "error: {}",
                crate::text::escape(&e.to_string())
            ));
            ExitCode::from(e.exit_code())
        }
    }
}
