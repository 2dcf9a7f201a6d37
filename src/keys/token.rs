//! The token format: `<prefix>_<secret><check>`.
//!
//! The checksum lets the gateway refuse a mistyped or made-up token without touching the key
//! index, and lets secret scanners recognise a leaked keygate key by shape alone. Only the
//! SHA-256 of the whole token is ever stored; the plaintext lives exactly as long as the
//! `Token` value that printed it.

use sha2::{Digest, Sha256};
use std::fmt;

/// Characters of the secret and of the checksum, in base62 digit order.
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Base62 characters of secret the gateway generates (32 × log2(62) ≈ 190.5 bits).
pub const SECRET_LEN: usize = 32;
/// Base62 characters of CRC32 (62^6 > 2^32).
pub const CHECK_LEN: usize = 6;
/// Length of a public key id's random part.
pub const ID_LEN: usize = 16;

/// SHA-256 of a whole token: what the key file stores and the index is keyed by.
pub type KeyHash = [u8; 32];

/// Why a presented string is not a well-formed token. The messages name the part that is
/// wrong and never repeat the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the key does not start with the expected prefix `{0}_`")]
    Prefix(String),
    #[error("the key is {got} characters after the prefix; at least {min} are expected")]
    Length { got: usize, min: usize },
    #[error("the key contains a character outside [0-9A-Za-z] at position {0}")]
    Alphabet(usize),
    #[error("the key's checksum does not match (mistyped or truncated key)")]
    Checksum,
}

/// A well-formed token whose checksum verified. Holds the plaintext: never log it.
pub struct Token<'a> {
    text: &'a str,
}

impl<'a> Token<'a> {
    /// Parses `text` as a token with `prefix`. Cheap: no allocation, no hashing.
    pub fn parse(text: &'a str, prefix: &str) -> Result<Self, ParseError> {
        let body = text
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('_'))
            .ok_or_else(|| ParseError::Prefix(prefix.to_string()))?;
        let min = SECRET_LEN + CHECK_LEN;
        if body.len() < min {
            return Err(ParseError::Length {
                got: body.len(),
                min,
            });
        }
        // Every byte checked with no early exit, which the compiler turns into a few
        // vector compares; the position is looked for only when one is wrong.
        if !body.bytes().fold(true, |ok, b| ok & is_base62(b)) {
            let pos = body.bytes().position(|b| !is_base62(b)).unwrap_or(0);
            return Err(ParseError::Alphabet(text.len() - body.len() + pos));
        }
        let (covered, check) = text.split_at(text.len() - CHECK_LEN);
        if encode_check(crc32fast::hash(covered.as_bytes())) != check.as_bytes() {
            return Err(ParseError::Checksum);
        }
        Ok(Token { text })
    }

    /// SHA-256 of the whole token.
    pub fn hash(&self) -> KeyHash {
        hash_token(self.text)
    }

    /// The last four characters, the only part lists ever show.
    pub fn last4(&self) -> &str {
        &self.text[self.text.len() - 4..]
    }
}

impl fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(…{})", self.last4())
    }
}

/// A freshly generated token. The only value in the program that owns a plaintext secret.
pub struct NewToken {
    pub plaintext: String,
    pub hash: KeyHash,
    pub last4: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewToken(…{})", self.last4)
    }
}

/// Generates a token from the OS CSPRNG.
pub fn generate(prefix: &str) -> Result<NewToken, getrandom::Error> {
    let mut text = String::with_capacity(prefix.len() + 1 + SECRET_LEN + CHECK_LEN);
    text.push_str(prefix);
    text.push('_');
    text.push_str(&random_base62(SECRET_LEN)?);
    let check = encode_check(crc32fast::hash(text.as_bytes()));
    text.extend(check.iter().map(|&b| b as char));
    let hash = hash_token(&text);
    let last4 = text[text.len() - 4..].to_string();
    Ok(NewToken {
        plaintext: text,
        hash,
        last4,
    })
}

