//! Who is on the other end of a connection: the peer's address, whether it came over TLS,
//! and the client's address, which behind a trusted proxy is the one the proxy forwards
//! (`[server] trusted_proxies`), with its `x-forwarded-for` value formatted once.

use crate::config::TrustedProxies;
use crate::proxy::headers::X_FORWARDED_FOR;
use http::header::{self, HeaderMap, HeaderValue};
use std::net::{IpAddr, SocketAddr};

/// Connection facts the listener knows, and the client's address once a request's headers
/// are read.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub https: bool,
    /// The client's address: the peer's, or behind a trusted proxy the forwarded one.
    pub client: IpAddr,
    /// `client` as `x-forwarded-for` carries it: formatted once per connection (and again
    /// only for a request from behind a trusted proxy).
    pub forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr, https: bool) -> Peer {
        Peer {
            addr,
            https,
            client: addr.ip(),
            forwarded_for: forwarded_for(addr.ip()),
        }
    }

    /// Takes the client's address from a request's forwarding headers when the peer is a
    /// trusted proxy (see `client_addr`).
    pub fn resolve_client(&mut self, headers: &HeaderMap, trusted: &TrustedProxies) {
        let client = client_addr(self.addr.ip(), headers, trusted);
        if client != self.client {
            self.client = client;
            self.forwarded_for = forwarded_for(client);
        }
    }
}

fn forwarded_for(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client's address. It is the peer's, unless the peer is a trusted proxy: then it is
/// the right-most hop of the forwarding chain that is not itself a trusted proxy, from
/// `X-Forwarded-For` (all its lines, in order) or, when there is none, `Forwarded`'s `for=`.
/// Hops left of that one were written by the client and prove nothing. A hop that cannot be
/// read (`unknown`, an obfuscated name, garbage) ends the walk at the last trusted hop, and
/// so does a chain of trusted hops only: the address the gateway can vouch for.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut last = peer.to_canonical();
    // One hop, right to left: `Some` is the answer, `None` walks on.
    let walk = |hop: Option<IpAddr>, last: &mut IpAddr| match hop {
        Some(ip) if trusted.contains(ip) => {
            *last = ip.to_canonical();
            None
        }
        Some(ip) => Some(ip.to_canonical()),
        None => Some(*last),
    };
    let xff = headers.get_all(X_FORWARDED_FOR);
    if xff.iter().next().is_some() {
        for line in xff.iter().rev() {
            let Ok(line) = line.to_str() else {
                return last;
            };
            for hop in line.rsplit(',') {
                if let Some(ip) = walk(parse_hop(hop), &mut last) {
                    return ip;
                }
            }
        }
        return last;
    }
    for line in headers.get_all(header::FORWARDED).iter().rev() {
        let Ok(line) = line.to_str() else {
            return last;
        };
        for element in line.rsplit(',') {
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v)
            });
            if let Some(ip) = walk(node.and_then(parse_hop), &mut last) {
                return ip;
            }
        }
    }
    last
}

/// One hop: `203.0.113.7`, `203.0.113.7:4711`, `2001:db8::1`, `[2001:db8::1]:4711`, each
/// optionally quoted (`Forwarded`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let hop = hop
        .strip_prefix('"')
        .and_then(|h| h.strip_suffix('"'))
        .unwrap_or(hop);
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_address_behind_trusted_proxies() {
        let trusted = crate::config::Config::parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
            None,
        )
        .unwrap()
        .server
        .trusted_proxies;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let at = |peer: &str, pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, http::HeaderValue::from_static(v));
            }
            client_addr(ip(peer), &h, &trusted).to_string()
        };
        let xff = "x-forwarded-for";
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(at("203.0.113.9", &[(xff, "1.2.3.4")]), "203.0.113.9");
        // Trusted peer: the right-most untrusted hop; the client's own claims are ignored.
        assert_eq!(
            at("10.0.0.1", &[(xff, "6.6.6.6, 198.51.100.7")]),
            "198.51.100.7"
        );
        assert_eq!(
            at("10.0.0.1", &[(xff, "6.6.6.6, 198.51.100.7, 10.2.3.4")]),
            "198.51.100.7"
        );
        assert_eq!(
            at(
                "10.0.0.1",
                &[(xff, "6.6.6.6"), (xff, "198.51.100.7:5000, 10.2.3.4")]
            ),
            "198.51.100.7",
            "several lines are one list"
        );
        assert_eq!(at("10.0.0.1", &[(xff, "[2001:db8::5]:443")]), "2001:db8::5");
        assert_eq!(
            at("10.0.0.1", &[(xff, "6.6.6.6, unknown, 10.2.3.4")]),
            "10.2.3.4"
        );
        assert_eq!(at("10.0.0.1", &[(xff, "10.3.3.3, 10.2.3.4")]), "10.3.3.3");
        assert_eq!(at("10.0.0.1", &[]), "10.0.0.1");
        assert_eq!(
            at("::ffff:10.0.0.1", &[(xff, "198.51.100.7")]),
            "198.51.100.7"
        );
        let fwd = "forwarded";
        assert_eq!(
            at(
                "fd00::1",
                &[(
                    fwd,
                    "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=10.9.9.9"
                )]
            ),
            "2001:db8::7"
        );
        assert_eq!(
            at("10.0.0.1", &[(fwd, "for=_hidden, for=10.9.9.9")]),
            "10.9.9.9"
        );
        // X-Forwarded-For wins over Forwarded.
        assert_eq!(
            at("10.0.0.1", &[(fwd, "for=6.6.6.6"), (xff, "198.51.100.7")]),
            "198.51.100.7"
        );
    }
}
