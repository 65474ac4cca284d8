//! Grants an operator gives a plugin, and the checks made against them.
//!
//! A plugin gets only what it requested in `describe` and the operator also
//! granted: no origin, no secret, no key-value namespace and no setting
//! outside both. A grant never widens a request, and [`Policy::ignored`]
//! lists the grant entries the plugin did not request. Limits have
//! conservative defaults so an operator who grants nothing still gets a
//! bounded plugin. Quotas are off unless the grant lists rules.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::Capabilities;
use crate::quota::{CheckedRule, InvalidQuota, QuotaRule, check_rules};

/// Prefix of a requested HTTP origin that names a configuration setting:
/// `config:KEY` means the origin of the operator's value for `KEY`.
pub const CONFIG_ORIGIN_PREFIX: &str = "config:";

/// Resource limits applied to every call of one plugin.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum linear memory of the instance, in bytes.
    pub memory_bytes: usize,
    /// Time the guest may run wasm code during one call, in milliseconds,
    /// counted in epoch ticks (the resolution is one tick). A tick counts
    /// only when it passes while the guest runs wasm, so waiting in a host
    /// call or being descheduled costs at most one tick.
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
    /// Maximum calls of the plugin that run at once. A call over the limit
    /// waits for a running call to finish, and the wait counts against its
    /// `wall_ms`, so a call that waits until that time passes fails as timed
    /// out. Must be at least 1.
    pub concurrent_calls: u32,
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
            concurrent_calls: 64,
        }
    }
}

impl Limits {
    pub fn wall_time(&self) -> Duration {
        Duration::from_millis(self.wall_ms)
    }

    /// Checks the limits that have no meaningful zero or other invalid
    /// value.
    ///
    /// # Errors
    ///
    /// Returns the first invalid limit, by its path in the grant.
    pub fn check(&self) -> Result<(), InvalidLimit> {
        if self.concurrent_calls == 0 {
            return Err(InvalidLimit {
                field: "limits.concurrent_calls",
                value: 0,
                reason: "a plugin must be allowed at least 1 call at a time",
            });
        }
        Ok(())
    }
}

/// A limit that cannot be enforced as written.
#[derive(Debug, thiserror::Error)]
#[error("invalid `{field}` = {value}: {reason}")]
pub struct InvalidLimit {
    /// Path of the setting in the grant, such as `limits.concurrent_calls`.
    pub field: &'static str,
    pub value: u64,
    pub reason: &'static str,
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
    #[error(transparent)]
    Limit(#[from] InvalidLimit),
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

impl OriginPattern {
    /// Returns whether every URL inside `other` is also inside this origin.
    pub fn covers(&self, other: &OriginPattern) -> bool {
        let host_covered = match (&self.host, &other.host) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Subdomains(suffix), HostPattern::Exact(host)) => {
                is_subdomain(host, suffix)
            }
            (HostPattern::Subdomains(a), HostPattern::Subdomains(b)) => {
                a == b || is_subdomain(b, a)
            }
            (HostPattern::Exact(_), HostPattern::Subdomains(_)) => false,
        };
        self.scheme == other.scheme && self.port == other.port && host_covered
    }

    /// Returns whether this origin names exactly the host of `url`, comparing
    /// IP addresses by value, so `http://[::1]:80` names `http://[::1]/`.
    fn names_host_of(&self, url: &Url) -> bool {
        let HostPattern::Exact(exact) = &self.host else {
            return false;
        };
        let (Some(host), Ok(named)) = (url.host(), url::Host::parse(exact)) else {
            return false;
        };
        named == host.to_owned()
    }

    /// Returns the origin of `value`, an absolute `http` or `https` URL such
    /// as `https://api.example.com/v3`. Path, query and user info are
    /// dropped.
    pub fn of_url(value: &str) -> Result<Self, InvalidOrigin> {
        let invalid = |reason| InvalidOrigin {
            origin: value.to_string(),
            reason,
        };
        let url = Url::parse(value).map_err(|_| invalid("not an absolute URL"))?;
        let host = url.host_str().ok_or_else(|| invalid("missing host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| invalid("scheme must be http or https"))?;
        let origin = Self::parse(&format!("{}://{host}:{port}", url.scheme()))?;
        if matches!(origin.host, HostPattern::Subdomains(_)) {
            return Err(invalid("a URL names one host, not a wildcard"));
        }
        Ok(origin)
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

/// A grant entry that the plugin did not request, so the policy ignores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IgnoredGrant {
    /// A granted origin pattern that no requested origin covers.
    HttpOrigin(String),
    Secret(String),
    KeyValue,
    /// A granted configuration setting, by key.
    Config(String),
}

impl IgnoredGrant {
    /// Name of the capability, as in the `capabilities` record.
    pub fn capability(&self) -> &'static str {
        match self {
            Self::HttpOrigin(_) => "http-origins",
            Self::Secret(_) => "secrets",
            Self::KeyValue => "key-value",
            Self::Config(_) => "config",
        }
    }
}

/// Writes the entry as `capability value`, such as `secrets api-key`.
impl fmt::Display for IgnoredGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HttpOrigin(value) | Self::Secret(value) | Self::Config(value) => {
                write!(f, "{} {value}", self.capability())
            }
            Self::KeyValue => f.write_str(self.capability()),
        }
    }
}

