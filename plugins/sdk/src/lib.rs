//! Guest SDK for Palisade plugins.
//!
//! A plugin implements [`Plugin`] and exports it with [`export_plugin!`]. The
//! SDK parses the JSON input, serialises the JSON output and wraps the host
//! interfaces of the `palisade:plugin` world in small functions, so plugin
//! code never touches the generated bindings.
//!
//! ```ignore
//! use palisade_sdk::{Plugin, PluginError, PluginInfo, Value};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn describe() -> PluginInfo { /* ... */ }
//!     fn invoke(action: &str, input: Value) -> Result<Value, PluginError> {
//!         Ok(input)
//!     }
//! }
//!
//! palisade_sdk::export_plugin!(Echo);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "palisade_sdk::bindings",
    });
}

pub use bindings::palisade::plugin::types::{
    ActionInfo, Capabilities, PluginError, PluginInfo, RateLimit, UpstreamFailure,
};
pub use serde_json::{Value, json};

/// A Palisade plugin. The host creates a fresh instance for every call, so
/// implementations keep no state between calls outside [`kv`].
pub trait Plugin {
    /// Returns the plugin's name, version, actions and requested capabilities.
    fn describe() -> PluginInfo;

    /// Runs `action` on a parsed JSON `input`.
    fn invoke(action: &str, input: Value) -> Result<Value, PluginError>;
}

/// Exports a type implementing [`Plugin`] as the component's `plugin` world.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __PalisadeExport;

        impl $crate::bindings::Guest for __PalisadeExport {
            fn describe() -> $crate::PluginInfo {
                <$plugin as $crate::Plugin>::describe()
            }

            fn invoke(action: String, input: String) -> Result<String, $crate::PluginError> {
                $crate::run_invoke::<$plugin>(&action, &input)
            }
        }

        $crate::bindings::export_world!(__PalisadeExport with_types_in $crate::bindings);
    };
}

/// Parses the input, calls the plugin and serialises its output.
#[doc(hidden)]
pub fn run_invoke<P: Plugin>(action: &str, input: &str) -> Result<String, PluginError> {
    let input: Value = serde_json::from_str(input)
        .map_err(|error| PluginError::BadInput(format!("input is not valid JSON: {error}")))?;
    let output = P::invoke(action, input)?;
    serde_json::to_string(&output)
        .map_err(|error| PluginError::Internal(format!("output is not serialisable: {error}")))
}

/// Builds an [`ActionInfo`] from JSON Schema values.
pub fn action(
    name: &str,
    description: &str,
    input_schema: Value,
    output_schema: Value,
    side_effects: bool,
) -> ActionInfo {
    ActionInfo {
        name: name.to_string(),
        description: description.to_string(),
        input_schema: input_schema.to_string(),
        output_schema: output_schema.to_string(),
        side_effects,
    }
}

/// Returns the string field `name` of `input`, or a `bad-input` error naming it.
pub fn require_str<'a>(input: &'a Value, name: &str) -> Result<&'a str, PluginError> {
    input
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| PluginError::BadInput(format!("missing string field `{name}`")))
}

/// Log lines recorded with the step. The host caps the volume per call.
pub mod log {
    use crate::bindings::palisade::plugin::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Outbound HTTP through the host, limited to the origins it granted. The
/// host may also hold a request back under the operator's quotas, and then
/// [`Request::send`](http::Request::send) returns
/// [`HttpError::RateLimited`](http::HttpError::RateLimited) with the wait in
/// milliseconds when the host has it.
pub mod http {
    pub use crate::bindings::palisade::plugin::http::{
        HeaderPlacement, HttpError, Response, SecretPlacement, SecretRef,
    };
    use crate::bindings::palisade::plugin::http::{Request as WitRequest, send as wit_send};

    /// An outgoing request under construction.
    pub struct Request {
        inner: WitRequest,
    }

    impl Request {
        pub fn new(method: &str, url: &str) -> Self {
            Self {
                inner: WitRequest {
                    method: method.to_string(),
                    url: url.to_string(),
                    headers: Vec::new(),
                    body: None,
                    secret: None,
                },
            }
        }

        pub fn get(url: &str) -> Self {
            Self::new("GET", url)
        }

        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.inner
                .headers
                .push((name.to_string(), value.to_string()));
            self
        }

        pub fn body(mut self, body: Vec<u8>) -> Self {
            self.inner.body = Some(body);
            self
        }

