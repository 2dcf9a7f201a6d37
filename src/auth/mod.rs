//! Stage 2 of a request: who is calling.
//!
//! Order matters for cost and for safety: a URL that carries a key is refused before
//! anything else (`secrets::url_has_key`, at routing); then exactly one credential is taken
//! from the headers (`credential`), and refused if the URL or the request id holds it too;
//! its format and checksum are verified without touching the index; only then is it hashed
//! and looked up. An address over its failed-attempt allowance gets its bad keys refused with
//! 429 (a malformed one before any hashing) while its valid keys are still served: behind a
//! proxy, many clients can share one address.

pub mod credential;
pub mod secrets;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::keys::entry::Secret;
use crate::keys::index::{KeyIndex, KeyRef};
use crate::keys::token::Token;
use crate::limit::failed_auth::FailedAuthGuard;
use crate::server::peer::Peer;
use crate::time::Timestamp;
use credential::{credential, Credential};
use http::request::Parts;
use http::HeaderValue;
use secrets::{holds_secret, url_has_secret};
use std::net::IpAddr;
use std::sync::Arc;

/// An authenticated caller: what the upstream is told of its connection, and the credential it
/// presented, kept only so that no copy of it goes upstream or into an answer. Never logged.
pub struct Caller {
    /// The client's address as `x-forwarded-for` carries it (`Peer::forwarded_for`).
    pub forwarded_for: HeaderValue,
    /// The client reached the gateway over TLS.
    pub https: bool,
    credential: String,
}

impl Caller {
    pub fn credential(&self) -> &str {
        &self.credential
    }
}

/// The stage: the request's one credential (never also in its URL; a request id that holds
/// it is replaced), then its key.
pub fn authenticate(
    gw: &Gateway,
    index: &Arc<KeyIndex>,
    prefix: &str,
    req: &Parts,
    peer: &Peer,
    request_id: &mut HeaderValue,
    now: Timestamp,
) -> Result<(KeyRef, Caller), GatewayError> {
    let cred = credential(&req.headers)?.ok_or(GatewayError::MissingKey)?;
    if url_has_secret(req.uri.path(), req.uri.query(), cred.as_str()) {
        return Err(GatewayError::KeyInUrl);
    }
    if holds_secret(request_id.as_bytes(), cred.as_str()) {
        *request_id = gw.request_ids.next();
    }
    let key = find_key(index, &cred, prefix, peer.client, &gw.failed_auth, now)?;
    let caller = Caller {
        forwarded_for: peer.forwarded_for.clone(),
        https: peer.https,
        credential: cred.as_str().to_owned(),
    };
    Ok((key, caller))
}

/// Finds the key for a credential. Every failure that looks like guessing is counted
/// against the client's address; while the address is over its allowance those failures
/// are answered 429 and each one extends the block, but a valid key is served.
pub fn find_key(
    index: &Arc<KeyIndex>,
    cred: &Credential<'_>,
    prefix: &str,
    client: IpAddr,
    guard: &FailedAuthGuard,
    now: Timestamp,
) -> Result<KeyRef, GatewayError> {
    let blocked = guard.is_blocked(client);
    let failed = |e: GatewayError| match guard.record_failure(client) {
        Some(retry_after) if blocked => GatewayError::TooManyFailedAttempts { retry_after },
        _ => e,
    };
    // Format and checksum first: a malformed key costs no hashing, blocked or not.
    let token =
        Token::parse(cred.as_str(), prefix).map_err(|e| failed(GatewayError::MalformedKey(e)))?;
    let Some((entry, secret)) = index.lookup(&token.hash()) else {
        return Err(failed(GatewayError::InvalidKey("no such key")));
    };
    if entry.revoked_at.is_some_and(|t| t <= now) {
        return Err(GatewayError::RevokedKey);
    }
    if let Some(t) = entry.expires_at.filter(|t| *t <= now) {
        return Err(GatewayError::ExpiredKey(format!(
            "This API key expired at {t}."
        )));
    }
    if entry.disabled_at.is_some() {
        return Err(GatewayError::DisabledKey);
    }
    if let Secret::Retired { valid_until } = secret {
        if valid_until <= now {
            return Err(GatewayError::ExpiredKey(format!(
                "This API key was rotated; the old secret stopped working at {valid_until}. Use the new key."
            )));
        }
    }
    Ok(entry)
}
