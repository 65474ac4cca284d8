//! Sandboxed WebAssembly plugin runtime of Palisade.
//!
//! The runtime loads plugin components, compiles each once (caching the
//! precompiled artifact on disk, keyed by content hash), and runs a named
//! action of a plugin in a fresh `Store` per call under that plugin's
//! [`Policy`]. It has no notion of playbooks, cases or HTTP routes. Callers
//! give it a plugin name, an action and a JSON document, and get back JSON or
//! a typed [`CallError`].
//!
//! Limits per call:
//! - CPU time by epoch interruption. A ticker thread advances the epoch
//!   every [`EPOCH_TICK`], and only ticks that pass while wasm runs count.
//! - Wall-clock time by a timeout around the whole call, because the epoch
//!   cannot interrupt a guest while it waits inside a host import.
//! - Linear memory and tables by a resource limiter, the wasm stack by
//!   `max_wasm_stack`, and output and log volume by size caps.
//!
//! Limits across calls: the calls of each plugin that run at once, by a
//! semaphore per loaded plugin whose wait counts against each call's
//! wall-clock time, and the API quotas of each plugin (rates, daily and
//! monthly counts, requests in flight), kept in one [`Quotas`] registry
//! that every call of the runtime shares.

mod cache;
mod error;
mod fixtures;
mod host;
mod outbound;
mod policy;
mod quota;

#[doc(hidden)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "plugin",
        imports: {
            "palisade:plugin/http.send": async,
        },
        exports: { default: async },
    });
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::Instrument;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

use crate::bindings::palisade::plugin::types as wit;
use crate::bindings::{Plugin, PluginPre};
use crate::host::{HostState, Services};

pub use crate::error::{CallError, LoadError};
pub use crate::fixtures::Fixtures;
pub use crate::host::{HttpCall, KeyValueStore, LogLevel, LogLine, SecretSource, SecretValue};
pub use crate::outbound::is_blocked;
pub use crate::policy::{
    CONFIG_ORIGIN_PREFIX, Grant, IgnoredGrant, InvalidGrant, InvalidLimit, InvalidOrigin, Limits,
    OriginPattern, Policy, SecretGrant,
};
pub use crate::quota::{
    CountStatus, InvalidQuota, OnExceed, PauseStatus, PluginQuotaStatus, QUOTA_NAMESPACE,
    QuotaRule, QuotaStoreError, QuotaWaitTotals, Quotas, RateRule, RateStatus, RuleStatus,
};

/// Interval at which the ticker thread advances the engine's epoch.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Maximum wasm stack per call, in bytes.
const MAX_WASM_STACK: usize = 512 << 10;

/// Runtime settings.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    /// Directory for precompiled artifacts. `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
}

/// An action a plugin offers, from its `describe` export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionInfo {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
    pub output_schema: serde_json::Value,
    pub side_effects: bool,
}

/// Capabilities a plugin requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub http_origins: Vec<String>,
    pub secrets: Vec<String>,
    pub key_value: bool,
    pub config: Vec<String>,
}

/// A plugin's description of itself, from its `describe` export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub actions: Vec<ActionInfo>,
    pub capabilities: Capabilities,
}

impl PluginInfo {
    pub fn action(&self, name: &str) -> Option<&ActionInfo> {
        self.actions.iter().find(|action| action.name == name)
    }
}

/// A plugin compiled and ready to instantiate.
pub struct LoadedPlugin {
    pub info: PluginInfo,
    pub path: PathBuf,
    /// SHA-256 of the component file, hex.
    pub digest: String,
    /// Names of the interfaces the component imports, such as
    /// `palisade:plugin/http@0.1.0`.
    pub imports: Vec<String>,
    pub policy: Arc<Policy>,
    pre: PluginPre<HostState>,
    /// Permits for calls running at once, `limits.concurrent_calls` of them,
    /// shared by every version of the plugin. Every runtime call keeps one
    /// while its instance exists. The `describe` call at load time and
    /// [`Runtime::invoke_unguarded`] take none.
    call_slots: Arc<CallSlots>,
}

/// The concurrent-call permits of one plugin.
struct CallSlots {
    limit: u32,
    permits: tokio::sync::Semaphore,
}

/// The loaded versions of one plugin and the one new calls get.
struct PluginVersions {
    active: Arc<LoadedPlugin>,
    versions: BTreeMap<String, Arc<LoadedPlugin>>,
}

