//! Threat-intel matcher: loads indicators from STIX 2.1 bundles and CSV
//! block lists into the plugin's key-value namespace, and matches
//! observables against them.
//!
//! The host starts a fresh instance for every call, so every indicator lives
//! in key-value storage between `load-*` and `match` calls.
//!
//! # Key layout
//!
//! - `meta:<indicator id>`: the indicator's metadata as JSON (id, name,
//!   description, indicator_types, valid_from, valid_until and its value in
//!   milliseconds, source, malware names, the STIX pattern, and the other
//!   columns of a CSV row).
//! - `ind:<type>:<value>`: a JSON list of the ids of indicators with this
//!   exact value, for example `ind:sha256:ef53…` or `ind:ipv4:10.0.0.1`.
//!   Several indicators, from several sources, can share one value.
//! - `net:<ipv4|ipv6>:<network>/<prefix>`: the same list for a network
//!   indicator, for example `net:ipv4:10.0.0.0/8`. `match` reads these keys
//!   with `list-keys`, once per address family and call, and tests each
//!   address against every network. A prefix as long as the address (`/32`)
//!   is stored as an exact value instead.
//!
//! Values are normalised the same way on load and on match (see
//! [`observable::normalize`]), so the keys compare as plain strings.
//!
//! STIX indicators keep their own id. A CSV row gets the id
//! `<source>:<type>:<value>`, so loading a feed again overwrites its rows.
//! Expiry (`valid_until`) is checked at match time against the host clock.
//! No action removes indicators yet.

mod csv;
mod observable;
mod pattern;
mod stix;
mod store;
mod time;

use palisade_sdk::{
    Capabilities, Plugin, PluginError, PluginInfo, Value, action, json, require_str,
};

use crate::csv::{FeedOptions, INDICATOR_COLUMNS, read_feed};
use crate::observable::ObservableType;
use crate::store::{HostStore, LoadReport, load, match_observables, parse_observables};

/// Indicator types given to CSV rows when the input names none, because
/// block lists name malicious infrastructure.
const DEFAULT_CSV_INDICATOR_TYPES: [&str; 1] = ["malicious-activity"];

struct TiMatcher;

impl Plugin for TiMatcher {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "ti-matcher".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "Stores threat-intel indicators from STIX 2.1 and CSV feeds and matches observables against them.".to_string(),
            actions: vec![
                action(
                    "load-stix",
                    "Stores the STIX-pattern indicators of a STIX 2.1 bundle.",
                    load_stix_input_schema(),
                    load_output_schema(),
                    false,
                ),
                action(
                    "load-csv",
                    "Stores the indicators of a CSV block list such as an abuse.ch feed.",
                    load_csv_input_schema(),
                    load_output_schema(),
                    false,
                ),
                action(
                    "match",
                    "Returns the stored, unexpired indicators that each observable matches.",
                    match_input_schema(),
                    match_output_schema(),
                    false,
                ),
            ],
            capabilities: Capabilities {
                http_origins: Vec::new(),
                secrets: Vec::new(),
                key_value: true,
                config: Vec::new(),
            },
        }
    }

    fn invoke(action: &str, input: Value) -> Result<Value, PluginError> {
        match action {
            "load-stix" => load_stix(&input),
            "load-csv" => load_csv(&input),
            "match" => match_action(&input),
            other => Err(PluginError::UnknownAction(other.to_string())),
        }
    }
}

palisade_sdk::export_plugin!(TiMatcher);

fn load_stix(input: &Value) -> Result<Value, PluginError> {
    let source = require_source(input)?;
    let parsed_text;
    let bundle = match input.get("bundle") {
        Some(Value::String(text)) => {
            parsed_text = serde_json::from_str::<Value>(text).map_err(|error| {
                PluginError::BadInput(format!("`bundle` is a string but not valid JSON: {error}"))
            })?;
            &parsed_text
        }
        Some(bundle @ Value::Object(_)) => bundle,
        _ => {
            return Err(PluginError::BadInput(
                "missing field `bundle`: expected a STIX bundle object or its JSON text"
                    .to_string(),
            ));
        }
    };

    let contents = stix::read_bundle(bundle, source).map_err(PluginError::BadInput)?;
    let report = load(&mut HostStore, &contents.indicators, contents.skipped)?;
    log_load("load-stix", source, &report);
    to_output(&report)
}

