//! Who is calling when no token says so: the client's IP address (an IPv6 one by its /64). It
//! keys the rate limit and the per-caller stream cap of anonymous callers (authentication off,
//! probes, a GraphQL WebSocket before `connection_init`), and the listener's per-client
//! connection cap, so that one client cannot spend everybody's budget.
//!
//! The address is the connection's peer (`ConnectInfo`, which the listener attaches to every
//! request). `X-Forwarded-For` is believed only when that peer is one of `auth.trusted_proxies`:
//! the client is then the right-most address of the header that is not itself a trusted proxy
//! (each proxy appends the address it got the request from, so everything left of the first
//! untrusted hop may have been written by the client). From any other peer the header is
//! ignored, so a client cannot pick its own bucket.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// `auth.trusted_proxies`, parsed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Block>);

/// An address block: the network address and the prefix length.
#[derive(Clone, Copy, Debug)]
struct Block(IpAddr, u8);

/// An entry of `auth.trusted_proxies` that is neither an IP address nor a CIDR block.
#[derive(Debug, thiserror::Error)]
#[error("auth.trusted_proxies: {0:?} is not an IP address or a CIDR block (like 10.0.0.0/8)")]
pub struct BadProxy(pub String);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<Self, BadProxy> {
        entries
            .iter()
            .map(|entry| Block::parse(entry.trim()).ok_or_else(|| BadProxy(entry.clone())))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|block| block.contains(ip))
    }

    /// The client behind a connection from `peer` that carried `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.contains(client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.into_iter().rev() {
            // A hop that does not parse was not written by a proxy we trust: stop at the last
            // address we can vouch for.
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

impl Block {
    fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse().ok()?, Some(prefix.parse::<u8>().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        // `::ffff:10.0.0.1` and `10.0.0.1` are one address (a dual-stack socket reports IPv4
        // peers in the first form).
        match (addr, canonical(addr)) {
            (IpAddr::V6(_), v4 @ IpAddr::V4(_)) if prefix >= 96 => Some(Block(v4, prefix - 96)),
            _ => Some(Block(addr, prefix)),
        }
    }

    fn contains(self, ip: IpAddr) -> bool {
        let Block(net, prefix) = self;
        match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The network one client owns, as the per-client limits count it: an IPv4 address (IPv4-mapped
/// IPv6 included) as itself, an IPv6 address by its /64, the smallest block a site is given (so a
/// client cannot take a fresh budget with every address of its own prefix).
pub fn network(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| hop.trim_matches(['[', ']']).parse::<IpAddr>())
        .ok()?;
    Some(canonical(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        TrustedProxies::parse(&entries).expect("valid")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().expect("header"));
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn blocks_match_by_prefix() {
        let trusted = proxies(&[
            "10.0.0.0/8",
            "192.168.1.7",
            "fd00::/8",
            "::ffff:172.16.0.0/108",
        ]);
        assert!(trusted.contains(ip("10.200.3.4")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(trusted.contains(ip("192.168.1.7")));
        assert!(!trusted.contains(ip("192.168.1.8")));
        assert!(trusted.contains(ip("fd12::1")));
        assert!(!trusted.contains(ip("fe80::1")));
        assert!(trusted.contains(ip("::ffff:10.0.0.1")), "mapped IPv4 peers");
        assert!(trusted.contains(ip("172.16.9.9")));
        assert!(!trusted.contains(ip("172.32.0.1")));
        assert!(proxies(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8", "::/129", ""] {
            assert!(TrustedProxies::parse(&[bad.to_owned()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_peers() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let spoofed = xff(&["6.6.6.6"]);
        assert_eq!(
            trusted.client(ip("203.0.113.9"), &spoofed),
            ip("203.0.113.9")
        );
        // The right-most untrusted hop, whatever the client wrote left of it.
        let chain = xff(&["6.6.6.6, 198.51.100.2", "10.1.1.1"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &chain), ip("198.51.100.2"));
        assert_eq!(
            trusted.client(ip("10.0.0.1"), &xff(&["[2001:db8::1]:4711"])),
            ip("2001:db8::1")
        );
        // Garbage where a proxy's hop should be: the last address we can vouch for.
        assert_eq!(
            trusted.client(ip("10.0.0.1"), &xff(&["1.2.3.4, bogus, 10.9.9.9"])),
            ip("10.9.9.9")
        );
        assert_eq!(
            trusted.client(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &xff(&["1.2.3.4"])),
            ip("10.0.0.1")
        );
    }
}
