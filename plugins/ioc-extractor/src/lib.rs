//! Plugin `ioc-extractor`: finds indicators of compromise in alert text and
//! JSON documents.
//!
//! The one action, `extract`, returns IPv4 and IPv6 addresses, domains,
//! URLs, email addresses and MD5, SHA-1 and SHA-256 digests, refanged,
//! normalised, deduplicated and counted, each marked internal or not. It is
//! a pure transform: it calls no host import, so the logic below runs the
//! same in unit tests on the build machine.
//!
//! Precision comes first, because an analyst acts on every observable, so
//! each scanner module lists the look-alikes it rejects. A URL's host and an
//! email's domain are reported only inside the URL or email, never again as
//! a separate domain. A domain appears on its own only where it is written
//! bare.

mod domain;
mod email;
mod extract;
mod hash;
mod internal;
mod ip;
mod refang;
mod schema;
mod source;
mod tld;
mod url;

#[cfg(test)]
mod sample_tests;

use palisade_sdk::{Capabilities, Plugin, PluginError, PluginInfo, Value, action, json};

use crate::extract::Extractor;
use crate::internal::{InternalScope, Network};
use crate::source::Field;

const INPUT_FIELDS: &[&str] = &["text", "document", "internal_networks", "internal_domains"];

struct IocExtractor;

impl Plugin for IocExtractor {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "ioc-extractor".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "Extracts IPs, domains, URLs, email addresses and file hashes from alert text and JSON documents.".to_string(),
            actions: vec![action(
                "extract",
                "Returns the refanged, deduplicated observables found in `text` and in every string of `document`, each counted and marked internal or external.",
                schema::input(),
                schema::output(),
                false,
            )],
            capabilities: Capabilities {
                http_origins: Vec::new(),
                secrets: Vec::new(),
                key_value: false,
                config: Vec::new(),
            },
        }
    }

    fn invoke(action: &str, input: Value) -> Result<Value, PluginError> {
        match action {
            "extract" => extract(&input),
            other => Err(PluginError::UnknownAction(other.to_string())),
        }
    }
}

palisade_sdk::export_plugin!(IocExtractor);

/// Runs the `extract` action on a parsed input document.
fn extract(input: &Value) -> Result<Value, PluginError> {
    let Some(fields) = input.as_object() else {
        return Err(bad_input("input must be a JSON object"));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|key| !INPUT_FIELDS.contains(&key.as_str()))
    {
        return Err(bad_input(&format!(
            "unknown field `{unknown}`; expected one of `text`, `document`, `internal_networks`, `internal_domains`"
        )));
    }
    let text = match fields.get("text") {
        None => None,
        Some(Value::String(text)) => Some(text.as_str()),
        Some(_) => return Err(bad_input("field `text` must be a string")),
    };
    let document = fields.get("document");
    if text.is_none() && document.is_none() {
        return Err(bad_input("missing field: give `text`, `document` or both"));
    }
    let scope = InternalScope::new(parse_networks(input)?, parse_domains(input)?);

    let mut extractor = Extractor::new(&scope);
    if let Some(text) = text {
        extractor.scan_text(text, Field::Plain);
    }
    if let Some(document) = document {
        extractor.scan_document(document);
    }
    let observables: Vec<Value> = extractor
        .into_observables()
        .iter()
        .map(|observable| observable.to_json())
        .collect();
    Ok(json!({ "observables": observables }))
}

fn parse_networks(input: &Value) -> Result<Vec<Network>, PluginError> {
    string_list(input, "internal_networks")?
        .iter()
        .enumerate()
        .map(|(index, text)| {
            Network::parse(text).ok_or_else(|| {
                bad_input(&format!(
                    "`internal_networks[{index}]` is not a valid CIDR block: {text:?}; expected a form such as `10.20.0.0/16` or `fd00::/8`"
                ))
            })
        })
        .collect()
}

fn parse_domains(input: &Value) -> Result<Vec<String>, PluginError> {
    let domains = string_list(input, "internal_domains")?;
    for (index, domain) in domains.iter().enumerate() {
        let trimmed = domain.trim_matches('.');
        let valid = !trimmed.is_empty()
            && trimmed.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
            });
        if !valid {
            return Err(bad_input(&format!(
                "`internal_domains[{index}]` is not a valid domain suffix: {domain:?}; expected a form such as `corp.example`"
            )));
        }
    }
    Ok(domains)
}

