//! VirusTotal plugin: reports on file hashes, IP addresses, domains and URLs
//! from the VirusTotal API v3, with a verdict per report.
//!
//! The API base URL comes from the `base_url` setting (default
//! `https://www.virustotal.com`), so a test server on loopback can stand in
//! for VirusTotal. The API key stays with the host, which adds it to each
//! request as the `x-apikey` header.
//!
//! Response mapping and the verdict rules are in [`report`], the request
//! budget of `lookup` in [`lookup`].

mod client;
mod lookup;
mod report;
mod target;

use palisade_sdk::{
    Capabilities, Plugin, PluginError, PluginInfo, Value, action, json, require_str,
};

use crate::client::{API_KEY_SECRET, DEFAULT_BASE_URL, fetch_report};
use crate::target::Target;

/// Setting that overrides the API base URL.
const BASE_URL_SETTING: &str = "base_url";

struct VirusTotal;

impl Plugin for VirusTotal {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "virustotal".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "Looks up file hashes, IP addresses, domains and URLs in VirusTotal and gives a verdict for each.".to_string(),
            actions: vec![
                action(
                    "file-report",
                    "Returns the VirusTotal report on a file by its MD5, SHA-1 or SHA-256 hash.",
                    single_input_schema("hash", "MD5, SHA-1 or SHA-256 in hexadecimal."),
                    report_schema(),
                    false,
                ),
                action(
                    "ip-report",
                    "Returns the VirusTotal report on an IPv4 or IPv6 address.",
                    single_input_schema("ip", "IPv4 or IPv6 address."),
                    report_schema(),
                    false,
                ),
                action(
                    "domain-report",
                    "Returns the VirusTotal report on a domain.",
                    single_input_schema("domain", "Domain name in ASCII (punycode for other characters)."),
                    report_schema(),
                    false,
                ),
                action(
                    "url-report",
                    "Returns the VirusTotal report on a URL.",
                    single_input_schema("url", "The URL as observed."),
                    report_schema(),
                    false,
                ),
                action(
                    "lookup",
                    "Returns VirusTotal reports for the non-internal observables of a list, up to a request budget.",
                    lookup_input_schema(),
                    lookup_output_schema(),
                    false,
                ),
                action(
                    "plan-lookups",
                    "Returns the observables `lookup` would look up within the budget, in its order, without sending any request.",
                    lookup_input_schema(),
                    json!({
                        "type": "object",
                        "required": ["observables"],
                        "properties": {"observables": {"type": "array"}}
                    }),
                    false,
                ),
            ],
            capabilities: Capabilities {
                // `config:base_url` requests the origin of the operator's
                // `base_url` setting, such as a proxy or a test replay.
                http_origins: vec![
                    DEFAULT_BASE_URL.to_string(),
                    format!("config:{BASE_URL_SETTING}"),
                ],
                secrets: vec![API_KEY_SECRET.to_string()],
                key_value: false,
                config: vec![BASE_URL_SETTING.to_string()],
            },
        }
    }

    fn invoke(action: &str, input: Value) -> Result<Value, PluginError> {
        let parse: fn(&str) -> Result<Target, String> = match action {
            "file-report" => Target::file,
            "ip-report" => Target::ip,
            "domain-report" => Target::domain,
            "url-report" => Target::url,
            "lookup" => {
                let base_url = configured_base_url()?;
                return lookup::lookup(&input, |target| fetch_report(&base_url, target));
            }
            "plan-lookups" => {
                // The same selection as `lookup`, with each chosen target
                // returned instead of fetched.
                let planned = lookup::lookup(&input, |target| {
                    Ok(json!({"type": target.kind(), "value": target.value(), "internal": false}))
                })?;
                return Ok(json!({ "observables": planned["results"] }));
            }
            other => return Err(PluginError::UnknownAction(other.to_string())),
        };
        let field = single_input_field(action);
        let target = parse(require_str(&input, field)?)
            .map_err(|error| PluginError::BadInput(format!("`{field}`: {error}")))?;
        fetch_report(&configured_base_url()?, &target)
    }
}

palisade_sdk::export_plugin!(VirusTotal);

fn configured_base_url() -> Result<String, PluginError> {
    client::base_url(palisade_sdk::config::get(BASE_URL_SETTING).as_deref())
}