/// The effective policy of a plugin: the operator's grant narrowed to what
/// the plugin requested, with origin patterns parsed for checks on every
/// call.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The operator's grant as written, including entries the policy
    /// ignores. Checks use the effective fields below, never this.
    pub grant: Grant,
    origins: Vec<OriginPattern>,
    secret_origins: BTreeMap<String, Vec<OriginPattern>>,
    key_value: bool,
    config: BTreeMap<String, String>,
    ignored: Vec<IgnoredGrant>,
    /// Requested origins that are invalid, with the reason, for the loader
    /// to log.
    invalid_requested: Vec<String>,
    quotas: Vec<CheckedRule>,
}

impl Policy {
    /// Parses and checks `grant` and applies it as written, as though the
    /// plugin had requested everything it names. This validates an
    /// operator's configuration. A loaded plugin runs under
    /// [`Policy::for_request`].
    ///
    /// # Errors
    ///
    /// Returns the first invalid limit, the first origin pattern that does
    /// not parse or the first quota setting that is invalid, by its path in
    /// the grant.
    pub fn new(grant: Grant) -> Result<Self, InvalidGrant> {
        grant.limits.check()?;
        let origins = parse_origins(&grant.http_origins)?;
        let mut secret_origins = BTreeMap::new();
        for secret in &grant.secrets {
            secret_origins.insert(secret.name.clone(), parse_origins(&secret.origins)?);
        }
        let quotas = check_rules(&grant.quotas, &origins)?;
        Ok(Self {
            key_value: grant.key_value,
            config: grant.config.clone(),
            grant,
            origins,
            secret_origins,
            ignored: Vec::new(),
            invalid_requested: Vec::new(),
            quotas,
        })
    }

    /// Parses and checks `grant`, then keeps only what `requested` also
    /// names:
    ///
    /// - A granted origin pattern is kept when a requested pattern covers
    ///   it, so a granted `https://*.example.com` is dropped when the plugin
    ///   requested only `https://api.example.com`. A requested `config:KEY`
    ///   is the origin of the granted value of setting `KEY`. It matches
    ///   nothing when `KEY` is not granted or its value is not an `http` or
    ///   `https` URL.
    /// - A secret is kept when requested by name.
    /// - Key-value access is kept when requested.
    /// - A setting is kept when its key is requested in `config`.
    ///
    /// Everything dropped is listed by [`Policy::ignored`]. Quota rules are
    /// checked against all granted origins, as [`Policy::new`] checks them.
    ///
    /// # Errors
    ///
    /// The same as [`Policy::new`]. An invalid requested origin is not an
    /// error: it covers nothing, and [`Policy::invalid_requested_origins`] lists
    /// it.
    pub fn for_request(grant: Grant, requested: &Capabilities) -> Result<Self, InvalidGrant> {
        let mut policy = Self::new(grant)?;
        let (requested_origins, invalid_requested) =
            resolve_requested_origins(requested, &policy.config);
        policy.invalid_requested = invalid_requested;
        let mut ignored = Vec::new();

        let mut origins = Vec::new();
        for (written, pattern) in policy.grant.http_origins.iter().zip(&policy.origins) {
            if requested_origins.iter().any(|r| r.covers(pattern)) {
                origins.push(pattern.clone());
            } else {
                ignored.push(IgnoredGrant::HttpOrigin(written.clone()));
            }
        }
        policy.origins = origins;

        policy.secret_origins.retain(|name, _| {
            let keep = requested.secrets.contains(name);
            if !keep {
                ignored.push(IgnoredGrant::Secret(name.clone()));
            }
            keep
        });

        if policy.key_value && !requested.key_value {
            policy.key_value = false;
            ignored.push(IgnoredGrant::KeyValue);
        }

        policy.config.retain(|key, _| {
            let keep = requested.config.contains(key);
            if !keep {
                ignored.push(IgnoredGrant::Config(key.clone()));
            }
            keep
        });

        policy.ignored = ignored;
        Ok(policy)
    }