fn load_csv(input: &Value) -> Result<Value, PluginError> {
    let source = require_source(input)?;
    let text = require_str(input, "csv")?;
    let column = optional_str(input, "column")?;
    let kind = match optional_str(input, "type")? {
        None => None,
        Some(name) => Some(ObservableType::parse(name).ok_or_else(|| {
            let known: Vec<&str> = ObservableType::ALL
                .iter()
                .map(|kind| kind.as_str())
                .collect();
            PluginError::BadInput(format!(
                "`type` {name:?} is not one of {}",
                known.join(", ")
            ))
        })?),
    };
    let indicator_types = match input.get("indicator_types") {
        None | Some(Value::Null) => DEFAULT_CSV_INDICATOR_TYPES.map(str::to_string).to_vec(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| {
                PluginError::BadInput("`indicator_types` must be a list of strings".to_string())
            })?,
        Some(_) => {
            return Err(PluginError::BadInput(
                "`indicator_types` must be a list of strings".to_string(),
            ));
        }
    };

    let options = FeedOptions {
        source,
        column,
        kind,
        indicator_types,
    };
    let contents = read_feed(text, &options).map_err(PluginError::BadInput)?;
    palisade_sdk::log::debug(&format!("load-csv: indicator column `{}`", contents.column));
    let report = load(&mut HostStore, &contents.indicators, contents.skipped)?;
    log_load("load-csv", source, &report);
    to_output(&report)
}

fn match_action(input: &Value) -> Result<Value, PluginError> {
    let observables = parse_observables(input)?;
    let now_ms = palisade_sdk::clock::now_ms();
    let outcome = match_observables(&HostStore, &observables, now_ms)?;
    for warning in &outcome.warnings {
        palisade_sdk::log::warn(&format!("match: {warning}"));
    }
    Ok(json!({ "hits": outcome.hits }))
}

fn require_source(input: &Value) -> Result<&str, PluginError> {
    let source = require_str(input, "source")?;
    if source.trim().is_empty() {
        return Err(PluginError::BadInput(
            "`source` must not be empty".to_string(),
        ));
    }
    Ok(source)
}

fn optional_str<'a>(input: &'a Value, name: &str) -> Result<Option<&'a str>, PluginError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(PluginError::BadInput(format!("`{name}` must be a string"))),
    }
}

fn log_load(action: &str, source: &str, report: &LoadReport) {
    palisade_sdk::log::debug(&format!(
        "{action}: source {source:?}, {} indicators and {} values stored, {} skipped",
        report.loaded,
        report.values,
        report.skipped.len()
    ));
}

fn to_output(report: &LoadReport) -> Result<Value, PluginError> {
    serde_json::to_value(report)
        .map_err(|error| PluginError::Internal(format!("cannot encode the load report: {error}")))
}

fn load_stix_input_schema() -> Value {
    json!({
        "type": "object",
        "required": ["bundle", "source"],
        "properties": {
            "bundle": {
                "description": "STIX 2.1 bundle, as an object or as JSON text.",
                "type": ["object", "string"]
            },
            "source": {"type": "string", "minLength": 1, "description": "Name of the feed, stored with each indicator."}
        }
    })
}

fn load_csv_input_schema() -> Value {
    json!({
        "type": "object",
        "required": ["csv", "source"],
        "properties": {
            "csv": {"type": "string", "description": "CSV text: `#` comment lines, a header row, then rows."},
            "source": {"type": "string", "minLength": 1},
            "column": {
                "type": "string",
                "description": format!("Header name of the indicator column. Without it, the first of these is used: {}.", INDICATOR_COLUMNS.join(", "))
            },
            "type": {
                "enum": ["ipv4", "ipv6", "domain", "url", "md5", "sha1", "sha256", "email"],
                "description": "Type of every value. Without it, each value's type is inferred."
            },
            "indicator_types": {
                "type": "array",
                "items": {"type": "string"},
                "description": "STIX indicator types for every row; defaults to [\"malicious-activity\"]."
            }
        }
    })
}

