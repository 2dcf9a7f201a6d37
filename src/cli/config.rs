//! The configuration a command reads: all of gateway.toml for `serve` and `check`, only
//! `[keys]` and `[log]` for the key commands.

use crate::cli::error::CliError;
use crate::config::{Config, KeyCommandsConfig};
use std::path::{Path, PathBuf};

/// `--config`, else ./gateway.toml if present, else built-in defaults (keys.json here).
pub fn load_config(path: Option<PathBuf>) -> Result<Config, CliError> {
    match path {
        Some(p) => Ok(Config::load(&p)?),
        None if Path::new("gateway.toml").exists() => Ok(Config::load(Path::new("gateway.toml"))?),
        None => Ok(Config::parse("", None)?),
    }
}

/// What `keygate keys …` reads, from the same file as `load_config`: only `[keys]` and
/// `[log]` are validated, and no upstream's `api_key_env` is needed.
pub fn load_key_config(path: Option<PathBuf>) -> Result<KeyCommandsConfig, CliError> {
    match path {
        Some(p) => Ok(KeyCommandsConfig::load(&p)?),
        None if Path::new("gateway.toml").exists() => {
            Ok(KeyCommandsConfig::load(Path::new("gateway.toml"))?)
        }
        None => Ok(KeyCommandsConfig::parse("", None)?),
    }
}
