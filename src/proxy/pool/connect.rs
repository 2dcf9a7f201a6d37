//! Making a new upstream connection: TCP with TCP_NODELAY, TLS when the URL says so, the
//! HTTP/1.1 handshake, all within the upstream's connect timeout.

use super::conn::{SendError, Transport, UpstreamConn};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where and how to connect.
pub(super) struct Connector {
    pub(super) host: String,
    pub(super) port: u16,
    /// The connector and the name the certificate must carry (`None`: not a valid TLS name,
    /// reported when a request tries to connect).
    tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
    timeout: Duration,
}

impl Connector {
    pub(super) fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Connector {
        // `[::1]` in a URL is `::1` to the resolver and to TLS.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let tls = tls.map(|config| {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone()).ok();
            (TlsConnector::from(Arc::new(config)), name)
        });
        Connector {
            host,
            port,
            tls,
            timeout,
        }
    }

    pub(super) async fn connect(&self) -> Result<Box<UpstreamConn>, SendError> {
        let addr = || format!("{}:{}", self.host, self.port);
        let tls = match &self.tls {
            None => None,
            Some((_, None)) => return Err(SendError::ServerName(self.host.clone())),
            Some((tls, Some(name))) => Some((tls, name)),
        };
        let io = tokio::time::timeout(self.timeout, async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, io::Error>(match tls {
                None => Transport::Plain(tcp),
                Some((tls, name)) => {
                    Transport::Tls(Box::new(tls.connect(name.clone(), tcp).await?))
                }
            })
        })
        .await
        .map_err(|_| SendError::ConnectTimeout(addr()))?
        .map_err(|source| SendError::Connect {
            addr: addr(),
            source,
        })?;
        let (sender, conn) = http1::Builder::new()
            // One buffer, one send(2) per request, as on the server side.
            .writev(false)
            .handshake(TokioIo::new(io))
            .await?;
        Ok(UpstreamConn::new(sender, conn))
    }
}
