//! Wiring: the store, the runtime and the engine, built from a [`Config`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use palisade_engine::{CallInfo, Engine, Playbook, PluginCaller, StepOutcome};
use palisade_model::StepError;
use palisade_runtime::{CallContext, KeyValueStore, Runtime, RuntimeConfig};
use palisade_store::{SledStore, Store};
use serde_json::Value;

use crate::config::{Config, ConfiguredSecrets};
use crate::registry::Registry;

/// The engine's view of the sandboxed runtime.
pub struct RuntimeCaller {
    pub runtime: Arc<Runtime>,
}

impl PluginCaller for RuntimeCaller {
    async fn call(
        &self,
        plugin: &str,
        action: &str,
        input: &Value,
        call: CallInfo<'_>,
    ) -> StepOutcome {
        let (run_id, step_id) = (call.run_id, call.step_id);
        let context = CallContext {
            run_id: run_id.to_string(),
            step_id: step_id.to_string(),
            idempotency_key: call.idempotency_key.map(str::to_string),
            version: call.version.map(str::to_string),
        };
        let (result, report) = match self.runtime.invoke(plugin, action, input, &context).await {
            Ok(call) => {
                tracing::debug!(
                    plugin.name = %plugin,
                    plugin.action = %action,
                    plugin.version = %call.report.plugin_version,
                    duration_us = call.report.duration_us,
                    "plugin call succeeded"
                );
                (Ok(call.output), call.report)
            }
            Err(failure) => {
                tracing::debug!(run.id = %run_id, step.id = %step_id, plugin.name = %plugin, error = %failure.error, "plugin call failed");
                let error = StepError {
                    kind: failure.error.kind().to_string(),
                    message: failure.error.to_string(),
                };
                (Err(error), failure.report)
            }
        };
        crate::metrics::global().record_plugin_call(&crate::metrics::PluginCall {
            plugin,
            action,
            version: &report.plugin_version,
            duration: std::time::Duration::from_micros(report.duration_us),
            error_kind: result.as_ref().err().map(|error| error.kind.as_str()),
        });
        StepOutcome {
            result,
            plugin_version: (!report.plugin_version.is_empty()).then_some(report.plugin_version),
            duration_us: report.duration_us,
            logs: serde_json::to_value(&report.logs).unwrap_or_default(),
            http_calls: serde_json::to_value(&report.http_calls).unwrap_or_default(),
        }
    }

    fn resolve(&self, plugin: &str, requirement: Option<&semver::VersionReq>) -> Option<String> {
        self.runtime
            .resolve(plugin, requirement)
            .map(|loaded| loaded.info.version.clone())
    }

    fn actions(&self, plugin: &str) -> Option<Vec<String>> {
        self.runtime
            .plugin(plugin)
            .map(|loaded| crate::registry::action_names(&loaded))
    }

    fn input_schema(&self, plugin: &str, action: &str) -> Option<Value> {
        let loaded = self.runtime.plugin(plugin)?;
        Some(loaded.info.action(action)?.input_schema.clone())
    }

    fn requests_network(&self, plugin: &str) -> bool {
        self.runtime
            .plugin(plugin)
            .is_some_and(|loaded| !loaded.info.capabilities.http_origins.is_empty())
    }

    fn has_side_effects(&self, plugin: &str, action: &str, version: Option<&str>) -> bool {
        let loaded = match version {
            Some(version) => self.runtime.plugin_version(plugin, version),
            None => self.runtime.plugin(plugin),
        };
        loaded.is_none_or(|loaded| {
            loaded
                .info
                .actions
                .iter()
                .find(|info| info.name == action)
                .is_none_or(|info| info.side_effects)
        })
    }
}

/// Plugin key-value namespaces kept in the store.
pub struct StoreKeyValue(pub Arc<SledStore>);

impl KeyValueStore for StoreKeyValue {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.kv_get(namespace, key).map_err(|e| e.to_string())
    }

    fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.0
            .kv_set(namespace, key, value)
            .map_err(|e| e.to_string())
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<(), String> {
        self.0.kv_delete(namespace, key).map_err(|e| e.to_string())
    }

    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, String> {
        self.0
            .kv_list(namespace, prefix, limit)
            .map_err(|e| e.to_string())
    }
}

/// Everything a command needs.
pub struct Host {
    pub store: Arc<SledStore>,
    pub engine: Engine<RuntimeCaller>,
    pub caller: Arc<RuntimeCaller>,
    pub registry: Arc<Registry>,
}

/// Opens the database at the configured data directory, with the
/// configured correlation window.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<SledStore>> {
    let window = config.correlation.window().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let store = SledStore::open(&config.data_dir.join("db"))?.with_correlation_window(window);
    Ok(Arc::new(store))
}