    /// Creates a policy that grants nothing, with default limits.
    pub fn deny_all() -> Self {
        Self {
            grant: Grant::default(),
            origins: Vec::new(),
            secret_origins: BTreeMap::new(),
            key_value: false,
            config: BTreeMap::new(),
            ignored: Vec::new(),
            invalid_requested: Vec::new(),
            quotas: Vec::new(),
        }
    }

    /// Returns the grant entries this policy ignores because the plugin did
    /// not request them, in grant order within each capability.
    pub fn ignored(&self) -> &[IgnoredGrant] {
        &self.ignored
    }

    /// Returns the requested origins that are invalid, each with the
    /// reason: a pattern that does not parse, or a `config:KEY` whose
    /// granted value is not an `http` or `https` URL. A `config:KEY` whose
    /// setting is not granted is not listed.
    pub fn invalid_requested_origins(&self) -> &[String] {
        &self.invalid_requested
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

    /// Returns whether an effective origin names the host of `url` exactly,
    /// not through a wildcard.
    pub fn names_host_of(&self, url: &Url) -> bool {
        self.origins.iter().any(|origin| origin.names_host_of(url))
    }

    /// Returns whether secret `name` may be sent to `url`.
    pub fn permits_secret(&self, name: &str, url: &Url) -> bool {
        self.secret_origins
            .get(name)
            .is_some_and(|origins| origins.iter().any(|origin| origin.permits(url)))
    }

    pub fn permits_key_value(&self) -> bool {
        self.key_value
    }

    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }
}

