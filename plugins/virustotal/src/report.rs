//! Mapping VirusTotal API v3 responses to report outputs and plugin errors.
//!
//! # Verdict
//!
//! The verdict comes from `data.attributes.last_analysis_stats`, the count
//! of engines per result in the latest analysis. The first rule that applies
//! wins:
//!
//! | Verdict      | Rule                                              |
//! | ------------ | ------------------------------------------------- |
//! | `malicious`  | 3 or more engines report `malicious`              |
//! | `suspicious` | 1 or 2 report `malicious`, or 1 or more `suspicious` |
//! | `harmless`   | 1 or more report `harmless`                       |
//! | `undetected` | 1 or more report `undetected`                     |
//! | `unknown`    | no stats, or no engine gave any of these results  |
//!
//! Three engines are needed for `malicious` so that one or two engines
//! flagging a clean object give `suspicious` instead. File engines seldom
//! report `harmless` (both recorded file reports in the tests have 0), so a
//! clean file usually reads as `undetected`, as the recorded empty file
//! does (57 undetected). A hash that VirusTotal does not know (404 `NotFoundError`)
//! gives `found: false` and `unknown`.
//!
//! # Errors
//!
//! | Response                                                    | Plugin error   |
//! | ----------------------------------------------------------- | -------------- |
//! | 429, or code `QuotaExceededError` or `TooManyRequestsError` | `rate-limited`, with `retry-after` seconds as milliseconds |
//! | 401 or 403                                                  | `upstream` with the status and VirusTotal's message |
//! | any other non-2xx status, or a 2xx body without `data`      | `upstream`     |

use palisade_sdk::http::{Response, header_value};
use palisade_sdk::{PluginError, RateLimit, UpstreamFailure, Value, json};

use crate::target::Target;

/// Maximum number of file names copied from `data.attributes.names`. The
/// EICAR report lists 100 of them.
pub const MAX_NAMES: usize = 20;

/// Engines reporting `malicious` needed for the `malicious` verdict.
pub const MALICIOUS_THRESHOLD: u64 = 3;

/// Error codes that VirusTotal uses for quota and rate refusals.
const RATE_LIMIT_CODES: [&str; 2] = ["QuotaExceededError", "TooManyRequestsError"];

/// Returns the verdict for `last_analysis_stats` by the rules in the
/// module documentation.
pub fn verdict(stats: Option<&Value>) -> &'static str {
    let Some(stats) = stats.filter(|stats| stats.is_object()) else {
        return "unknown";
    };
    let count = |name: &str| stats.get(name).and_then(Value::as_u64).unwrap_or(0);
    let malicious = count("malicious");
    if malicious >= MALICIOUS_THRESHOLD {
        "malicious"
    } else if malicious > 0 || count("suspicious") > 0 {
        "suspicious"
    } else if count("harmless") > 0 {
        "harmless"
    } else if count("undetected") > 0 {
        "undetected"
    } else {
        "unknown"
    }
}

/// Maps one API response for `target` to the report output.
///
/// # Errors
///
/// Returns `rate-limited` or `upstream` as listed in the module
/// documentation.
pub fn map_response(target: &Target, response: &Response) -> Result<Value, PluginError> {
    let status = response.status;
    if (200..300).contains(&status) {
        let body: Value = serde_json::from_slice(&response.body).map_err(|error| {
            upstream(
                Some(status),
                format!("virustotal returned HTTP {status} with a body that is not JSON: {error}"),
            )
        })?;
        return found_report(target, &body).ok_or_else(|| {
            upstream(
                Some(status),
                format!("virustotal returned HTTP {status} without a `data` object"),
            )
        });
    }

    let error = ApiError::parse(&response.body);
    let code = error.as_ref().map_or("", |error| error.code.as_str());
    if status == 429 || RATE_LIMIT_CODES.contains(&code) {
        return Err(PluginError::RateLimited(RateLimit {
            retry_after_ms: retry_after_ms(response),
            message: format!(
                "virustotal refused the request for now (HTTP {status}{})",
                describe(error.as_ref())
            ),
        }));
    }
    if status == 404 && code == "NotFoundError" {
        return Ok(not_found_report(target));
    }
    let message = if status == 401 || status == 403 {
        format!(
            "virustotal rejected the credentials (HTTP {status}{}); check the `virustotal-api-key` secret",
            describe(error.as_ref())
        )
    } else {
        format!(
            "virustotal returned HTTP {status}{}",
            describe(error.as_ref())
        )
    };
    Err(upstream(Some(status), message))
}

