//! Grants an operator gives a plugin, and the checks made against them.
//!
//! A plugin gets nothing it was not granted: no origin, no secret, no
//! key-value namespace and no setting. Limits have conservative defaults so
//! an operator who grants nothing still gets a bounded plugin. Quotas are
//! off unless the grant lists rules.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::quota::{CheckedRule, InvalidQuota, QuotaRule, check_rules};

/// Resource limits applied to every call of one plugin.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum linear memory of the instance, in bytes.
    pub memory_bytes: usize,
    /// Time the guest may run during one call, in milliseconds. Time spent
    /// waiting for `http.send` is not counted; every other host call is.
    /// Enforced by epoch interruption, so the resolution is one epoch tick.
    /// NOTE: epochs follow the wall clock, so a call is also charged for
    /// time the OS runs other threads, and on an overloaded host a call can
    /// hit this limit while using far less CPU.
    pub cpu_ms: u64,
    /// Wall-clock time for the whole call, host imports included, in
    /// milliseconds.
    pub wall_ms: u64,
    /// Maximum size of the returned JSON document, in bytes.
    pub output_bytes: usize,
    /// Maximum bytes of log messages kept per call; the rest is dropped.
    pub log_bytes: usize,
    /// Maximum outbound HTTP requests per call.
    pub http_requests: u32,
    /// Maximum HTTP response body, in bytes.
    pub http_response_bytes: usize,
    /// Time for one HTTP request, in milliseconds.
    pub http_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            cpu_ms: 2_000,
            wall_ms: 10_000,
            output_bytes: 1 << 20,
            log_bytes: 16 << 10,
            http_requests: 16,
            http_response_bytes: 4 << 20,
            http_timeout_ms: 5_000,
        }
    }
}

impl Limits {
    pub fn wall_time(&self) -> Duration {
        Duration::from_millis(self.wall_ms)
    }
}

/// Binding of a granted secret to the origins it may be sent to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretGrant {
    pub name: String,
    /// Origins the secret may be sent to, in the same syntax as
    /// [`Grant::http_origins`].
    pub origins: Vec<String>,
}

/// The operator's grant to one plugin.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grant {
    /// Origins the plugin may call, such as `https://www.virustotal.com`,
    /// `http://127.0.0.1:8080` or `https://*.example.com`. A missing port
    /// means the scheme's default port.
    pub http_origins: Vec<String>,
    pub secrets: Vec<SecretGrant>,
    pub key_value: bool,
    /// Settings visible to the plugin through its `config` import.
    pub config: BTreeMap<String, String>,
    pub limits: Limits,
    /// API quotas on the plugin's outbound requests, shared by all its
    /// calls. Every rule that covers a request must admit it.
    pub quotas: Vec<QuotaRule>,
}

/// A parsed origin pattern: scheme, host (optionally `*.` wildcard) and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    host: HostPattern,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` matches `a.example.com` and `a.b.example.com`, not
    /// `example.com`.
    Subdomains(String),
}

/// A grant that cannot be enforced as written.
#[derive(Debug, thiserror::Error)]
pub enum InvalidGrant {
    #[error(transparent)]
    Origin(#[from] InvalidOrigin),
    #[error(transparent)]
    Quota(#[from] InvalidQuota),
}

/// An origin pattern that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid origin {origin:?}: {reason}; expected scheme://host[:port], such as https://api.example.com"
)]
pub struct InvalidOrigin {
    pub origin: String,
    pub reason: &'static str,
}

impl OriginPattern {
    pub fn parse(origin: &str) -> Result<Self, InvalidOrigin> {
        let invalid = |reason| InvalidOrigin {
            origin: origin.to_string(),
            reason,
        };
        let (scheme, rest) = origin
            .split_once("://")
            .ok_or_else(|| invalid("missing scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(invalid("scheme must be http or https")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(invalid("an origin has no path, query or user info"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| invalid("invalid port"))?;
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        let host = match host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                HostPattern::Subdomains(suffix.to_string())
            }
            _ if host.contains('*') => return Err(invalid("a wildcard may only lead the host")),
            _ => HostPattern::Exact(host),
        };
        Ok(Self {
            scheme,
            host,
            port: port.unwrap_or(default_port),
        })
    }

