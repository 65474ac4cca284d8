//! Trivial plugin: `echo` returns its input unchanged and calls no import.
//! It measures the host's per-step overhead and checks the plumbing.

use palisade_sdk::{Capabilities, Plugin, PluginError, PluginInfo, Value, action, json};

struct Noop;

impl Plugin for Noop {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "noop".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "Returns its input unchanged.".to_string(),
            actions: vec![action(
                "echo",
                "Returns the input document unchanged.",
                json!({}),
                json!({}),
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
            "echo" => Ok(input),
            other => Err(PluginError::UnknownAction(other.to_string())),
        }
    }
}

palisade_sdk::export_plugin!(Noop);
