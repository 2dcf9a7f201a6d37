//! What a management request carries: its JSON body, read whole (64 KiB at most) and
//! refused by name where it holds a field the endpoint does not take, and its query string,
//! which only the list takes.

use crate::account::RequestRecord;
use crate::authorize::body::{is_compressed, is_json_object};
use crate::error::GatewayError;
use crate::keys::record::KeyLimits;
use crate::proxy::idle::client_left;
use crate::time::Timestamp;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

const MAX_ADMIN_BODY: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    pub name: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
    pub expires_in_days: Option<u32>,
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub limits: KeyLimits,
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub quotas: crate::keys::record::KeyQuotas,
}

/// The body of an endpoint that takes none: nothing, or `{}`. Anything else is refused by
/// name, as every other body's unknown fields are: `{"dry_run": true}` must not revoke.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoBody {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateBody {
    #[serde(default)]
    pub grace_seconds: u64,
}

/// The body as `T`: whole, uncompressed, a JSON object (`required`: not empty), with the
/// path of a field that does not fit in the error.
pub(super) async fn read_json<T: for<'de> Deserialize<'de> + Default>(
    req: Request<Incoming>,
    required: bool,
    record: &mut RequestRecord,
) -> Result<T, GatewayError> {
    if is_compressed(req.headers()) {
        return Err(GatewayError::InvalidRequest(
            "The request body is compressed (`Content-Encoding`); the management API takes uncompressed JSON.".into(),
        ));
    }
    // A declared length over the limit is refused before `100 Continue` invites the body.
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_ADMIN_BODY as u64) {
        return Err(GatewayError::TooLarge(MAX_ADMIN_BODY as u64));
    }
    let bytes = http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                GatewayError::TooLarge(MAX_ADMIN_BODY as u64)
            } else if client_left(&*e) {
                GatewayError::ClientGone
            } else {
                GatewayError::ClientBody(e.to_string())
            }
        })?
        .to_bytes();
    record.bytes_received = bytes.len() as u64;
    if bytes.iter().all(u8::is_ascii_whitespace) && !required {
        return Ok(T::default());
    }
    // serde would take an array as a struct's fields in order: only an object names fields.
    if !is_json_object(&bytes) {
        return Err(GatewayError::InvalidRequest(
            "The request body must be a JSON object.".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(GatewayError::json_body)?;
    de.end().map_err(|e| GatewayError::json_trailing(&e))?;
    Ok(value)
}

/// Refuses a query string on an endpoint that takes none, naming its first parameter.
pub(super) fn no_parameters(query: Option<&str>) -> Result<(), GatewayError> {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return Ok(());
    };
    let first = form_urlencoded::parse(q.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default();
    Err(GatewayError::InvalidParam {
        message: format!(
            "`{}` is not a parameter of this endpoint: it takes none.",
            crate::text::escape(&first)
        ),
        param: first,
    })
}
