//! Sandbox tests: a misbehaving plugin fails only its own call, with a typed
//! error, and a well-behaved plugin called at the same time still succeeds.
//!
//! The misbehaving plugin is `plugins/hostile`, whose actions each break one
//! rule (endless loops, memory and stack exhaustion, traps, oversized output,
//! log and host-call floods, and probes of the network, files, environment
//! and key-value store). `plugins/hostile-import` imports an interface the
//! host does not provide. Both are test fixtures outside the plugins
//! workspace, built here into a target directory of their own so that no
//! real host ever loads them from the plugins' output directory.
//!
//! Every server these tests use listens on 127.0.0.1 and records each
//! connection and request. URLs that name 169.254.169.254 or 10.0.0.1 are
//! never granted, and the tests check that the host denies them before
//! connecting anywhere.
//!
//! The hostile plugin requests its origins as `config:target_origin` and
//! `config:second_origin`, so each test grants an origin and sets those
//! settings to it. The host-side checks then apply to an origin that is both
//! requested and granted.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use palisade_runtime::{
    CallContext, CallFailure, CallOutput, Grant, IgnoredGrant, KeyValueStore, Limits, LoadError,
    Runtime, RuntimeConfig, SecretGrant, SecretSource, SecretValue,
};
use reqwest::Url;
use serde_json::{Value, json};

/// CPU time limit of the hostile plugin: short, so the endless loops stop
/// quickly, yet long enough that the actions meant to fail another way get
/// there first on a loaded machine.
const CPU_MS: u64 = 500;
/// CPU time limit of `noop`. The runtime measures CPU time with the epoch
/// clock, so a call is also charged for time the OS gives other threads.
/// Beside the spinning hostile calls on a loaded two-core machine, an echo
/// that needs well under a millisecond was charged over 200 ms.
const NOOP_CPU_MS: u64 = 2_000;
const WALL_MS: u64 = 2_000;
const MEMORY_BYTES: usize = 32 << 20;
const OUTPUT_BYTES: usize = 64 << 10;
const LOG_BYTES: usize = 4 << 10;

/// Lines the tests have `log-flood` write: 100 KB of messages, far over
/// [`LOG_BYTES`]. Each line is one host call. With a debug-built host on a
/// loaded two-core machine, 10 000 lines took about 50 ms alone and over
/// 200 ms beside the concurrent calls, so 1 000 keep well below [`CPU_MS`].
const LOG_FLOOD_LINES: u64 = 1_000;

/// Upper bound on how long a call stopped by a limit may take. It only
/// proves that the limit stopped the call; a limit that does not hold runs
/// forever.
const STOPPED_WITHIN: Duration = Duration::from_secs(10);

/// How long a [`ServerMode::Delayed`] server waits before responding: three
/// times the CPU time limit, so a call that counted the wait as CPU time
/// would be stopped.
const RESPONSE_DELAY: Duration = Duration::from_millis(3 * CPU_MS);

/// Header in which the `fetch` action requests the host to place a secret.
const SECRET_HEADER: &str = "x-palisade-secret";
const GRANTED_SECRET: &str = "granted-token";
const GRANTED_SECRET_VALUE: &str = "granted-value-3c1f8e";
/// A secret the hostile plugin requests and the host has a value for, but
/// that no test grants.
const UNGRANTED_SECRET: &str = "ungranted-token";
const UNGRANTED_SECRET_VALUE: &str = "ungranted-value-9d24b7";
/// A secret the host has a value for but the hostile plugin does not request.
const UNREQUESTED_SECRET: &str = "unrequested-token";
const UNREQUESTED_SECRET_VALUE: &str = "unrequested-value-47a0e2";

// ---------------------------------------------------------------------------
// Fixtures: components, runtime, key-value store and secrets.

struct Components {
    hostile: PathBuf,
    hostile_import: PathBuf,
    noop: PathBuf,
}

/// Builds the fixture components once per test binary. Cargo does nothing
/// when they are already up to date.
fn components() -> &'static Components {
    static BUILT: OnceLock<Components> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-plugins");
        for fixture in ["hostile", "hostile-import"] {
            build_fixture(fixture, &target_dir);
        }
        let release = target_dir.join("wasm32-wasip2/release");
        Components {
            hostile: release.join("hostile.wasm"),
            hostile_import: release.join("hostile_import.wasm"),
            noop: support::plugins_dir().join("noop.wasm"),
        }
    })
}

fn build_fixture(name: &str, target_dir: &Path) {
    let manifest = support::repo_root()
        .join("plugins")
        .join(name)
        .join("Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--manifest-path"])
        .arg(&manifest)
        .args(["--target", "wasm32-wasip2", "--release", "--quiet"])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the {name} fixture failed");
}

