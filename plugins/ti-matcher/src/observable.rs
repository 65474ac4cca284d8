//! Observable types, value normalisation and IP networks.
//!
//! Indicators and observables go through the same normalisation, so a value
//! loaded from a feed and a value extracted from an alert compare as equal
//! strings: hashes, domains and e-mail addresses in lowercase, IP addresses
//! in their canonical text form, URLs only trimmed.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The observable types that Palisade plugins exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObservableType {
    Ipv4,
    Ipv6,
    Domain,
    Url,
    Md5,
    Sha1,
    Sha256,
    Email,
}

impl ObservableType {
    pub const ALL: [ObservableType; 8] = [
        ObservableType::Ipv4,
        ObservableType::Ipv6,
        ObservableType::Domain,
        ObservableType::Url,
        ObservableType::Md5,
        ObservableType::Sha1,
        ObservableType::Sha256,
        ObservableType::Email,
    ];

    /// Returns the type's name as it appears in observables and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            ObservableType::Ipv4 => "ipv4",
            ObservableType::Ipv6 => "ipv6",
            ObservableType::Domain => "domain",
            ObservableType::Url => "url",
            ObservableType::Md5 => "md5",
            ObservableType::Sha1 => "sha1",
            ObservableType::Sha256 => "sha256",
            ObservableType::Email => "email",
        }
    }

    /// Parses a type name such as `sha256`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for ObservableType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An IPv4 or IPv6 network in CIDR form. The address is kept as a `u128` for
/// both families, and host bits below the prefix are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub family: ObservableType,
    address: u128,
    prefix: u8,
}

impl Network {
    fn new(family: ObservableType, address: u128, prefix: u8) -> Self {
        let width = family_width(family);
        let host_bits = u32::from(width - prefix);
        let mask = if host_bits >= 128 {
            0
        } else {
            u128::MAX << host_bits
        };
        Self {
            family,
            address: address & mask,
            prefix,
        }
    }

    /// Returns whether `address` (of the same family) lies inside the network.
    pub fn contains(&self, family: ObservableType, address: u128) -> bool {
        family == self.family && Network::new(family, address, self.prefix).address == self.address
    }
}

impl fmt::Display for Network {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            ObservableType::Ipv4 => {
                // The address was built from a `u32`, so it fits.
                let bits = u32::try_from(self.address).unwrap_or(u32::MAX);
                write!(formatter, "{}/{}", Ipv4Addr::from(bits), self.prefix)
            }
            _ => write!(
                formatter,
                "{}/{}",
                Ipv6Addr::from(self.address),
                self.prefix
            ),
        }
    }
}

/// A normalised indicator value: one exact value, or a network for IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndicatorValue {
    Exact(ObservableType, String),
    Network(Network),
}

impl fmt::Display for IndicatorValue {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndicatorValue::Exact(kind, value) => write!(formatter, "{kind} {value}"),
            IndicatorValue::Network(network) => {
                write!(formatter, "{} {network}", network.family)
            }
        }
    }
}

fn family_width(family: ObservableType) -> u8 {
    if family == ObservableType::Ipv4 {
        32
    } else {
        128
    }
}

/// Normalises `raw` as a value of type `kind`.
///
/// IP values may be written in CIDR form. A prefix shorter than the address
/// gives a network, and a full-length prefix gives the exact address.
///
/// # Errors
///
/// Returns a message naming the value when it is not a valid `kind`.
pub fn normalize(kind: ObservableType, raw: &str) -> Result<IndicatorValue, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(format!("empty {kind} value"));
    }
    match kind {
        ObservableType::Ipv4 | ObservableType::Ipv6 => normalize_ip(kind, trimmed),
        ObservableType::Domain => normalize_domain(trimmed).map(|value| exact(kind, value)),
        ObservableType::Url => normalize_url(trimmed).map(|value| exact(kind, value)),
        ObservableType::Email => normalize_email(trimmed).map(|value| exact(kind, value)),
        ObservableType::Md5 | ObservableType::Sha1 | ObservableType::Sha256 => {
            normalize_hash(kind, trimmed).map(|value| exact(kind, value))
        }
    }
}

fn exact(kind: ObservableType, value: String) -> IndicatorValue {
    IndicatorValue::Exact(kind, value)
}

/// Parses an IP address of family `kind` into its `u128` form.
pub fn parse_ip(kind: ObservableType, text: &str) -> Option<u128> {
    match kind {
        ObservableType::Ipv4 => text
            .parse::<Ipv4Addr>()
            .ok()
            .map(|address| u128::from(u32::from(address))),
        ObservableType::Ipv6 => text.parse::<Ipv6Addr>().ok().map(u128::from),
        _ => None,
    }
}

