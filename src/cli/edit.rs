//! `keygate keys update | disable | enable`: a key changed in place, audited with what
//! changed. A running gateway that watches the key file applies it at its next look (within
//! `[keys] poll_interval`, 1 s by default); one with `[keys] reload = false` once restarted.

use crate::cli::args::{
    duration_arg, globs, label_arg, time_arg, whole_arg, GlobList, GlobListParser, ScopeParser,
};
use crate::cli::config::load_key_config;
use crate::cli::error::CliError;
use crate::cli::keys::{audited, expiry, finish, flag_error, unwatched};
use crate::cli::output::{line, print_json, Did};
use crate::config::{KeyCommandsConfig, StoreMode};
use crate::keys::annotations::is_label_name;
use crate::keys::ops::{Action, Done, Op};
use crate::keys::patch::{Edit, KeyPatch, LabelsEdit, LimitsPatch, QuotasPatch};
use crate::ops::audit::AuditError;
use crate::text::Escaped;
use crate::time::Timestamp;
use clap::Args;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A limit or quota flag of `update`: a number, or `none` to remove it.
fn edit_arg<T: std::str::FromStr>(s: &str) -> Result<Edit<T>, String> {
    match s.trim() {
        "none" | "default" => Ok(Edit::Remove),
        _ => whole_arg(s)
            .map(Edit::Set)
            .map_err(|e| format!("{e} (or `none` to remove it)")),
    }
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The key's id (`key_…`, as `keygate keys list` shows it).
    #[arg(value_name = "ID", value_parser = crate::cli::args::key_id_arg)]
    pub id: String,
    /// New description ('' removes it).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Set a metadata label, e.g. team=search (repeat for more; other labels are kept).
    #[arg(long, value_name = "LABEL=VALUE", value_parser = label_arg)]
    pub meta: Vec<(String, String)>,
    /// Remove a metadata label (repeat for more).
    #[arg(long, value_name = "LABEL")]
    pub unset_meta: Vec<String>,
    /// Replace the scopes (comma-separated, as on create).
    #[arg(long, value_delimiter = ',', value_name = "SCOPE,…", value_parser = ScopeParser)]
    pub scopes: Option<Vec<String>>,
    /// Replace the model globs (comma-separated, a comma inside braces is the glob's, as
    /// in '{llama,mistral}-*'; '' allows every model).
    #[arg(long, value_name = "GLOB,…", value_parser = GlobListParser)]
    pub models: Option<Vec<GlobList>>,
    /// Expire this long from now, e.g. 30d (sets or extends the expiry).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, conflicts_with_all = ["expires_at", "no_expiry"], allow_hyphen_values = true)]
    pub expires_in: Option<Duration>,
    /// Expire at this time, RFC 3339, e.g. 2027-01-31T00:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = time_arg, conflicts_with = "no_expiry")]
    pub expires_at: Option<Timestamp>,
    /// Remove the expiry: the key never expires.
    #[arg(long)]
    pub no_expiry: bool,
    /// Requests per minute, at least 1, or `none` for [limits] requests_per_minute.
    #[arg(long, value_name = "N|none", value_parser = edit_arg::<u32>, allow_negative_numbers = true)]
    pub rpm: Option<Edit<u32>>,
    /// Burst size in requests, at least 1, or `none` for the default.
    #[arg(long, value_name = "N|none", value_parser = edit_arg::<u32>, allow_negative_numbers = true)]
    pub burst: Option<Edit<u32>>,
    /// Tokens per minute, at least 1, or `none` for [limits] tokens_per_minute.
    #[arg(long, value_name = "N|none", value_parser = edit_arg::<u64>, allow_negative_numbers = true)]
    pub tpm: Option<Edit<u64>>,
    /// Requests in flight at once, at least 1, or `none` for [limits] max_in_flight.
    #[arg(long, value_name = "N|none", value_parser = edit_arg::<u32>, allow_negative_numbers = true)]
    pub max_in_flight: Option<Edit<u32>>,
    /// Tokens a UTC day, at least 1, or `none` for no quota.
    #[arg(long, value_name = "N|none", value_parser = edit_arg::<u64>, allow_negative_numbers = true)]
    pub tokens_per_day: Option<Edit<u64>>,
    /// Tokens a UTC calendar month, at least 1, or `none` for no quota.
    #[arg(long, value_name = "N|none", value_parser = edit_arg::<u64>, allow_negative_numbers = true)]
    pub tokens_per_month: Option<Edit<u64>>,
    /// Requests a UTC day, at least 1, or `none` for no quota.
    #[arg(long, value_name = "N|none", value_parser = edit_arg::<u64>, allow_negative_numbers = true)]
    pub requests_per_day: Option<Edit<u64>>,
    /// Requests a UTC calendar month, at least 1, or `none` for no quota.
    #[arg(long, value_name = "N|none", value_parser = edit_arg::<u64>, allow_negative_numbers = true)]
    pub requests_per_month: Option<Edit<u64>>,
    /// Print the key as JSON instead of the changes.
    #[arg(long)]
    pub json: bool,
}

