//! Hop-by-hop header removal and the `X-Forwarded-*` headers the worker server trusts.

use std::cell::RefCell;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use ipnet::IpNet;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Peers whose own `X-Forwarded-*` headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses IPs and CIDRs (`10.0.0.0/8`, `127.0.0.1`, `::1`).
    pub fn parse(items: &[String]) -> Result<Self, String> {
        items
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("trusted proxy `{s}` is not an IP address or CIDR"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// True when `peer` is one of them.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|n| n.contains(&peer))
    }
}

/// `Keep-Alive` (not among `http`'s constants).
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection`, a pre-standard `Connection`.
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection only.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    *n == header::CONNECTION
        || *n == header::TE
        || *n == header::TRAILER
        || *n == header::TRANSFER_ENCODING
        || *n == header::UPGRADE
        || *n == header::PROXY_AUTHENTICATE
        || *n == header::PROXY_AUTHORIZATION
        || *n == KEEP_ALIVE
        || *n == PROXY_CONNECTION
}

/// The header names the `Connection` header lists (those it names are hop-by-hop too).
pub fn connection_named(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// Removes the headers that describe one connection only (RFC 9110 §7.6.1), including every
/// header the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most requests and responses carry none: one pass over the names instead of nine lookups.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    for n in connection_named(h) {
        h.remove(n);
    }
    for n in [
        &header::CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ] {
        h.remove(n);
    }
}

thread_local! {
    /// The last peer address and its text: most requests come from the address before them.
    static PEER_TEXT: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
}

/// `peer` as text (IPv4-mapped IPv6 addresses as IPv4), ready to be a header value.
pub fn peer_text(peer: IpAddr) -> HeaderValue {
    let peer = peer.to_canonical();
    PEER_TEXT.with_borrow_mut(|last| match last {
        Some((ip, text)) if *ip == peer => text.clone(),
        _ => {
            let text = HeaderValue::try_from(peer.to_string())
                .expect("an IP address is a valid header value");
            *last = Some((peer, text.clone()));
            text
        }
    })
}

/// Sets `X-Forwarded-For`/`-Proto`/`-Host`: replaced for an untrusted peer, extended (For) or kept
/// (Proto, Host) for a trusted one.
pub fn set_forwarded(
    h: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    scheme: &'static str,
    host: Option<&HeaderValue>,
) {
    let text = peer_text(peer);
    let xff = match trusted.then(|| joined(h, &X_FORWARDED_FOR)).flatten() {
        Some(prev) => {
            HeaderValue::try_from(format!("{prev}, {}", text.to_str().unwrap_or_default())).ok()
        }
        None => Some(text),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !(trusted && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    }
    if !(trusted && h.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(v) => h.insert(X_FORWARDED_HOST.clone(), v.clone()),
            None => h.remove(&X_FORWARDED_HOST),
        };
    }
}

fn joined(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = h
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn untrusted_peer_values_are_replaced() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        let host = HeaderValue::from_static("example.com");
        set_forwarded(
            &mut h,
            "10.1.2.3".parse().unwrap(),
            false,
            "http",
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn trusted_peer_values_are_extended() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        assert!(t.contains("10.9.9.9".parse().unwrap()));
        assert!(t.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        let mut h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, "10.1.2.3".parse().unwrap(), true, "http", None);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = headers(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
        for name in [
            "proxy-connection",
            "upgrade",
            "trailer",
            "proxy-authorization",
        ] {
            let mut h = headers(&[(name, "x"), ("x-keep", "1")]);
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}");
        }
    }

    #[test]
    fn peer_text_follows_the_address() {
        assert_eq!(peer_text("10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(peer_text("10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(peer_text("::ffff:10.0.0.2".parse().unwrap()), "10.0.0.2");
        assert_eq!(peer_text("::1".parse().unwrap()), "::1");
    }
}