fn normalize_ip(kind: ObservableType, text: &str) -> Result<IndicatorValue, String> {
    let (address_text, prefix_text) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address = parse_ip(kind, address_text)
        .ok_or_else(|| format!("invalid {kind} address {address_text:?}"))?;

    let width = family_width(kind);
    let prefix = match prefix_text {
        None => width,
        Some(prefix) => prefix
            .parse::<u8>()
            .ok()
            .filter(|prefix| *prefix <= width)
            .ok_or_else(|| format!("invalid {kind} prefix length {prefix:?} in {text:?}"))?,
    };

    if prefix == width {
        let canonical = match kind {
            ObservableType::Ipv4 => {
                Ipv4Addr::from(u32::try_from(address).unwrap_or(u32::MAX)).to_string()
            }
            _ => Ipv6Addr::from(address).to_string(),
        };
        Ok(IndicatorValue::Exact(kind, canonical))
    } else {
        Ok(IndicatorValue::Network(Network::new(kind, address, prefix)))
    }
}

/// Parses a network key suffix such as `10.0.0.0/8`.
pub fn parse_network(kind: ObservableType, text: &str) -> Option<Network> {
    match normalize_ip(kind, text) {
        Ok(IndicatorValue::Network(network)) => Some(network),
        _ => None,
    }
}

fn normalize_domain(text: &str) -> Result<String, String> {
    let domain = text.strip_suffix('.').unwrap_or(text).to_lowercase();
    let labels_valid = domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    });
    if labels_valid && domain.len() <= 253 {
        Ok(domain)
    } else {
        Err(format!("invalid domain {text:?}"))
    }
}

fn normalize_url(text: &str) -> Result<String, String> {
    if text.chars().any(char::is_whitespace) {
        return Err(format!("invalid url {text:?}: it contains whitespace"));
    }
    Ok(text.to_string())
}

fn normalize_email(text: &str) -> Result<String, String> {
    match text.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.contains('@')
                && normalize_domain(domain).is_ok()
                && !local.chars().any(char::is_whitespace) =>
        {
            Ok(text.to_lowercase())
        }
        _ => Err(format!("invalid email address {text:?}")),
    }
}

fn normalize_hash(kind: ObservableType, text: &str) -> Result<String, String> {
    let length = match kind {
        ObservableType::Md5 => 32,
        ObservableType::Sha1 => 40,
        _ => 64,
    };
    if text.len() == length && text.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "invalid {kind} {text:?}: expected {length} hexadecimal digits"
        ))
    }
}