/// Parses the requested origins, resolving each `config:KEY` through the
/// granted `config`. Returns the patterns and, for each invalid entry, a
/// message naming it and the reason.
fn resolve_requested_origins(
    requested: &Capabilities,
    config: &BTreeMap<String, String>,
) -> (Vec<OriginPattern>, Vec<String>) {
    let mut patterns = Vec::new();
    let mut invalid_requested = Vec::new();
    for entry in &requested.http_origins {
        let parsed = match entry.strip_prefix(CONFIG_ORIGIN_PREFIX) {
            // A setting the operator left out gives no origin. That is the
            // normal case of a plugin with a built-in default upstream.
            Some(key) => match config.get(key) {
                Some(value) => OriginPattern::of_url(value).map_err(|error| error.to_string()),
                None => continue,
            },
            None => OriginPattern::parse(entry).map_err(|error| error.to_string()),
        };
        match parsed {
            Ok(pattern) => patterns.push(pattern),
            Err(reason) => invalid_requested.push(format!("{entry}: {reason}")),
        }
    }
    (patterns, invalid_requested)
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

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn requesting(origins: &[&str]) -> Capabilities {
        Capabilities {
            http_origins: origins.iter().map(|origin| origin.to_string()).collect(),
            ..Capabilities::default()
        }
    }

    fn granting(origins: &[&str]) -> Grant {
        Grant {
            http_origins: origins.iter().map(|origin| origin.to_string()).collect(),
            ..Grant::default()
        }
    }

    #[test]
    fn origin_covers() {
        let cases = [
            ("https://a.test", "https://a.test:443", true),
            ("https://a.test", "https://b.test", false),
            ("https://a.test", "http://a.test", false),
            ("https://a.test", "https://*.a.test", false),
            ("https://*.test", "https://a.test", true),
            ("https://*.test", "https://a.b.test", true),
            ("https://*.test", "https://*.b.test", true),
            ("https://*.test", "https://*.test", true),
            ("https://*.test", "https://test", false),
            ("https://*.test", "https://a.test:8443", false),
            ("https://*.b.test", "https://*.test", false),
        ];
        for (outer, inner, expected) in cases {
            let outer_pattern = OriginPattern::parse(outer).unwrap();
            let inner_pattern = OriginPattern::parse(inner).unwrap();
            assert_eq!(
                outer_pattern.covers(&inner_pattern),
                expected,
                "{outer} covers {inner}"
            );
        }
    }

    #[test]
    fn granted_origins_narrowed_to_request() {
        let requested = requesting(&["https://api.example.com", "https://*.b.test"]);
        let grant = granting(&[
            "https://*.example.com",
            "https://api.example.com",
            "https://x.b.test",
            "https://*.c.b.test",
            "https://other.test",
        ]);
        let policy = Policy::for_request(grant, &requested).unwrap();

        assert!(policy.permits_url(&url("https://api.example.com/v1")));
        assert!(policy.permits_url(&url("https://x.b.test/")));
        assert!(policy.permits_url(&url("https://y.c.b.test/")));
        assert!(!policy.permits_url(&url("https://www.example.com/")));
        assert!(!policy.permits_url(&url("https://y.b.test/")));
        assert!(!policy.permits_url(&url("https://other.test/")));
        assert_eq!(
            policy.ignored(),
            [
                IgnoredGrant::HttpOrigin("https://*.example.com".into()),
                IgnoredGrant::HttpOrigin("https://other.test".into()),
            ]
        );
    }

    #[test]
    fn config_origin_is_origin_of_granted_setting() {
        let requested = Capabilities {
            http_origins: vec!["config:base_url".into()],
            config: vec!["base_url".into()],
            ..Capabilities::default()
        };
        let mut grant = granting(&["http://127.0.0.1:8080", "http://127.0.0.1:8081"]);
        grant
            .config
            .insert("base_url".into(), "http://127.0.0.1:8080/api/v3?x=1".into());
        let policy = Policy::for_request(grant.clone(), &requested).unwrap();
        assert!(policy.permits_url(&url("http://127.0.0.1:8080/api/v3/files/x")));
        assert!(!policy.permits_url(&url("http://127.0.0.1:8081/")));
        assert_eq!(
            policy.ignored(),
            [IgnoredGrant::HttpOrigin("http://127.0.0.1:8081".into())]
        );
        assert!(policy.invalid_requested_origins().is_empty());

        // Without the setting, `config:base_url` matches no origin.
        grant.config.clear();
        let policy = Policy::for_request(grant, &requested).unwrap();
        assert!(!policy.permits_url(&url("http://127.0.0.1:8080/")));
        assert!(policy.invalid_requested_origins().is_empty());
    }

    #[test]
    fn config_origin_rejects_invalid_values() {
        let requested = requesting(&["config:base_url"]);
        for value in ["ftp://a.test", "not a url", "https://*.a.test"] {
            let mut grant = granting(&["https://*.a.test"]);
            grant.config.insert("base_url".into(), value.into());
            let policy = Policy::for_request(grant, &requested).unwrap();
            assert!(
                !policy.permits_url(&url("https://x.a.test/")),
                "{value} admitted a URL"
            );
            assert_eq!(
                policy.invalid_requested_origins().len(),
                1,
                "{value} was not reported as invalid"
            );
        }
    }

    #[test]
    fn secrets_key_value_and_config_need_request() {
        let requested = Capabilities {
            http_origins: vec!["https://a.test".into()],
            secrets: vec!["requested".into()],
            key_value: false,
            config: vec!["shown".into()],
        };
        let grant = Grant {
            http_origins: vec!["https://a.test".into()],
            secrets: ["requested", "unrequested"]
                .into_iter()
                .map(|name| SecretGrant {
                    name: name.into(),
                    origins: vec!["https://a.test".into()],
                })
                .collect(),
            key_value: true,
            config: [("shown", "1"), ("hidden", "2")]
                .into_iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ..Grant::default()
        };
        let policy = Policy::for_request(grant, &requested).unwrap();
        let target = url("https://a.test/");

        assert!(policy.permits_secret("requested", &target));
        assert!(!policy.permits_secret("unrequested", &target));
        assert!(!policy.permits_key_value());
        assert_eq!(policy.config_value("shown"), Some("1"));
        assert_eq!(policy.config_value("hidden"), None);
        assert_eq!(
            policy.ignored(),
            [
                IgnoredGrant::Secret("unrequested".into()),
                IgnoredGrant::KeyValue,
                IgnoredGrant::Config("hidden".into()),
            ]
        );
    }

    #[test]
    fn requested_but_not_granted_is_denied() {
        let requested = Capabilities {
            http_origins: vec!["https://a.test".into()],
            secrets: vec!["key".into()],
            key_value: true,
            config: vec!["base_url".into()],
        };
        let policy = Policy::for_request(Grant::default(), &requested).unwrap();
        assert!(!policy.permits_url(&url("https://a.test/")));
        assert!(!policy.permits_secret("key", &url("https://a.test/")));
        assert!(!policy.permits_key_value());
        assert_eq!(policy.config_value("base_url"), None);
        assert!(policy.ignored().is_empty());
    }

    #[test]
    fn zero_concurrent_calls_is_rejected() {
        let mut grant = Grant::default();
        grant.limits.concurrent_calls = 0;
        let error = Policy::new(grant).expect_err("0 concurrent calls was accepted");
        let message = error.to_string();
        assert!(
            message.contains("limits.concurrent_calls"),
            "the error does not name the field: {message}"
        );
    }

    #[test]
    fn default_limits_are_valid() {
        assert!(Limits::default().check().is_ok());
    }

    #[test]
    fn deny_all_permits_nothing() {
        let policy = Policy::deny_all();
        assert!(!policy.permits_url(&Url::parse("http://127.0.0.1/").unwrap()));
        assert!(policy.config_value("base_url").is_none());
    }
}
