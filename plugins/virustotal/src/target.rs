//! What a report looks up: validated hashes, addresses, domains and URLs,
//! and the API paths and GUI links built from them.
//!
//! Every value ends up in a URL path, so validation also keeps `/`, `?`,
//! `#` and `..` out of the path. Hashes must be hexadecimal and IP
//! addresses must parse. Domains may only contain letters, digits, `-`, `_`
//! and dots, and URLs are base64-encoded.

use std::net::IpAddr;

/// Origin of the VirusTotal web interface, used for permalinks even when
/// the API base URL points elsewhere (a mirror or a test server).
const GUI_ORIGIN: &str = "https://www.virustotal.com/gui";

/// Something VirusTotal keeps a report on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A file hash. `kind` is `md5`, `sha1` or `sha256`.
    File {
        kind: &'static str,
        hash: String,
    },
    /// An IP address. `kind` is `ipv4` or `ipv6`.
    Ip {
        kind: &'static str,
        address: String,
    },
    Domain(String),
    Url(String),
}

impl Target {
    /// Parses a lowercase or uppercase MD5, SHA-1 or SHA-256 hex digest.
    pub fn file(raw: &str) -> Result<Self, String> {
        let hash = raw.trim().to_ascii_lowercase();
        let kind = match hash.len() {
            32 => "md5",
            40 => "sha1",
            64 => "sha256",
            _ => "",
        };
        if kind.is_empty() || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{raw:?} is not an MD5, SHA-1 or SHA-256 hash in hexadecimal"
            ));
        }
        Ok(Target::File { kind, hash })
    }

    /// Parses an IPv4 or IPv6 address and keeps its canonical text form.
    pub fn ip(raw: &str) -> Result<Self, String> {
        let address: IpAddr = raw
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?} is not an IPv4 or IPv6 address"))?;
        let kind = if address.is_ipv4() { "ipv4" } else { "ipv6" };
        Ok(Target::Ip {
            kind,
            address: address.to_string(),
        })
    }

    /// Parses an ASCII domain name. Internationalised names must be given
    /// in their punycode (`xn--`) form.
    pub fn domain(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        let domain = trimmed
            .strip_suffix('.')
            .unwrap_or(trimmed)
            .to_ascii_lowercase();
        let labels_valid = domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        if !labels_valid || domain.len() > 253 {
            return Err(format!(
                "{raw:?} is not a domain name (ASCII letters, digits, `-` and `_` in dot-separated labels; use punycode for other characters)"
            ));
        }
        Ok(Target::Domain(domain))
    }

    /// Accepts any URL without whitespace, because VirusTotal canonicalises
    /// URLs itself.
    pub fn url(raw: &str) -> Result<Self, String> {
        let url = raw.trim();
        if url.is_empty() || url.chars().any(char::is_whitespace) {
            return Err(format!("{raw:?} is not a URL"));
        }
        Ok(Target::Url(url.to_string()))
    }

    /// Returns the observable type of the value, such as `sha256`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::File { kind, .. } | Target::Ip { kind, .. } => kind,
            Target::Domain(_) => "domain",
            Target::Url(_) => "url",
        }
    }

    /// Returns the value as the caller gave it, normalised.
    pub fn value(&self) -> &str {
        match self {
            Target::File { hash: value, .. }
            | Target::Ip { address: value, .. }
            | Target::Domain(value)
            | Target::Url(value) => value,
        }
    }

    /// Returns the API path below the base URL, such as
    /// `/api/v3/ip_addresses/192.0.2.1`.
    pub fn api_path(&self) -> String {
        match self {
            Target::File { hash, .. } => format!("/api/v3/files/{hash}"),
            Target::Ip { address, .. } => format!("/api/v3/ip_addresses/{address}"),
            Target::Domain(domain) => format!("/api/v3/domains/{domain}"),
            Target::Url(url) => format!("/api/v3/urls/{}", url_id(url)),
        }
    }

    /// Returns the web-interface link for the object with `id`.
    pub fn permalink(&self, id: &str) -> String {
        let section = match self {
            Target::File { .. } => "file",
            Target::Ip { .. } => "ip-address",
            Target::Domain(_) => "domain",
            Target::Url(_) => "url",
        };
        format!("{GUI_ORIGIN}/{section}/{id}")
    }

    /// Returns the identifier to use when no response gave one: the value
    /// itself, or the URL identifier for URLs.
    ///
    /// NOTE: a found URL report links by its `data.id` (a SHA-256). Whether
    /// the web interface also opens `/gui/url/<base64 identifier>`, as used
    /// for unknown URLs, has not been checked.
    pub fn default_id(&self) -> String {
        match self {
            Target::Url(url) => url_id(url),
            other => other.value().to_string(),
        }
    }
}

