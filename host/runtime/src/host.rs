//! Per-call host state and the host side of the `palisade:plugin` imports.
//!
//! One [`HostState`] lives in one `Store` for one call. Every import checks
//! the plugin's [`Policy`] before doing anything, and denials come back to
//! the guest as WIT error values it can handle, never as traps.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::palisade::plugin::{clock, config, http, invocation, key_value, log};
use crate::outbound::{self, Outbound};
use crate::policy::Policy;
use crate::quota::Quotas;

/// Storage behind the plugins' key-value namespaces. Implementations keep
/// each namespace apart; the runtime passes the plugin name as `namespace`.
/// The runtime also stores its quota counts here, in
/// [`QUOTA_NAMESPACE`](crate::QUOTA_NAMESPACE), which no plugin name can equal.
pub trait KeyValueStore: Send + Sync {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, namespace: &str, key: &str) -> Result<(), String>;
    fn list_keys(&self, namespace: &str, prefix: &str, limit: usize)
    -> Result<Vec<String>, String>;
}

/// Where secret values come from. Values never reach a plugin: the host
/// places them in outgoing requests only.
pub trait SecretSource: Send + Sync {
    fn secret(&self, name: &str) -> Option<SecretValue>;
}

/// A secret's value. Its `Debug` output is redacted so it cannot leak
/// through a log line or an error chain.
#[derive(Clone)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Maximum key length in a key-value namespace, in bytes.
const MAX_KEY_BYTES: usize = 512;
/// Maximum value length in a key-value namespace, in bytes.
const MAX_VALUE_BYTES: usize = 1 << 20;
/// Maximum keys returned by one `list-keys` call.
const MAX_LIST_KEYS: usize = 10_000;

/// Severity of a plugin log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One log line a plugin wrote during a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// Record of one outbound HTTP request made by a call. The URL is stored as
/// the plugin sent it, so it never contains a secret the host placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCall {
    pub method: String,
    pub url: String,
    /// Response status, or `None` when the request was denied or failed.
    pub status: Option<u16>,
    pub outcome: String,
}

/// Services shared by every call of the runtime.
pub(crate) struct Services {
    pub kv: Option<Arc<dyn KeyValueStore>>,
    pub secrets: Option<Arc<dyn SecretSource>>,
    pub outbound: Outbound,
    pub quotas: Quotas,
    /// Recorded responses that replace the network, when set.
    pub fixtures: std::sync::OnceLock<crate::fixtures::Fixtures>,
}

/// State of one call's `Store`.
pub(crate) struct HostState {
    pub plugin: String,
    pub policy: Arc<Policy>,
    pub services: Arc<Services>,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub logs: Vec<LogLine>,
    pub log_bytes: usize,
    pub logs_dropped: u32,
    pub http_calls: Vec<HttpCall>,
    /// Values of the secrets the plugin asked the host to send, so they can
    /// be redacted from everything the call returns.
    pub secrets_sent: Vec<SecretValue>,
    /// Set when the memory limiter refused a growth, so the resulting trap
    /// can be reported as a memory limit rather than a generic fault.
    pub memory_limit_hit: bool,
    /// Same for tables and instances.
    pub resource_limit_hit: bool,
    /// End of the call's wall-clock limit. A request waiting for its quota
    /// stops waiting then.
    pub deadline: Option<Instant>,
    /// Key of the playbook step this call runs, the same on every attempt.
    pub idempotency_key: Option<String>,
}

impl HostState {
    pub fn new(plugin: String, policy: Arc<Policy>, services: Arc<Services>) -> Self {
        // No preopens, no environment, no arguments, no sockets: the WASI
        // defaults of `WasiCtx::builder` deny all of them, and standard
        // output and error go nowhere.
        let wasi = WasiCtx::builder().build();
        Self {
            plugin,
            policy,
            services,
            wasi,
            table: ResourceTable::new(),
            logs: Vec::new(),
            log_bytes: 0,
            logs_dropped: 0,
            http_calls: Vec::new(),
            secrets_sent: Vec::new(),
            memory_limit_hit: false,
            resource_limit_hit: false,
            deadline: None,
            idempotency_key: None,
        }
    }

