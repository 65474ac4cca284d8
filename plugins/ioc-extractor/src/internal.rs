//! Decides which observables point inside the organisation.
//!
//! An internal observable is one that threat intelligence has no verdict
//! for, or that must not be sent out for a lookup: private and loopback
//! addresses, names that only resolve on a local network, and whatever the
//! caller lists as its own networks and domains.
//!
//! Built-in internal addresses (RFC 6890 blocks that are not globally
//! reachable unicast): 0.0.0.0/8, 10/8, 100.64/10 (CGNAT), 127/8,
//! 169.254/16 (including the cloud metadata address 169.254.169.254),
//! 172.16/12, 192.168/16, 224/4 multicast, 255.255.255.255, and for IPv6
//! `::`, `::1`, fc00::/7, fe80::/10, fec0::/10, ff00::/8 and the IPv4-mapped
//! forms of the IPv4 blocks. Documentation ranges (192.0.2.0/24,
//! 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are public on purpose:
//! they show up in tests and examples and an analyst should see them like
//! any other address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Name suffixes that only resolve on a local network.
const INTERNAL_SUFFIXES: &[&str] = &[
    "local",
    "internal",
    "lan",
    "localdomain",
    "home.arpa",
    "localhost",
];

/// A CIDR block such as `10.20.0.0/16` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `a.b.c.d/n`, `v6/n`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Option<Network> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address.parse().ok()?;
        let max_prefix = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse::<u8>().ok()?
            }
            Some(_) => return None,
            None => max_prefix,
        };
        if prefix > max_prefix {
            return None;
        }
        Some(Network { address, prefix })
    }

    fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => prefix_matches(
                network.to_bits().into(),
                address.to_bits().into(),
                32,
                self.prefix,
            ),
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                prefix_matches(network.to_bits(), address.to_bits(), 128, self.prefix)
            }
            (IpAddr::V4(_), IpAddr::V6(address)) => address
                .to_ipv4_mapped()
                .is_some_and(|mapped| self.contains(IpAddr::V4(mapped))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

/// Returns true when the first `prefix` of `width` bits agree.
fn prefix_matches(network: u128, address: u128, width: u32, prefix: u8) -> bool {
    let shift = width - u32::from(prefix);
    if shift >= width {
        return true;
    }
    (network >> shift) == (address >> shift)
}

/// The caller's own networks and domains, added to the built-in ones.
#[derive(Debug, Default)]
pub struct InternalScope {
    networks: Vec<Network>,
    /// Lowercase suffixes without leading or trailing dots.
    domains: Vec<String>,
}

impl InternalScope {
    pub fn new(networks: Vec<Network>, domains: Vec<String>) -> InternalScope {
        let domains = domains
            .into_iter()
            .map(|domain| domain.trim_matches('.').to_ascii_lowercase())
            .collect();
        InternalScope { networks, domains }
    }

    /// Returns true for a built-in internal range or a caller network.
    pub fn is_internal_ip(&self, address: IpAddr) -> bool {
        let built_in = match address {
            IpAddr::V4(v4) => is_internal_v4(v4),
            IpAddr::V6(v6) => is_internal_v6(v6),
        };
        built_in
            || self
                .networks
                .iter()
                .any(|network| network.contains(address))
    }

    /// Returns true for `localhost`, a local-only suffix or a caller domain.
    /// `name` must be lowercase.
    pub fn is_internal_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        INTERNAL_SUFFIXES
            .iter()
            .any(|suffix| has_suffix(name, suffix))
            || self.domains.iter().any(|suffix| has_suffix(name, suffix))
    }

    /// Returns true for a host that is an internal IP literal or name.
    pub fn is_internal_host(&self, host: &str) -> bool {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(address) => self.is_internal_ip(address),
            Err(_) => self.is_internal_name(host),
        }
    }

    /// Returns true when `name` ends with a suffix that makes an otherwise
    /// unknown TLD acceptable: a local-only suffix or a caller domain.
    pub fn accepts_unlisted_tld(&self, name: &str) -> bool {
        self.is_internal_name(name)
    }
}

/// Returns true when `name` is `suffix` or ends with `.suffix`.
fn has_suffix(name: &str, suffix: &str) -> bool {
    name == suffix
        || name
            .strip_suffix(suffix)
            .is_some_and(|head| head.ends_with('.'))
}

