//! Hostile plugin: a test fixture whose every action misbehaves in one way,
//! so the sandbox tests can check that the host stops each misbehaviour,
//! fails only that call, and reports it with a typed error.
//!
//! | Action | Misbehaviour |
//! | --- | --- |
//! | `spin` | loops forever without calling the host |
//! | `allocate` | grows a `Vec` until an allocation fails |
//! | `recurse` | recurses with no base case the input can reach |
//! | `panic` | panics, which aborts and traps under `panic = "abort"` |
//! | `unreachable` | executes the wasm `unreachable` instruction |
//! | `huge-output` | returns a string of `input.bytes` bytes |
//! | `log-flood` | writes `input.lines` log lines (default 10 000) of 100 bytes |
//! | `host-call-flood` | calls `clock.now-ms` in an endless loop |
//! | `fetch` | sends GET `input.url`, with secret `input.secret` when given |
//! | `read-file` | reads `input.path` through WASI `std::fs::read` |
//! | `read-env` | returns `std::env::vars()` and `std::env::args()` |
//! | `connect` | opens a WASI TCP connection to `input.address` |
//! | `kv-write` | writes a key to the key-value namespace |
//! | `read-config` | reads setting `input.key` |
//!
//! The probing actions (`fetch` to `read-config`) report what they got as
//! output, so a test can check that the host denied it: `fetch` returns the
//! response or the `http-error`, `read-file`, `read-env` and `connect` return
//! what WASI gave them, and `kv-write` fails with `denied` when the host
//! denies the write, and `read-config` returns the setting's value or null.
//! A `fetch` error carries `retry_after_ms` when the host rate-limited the
//! request. `fetch` requests its secret in the `x-palisade-secret` header.
//!
//! `describe` requests the origins of settings `target_origin` and
//! `second_origin` (as `config:KEY`), so a test chooses them at run time,
//! secrets `granted-token` and `ungranted-token`, key-value access, and the
//! settings `target_origin`, `second_origin` and `visible`. It requests no
//! other origin, secret or setting, so a test can grant one and check that
//! the host ignores it.

use palisade_sdk::http::{HttpError, Request, header_value};
use palisade_sdk::kv::KvError;
use palisade_sdk::{
    ActionInfo, Capabilities, Plugin, PluginError, PluginInfo, Value, action, clock, config, json,
    kv, log, require_str,
};

/// Header in which `fetch` requests the host to place a secret.
const SECRET_HEADER: &str = "x-palisade-secret";

/// Default number of lines `log-flood` writes.
const DEFAULT_LOG_LINES: u64 = 10_000;

struct Hostile;

impl Plugin for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "Test fixture whose every action misbehaves in one way.".to_string(),
            actions: actions(),
            capabilities: Capabilities {
                http_origins: vec![
                    "config:target_origin".to_string(),
                    "config:second_origin".to_string(),
                ],
                secrets: vec!["granted-token".to_string(), "ungranted-token".to_string()],
                key_value: true,
                config: vec![
                    "target_origin".to_string(),
                    "second_origin".to_string(),
                    "visible".to_string(),
                ],
            },
        }
    }

    fn invoke(action: &str, input: Value) -> Result<Value, PluginError> {
        match action {
            "spin" => spin(),
            "allocate" => allocate(),
            "recurse" => Ok(json!({ "depth": descend(0) })),
            "panic" => panic!("the hostile plugin panics on request"),
            "unreachable" => trap(),
            "huge-output" => huge_output(&input),
            "log-flood" => log_flood(&input),
            "host-call-flood" => host_call_flood(),
            "fetch" => fetch(&input),
            "read-file" => read_file(&input),
            "read-env" => Ok(read_env()),
            "connect" => connect(&input),
            "kv-write" => kv_write(),
            "read-config" => read_config(&input),
            other => Err(PluginError::UnknownAction(other.to_string())),
        }
    }
}

fn actions() -> Vec<ActionInfo> {
    let none = json!({ "type": "object" });
    let with = |field: &str, kind: &str| {
        json!({
            "type": "object",
            "properties": { field: { "type": kind } },
            "required": [field],
        })
    };
    let fetch_input = json!({
        "type": "object",
        "properties": { "url": { "type": "string" }, "secret": { "type": "string" } },
        "required": ["url"],
    });
    let entries = [
        (
            "spin",
            "Loops forever without calling the host.",
            none.clone(),
        ),
        (
            "allocate",
            "Grows a vector until an allocation fails.",
            none.clone(),
        ),
        (
            "recurse",
            "Recurses until the stack runs out.",
            none.clone(),
        ),
        ("panic", "Panics.", none.clone()),
        (
            "unreachable",
            "Executes the wasm unreachable instruction.",
            none.clone(),
        ),
        (
            "huge-output",
            "Returns a string of `bytes` bytes.",
            with("bytes", "integer"),
        ),
        (
            "log-flood",
            "Writes `lines` log lines of 100 bytes.",
            none.clone(),
        ),
        (
            "host-call-flood",
            "Calls the clock import forever.",
            none.clone(),
        ),
        (
            "fetch",
            "Sends GET `url` and returns the response or the error.",
            fetch_input,
        ),
        (
            "read-file",
            "Reads `path` through WASI and returns the error.",
            with("path", "string"),
        ),
        (
            "read-env",
            "Returns the WASI environment variables and arguments.",
            none.clone(),
        ),
        (
            "connect",
            "Opens a TCP connection to `address` and returns the error.",
            with("address", "string"),
        ),
        ("kv-write", "Writes a key to the key-value namespace.", none),
        (
            "read-config",
            "Returns the value of setting `key`, or null.",
            with("key", "string"),
        ),
    ];
    entries
        .into_iter()
        .map(|(name, description, input)| action(name, description, input, json!({}), true))
        .collect()
}

fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

/// Doubles a vector's capacity until the allocator fails, which aborts.
fn allocate() -> ! {
    let mut hoard: Vec<u8> = Vec::new();
    loop {
        let additional = hoard.capacity().max(1 << 16);
        hoard.reserve_exact(additional);
        // Filling the new capacity keeps the optimiser from dropping it.
        hoard.resize(hoard.capacity(), 0xa5);
        std::hint::black_box(&hoard);
    }
}

/// Recurses without a reachable base case: `depth` only grows, and
/// `black_box` hides that from the optimiser, which could otherwise turn the
/// recursion into a loop.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    if depth == u64::MAX {
        return depth;
    }
    let below = descend(std::hint::black_box(depth + 1));
    below.wrapping_mul(31).wrapping_add(depth)
}

#[cfg(target_arch = "wasm32")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> ! {
    std::process::abort()
}

fn huge_output(input: &Value) -> Result<Value, PluginError> {
    let bytes = input
        .get("bytes")
        .and_then(Value::as_u64)
        .ok_or_else(|| PluginError::BadInput("missing integer field `bytes`".to_string()))?;
    Ok(Value::String("x".repeat(bytes as usize)))
}

fn log_flood(input: &Value) -> Result<Value, PluginError> {
    let lines = input
        .get("lines")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_LOG_LINES);
    for index in 0..lines {
        log::info(&format!("{index:>10} {}", "z".repeat(89)));
    }
    Ok(json!({ "lines": lines }))
}

fn host_call_flood() -> ! {
    loop {
        std::hint::black_box(clock::now_ms());
    }
}

fn fetch(input: &Value) -> Result<Value, PluginError> {
    let url = require_str(input, "url")?;
    let mut request = Request::get(url);
    if let Some(secret) = input.get("secret").and_then(Value::as_str) {
        request = request.secret_header(secret, SECRET_HEADER, "");
    }
    let output = match request.send() {
        Ok(response) => json!({
            "status": response.status,
            "location": header_value(&response, "location"),
            "body": String::from_utf8_lossy(&response.body),
        }),
        Err(error) => json!({ "error": http_error_json(&error) }),
    };
    Ok(output)
}

fn http_error_json(error: &HttpError) -> Value {
    let (kind, message) = match error {
        HttpError::Denied(message) => ("denied", message.as_str()),
        HttpError::InvalidRequest(message) => ("invalid-request", message.as_str()),
        HttpError::Timeout => ("timeout", ""),
        HttpError::Transport(message) => ("transport", message.as_str()),
        HttpError::ResponseTooLarge => ("response-too-large", ""),
        HttpError::RateLimited(_) => ("rate-limited", ""),
    };
    let retry_after_ms = match error {
        HttpError::RateLimited(retry_after_ms) => *retry_after_ms,
        _ => None,
    };
    json!({ "kind": kind, "message": message, "retry_after_ms": retry_after_ms })
}

fn read_file(input: &Value) -> Result<Value, PluginError> {
    let path = require_str(input, "path")?;
    let output = match std::fs::read(path) {
        Ok(contents) => json!({ "read_bytes": contents.len() }),
        Err(error) => json!({ "error": error.to_string() }),
    };
    Ok(output)
}

fn read_env() -> Value {
    let vars: Vec<Value> = std::env::vars()
        .map(|(name, value)| json!([name, value]))
        .collect();
    let args: Vec<String> = std::env::args().collect();
    json!({ "vars": vars, "args": args })
}

fn connect(input: &Value) -> Result<Value, PluginError> {
    let address = require_str(input, "address")?;
    let output = match std::net::TcpStream::connect(address) {
        Ok(stream) => json!({ "connected": stream.peer_addr().map(|a| a.to_string()).ok() }),
        Err(error) => json!({ "error": error.to_string() }),
    };
    Ok(output)
}

fn kv_write() -> Result<Value, PluginError> {
    match kv::set("hostile", b"written without a grant") {
        Ok(()) => Ok(json!({ "written": true })),
        Err(KvError::Denied) => Err(PluginError::Denied(
            "key-value access is not granted".to_string(),
        )),
        Err(other) => Err(PluginError::Internal(format!("key-value: {other:?}"))),
    }
}

fn read_config(input: &Value) -> Result<Value, PluginError> {
    let key = require_str(input, "key")?;
    Ok(json!({ "value": config::get(key) }))
}

palisade_sdk::export_plugin!(Hostile);