    /// Returns whether `url` is inside this origin.
    pub fn permits(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let host_matches = match &self.host {
            HostPattern::Exact(exact) => host == *exact,
            HostPattern::Subdomains(suffix) => is_subdomain(&host, suffix),
        };
        url.scheme() == self.scheme
            && host_matches
            && url.port_or_known_default() == Some(self.port)
    }

    /// Returns whether some URL is inside both this origin and `other`.
    pub fn overlaps(&self, other: &OriginPattern) -> bool {
        let hosts_overlap = match (&self.host, &other.host) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(host), HostPattern::Subdomains(suffix))
            | (HostPattern::Subdomains(suffix), HostPattern::Exact(host)) => {
                is_subdomain(host, suffix)
            }
            (HostPattern::Subdomains(a), HostPattern::Subdomains(b)) => {
                a == b || is_subdomain(a, b) || is_subdomain(b, a)
            }
        };
        self.scheme == other.scheme && self.port == other.port && hosts_overlap
    }
}

/// Returns whether `host` is a proper subdomain of `suffix`.
fn is_subdomain(host: &str, suffix: &str) -> bool {
    host.strip_suffix(suffix)
        .is_some_and(|label| label.ends_with('.') && label.len() > 1)
}

/// Writes the pattern in normal form: lowercase, with the port always
/// present, such as `https://*.example.com:443`.
impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            HostPattern::Exact(host) => host.clone(),
            HostPattern::Subdomains(suffix) => format!("*.{suffix}"),
        };
        write!(f, "{}://{host}:{}", self.scheme, self.port)
    }
}

