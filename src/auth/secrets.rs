//! Keys where they must not be: in a URL (which ends up in logs and histories), and in any
//! client text an answer or a log line might repeat. The searches are cheap when there is
//! nothing to find: no allocation unless the text is percent-encoded.

use std::borrow::Cow;

/// Query parameters that would carry a key in a URL, which ends up in logs and histories.
const KEY_PARAMS: [&str; 6] = [
    "api_key",
    "api-key",
    "apikey",
    "key",
    "access_token",
    "token",
];

/// Base62 characters after `<prefix>_` from which a string is taken for a key (or a large
/// part of one): a whole key has 38.
const MIN_KEY_RUN: usize = 16;

/// Where `needle` occurs in `hay`. The texts searched on a request (ids, model names, paths,
/// error messages) are short: finding the needle's first byte with `memchr` and comparing
/// costs less than building a `memmem` searcher, which showed in the request path's profile.
/// An empty needle occurs nowhere.
pub fn occurrences<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let first = needle.first().copied();
    memchr::memchr_iter(first.unwrap_or(0), hay)
        .filter(move |&i| first.is_some() && hay[i..].starts_with(needle))
}

/// The shortest text `holds_key` can find a key in (percent-decoding only shortens a text):
/// shorter ones need no search.
pub fn shortest_key(prefix: &str) -> usize {
    prefix.len() + 1 + MIN_KEY_RUN
}

/// True when `text` holds something shaped like a key of this gateway: `<prefix>_` and a
/// run of at least 16 base62 characters.
pub fn looks_like_key(text: &[u8], prefix: &str) -> bool {
    let p = prefix.as_bytes();
    occurrences(text, p).any(|i| {
        let rest = &text[i + p.len()..];
        rest.first() == Some(&b'_')
            && rest[1..]
                .iter()
                .take(MIN_KEY_RUN)
                .take_while(|b| b.is_ascii_alphanumeric())
                .count()
                == MIN_KEY_RUN
    })
}

/// True when `text` contains the presented credential. Credentials under 8 characters are
/// not real keys and are not searched for (every short string would match).
pub fn contains_secret(text: &[u8], credential: &str) -> bool {
    credential.len() >= 8 && occurrences(text, credential.as_bytes()).next().is_some()
}

/// True when `text` contains the presented credential, as it is or percent-decoded (up to
/// three times, as `decoded`).
pub fn holds_secret(text: &[u8], credential: &str) -> bool {
    contains_secret(text, credential)
        || decoded_bytes(text).is_some_and(|d| contains_secret(&d, credential))
}

/// `text` percent-decoded up to three times (`%255F` is `_` to a client that decodes
/// twice), or `None` when it has no `%`. Only this case allocates.
fn decoded(text: &str) -> Option<Vec<u8>> {
    decoded_bytes(text.as_bytes())
}

/// As `decoded`, for bytes that need not be text (a header value with `é` or `\xff` in it).
fn decoded_bytes(text: &[u8]) -> Option<Vec<u8>> {
    memchr::memchr(b'%', text)?;
    let mut cur: Vec<u8> = percent_encoding::percent_decode(text).collect();
    for _ in 0..2 {
        match Cow::from(percent_encoding::percent_decode(&cur)) {
            Cow::Borrowed(_) => break,
            Cow::Owned(next) => cur = next,
        }
    }
    Some(cur)
}

/// True when `text` holds something shaped like a key, as it is or percent-decoded.
pub fn holds_key(text: &str, prefix: &str) -> bool {
    holds_key_bytes(text.as_bytes(), prefix)
}

/// As `holds_key`, for bytes that need not be text.
pub fn holds_key_bytes(text: &[u8], prefix: &str) -> bool {
    looks_like_key(text, prefix) || decoded_bytes(text).is_some_and(|d| looks_like_key(&d, prefix))
}

/// True when `text` names this gateway's key prefix followed by `_` (`sk_kg_`), as it is or
/// percent-decoded: what a log line must not repeat, even when too short to be a whole key
/// (a log redacts more than a request refuses).
pub fn mentions_key(text: &str, prefix: &str) -> bool {
    let marked = |t: &[u8]| {
        occurrences(t, prefix.as_bytes()).any(|i| t.get(i + prefix.len()) == Some(&b'_'))
    };
    marked(text.as_bytes()) || decoded(text).is_some_and(|d| marked(&d))
}