/// Opens the store, loads the plugins and the playbooks, and builds the
/// engine. `playbooks` overrides the configured playbooks directory and may
/// name one file.
pub async fn build(config: &Config, playbooks: Option<&Path>) -> anyhow::Result<Host> {
    // The key is checked before the database is opened, so a missing key
    // fails at once and leaves the database unlocked.
    let secret_key = config.stored_secrets_key()?;
    let store = open_store(config)?;
    let kv: Arc<dyn KeyValueStore> = Arc::new(StoreKeyValue(store.clone()));
    let secrets = ConfiguredSecrets::new(config, secret_key, store.clone());
    let runtime = Arc::new(Runtime::new(
        RuntimeConfig {
            cache_dir: Some(config.cache_dir()),
        },
        Some(kv),
        Some(Arc::new(secrets)),
    )?);
    if !config.plugins_dir.is_dir() {
        anyhow::bail!(
            "plugin directory {} does not exist; build the plugins with `cargo xtask build-plugins` or set `plugins_dir` in palisade.toml",
            config.plugins_dir.display()
        );
    }
    let playbooks = load_playbooks(playbooks.unwrap_or(&config.playbooks_dir))?;
    let registry = Arc::new(Registry::new(
        store.clone(),
        runtime.clone(),
        config.plugin_store_dir(),
        config.trust()?,
        config.trust.allow_unsigned,
        config.plugins.clone(),
    ));
    registry.set_playbooks(&playbooks);
    // Versions installed before come first, so a plugin directory that
    // still contains an older file does not undo a swap or a rollback.
    registry.load_stored().await?;
    // A file the directory delivers that fails its checks is logged and
    // left out, as the watcher does while the daemon runs: the versions
    // already installed still serve. A playbook that needs a plugin no
    // version of which loaded still stops the start, below.
    // New versions are installed first and then the highest new version
    // of each plugin is activated, so file names do not decide the order.
    let mut newest: BTreeMap<String, semver::Version> = BTreeMap::new();
    for path in palisade_runtime::wasm_files(&config.plugins_dir)? {
        match registry.install_file(&path, "directory", false).await {
            Ok(Some(report)) => {
                if let Ok(version) = semver::Version::parse(&report.version) {
                    let entry = newest.entry(report.name).or_insert(version.clone());
                    if version > *entry {
                        *entry = version;
                    }
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "plugin from the plugin directory rejected");
                eprintln!("warning: plugin {} is left out: {error}", path.display());
            }
        }
    }
    let installed = newest.len();
    for (name, version) in newest {
        if let Err(error) = registry
            .activate(&name, &version.to_string(), "directory")
            .await
        {
            tracing::error!(plugin.name = %name, %version, %error, "new plugin version from the plugin directory not activated");
            eprintln!("warning: plugin {name} {version} is installed but not active: {error}");
        }
    }
    tracing::info!(
        loaded = runtime.plugins().len(),
        installed,
        dir = %config.plugins_dir.display(),
        "plugins loaded"
    );

    let caller = Arc::new(RuntimeCaller { runtime });
    let store_dyn: Arc<dyn Store> = store.clone();
    let engine = Engine::new(store_dyn, caller.clone(), playbooks)?
        .with_observer(Arc::new(crate::metrics::RunCounter));
    Ok(Host {
        store,
        engine,
        caller,
        registry,
    })
}

/// Loads the playbooks of directory `path`, or the one file `path`. With
/// one file, the other playbooks in its directory are loaded too, so it
/// can call them as sub-playbooks, but their triggers are dropped: only
/// the named playbook starts runs on alerts.
fn load_playbooks(path: &Path) -> anyhow::Result<Vec<Playbook>> {
    let playbooks = if path.is_dir() {
        Playbook::load_dir(path)?
    } else {
        let chosen = Playbook::load(path)?;
        let folder = path
            .parent()
            .filter(|folder| !folder.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut playbooks = vec![chosen];
        // Each sibling on its own: a broken one is reported and left out
        // rather than hiding the others.
        for file in palisade_engine::playbook_files(folder).unwrap_or_default() {
            if file.canonicalize().ok() == path.canonicalize().ok() {
                continue;
            }
            match Playbook::load(&file) {
                Ok(mut other) if playbooks.iter().all(|p| p.name != other.name) => {
                    other.trigger = None;
                    playbooks.push(other);
                }
                Ok(other) => eprintln!(
                    "warning: {} is left out: playbook name {:?} is already loaded",
                    file.display(),
                    other.name
                ),
                Err(error) => eprintln!("warning: {} is left out: {error}", file.display()),
            }
        }
        playbooks
    };
    if playbooks.is_empty() {
        anyhow::bail!(
            "no playbooks in {}; add a .yaml playbook or name one file",
            path.display()
        );
    }
    Ok(playbooks)
}

/// Loads the plugins without opening the database, for commands that only
/// inspect plugins and may run beside a daemon that has the database open.
pub async fn build_runtime_only(config: &Config) -> anyhow::Result<Runtime> {
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: Some(config.cache_dir()),
        },
        None,
        None,
    )?;
    let context = || {
        format!(
            "cannot load plugins from {}; build them with `cargo xtask build-plugins`",
            config.plugins_dir.display()
        )
    };
    let trust = config.trust()?;
    for path in palisade_runtime::wasm_files(&config.plugins_dir).with_context(context)? {
        let bytes = std::fs::read(&path).with_context(context)?;
        let detached = std::fs::read_to_string(palisade_signing::signature_path(&path)).ok();
        match trust.verify(&bytes, detached.as_deref()) {
            Ok(_) => {}
            Err(palisade_signing::TrustError::Missing) if config.trust.allow_unsigned => {}
            Err(error) => anyhow::bail!("plugin {} is rejected: {error}", path.display()),
        }
        let (unsigned, _) = palisade_signing::split(&bytes)?;
        let loaded = runtime
            .prepare(unsigned, &path, |name| config.grant(name))
            .await
            .with_context(context)?;
        runtime.publish(loaded)?;
    }
    Ok(runtime)
}
