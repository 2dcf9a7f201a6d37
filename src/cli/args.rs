//! Flags and arguments that need more than clap's derive: durations, times, labels, key ids,
//! scopes (with their descriptions for `--help` and completions), and the flags of `keys
//! create`/`list`.

use crate::keys::list::Statuses;
use crate::keys::scope::{Scope, Scopes};
use crate::text::Escaped;
use crate::time::{self, Timestamp};
use clap::builder::{PossibleValue, TypedValueParser};
use clap::Args;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name people recognise, e.g. the app or person using the key (no control characters
    /// or invisible formatting such as U+200B).
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes the key may use (default: inference, i.e. every scope but usage
    /// and admin). Aliases such as inference:read or analytics:read are accepted too.
    #[arg(long, value_delimiter = ',', value_name = "SCOPE,…", value_parser = ScopeParser)]
    pub scopes: Vec<String>,
    /// Comma-separated model globs the key may use, e.g. 'llama-*' or '{llama,mistral}-*'
    /// (a comma inside braces is the glob's; default: every model).
    #[arg(long, value_name = "GLOB,…", value_parser = GlobListParser)]
    pub models: Vec<GlobList>,
    /// Expire after this long, e.g. 90d, 24h, 30m, 1h30m (default: never).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, conflicts_with = "expires_at", allow_hyphen_values = true)]
    pub expires_in: Option<Duration>,
    /// Expire at this time, RFC 3339, e.g. 2027-01-31T00:00:00Z (default: never).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub expires_at: Option<Timestamp>,
    /// Free text for the people who manage keys (at most 1024 characters).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// A metadata label, e.g. team=search (repeat for more; names are 1–63 of a-z, 0-9, _ . -).
    #[arg(long, value_name = "LABEL=VALUE", value_parser = label_arg)]
    pub meta: Vec<(String, String)>,
    /// Requests per minute, at least 1 (default: [limits] requests_per_minute).
    #[arg(long, value_name = "N", value_parser = whole_arg::<u32>, allow_negative_numbers = true)]
    pub rpm: Option<u32>,
    /// Burst size in requests, at least 1 (default: the per-minute rate).
    #[arg(long, value_name = "N", value_parser = whole_arg::<u32>, allow_negative_numbers = true)]
    pub burst: Option<u32>,
    /// Tokens per minute, at least 1 (default: [limits] tokens_per_minute, unset: no limit).
    #[arg(long, value_name = "N", value_parser = whole_arg::<u64>, allow_negative_numbers = true)]
    pub tpm: Option<u64>,
    /// Requests in flight at once, at least 1 (default: [limits] max_in_flight).
    #[arg(long, value_name = "N", value_parser = whole_arg::<u32>, allow_negative_numbers = true)]
    pub max_in_flight: Option<u32>,
    /// Tokens a UTC day, at least 1 (default: no quota).
    #[arg(long, value_name = "N", value_parser = whole_arg::<u64>, allow_negative_numbers = true)]
    pub tokens_per_day: Option<u64>,
    /// Tokens a UTC calendar month, at least 1 (default: no quota).
    #[arg(long, value_name = "N", value_parser = whole_arg::<u64>, allow_negative_numbers = true)]
    pub tokens_per_month: Option<u64>,
    /// Requests a UTC day, at least 1 (default: no quota).
    #[arg(long, value_name = "N", value_parser = whole_arg::<u64>, allow_negative_numbers = true)]
    pub requests_per_day: Option<u64>,
    /// Requests a UTC calendar month, at least 1 (default: no quota).
    #[arg(long, value_name = "N", value_parser = whole_arg::<u64>, allow_negative_numbers = true)]
    pub requests_per_month: Option<u64>,
    /// Print the new key as JSON (with its plaintext in `key`) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print one JSON array (written as it is read) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only keys that expire within this long from now, e.g. 7d.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, allow_hyphen_values = true)]
    pub expiring_within: Option<Duration>,
    /// Include revoked keys (the same as --status all).
    #[arg(long, conflicts_with = "status")]
    pub all: bool,
    /// Only keys with these statuses, comma-separated: active, disabled, expired, revoked, all
    /// (default: every status but revoked).
    #[arg(long, value_name = "STATUS,…", value_parser = status_arg)]
    pub status: Option<Statuses>,
    /// Only keys whose name starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub name_prefix: Option<String>,
    /// Only keys with this label, e.g. --meta team=search (repeat it: each must match).
    #[arg(long, value_name = "NAME=VALUE", value_parser = meta_filter_arg)]
    pub meta: Vec<(String, String)>,
    /// Show at most this many keys, in file order; 0 shows every one.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = whole_arg::<usize>, allow_negative_numbers = true)]
    pub limit: usize,
}

/// `--status`: statuses as the key list's `status` parameter takes them.
pub fn status_arg(s: &str) -> Result<Statuses, String> {
    Statuses::parse(s)
}

/// `keys list --meta NAME=VALUE`: a label to filter by.
pub fn meta_filter_arg(s: &str) -> Result<(String, String), String> {
    crate::keys::list::parse_label(s, '=')
}

/// A duration flag: `90d`, `24h`, `30m`, `1h30m`. Its flag takes a value that starts with
/// `-`, so that `-1d` is refused here, naming the flag, rather than by clap as an unknown
/// argument `-1`.
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    match s.trim().strip_prefix('-') {
        Some(rest) if time::parse_duration(rest).is_ok() => Err(format!(
            "`{}` is negative: give a length of time, e.g. 90d",
            Escaped(s)
        )),
        _ => time::parse_duration(s),
    }
}

