//! Observables: the IPs, domains, URLs, hashes and addresses an alert names.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Kind of an observable. The serialised names are the ones plugins use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservableKind {
    Ipv4,
    Ipv6,
    Domain,
    Url,
    Md5,
    Sha1,
    Sha256,
    Email,
}

impl ObservableKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::Domain => "domain",
            Self::Url => "url",
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Email => "email",
        }
    }
}

impl fmt::Display for ObservableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One observable value, normalised (lowercase hashes and domains).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Observable {
    #[serde(rename = "type")]
    pub kind: ObservableKind,
    pub value: String,
    /// True for addresses and names inside the organisation (private,
    /// loopback and link-local ranges, local domains).
    #[serde(default)]
    pub internal: bool,
}

impl Observable {
    /// Builds an IP observable from text, or `None` when it is not an IP.
    pub fn ip(text: &str) -> Option<Self> {
        let ip: IpAddr = text.trim().parse().ok()?;
        let kind = match ip {
            IpAddr::V4(_) => ObservableKind::Ipv4,
            IpAddr::V6(_) => ObservableKind::Ipv6,
        };
        Some(Self {
            kind,
            value: ip.to_string(),
            internal: is_internal_ip(ip),
        })
    }

    /// Builds a hash observable from hex text, or `None` when the length is
    /// not that of an MD5, SHA-1 or SHA-256 digest.
    pub fn hash(text: &str) -> Option<Self> {
        let text = text.trim();
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let kind = match text.len() {
            32 => ObservableKind::Md5,
            40 => ObservableKind::Sha1,
            64 => ObservableKind::Sha256,
            _ => return None,
        };
        Some(Self {
            kind,
            value: text.to_ascii_lowercase(),
            internal: false,
        })
    }
}

/// Returns whether `ip` belongs to the organisation rather than the internet:
/// loopback, private (RFC 1918), link-local, CGNAT (100.64.0.0/10),
/// unique-local IPv6 (fc00::/7), unspecified, and IPv4-mapped forms of
/// these.
pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_internal_ip(IpAddr::V4(v4));
            }
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for ip in [
            "10.0.2.15",
            "192.168.86.85",
            "127.0.0.1",
            "169.254.169.254",
            "fd00::1",
        ] {
            assert!(
                Observable::ip(ip).unwrap().internal,
                "{ip} should be internal"
            );
        }
        for ip in ["175.16.199.1", "81.2.69.192", "2001:db8::1"] {
            assert!(
                !Observable::ip(ip).unwrap().internal,
                "{ip} should be external"
            );
        }
    }

    #[test]
    fn hash_kinds_by_length() {
        let md5 = Observable::hash("D41D8CD98F00B204E9800998ECF8427E").unwrap();
        assert_eq!(md5.kind, ObservableKind::Md5);
        assert_eq!(md5.value, "d41d8cd98f00b204e9800998ecf8427e");
        assert!(Observable::hash("abc").is_none());
        assert!(Observable::hash("zz1d8cd98f00b204e9800998ecf8427e").is_none());
    }
}
