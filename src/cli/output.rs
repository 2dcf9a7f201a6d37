//! What commands print: aligned tables and JSON, with everything from the key file escaped
//! for the terminal (a hand-edited file is trusted but not checked for control characters).

use crate::keys::record::KeyRecord;
use crate::text::{self, Escaped};
use crate::time::{self, Timestamp};

/// JSON for a terminal: what serde_json leaves raw (DEL, C1 and bidi controls) escaped too.
pub fn print_json(v: &serde_json::Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    println!("{}", text::escape_json(&text));
}

pub fn announce_secret(action: &str, rec: &KeyRecord, plaintext: &str) {
    println!("{action} key {} ({})", rec.id, Escaped(&rec.name));
    println!();
    println!("    {plaintext}");
    println!();
    println!("This is the only time this key is shown. Store it now: keygate keeps only its hash.");
}

pub fn ago(now: Timestamp, t: Option<Timestamp>) -> String {
    match t {
        None => "never".into(),
        Some(t) => format!("{} ago", time::human_secs(t.until(now))),
    }
}

pub fn until(now: Timestamp, t: Timestamp) -> String {
    if t <= now {
        format!("{} ago", time::human_secs(t.until(now)))
    } else {
        format!("in {}", time::human_secs(now.until(t)))
    }
}

/// Prints rows as aligned columns. Every cell is escaped for the terminal: names and the
/// rest come from a key file, which may have been edited by hand.
pub fn print_table<const N: usize>(rows: &[[String; N]]) {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| text::escape(&c).into_owned()))
        .collect();
    let mut widths = [0usize; N];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
