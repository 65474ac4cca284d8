//! Errors of a plugin call, as the engine and the journal see them.

use serde::{Deserialize, Serialize};

/// Failure of a plugin call. The first group is what the plugin itself
/// reported; the rest are failures the host detected. Every variant fails
/// only the step that made the call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallError {
    #[error("bad input: {message}")]
    BadInput { message: String },
    #[error("unknown action {action:?}")]
    UnknownAction { action: String },
    #[error("upstream failure{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Upstream {
        status: Option<u16>,
        message: String,
    },
    #[error("rate limited{}: {message}", retry_after_ms.map(|ms| format!(", retry after {ms} ms")).unwrap_or_default())]
    RateLimited {
        retry_after_ms: Option<u64>,
        message: String,
    },
    #[error("capability denied: {message}")]
    Denied { message: String },
    #[error("plugin fault: {message}")]
    Internal { message: String },

    #[error("plugin {plugin:?} is not loaded; list loaded plugins with `palisade plugin list`")]
    UnknownPlugin { plugin: String },
    #[error(
        "plugin {plugin:?} has no loaded version {version}; the run was pinned to it, so install that version again or resume the run with another decision"
    )]
    UnknownVersion { plugin: String, version: String },
    #[error("timed out after {limit_ms} ms of wall-clock time")]
    Timeout { limit_ms: u64 },
    #[error("exceeded its CPU time limit of {limit_ms} ms")]
    CpuTimeLimit { limit_ms: u64 },
    #[error("exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit { limit_bytes: usize },
    #[error("stack overflow")]
    StackOverflow,
    #[error("returned {size} bytes of output, over the limit of {limit_bytes}")]
    OutputTooLarge { size: usize, limit_bytes: usize },
    #[error("returned output that is not valid JSON: {message}")]
    InvalidOutput { message: String },
    #[error("trapped: {message}")]
    Trap { message: String },
    #[error("could not be instantiated: {message}")]
    Instantiate { message: String },
}

impl CallError {
    /// Returns a short stable name for the error kind, used in journals and
    /// metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadInput { .. } => "bad_input",
            Self::UnknownAction { .. } => "unknown_action",
            Self::Upstream { .. } => "upstream",
            Self::RateLimited { .. } => "rate_limited",
            Self::Denied { .. } => "denied",
            Self::Internal { .. } => "internal",
            Self::UnknownPlugin { .. } => "unknown_plugin",
            Self::UnknownVersion { .. } => "unknown_version",
            Self::Timeout { .. } => "timeout",
            Self::CpuTimeLimit { .. } => "cpu_time_limit",
            Self::MemoryLimit { .. } => "memory_limit",
            Self::StackOverflow => "stack_overflow",
            Self::OutputTooLarge { .. } => "output_too_large",
            Self::InvalidOutput { .. } => "invalid_output",
            Self::Trap { .. } => "trap",
            Self::Instantiate { .. } => "instantiate",
        }
    }
}

/// Failure to load a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin file {path:?}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path:?} is not a valid WebAssembly component: {message}")]
    Compile {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(
        "{path:?} does not fit the palisade:plugin@0.1.0 world: {message}; rebuild it against the WIT in `wit/`"
    )]
    Link {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{path:?} failed its describe call: {source}")]
    Describe {
        path: std::path::PathBuf,
        #[source]
        source: CallError,
    },
    #[error(
        "plugin {name:?} version {version} from {path:?} differs from the version {version} already loaded from {existing:?}; give the new build a new version number"
    )]
    Duplicate {
        name: String,
        version: String,
        path: std::path::PathBuf,
        existing: std::path::PathBuf,
    },
    #[error(
        "{path:?} is a core WebAssembly module, not a component; build the plugin for the `wasm32-wasip2` target, which produces a component"
    )]
    NotComponent { path: std::path::PathBuf },
    #[error(
        "{path:?} imports {import:?}, but this host offers palisade:plugin@{offered}; rebuild the plugin against the WIT in `wit/`"
    )]
    IncompatibleWorld {
        path: std::path::PathBuf,
        import: String,
        offered: String,
    },
    #[error(
        "{path:?} imports {imports:?}, which this host does not offer; a plugin may import only palisade:plugin and WASI 0.2 interfaces"
    )]
    ForeignImport {
        path: std::path::PathBuf,
        imports: Vec<String>,
    },
    #[error(
        "plugin {name:?} reports version {version:?}, which is not a semantic version of at most 64 bytes such as 1.2.0; set the version the plugin's describe returns"
    )]
    InvalidVersion {
        name: String,
        version: String,
        path: std::path::PathBuf,
    },
    #[error("the compilation task for {path:?} stopped before finishing: {message}")]
    CompileTask {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("invalid grant for plugin {plugin:?}")]
    Grant {
        plugin: String,
        #[source]
        source: crate::policy::InvalidGrant,
    },
    #[error(
        "plugin name {name:?} from {path:?} is not kebab-case of at most 64 bytes; use lowercase letters, digits and single hyphens, starting with a letter"
    )]
    InvalidName {
        name: String,
        path: std::path::PathBuf,
    },
    #[error(transparent)]
    Quota(#[from] crate::quota::QuotaStoreError),
    #[error(
        "plugin {plugin:?} is granted {requested} bytes of memory, over the host maximum of {max}; lower `limits.memory_bytes`"
    )]
    MemoryGrantTooLarge {
        plugin: String,
        requested: usize,
        max: usize,
    },
    #[error("cannot use the compilation cache at {path:?}")]
    Cache {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