/// Returns the input field of a single-report action.
fn single_input_field(action: &str) -> &'static str {
    match action {
        "file-report" => "hash",
        "ip-report" => "ip",
        "domain-report" => "domain",
        _ => "url",
    }
}

fn single_input_schema(field: &str, description: &str) -> Value {
    json!({
        "type": "object",
        "required": [field],
        "properties": {
            field: {"type": "string", "description": description}
        }
    })
}

fn report_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "value", "found", "verdict", "stats", "reputation", "permalink"],
        "properties": {
            "type": {"enum": ["md5", "sha1", "sha256", "ipv4", "ipv6", "domain", "url"]},
            "value": {"type": "string"},
            "found": {"type": "boolean", "description": "False when VirusTotal has no report (HTTP 404)."},
            "verdict": {"enum": ["malicious", "suspicious", "harmless", "undetected", "unknown"]},
            "stats": {
                "type": ["object", "null"],
                "description": "Engines per result in the latest analysis (`last_analysis_stats`).",
                "additionalProperties": {"type": "integer"}
            },
            "reputation": {"type": ["integer", "null"]},
            "permalink": {"type": "string"},
            "names": {"type": "array", "items": {"type": "string"}, "description": "Files only: up to 20 submitted file names."},
            "type_description": {"type": "string", "description": "Files only."},
            "meaningful_name": {"type": "string", "description": "Files only."}
        }
    })
}

fn lookup_input_schema() -> Value {
    json!({
        "type": "object",
        "required": ["observables"],
        "properties": {
            "observables": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "value"],
                    "properties": {
                        "type": {"type": "string"},
                        "value": {"type": "string"},
                        "internal": {"type": "boolean"}
                    }
                }
            },
            "max_lookups": {
                "type": "integer",
                "minimum": 0,
                "default": lookup::DEFAULT_MAX_LOOKUPS,
                "description": "Maximum number of API requests, counting failed ones."
            }
        }
    })
}

fn lookup_output_schema() -> Value {
    json!({
        "type": "object",
        "required": ["results", "skipped"],
        "properties": {
            "results": {"type": "array", "items": report_schema()},
            "skipped": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "value", "reason"],
                    "properties": {
                        "type": {"type": "string"},
                        "value": {"type": "string"},
                        "reason": {"type": "string"}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_requests_virustotal_and_base_url() {
        let info = VirusTotal::describe();
        assert_eq!(info.name, "virustotal");
        assert_eq!(
            info.capabilities.http_origins,
            vec!["https://www.virustotal.com", "config:base_url"]
        );
        assert_eq!(info.capabilities.secrets, vec!["virustotal-api-key"]);
        assert_eq!(info.capabilities.config, vec!["base_url"]);
        assert!(!info.capabilities.key_value);
        let names: Vec<&str> = info
            .actions
            .iter()
            .map(|action| action.name.as_str())
            .collect();
        assert_eq!(
            names,
            vec![
                "file-report",
                "ip-report",
                "domain-report",
                "url-report",
                "lookup",
                "plan-lookups"
            ]
        );
        for action in &info.actions {
            assert!(!action.side_effects, "{} has side effects", action.name);
            let input: Value = serde_json::from_str(&action.input_schema).unwrap();
            assert_eq!(input["type"], "object", "input schema of {}", action.name);
        }
    }

    #[test]
    fn invalid_single_inputs_fail_before_any_request() {
        let cases = [
            ("file-report", json!({"hash": "not-a-hash"}), "`hash`"),
            ("file-report", json!({}), "`hash`"),
            ("ip-report", json!({"ip": "999.1.1.1"}), "`ip`"),
            ("domain-report", json!({"domain": "../admin"}), "`domain`"),
            ("url-report", json!({"url": ""}), "`url`"),
        ];
        for (action, input, expected) in cases {
            match VirusTotal::invoke(action, input.clone()) {
                Err(PluginError::BadInput(message)) => {
                    assert!(message.contains(expected), "{action} {input}: {message}")
                }
                other => panic!("{action} {input}: expected bad-input, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_action_is_rejected() {
        let error = VirusTotal::invoke("scan-file", json!({})).unwrap_err();
        assert!(matches!(error, PluginError::UnknownAction(name) if name == "scan-file"));
    }
}