/// The error envelope of API v3: `{"error": {"code": …, "message": …}}`.
#[derive(Debug)]
struct ApiError {
    code: String,
    message: String,
}

impl ApiError {
    fn parse(body: &[u8]) -> Option<Self> {
        let envelope: Value = serde_json::from_slice(body).ok()?;
        let error = envelope.get("error")?;
        let text = |name: &str| {
            error
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Some(Self {
            code: text("code"),
            message: text("message"),
        })
    }
}

/// Formats the error code and message as `: Code: message`, or nothing when
/// the body carried no error envelope.
fn describe(error: Option<&ApiError>) -> String {
    match error {
        Some(error) if !error.message.is_empty() => {
            format!(": {}: {}", error.code, error.message)
        }
        Some(error) if !error.code.is_empty() => format!(": {}", error.code),
        _ => String::new(),
    }
}

fn upstream(status: Option<u16>, message: String) -> PluginError {
    PluginError::Upstream(UpstreamFailure { status, message })
}

/// Reads `retry-after` as whole seconds. An HTTP-date value is ignored.
fn retry_after_ms(response: &Response) -> Option<u64> {
    let seconds: u64 = header_value(response, "retry-after")?.trim().parse().ok()?;
    Some(seconds.saturating_mul(1_000))
}

fn found_report(target: &Target, body: &Value) -> Option<Value> {
    let data = body.get("data").filter(|data| data.is_object())?;
    let attributes = data.get("attributes").cloned().unwrap_or(Value::Null);
    let stats = attributes
        .get("last_analysis_stats")
        .filter(|stats| stats.is_object())
        .cloned();
    let id = data
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| target.default_id(), str::to_string);

    let mut report = json!({
        "type": target.kind(),
        "value": target.value(),
        "found": true,
        "verdict": verdict(stats.as_ref()),
        "stats": stats,
        "reputation": attributes.get("reputation").and_then(Value::as_i64),
        "permalink": target.permalink(&id),
    });
    if let Target::File { .. } = target {
        add_file_fields(&mut report, &attributes);
    }
    Some(report)
}

fn add_file_fields(report: &mut Value, attributes: &Value) {
    if let Some(names) = attributes.get("names").and_then(Value::as_array) {
        let names: Vec<Value> = names
            .iter()
            .filter(|name| name.is_string())
            .take(MAX_NAMES)
            .cloned()
            .collect();
        report["names"] = Value::Array(names);
    }
    for field in ["type_description", "meaningful_name"] {
        if let Some(text) = attributes.get(field).and_then(Value::as_str) {
            report[field] = json!(text);
        }
    }
}

