//! Host-mediated outbound HTTP for plugins.
//!
//! Threat model: a plugin is untrusted code that may try to reach services
//! it was not granted, including the host's own network (server-side
//! request forgery). Every request is checked in this order:
//!
//! 1. the URL parses, with scheme `http` or `https`;
//! 2. its origin (scheme, host, port) is one the operator granted and the
//!    plugin requested (see [`Policy::for_request`]);
//! 3. a requested secret is granted and bound to that origin;
//! 4. the host name is resolved by the host, and every loopback, private,
//!    link-local, CGNAT, unique-local or unspecified address is dropped, so
//!    the connection goes to an address that was checked. An address literal
//!    in the URL is allowed in those ranges only when an effective origin
//!    names that exact literal, which is how tests reach servers on
//!    127.0.0.1;
//! 5. the plugin's quotas admit the request (see [`crate::quota`]), which
//!    may wait, and only then is it sent.
//!
//! Redirects are never followed: a plugin receives the 3xx response and may
//! issue a new request, which goes through the same checks. Environment
//! proxies are ignored. Response bodies over the limit are cut off and
//! reported as `response-too-large`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use crate::bindings::palisade::plugin::http::{HttpError, Request, Response, SecretPlacement};
use crate::host::Services;
use crate::policy::Policy;

/// Maximum request body a plugin may send, in bytes.
const MAX_REQUEST_BODY: usize = 1 << 20;

/// The shared HTTP client of all plugin calls.
pub(crate) struct Outbound {
    client: reqwest::Client,
}

impl Outbound {
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver))
            .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }
}

/// The plugin call a request comes from.
pub(crate) struct Caller<'a> {
    pub plugin: &'a str,
    pub policy: &'a Policy,
    /// End of the call's wall-clock limit.
    pub deadline: Option<Instant>,
}

/// Sends `request` for a plugin call: checks it against the policy, waits
/// for the plugin's quotas to admit it, sends it and reads the response.
/// The quota permit is held until the body is read, so a concurrency limit
/// counts the whole exchange.
pub(crate) async fn send(
    services: &Services,
    caller: Caller<'_>,
    request: Request,
) -> Result<Response, HttpError> {
    let limits = caller.policy.limits();
    let method = request.method.clone();
    let (builder, url) = prepare(services, caller.policy, request)?;
    let _permit = services
        .quotas
        .admit(caller.plugin, &url, caller.deadline)
        .await?;
    if let Some(fixtures) = services.fixtures.get() {
        let response = fixtures.answer(&method, url.as_str()).ok_or_else(|| {
            HttpError::Transport(format!(
                "no recorded response for {method} {url}; add one to the fixtures"
            ))
        })?;
        let retry_after = response
            .headers
            .iter()
            .find(|(name, _)| name == "retry-after")
            .map(|(_, value)| value.as_str());
        services
            .quotas
            .note_response(caller.plugin, &url, response.status, retry_after);
        return Ok(response);
    }
    let response = builder.send().await.map_err(map_reqwest_error)?;
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok());
    services
        .quotas
        .note_response(caller.plugin, &url, response.status().as_u16(), retry_after);
    read_response(response, limits.http_response_bytes).await
}

