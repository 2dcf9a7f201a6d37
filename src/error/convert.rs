//! Other errors as refusals: the key store's (the management API), a request body's (its
//! encoding, its stream, a JSON body's fields), and the one rule every refusal passes last:
//! no answer repeats a key.

use super::GatewayError;
use crate::auth::secrets::{contains_secret, holds_key};
use crate::authorize::body::BodyError;
use crate::keys::error::StoreError;
use crate::keys::reader::strip_position;
use crate::proxy::idle::{BodyTooLarge, ClientBodyError, ClientGone, IdleTimeout};

impl From<crate::keys::state::Ended> for GatewayError {
    fn from(why: crate::keys::state::Ended) -> GatewayError {
        match why {
            crate::keys::state::Ended::Revoked => GatewayError::RevokedKey,
            crate::keys::state::Ended::Disabled => GatewayError::DisabledKey,
        }
    }
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> GatewayError {
        match e {
            StoreError::ReadOnly { .. } => GatewayError::ReadOnlyKeyStore,
            StoreError::Unavailable(why) => GatewayError::KeyStoreUnavailable(why),
            StoreError::NotFound(id) => {
                GatewayError::NotFound(format!("No API key with id `{id}`."))
            }
            StoreError::Rejected(m) => GatewayError::InvalidRequest(m),
            e @ StoreError::Revoked { .. } => GatewayError::InvalidRequest(format!("The {e}.")),
            StoreError::Field(f) => GatewayError::InvalidParam {
                param: f.field.to_string(),
                message: format!("{f}."),
            },
            other => {
                tracing::error!(error = %other, "key store operation failed");
                GatewayError::Internal(
                    "The key store could not be updated; see the gateway log.".into(),
                )
            }
        }
    }
}

/// A body whose model cannot be checked: a refusal about one field names it in `param` (a
/// missing `model` as much as a second one), as OpenAI's errors do.
impl From<BodyError> for GatewayError {
    fn from(e: BodyError) -> GatewayError {
        let field = match &e {
            BodyError::Twice(field) | BodyError::SpelledLike { field, .. } => Some(*field),
            BodyError::NoModel | BodyError::ModelNotString => Some("model"),
            _ => None,
        };
        let message = sentence(&e);
        match field {
            Some(field) => GatewayError::InvalidParam {
                param: field.to_string(),
                message,
            },
            None => GatewayError::InvalidRequest(message),
        }
    }
}

/// A body error's message as the gateway's other messages are written: a sentence.
fn sentence(e: &BodyError) -> String {
    let text = e.to_string();
    let mut chars = text.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase());
    first.into_iter().chain(chars).chain(['.']).collect()
}

impl GatewayError {
    /// The refusal for a client body that failed on its way in, when `e` or one of its
    /// causes says so: too large (413), broken off or malformed, or stalled (400). `None`
    /// for any other failure (the upstream's).
    pub fn client_body(e: &(dyn std::error::Error + 'static)) -> Option<GatewayError> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(t) = err.downcast_ref::<BodyTooLarge>() {
                return Some(GatewayError::TooLarge(t.0));
            }
            if err.is::<ClientGone>() {
                return Some(GatewayError::ClientGone);
            }
            if let Some(c) = err.downcast_ref::<ClientBodyError>() {
                return Some(GatewayError::ClientBody(c.0.clone()));
            }
            if err.is::<IdleTimeout>() {
                return Some(GatewayError::BodyTimeout);
            }
            cur = err.source();
        }
        None
    }

    /// A JSON request body (the management API's) that does not deserialize, with the field
    /// it is about named in the message and in `param` (`limits.requests_per_minute`), or a
    /// plain 400 when it is not JSON at all.
    pub fn json_body(e: serde_path_to_error::Error<serde_json::Error>) -> GatewayError {
        let inner = e.inner();
        let message = strip_position(&inner.to_string());
        if inner.is_syntax() || inner.is_eof() {
            return GatewayError::InvalidRequest(format!(
                "Invalid request body: {message} at line {}, column {}.",
                inner.line(),
                inner.column()
            ));
        }
        let path = e.path().to_string();
        let at = |field: &str| match path.as_str() {
            "." => field.to_string(),
            p => format!("{p}.{field}"),
        };
        // serde names a missing or unknown field only in its message; the path is the object's.
        let named = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_once('`'))
                .map(|(field, rest)| (field.to_string(), rest.to_string()))
        };
        if let Some((field, _)) = named("missing field `") {
            let param = at(&field);
            return GatewayError::InvalidParam {
                message: format!("The request body lacks the required field `{param}`."),
                param,
            };
        }
        if let Some((field, _)) = named("duplicate field `") {
            let param = at(&field);
            return GatewayError::InvalidParam {
                message: format!("The field `{param}` appears twice in the request body."),
                param,
            };
        }
        if let Some((field, rest)) = named("unknown field `") {
            // Here the path already ends at the unknown field.
            let param = if path.ends_with(field.as_str()) {
                path.clone()
            } else {
                at(&field)
            };
            return GatewayError::InvalidParam {
                message: format!("Unknown field `{param}` in the request body{rest}."),
                param,
            };
        }
        if path == "." {
            return GatewayError::InvalidRequest(format!("Invalid request body: {message}."));
        }
        GatewayError::InvalidParam {
            message: format!("Invalid `{path}` in the request body: {message}."),
            param: path,
        }
    }

    /// Text after a JSON body's object.
    pub fn json_trailing(e: &serde_json::Error) -> GatewayError {
        GatewayError::InvalidRequest(format!(
            "Invalid request body: {} after the JSON object.",
            strip_position(&e.to_string())
        ))
    }

    /// This error, or, when its message would repeat client text holding a key (the
    /// presented one, or anything shaped like one: a model name, a path, a JSON parser's
    /// excerpt of the body), one that repeats nothing. Only errors that carry client text
    /// are searched, so the cheap refusals (429, 401) stay cheap.
    pub fn withholding_keys(self, prefix: &str, credential: Option<&str>) -> GatewayError {
        match self.client_text() {
            Some(t)
                if holds_key(t, prefix)
                    || credential.is_some_and(|c| contains_secret(t.as_bytes(), c)) =>
            {
                GatewayError::KeyElsewhere
            }
            _ => self,
        }
    }
}
