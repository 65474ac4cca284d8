//! The plugin registry: every installed version of every plugin, which
//! version is active, and the history of installs, swaps and rollbacks.
//!
//! Trees:
//! - `plugin_versions`: `NAME \0 VERSION` to a [`PluginVersionRecord`];
//! - `plugin_active`: `NAME` to the active version;
//! - `plugin_events`: `NAME \0 SEQ` (big-endian) to a [`PluginEvent`].
//!
//! The component files live outside the database, under the data
//! directory; a record names its file and the SHA-256 of its contents.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use crate::StoreError;
use crate::sled_store::{SledStore, database, decode, encode};

const VERSIONS: &str = "plugin_versions";
const ACTIVE: &str = "plugin_active";
const EVENTS: &str = "plugin_events";

/// Signer of a plugin version, as its signature was verified at install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSigner {
    pub key_id: String,
    pub key_name: String,
}

/// One installed version of a plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginVersionRecord {
    pub name: String,
    pub version: String,
    /// SHA-256 of the component without its embedded signature, hex.
    pub digest: String,
    /// File name of the stored component, under the plugin store directory.
    pub file: String,
    /// The detached signature it was installed with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached_signature: Option<String>,
    /// `None` when it was installed unsigned under `allow_unsigned`.
    pub signer: Option<PluginSigner>,
    pub installed_at: DateTime<Utc>,
    pub installed_by: String,
    /// Origin: `upload by TOKEN`, `cli:PATH` or `directory:PATH`.
    pub source: String,
    pub description: String,
    pub actions: Vec<String>,
    /// Capabilities the plugin requested, as `describe` returned them.
    pub capabilities: serde_json::Value,
    pub imports: Vec<String>,
}

/// One change to a plugin's versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginEvent {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub plugin: String,
    /// `installed`, `activated` or `rolled_back`.
    pub action: String,
    pub version: String,
    /// The version that was active before, for `activated` and
    /// `rolled_back`.
    pub previous: Option<String>,
    pub actor: String,
}

fn version_key(name: &str, version: &str) -> Vec<u8> {
    let mut key = name.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(version.as_bytes());
    key
}

fn prefix(name: &str) -> Vec<u8> {
    let mut key = name.as_bytes().to_vec();
    key.push(0);
    key
}

impl SledStore {
    /// Stores an installed version. Writing the same name and version again
    /// replaces its record.
    pub fn put_plugin_version(&self, record: &PluginVersionRecord) -> Result<(), StoreError> {
        let tree = self.tree(VERSIONS)?;
        tree.insert(version_key(&record.name, &record.version), encode(record))
            .map_err(database)?;
        Ok(())
    }