fn small_limits() -> Limits {
    Limits {
        cpu_ms: CPU_MS,
        wall_ms: WALL_MS,
        memory_bytes: MEMORY_BYTES,
        output_bytes: OUTPUT_BYTES,
        log_bytes: LOG_BYTES,
        ..Limits::default()
    }
}

/// Settings whose values the hostile plugin requests as origins, in the
/// order [`grant_origins`] fills them.
const ORIGIN_SETTINGS: [&str; 2] = ["target_origin", "second_origin"];

/// Returns a grant of nothing but `origins`, under the small limits. The
/// first two origins are also set as the hostile plugin's `target_origin`
/// and `second_origin`, which it requests as `config:KEY`.
fn grant_origins(origins: &[&str]) -> Grant {
    assert!(origins.len() <= ORIGIN_SETTINGS.len(), "too many origins");
    let config = ORIGIN_SETTINGS
        .iter()
        .zip(origins)
        .map(|(key, origin)| (key.to_string(), origin.to_string()))
        .collect();
    Grant {
        http_origins: origins.iter().map(|origin| origin.to_string()).collect(),
        config,
        limits: small_limits(),
        ..Grant::default()
    }
}

/// Key-value store in memory, so a test can check that nothing was written.
#[derive(Default)]
struct MemoryKv {
    entries: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryKv {
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

impl KeyValueStore for MemoryKv {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let entries = self.entries.lock().unwrap();
        Ok(entries.get(&(namespace.into(), key.into())).cloned())
    }

    fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), String> {
        let mut entries = self.entries.lock().unwrap();
        entries.insert((namespace.into(), key.into()), value.to_vec());
        Ok(())
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<(), String> {
        let mut entries = self.entries.lock().unwrap();
        entries.remove(&(namespace.into(), key.into()));
        Ok(())
    }

    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, String> {
        let entries = self.entries.lock().unwrap();
        let keys = entries
            .keys()
            .filter(|(space, key)| space == namespace && key.starts_with(prefix))
            .map(|(_, key)| key.clone())
            .take(limit)
            .collect();
        Ok(keys)
    }
}

/// Secret source with three secrets. Which of them a plugin may use depends on
/// its grant.
struct TestSecrets;

impl SecretSource for TestSecrets {
    fn secret(&self, name: &str) -> Option<SecretValue> {
        match name {
            GRANTED_SECRET => Some(SecretValue::new(GRANTED_SECRET_VALUE.into())),
            UNGRANTED_SECRET => Some(SecretValue::new(UNGRANTED_SECRET_VALUE.into())),
            UNREQUESTED_SECRET => Some(SecretValue::new(UNREQUESTED_SECRET_VALUE.into())),
            _ => None,
        }
    }
}

/// A runtime with `hostile` loaded under `hostile_grant` and `noop` under
/// the small limits with [`NOOP_CPU_MS`], both backed by an empty in-memory
/// key-value store.
struct Sandbox {
    runtime: Arc<Runtime>,
    kv: Arc<MemoryKv>,
}

impl Sandbox {
    async fn start(hostile_grant: Grant) -> Self {
        let kv = Arc::new(MemoryKv::default());
        let kv_store: Arc<dyn KeyValueStore> = kv.clone();
        let runtime = Runtime::new(
            RuntimeConfig::default(),
            Some(kv_store),
            Some(Arc::new(TestSecrets)),
        )
        .unwrap();
        let components = components();
        runtime
            .load(&components.hostile, |_| hostile_grant.clone())
            .await
            .unwrap();
        let mut noop_grant = grant_origins(&[]);
        noop_grant.limits.cpu_ms = NOOP_CPU_MS;
        runtime
            .load(&components.noop, |_| noop_grant.clone())
            .await
            .unwrap();
        Self {
            runtime: Arc::new(runtime),
            kv,
        }
    }

    async fn call(
        &self,
        plugin: &str,
        action: &str,
        input: Value,
    ) -> Result<CallOutput, CallFailure> {
        call(&self.runtime, plugin, action, input).await
    }