        /// Asks the host to send secret `name` in header `header`, after
        /// `prefix` (such as `Bearer `).
        pub fn secret_header(mut self, name: &str, header: &str, prefix: &str) -> Self {
            self.inner.secret = Some(SecretRef {
                name: name.to_string(),
                placement: SecretPlacement::Header(HeaderPlacement {
                    name: header.to_string(),
                    prefix: prefix.to_string(),
                }),
            });
            self
        }

        /// Asks the host to send secret `name` as query parameter `parameter`.
        pub fn secret_query(mut self, name: &str, parameter: &str) -> Self {
            self.inner.secret = Some(SecretRef {
                name: name.to_string(),
                placement: SecretPlacement::Query(parameter.to_string()),
            });
            self
        }

        pub fn send(self) -> Result<Response, HttpError> {
            wit_send(&self.inner)
        }
    }

    /// Maps a failure of the host's `send` to a plugin error whose message
    /// names `target`, such as the request URL or "the chat webhook".
    pub fn map_error(target: &str, error: HttpError) -> crate::PluginError {
        use crate::{PluginError, RateLimit, UpstreamFailure};
        let upstream = |message: String| {
            PluginError::Upstream(UpstreamFailure {
                status: None,
                message,
            })
        };
        match error {
            HttpError::Denied(reason) => {
                PluginError::Denied(format!("the host denied the request to {target}: {reason}"))
            }
            HttpError::InvalidRequest(reason) => PluginError::Internal(format!(
                "the host rejected the request to {target} as invalid: {reason}"
            )),
            HttpError::Timeout => upstream(format!("{target} did not respond in time")),
            HttpError::Transport(reason) => {
                upstream(format!("the request to {target} failed: {reason}"))
            }
            HttpError::ResponseTooLarge => upstream(format!(
                "the response from {target} is larger than the host's size limit"
            )),
            HttpError::RateLimited(retry_after_ms) => PluginError::RateLimited(RateLimit {
                retry_after_ms,
                message: format!("the host held back the request to {target} under its quota"),
            }),
        }
    }

    /// Returns the first value of header `name` (lowercase) in `response`.
    pub fn header_value<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
        response
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The plugin's private key-value namespace.
pub mod kv {
    use crate::bindings::palisade::plugin::key_value as wit;
    pub use crate::bindings::palisade::plugin::key_value::KvError;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        wit::get(key)
    }

    pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
        wit::set(key, value)
    }

    pub fn delete(key: &str) -> Result<(), KvError> {
        wit::delete(key)
    }

    pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
        wit::list_keys(prefix, limit)
    }
}

/// Operator-provided settings the plugin requested.
pub mod config {
    use crate::PluginError;

    pub fn get(key: &str) -> Option<String> {
        crate::bindings::palisade::plugin::config::get(key)
    }

    /// Returns setting `key`, trimmed, when it is an `http` or `https` URL
    /// with a host. `expected` says what the operator should set it to.
    ///
    /// # Errors
    ///
    /// Returns `internal` naming the setting and its value, because the
    /// operator must fix the configuration.
    pub fn http_url(key: &str, expected: &str) -> Result<String, PluginError> {
        check_http_url(key, get(key).as_deref(), expected)
    }

    /// The check of [`http_url`] on a value, for tests outside the host.
    pub fn check_http_url(
        key: &str,
        configured: Option<&str>,
        expected: &str,
    ) -> Result<String, PluginError> {
        let value = configured.map(str::trim).unwrap_or_default();
        let has_host = ["https://", "http://"].iter().any(|scheme| {
            value
                .strip_prefix(scheme)
                .is_some_and(|rest| !rest.trim_start_matches('/').is_empty())
        });
        if !has_host {
            return Err(PluginError::Internal(format!(
                "configuration setting `{key}` is {value:?}; set it to {expected}"
            )));
        }
        Ok(value.to_string())
    }
}

/// Host wall-clock time.
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        crate::bindings::palisade::plugin::clock::now_ms()
    }
}

/// Facts about the call in progress.
pub mod invocation {
    /// Key of the playbook step this call runs, the same on every attempt,
    /// or `None` outside a playbook run. Send it to an upstream that
    /// deduplicates requests so a retried step does not act twice. The
    /// host already sends it as the `Idempotency-Key` header.
    pub fn idempotency_key() -> Option<String> {
        crate::bindings::palisade::plugin::invocation::idempotency_key()
    }
}
