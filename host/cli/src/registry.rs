//! The plugin registry service: install, swap, roll back and list plugin
//! versions, for the CLI, the HTTP API and the watched plugin directory.
//!
//! An install goes through these checks before anything can call the new
//! version:
//! 1. the signature, against the operator's trusted keys (unsigned only
//!    with `[trust] allow_unsigned`; a present but invalid signature is
//!    rejected even then);
//! 2. the runtime's canary check ([`Runtime::prepare`]): a component, a
//!    compatible world, known imports, a `describe` that parses, a
//!    kebab-case name and a semantic version, all compiled on the blocking
//!    pool;
//! 3. the plugin's own `self-test` action, when it offers one, run under
//!    its limits;
//! 4. every action a loaded playbook calls on it is still there.
//!
//! Then the component is written under the data directory, its record and
//! an `installed` event are stored, and (unless staged) it is published:
//! new runs get it, runs in flight keep the version they were given.
//! One lock serialises installs and activations. Plugin calls do not take
//! it, because they read the runtime's published versions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use palisade_engine::Playbook;
use palisade_runtime::{Grant, LoadError, LoadedPlugin, Runtime};
use palisade_signing::{Trust, TrustError};
use palisade_store::{PluginEvent, PluginSigner, PluginVersionRecord, SledStore, Store};
use serde::Serialize;
use serde_json::{Value, json};

use crate::audit_cmd::{PluginIdentity, audit_plugins};

/// Name of the optional action an install runs as the canary's self-test.
pub const SELF_TEST_ACTION: &str = "self-test";

/// Failure of an install, activation or rollback. Each variant maps to one
/// stable API error code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("signature check failed for {source_name}: {error}")]
    Signature {
        source_name: String,
        error: TrustError,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "plugin {plugin:?} {version} failed its self-test: {message}; the version was not installed"
    )]
    SelfTest {
        plugin: String,
        version: String,
        message: String,
    },
    #[error(
        "plugin {plugin:?} {version} lacks action {action:?}, which playbook {playbook:?} calls; keep the action, or pin the playbook to an older version under `plugins:`"
    )]
    MissingAction {
        plugin: String,
        version: String,
        playbook: String,
        action: String,
    },
    #[error(
        "plugin {plugin:?} {version} is already installed with digest {existing}, and this file has digest {digest}; give the new build a new version number"
    )]
    VersionConflict {
        plugin: String,
        version: String,
        existing: String,
        digest: String,
    },
    #[error(
        "plugin {plugin:?} has no installed version {version}; list them with `palisade plugin history {plugin}`"
    )]
    UnknownVersion { plugin: String, version: String },
    #[error("no plugin {plugin:?} is installed; list plugins with `palisade plugin list`")]
    UnknownPlugin { plugin: String },
    #[error(
        "plugin {plugin:?} has no earlier loaded version to roll back to; `palisade plugin history {plugin}` lists its activations"
    )]
    NothingToRollBack { plugin: String },
    #[error("{0}")]
    Storage(String),
}

fn storage(error: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(error.to_string())
}

/// A component whose signature checked out.
struct Checked {
    /// The component without an embedded signature section.
    unsigned: Vec<u8>,
    /// `None` when it was accepted unsigned under `allow_unsigned`.
    signer: Option<PluginSigner>,
    /// The signature document that verified it.
    signature: Option<String>,
}

/// A component to install.
pub struct InstallRequest {
    pub bytes: Vec<u8>,
    /// Text of a detached signature file, when there is one.
    pub detached_signature: Option<String>,
    /// Origin of the component, for the record and for messages:
    /// `cli:PATH`, `upload by TOKEN` or `directory:PATH`.
    pub source: String,
    /// Actor of the request: a token name, `cli` or `directory`.
    pub actor: String,
    /// Publish it once installed. A staged version only serves runs pinned
    /// to it until it is activated.
    pub activate: bool,
}

/// Outcome of an install, for the operator.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct InstallReport {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub signer: Option<PluginSigner>,
    /// The version was installed before with the same digest.
    pub already_installed: bool,
    pub active: bool,
    /// The version that was active before, when this install replaced it.
    pub replaced: Option<String>,
    pub actions: Vec<String>,
    pub imports: Vec<String>,
    /// Capabilities the plugin requests, and what the operator's grant
    /// gives it of them.
    pub requested: Value,
    pub granted: Value,
    pub self_test: bool,
    /// Time from receiving the bytes to publishing, in milliseconds.
    pub duration_ms: u64,
    pub warnings: Vec<String>,
}

