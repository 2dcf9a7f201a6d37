//! Reading `gateway.toml`: the text to raw structs (syntax and unknown keys), then to a
//! validated `Config` (`validate`).

use super::raw::RawConfig;
use super::validate::Validator;
use super::{is_blank, Config, ConfigError, KeyCommandsConfig};
use std::path::{Path, PathBuf};

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, Some(path))
    }

    /// Reads a file for a live reload: like `load`, but an empty file is refused.
    pub fn reload(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if is_blank(&text) {
            return Err(ConfigError::Empty {
                path: path.to_path_buf(),
            });
        }
        Config::parse(&text, Some(path))
    }

    /// Validates TOML text. Relative paths are resolved against `source`'s directory.
    pub fn parse(text: &str, source: Option<&Path>) -> Result<Config, ConfigError> {
        let (raw, path, base) = parse_raw(text, source)?;
        Validator { path: &path }.config(raw, &base, source)
    }
}

impl KeyCommandsConfig {
    /// Reads a file; see [`KeyCommandsConfig`] for what is checked.
    pub fn load(path: &Path) -> Result<KeyCommandsConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        KeyCommandsConfig::parse(&text, Some(path))
    }

    pub fn parse(text: &str, source: Option<&Path>) -> Result<KeyCommandsConfig, ConfigError> {
        let (raw, path, base) = parse_raw(text, source)?;
        let v = Validator { path: &path };
        let cluster = v.cluster(raw.cluster, &base)?;
        Ok(KeyCommandsConfig {
            keys: v.keys(raw.keys, &base, cluster.as_ref())?,
            log: v.log(raw.log, &base)?,
            usage: v.usage(raw.usage)?,
            cluster,
        })
    }
}

/// TOML text as the raw structs (syntax and unknown keys checked), with the name to use in
/// messages and the directory relative paths start from.
fn parse_raw(
    text: &str,
    source: Option<&Path>,
) -> Result<(RawConfig, PathBuf, PathBuf), ConfigError> {
    let path = source.map_or_else(|| PathBuf::from("gateway.toml"), Path::to_path_buf);
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: one_line(&e.to_string()),
    })?;
    let base = source
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok((raw, path, base))
}

/// toml's messages span several lines (a source excerpt); logs want one.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|" && !l.starts_with('|'))
        .collect::<Vec<_>>()
        .join(": ")
}