    /// Calls `fetch` and returns its output, which contains the response or
    /// the host's HTTP error.
    async fn fetch(&self, input: Value) -> Value {
        let description = input.to_string();
        match self.call("hostile", "fetch", input).await {
            Ok(output) => output.output,
            Err(failure) => panic!("fetch {description} failed: {}", failure.error),
        }
    }
}

async fn call(
    runtime: &Runtime,
    plugin: &str,
    action: &str,
    input: Value,
) -> Result<CallOutput, CallFailure> {
    runtime
        .invoke(plugin, action, &input, &CallContext::default())
        .await
}

// ---------------------------------------------------------------------------
// A counting HTTP server on 127.0.0.1.

#[derive(Clone, Copy)]
enum ServerMode {
    /// Responds to `/redirect` with a 302 to http://10.0.0.1/ and to anything
    /// else with a 200.
    Respond,
    /// Responds like `Respond`, but only after waiting [`RESPONSE_DELAY`].
    Delayed,
    /// Accepts, reads the request and never responds.
    Hang,
}

#[derive(Clone, Debug)]
struct SeenRequest {
    target: String,
    /// Header names in lowercase, values trimmed.
    headers: Vec<(String, String)>,
}

#[derive(Default)]
struct Seen {
    connections: usize,
    requests: Vec<SeenRequest>,
    /// Requests read whose handling has not finished yet.
    in_flight: usize,
    /// Maximum of `in_flight` since the server started.
    max_in_flight: usize,
}

/// A plain HTTP/1.1 server on 127.0.0.1 that records every connection and
/// request. It runs on detached threads until the test process exits.
struct CountingServer {
    address: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl CountingServer {
    fn start(mode: ServerMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recorder = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                recorder.lock().unwrap().connections += 1;
                let recorder = recorder.clone();
                std::thread::spawn(move || serve(stream, mode, &recorder));
            }
        });
        Self { address, seen }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    fn port(&self) -> u16 {
        self.address.port()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }

    fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().requests.clone()
    }

    /// Returns the most requests the server has handled at once. A request
    /// counts from when its head is read until its response is written, or
    /// until the client closes the connection in [`ServerMode::Hang`].
    fn max_in_flight(&self) -> usize {
        self.seen.lock().unwrap().max_in_flight
    }
}

fn serve(mut stream: TcpStream, mode: ServerMode, seen: &Mutex<Seen>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(request) = read_request_head(&mut stream) else {
        return;
    };
    {
        let mut seen = seen.lock().unwrap();
        seen.requests.push(request.clone());
        seen.in_flight += 1;
        seen.max_in_flight = seen.max_in_flight.max(seen.in_flight);
    }
    // The request stops counting as in flight just before the response is
    // written: once the client has read it, the caller may start another
    // request, which must not find this one still counted.
    respond(&mut stream, mode, &request, || {
        seen.lock().unwrap().in_flight -= 1
    });
}

fn respond(stream: &mut TcpStream, mode: ServerMode, request: &SeenRequest, done: impl FnOnce()) {
    match mode {
        ServerMode::Respond | ServerMode::Delayed => {
            if matches!(mode, ServerMode::Delayed) {
                std::thread::sleep(RESPONSE_DELAY);
            }
            let (status, extra_header, body) = if request.target == "/redirect" {
                ("302 Found", "Location: http://10.0.0.1/\r\n", "")
            } else {
                ("200 OK", "", "hello from the counting server")
            };
            let response = format!(
                "HTTP/1.1 {status}\r\n{extra_header}Content-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            done();
            let _ = stream.write_all(response.as_bytes());
        }
        ServerMode::Hang => {
            // Hold the connection without responding until the client closes
            // it or the read timeout passes.
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink), Ok(read) if read > 0) {}
            done();
        }
    }
}

/// Reads up to the blank line that ends the request head.
fn read_request_head(stream: &mut TcpStream) -> Option<SeenRequest> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).ok().filter(|read| *read > 0)?;
        head.extend_from_slice(&chunk[..read]);
        if head.len() > 64 << 10 {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some(SeenRequest { target, headers })
}

// ---------------------------------------------------------------------------
// Misbehaviour matrix.

/// One hostile action and the error kind the host must report for it.
struct Misbehaviour {
    action: &'static str,
    input: Value,
    kind: &'static str,
}

fn misbehaviours() -> Vec<Misbehaviour> {
    let case = |action, input, kind| Misbehaviour {
        action,
        input,
        kind,
    };
    vec![
        case("spin", json!({}), "cpu_time_limit"),
        case("host-call-flood", json!({}), "cpu_time_limit"),
        case("allocate", json!({}), "memory_limit"),
        case("recurse", json!({}), "stack_overflow"),
        case("panic", json!({}), "trap"),
        case("unreachable", json!({}), "trap"),
        case(
            "huge-output",
            json!({ "bytes": 4 * OUTPUT_BYTES }),
            "output_too_large",
        ),
        case("kv-write", json!({}), "denied"),
    ]
}

/// Checks that `result` is the failure `case` expects.
fn check_misbehaviour(case: &Misbehaviour, result: &Result<CallOutput, CallFailure>) {
    let failure = match result {
        Ok(output) => panic!("`{}` succeeded with {}", case.action, output.output),
        Err(failure) => failure,
    };
    assert_eq!(
        failure.error.kind(),
        case.kind,
        "`{}` failed with the wrong kind: {}",
        case.action,
        failure.error
    );
}

fn log_flood_input() -> Value {
    json!({ "lines": LOG_FLOOD_LINES })
}