/// True when the path or query carries a key: a key-named parameter (`api_key=`, …) or
/// anything shaped like a key anywhere, percent-decoded, whatever the separators around it
/// (`?q=Bearer%20sk_kg_…`, `?a=1;q=sk_kg_…`, `?q=sk%5Fkg_…`). Without a `%` in the URL this
/// neither allocates nor decodes.
pub fn url_has_key(path: &str, query: Option<&str>, prefix: &str) -> bool {
    let query = query.unwrap_or_default();
    if holds_key(path, prefix) || holds_key(query, prefix) {
        return true;
    }
    !query.is_empty()
        && query.split(['&', ';']).any(|pair| {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            let name: Cow<[u8]> = match decoded(name) {
                Some(d) => Cow::Owned(d),
                None => Cow::Borrowed(name.as_bytes()),
            };
            KEY_PARAMS
                .iter()
                .any(|p| name.trim_ascii().eq_ignore_ascii_case(p.as_bytes()))
        })
}

/// True when the path or query contains the presented credential (as it is, or decoded):
/// a credential that is not key-shaped escapes `url_has_key`.
pub fn url_has_secret(path: &str, query: Option<&str>, credential: &str) -> bool {
    [path, query.unwrap_or_default()]
        .iter()
        .any(|part| holds_secret(part.as_bytes(), credential))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk_kg_0123456789ABCDEFabcdef0123456789XYZabc";

    #[test]
    fn occurrences_finds_every_match_overlapping_ones_too() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"aaaa", b"aa"),
            (b"/v1/sk_kg_x/sk_kg", b"sk_kg"),
            (b"abc", b"abcd"),
            (b"", b"a"),
            (b"xyz", b"z"),
            (b"zzz", b"zzz"),
            (b"a\0b\0", b"\0"),
        ];
        for (hay, needle) in cases {
            let want: Vec<usize> = (0..hay.len())
                .filter(|&i| hay[i..].starts_with(needle))
                .collect();
            assert_eq!(
                occurrences(hay, needle).collect::<Vec<_>>(),
                want,
                "{hay:?} {needle:?}"
            );
        }
        assert_eq!(
            occurrences(b"abc", b"").count(),
            0,
            "an empty needle occurs nowhere"
        );
    }

    #[test]
    fn key_in_url_refused_in_any_encoding() {
        let q = |query: &str| url_has_key("/v1/chat/completions", Some(query), "sk_kg");
        assert!(q("api_key=x"));
        assert!(q("API%5FKEY=x"));
        assert!(q("a=1;token=x"));
        assert!(q(&format!("q={KEY}")));
        assert!(q(&format!("q=Bearer%20{KEY}")));
        assert!(q(&format!("auth=x:{KEY}")));
        assert!(q(&format!("a=1;q={KEY}")));
        assert!(q(&format!("q={}", KEY.replacen('_', "%5F", 1))));
        assert!(q(&format!("q={}", KEY.replacen('_', "%5f", 2))));
        assert!(
            q(&format!("q={}", KEY.replacen('_', "%255F", 1))),
            "decoded twice"
        );
        assert!(q(&format!("q={}", KEY.replacen("01", "%30%31", 1))));
        assert!(url_has_key(&format!("/v1/models/{KEY}"), None, "sk_kg"));
        assert!(url_has_key(
            &format!("/v1/models/{}", KEY.replacen('_', "%5F", 1)),
            None,
            "sk_kg"
        ));
        // Not keys: short runs, other prefixes, ordinary queries.
        assert!(!q("limit=10&after=sk_kg_docs"));
        assert!(!q("q=pk_kg_0123456789ABCDEFabcdef"));
        assert!(!q("order=desc"));
        assert!(!url_has_key("/v1/models/llama-3.1-8b", None, "sk_kg"));
    }

    #[test]
    fn secrets_in_text() {
        assert!(contains_secret(b"req-sk_kg_secret-1", "sk_kg_secret"));
        assert!(!contains_secret(b"abc", "abc"), "too short to search for");
        assert!(url_has_secret(
            "/v1/models/hunter2hunter2",
            None,
            "hunter2hunter2"
        ));
        assert!(url_has_secret(
            "/v1/models/hunter2%68unter2",
            None,
            "hunter2hunter2"
        ));
        assert!(!url_has_secret(
            "/v1/models/llama",
            Some("a=b"),
            "hunter2hunter2"
        ));
    }
}