/// Guesses the type of a feed value that came without one.
///
/// Addresses and networks are tried first, then hashes by length, then URLs
/// (a `://` separator), e-mail addresses (an `@`) and last domains with at
/// least one dot and a letter in the top-level label. Text of only digits,
/// dots and `/` counts as IPv4, so that a malformed address is reported as
/// an invalid address rather than read as a domain.
pub fn infer_type(raw: &str) -> Option<ObservableType> {
    let text = raw.trim();
    let address = text.split_once('/').map_or(text, |(address, _)| address);
    let dotted_digits = text.contains('.')
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '/');
    if dotted_digits || address.parse::<Ipv4Addr>().is_ok() {
        return Some(ObservableType::Ipv4);
    }
    if address.parse::<Ipv6Addr>().is_ok() {
        return Some(ObservableType::Ipv6);
    }
    if text.chars().all(|c| c.is_ascii_hexdigit()) {
        return match text.len() {
            32 => Some(ObservableType::Md5),
            40 => Some(ObservableType::Sha1),
            64 => Some(ObservableType::Sha256),
            _ => None,
        };
    }
    if text.contains("://") {
        return Some(ObservableType::Url);
    }
    if text.contains('@') {
        return Some(ObservableType::Email);
    }
    let top_label_has_letter = text
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .is_some_and(|label| label.chars().any(char::is_alphabetic));
    if text.contains('.') && top_label_has_letter && normalize_domain(text).is_ok() {
        return Some(ObservableType::Domain);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_value(kind: ObservableType, raw: &str) -> String {
        match normalize(kind, raw) {
            Ok(IndicatorValue::Exact(_, value)) => value,
            other => panic!("{raw:?} as {kind} gave {other:?}"),
        }
    }

    #[test]
    fn hashes_are_lowercased_and_length_checked() {
        assert_eq!(
            exact_value(ObservableType::Md5, "ABCDEF0123456789ABCDEF0123456789"),
            "abcdef0123456789abcdef0123456789"
        );
        assert!(normalize(ObservableType::Sha1, "abcdef").is_err());
        assert!(normalize(ObservableType::Sha256, &"g".repeat(64)).is_err());
    }

    #[test]
    fn domains_drop_trailing_dot_and_case() {
        assert_eq!(
            exact_value(ObservableType::Domain, "Evil.Example.COM."),
            "evil.example.com"
        );
        assert!(normalize(ObservableType::Domain, "evil..com").is_err());
        assert!(normalize(ObservableType::Domain, "evil.com/path").is_err());
    }

    #[test]
    fn ipv6_is_canonicalised() {
        assert_eq!(
            exact_value(ObservableType::Ipv6, "2001:DB8:0:0::1"),
            "2001:db8::1"
        );
    }

    #[test]
    fn full_length_prefix_is_exact_address() {
        assert_eq!(
            exact_value(ObservableType::Ipv4, "192.0.2.7/32"),
            "192.0.2.7"
        );
    }

    #[test]
    fn cidr_gives_network_with_host_bits_cleared() {
        let Ok(IndicatorValue::Network(network)) = normalize(ObservableType::Ipv4, "10.1.2.3/8")
        else {
            panic!("10.1.2.3/8 is not a network");
        };
        assert_eq!(network.to_string(), "10.0.0.0/8");
        let inside = parse_ip(ObservableType::Ipv4, "10.200.0.1").unwrap();
        let outside = parse_ip(ObservableType::Ipv4, "11.0.0.1").unwrap();
        assert!(network.contains(ObservableType::Ipv4, inside));
        assert!(!network.contains(ObservableType::Ipv4, outside));
        assert!(!network.contains(ObservableType::Ipv6, inside));
    }

    #[test]
    fn zero_prefix_contains_every_address() {
        let network = parse_network(ObservableType::Ipv6, "::/0").unwrap();
        let address = parse_ip(ObservableType::Ipv6, "2001:db8::1").unwrap();
        assert!(network.contains(ObservableType::Ipv6, address));
    }

    #[test]
    fn ipv6_network_matches_inside_only() {
        let network = parse_network(ObservableType::Ipv6, "2001:db8::/32").unwrap();
        assert_eq!(network.to_string(), "2001:db8::/32");
        let inside = parse_ip(ObservableType::Ipv6, "2001:db8:ffff::1").unwrap();
        let outside = parse_ip(ObservableType::Ipv6, "2001:db9::1").unwrap();
        assert!(network.contains(ObservableType::Ipv6, inside));
        assert!(!network.contains(ObservableType::Ipv6, outside));
    }

    #[test]
    fn invalid_prefix_is_rejected() {
        assert!(normalize(ObservableType::Ipv4, "10.0.0.0/33").is_err());
        assert!(normalize(ObservableType::Ipv4, "10.0.0.0/x").is_err());
        assert!(normalize(ObservableType::Ipv4, "10.0.0/8").is_err());
    }

    #[test]
    fn email_is_lowercased_and_checked() {
        assert_eq!(
            exact_value(ObservableType::Email, "Bad.Actor@Example.ORG"),
            "bad.actor@example.org"
        );
        assert!(normalize(ObservableType::Email, "no-at-sign").is_err());
        assert!(normalize(ObservableType::Email, "a@b@c.org").is_err());
    }

    #[test]
    fn type_inference_covers_every_type() {
        let cases = [
            ("192.0.2.1", Some(ObservableType::Ipv4)),
            ("10.0.0.0/8", Some(ObservableType::Ipv4)),
            ("2001:db8::1", Some(ObservableType::Ipv6)),
            (
                "d41d8cd98f00b204e9800998ecf8427e",
                Some(ObservableType::Md5),
            ),
            (
                "da39a3ee5e6b4b0d3255bfef95601890afd80709",
                Some(ObservableType::Sha1),
            ),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                Some(ObservableType::Sha256),
            ),
            ("http://evil.example/payload.exe", Some(ObservableType::Url)),
            ("phish@evil.example", Some(ObservableType::Email)),
            ("evil.example", Some(ObservableType::Domain)),
            ("192.0.2.300", Some(ObservableType::Ipv4)),
            ("abc123", None),
            ("host.123", None),
            ("not a value", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(infer_type(raw), expected, "inferred type of {raw:?}");
        }
    }
}
