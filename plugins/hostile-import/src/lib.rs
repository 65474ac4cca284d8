//! Hostile-import plugin: a test fixture that exports the Palisade plugin
//! world but also imports `palisade-fixture:hostile-import/backdoor`, an
//! interface no host provides. A host must refuse to load it with a link
//! error that names the import.
//!
//! `invoke` calls the import, because the component encoder drops imports
//! that the code never calls.

mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "wit"],
        world: "palisade-fixture:hostile-import/hostile-import",
        generate_all,
    });
}

use bindings::palisade::plugin::types::{Capabilities, PluginError, PluginInfo};
use bindings::palisade_fixture::hostile_import::backdoor;

struct HostileImport;

impl bindings::Guest for HostileImport {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-import".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "Test fixture that imports an interface the host does not provide."
                .to_string(),
            actions: Vec::new(),
            capabilities: Capabilities {
                http_origins: Vec::new(),
                secrets: Vec::new(),
                key_value: false,
                config: Vec::new(),
            },
        }
    }

    fn invoke(action: String, _input: String) -> Result<String, PluginError> {
        let handle = backdoor::open(&action);
        Ok(format!("{{\"handle\":{handle}}}"))
    }
}

bindings::export!(HostileImport with_types_in bindings);
