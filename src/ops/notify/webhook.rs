//! One delivery attempt: a `POST` of the body to the webhook on a connection of its own
//! (HTTP/1.1, over rustls for `https`, trusting the Mozilla roots plus `[notify] ca_file`),
//! bounded by `[notify] timeout` from connect to the answer's head. Notifications are rare,
//! so no pool: hyper's client connection over the TLS configuration the upstreams use, no
//! further dependency.
//!
//! What the answer means: 2xx delivered; 408, 429 and 5xx, or no answer, retried (a
//! `Retry-After` honoured); any other status refused, not retried (a wrong URL or token does
//! not get better by asking again). A reason never holds the URL's path or the token.

use crate::config::notify::NotifyConfig;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Not to be retried: the receiver's status.
    Refused(StatusCode),
    /// To be retried: why it failed, and how long the receiver asked to wait.
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Posts `body` to the webhook of `cfg`.
pub async fn post(cfg: &NotifyConfig, body: Vec<u8>) -> Outcome {
    match tokio::time::timeout(cfg.timeout, exchange(cfg, body)).await {
        Err(_) => Outcome::Failed {
            reason: format!(
                "{} did not answer within {}",
                cfg.url.shown(),
                humantime::format_duration(cfg.timeout)
            ),
            retry_after: None,
        },
        Ok(Err(reason)) => Outcome::Failed {
            reason,
            retry_after: None,
        },
        Ok(Ok(resp)) => judge(cfg, resp.status(), resp.headers()),
    }
}

fn judge(cfg: &NotifyConfig, status: StatusCode, headers: &http::HeaderMap) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Outcome::Failed {
            reason: format!("{} answered {status}", cfg.url.shown()),
            retry_after: crate::limit::answer::read_retry_after(headers),
        }
    } else {
        Outcome::Refused(status)
    }
}

async fn exchange(
    cfg: &NotifyConfig,
    body: Vec<u8>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let url = &cfg.url;
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", url.shown()))?;
    let _ = tcp.set_nodelay(true);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(url.path.clone())
        .header(HOST, url.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("keygate/", env!("CARGO_PKG_VERSION"), " (notifications)"),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    if let Some(token) = &cfg.authorization {
        req.headers_mut().insert(AUTHORIZATION, token.clone());
    }
    match &cfg.tls {
        None => send(TokioIo::new(tcp), req, cfg).await,
        Some(tls) => {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| format!("{} is not a valid TLS server name", url.host))?;
            let stream = TlsConnector::from(std::sync::Arc::clone(tls))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", url.shown()))?;
            send(TokioIo::new(stream), req, cfg).await
        }
    }
}

/// The request on a fresh connection, driven here until the answer's head.
async fn send<T>(
    io: TokioIo<T>,
    req: Request<Full<Bytes>>,
    cfg: &NotifyConfig,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shown = cfg.url.shown();
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP with {shown}: {e}"))?;
    let mut conn = std::pin::pin!(conn);
    let mut answer = std::pin::pin!(sender.send_request(req));
    tokio::select! {
        answer = &mut answer => answer.map_err(|e| format!("HTTP with {shown}: {e}")),
        ended = &mut conn => {
            // A receiver that closes after its answer (`Connection: close`, HTTP/1.0) ends the
            // connection in the same breath: the answer, if one came, is waiting all the same
            // (a 2xx taken for a failure would be sent again, and again).
            answer.await.map_err(|_| match ended {
                Ok(()) => format!("{shown} closed the connection before answering"),
                Err(e) => format!("HTTP with {shown}: {e}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_decides_between_delivered_retried_and_refused() {
        let cfg = crate::config::Config::parse(
            "[notify]\nwebhook_url = \"http://hooks.test/T0/SECRET\"\n",
            None,
        )
        .unwrap()
        .notify
        .unwrap();
        let mut asked = http::HeaderMap::new();
        asked.insert("retry-after", http::HeaderValue::from_static("30"));
        let judged =
            |code: u16, h: &http::HeaderMap| judge(&cfg, StatusCode::from_u16(code).unwrap(), h);
        let none = http::HeaderMap::new();
        for code in [200, 201, 202, 204] {
            assert_eq!(judged(code, &none), Outcome::Delivered);
        }
        for code in [301, 302, 400, 401, 403, 404, 410, 413, 422] {
            assert_eq!(
                judged(code, &none),
                Outcome::Refused(StatusCode::from_u16(code).unwrap())
            );
        }
        for code in [408, 429, 500, 502, 503, 504] {
            let Outcome::Failed {
                reason,
                retry_after,
            } = judged(code, &asked)
            else {
                panic!("{code} is retried");
            };
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
            assert!(
                reason.contains(&code.to_string()) && !reason.contains("SECRET"),
                "{reason}"
            );
        }
    }
}