/// Splits `host[:port]`, keeping bracketed IPv6 literals whole. Returns
/// `None` when the port is not a number.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((authority.get(..host.len() + 2)?, Some(port.parse().ok()?))),
            None if after.is_empty() => Some((authority, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// A grant with its origin patterns parsed, ready for checks on every call.
#[derive(Clone, Debug)]
pub struct Policy {
    pub grant: Grant,
    origins: Vec<OriginPattern>,
    secret_origins: BTreeMap<String, Vec<OriginPattern>>,
    quotas: Vec<CheckedRule>,
}

impl Policy {
    /// Parses and checks `grant`.
    ///
    /// # Errors
    ///
    /// Returns the first origin pattern that does not parse or the first
    /// quota setting that is invalid, by its path in the grant.
    pub fn new(grant: Grant) -> Result<Self, InvalidGrant> {
        let origins = parse_origins(&grant.http_origins)?;
        let mut secret_origins = BTreeMap::new();
        for secret in &grant.secrets {
            secret_origins.insert(secret.name.clone(), parse_origins(&secret.origins)?);
        }
        let quotas = check_rules(&grant.quotas, &origins)?;
        Ok(Self {
            grant,
            origins,
            secret_origins,
            quotas,
        })
    }

    /// Creates a policy that grants nothing, with default limits.
    pub fn deny_all() -> Self {
        Self {
            grant: Grant::default(),
            origins: Vec::new(),
            secret_origins: BTreeMap::new(),
            quotas: Vec::new(),
        }
    }

    pub(crate) fn quota_rules(&self) -> &[CheckedRule] {
        &self.quotas
    }

    pub fn limits(&self) -> &Limits {
        &self.grant.limits
    }

    pub fn permits_url(&self, url: &Url) -> bool {
        self.origins.iter().any(|origin| origin.permits(url))
    }

    /// Returns whether secret `name` may be sent to `url`.
    pub fn permits_secret(&self, name: &str, url: &Url) -> bool {
        self.secret_origins
            .get(name)
            .is_some_and(|origins| origins.iter().any(|origin| origin.permits(url)))
    }

    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.grant.config.get(key).map(String::as_str)
    }
}

fn parse_origins(origins: &[String]) -> Result<Vec<OriginPattern>, InvalidOrigin> {
    origins.iter().map(|o| OriginPattern::parse(o)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permits(pattern: &str, url: &str) -> bool {
        OriginPattern::parse(pattern)
            .unwrap()
            .permits(&Url::parse(url).unwrap())
    }

    #[test]
    fn origin_matches_scheme_host_and_port() {
        let cases = [
            (
                "https://www.virustotal.com",
                "https://www.virustotal.com/api/v3/files/x",
                true,
            ),
            (
                "https://www.virustotal.com",
                "http://www.virustotal.com/",
                false,
            ),
            (
                "https://www.virustotal.com",
                "https://www.virustotal.com:8443/",
                false,
            ),
            (
                "https://www.virustotal.com",
                "https://virustotal.com/",
                false,
            ),
            (
                "https://www.virustotal.com",
                "https://www.virustotal.com.evil.test/",
                false,
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/x", true),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8081/x", false),
            ("http://127.0.0.1:8080", "http://127.0.0.1/x", false),
            ("https://*.example.com", "https://a.example.com/", true),
            ("https://*.example.com", "https://a.b.example.com/", true),
            ("https://*.example.com", "https://example.com/", false),
            ("https://*.example.com", "https://badexample.com/", false),
            ("http://[::1]:9000", "http://[::1]:9000/", true),
        ];
        for (pattern, url, expected) in cases {
            assert_eq!(permits(pattern, url), expected, "{pattern} against {url}");
        }
    }

    #[test]
    fn invalid_origins_are_rejected() {
        for origin in [
            "www.virustotal.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://ex*ample.com",
            "https://example.com:notaport",
            "https://",
        ] {
            assert!(
                OriginPattern::parse(origin).is_err(),
                "{origin} was accepted"
            );
        }
    }

    #[test]
    fn secret_is_bound_to_its_origins() {
        let policy = Policy::new(Grant {
            http_origins: vec!["https://a.test".into(), "https://b.test".into()],
            secrets: vec![SecretGrant {
                name: "key".into(),
                origins: vec!["https://a.test".into()],
            }],
            ..Grant::default()
        })
        .unwrap();
        let a = Url::parse("https://a.test/x").unwrap();
        let b = Url::parse("https://b.test/x").unwrap();
        assert!(policy.permits_secret("key", &a));
        assert!(!policy.permits_secret("key", &b));
        assert!(!policy.permits_secret("other", &a));
    }

    #[test]
    fn origin_overlap() {
        let cases = [
            ("https://a.test", "https://a.test", true),
            ("https://a.test", "https://a.test:443", true),
            ("https://a.test", "http://a.test", false),
            ("https://a.test", "https://a.test:8443", false),
            ("https://a.test", "https://b.test", false),
            ("https://*.test", "https://a.test", true),
            ("https://*.test", "https://test", false),
            ("https://*.b.test", "https://*.test", true),
            ("https://*.test", "https://*.other", false),
        ];
        for (left, right, expected) in cases {
            let left_pattern = OriginPattern::parse(left).unwrap();
            let right_pattern = OriginPattern::parse(right).unwrap();
            assert_eq!(
                left_pattern.overlaps(&right_pattern),
                expected,
                "{left} and {right}"
            );
            assert_eq!(
                right_pattern.overlaps(&left_pattern),
                expected,
                "{right} and {left}"
            );
        }
    }

    #[test]
    fn origin_display_is_normal_form() {
        let cases = [
            (
                "HTTPS://WWW.VirusTotal.com/",
                "https://www.virustotal.com:443",
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://*.example.com", "https://*.example.com:443"),
        ];
        for (origin, expected) in cases {
            let pattern = OriginPattern::parse(origin).unwrap();
            assert_eq!(pattern.to_string(), expected, "{origin}");
        }
    }

    #[test]
    fn deny_all_permits_nothing() {
        let policy = Policy::deny_all();
        assert!(!policy.permits_url(&Url::parse("http://127.0.0.1/").unwrap()));
        assert!(policy.config_value("base_url").is_none());
    }
}