/// A new public key id, `key_` + 16 base62.
pub fn generate_id() -> Result<String, getrandom::Error> {
    Ok(format!("key_{}", random_base62(ID_LEN)?))
}

/// True when `id` has the shape of a key id.
pub fn is_valid_id(id: &str) -> bool {
    id.strip_prefix("key_")
        .is_some_and(|r| r.len() == ID_LEN && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// SHA-256 of the token text.
pub fn hash_token(text: &str) -> KeyHash {
    Sha256::digest(text.as_bytes()).into()
}

/// `<prefix>_…<last4>`: how keys are shown everywhere after creation.
pub fn mask(prefix: &str, last4: &str) -> String {
    format!("{prefix}_…{last4}")
}

/// Uniform base62 characters by rejection sampling (bytes ≥ 248 are dropped, 248 = 4 × 62).
fn random_base62(n: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf)?;
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == n {
                break;
            }
            out.push(BASE62[(b % 62) as usize] as char);
        }
    }
    Ok(out)
}

/// `[0-9A-Za-z]`, without branches (`u8::is_ascii_alphanumeric` is a `match`, checked a
/// byte at a time).
#[inline]
fn is_base62(b: u8) -> bool {
    (b.wrapping_sub(b'0') < 10) | ((b | 0x20).wrapping_sub(b'a') < 26)
}

/// CRC32 as 6 base62 digits, most significant first, zero-padded.
fn encode_check(mut crc: u32) -> [u8; CHECK_LEN] {
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_hash_consistently() {
        let t = generate("sk_kg").unwrap();
        assert_eq!(t.plaintext.len(), "sk_kg_".len() + SECRET_LEN + CHECK_LEN);
        let parsed = Token::parse(&t.plaintext, "sk_kg").unwrap();
        assert_eq!(parsed.hash(), t.hash);
        assert_eq!(parsed.last4(), t.last4);
        assert!(format!("{parsed:?}").len() < 20);
    }

    #[test]
    fn each_part_has_its_own_error() {
        let t = generate("sk_kg").unwrap().plaintext;
        assert!(matches!(
            Token::parse(&t, "sk_other"),
            Err(ParseError::Prefix(_))
        ));
        assert!(matches!(
            Token::parse(&t[..20], "sk_kg"),
            Err(ParseError::Length { .. })
        ));
        let mut bad = t.clone();
        bad.replace_range(10..11, "-");
        assert_eq!(
            Token::parse(&bad, "sk_kg").unwrap_err(),
            ParseError::Alphabet(10)
        );
        let mut flipped = t.into_bytes();
        flipped[12] = if flipped[12] == b'a' { b'b' } else { b'a' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            Token::parse(&flipped, "sk_kg").unwrap_err(),
            ParseError::Checksum
        );
    }

    #[test]
    fn the_alphabet_is_exactly_base62() {
        for b in 0..=255u8 {
            assert_eq!(is_base62(b), b.is_ascii_alphanumeric(), "byte {b}");
        }
        // A wrong byte anywhere after the prefix is found, and named by its position.
        let t = generate("sk_kg").unwrap().plaintext;
        for pos in "sk_kg_".len()..t.len() {
            for bad in ["_", "-", "\u{e9}", " "] {
                let mut s = t.clone();
                s.replace_range(pos..pos + 1, bad);
                assert_eq!(
                    Token::parse(&s, "sk_kg").unwrap_err(),
                    ParseError::Alphabet(pos),
                    "{bad:?} at {pos}"
                );
            }
        }
    }

    #[test]
    fn check_is_zero_padded() {
        assert_eq!(&encode_check(0), b"000000");
        assert_eq!(&encode_check(61), b"00000z");
        assert_eq!(&encode_check(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn ids() {
        let id = generate_id().unwrap();
        assert!(is_valid_id(&id), "{id}");
        assert!(!is_valid_id("key_short"));
    }
}