/// Identity of the caller, for logs and records.
#[derive(Clone, Debug, Default)]
pub struct CallContext {
    pub run_id: String,
    pub step_id: String,
    /// Key of the playbook step, the same on every attempt. The plugin reads
    /// it through the `invocation` import, and the host sends it as the
    /// `Idempotency-Key` header of the call's HTTP requests.
    pub idempotency_key: Option<String>,
    /// Version of the plugin to run; `None` runs the active version.
    pub version: Option<String>,
}

/// Result of a successful call.
#[derive(Clone, Debug)]
pub struct CallOutput {
    pub output: serde_json::Value,
    pub report: CallReport,
}

/// Record of a call, successful or not: logs, HTTP requests, duration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CallReport {
    pub plugin_version: String,
    pub duration_us: u64,
    pub logs: Vec<LogLine>,
    pub logs_dropped: u32,
    pub http_calls: Vec<HttpCall>,
}

/// A failed call with what it did before failing.
#[derive(Clone, Debug)]
pub struct CallFailure {
    pub error: CallError,
    pub report: CallReport,
}

/// The plugin runtime: one wasmtime `Engine`, the loaded plugins, and the
/// services their imports use.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    plugins: RwLock<BTreeMap<String, PluginVersions>>,
    slots: std::sync::Mutex<BTreeMap<String, Arc<CallSlots>>>,
    services: Arc<Services>,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Creates the engine, the linker and the epoch ticker thread.
    pub fn new(
        config: RuntimeConfig,
        kv: Option<Arc<dyn KeyValueStore>>,
        secrets: Option<Arc<dyn SecretSource>>,
    ) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config())
            .map_err(|error| anyhow::anyhow!("cannot create the wasm engine: {error}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|error| anyhow::anyhow!("cannot link WASI: {error}"))?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|error| anyhow::anyhow!("cannot link the plugin imports: {error}"))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())?;

        let outbound = outbound::Outbound::new()?;
        let quotas = Quotas::new(kv.clone());
        Ok(Self {
            engine,
            linker,
            cache_dir: config.cache_dir,
            plugins: RwLock::new(BTreeMap::new()),
            slots: std::sync::Mutex::new(BTreeMap::new()),
            services: Arc::new(Services {
                kv,
                secrets,
                outbound,
                quotas,
                fixtures: std::sync::OnceLock::new(),
            }),
            ticker_stop,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Returns the API quota registry of the loaded plugins.
    pub fn quotas(&self) -> &Quotas {
        &self.services.quotas
    }

    /// Loads the component at `path` with [`Runtime::prepare`] and publishes
    /// it as its plugin's active version with [`Runtime::publish`].
    pub async fn load(
        &self,
        path: &Path,
        grant_for: impl Fn(&str) -> Grant,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let loaded = self.prepare(bytes, path, grant_for).await?;
        self.publish(loaded.clone())?;
        Ok(loaded)
    }

    /// Checks and compiles a component without publishing it, the canary
    /// check of an install or a swap:
    /// - the bytes are a component, not a core module;
    /// - every import is a `palisade:plugin` interface of a version this
    ///   host offers, or a WASI 0.2 interface;
    /// - the exports fit the `plugin` world;
    /// - a first instance runs `describe` under a deny-all policy, and its
    ///   name is kebab-case and its version semantic;
    /// - the operator's grant for that name fits the host's maximums.
    ///
    /// Compilation runs on the blocking pool (or loads the cached artifact),
    /// so it never holds an async worker. `origin` names the component in
    /// errors and in [`LoadedPlugin::path`].
    pub async fn prepare(
        &self,
        bytes: Vec<u8>,
        origin: &Path,
        grant_for: impl Fn(&str) -> Grant,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let path = origin.to_path_buf();
        if is_core_module(&bytes) {
            return Err(LoadError::NotComponent { path });
        }
        let digest = cache::digest(&bytes);
        let component = {
            let engine = self.engine.clone();
            let cache_dir = self.cache_dir.clone();
            let digest = digest.clone();
            let origin = path.clone();
            tokio::task::spawn_blocking(move || {
                cache::compile(&engine, cache_dir.as_deref(), &bytes, &digest).map_err(|message| {
                    LoadError::Compile {
                        path: origin,
                        message,
                    }
                })
            })
            .await
            .map_err(|error| LoadError::CompileTask {
                path: path.clone(),
                message: error.to_string(),
            })??
        };
        let imports: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        check_imports(&path, &imports)?;
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|error| LoadError::Link {
                    path: path.clone(),
                    message: format!("{error:#}"),
                })?;
        let pre = PluginPre::new(instance_pre).map_err(|error| LoadError::Link {
            path: path.clone(),
            message: format!("{error:#}"),
        })?;

        // Describe under a deny-all policy first: the plugin's name is not
        // known until it returns, and `describe` must not use any import.
        let info = describe(&self.engine, &pre, &self.services)
            .await
            .map_err(|source| LoadError::Describe {
                path: path.clone(),
                source,
            })?;
        if !is_plugin_name(&info.name) || info.name.len() > MAX_NAME_BYTES {
            return Err(LoadError::InvalidName {
                name: info.name,
                path,
            });
        }
        if semver::Version::parse(&info.version).is_err() || info.version.len() > MAX_NAME_BYTES {
            return Err(LoadError::InvalidVersion {
                name: info.name,
                version: info.version,
                path,
            });
        }
        let grant = grant_for(&info.name);
        if grant.limits.memory_bytes > MAX_MEMORY_BYTES {
            return Err(LoadError::MemoryGrantTooLarge {
                plugin: info.name.clone(),
                requested: grant.limits.memory_bytes,
                max: MAX_MEMORY_BYTES,
            });
        }
        let policy =
            Policy::for_request(grant, &info.capabilities).map_err(|source| LoadError::Grant {
                plugin: info.name.clone(),
                source,
            })?;
        log_policy_warnings(&info.name, &policy);
        self.services.quotas.register(&info.name, &policy)?;
        let call_slots = self.call_slots(&info.name, policy.limits().concurrent_calls);
        Ok(Arc::new(LoadedPlugin {
            info,
            path,
            digest,
            imports,
            policy: Arc::new(policy),
            pre,
            call_slots,
        }))
    }

    /// Returns the call slots of plugin `name`, shared by all its versions
    /// so that a swap never doubles the calls running at once. A changed
    /// limit replaces them; calls holding the old slots finish on those.
    fn call_slots(&self, name: &str, limit: u32) -> Arc<CallSlots> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get(name) {
            Some(existing) if existing.limit == limit => existing.clone(),
            _ => {
                let fresh = Arc::new(CallSlots {
                    limit,
                    permits: tokio::sync::Semaphore::new(limit as usize),
                });
                slots.insert(name.to_string(), fresh.clone());
                fresh
            }
        }
    }

    /// Makes `loaded` the active version of its plugin, in one step: a call
    /// that resolves the plugin afterwards gets this version, and calls
    /// already running keep theirs. Earlier versions stay loaded for runs
    /// pinned to them. Returns the version it replaced, if any. Publishing
    /// a version number already loaded with other bytes is rejected.
    pub fn publish(&self, loaded: Arc<LoadedPlugin>) -> Result<Option<String>, LoadError> {
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        let name = loaded.info.name.clone();
        let version = loaded.info.version.clone();
        if let Some(entry) = plugins.get(&name)
            && let Some(existing) = entry.versions.get(&version)
            && existing.digest != loaded.digest
        {
            return Err(LoadError::Duplicate {
                name,
                version,
                path: loaded.path.clone(),
                existing: existing.path.clone(),
            });
        }
        match plugins.get_mut(&name) {
            Some(entry) => {
                let previous = entry.active.info.version.clone();
                let loaded = entry.versions.entry(version).or_insert(loaded).clone();
                entry.active = loaded;
                Ok(Some(previous))
            }
            None => {
                plugins.insert(
                    name,
                    PluginVersions {
                        active: loaded.clone(),
                        versions: BTreeMap::from([(version, loaded)]),
                    },
                );
                Ok(None)
            }
        }
    }

    /// Adds `loaded` to its plugin's versions without making it active,
    /// for runs pinned to it. The first version of a plugin becomes active.
    pub fn add_version(&self, loaded: Arc<LoadedPlugin>) -> Result<(), LoadError> {
        if self.plugin(&loaded.info.name).is_none() {
            return self.publish(loaded).map(|_| ());
        }
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = plugins.get_mut(&loaded.info.name) else {
            return Ok(());
        };
        if let Some(existing) = entry.versions.get(&loaded.info.version) {
            if existing.digest != loaded.digest {
                return Err(LoadError::Duplicate {
                    name: loaded.info.name.clone(),
                    version: loaded.info.version.clone(),
                    path: loaded.path.clone(),
                    existing: existing.path.clone(),
                });
            }
            return Ok(());
        }
        entry.versions.insert(loaded.info.version.clone(), loaded);
        Ok(())
    }

    /// Makes the loaded `version` of plugin `name` active again. Returns the
    /// version it replaced, or `None` when that version is not loaded.
    pub fn activate(&self, name: &str, version: &str) -> Option<String> {
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        let entry = plugins.get_mut(name)?;
        let chosen = entry.versions.get(version)?.clone();
        let previous = std::mem::replace(&mut entry.active, chosen);
        Some(previous.info.version.clone())
    }

    /// Drops a loaded version that is not active. Calls already holding it
    /// finish on it.
    pub fn unload_version(&self, name: &str, version: &str) -> bool {
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        match plugins.get_mut(name) {
            Some(entry) if entry.active.info.version != version => {
                entry.versions.remove(version).is_some()
            }
            _ => false,
        }
    }

    /// Loads every `.wasm` file in `dir`, in name order.
    pub async fn load_dir(
        &self,
        dir: &Path,
        grant_for: impl Fn(&str) -> Grant,
    ) -> Result<Vec<Arc<LoadedPlugin>>, LoadError> {
        let mut loaded = Vec::new();
        for path in wasm_files(dir)? {
            loaded.push(self.load(&path, &grant_for).await?);
        }
        Ok(loaded)
    }

    /// Returns the active version of plugin `name`.
    pub fn plugin(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        plugins.get(name).map(|entry| entry.active.clone())
    }

    /// Returns the loaded `version` of plugin `name`.
    pub fn plugin_version(&self, name: &str, version: &str) -> Option<Arc<LoadedPlugin>> {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        plugins.get(name)?.versions.get(version).cloned()
    }

    /// Returns the version of plugin `name` a new run gets: the active one
    /// when it meets `requirement` (or there is none), else the highest
    /// loaded version that does.
    pub fn resolve(
        &self,
        name: &str,
        requirement: Option<&semver::VersionReq>,
    ) -> Option<Arc<LoadedPlugin>> {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        let entry = plugins.get(name)?;
        let Some(requirement) = requirement else {
            return Some(entry.active.clone());
        };
        let meets = |loaded: &LoadedPlugin| {
            semver::Version::parse(&loaded.info.version)
                .is_ok_and(|version| requirement.matches(&version))
        };
        if meets(&entry.active) {
            return Some(entry.active.clone());
        }
        entry
            .versions
            .values()
            .filter(|loaded| meets(loaded))
            .max_by_key(|loaded| semver::Version::parse(&loaded.info.version).ok())
            .cloned()
    }

    /// Returns the loaded versions of plugin `name`, lowest first.
    pub fn versions(&self, name: &str) -> Vec<Arc<LoadedPlugin>> {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        let mut versions: Vec<_> = plugins
            .get(name)
            .map(|entry| entry.versions.values().cloned().collect())
            .unwrap_or_default();
        versions.sort_by_key(|loaded| semver::Version::parse(&loaded.info.version).ok());
        versions
    }

    /// Answers every outbound request from `fixtures` instead of sending
    /// it, after the policy and quota checks, for the rest of this
    /// runtime's life. Fails if fixtures are already in use.
    pub fn use_fixtures(&self, fixtures: Fixtures) -> Result<(), String> {
        self.services
            .fixtures
            .set(fixtures)
            .map_err(|_| "this runtime already answers from fixtures".to_string())
    }

    /// Returns the active version of every plugin, by name.
    pub fn plugins(&self) -> Vec<Arc<LoadedPlugin>> {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        plugins.values().map(|entry| entry.active.clone()).collect()
    }

    /// Runs `action` of plugin `plugin` on `input` in a fresh instance of
    /// the version `context.version` names, or of the active version.
    pub async fn invoke(
        &self,
        plugin: &str,
        action: &str,
        input: &serde_json::Value,
        context: &CallContext,
    ) -> Result<CallOutput, CallFailure> {
        let loaded = match &context.version {
            Some(version) => self.plugin_version(plugin, version),
            None => self.plugin(plugin),
        };
        let Some(loaded) = loaded else {
            let error = match &context.version {
                Some(version) if self.plugin(plugin).is_some() => CallError::UnknownVersion {
                    plugin: plugin.to_string(),
                    version: version.clone(),
                },
                _ => CallError::UnknownPlugin {
                    plugin: plugin.to_string(),
                },
            };
            return Err(CallFailure {
                error,
                report: CallReport::default(),
            });
        };
        let span = tracing::debug_span!(
            "plugin_call",
            run.id = %context.run_id,
            step.id = %context.step_id,
            plugin.name = %plugin,
        );
        self.invoke_keyed(&loaded, action, input, context.idempotency_key.clone())
            .instrument(span)
            .await
    }

    /// Runs `action` of an already resolved plugin once one of its
    /// `limits.concurrent_calls` slots is free. The wait for a slot counts
    /// against `limits.wall_ms`, and a call still waiting when that time
    /// passes fails with [`CallError::Timeout`], as a call that runs too
    /// long does. The report's duration includes the wait.
    pub async fn invoke_loaded(
        &self,
        loaded: &LoadedPlugin,
        action: &str,
        input: &serde_json::Value,
    ) -> Result<CallOutput, CallFailure> {
        self.invoke_keyed(loaded, action, input, None).await
    }

    async fn invoke_keyed(
        &self,
        loaded: &LoadedPlugin,
        action: &str,
        input: &serde_json::Value,
        idempotency_key: Option<String>,
    ) -> Result<CallOutput, CallFailure> {
        let started = Instant::now();
        let limits = loaded.policy.limits().clone();
        let deadline = tokio::time::Instant::from_std(started + limits.wall_time());
        let slot =
            match tokio::time::timeout_at(deadline, loaded.call_slots.permits.acquire()).await {
                Ok(Ok(slot)) => slot,
                Ok(Err(_closed)) => {
                    return Err(queue_failure(
                        loaded,
                        started,
                        CallError::Instantiate {
                            message: "the plugin's call slots are closed".into(),
                        },
                    ));
                }
                Err(_elapsed) => {
                    tracing::debug!(
                        plugin.name = %loaded.info.name,
                        concurrent_calls = limits.concurrent_calls,
                        wall_ms = limits.wall_ms,
                        "call timed out waiting for a concurrent-call slot"
                    );
                    return Err(queue_failure(
                        loaded,
                        started,
                        CallError::Timeout {
                            limit_ms: limits.wall_ms,
                        },
                    ));
                }
            };

        let mut state = HostState::new(
            loaded.info.name.clone(),
            loaded.policy.clone(),
            self.services.clone(),
        );
        state.deadline = Some(deadline.into_std());
        state.idempotency_key = idempotency_key;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        limit_cpu_time(&mut store, limits.cpu_ms);

        let input_text = input.to_string();
        let outcome = {
            let call = async {
                let instance = loaded.pre.instantiate_async(&mut store).await?;
                instance.call_invoke(&mut store, action, &input_text).await
            };
            tokio::time::timeout_at(deadline, call).await
        };

        // Dropping the store returns the instance's slots to the pool before
        // the next queued call of this plugin starts.
        let state = store.into_data();
        drop(slot);
        let secrets = state.secrets_sent;
        let report = redact(
            CallReport {
                plugin_version: loaded.info.version.clone(),
                duration_us: started.elapsed().as_micros() as u64,
                logs: state.logs,
                logs_dropped: state.logs_dropped,
                http_calls: state.http_calls,
            },
            &secrets,
        );
        let fail = |error| CallFailure {
            error: redact(error, &secrets),
            report: report.clone(),
        };
        let output_text = match outcome {
            Err(_elapsed) => {
                return Err(fail(CallError::Timeout {
                    limit_ms: limits.wall_ms,
                }));
            }
            Ok(Err(trap)) => {
                let flags = LimitFlags {
                    memory: state.memory_limit_hit,
                    resource: state.resource_limit_hit,
                };
                return Err(fail(classify_trap(&trap, &limits, flags)));
            }
            Ok(Ok(Err(plugin_error))) => return Err(fail(map_plugin_error(plugin_error))),
            Ok(Ok(Ok(text))) => redact_text(text, &secrets),
        };
        if output_text.len() > limits.output_bytes {
            return Err(fail(CallError::OutputTooLarge {
                size: output_text.len(),
                limit_bytes: limits.output_bytes,
            }));
        }
        let output = serde_json::from_str(&output_text).map_err(|error| {
            fail(CallError::InvalidOutput {
                message: error.to_string(),
            })
        })?;
        Ok(CallOutput { output, report })
    }
}

impl Runtime {
    /// Instantiates and calls `action` with none of the runtime's policy:
    /// no limiter, no epoch deadline, no timeout, no JSON parsing. This is
    /// the baseline of the per-step overhead benchmark and must not be used
    /// to run untrusted plugins.
    #[doc(hidden)]
    pub async fn invoke_unguarded(
        &self,
        loaded: &LoadedPlugin,
        action: &str,
        input: &str,
    ) -> Result<String, String> {
        let state = HostState::new(
            loaded.info.name.clone(),
            loaded.policy.clone(),
            self.services.clone(),
        );
        let mut store = Store::new(&self.engine, state);
        // The engine has epoch interruption on, so a deadline must be set;
        // this one is never reached in a benchmark.
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = loaded
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|error| error.to_string())?;
        instance
            .call_invoke(&mut store, action, input)
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| format!("{error:?}"))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Builds the failure of a call that ended before it got a slot to run in.
fn queue_failure(loaded: &LoadedPlugin, started: Instant, error: CallError) -> CallFailure {
    CallFailure {
        error,
        report: CallReport {
            plugin_version: loaded.info.version.clone(),
            duration_us: started.elapsed().as_micros() as u64,
            ..CallReport::default()
        },
    }
}

/// Logs one warning per grant entry `policy` ignores and per invalid
/// requested origin of plugin `plugin`.
fn log_policy_warnings(plugin: &str, policy: &Policy) {
    for entry in policy.ignored() {
        tracing::warn!(
            plugin.name = %plugin,
            entry = %entry,
            "grant entry ignored: the plugin did not request it"
        );
    }
    for entry in policy.invalid_requested_origins() {
        tracing::warn!(
            plugin.name = %plugin,
            requested = %entry,
            "requested origin ignored: it is invalid"
        );
    }
}

/// Largest linear memory any plugin may be granted, in bytes. It sizes the
/// slots of the pooling allocator.
pub const MAX_MEMORY_BYTES: usize = 512 << 20;

/// Instances that may exist at once across all calls. A call made while the
/// pool is exhausted fails its step with an instantiate error.
const MAX_CONCURRENT_INSTANCES: u32 = 1_000;

/// Text that replaces a secret's value in anything a call returns.
pub const REDACTED: &str = "[REDACTED]";

/// Replaces every occurrence of a value in `secrets` in `text`.
fn redact_text(text: String, secrets: &[SecretValue]) -> String {
    secrets
        .iter()
        .filter(|secret| !secret.expose().is_empty())
        .fold(text, |text, secret| text.replace(secret.expose(), REDACTED))
}

/// Replaces secret values in every string of `value`, through its JSON form.
/// A plugin can get a secret back from an upstream that echoes request
/// headers; this keeps such echoes out of outputs, errors, logs and records.
fn redact<T: Serialize + serde::de::DeserializeOwned>(value: T, secrets: &[SecretValue]) -> T {
    if secrets.is_empty() {
        return value;
    }
    let Ok(text) = serde_json::to_string(&value) else {
        return value;
    };
    let redacted = redact_text(text.clone(), secrets);
    if redacted == text {
        return value;
    }
    // NOTE: a secret containing characters that JSON escapes (quotes,
    // backslashes, control characters) is not found in the JSON form, so it
    // stays unredacted. Secrets are expected to be API-key-like tokens.
    serde_json::from_str(&redacted).unwrap_or(value)
}

fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(MAX_WASM_STACK);

    // A fresh instance per call is the hot path: the pooling allocator
    // reuses memory and table slots instead of mapping new ones each time.
    // Each memory slot reserves 1 GiB of address space (not of RAM), so the
    // pool reserves about 1 TiB of virtual addresses.
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(MAX_CONCURRENT_INSTANCES);
    pool.total_core_instances(4 * MAX_CONCURRENT_INSTANCES);
    pool.total_memories(MAX_CONCURRENT_INSTANCES);
    pool.total_tables(2 * MAX_CONCURRENT_INSTANCES);
    pool.total_stacks(MAX_CONCURRENT_INSTANCES);
    pool.max_memory_size(MAX_MEMORY_BYTES);
    config.memory_reservation(1 << 30);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Returns whether `name` is kebab-case: lowercase ASCII letters and digits in
/// words joined by single hyphens, starting with a letter. The name is the
/// plugin's key-value namespace, so the rule also keeps plugins out of the
/// runtime's own namespaces, such as [`QUOTA_NAMESPACE`].
fn is_plugin_name(name: &str) -> bool {
    let starts_with_letter = name.starts_with(|c: char| c.is_ascii_lowercase());
    let words_valid = name.split('-').all(|word| {
        !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    starts_with_letter && words_valid
}

/// Maximum length of a plugin name and of a version, in bytes. Both become part of file
/// names and keys.
const MAX_NAME_BYTES: usize = 64;

/// Largest `describe` result, in bytes of its strings: the description is
/// stored and listed with every installed version.
const MAX_DESCRIBE_BYTES: usize = 1 << 20;

/// Version of the `palisade:plugin` package this host offers. A plugin
/// links when it was built against the same major and minor (for 0.x), or
/// the same major and an equal or earlier minor (from 1.0). Wasmtime
/// matches such imports by semver.
pub const WORLD_VERSION: &str = "0.1.0";

/// Returns whether `bytes` start as a core WebAssembly module rather than
/// a component: the version field of the header is 1 with layer 0.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// Checks that every import is WASI or a compatible `palisade:plugin`
/// interface, so an incompatible plugin gets an error that names the
/// import and the version the host offers.
fn check_imports(path: &Path, imports: &[String]) -> Result<(), LoadError> {
    let offered = semver::Version::parse(WORLD_VERSION).expect("WORLD_VERSION is valid");
    let mut foreign = Vec::new();
    for import in imports {
        if let Some(rest) = import.strip_prefix("palisade:plugin/") {
            let version = rest
                .split_once('@')
                .and_then(|(_, version)| semver::Version::parse(version).ok());
            // Under semver, 0.x minors break compatibility; from 1.0, a
            // plugin built against a later minor may need newer imports.
            let compatible = version.is_some_and(|version| {
                version.major == offered.major
                    && if offered.major == 0 {
                        version.minor == offered.minor
                    } else {
                        version.minor <= offered.minor
                    }
            });
            if !compatible {
                return Err(LoadError::IncompatibleWorld {
                    path: path.to_path_buf(),
                    import: import.clone(),
                    offered: WORLD_VERSION.to_string(),
                });
            }
        } else if !import.starts_with("wasi:") {
            foreign.push(import.clone());
        }
    }
    if foreign.is_empty() {
        Ok(())
    } else {
        Err(LoadError::ForeignImport {
            path: path.to_path_buf(),
            imports: foreign,
        })
    }
}

/// Returns the `.wasm` files of `dir` in name order.
pub fn wasm_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        // Regular files only: a directory or a FIFO named `.wasm` would
        // fail or block the read.
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    Ok(paths)
}

/// Number of epoch ticks covering `cpu_ms`, at least one.
fn epoch_ticks(cpu_ms: u64) -> u64 {
    (cpu_ms / EPOCH_TICK.as_millis() as u64).max(1)
}

/// Limits the guest to about `cpu_ms` of running time, counted in epoch
/// ticks, and makes it yield to the async executor at every tick.
///
/// The deadline is one tick ahead, and each time it passes the callback
/// counts one tick and either traps with `Trap::Interrupt` (budget spent) or
/// yields and sets the next deadline one tick ahead. A tick counts only when
/// the guest is running wasm as it passes, so time spent waiting in a host
/// import (such as `http.send`), suspended on a yield, or descheduled by the
/// operating system costs at most one tick. Yielding at every tick keeps a
/// spinning plugin from holding a worker thread, so other calls on the same
/// thread wait at most about one tick per busy call ahead of them.
fn limit_cpu_time(store: &mut Store<HostState>, cpu_ms: u64) {
    let budget = epoch_ticks(cpu_ms);
    let mut spent = 0u64;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_context| {
        spent += 1;
        if spent >= budget {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("palisade-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
    Ok(())
}

async fn describe(
    engine: &Engine,
    pre: &PluginPre<HostState>,
    services: &Arc<Services>,
) -> Result<PluginInfo, CallError> {
    let policy = Arc::new(Policy::deny_all());
    let limits = policy.limits().clone();
    let mut store = Store::new(
        engine,
        HostState::new(String::new(), policy, services.clone()),
    );
    store.limiter(|state| state);
    limit_cpu_time(&mut store, limits.cpu_ms);
    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance.call_describe(&mut store).await
    };
    let info = match tokio::time::timeout(limits.wall_time(), call).await {
        Err(_) => {
            return Err(CallError::Timeout {
                limit_ms: limits.wall_ms,
            });
        }
        Ok(Err(trap)) => {
            let state = store.data();
            let flags = LimitFlags {
                memory: state.memory_limit_hit,
                resource: state.resource_limit_hit,
            };
            return Err(classify_trap(&trap, &limits, flags));
        }
        Ok(Ok(info)) => info,
    };
    convert_info(info)
}

fn convert_info(info: wit::PluginInfo) -> Result<PluginInfo, CallError> {
    let size = info.name.len()
        + info.version.len()
        + info.description.len()
        + info
            .actions
            .iter()
            .map(|action| {
                action.name.len()
                    + action.description.len()
                    + action.input_schema.len()
                    + action.output_schema.len()
            })
            .sum::<usize>();
    if size > MAX_DESCRIBE_BYTES {
        return Err(CallError::OutputTooLarge {
            size,
            limit_bytes: MAX_DESCRIBE_BYTES,
        });
    }
    let mut actions = Vec::new();
    for action in info.actions {
        let parse = |text: &str, what: &str| {
            serde_json::from_str(text).map_err(|error| CallError::InvalidOutput {
                message: format!("{what} of action {:?} is not JSON: {error}", action.name),
            })
        };
        actions.push(ActionInfo {
            input_schema: parse(&action.input_schema, "input schema")?,
            output_schema: parse(&action.output_schema, "output schema")?,
            name: action.name,
            description: action.description,
            side_effects: action.side_effects,
        });
    }
    Ok(PluginInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        actions,
        capabilities: Capabilities {
            http_origins: info.capabilities.http_origins,
            secrets: info.capabilities.secrets,
            key_value: info.capabilities.key_value,
            config: info.capabilities.config,
        },
    })
}

struct LimitFlags {
    memory: bool,
    resource: bool,
}

/// Turns a wasmtime error from instantiate or call into a [`CallError`].
fn classify_trap(error: &wasmtime::Error, limits: &Limits, flags: LimitFlags) -> CallError {
    if flags.memory {
        return CallError::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::CpuTimeLimit {
            limit_ms: limits.cpu_ms,
        },
        Some(Trap::StackOverflow) => CallError::StackOverflow,
        Some(trap) => CallError::Trap {
            message: trap.to_string(),
        },
        None if flags.resource => CallError::Trap {
            message: format!("resource limit: {error}"),
        },
        None => CallError::Instantiate {
            message: format!("{error:#}"),
        },
    }
}

fn map_plugin_error(error: wit::PluginError) -> CallError {
    match error {
        wit::PluginError::BadInput(message) => CallError::BadInput { message },
        wit::PluginError::UnknownAction(action) => CallError::UnknownAction { action },
        wit::PluginError::Upstream(failure) => CallError::Upstream {
            status: failure.status,
            message: failure.message,
        },
        wit::PluginError::RateLimited(limit) => CallError::RateLimited {
            retry_after_ms: limit.retry_after_ms,
            message: limit.message,
        },
        wit::PluginError::Denied(message) => CallError::Denied { message },
        wit::PluginError::Internal(message) => CallError::Internal { message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_must_match_the_offered_world() {
        let path = Path::new("p.wasm");
        let check = |imports: &[&str]| {
            let imports: Vec<String> = imports.iter().map(|i| i.to_string()).collect();
            check_imports(path, &imports)
        };
        let compatible = [
            "palisade:plugin/http@0.1.0",
            "palisade:plugin/log@0.1.7",
            "wasi:cli/environment@0.2.3",
        ];
        assert!(check(&compatible).is_ok());
        for import in [
            "palisade:plugin/http@0.2.0",
            "palisade:plugin/http@1.0.0",
            "palisade:plugin/http",
        ] {
            let error = check(&[import]).unwrap_err();
            assert!(
                matches!(&error, LoadError::IncompatibleWorld { import: named, .. } if named == import),
                "{import}: {error:?}"
            );
        }
        let error = check(&["acme:spy/exfiltrate@1.0.0", "wasi:io/streams@0.2.0"]).unwrap_err();
        assert!(
            matches!(&error, LoadError::ForeignImport { imports, .. } if imports == &["acme:spy/exfiltrate@1.0.0"]),
            "{error:?}"
        );
    }

    #[test]
    fn core_modules_are_told_apart_from_components() {
        assert!(is_core_module(b"\0asm\x01\0\0\0rest"));
        assert!(!is_core_module(b"\0asm\x0d\0\x01\0rest"));
        assert!(!is_core_module(b"\0asm"));
    }

    #[test]
    fn plugin_names_are_kebab_case() {
        for name in ["noop", "ti-matcher", "virustotal", "x2", "a-1b-c"] {
            assert!(is_plugin_name(name), "{name:?} was rejected");
        }
        let invalid = [
            "",
            "Noop",
            "ti_matcher",
            "-noop",
            "noop-",
            "ti--matcher",
            "2fa",
            QUOTA_NAMESPACE,
            "a b",
            "caf\u{e9}",
        ];
        for name in invalid {
            assert!(!is_plugin_name(name), "{name:?} was accepted");
        }
    }
}