/// Checks `request` against `policy` and builds it, with any granted secret
/// in place. Returns the builder and the URL as the plugin wrote it, which
/// has no secret in it.
fn prepare(
    services: &Services,
    policy: &Policy,
    request: Request,
) -> Result<(reqwest::RequestBuilder, Url), HttpError> {
    let mut url = Url::parse(&request.url)
        .map_err(|error| HttpError::InvalidRequest(format!("invalid URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HttpError::InvalidRequest(format!(
            "scheme {:?} is not supported; use http or https",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(HttpError::InvalidRequest(
            "credentials in the URL are not allowed; use a granted secret".into(),
        ));
    }
    if !policy.permits_url(&url) {
        return Err(HttpError::Denied(format!(
            "origin {} is not granted to this plugin; an operator can add it to `http_origins` of the plugin in palisade.toml",
            url.origin().ascii_serialization()
        )));
    }
    check_address_literal(&url, policy)?;
    let checked_url = url.clone();

    let method = reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| HttpError::InvalidRequest(format!("invalid method {:?}", request.method)))?;
    if request
        .body
        .as_ref()
        .is_some_and(|b| b.len() > MAX_REQUEST_BODY)
    {
        return Err(HttpError::InvalidRequest(format!(
            "request body is over {MAX_REQUEST_BODY} bytes"
        )));
    }

    let mut secret_header = None;
    if let Some(secret) = &request.secret {
        if !policy.permits_secret(&secret.name, &url) {
            return Err(HttpError::Denied(format!(
                "secret {:?} is not granted for origin {}; an operator can bind it in `[[plugins.NAME.secrets]]` of palisade.toml",
                secret.name,
                url.origin().ascii_serialization()
            )));
        }
        let value = services
            .secrets
            .as_ref()
            .and_then(|source| source.secret(&secret.name))
            .ok_or_else(|| {
                HttpError::Denied(format!(
                    "secret {:?} has no value on this host; set the environment variable or file that palisade.toml names for it under [secrets]",
                    secret.name
                ))
            })?;
        match &secret.placement {
            SecretPlacement::Header(placement) => {
                let header_value = format!("{}{}", placement.prefix, value.expose());
                secret_header = Some((placement.name.clone(), header_value));
            }
            SecretPlacement::Query(parameter) => {
                url.query_pairs_mut().append_pair(parameter, value.expose());
            }
        }
    }

    let limits = policy.limits();
    let mut builder = services
        .outbound
        .client
        .request(method, url)
        .timeout(Duration::from_millis(limits.http_timeout_ms));
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if let Some((name, value)) = secret_header {
        let mut value = reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| HttpError::InvalidRequest("secret is not a valid header value".into()))?;
        value.set_sensitive(true);
        builder = builder.header(name, value);
    }
    if let Some(body) = request.body {
        builder = builder.body(body);
    }
    Ok((builder, checked_url))
}

async fn read_response(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Response, HttpError> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), value)
        })
        .collect();
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(HttpError::ResponseTooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(map_reqwest_error)? {
        if body.len() + chunk.len() > limit {
            return Err(HttpError::ResponseTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Maps a transport error to the WIT error. The URL is left out of the
/// message because it may carry a secret placed as a query parameter.
fn map_reqwest_error(error: reqwest::Error) -> HttpError {
    if error.is_timeout() {
        return HttpError::Timeout;
    }
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    HttpError::Transport(message)
}

/// Short description of an HTTP error for the call record.
pub(crate) fn describe_error(error: &HttpError) -> String {
    match error {
        HttpError::Denied(message) => format!("denied: {message}"),
        HttpError::InvalidRequest(message) => format!("invalid request: {message}"),
        HttpError::Timeout => "timeout".to_string(),
        HttpError::Transport(message) => format!("transport: {message}"),
        HttpError::ResponseTooLarge => "response too large".to_string(),
        HttpError::RateLimited(Some(ms)) => format!("rate limited: retry after {ms} ms"),
        HttpError::RateLimited(None) => "rate limited".to_string(),
    }
}

/// Rejects an address literal in a blocked range unless an effective origin
/// (granted and requested) names it exactly.
fn check_address_literal(url: &Url, policy: &Policy) -> Result<(), HttpError> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if !is_blocked(ip) {
        return Ok(());
    }
    let named = policy.names_host_of(url);
    if named {
        Ok(())
    } else {
        Err(HttpError::Denied(format!(
            "address {ip} is in a blocked range; grant it by its literal address to allow it"
        )))
    }
}

/// Returns whether `ip` is in a range plugins may not reach by host name: loopback,
/// private, link-local (which contains the cloud metadata address
/// 169.254.169.254), CGNAT, unique-local, unspecified, broadcast, multicast,
/// or an IPv4-mapped or IPv4-compatible form of one of those.
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_blocked_v4(ip),
        IpAddr::V6(ip) => is_blocked_v6(ip),
    }
}

fn is_blocked_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn is_blocked_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_blocked_v4(v4);
    }
    let segments = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks).
    if segments[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return is_blocked_v4(Ipv4Addr::from(ip.to_bits() as u32));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00
        || (segments[0] & 0xffc0) == 0xfe80
}

/// DNS resolver that drops blocked addresses, so a host name that resolves
/// to an internal address cannot be used to reach it.
struct CheckedResolver;

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| !is_blocked(address.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(format!("{host} resolves to no address plugins may reach").into());
            }
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_ranges() {
        let blocked = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
        ];
        for ip in blocked {
            assert!(is_blocked(ip.parse().unwrap()), "{ip} is not blocked");
        }
        for ip in ["8.8.8.8", "175.16.199.1", "2001:4860::8888", "100.128.0.1"] {
            assert!(!is_blocked(ip.parse().unwrap()), "{ip} is blocked");
        }
    }
}