impl UpdateArgs {
    /// The edit the flags ask for (clap's "flag not given" is `Keep`).
    fn patch(self, now: Timestamp) -> Result<KeyPatch, CliError> {
        for k in &self.unset_meta {
            if !is_label_name(k) {
                return Err(CliError::Usage(format!(
                    "`--unset-meta` names `{}`, which is not a label name (1–63 of a-z, 0-9, `_`, `.`, `-`)",
                    Escaped(k)
                )));
            }
            if self.meta.iter().any(|(set, _)| set == k) {
                return Err(CliError::Usage(format!(
                    "`--meta` sets the label `{k}` that `--unset-meta` removes: give one of them"
                )));
            }
        }
        let expires_at = match (
            self.no_expiry,
            expiry(now, self.expires_in, self.expires_at)?,
        ) {
            (true, _) => Edit::Remove,
            (false, Some(at)) => Edit::Set(at),
            (false, None) => Edit::Keep,
        };
        let metadata = if self.meta.is_empty() && self.unset_meta.is_empty() {
            LabelsEdit::Keep
        } else {
            LabelsEdit::Merge {
                set: self.meta.into_iter().collect(),
                unset: self.unset_meta,
            }
        };
        let patch = KeyPatch {
            description: self.description.map_or(Edit::Keep, Edit::Set),
            metadata,
            scopes: self.scopes.map_or(Edit::Keep, Edit::Set),
            models: self.models.map_or(Edit::Keep, |m| {
                Edit::Set(
                    globs(m)
                        .into_iter()
                        .filter(|g| !g.trim().is_empty())
                        .collect(),
                )
            }),
            expires_at,
            limits: LimitsPatch {
                requests_per_minute: self.rpm.unwrap_or_default(),
                burst: self.burst.unwrap_or_default(),
                tokens_per_minute: self.tpm.unwrap_or_default(),
                max_in_flight: self.max_in_flight.unwrap_or_default(),
            },
            quotas: QuotasPatch {
                tokens_per_day: self.tokens_per_day.unwrap_or_default(),
                tokens_per_month: self.tokens_per_month.unwrap_or_default(),
                requests_per_day: self.requests_per_day.unwrap_or_default(),
                requests_per_month: self.requests_per_month.unwrap_or_default(),
            },
        };
        if patch == KeyPatch::default() {
            return Err(CliError::Usage(
                "nothing to update: give at least one of the flags `keygate keys update --help` lists"
                    .into(),
            ));
        }
        patch.check(now).map_err(flag_error)?;
        Ok(patch)
    }
}

pub fn update(config: Option<PathBuf>, a: UpdateArgs) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let now = Timestamp::now();
    let (id, json) = (a.id.clone(), a.json);
    let op = Op::Update {
        id,
        patch: a.patch(now)?,
    };
    let (done, recorded) = audited(&cfg, &op, now)?;
    report(&cfg, &done, json, now, recorded)
}

/// `disable` (`enable: false`) or `enable`.
pub fn set_enabled(
    config: Option<PathBuf>,
    id: &str,
    enable: bool,
    json: bool,
) -> Result<(), CliError> {
    let cfg = load_key_config(config)?;
    let now = Timestamp::now();
    let id = id.to_string();
    let op = match enable {
        true => Op::Enable { id },
        false => Op::Disable { id },
    };
    let (done, recorded) = audited(&cfg, &op, now)?;
    report(&cfg, &done, json, now, recorded)
}

/// What a change did: the key as JSON, or a line per changed field.
fn report(
    cfg: &KeyCommandsConfig,
    done: &Done,
    json: bool,
    now: Timestamp,
    recorded: Result<(), AuditError>,
) -> Result<(), CliError> {
    let did = Did::Change {
        what: format!("key {} was {}", done.record.id, done.action.as_str()),
        then: "the change stands; `keygate keys show` prints the key".into(),
    };
    finish(print_report(cfg, done, json, now), did, recorded)
}

fn print_report(
    cfg: &KeyCommandsConfig,
    done: &Done,
    json: bool,
    now: Timestamp,
) -> io::Result<()> {
    let prefix = &cfg.keys.prefix;
    let rec = &done.record;
    if json {
        return print_json(&rec.view(prefix, now, None));
    }
    let (id, name) = (&rec.id, Escaped(&rec.name));
    if !done.changed {
        let why = match done.action {
            Action::Disabled => "is already disabled",
            Action::Enabled => "is not disabled",
            _ => "already has these values",
        };
        return line(format_args!("Key {id} ({name}) {why}: nothing changed."));
    }
    line(format_args!("Key {id} ({name}) {}:", done.action.as_str()))?;
    for c in &done.changes {
        let text = format!("  {}: {} → {}", c.field, c.old, c.new);
        line(format_args!("{}", Escaped(&text)))?;
    }
    if let StoreMode::Redis(_) = cfg.keys.store {
        line(format_args!(
            "Every replica applies it from the shared store (within a second)."
        ))
    } else if let Some(no) = unwatched(&cfg.keys) {
        line(format_args!("{no}: restart them to apply it."))
    } else {
        line(format_args!("Running gateways apply it when they next look at the key file (within a second by default)."))
    }
}