/// The plugin registry of one daemon or command.
pub struct Registry {
    store: Arc<SledStore>,
    runtime: Arc<Runtime>,
    /// Directory of installed component files.
    dir: PathBuf,
    trust: Trust,
    allow_unsigned: bool,
    grants: BTreeMap<String, Grant>,
    /// For each plugin, the playbooks and actions that call it, with each
    /// playbook's version requirement.
    callers: std::sync::RwLock<BTreeMap<String, Vec<PlaybookCall>>>,
    lock: tokio::sync::Mutex<()>,
}

#[derive(Clone, Debug)]
struct PlaybookCall {
    playbook: String,
    action: String,
    requirement: Option<semver::VersionReq>,
}

impl Registry {
    pub fn new(
        store: Arc<SledStore>,
        runtime: Arc<Runtime>,
        dir: PathBuf,
        trust: Trust,
        allow_unsigned: bool,
        grants: BTreeMap<String, Grant>,
    ) -> Self {
        Self {
            store,
            runtime,
            dir,
            trust,
            allow_unsigned,
            grants,
            callers: std::sync::RwLock::new(BTreeMap::new()),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Records which actions the loaded playbooks call, for the
    /// compatibility check of later installs.
    pub fn set_playbooks(&self, playbooks: &[Playbook]) {
        let mut callers: BTreeMap<String, Vec<PlaybookCall>> = BTreeMap::new();
        for playbook in playbooks {
            for (plugin, actions) in playbook.targets() {
                for action in actions {
                    callers
                        .entry(plugin.to_string())
                        .or_default()
                        .push(PlaybookCall {
                            playbook: playbook.name.clone(),
                            action: action.to_string(),
                            requirement: playbook.version_requirement(plugin),
                        });
                }
            }
        }
        *self.callers.write().unwrap_or_else(|e| e.into_inner()) = callers;
    }

    fn grant(&self, name: &str) -> Grant {
        self.grants.get(name).cloned().unwrap_or_default()
    }

    /// Checks the signature of `bytes` and returns the component without
    /// an embedded signature, its signer, and the signature document that
    /// verified it. The stored component has no signature section, so the
    /// document is kept as a detached signature: it covers the same digest.
    fn verify(
        &self,
        bytes: &[u8],
        detached: Option<&str>,
        source: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Checked, RegistryError> {
        let signature_error = |error| RegistryError::Signature {
            source_name: source.to_string(),
            error,
        };
        let signer = match self.trust.verify(bytes, detached) {
            Ok(verified) => Some(PluginSigner {
                key_id: verified.key_id,
                key_name: verified.key_name,
            }),
            Err(TrustError::Missing) if self.allow_unsigned => {
                warnings.push(format!(
                    "{source} is unsigned and was accepted only because `[trust] allow_unsigned` is set"
                ));
                None
            }
            Err(error) => return Err(signature_error(error)),
        };
        let (unsigned, embedded) =
            palisade_signing::split(bytes).map_err(|error| signature_error(error.into()))?;
        let document = match (detached, embedded) {
            _ if signer.is_none() => None,
            (Some(text), _) => Some(text.to_string()),
            (None, Some(signature)) => Some(signature.to_json()),
            (None, None) => None,
        };
        Ok(Checked {
            unsigned,
            signer,
            signature: document,
        })
    }

    /// Installs a component: see the module documentation for the checks.
    pub async fn install(&self, request: InstallRequest) -> Result<InstallReport, RegistryError> {
        let started = Instant::now();
        let mut warnings = Vec::new();
        let Checked {
            unsigned,
            signer,
            signature,
        } = self.verify(
            &request.bytes,
            request.detached_signature.as_deref(),
            &request.source,
            &mut warnings,
        )?;
        let origin = PathBuf::from(&request.source);
        let loaded = self
            .runtime
            .prepare(unsigned.clone(), &origin, |name| self.grant(name))
            .await?;
        let name = loaded.info.name.clone();
        let version = loaded.info.version.clone();
        let conflict = |existing: &PluginVersionRecord| RegistryError::VersionConflict {
            plugin: name.clone(),
            version: version.clone(),
            existing: existing.digest.clone(),
            digest: loaded.digest.clone(),
        };
        // A version number names one build: checked before the self-test,
        // and again under the lock against a concurrent install.
        if let Some(existing) = self.installed(&name, &version)?
            && existing.digest != loaded.digest
        {
            return Err(conflict(&existing));
        }
        let self_test = self.self_test(&loaded).await?;
        if request.activate {
            self.check_callers(&loaded)?;
        }

        let _guard = self.lock.lock().await;
        let already_installed = match self.installed(&name, &version)? {
            Some(existing) if existing.digest != loaded.digest => {
                return Err(conflict(&existing));
            }
            Some(_) => true,
            None => false,
        };
        if !already_installed {
            let file = {
                let (dir, name, version) = (self.dir.clone(), name.clone(), version.clone());
                let digest = loaded.digest.clone();
                self.blocking(move |_| write_component(&dir, &name, &version, &digest, &unsigned))
                    .await?
            };
            let record = PluginVersionRecord {
                name: name.clone(),
                version: version.clone(),
                digest: loaded.digest.clone(),
                file,
                detached_signature: signature,
                signer: signer.clone(),
                installed_at: Utc::now(),
                installed_by: request.actor.clone(),
                source: request.source.clone(),
                description: loaded.info.description.clone(),
                actions: action_names(&loaded),
                capabilities: serde_json::to_value(&loaded.info.capabilities).unwrap_or_default(),
                imports: loaded.imports.clone(),
            };
            self.blocking(move |store| store.put_plugin_version(&record).map_err(storage))
                .await?;
            self.record_event(&loaded, "installed", None, &request.actor)
                .await?;
            self.runtime.add_version(loaded.clone())?;
        }
        let active_now = self.runtime.plugin(&name).map(|p| p.info.version.clone());
        let mut replaced = None;
        if request.activate && active_now.as_deref() != Some(&version) {
            replaced = self.publish(&loaded, "activated", &request.actor).await?;
        } else if active_now.as_deref() == Some(&version)
            && self.store.active_plugin_version(&name).map_err(storage)? != Some(version.clone())
        {
            // The first version of a plugin became active when it was
            // added; the registry records that too.
            self.record_event(&loaded, "activated", None, &request.actor)
                .await?;
        }
        let active = self
            .runtime
            .plugin(&name)
            .is_some_and(|p| p.info.version == version);
        tracing::info!(
            plugin.name = %name,
            plugin.version = %version,
            signer = signer.as_ref().map(|s| s.key_name.as_str()).unwrap_or("unsigned"),
            already_installed,
            active,
            actor = %request.actor,
            "plugin installed"
        );
        Ok(InstallReport {
            name,
            version,
            digest: loaded.digest.clone(),
            signer,
            already_installed,
            active,
            replaced,
            actions: action_names(&loaded),
            imports: loaded.imports.clone(),
            requested: serde_json::to_value(&loaded.info.capabilities).unwrap_or_default(),
            granted: granted_summary(&loaded),
            self_test,
            duration_ms: started.elapsed().as_millis() as u64,
            warnings,
        })
    }

    fn installed(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<PluginVersionRecord>, RegistryError> {
        self.store.plugin_version(name, version).map_err(storage)
    }

    /// Runs the plugin's `self-test` action, when it offers one. Returns
    /// whether it ran.
    async fn self_test(&self, loaded: &Arc<LoadedPlugin>) -> Result<bool, RegistryError> {
        if loaded.info.action(SELF_TEST_ACTION).is_none() {
            return Ok(false);
        }
        match self
            .runtime
            .invoke_loaded(loaded, SELF_TEST_ACTION, &json!({}))
            .await
        {
            Ok(_) => Ok(true),
            Err(failure) => Err(RegistryError::SelfTest {
                plugin: loaded.info.name.clone(),
                version: loaded.info.version.clone(),
                message: failure.error.to_string(),
            }),
        }
    }

    /// Rejects a version that lacks an action a loaded playbook calls,
    /// unless that playbook's requirement excludes the version anyway.
    fn check_callers(&self, loaded: &LoadedPlugin) -> Result<(), RegistryError> {
        let callers = self.callers.read().unwrap_or_else(|e| e.into_inner());
        let version = semver::Version::parse(&loaded.info.version).ok();
        for call in callers.get(&loaded.info.name).into_iter().flatten() {
            let applies = match (&call.requirement, &version) {
                (Some(requirement), Some(version)) => requirement.matches(version),
                _ => true,
            };
            if applies && loaded.info.action(&call.action).is_none() {
                return Err(RegistryError::MissingAction {
                    plugin: loaded.info.name.clone(),
                    version: loaded.info.version.clone(),
                    playbook: call.playbook.clone(),
                    action: call.action.clone(),
                });
            }
        }
        Ok(())
    }

    /// Runs `work` on the blocking pool: the store's writes flush to disk,
    /// and a flush must not hold an async worker that runs playbooks.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SledStore) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(storage)?
    }

    /// Stores `action` on `version` in the plugin's history (making it
    /// active unless it is `installed`), with a `plugin_changed` audit
    /// record for an activation.
    async fn record_event(
        &self,
        loaded: &LoadedPlugin,
        action: &str,
        previous: Option<String>,
        actor: &str,
    ) -> Result<(), RegistryError> {
        let event = PluginEvent {
            seq: 0,
            at: Utc::now(),
            plugin: loaded.info.name.clone(),
            action: action.to_string(),
            version: loaded.info.version.clone(),
            previous,
            actor: actor.to_string(),
        };
        let identity = (action != "installed").then(|| PluginIdentity::from(loaded));
        self.blocking(move |store| {
            store.record_plugin_event(event).map_err(storage)?;
            if let Some(identity) = identity {
                let store: &dyn Store = store;
                audit_plugins(store, &[identity]).map_err(storage)?;
            }
            Ok(())
        })
        .await
    }

    /// Stores the activation, then publishes `loaded` in the runtime, so a
    /// published version is always on record. Returns the version it
    /// replaced.
    async fn publish(
        &self,
        loaded: &Arc<LoadedPlugin>,
        action: &str,
        actor: &str,
    ) -> Result<Option<String>, RegistryError> {
        let name = &loaded.info.name;
        let previous = self.runtime.plugin(name).map(|p| p.info.version.clone());
        self.record_event(loaded, action, previous, actor).await?;
        let replaced = self.runtime.publish(loaded.clone())?;
        crate::metrics::global().record_plugin_swap(name);
        tracing::info!(
            plugin.name = %name,
            plugin.version = %loaded.info.version,
            previous = replaced.as_deref().unwrap_or("none"),
            %action,
            %actor,
            "plugin version published"
        );
        Ok(replaced)
    }

    /// Makes installed `version` of plugin `name` active.
    pub async fn activate(
        &self,
        name: &str,
        version: &str,
        actor: &str,
    ) -> Result<Option<String>, RegistryError> {
        let loaded = match self.runtime.plugin_version(name, version) {
            Some(loaded) => loaded,
            None if self.runtime.plugin(name).is_none() => {
                return Err(RegistryError::UnknownPlugin {
                    plugin: name.to_string(),
                });
            }
            None => {
                return Err(RegistryError::UnknownVersion {
                    plugin: name.to_string(),
                    version: version.to_string(),
                });
            }
        };
        self.check_callers(&loaded)?;
        let _guard = self.lock.lock().await;
        if self
            .runtime
            .plugin(name)
            .is_some_and(|active| active.info.version == version)
        {
            // Already active: nothing to record.
            return Ok(None);
        }
        self.publish(&loaded, "activated", actor).await
    }

    /// Makes the version that was active before the current one active
    /// again. Repeated rollbacks walk further back through the
    /// activations.
    pub async fn rollback(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<(String, Option<String>), RegistryError> {
        let _guard = self.lock.lock().await;
        let events = self.store.plugin_events(name).map_err(storage)?;
        if events.is_empty() {
            return Err(RegistryError::UnknownPlugin {
                plugin: name.to_string(),
            });
        }
        let mut stack = activation_stack(&events);
        let current = stack.pop();
        // A version that did not load at start (its file changed, or its
        // signer is no longer trusted) is passed over for the one before.
        let loaded = stack
            .iter()
            .rev()
            .filter(|version| Some(*version) != current.as_ref())
            .find_map(|version| self.runtime.plugin_version(name, version))
            .ok_or_else(|| RegistryError::NothingToRollBack {
                plugin: name.to_string(),
            })?;
        let target = loaded.info.version.clone();
        // A rollback must not bring back a version that lacks an action a
        // loaded playbook calls, as an activation must not.
        self.check_callers(&loaded)?;
        let replaced = self.publish(&loaded, "rolled_back", actor).await?;
        Ok((target, replaced))
    }

    /// Loads every stored version into the runtime and activates the
    /// recorded active ones. A version whose file is missing or changed, or
    /// whose signer is no longer trusted, is skipped with an error logged;
    /// it returns the messages.
    pub async fn load_stored(&self) -> Result<Vec<String>, RegistryError> {
        let mut problems = Vec::new();
        let active: BTreeMap<String, String> = self
            .store
            .active_plugin_versions()
            .map_err(storage)?
            .into_iter()
            .collect();
        for record in self.store.plugin_versions().map_err(storage)? {
            if let Err(error) = self.load_record(&record, &active).await {
                let message = format!(
                    "installed plugin {:?} {} is not loaded: {error}",
                    record.name, record.version
                );
                tracing::error!("{message}");
                problems.push(message);
            }
        }
        Ok(problems)
    }

    async fn load_record(
        &self,
        record: &PluginVersionRecord,
        active: &BTreeMap<String, String>,
    ) -> Result<(), RegistryError> {
        let path = self.dir.join(&record.file);
        let bytes = std::fs::read(&path)
            .map_err(|error| storage(format!("cannot read {}: {error}", path.display())))?;
        let digest =
            palisade_signing::digest(&bytes).map_err(|error| RegistryError::Signature {
                source_name: path.display().to_string(),
                error: error.into(),
            })?;
        if digest != record.digest {
            return Err(storage(format!(
                "{} has digest {digest}, but {} was recorded at install; reinstall the plugin",
                path.display(),
                record.digest
            )));
        }
        if record.signer.is_some() {
            // Trust is checked again at every start, so removing a key from
            // the configuration unloads what it signed.
            let detached = record.detached_signature.as_deref();
            self.trust
                .verify(&bytes, detached)
                .map_err(|error| RegistryError::Signature {
                    source_name: path.display().to_string(),
                    error,
                })?;
        } else if !self.allow_unsigned {
            return Err(RegistryError::Signature {
                source_name: path.display().to_string(),
                error: TrustError::Missing,
            });
        }
        let loaded = self
            .runtime
            .prepare(bytes, &path, |name| self.grant(name))
            .await?;
        if active.get(&record.name) == Some(&record.version) {
            self.runtime.publish(loaded)?;
        } else {
            self.runtime.add_version(loaded)?;
        }
        Ok(())
    }

    /// Installs the component at `path` (with `PATH.sig` when present),
    /// as the plugin directory delivers it. A version installed before is
    /// left as it is, so a rollback is not undone by the file still lying
    /// in the directory. A new version is activated when `activate` is set.
    pub async fn install_file(
        &self,
        path: &Path,
        actor: &str,
        activate: bool,
    ) -> Result<Option<InstallReport>, RegistryError> {
        let bytes = std::fs::read(path)
            .map_err(|error| storage(format!("cannot read {}: {error}", path.display())))?;
        let signature_path = palisade_signing::signature_path(path);
        let detached = match std::fs::read_to_string(&signature_path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(storage(format!(
                    "cannot read {}: {error}",
                    signature_path.display()
                )));
            }
        };
        if let Ok(digest) = palisade_signing::digest(&bytes)
            && self.is_installed(&digest)?
        {
            return Ok(None);
        }
        let report = self
            .install(InstallRequest {
                bytes,
                detached_signature: detached,
                source: format!("directory:{}", path.display()),
                actor: actor.to_string(),
                activate,
            })
            .await
            .map_err(|error| match error {
                // A copied component often arrives before its `.sig`, so the
                // message names the signature file that was looked for.
                RegistryError::Signature {
                    source_name,
                    error: TrustError::Missing,
                } => RegistryError::Signature {
                    source_name: format!(
                        "{source_name} (no embedded signature, and no {} beside it)",
                        signature_path.display()
                    ),
                    error: TrustError::Missing,
                },
                other => other,
            })?;
        Ok(Some(report))
    }

    fn is_installed(&self, digest: &str) -> Result<bool, RegistryError> {
        Ok(self
            .store
            .plugin_versions()
            .map_err(storage)?
            .iter()
            .any(|record| record.digest == digest))
    }

    /// Every plugin with its versions, active version and history length.
    pub fn list(&self) -> Result<Vec<Value>, RegistryError> {
        let mut by_name: BTreeMap<String, Vec<PluginVersionRecord>> = BTreeMap::new();
        for record in self.store.plugin_versions().map_err(storage)? {
            by_name.entry(record.name.clone()).or_default().push(record);
        }
        let mut plugins = Vec::new();
        for (name, mut versions) in by_name {
            versions.sort_by_key(|record| semver::Version::parse(&record.version).ok());
            let active = self.runtime.plugin(&name);
            plugins.push(json!({
                "name": name,
                "active_version": active.as_ref().map(|p| p.info.version.clone()),
                "description": active.as_ref().map(|p| p.info.description.clone()),
                "actions": active.as_ref().map(|p| action_names(p)).unwrap_or_default(),
                "versions": versions.iter().map(|record| json!({
                    "version": record.version,
                    "digest": record.digest,
                    "signer": record.signer,
                    "installed_at": record.installed_at,
                    "installed_by": record.installed_by,
                    "source": record.source,
                    "loaded": self.runtime.plugin_version(&name, &record.version).is_some(),
                })).collect::<Vec<_>>(),
            }));
        }
        Ok(plugins)
    }

    /// Returns one plugin: its active version's actions and capabilities,
    /// its versions and its history.
    pub fn show(&self, name: &str) -> Result<Value, RegistryError> {
        let versions = self.store.versions_of_plugin(name).map_err(storage)?;
        if versions.is_empty() {
            return Err(RegistryError::UnknownPlugin {
                plugin: name.to_string(),
            });
        }
        let active = self.runtime.plugin(name);
        Ok(json!({
            "name": name,
            "active_version": active.as_ref().map(|p| p.info.version.clone()),
            "actions": active.as_ref().map(|p| p.info.actions.clone()),
            "requested": active.as_ref().map(|p| p.info.capabilities.clone()),
            "granted": active.as_ref().map(|p| granted_summary(p)),
            "imports": active.as_ref().map(|p| p.imports.clone()),
            "versions": versions,
            "history": self.history(name)?,
        }))
    }

    pub fn history(&self, name: &str) -> Result<Vec<PluginEvent>, RegistryError> {
        self.store.plugin_events(name).map_err(storage)
    }
}

/// Writes the component file, named by plugin, version and digest, by
/// writing a temporary file and renaming it, so a crash never leaves a
/// half-written component under the final name.
fn write_component(
    dir: &Path,
    name: &str,
    version: &str,
    digest: &str,
    bytes: &[u8],
) -> Result<String, RegistryError> {
    let file = format!("{name}-{version}-{}.wasm", &digest[..16]);
    std::fs::create_dir_all(dir).map_err(|error| {
        storage(format!(
            "cannot create plugin store {}: {error}",
            dir.display()
        ))
    })?;
    let path = dir.join(&file);
    let temporary = dir.join(format!(".{file}.partial"));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::fs::File::create(&temporary)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        std::fs::rename(&temporary, &path)
    };
    write().map_err(|error| storage(format!("cannot write {}: {error}", path.display())))?;
    Ok(file)
}

/// Replays `events` into the stack of active versions, oldest first. Each
/// rollback removes the activations above the version it restored.
fn activation_stack(events: &[PluginEvent]) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    for event in events {
        match event.action.as_str() {
            "activated" if stack.last() != Some(&event.version) => {
                stack.push(event.version.clone());
            }
            "rolled_back" => {
                while stack.len() > 1 && stack.last() != Some(&event.version) {
                    stack.pop();
                }
            }
            _ => {}
        }
    }
    stack
}

/// Names of the actions `loaded` offers.
pub(crate) fn action_names(loaded: &LoadedPlugin) -> Vec<String> {
    loaded
        .info
        .actions
        .iter()
        .map(|action| action.name.clone())
        .collect()
}

/// Summarises what the operator's grant gives the plugin of what it
/// requested.
/// Grant entries the plugin did not request are listed as ignored: they
/// give it nothing.
pub fn granted_summary(loaded: &LoadedPlugin) -> Value {
    let grant = &loaded.policy.grant;
    let ignored: Vec<String> = loaded
        .policy
        .ignored()
        .iter()
        .map(ToString::to_string)
        .collect();
    json!({
        "http_origins": grant.http_origins,
        "secrets": grant.secrets.iter().map(|secret| &secret.name).collect::<Vec<_>>(),
        "key_value": grant.key_value,
        "config": grant.config.keys().collect::<Vec<_>>(),
        "limits": loaded.policy.limits(),
        "ignored": ignored,
    })
}

/// Waits until the file at `path` has kept its size and modification time
/// for `quiet`, so a file still being copied is not read half-written.
pub async fn wait_until_settled(path: &Path, quiet: Duration) {
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|meta| (meta.len(), meta.modified().ok()))
    };
    let mut last = stamp(path);
    loop {
        tokio::time::sleep(quiet).await;
        let now = stamp(path);
        if now == last {
            return;
        }
        last = now;
    }
}