/// Checks that `log-flood` succeeded with its logs capped at the limit.
fn check_log_flood(result: &Result<CallOutput, CallFailure>) {
    let output = match result {
        Ok(output) => output,
        Err(failure) => panic!("`log-flood` failed: {}", failure.error),
    };
    let report = &output.report;
    let kept_bytes: usize = report.logs.iter().map(|line| line.message.len()).sum();
    assert_eq!(output.output, json!({ "lines": LOG_FLOOD_LINES }));
    assert!(report.logs_dropped > 0, "`log-flood` dropped no lines");
    assert!(
        kept_bytes <= LOG_BYTES,
        "`log-flood` kept {kept_bytes} bytes of logs, over {LOG_BYTES}"
    );
    assert!(!report.logs.is_empty(), "`log-flood` kept no lines");
    assert_eq!(
        report.logs.len() as u64 + u64::from(report.logs_dropped),
        LOG_FLOOD_LINES,
        "kept and dropped lines do not add up to the lines written"
    );
}

#[tokio::test]
async fn each_misbehaviour_fails_with_its_kind() {
    let sandbox = Sandbox::start(grant_origins(&[])).await;

    for case in misbehaviours() {
        let started = Instant::now();
        let result = sandbox
            .call("hostile", case.action, case.input.clone())
            .await;
        check_misbehaviour(&case, &result);
        assert!(
            started.elapsed() < STOPPED_WITHIN,
            "`{}` took {:?}",
            case.action,
            started.elapsed()
        );
    }

    let flood = sandbox
        .call("hostile", "log-flood", log_flood_input())
        .await;
    check_log_flood(&flood);
    assert_eq!(sandbox.kv.len(), 0, "`kv-write` reached the store");
}