/// Returns VirusTotal's URL identifier: the URL in URL-safe base64
/// (RFC 4648 section 5) without `=` padding.
pub fn url_id(url: &str) -> String {
    base64_url_unpadded(url.as_bytes())
}

fn base64_url_unpadded(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        // Pack up to three bytes into the top 24 bits of a group, then emit
        // one character per 6 bits that carry input.
        let group = chunk.iter().enumerate().fold(0u32, |group, (index, byte)| {
            group | u32::from(*byte) << (16 - 8 * index)
        });
        let characters = chunk.len() + 1;
        for position in 0..characters {
            let sextet = (group >> (18 - 6 * position)) & 0x3f;
            encoded.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        // Test vectors from RFC 4648 section 10, with the padding removed.
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(url_id(input), expected, "encoding of {input:?}");
        }
    }

    #[test]
    fn base64_uses_url_safe_alphabet() {
        assert_eq!(base64_url_unpadded(&[0xfb, 0xff, 0xbf]), "-_-_");
        assert_eq!(base64_url_unpadded(&[0xff]), "_w");
    }

    #[test]
    fn url_identifier_of_a_url() {
        assert_eq!(
            url_id("http://www.example.com/"),
            "aHR0cDovL3d3dy5leGFtcGxlLmNvbS8"
        );
        assert_eq!(
            Target::url("http://www.example.com/").unwrap().api_path(),
            "/api/v3/urls/aHR0cDovL3d3dy5leGFtcGxlLmNvbS8"
        );
    }

    #[test]
    fn hashes_are_typed_by_length() {
        let cases = [
            ("D41D8CD98F00B204E9800998ECF8427E", "md5"),
            ("da39a3ee5e6b4b0d3255bfef95601890afd80709", "sha1"),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "sha256",
            ),
        ];
        for (raw, kind) in cases {
            let target = Target::file(raw).unwrap();
            assert_eq!(target.kind(), kind, "kind of {raw}");
            assert_eq!(target.value(), raw.to_ascii_lowercase());
        }
        for raw in [
            "",
            "abc",
            &"z".repeat(32),
            "../../users/me/xxxxxxxxxxxxxxxxxxxxxx",
        ] {
            assert!(Target::file(raw).is_err(), "accepted {raw:?}");
        }
    }

    #[test]
    fn ip_addresses_are_canonical() {
        let v6 = Target::ip("2001:DB8:0::1").unwrap();
        assert_eq!((v6.kind(), v6.value()), ("ipv6", "2001:db8::1"));
        assert_eq!(v6.api_path(), "/api/v3/ip_addresses/2001:db8::1");
        let v4 = Target::ip(" 192.0.2.1 ").unwrap();
        assert_eq!((v4.kind(), v4.value()), ("ipv4", "192.0.2.1"));
        assert!(Target::ip("192.0.2.1/24").is_err());
        assert!(Target::ip("example.com").is_err());
    }

    #[test]
    fn domains_reject_path_characters() {
        let domain = Target::domain("Example.COM.").unwrap();
        assert_eq!(domain.value(), "example.com");
        assert_eq!(domain.api_path(), "/api/v3/domains/example.com");
        for raw in [
            "",
            "..",
            "a/../b",
            "evil.com?x=1",
            "evil.com#x",
            "bücher.de",
            "a b.com",
        ] {
            assert!(Target::domain(raw).is_err(), "accepted {raw:?}");
        }
    }

    #[test]
    fn urls_need_content_without_whitespace() {
        assert!(Target::url("  ").is_err());
        assert!(Target::url("http://a b/").is_err());
        assert_eq!(Target::url(" http://x/ ").unwrap().value(), "http://x/");
    }

    #[test]
    fn permalinks_per_kind() {
        let cases = [
            (Target::file(&"a".repeat(64)).unwrap(), "file"),
            (Target::ip("192.0.2.1").unwrap(), "ip-address"),
            (Target::domain("example.com").unwrap(), "domain"),
            (Target::url("http://x/").unwrap(), "url"),
        ];
        for (target, section) in cases {
            assert_eq!(
                target.permalink("ID"),
                format!("https://www.virustotal.com/gui/{section}/ID")
            );
        }
        assert_eq!(Target::url("f").unwrap().default_id(), "Zg");
        assert_eq!(
            Target::domain("example.com").unwrap().default_id(),
            "example.com"
        );
    }
}
