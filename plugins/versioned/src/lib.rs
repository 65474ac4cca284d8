//! Test fixture for plugin swaps. Its version is the build-time variable
//! `PALISADE_FIXTURE_VERSION` (the package version when unset), so one
//! source builds as many versions as a test needs.
//!
//! How it misbehaves: with `PALISADE_FIXTURE_BROKEN` set at build time,
//! its `self-test` action fails, so the host must refuse to install it.
//! With `PALISADE_FIXTURE_NO_STAMP` set, it lacks the `stamp` action, so
//! the host must refuse to swap it in under a playbook that calls `stamp`.

use palisade_sdk::{Capabilities, Plugin, PluginError, PluginInfo, Value, action, json};

const VERSION: &str = match option_env!("PALISADE_FIXTURE_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};
const BROKEN: bool = option_env!("PALISADE_FIXTURE_BROKEN").is_some();
const NO_STAMP: bool = option_env!("PALISADE_FIXTURE_NO_STAMP").is_some();

struct Versioned;

impl Plugin for Versioned {
    fn describe() -> PluginInfo {
        let mut actions = vec![action(
            "self-test",
            "Checks that the plugin works; the host runs it before installing.",
            json!({}),
            json!({}),
            false,
        )];
        if !NO_STAMP {
            actions.push(action(
                "stamp",
                "Returns the input with this build's version under `versions`.",
                json!({ "type": "object" }),
                json!({ "type": "object" }),
                false,
            ));
        }
        PluginInfo {
            name: "versioned".to_string(),
            version: VERSION.to_string(),
            description: "Stamps documents with its own version.".to_string(),
            actions,
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
            "self-test" if BROKEN => Err(PluginError::Internal(
                "self-test failed: this build is broken on purpose".to_string(),
            )),
            "self-test" => Ok(json!({ "ok": true })),
            "stamp" if !NO_STAMP => {
                let mut output = input;
                let Some(fields) = output.as_object_mut() else {
                    return Err(PluginError::BadInput("expected a JSON object".to_string()));
                };
                let versions = fields
                    .entry("versions")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Some(list) = versions.as_array_mut() {
                    list.push(Value::String(VERSION.to_string()));
                }
                Ok(output)
            }
            other => Err(PluginError::UnknownAction(other.to_string())),
        }
    }
}

palisade_sdk::export_plugin!(Versioned);