#[tokio::test]
async fn traps_name_their_cause() {
    let sandbox = Sandbox::start(grant_origins(&[])).await;
    for action in ["panic", "unreachable"] {
        let failure = sandbox
            .call("hostile", action, json!({}))
            .await
            .expect_err(action);
        let message = failure.error.to_string();
        assert!(
            message.contains("unreachable"),
            "`{action}` trapped with {message:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaviour_leaves_concurrent_calls_alone() {
    const NOOP_CALLS: usize = 64;
    let sandbox = Sandbox::start(grant_origins(&[])).await;

    let mut zoo = Vec::new();
    for case in misbehaviours() {
        let runtime = sandbox.runtime.clone();
        let task = tokio::spawn(async move {
            let result = call(&runtime, "hostile", case.action, case.input.clone()).await;
            (case, result)
        });
        zoo.push(task);
    }
    let runtime = sandbox.runtime.clone();
    let flood =
        tokio::spawn(
            async move { call(&runtime, "hostile", "log-flood", log_flood_input()).await },
        );
    let mut echoes = Vec::new();
    for index in 0..NOOP_CALLS {
        let runtime = sandbox.runtime.clone();
        let input = json!({ "call": index, "text": "well-behaved" });
        echoes.push(tokio::spawn(async move {
            let result = call(&runtime, "noop", "echo", input.clone()).await;
            (input, result)
        }));
    }

    for task in echoes {
        let (input, result) = task.await.unwrap();
        match result {
            Ok(output) => assert_eq!(output.output, input, "echo changed its input"),
            Err(failure) => panic!("echo of {input} failed: {}", failure.error),
        }
    }
    for task in zoo {
        let (case, result) = task.await.unwrap();
        check_misbehaviour(&case, &result);
    }
    check_log_flood(&flood.await.unwrap());
}

// ---------------------------------------------------------------------------
// Network and SSRF.

/// Error kind in a `fetch` output, or `None` when there was a response.
fn fetch_error_kind(output: &Value) -> Option<&str> {
    output["error"]["kind"].as_str()
}

#[test]
fn url_parser_normalises_address_spellings() {
    // The url crate follows the WHATWG URL standard: a host made only of
    // IPv4 numbers in decimal, octal or hex, with one to four parts, is an
    // IPv4 address and is serialised in dotted decimal. An IPv4-mapped IPv6
    // address stays IPv6 and is serialised in hex.
    let cases = [
        ("http://2130706433:8080/", "127.0.0.1"),
        ("http://0177.0.0.1:8080/", "127.0.0.1"),
        ("http://0x7f.0.0.1:8080/", "127.0.0.1"),
        ("http://127.1:8080/", "127.0.0.1"),
        ("http://[::ffff:127.0.0.1]:8080/", "[::ffff:7f00:1]"),
    ];
    for (spelling, host) in cases {
        let url = Url::parse(spelling).unwrap();
        assert_eq!(url.host_str(), Some(host), "{spelling}");
    }
}

#[tokio::test]
async fn fetch_reaches_only_granted_origins() {
    let granted = CountingServer::start(ServerMode::Respond);
    let ungranted = CountingServer::start(ServerMode::Respond);
    let sandbox = Sandbox::start(grant_origins(&[&granted.origin()])).await;
    let port = granted.port();

    // Spellings that the URL parser turns into the granted literal
    // 127.0.0.1 are the granted origin and reach the server. Every other
    // address, loopback or not, is denied before any connection.
    let cases: Vec<(String, Option<&str>)> = vec![
        (format!("http://127.0.0.1:{port}/"), None),
        (format!("http://2130706433:{port}/"), None),
        (format!("http://0177.0.0.1:{port}/"), None),
        (format!("http://0x7f.0.0.1:{port}/"), None),
        (format!("http://127.1:{port}/"), None),
        (format!("{}/", ungranted.origin()), Some("denied")),
        (format!("http://[::ffff:127.0.0.1]:{port}/"), Some("denied")),
        (format!("http://[::1]:{port}/"), Some("denied")),
        (format!("http://127.0.0.2:{port}/"), Some("denied")),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            Some("denied"),
        ),
        ("http://10.0.0.1/".to_string(), Some("denied")),
    ];
    for (url, expected_error) in cases {
        let before = granted.requests().len();
        let output = sandbox.fetch(json!({ "url": url })).await;
        let reached = granted.requests().len() - before;
        assert_eq!(fetch_error_kind(&output), expected_error, "{url}: {output}");
        match expected_error {
            None => {
                assert_eq!(output["status"], 200, "{url}: {output}");
                assert_eq!(reached, 1, "{url} reached the server {reached} times");
            }
            Some(_) => assert_eq!(reached, 0, "{url} reached the server"),
        }
    }
    assert_eq!(
        ungranted.connections(),
        0,
        "the ungranted server was reached"
    );
}

#[tokio::test]
async fn denied_fetch_is_recorded_without_status() {
    let sandbox = Sandbox::start(grant_origins(&[])).await;
    let result = sandbox
        .call(
            "hostile",
            "fetch",
            json!({ "url": "http://169.254.169.254/latest/meta-data/" }),
        )
        .await;
    let report = match result {
        Ok(output) => output.report,
        Err(failure) => panic!("fetch failed: {}", failure.error),
    };
    assert_eq!(report.http_calls.len(), 1, "{:?}", report.http_calls);
    let record = &report.http_calls[0];
    assert_eq!(record.status, None);
    assert!(
        record.outcome.starts_with("denied"),
        "outcome {:?}",
        record.outcome
    );
}

#[tokio::test]
async fn granted_host_name_resolving_to_loopback_fails() {
    let server = CountingServer::start(ServerMode::Respond);
    let origin = format!("http://localhost:{}", server.port());
    let sandbox = Sandbox::start(grant_origins(&[&origin])).await;

    let output = sandbox.fetch(json!({ "url": format!("{origin}/") })).await;
    // The origin is granted, so the request passes the policy, but the
    // resolver drops every loopback address `localhost` resolves to.
    assert_eq!(fetch_error_kind(&output), Some("transport"), "{output}");
    let message = output["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no address plugins may reach"),
        "message {message:?}"
    );
    assert_eq!(server.connections(), 0, "the server was reached");
}

#[tokio::test]
async fn redirect_is_returned_not_followed() {
    let server = CountingServer::start(ServerMode::Respond);
    let sandbox = Sandbox::start(grant_origins(&[&server.origin()])).await;

    let url = format!("{}/redirect", server.origin());
    let output = sandbox.fetch(json!({ "url": url })).await;
    assert_eq!(output["status"], 302, "{output}");
    assert_eq!(output["location"], "http://10.0.0.1/", "{output}");
    let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/redirect"]);
}

#[tokio::test]
async fn wall_clock_limit_covers_host_calls() {
    let server = CountingServer::start(ServerMode::Hang);
    let mut grant = grant_origins(&[&server.origin()]);
    grant.limits.wall_ms = 500;
    grant.limits.http_timeout_ms = 60_000;
    let sandbox = Sandbox::start(grant).await;

    let started = Instant::now();
    let url = format!("{}/slow", server.origin());
    let failure = sandbox
        .call("hostile", "fetch", json!({ "url": url }))
        .await
        .expect_err("a fetch from a server that never responds succeeded");
    assert_eq!(failure.error.kind(), "timeout", "{}", failure.error);
    assert!(
        started.elapsed() < STOPPED_WITHIN,
        "the call took {:?}",
        started.elapsed()
    );
    assert_eq!(
        server.requests().len(),
        1,
        "the request never reached the server"
    );
}