fn load_output_schema() -> Value {
    json!({
        "type": "object",
        "required": ["loaded", "values", "skipped"],
        "properties": {
            "loaded": {"type": "integer", "description": "Indicators with at least one value stored."},
            "values": {"type": "integer", "description": "Indicator values stored."},
            "skipped": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "reason"],
                    "properties": {
                        "id": {"type": "string", "description": "Indicator id, or `line N` for a CSV row."},
                        "reason": {"type": "string"}
                    }
                }
            }
        }
    })
}

fn observable_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "value"],
        "properties": {
            "type": {"type": "string"},
            "value": {"type": "string"},
            "internal": {"type": "boolean"}
        }
    })
}

fn match_input_schema() -> Value {
    json!({
        "type": "object",
        "required": ["observables"],
        "properties": {
            "observables": {"type": "array", "items": observable_schema()}
        }
    })
}

fn match_output_schema() -> Value {
    let nullable_string = json!({"type": ["string", "null"]});
    let string_list = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "type": "object",
        "required": ["hits"],
        "properties": {
            "hits": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "value", "indicators"],
                    "properties": {
                        "type": {"type": "string"},
                        "value": {"type": "string"},
                        "indicators": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "name", "source", "indicator_types", "malware", "match"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "name": nullable_string,
                                    "description": nullable_string,
                                    "source": {"type": "string"},
                                    "indicator_types": string_list,
                                    "malware": string_list,
                                    "valid_until": nullable_string,
                                    "match": {"enum": ["exact", "network"]},
                                    "network": {"type": "string", "description": "The matching network, for `network` matches."},
                                    "attributes": {"type": "object", "description": "Other columns of a CSV row."}
                                }
                            }
                        }
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
    fn describe_lists_actions_and_key_value() {
        let info = TiMatcher::describe();
        assert_eq!(info.name, "ti-matcher");
        let names: Vec<&str> = info
            .actions
            .iter()
            .map(|action| action.name.as_str())
            .collect();
        assert_eq!(names, vec!["load-stix", "load-csv", "match"]);
        assert!(info.capabilities.key_value);
        assert!(info.capabilities.http_origins.is_empty());
        for action in &info.actions {
            for schema in [&action.input_schema, &action.output_schema] {
                let parsed: Value = serde_json::from_str(schema).unwrap();
                assert_eq!(parsed["type"], "object", "schema of {}", action.name);
            }
        }
    }

    #[test]
    fn unknown_action_is_rejected() {
        let error = TiMatcher::invoke("delete-everything", json!({})).unwrap_err();
        assert!(matches!(error, PluginError::UnknownAction(name) if name == "delete-everything"));
    }

    #[test]
    fn inputs_are_checked_before_storage() {
        let cases = [
            ("load-stix", json!({"bundle": {}}), "`source`"),
            ("load-stix", json!({"source": "x"}), "`bundle`"),
            (
                "load-stix",
                json!({"source": "x", "bundle": "{"}),
                "not valid JSON",
            ),
            (
                "load-stix",
                json!({"source": " ", "bundle": {}}),
                "`source` must not be empty",
            ),
            (
                "load-stix",
                json!({"source": "x", "bundle": {"type": "bundle"}}),
                "`objects`",
            ),
            ("load-csv", json!({"source": "x"}), "`csv`"),
            (
                "load-csv",
                json!({"source": "x", "csv": "ip\n1.2.3.4\n", "type": "hostname"}),
                "`type`",
            ),
            (
                "load-csv",
                json!({"source": "x", "csv": "ip\n", "column": 3}),
                "`column`",
            ),
            (
                "load-csv",
                json!({"source": "x", "csv": "ip\n", "indicator_types": "c2"}),
                "`indicator_types`",
            ),
            (
                "load-csv",
                json!({"source": "x", "csv": "a,b\n1,2\n"}),
                "none of the indicator columns",
            ),
            ("match", json!({}), "`observables`"),
        ];
        for (action, input, expected) in cases {
            match TiMatcher::invoke(action, input.clone()) {
                Err(PluginError::BadInput(message)) => assert!(
                    message.contains(expected),
                    "{action} {input}: {message:?} does not contain {expected:?}"
                ),
                other => panic!("{action} {input}: expected bad-input, got {other:?}"),
            }
        }
    }
}