fn is_internal_v4(address: Ipv4Addr) -> bool {
    let [first, second, ..] = address.octets();
    address.is_private()
        || address.is_loopback()
        || address.is_link_local()
        || address.is_multicast()
        || address.is_broadcast()
        // 0.0.0.0/8: "this network", including the unspecified address.
        || first == 0
        // 100.64.0.0/10: carrier-grade NAT shared address space.
        || (first == 100 && (64..128).contains(&second))
}

fn is_internal_v6(address: Ipv6Addr) -> bool {
    if let Some(mapped) = address.to_ipv4_mapped() {
        return is_internal_v4(mapped);
    }
    let first = address.segments()[0];
    address.is_loopback()
        || address.is_unspecified()
        || address.is_multicast()
        // fc00::/7 unique local.
        || (first & 0xfe00) == 0xfc00
        // fe80::/10 link-local and the deprecated fec0::/10 site-local.
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn built_in_ranges_are_internal() {
        let scope = InternalScope::default();
        let internal = [
            "10.0.2.15",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.86.85",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "::",
            "::1",
            "fe80::fada:cff:fedc:87f1",
            "fd12:3456::1",
            "::ffff:10.1.2.3",
            "ff02::1:2",
            "224.0.0.251",
        ];
        for address in internal {
            assert!(scope.is_internal_ip(ip(address)), "{address}");
        }
    }

    #[test]
    fn public_and_documentation_ranges_are_external() {
        let scope = InternalScope::default();
        let external = [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.2.10",
            "198.51.100.7",
            "203.0.113.9",
            "2001:db8::1",
            "2603:10a6:10:2b0::10",
            "::ffff:8.8.8.8",
        ];
        for address in external {
            assert!(!scope.is_internal_ip(ip(address)), "{address}");
        }
    }

    #[test]
    fn caller_networks_extend_built_in_ranges() {
        let networks = ["81.2.69.0/24", "2001:db8:1::/48"]
            .iter()
            .map(|text| Network::parse(text).unwrap())
            .collect();
        let scope = InternalScope::new(networks, Vec::new());
        assert!(scope.is_internal_ip(ip("81.2.69.192")));
        assert!(scope.is_internal_ip(ip("::ffff:81.2.69.1")));
        assert!(scope.is_internal_ip(ip("2001:db8:1:2::5")));
        assert!(!scope.is_internal_ip(ip("81.2.70.1")));
        assert!(!scope.is_internal_ip(ip("2001:db8:2::5")));
    }

    #[test]
    fn network_parsing_rejects_bad_prefixes() {
        assert!(Network::parse("10.0.0.0/8").is_some());
        assert!(Network::parse("0.0.0.0/0").is_some());
        assert!(Network::parse("10.1.2.3").is_some());
        assert!(Network::parse("fd00::/8").is_some());
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "x/8",
            "1.2.3.4/+8",
        ] {
            assert!(Network::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn zero_prefix_contains_everything_of_its_family() {
        let scope = InternalScope::new(vec![Network::parse("0.0.0.0/0").unwrap()], Vec::new());
        assert!(scope.is_internal_ip(ip("8.8.8.8")));
        assert!(!scope.is_internal_ip(ip("2001:4860::8888")));
    }

    #[test]
    fn names_are_internal_by_suffix() {
        let scope = InternalScope::new(Vec::new(), vec![".Corp.Example".to_string()]);
        for name in [
            "localhost",
            "localhost.localdomain",
            "printer.local",
            "db.internal",
            "nas.lan",
            "router.home.arpa",
            "corp.example",
            "vpn.corp.example",
        ] {
            assert!(scope.is_internal_name(name), "{name}");
        }
        for name in [
            "example.com",
            "notcorp.example",
            "local.example.com",
            "lan.com",
        ] {
            assert!(!scope.is_internal_name(name), "{name}");
        }
    }

    #[test]
    fn hosts_can_be_literals_or_names() {
        let scope = InternalScope::default();
        assert!(scope.is_internal_host("[::1]"));
        assert!(scope.is_internal_host("192.168.1.1"));
        assert!(scope.is_internal_host("localhost"));
        assert!(!scope.is_internal_host("secure.eicar.org"));
    }
}