fn not_found_report(target: &Target) -> Value {
    json!({
        "type": target.kind(),
        "value": target.value(),
        "found": false,
        "verdict": "unknown",
        "stats": null,
        "reputation": null,
        "permalink": target.permalink(&target.default_id()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EICAR_SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EICAR_BODY: &str = include_str!(
        "../../../tests/fixtures/virustotal/files/275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f.json"
    );
    const EMPTY_BODY: &str = include_str!(
        "../../../tests/fixtures/virustotal/files/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.json"
    );

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn file(hash: &str) -> Target {
        Target::file(hash).unwrap()
    }

    #[test]
    fn eicar_report_is_malicious() {
        let report = map_response(&file(EICAR_SHA256), &response(200, &[], EICAR_BODY)).unwrap();
        assert_eq!(report["type"], "sha256");
        assert_eq!(report["value"], EICAR_SHA256);
        assert_eq!(report["found"], true);
        assert_eq!(report["verdict"], "malicious");
        assert_eq!(report["stats"]["malicious"], 59);
        assert_eq!(report["stats"]["undetected"], 5);
        assert_eq!(report["stats"]["type-unsupported"], 9);
        assert_eq!(report["reputation"], 3457);
        assert_eq!(
            report["permalink"],
            format!("https://www.virustotal.com/gui/file/{EICAR_SHA256}")
        );
        assert_eq!(report["type_description"], "Text");
        assert_eq!(report["meaningful_name"], "eicar.com-27284");
        let names = report["names"].as_array().unwrap();
        assert_eq!(names.len(), MAX_NAMES);
        assert_eq!(names[0], "eicar.com-27284");
    }

    #[test]
    fn empty_file_report_reads_clean() {
        let report = map_response(&file(EMPTY_SHA256), &response(200, &[], EMPTY_BODY)).unwrap();
        assert_eq!(report["found"], true);
        assert_eq!(report["stats"]["malicious"], 0);
        assert_eq!(report["stats"]["suspicious"], 0);
        assert_eq!(report["stats"]["harmless"], 0);
        assert_eq!(report["stats"]["undetected"], 57);
        assert_eq!(report["verdict"], "undetected");
        assert_eq!(report["type_description"], "unknown");
    }

    #[test]
    fn md5_lookup_links_to_sha256_id() {
        let report = map_response(
            &file("44D88612FEA8A8F36DE82E1278ABB02F"),
            &response(200, &[], EICAR_BODY),
        )
        .unwrap();
        assert_eq!(report["type"], "md5");
        assert_eq!(report["value"], "44d88612fea8a8f36de82e1278abb02f");
        assert_eq!(
            report["permalink"],
            format!("https://www.virustotal.com/gui/file/{EICAR_SHA256}"),
            "the link uses data.id"
        );
    }

    #[test]
    fn verdict_rules() {
        let cases = [
            (json!({"malicious": 3}), "malicious"),
            (json!({"malicious": 2, "harmless": 80}), "suspicious"),
            (json!({"malicious": 1}), "suspicious"),
            (json!({"malicious": 0, "suspicious": 1}), "suspicious"),
            (
                json!({"malicious": 0, "suspicious": 0, "harmless": 1, "undetected": 9}),
                "harmless",
            ),
            (
                json!({"malicious": 0, "harmless": 0, "undetected": 57}),
                "undetected",
            ),
            (
                json!({"malicious": 0, "timeout": 3, "type-unsupported": 12}),
                "unknown",
            ),
            (json!({}), "unknown"),
        ];
        for (stats, expected) in cases {
            assert_eq!(verdict(Some(&stats)), expected, "verdict of {stats}");
        }
        assert_eq!(verdict(None), "unknown");
        assert_eq!(verdict(Some(&json!("text"))), "unknown");
    }

    #[test]
    fn network_reports_have_no_file_fields() {
        let body = json!({"data": {
            "id": "192.0.2.1",
            "type": "ip_address",
            "attributes": {
                "last_analysis_stats": {"harmless": 60, "malicious": 0, "suspicious": 0, "undetected": 25, "timeout": 0},
                "reputation": -4,
                "names": ["not copied"]
            }
        }});
        let target = Target::ip("192.0.2.1").unwrap();
        let report = map_response(&target, &response(200, &[], &body.to_string())).unwrap();
        assert_eq!(
            report,
            json!({
                "type": "ipv4",
                "value": "192.0.2.1",
                "found": true,
                "verdict": "harmless",
                "stats": {"harmless": 60, "malicious": 0, "suspicious": 0, "undetected": 25, "timeout": 0},
                "reputation": -4,
                "permalink": "https://www.virustotal.com/gui/ip-address/192.0.2.1"
            })
        );
    }

    #[test]
    fn report_without_stats_is_unknown() {
        let body = json!({"data": {"id": "example.com", "type": "domain", "attributes": {}}});
        let target = Target::domain("example.com").unwrap();
        let report = map_response(&target, &response(200, &[], &body.to_string())).unwrap();
        assert_eq!(report["verdict"], "unknown");
        assert_eq!(report["stats"], Value::Null);
        assert_eq!(report["reputation"], Value::Null);
    }

    #[test]
    fn not_found_is_a_report() {
        let body =
            r#"{"error": {"code": "NotFoundError", "message": "URL \"aHR0cDovL3gv\" not found"}}"#;
        let target = Target::url("http://x/").unwrap();
        let report = map_response(&target, &response(404, &[], body)).unwrap();
        assert_eq!(
            report,
            json!({
                "type": "url",
                "value": "http://x/",
                "found": false,
                "verdict": "unknown",
                "stats": null,
                "reputation": null,
                "permalink": "https://www.virustotal.com/gui/url/aHR0cDovL3gv"
            })
        );
    }

    #[test]
    fn not_found_without_envelope_is_upstream() {
        let error = map_response(&file(EICAR_SHA256), &response(404, &[], "<html>")).unwrap_err();
        match error {
            PluginError::Upstream(failure) => {
                assert_eq!(failure.status, Some(404));
                assert_eq!(failure.message, "virustotal returned HTTP 404");
            }
            other => panic!("expected upstream, got {other:?}"),
        }
    }

    #[test]
    fn http_429_is_rate_limited_with_retry_after() {
        let body = r#"{"error": {"code": "QuotaExceededError", "message": "Quota exceeded"}}"#;
        let error = map_response(
            &file(EICAR_SHA256),
            &response(429, &[("retry-after", "60")], body),
        )
        .unwrap_err();
        match error {
            PluginError::RateLimited(limit) => {
                assert_eq!(limit.retry_after_ms, Some(60_000));
                assert_eq!(
                    limit.message,
                    "virustotal refused the request for now (HTTP 429: QuotaExceededError: Quota exceeded)"
                );
            }
            other => panic!("expected rate-limited, got {other:?}"),
        }
    }

    #[test]
    fn rate_limit_code_without_429_or_header() {
        let body =
            r#"{"error": {"code": "TooManyRequestsError", "message": "Too many requests."}}"#;
        let error = map_response(&file(EICAR_SHA256), &response(400, &[], body)).unwrap_err();
        assert!(
            matches!(&error, PluginError::RateLimited(limit) if limit.retry_after_ms.is_none()),
            "{error:?}"
        );

        let dated = map_response(
            &file(EICAR_SHA256),
            &response(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], ""),
        )
        .unwrap_err();
        assert!(
            matches!(&dated, PluginError::RateLimited(limit) if limit.retry_after_ms.is_none()),
            "{dated:?}"
        );
    }

    #[test]
    fn http_401_names_the_secret() {
        let body = r#"{"error": {"code": "AuthenticationRequiredError", "message": "X-Apikey header is missing"}}"#;
        let error = map_response(&file(EICAR_SHA256), &response(401, &[], body)).unwrap_err();
        match error {
            PluginError::Upstream(failure) => {
                assert_eq!(failure.status, Some(401));
                assert_eq!(
                    failure.message,
                    "virustotal rejected the credentials (HTTP 401: AuthenticationRequiredError: X-Apikey header is missing); check the `virustotal-api-key` secret"
                );
            }
            other => panic!("expected upstream, got {other:?}"),
        }
    }

    #[test]
    fn http_403_is_upstream() {
        let body = r#"{"error": {"code": "ForbiddenError", "message": "You are not allowed to perform the requested operation"}}"#;
        let error = map_response(&file(EICAR_SHA256), &response(403, &[], body)).unwrap_err();
        assert!(
            matches!(&error, PluginError::Upstream(failure) if failure.status == Some(403) && failure.message.contains("ForbiddenError")),
            "{error:?}"
        );
    }

    #[test]
    fn server_error_is_upstream() {
        let error = map_response(&file(EICAR_SHA256), &response(503, &[], "")).unwrap_err();
        assert!(
            matches!(&error, PluginError::Upstream(failure) if failure.status == Some(503) && failure.message == "virustotal returned HTTP 503"),
            "{error:?}"
        );
    }

    #[test]
    fn unusable_success_body_is_upstream() {
        for body in ["not json", r#"{"error": null}"#, r#"{"data": []}"#] {
            let error = map_response(&file(EICAR_SHA256), &response(200, &[], body)).unwrap_err();
            assert!(
                matches!(&error, PluginError::Upstream(failure) if failure.status == Some(200)),
                "body {body:?} gave {error:?}"
            );
        }
    }
}