    fn kv(&self) -> Result<&Arc<dyn KeyValueStore>, key_value::KvError> {
        if !self.policy.permits_key_value() {
            return Err(key_value::KvError::Denied);
        }
        self.services
            .kv
            .as_ref()
            .ok_or_else(|| key_value::KvError::Store("no key-value store configured".into()))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Maximum number of table elements an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Maximum instances one component may create (a component instantiates a
/// handful of core modules).
const MAX_INSTANCES: usize = 32;

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        if desired > self.policy.limits().memory_bytes {
            self.memory_limit_hit = true;
            wasmtime::bail!("memory limit reached growing to {desired} bytes");
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.resource_limit_hit = true;
            wasmtime::bail!("table limit reached growing to {desired} elements");
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_INSTANCES
    }
}

impl crate::bindings::palisade::plugin::types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let limit = self.policy.limits().log_bytes;
        if self.log_bytes + message.len() > limit {
            self.logs_dropped = self.logs_dropped.saturating_add(1);
            return;
        }
        self.log_bytes += message.len();
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.logs.push(LogLine { level, message });
    }
}

impl http::Host for HostState {
    async fn send(
        &mut self,
        mut request: http::Request,
    ) -> Result<http::Response, http::HttpError> {
        if let Some(key) = &self.idempotency_key {
            let set_by_plugin = request
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(IDEMPOTENCY_HEADER));
            if !set_by_plugin {
                request
                    .headers
                    .push((IDEMPOTENCY_HEADER.to_string(), key.clone()));
            }
        }
        let method = request.method.clone();
        let url = request.url.clone();
        if let Some(value) = request
            .secret
            .as_ref()
            .and_then(|secret| self.services.secrets.as_ref()?.secret(&secret.name))
        {
            self.secrets_sent.push(value);
        }
        let result = if self.http_calls.len() >= self.policy.limits().http_requests as usize {
            Err(http::HttpError::Denied(format!(
                "request limit of {} per call reached",
                self.policy.limits().http_requests
            )))
        } else {
            let caller = outbound::Caller {
                plugin: &self.plugin,
                policy: &self.policy,
                deadline: self.deadline,
            };
            outbound::send(&self.services, caller, request).await
        };
        self.http_calls.push(HttpCall {
            method,
            url,
            status: result.as_ref().ok().map(|response| response.status),
            outcome: match &result {
                Ok(_) => "ok".to_string(),
                Err(error) => outbound::describe_error(error),
            },
        });
        result
    }
}

impl key_value::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, key_value::KvError> {
        check_key(&key)?;
        self.kv()?
            .get(&self.plugin, &key)
            .map_err(key_value::KvError::Store)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), key_value::KvError> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(key_value::KvError::TooLarge);
        }
        self.kv()?
            .set(&self.plugin, &key, &value)
            .map_err(key_value::KvError::Store)
    }

    fn delete(&mut self, key: String) -> Result<(), key_value::KvError> {
        check_key(&key)?;
        self.kv()?
            .delete(&self.plugin, &key)
            .map_err(key_value::KvError::Store)
    }

    fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, key_value::KvError> {
        check_key(&prefix)?;
        let limit = (limit as usize).min(MAX_LIST_KEYS);
        self.kv()?
            .list_keys(&self.plugin, &prefix, limit)
            .map_err(key_value::KvError::Store)
    }
}

fn check_key(key: &str) -> Result<(), key_value::KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(key_value::KvError::TooLarge);
    }
    Ok(())
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.policy.config_value(&key).map(str::to_string)
    }
}

impl invocation::Host for HostState {
    fn idempotency_key(&mut self) -> Option<String> {
        self.idempotency_key.clone()
    }
}

/// Header that carries a step's idempotency key to the upstream.
const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0)
    }
}