    pub fn plugin_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<PluginVersionRecord>, StoreError> {
        let key = version_key(name, version);
        match self.tree(VERSIONS)?.get(&key).map_err(database)? {
            Some(bytes) => Ok(Some(decode(VERSIONS, &key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Every installed version, by plugin name and then version text.
    pub fn plugin_versions(&self) -> Result<Vec<PluginVersionRecord>, StoreError> {
        let mut records = Vec::new();
        for entry in self.tree(VERSIONS)?.iter() {
            let (key, bytes) = entry.map_err(database)?;
            records.push(decode(VERSIONS, &key, &bytes)?);
        }
        Ok(records)
    }

    /// Returns the installed versions of plugin `name`.
    pub fn versions_of_plugin(&self, name: &str) -> Result<Vec<PluginVersionRecord>, StoreError> {
        let mut records = Vec::new();
        for entry in self.tree(VERSIONS)?.scan_prefix(prefix(name)) {
            let (key, bytes) = entry.map_err(database)?;
            records.push(decode(VERSIONS, &key, &bytes)?);
        }
        Ok(records)
    }

    /// The active version of plugin `name`.
    pub fn active_plugin_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .tree(ACTIVE)?
            .get(name.as_bytes())
            .map_err(database)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The active version of every plugin, by name.
    pub fn active_plugin_versions(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut active = Vec::new();
        for entry in self.tree(ACTIVE)?.iter() {
            let (key, value) = entry.map_err(database)?;
            active.push((
                String::from_utf8_lossy(&key).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            ));
        }
        Ok(active)
    }

    /// Records `event` in the plugin's history and, for `activated` and
    /// `rolled_back`, makes its version active, in one transaction.
    /// Fills in the event's sequence number and returns it.
    pub fn record_plugin_event(&self, mut event: PluginEvent) -> Result<PluginEvent, StoreError> {
        let active = self.tree(ACTIVE)?;
        let events = self.tree(EVENTS)?;
        let seq = self.db().generate_id().map_err(database)?;
        event.seq = seq;
        let mut key = prefix(&event.plugin);
        key.extend_from_slice(&seq.to_be_bytes());
        let activates = event.action != "installed";
        (&active, &events)
            .transaction(|(active, events)| {
                if activates {
                    active.insert(event.plugin.as_bytes(), event.version.as_bytes())?;
                }
                events.insert(key.as_slice(), encode(&event))?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|error| StoreError::Database(format!("{error:?}")))?;
        self.db().flush().map_err(database)?;
        Ok(event)
    }

    /// Returns the history of plugin `name`, oldest first.
    pub fn plugin_events(&self, name: &str) -> Result<Vec<PluginEvent>, StoreError> {
        let mut records = Vec::new();
        for entry in self.tree(EVENTS)?.scan_prefix(prefix(name)) {
            let (key, bytes) = entry.map_err(database)?;
            records.push(decode(EVENTS, &key, &bytes)?);
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: &str) -> PluginVersionRecord {
        PluginVersionRecord {
            name: name.into(),
            version: version.into(),
            digest: "ab".repeat(32),
            file: format!("{name}-{version}.wasm"),
            detached_signature: None,
            signer: Some(PluginSigner {
                key_id: "0123456789abcdef".into(),
                key_name: "acme".into(),
            }),
            installed_at: Utc::now(),
            installed_by: "admin".into(),
            source: "cli".into(),
            description: String::new(),
            actions: vec!["lookup".into()],
            capabilities: serde_json::json!({}),
            imports: Vec::new(),
        }
    }

    fn event(plugin: &str, action: &str, version: &str) -> PluginEvent {
        PluginEvent {
            seq: 0,
            at: Utc::now(),
            plugin: plugin.into(),
            action: action.into(),
            version: version.into(),
            previous: None,
            actor: "test".into(),
        }
    }

    #[test]
    fn versions_and_history_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_plugin_version(&record("vt", "1.0.0")).unwrap();
            store.put_plugin_version(&record("vt", "1.1.0")).unwrap();
            store
                .put_plugin_version(&record("vt-extra", "2.0.0"))
                .unwrap();
            store
                .record_plugin_event(event("vt", "installed", "1.0.0"))
                .unwrap();
            store
                .record_plugin_event(event("vt", "activated", "1.0.0"))
                .unwrap();
            store
                .record_plugin_event(event("vt", "activated", "1.1.0"))
                .unwrap();
            store
                .record_plugin_event(event("vt", "rolled_back", "1.0.0"))
                .unwrap();
        }
        let store = crate::test_support::reopen(dir.path(), SledStore::open);
        let versions: Vec<_> = store
            .versions_of_plugin("vt")
            .unwrap()
            .into_iter()
            .map(|record| record.version)
            .collect();
        assert_eq!(
            versions,
            ["1.0.0", "1.1.0"],
            "the prefix must not match vt-extra"
        );
        assert_eq!(store.plugin_versions().unwrap().len(), 3);
        assert_eq!(
            store.active_plugin_version("vt").unwrap().as_deref(),
            Some("1.0.0")
        );
        assert_eq!(store.active_plugin_version("vt-extra").unwrap(), None);
        let history: Vec<_> = store
            .plugin_events("vt")
            .unwrap()
            .into_iter()
            .map(|event| (event.action, event.version))
            .collect();
        assert_eq!(
            history,
            [
                ("installed".to_string(), "1.0.0".to_string()),
                ("activated".into(), "1.0.0".into()),
                ("activated".into(), "1.1.0".into()),
                ("rolled_back".into(), "1.0.0".into()),
            ]
        );
        assert_eq!(
            store.plugin_version("vt", "1.1.0").unwrap(),
            Some(record("vt", "1.1.0")).map(|mut r| {
                r.installed_at = store
                    .plugin_version("vt", "1.1.0")
                    .unwrap()
                    .unwrap()
                    .installed_at;
                r
            })
        );
    }
}