#[tokio::test]
async fn waiting_for_http_is_not_cpu_time() {
    let server = CountingServer::start(ServerMode::Delayed);
    let sandbox = Sandbox::start(grant_origins(&[&server.origin()])).await;

    let output = sandbox
        .fetch(json!({ "url": format!("{}/", server.origin()) }))
        .await;
    assert_eq!(output["status"], 200, "{output}");
    assert_eq!(server.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// Concurrent-call limit.

/// Calls of each kind the concurrency test starts at once.
const CONCURRENT_EACH: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_limit_holds() {
    let server = CountingServer::start(ServerMode::Delayed);
    let mut grant = grant_origins(&[&server.origin()]);
    grant.limits.concurrent_calls = 2;
    // Twelve calls two at a time, six of them waiting RESPONSE_DELAY for
    // their response: the last call waits about 6 s for its slot.
    grant.limits.wall_ms = 30_000;
    let sandbox = Sandbox::start(grant).await;

    let url = format!("{}/slow", server.origin());
    let mut fetches = Vec::new();
    let mut spins = Vec::new();
    for _ in 0..CONCURRENT_EACH {
        let runtime = sandbox.runtime.clone();
        let input = json!({ "url": url });
        fetches.push(tokio::spawn(async move {
            call(&runtime, "hostile", "fetch", input).await
        }));
        let runtime = sandbox.runtime.clone();
        spins.push(tokio::spawn(async move {
            call(&runtime, "hostile", "spin", json!({})).await
        }));
    }

    for task in fetches {
        match task.await.unwrap() {
            Ok(output) => assert_eq!(output.output["status"], 200, "{}", output.output),
            Err(failure) => panic!("fetch failed: {}", failure.error),
        }
    }
    for task in spins {
        let failure = task.await.unwrap().expect_err("spin succeeded");
        assert_eq!(failure.error.kind(), "cpu_time_limit", "{}", failure.error);
    }
    assert_eq!(server.requests().len(), CONCURRENT_EACH);
    assert!(
        server.max_in_flight() <= 2,
        "the server saw {} requests at once under a limit of 2 calls",
        server.max_in_flight()
    );
    // Two requests overlap for most of RESPONSE_DELAY, so a server that
    // never saw two at once means the calls ran one by one.
    assert_eq!(server.max_in_flight(), 2, "no two calls ran at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_for_a_call_slot_counts_as_wall_time() {
    const WALL_MS: u64 = 1_000;
    let server = CountingServer::start(ServerMode::Hang);
    let mut grant = grant_origins(&[&server.origin()]);
    grant.limits.concurrent_calls = 1;
    grant.limits.wall_ms = WALL_MS;
    grant.limits.http_timeout_ms = 60_000;
    let sandbox = Sandbox::start(grant).await;
    let url = format!("{}/hang", server.origin());

    let spawn_fetch = |runtime: Arc<Runtime>, url: String| {
        tokio::spawn(async move {
            let result = call(&runtime, "hostile", "fetch", json!({ "url": url })).await;
            (result, Instant::now())
        })
    };
    let holder = spawn_fetch(sandbox.runtime.clone(), url.clone());
    // The holder has its slot once its request reaches the server.
    for _ in 0..500 {
        if !server.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.requests().len(),
        1,
        "the first call never reached the server"
    );
    let waiter = spawn_fetch(sandbox.runtime.clone(), url);

    let (holder_result, holder_ended) = holder.await.unwrap();
    let (waiter_result, waiter_ended) = waiter.await.unwrap();
    let holder_failure = holder_result.expect_err("a fetch that never gets a response succeeded");
    let waiter_failure = waiter_result.expect_err("a fetch that never gets a response succeeded");
    assert_eq!(
        holder_failure.error.kind(),
        "timeout",
        "{}",
        holder_failure.error
    );
    assert_eq!(
        waiter_failure.error.kind(),
        "timeout",
        "{}",
        waiter_failure.error
    );
    // Had the wait not counted, the waiter would have run a full WALL_MS
    // after the holder released its slot.
    let after_holder = waiter_ended.saturating_duration_since(holder_ended);
    assert!(
        after_holder < Duration::from_millis(WALL_MS),
        "the waiting call ended {after_holder:?} after the holder"
    );
}

#[tokio::test]
async fn zero_concurrent_calls_fails_to_load() {
    let runtime = Runtime::new(RuntimeConfig::default(), None, None).unwrap();
    let mut grant = grant_origins(&[]);
    grant.limits.concurrent_calls = 0;
    let Err(error) = runtime.load(&components().hostile, |_| grant.clone()).await else {
        panic!("a grant of 0 concurrent calls was accepted");
    };
    assert!(
        matches!(&error, LoadError::Grant { plugin, .. } if plugin == "hostile"),
        "{error}"
    );
    let source = std::error::Error::source(&error)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        source.contains("limits.concurrent_calls"),
        "the error does not name the field: {error}: {source}"
    );
    assert!(runtime.plugin("hostile").is_none());
}

#[tokio::test]
async fn secrets_go_only_where_granted() {
    let bound = CountingServer::start(ServerMode::Respond);
    let unbound = CountingServer::start(ServerMode::Respond);
    let mut grant = grant_origins(&[&bound.origin(), &unbound.origin()]);
    grant.secrets = vec![SecretGrant {
        name: GRANTED_SECRET.to_string(),
        origins: vec![bound.origin()],
    }];
    let sandbox = Sandbox::start(grant).await;

    // A secret the host has a value for but did not grant is denied outright.
    let output = sandbox
        .fetch(json!({ "url": format!("{}/", bound.origin()), "secret": UNGRANTED_SECRET }))
        .await;
    assert_eq!(fetch_error_kind(&output), Some("denied"), "{output}");
    assert!(
        bound.requests().is_empty(),
        "a denied request reached the server"
    );

    // A granted secret is denied on an origin it is not bound to.
    let output = sandbox
        .fetch(json!({ "url": format!("{}/", unbound.origin()), "secret": GRANTED_SECRET }))
        .await;
    assert_eq!(fetch_error_kind(&output), Some("denied"), "{output}");
    assert_eq!(
        unbound.connections(),
        0,
        "a denied request reached the server"
    );

    // The granted secret on its own origin arrives in the header.
    let output = sandbox
        .fetch(json!({ "url": format!("{}/", bound.origin()), "secret": GRANTED_SECRET }))
        .await;
    assert_eq!(output["status"], 200, "{output}");
    let requests = bound.requests();
    assert_eq!(requests.len(), 1);
    let header = requests[0]
        .headers
        .iter()
        .find(|(name, _)| name == SECRET_HEADER)
        .map(|(_, value)| value.as_str());
    assert_eq!(header, Some(GRANTED_SECRET_VALUE));
    assert!(
        !output.to_string().contains(GRANTED_SECRET_VALUE),
        "the secret value reached the plugin"
    );
}

// ---------------------------------------------------------------------------
// WASI and key-value.

#[tokio::test]
async fn wasi_grants_no_files_environment_or_sockets() {
    let server = CountingServer::start(ServerMode::Respond);
    let sandbox = Sandbox::start(grant_origins(&[])).await;

    for path in ["/etc/passwd", "Cargo.toml", "/"] {
        let output = sandbox
            .call("hostile", "read-file", json!({ "path": path }))
            .await
            .unwrap_or_else(|failure| panic!("read-file {path}: {}", failure.error))
            .output;
        assert!(
            output.get("read_bytes").is_none(),
            "{path} was read: {output}"
        );
        assert!(output["error"].is_string(), "{path}: {output}");
    }

    let output = sandbox
        .call("hostile", "read-env", json!({}))
        .await
        .unwrap_or_else(|failure| panic!("read-env: {}", failure.error))
        .output;
    assert_eq!(output["vars"], json!([]), "environment variables leaked");
    assert_eq!(output["args"], json!([]), "arguments leaked");

    let address = server.address.to_string();
    let output = sandbox
        .call("hostile", "connect", json!({ "address": address }))
        .await
        .unwrap_or_else(|failure| panic!("connect: {}", failure.error))
        .output;
    assert!(output.get("connected").is_none(), "connected: {output}");
    assert!(output["error"].is_string(), "{output}");
    assert_eq!(server.connections(), 0, "the plugin opened a socket");
}

#[tokio::test]
async fn key_value_write_without_grant_is_denied() {
    let sandbox = Sandbox::start(grant_origins(&[])).await;
    let failure = sandbox
        .call("hostile", "kv-write", json!({}))
        .await
        .expect_err("kv-write succeeded without a key-value grant");
    assert_eq!(failure.error.kind(), "denied", "{}", failure.error);
    assert_eq!(sandbox.kv.len(), 0, "the write reached the store");
}

#[tokio::test]
async fn key_value_write_with_grant_succeeds() {
    let mut grant = grant_origins(&[]);
    grant.key_value = true;
    let sandbox = Sandbox::start(grant).await;
    let output = sandbox
        .call("hostile", "kv-write", json!({}))
        .await
        .unwrap_or_else(|failure| panic!("kv-write: {}", failure.error))
        .output;
    assert_eq!(output["written"], true, "{output}");
    assert_eq!(sandbox.kv.len(), 1, "the write did not reach the store");
}

// ---------------------------------------------------------------------------
// Grants narrowed to what the plugin requested.

/// Returns the grant entries the runtime ignores for the hostile plugin.
fn ignored_grants(sandbox: &Sandbox) -> Vec<IgnoredGrant> {
    let loaded = sandbox
        .runtime
        .plugin("hostile")
        .expect("hostile is loaded");
    loaded.policy.ignored().to_vec()
}

#[tokio::test]
async fn granted_origin_not_requested_is_denied() {
    let requested = CountingServer::start(ServerMode::Respond);
    let unrequested = CountingServer::start(ServerMode::Respond);
    let mut grant = grant_origins(&[&requested.origin()]);
    grant.http_origins.push(unrequested.origin());
    let sandbox = Sandbox::start(grant).await;

    let output = sandbox
        .fetch(json!({ "url": format!("{}/", unrequested.origin()) }))
        .await;
    assert_eq!(fetch_error_kind(&output), Some("denied"), "{output}");
    assert_eq!(
        unrequested.connections(),
        0,
        "the unrequested origin was reached"
    );

    let output = sandbox
        .fetch(json!({ "url": format!("{}/", requested.origin()) }))
        .await;
    assert_eq!(output["status"], 200, "{output}");
    assert_eq!(
        ignored_grants(&sandbox),
        [IgnoredGrant::HttpOrigin(unrequested.origin())]
    );
}

#[tokio::test]
async fn requested_setting_origin_needs_a_grant() {
    let server = CountingServer::start(ServerMode::Respond);
    // The plugin requests the origin of `target_origin` and the operator
    // sets that setting, but does not grant the origin itself.
    let mut grant = grant_origins(&[]);
    grant
        .config
        .insert("target_origin".to_string(), server.origin());
    let sandbox = Sandbox::start(grant).await;

    let output = sandbox
        .fetch(json!({ "url": format!("{}/", server.origin()) }))
        .await;
    assert_eq!(fetch_error_kind(&output), Some("denied"), "{output}");
    assert_eq!(server.connections(), 0, "an ungranted origin was reached");
}

#[tokio::test]
async fn granted_secret_not_requested_is_denied() {
    let server = CountingServer::start(ServerMode::Respond);
    let mut grant = grant_origins(&[&server.origin()]);
    grant.secrets = vec![SecretGrant {
        name: UNREQUESTED_SECRET.to_string(),
        origins: vec![server.origin()],
    }];
    let sandbox = Sandbox::start(grant).await;

    let output = sandbox
        .fetch(json!({ "url": format!("{}/", server.origin()), "secret": UNREQUESTED_SECRET }))
        .await;
    assert_eq!(fetch_error_kind(&output), Some("denied"), "{output}");
    assert!(
        server.requests().is_empty(),
        "a request with an unrequested secret reached the server"
    );
    assert!(
        !output.to_string().contains(UNREQUESTED_SECRET_VALUE),
        "the secret value reached the plugin"
    );
    assert_eq!(
        ignored_grants(&sandbox),
        [IgnoredGrant::Secret(UNREQUESTED_SECRET.to_string())]
    );
}

/// Calls `hostile.read-config` and returns the setting's value or null.
async fn read_config(sandbox: &Sandbox, key: &str) -> Value {
    let output = sandbox
        .call("hostile", "read-config", json!({ "key": key }))
        .await
        .unwrap_or_else(|failure| panic!("read-config {key}: {}", failure.error))
        .output;
    output["value"].clone()
}

#[tokio::test]
async fn granted_setting_not_requested_is_hidden() {
    let mut grant = grant_origins(&[]);
    grant
        .config
        .insert("visible".to_string(), "shown".to_string());
    grant
        .config
        .insert("hidden".to_string(), "not-for-the-plugin".to_string());
    let sandbox = Sandbox::start(grant).await;

    assert_eq!(read_config(&sandbox, "visible").await, "shown");
    assert_eq!(read_config(&sandbox, "hidden").await, Value::Null);
    assert_eq!(
        ignored_grants(&sandbox),
        [IgnoredGrant::Config("hidden".to_string())]
    );
}

// ---------------------------------------------------------------------------
// Loading.

#[tokio::test]
async fn random_bytes_fail_to_compile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.wasm");
    std::fs::write(&path, pseudo_random_bytes(4096)).unwrap();
    let runtime = Runtime::new(RuntimeConfig::default(), None, None).unwrap();

    let error = runtime
        .load(&path, |_| grant_origins(&[]))
        .await
        .err()
        .expect("random bytes loaded as a component");
    assert!(matches!(error, LoadError::Compile { .. }), "{error:?}");
}

#[tokio::test]
async fn unknown_import_is_rejected() {
    let runtime = Runtime::new(RuntimeConfig::default(), None, None).unwrap();
    let error = runtime
        .load(&components().hostile_import, |_| grant_origins(&[]))
        .await
        .err()
        .expect("a component with an unknown import loaded");
    assert!(
        matches!(error, LoadError::ForeignImport { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("does not offer"), "{message}");
    assert!(
        message.contains("palisade-fixture:hostile-import/backdoor"),
        "{message}"
    );
    assert!(runtime.plugin("hostile-import").is_none());
}

/// Bytes from a fixed-seed xorshift generator, so every run tests the same
/// file.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
