//! Requests to the VirusTotal API through the host.
//!
//! The plugin never has the API key. Each request names the secret
//! `virustotal-api-key`, and the host places its value in the `x-apikey`
//! header on the way out, so the key cannot appear in a URL, a log line or
//! an error message built here.

use palisade_sdk::http::{HttpError, Request};
use palisade_sdk::{PluginError, RateLimit, UpstreamFailure, Value};

use crate::report::map_response;
use crate::target::Target;

/// API origin used when the `base_url` setting is absent or empty.
pub const DEFAULT_BASE_URL: &str = "https://www.virustotal.com";

/// Name of the secret the host places in each request.
pub const API_KEY_SECRET: &str = "virustotal-api-key";

/// Returns the API base URL from the `base_url` setting, without trailing
/// slashes.
///
/// # Errors
///
/// Returns `internal` when the setting is not an `http` or `https` URL,
/// because the operator must fix the configuration.
pub fn base_url(configured: Option<&str>) -> Result<String, PluginError> {
    let configured = configured.map(str::trim).unwrap_or_default();
    if configured.is_empty() {
        return Ok(DEFAULT_BASE_URL.to_string());
    }
    let trimmed = configured.trim_end_matches('/');
    let has_host = ["https://", "http://"]
        .iter()
        .any(|scheme| trimmed.len() > scheme.len() && trimmed.starts_with(scheme));
    if !has_host {
        return Err(PluginError::Internal(format!(
            "configuration setting `base_url` {configured:?} is not an http or https URL"
        )));
    }
    Ok(trimmed.to_string())
}

/// Returns the full request URL for `target`.
pub fn request_url(base_url: &str, target: &Target) -> String {
    format!("{base_url}{}", target.api_path())
}

/// Maps a failure of the host's `http.send` to a plugin error that names
/// the request URL.
pub fn map_http_error(url: &str, error: HttpError) -> PluginError {
    let upstream = |message: String| {
        PluginError::Upstream(UpstreamFailure {
            status: None,
            message,
        })
    };
    match error {
        HttpError::Denied(reason) => {
            PluginError::Denied(format!("the host denied the request to {url}: {reason}"))
        }
        HttpError::InvalidRequest(reason) => PluginError::Internal(format!(
            "the host rejected the request to {url} as invalid: {reason}"
        )),
        HttpError::Timeout => upstream(format!("virustotal did not respond in time to {url}")),
        HttpError::Transport(reason) => upstream(format!("request to {url} failed: {reason}")),
        HttpError::ResponseTooLarge => upstream(format!(
            "the response from {url} is larger than the host's size limit"
        )),
        HttpError::RateLimited(retry_after_ms) => PluginError::RateLimited(RateLimit {
            retry_after_ms,
            message: format!(
                "the host held back the request to {url}: the virustotal quota is used up or the API asked for a pause"
            ),
        }),
    }
}

/// Fetches and maps the report for `target`.
///
/// # Errors
///
/// Returns the errors of [`map_http_error`] and [`map_response`].
pub fn fetch_report(base_url: &str, target: &Target) -> Result<Value, PluginError> {
    let url = request_url(base_url, target);
    let response = Request::get(&url)
        .header("accept", "application/json")
        .secret_header(API_KEY_SECRET, "x-apikey", "")
        .send()
        .map_err(|error| map_http_error(&url, error))?;
    map_response(target, &response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_defaults_and_trims() {
        assert_eq!(base_url(None).unwrap(), DEFAULT_BASE_URL);
        assert_eq!(base_url(Some("  ")).unwrap(), DEFAULT_BASE_URL);
        assert_eq!(
            base_url(Some("http://127.0.0.1:8089//")).unwrap(),
            "http://127.0.0.1:8089"
        );
        assert_eq!(
            base_url(Some("https://www.virustotal.com/")).unwrap(),
            "https://www.virustotal.com"
        );
    }

    #[test]
    fn base_url_must_be_http() {
        for configured in [
            "www.virustotal.com",
            "ftp://mirror",
            "https://",
            "https:///",
        ] {
            let error = base_url(Some(configured)).unwrap_err();
            assert!(
                matches!(&error, PluginError::Internal(message) if message.contains("`base_url`")),
                "{configured:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn request_urls_per_kind() {
        let base = "http://127.0.0.1:8089";
        let cases = [
            (
                Target::file(&"A".repeat(40)).unwrap(),
                format!("{base}/api/v3/files/{}", "a".repeat(40)),
            ),
            (
                Target::ip("192.0.2.1").unwrap(),
                format!("{base}/api/v3/ip_addresses/192.0.2.1"),
            ),
            (
                Target::domain("example.com").unwrap(),
                format!("{base}/api/v3/domains/example.com"),
            ),
            (Target::url("f").unwrap(), format!("{base}/api/v3/urls/Zg")),
        ];
        for (target, expected) in cases {
            assert_eq!(request_url(base, &target), expected);
        }
    }

    #[test]
    fn http_errors_map_to_plugin_errors() {
        let url = "https://www.virustotal.com/api/v3/domains/example.com";
        let denied = map_http_error(url, HttpError::Denied("origin not granted".to_string()));
        assert!(
            matches!(&denied, PluginError::Denied(message) if message.contains(url) && message.contains("origin not granted")),
            "{denied:?}"
        );
        let invalid = map_http_error(url, HttpError::InvalidRequest("bad header".to_string()));
        assert!(matches!(invalid, PluginError::Internal(_)), "{invalid:?}");

        let upstream_cases = [
            (HttpError::Timeout, "did not respond in time"),
            (
                HttpError::Transport("connection refused".to_string()),
                "connection refused",
            ),
            (
                HttpError::ResponseTooLarge,
                "larger than the host's size limit",
            ),
        ];
        let limited = map_http_error(url, HttpError::RateLimited(Some(20_000)));
        assert!(
            matches!(&limited, PluginError::RateLimited(limit) if limit.retry_after_ms == Some(20_000) && limit.message.contains(url)),
            "{limited:?}"
        );
        let limited = map_http_error(url, HttpError::RateLimited(None));
        assert!(
            matches!(&limited, PluginError::RateLimited(limit) if limit.retry_after_ms.is_none()),
            "{limited:?}"
        );

        for (error, expected) in upstream_cases {
            match map_http_error(url, error) {
                PluginError::Upstream(failure) => {
                    assert_eq!(failure.status, None);
                    assert!(failure.message.contains(expected), "{}", failure.message);
                    assert!(failure.message.contains(url), "{}", failure.message);
                }
                other => panic!("expected upstream for {expected:?}, got {other:?}"),
            }
        }
    }
}