/// A count flag (`--rpm`, `--limit`): a whole number. Its flag takes negative numbers, so
/// that `-1` is refused here, naming the flag and saying why (clap's own would call it an
/// unknown argument, or an "invalid digit").
pub fn whole_arg<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    let n = s.trim();
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    n.parse().map_err(|_| {
        let what = if digits(n) {
            "is too large"
        } else if n.strip_prefix('-').is_some_and(digits) {
            "is negative"
        } else {
            "is not a whole number"
        };
        format!("`{}` {what}", Escaped(s))
    })
}

/// A time flag: RFC 3339 (`2027-01-31T00:00:00Z`).
pub fn time_arg(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse(s)
}

/// A metadata label flag: `name=value` (the name and value are checked with the key).
pub fn label_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) => Ok((k.trim().to_string(), v.to_string())),
        None => Err(format!(
            "`{}` is not LABEL=VALUE, e.g. team=search",
            Escaped(s)
        )),
    }
}

/// The globs of one `--models` value: split at the commas between globs, not at those
/// inside braces (`{llama,mistral}-*` is one glob, as in the key file and the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobList(pub Vec<String>);

/// `--models`: a comma-separated list of model globs (see [`GlobList`]). Its error names
/// the flag and shows the value escaped (clap's own would print it raw).
#[derive(Debug, Clone, Copy)]
pub struct GlobListParser;

impl TypedValueParser for GlobListParser {
    type Value = GlobList;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<GlobList, clap::Error> {
        let (flag, s) = flag_and_text(cmd, arg, value, "--models")?;
        crate::keys::models::split_list(s)
            .map(GlobList)
            .map_err(|e| {
                invalid(
                    cmd,
                    format!(
                        "`{flag}` {e} (in `{}`; a comma inside braces is part of a glob)",
                        Escaped(s)
                    ),
                )
            })
    }
}

/// The flag a value was given to (`fallback` when clap does not say) and the value as text.
fn flag_and_text<'v>(
    cmd: &clap::Command,
    arg: Option<&clap::Arg>,
    value: &'v std::ffi::OsStr,
    fallback: &str,
) -> Result<(String, &'v str), clap::Error> {
    let flag = arg
        .and_then(clap::Arg::get_long)
        .map_or_else(|| fallback.to_string(), |l| format!("--{l}"));
    let text = value
        .to_str()
        .ok_or_else(|| invalid(cmd, format!("`{flag}` must be UTF-8")))?;
    Ok((flag, text))
}

/// clap's error for an invalid value, with our own message.
fn invalid(cmd: &clap::Command, message: String) -> clap::Error {
    clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{message}\n")).with_cmd(cmd)
}

/// The globs of every `--models` given, in order.
pub fn globs(lists: Vec<GlobList>) -> Vec<String> {
    lists.into_iter().flat_map(|l| l.0).collect()
}

/// A key id argument: `key_` and 16 letters or digits.
pub fn key_id_arg(s: &str) -> Result<String, String> {
    if crate::keys::token::is_valid_id(s) {
        Ok(s.to_string())
    } else {
        Err("a key id is `key_` followed by 16 letters or digits (see `keygate keys list`)".into())
    }
}

/// `--scopes`: accepts what `Scopes::parse_one` accepts (names, `inference`, aliases) and
/// tells clap the canonical names with their descriptions, for `--help` and completions.
#[derive(Debug, Clone, Copy)]
pub struct ScopeParser;

impl TypedValueParser for ScopeParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let (flag, s) = flag_and_text(cmd, arg, value, "--scopes")?;
        Scopes::parse_one(s)
            .map(|_| s.trim().to_string())
            .map_err(|e| invalid(cmd, format!("`{flag}` {}", Escaped(&format!("has an {e}")))))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        let inference =
            PossibleValue::new("inference").help("every scope but usage and admin (the default)");
        Some(Box::new(
            Scope::ALL
                .iter()
                .map(|s| PossibleValue::new(s.name()).help(s.description()))
                .chain(std::iter::once(inference)),
        ))
    }
}