/// Returns the optional array of strings `name`, empty when absent.
fn string_list(input: &Value, name: &str) -> Result<Vec<String>, PluginError> {
    let Some(value) = input.get(name) else {
        return Ok(Vec::new());
    };
    let Some(items) = value.as_array() else {
        return Err(bad_input(&format!(
            "field `{name}` must be an array of strings"
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            item.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad_input(&format!("`{name}[{index}]` must be a string")))
        })
        .collect()
}

fn bad_input(message: &str) -> PluginError {
    PluginError::BadInput(message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: Value) -> Result<Value, PluginError> {
        IocExtractor::invoke("extract", input)
    }

    fn bad_input_message(input: Value) -> String {
        match run(input) {
            Err(PluginError::BadInput(message)) => message,
            other => panic!("expected bad-input, got {other:?}"),
        }
    }

    #[test]
    fn describe_declares_a_pure_action() {
        let info = IocExtractor::describe();
        assert_eq!(info.name, "ioc-extractor");
        assert_eq!(info.actions.len(), 1);
        assert_eq!(info.actions[0].name, "extract");
        assert!(!info.actions[0].side_effects);
        assert!(info.capabilities.http_origins.is_empty());
        assert!(info.capabilities.secrets.is_empty());
        assert!(!info.capabilities.key_value);
        assert!(info.capabilities.config.is_empty());
        let input: Value = serde_json::from_str(&info.actions[0].input_schema).unwrap();
        let output: Value = serde_json::from_str(&info.actions[0].output_schema).unwrap();
        assert_eq!(input["type"], "object");
        assert_eq!(output["required"], json!(["observables"]));
    }

    #[test]
    fn extract_returns_the_documented_shape() {
        let output = run(json!({
            "text": "beacon to hxxp://evil[.]example[.]com/a from 10.0.0.7",
            "document": {"ip": "10.0.0.7"},
        }))
        .unwrap();
        assert_eq!(
            output,
            json!({"observables": [
                {"type": "ipv4", "value": "10.0.0.7", "internal": true, "defanged": false, "count": 2},
                {"type": "url", "value": "http://evil.example.com/a", "internal": false, "defanged": true, "count": 1},
            ]})
        );
    }

    #[test]
    fn caller_scope_marks_observables_internal() {
        let output = run(json!({
            "text": "81.2.69.192 https://wiki.corp.example/x vpn.corp.example",
            "internal_networks": ["81.2.69.0/24"],
            "internal_domains": ["corp.example"],
        }))
        .unwrap();
        let flags: Vec<bool> = output["observables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|observable| observable["internal"].as_bool().unwrap())
            .collect();
        assert_eq!(flags, vec![true, true, true]);
    }

    #[test]
    fn unknown_action_is_reported() {
        let result = IocExtractor::invoke("lookup", json!({"text": ""}));
        assert!(matches!(result, Err(PluginError::UnknownAction(name)) if name == "lookup"));
    }

    #[test]
    fn invalid_inputs_name_the_field() {
        let cases = [
            (json!([]), "JSON object"),
            (json!({}), "`text`, `document` or both"),
            (json!({"text": 5}), "`text`"),
            (json!({"text": "", "extra": 1}), "`extra`"),
            (
                json!({"text": "", "internal_networks": "10.0.0.0/8"}),
                "`internal_networks`",
            ),
            (
                json!({"text": "", "internal_networks": ["10.0.0.0/33"]}),
                "`internal_networks[0]`",
            ),
            (
                json!({"text": "", "internal_networks": [7]}),
                "`internal_networks[0]`",
            ),
            (
                json!({"text": "", "internal_domains": ["ok.example", ""]}),
                "`internal_domains[1]`",
            ),
            (
                json!({"text": "", "internal_domains": ["a b"]}),
                "`internal_domains[0]`",
            ),
        ];
        for (input, expected) in cases {
            let message = bad_input_message(input.clone());
            assert!(
                message.contains(expected),
                "input {input}: message {message:?}"
            );
        }
    }

    #[test]
    fn null_document_yields_nothing() {
        let output = run(json!({"document": null})).unwrap();
        assert_eq!(output, json!({"observables": []}));
    }
}