/// Watches `dir` and installs each `.wasm` file that appears or changes
/// there (a `.sig` file arriving re-checks its component). Problems are
/// logged; the daemon goes on.
pub fn watch_directory(
    registry: Arc<Registry>,
    dir: PathBuf,
) -> anyhow::Result<(notify::RecommendedWatcher, tokio::task::JoinHandle<()>)> {
    use notify::Watcher;
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(
            event.kind,
            notify::EventKind::Create(_) | notify::EventKind::Modify(_)
        ) {
            for path in event.paths {
                let _ = sender.send(path);
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(async move {
        while let Some(path) = receiver.recv().await {
            let mut pending = BTreeSet::new();
            pending.insert(component_of(&path));
            // Events come in bursts while a file is written; take them all.
            while let Ok(more) = receiver.try_recv() {
                pending.insert(component_of(&more));
            }
            for component in pending.into_iter().flatten() {
                if !component.is_file() {
                    continue;
                }
                wait_until_settled(&component, Duration::from_millis(200)).await;
                match registry.install_file(&component, "directory", true).await {
                    Ok(Some(report)) => tracing::info!(
                        path = %component.display(),
                        plugin.name = %report.name,
                        plugin.version = %report.version,
                        "plugin from the watched directory installed"
                    ),
                    Ok(None) => {}
                    Err(error) => tracing::error!(
                        path = %component.display(),
                        %error,
                        "plugin from the watched directory rejected"
                    ),
                }
            }
        }
    });
    Ok((watcher, task))
}

/// Returns the component a changed path belongs to: itself for `.wasm`,
/// the component beside it for `.wasm.sig`, and `None` otherwise.
fn component_of(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    if name.ends_with(".wasm") {
        return Some(path.to_path_buf());
    }
    name.strip_suffix(".sig")
        .filter(|stem| stem.ends_with(".wasm"))
        .map(|stem| path.with_file_name(stem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, version: &str) -> PluginEvent {
        PluginEvent {
            seq: 0,
            at: Utc::now(),
            plugin: "vt".into(),
            action: action.into(),
            version: version.into(),
            previous: None,
            actor: "test".into(),
        }
    }

    #[test]
    fn rollbacks_walk_back_through_activations() {
        let events = [
            event("installed", "1.0.0"),
            event("activated", "1.0.0"),
            event("installed", "1.1.0"),
            event("activated", "1.1.0"),
            event("activated", "2.0.0"),
        ];
        assert_eq!(activation_stack(&events), ["1.0.0", "1.1.0", "2.0.0"]);
        let mut events = events.to_vec();
        events.push(event("rolled_back", "1.1.0"));
        assert_eq!(activation_stack(&events), ["1.0.0", "1.1.0"]);
        events.push(event("rolled_back", "1.0.0"));
        assert_eq!(activation_stack(&events), ["1.0.0"]);
        events.push(event("activated", "2.0.0"));
        assert_eq!(activation_stack(&events), ["1.0.0", "2.0.0"]);
    }

    #[test]
    fn changed_paths_map_to_their_component() {
        let dir = Path::new("/plugins");
        assert_eq!(
            component_of(&dir.join("vt.wasm")),
            Some(dir.join("vt.wasm"))
        );
        assert_eq!(
            component_of(&dir.join("vt.wasm.sig")),
            Some(dir.join("vt.wasm"))
        );
        assert_eq!(component_of(&dir.join(".vt.wasm.partial")), None);
        assert_eq!(component_of(&dir.join("notes.txt")), None);
        assert_eq!(component_of(&dir.join("notes.sig")), None);
    }
}
