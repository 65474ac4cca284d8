//! Quota tests: the host limits a plugin's outbound requests to the rules
//! in its grant, across concurrent calls and restarts, and the upstream never
//! receives more requests than the rules allow.
//!
//! Plugins call a counting HTTP server on 127.0.0.1 that records when each
//! request arrived and the most requests it held at once. The `hostile`
//! fixture's `fetch` action reports the host's `http-error` in its output,
//! and the `virustotal` plugin turns a refusal into its own `rate-limited`
//! error. The daemon test runs `palisade serve` and `palisade quota` as
//! real processes against the VirusTotal stand-in of `tests/support`.

mod support;

use palisade::host::StoreKeyValue;
use support::daemon::Daemon;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use palisade_runtime::{
    CallContext, CallError, CallFailure, CallOutput, Grant, KeyValueStore, Limits, LoadError,
    QUOTA_NAMESPACE, QuotaRule, Runtime, RuntimeConfig, SecretGrant, SecretSource, SecretValue,
};
use palisade_store::{SledStore, Store};
use serde_json::{Value, json};

/// Secret the VirusTotal plugin requests the host to place in its requests.
const VT_SECRET: &str = "virustotal-api-key";

/// A SHA-256 that the counting server reports as not found.
const UNKNOWN_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000001";

// ---------------------------------------------------------------------------
// Fixtures.

/// Builds the `hostile` fixture once per test binary, into the same target
/// directory as the sandbox tests, so a second build is a no-op.
fn hostile_component() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-plugins");
        let manifest = support::repo_root().join("plugins/hostile/Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--manifest-path"])
            .arg(&manifest)
            .args(["--target", "wasm32-wasip2", "--release", "--quiet"])
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the hostile fixture failed");
        target_dir.join("wasm32-wasip2/release/hostile.wasm")
    })
}

fn virustotal_component() -> PathBuf {
    support::plugins_dir().join("virustotal.wasm")
}

/// Parses quota rules written as TOML `[[quotas]]` tables.
fn rules(text: &str) -> Vec<QuotaRule> {
    #[derive(serde::Deserialize)]
    struct Rules {
        quotas: Vec<QuotaRule>,
    }
    toml::from_str::<Rules>(text).unwrap().quotas
}

/// Returns a grant of `origin` with `quotas`, with `origin` also set as the
/// hostile plugin's `target_origin`, which it requests as
/// `config:target_origin`. The wall-clock limit leaves room for the waits
/// the tests cause.
fn grant(origin: &str, quotas: Vec<QuotaRule>) -> Grant {
    Grant {
        http_origins: vec![origin.to_string()],
        config: [("target_origin".to_string(), origin.to_string())].into(),
        limits: Limits {
            wall_ms: 20_000,
            ..Limits::default()
        },
        quotas,
        ..Grant::default()
    }
}

/// Returns the VirusTotal grant: `origin` as base URL, with the API key bound to it.
fn virustotal_grant(origin: &str, quotas: Vec<QuotaRule>) -> Grant {
    let mut grant = grant(origin, quotas);
    grant.config = [("base_url".to_string(), origin.to_string())].into();
    grant.secrets = vec![SecretGrant {
        name: VT_SECRET.into(),
        origins: vec![origin.into()],
    }];
    grant
}

struct TestSecrets;

impl SecretSource for TestSecrets {
    fn secret(&self, name: &str) -> Option<SecretValue> {
        (name == VT_SECRET).then(|| SecretValue::new("quota-test-key".into()))
    }
}

/// Starts a runtime with `component` loaded under `grant`.
async fn runtime_with(
    component: &Path,
    grant: Grant,
    kv: Option<Arc<dyn KeyValueStore>>,
) -> Arc<Runtime> {
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: Some(support::cache_dir()),
        },
        kv,
        Some(Arc::new(TestSecrets)),
    )
    .unwrap();
    runtime.load(component, |_| grant.clone()).await.unwrap();
    Arc::new(runtime)
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

/// Calls `hostile.fetch` on `url` and returns its output: the response, or
/// the host's HTTP error under `error`.
async fn fetch(runtime: &Runtime, url: &str) -> Value {
    match call(runtime, "hostile", "fetch", json!({ "url": url })).await {
        Ok(output) => output.output,
        Err(failure) => panic!("fetch {url} failed: {}", failure.error),
    }
}

/// Calls `hostile.fetch` on `url` from `calls` tasks at once.
async fn fetch_concurrently(runtime: &Arc<Runtime>, url: &str, calls: usize) -> Vec<Value> {
    let mut tasks = Vec::new();
    for _ in 0..calls {
        let runtime = runtime.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move { fetch(&runtime, &url).await }));
    }
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await.unwrap());
    }
    outputs
}

// ---------------------------------------------------------------------------
// A counting HTTP server on 127.0.0.1.

/// The server's reply to one request.
#[derive(Clone)]
struct Reply {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// Time between reading the request and responding to it.
    delay: Duration,
}

impl Reply {
    fn ok() -> Self {
        Self {
            status: "200 OK",
            headers: Vec::new(),
            body: "counted".into(),
            delay: Duration::ZERO,
        }
    }

    fn delayed(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::ok()
        }
    }

    fn too_many_requests(retry_after: &str) -> Self {
        Self {
            status: "429 Too Many Requests",
            headers: vec![("Retry-After", retry_after.to_string())],
            body: "slow down".into(),
            delay: Duration::ZERO,
        }
    }

    /// VirusTotal's response for a file it has no report on.
    fn virustotal_not_found() -> Self {
        let body = json!({ "error": { "code": "NotFoundError", "message": "not found" } });
        Self {
            status: "404 Not Found",
            headers: vec![("Content-Type", "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
}

/// Chooses the reply to request number `index`, counted from 0.
type Responder = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

#[derive(Default)]
struct Tally {
    arrivals: Vec<Instant>,
    in_flight: usize,
    max_in_flight: usize,
}

/// A plain HTTP/1.1 server on 127.0.0.1 that counts requests. A request is
/// in flight from when its head is read until the server starts to respond.
/// It runs on detached threads until the test process exits.
struct CountingServer {
    address: SocketAddr,
    tally: Arc<Mutex<Tally>>,
}

impl CountingServer {
    fn start(responder: Responder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let recorder = tally.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let recorder = recorder.clone();
                let responder = responder.clone();
                std::thread::spawn(move || answer(stream, &responder, &recorder));
            }
        });
        Self { address, tally }
    }

    fn answering(reply: Reply) -> Self {
        Self::start(Arc::new(move |_| reply.clone()))
    }

    fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    fn url(&self) -> String {
        format!("{}/counted", self.origin())
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.tally.lock().unwrap().arrivals.clone()
    }

    fn requests(&self) -> usize {
        self.tally.lock().unwrap().arrivals.len()
    }

    fn max_in_flight(&self) -> usize {
        self.tally.lock().unwrap().max_in_flight
    }
}

fn answer(mut stream: TcpStream, responder: &Responder, tally: &Mutex<Tally>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    if !read_request_head(&mut stream) {
        return;
    }
    let index = {
        let mut tally = tally.lock().unwrap();
        tally.arrivals.push(Instant::now());
        tally.in_flight += 1;
        tally.max_in_flight = tally.max_in_flight.max(tally.in_flight);
        tally.arrivals.len() - 1
    };
    let reply = responder(index);
    std::thread::sleep(reply.delay);
    tally.lock().unwrap().in_flight -= 1;

    let mut response = format!("HTTP/1.1 {}\r\n", reply.status);
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.body.len(),
        reply.body
    ));
    let _ = stream.write_all(response.as_bytes());
}

/// Reads up to the blank line that ends the request head; false when the
/// client closed first.
fn read_request_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(read) if read > 0 => head.extend_from_slice(&chunk[..read]),
            _ => return false,
        }
        if head.len() > 64 << 10 {
            return false;
        }
    }
    true
}

/// Error kind in a `fetch` output, or `None` when there was a response.
fn fetch_error_kind(output: &Value) -> Option<&str> {
    output["error"]["kind"].as_str()
}

// ---------------------------------------------------------------------------
// Rates, counts, concurrency and pauses.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_with_fail_admits_exactly_the_rate() {
    const CALLS: usize = 10;
    let server = CountingServer::answering(Reply::virustotal_not_found());
    let quotas = rules(
        r#"
        [[quotas]]
        rate = { requests = 3, per_seconds = 60 }
        on_exceed = "fail"
        "#,
    );
    let runtime = runtime_with(
        &virustotal_component(),
        virustotal_grant(&server.origin(), quotas),
        None,
    )
    .await;

    let mut tasks = Vec::new();
    for _ in 0..CALLS {
        let runtime = runtime.clone();
        let input = json!({ "hash": UNKNOWN_HASH });
        tasks.push(tokio::spawn(async move {
            call(&runtime, "virustotal", "file-report", input).await
        }));
    }
    let mut succeeded = 0;
    let mut limited = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(output) => {
                assert_eq!(output.output["found"], false, "{}", output.output);
                succeeded += 1;
            }
            Err(failure) => match failure.error {
                CallError::RateLimited { retry_after_ms, .. } => limited.push(retry_after_ms),
                other => panic!("a call failed with {other}"),
            },
        }
    }

    assert_eq!(server.requests(), 3, "the server saw more than the rate");
    assert_eq!(succeeded, 3);
    assert_eq!(limited.len(), CALLS - 3);
    // The next token comes 20 s after the bucket ran dry.
    for retry_after_ms in limited {
        let retry_after_ms = retry_after_ms.expect("a rate refusal without retry-after");
        assert!(
            (15_000..=20_000).contains(&retry_after_ms),
            "retry after {retry_after_ms} ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_with_wait_spaces_requests_out() {
    let server = CountingServer::answering(Reply::ok());
    let quotas = rules(
        r#"
        [[quotas]]
        rate = { requests = 2, per_seconds = 1 }
        on_exceed = "wait"
        max_wait_ms = 5000
        "#,
    );
    let runtime = runtime_with(hostile_component(), grant(&server.origin(), quotas), None).await;

    let outputs = fetch_concurrently(&runtime, &server.url(), 4).await;
    for output in &outputs {
        assert_eq!(output["status"], 200, "{output}");
    }
    let mut arrivals = server.arrivals();
    arrivals.sort();
    assert_eq!(arrivals.len(), 4);
    // Two requests fit the bucket at once; the third needs half a second
    // of refill and the fourth a whole second.
    let third = arrivals[2] - arrivals[0];
    let fourth = arrivals[3] - arrivals[0];
    assert!(third >= Duration::from_millis(400), "third after {third:?}");
    assert!(
        fourth >= Duration::from_millis(900),
        "fourth after {fourth:?}"
    );
}

/// Sleeps past the next UTC midnight when it is less than `margin` away,
/// so a test of daily counts stays within one day.
async fn avoid_utc_midnight(margin: Duration) {
    let now = chrono::Utc::now();
    let Some(midnight) = now
        .date_naive()
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
    else {
        return;
    };
    let left = (midnight.and_utc() - now).to_std().unwrap_or_default();
    if left < margin {
        tokio::time::sleep(left + Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn daily_count_survives_a_restart() {
    avoid_utc_midnight(Duration::from_secs(60)).await;
    let server = CountingServer::answering(Reply::ok());
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db");
    let quotas = rules(
        r#"
        [[quotas]]
        daily = 5
        "#,
    );

    {
        let store = Arc::new(SledStore::open(&database).unwrap());
        let kv: Arc<dyn KeyValueStore> = Arc::new(StoreKeyValue(store.clone()));
        let runtime = runtime_with(
            hostile_component(),
            grant(&server.origin(), quotas.clone()),
            Some(kv),
        )
        .await;
        for request in 1..=5 {
            let output = fetch(&runtime, &server.url()).await;
            assert_eq!(output["status"], 200, "request {request}: {output}");
        }
        let keys = store.kv_list(QUOTA_NAMESPACE, "hostile ", 10).unwrap();
        assert_eq!(keys, ["hostile * day"]);
        store.flush().unwrap();
    }

    // A new runtime on the same database starts from the stored count.
    let store = Arc::new(SledStore::open(&database).unwrap());
    let kv: Arc<dyn KeyValueStore> = Arc::new(StoreKeyValue(store.clone()));
    let runtime = runtime_with(
        hostile_component(),
        grant(&server.origin(), quotas),
        Some(kv),
    )
    .await;
    let status = runtime.quotas().status();
    let daily = status[0].rules[0].daily.clone().unwrap();
    assert_eq!((daily.used, daily.allowed), (5, 5));

    let output = fetch(&runtime, &server.url()).await;
    assert_eq!(fetch_error_kind(&output), Some("rate-limited"), "{output}");
    let retry_after_ms = output["error"]["retry_after_ms"].as_u64().unwrap();
    assert!(
        retry_after_ms <= 24 * 3600 * 1000,
        "retry after {retry_after_ms} ms is past the next UTC midnight"
    );
    assert_eq!(server.requests(), 5, "the server saw the refused request");
}

#[tokio::test]
async fn retry_after_pause_fails_without_a_rule() {
    let server = CountingServer::start(Arc::new(|index| match index {
        0 => Reply::too_many_requests("1"),
        _ => Reply::ok(),
    }));
    let runtime = runtime_with(
        hostile_component(),
        grant(&server.origin(), Vec::new()),
        None,
    )
    .await;

    let output = fetch(&runtime, &server.url()).await;
    assert_eq!(output["status"], 429, "{output}");
    let paused_at = Instant::now();

    // The 429 pauses the origin for every call of the plugin.
    let output = fetch(&runtime, &server.url()).await;
    assert_eq!(fetch_error_kind(&output), Some("rate-limited"), "{output}");
    let retry_after_ms = output["error"]["retry_after_ms"].as_u64().unwrap();
    assert!(
        (500..=1000).contains(&retry_after_ms),
        "retry after {retry_after_ms} ms"
    );
    assert_eq!(
        server.requests(),
        1,
        "a request reached the server in the pause"
    );
    let status = runtime.quotas().status();
    assert_eq!(status[0].pauses.len(), 1, "{status:?}");

    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(paused_at.elapsed())).await;
    let output = fetch(&runtime, &server.url()).await;
    assert_eq!(output["status"], 200, "{output}");
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_pause_holds_a_waiting_request() {
    let server = CountingServer::start(Arc::new(|index| match index {
        0 => Reply::too_many_requests("1"),
        _ => Reply::ok(),
    }));
    let quotas = rules(&format!(
        r#"
        [[quotas]]
        origin = "{}"
        concurrency = 4
        on_exceed = "wait"
        max_wait_ms = 5000
        "#,
        server.origin()
    ));
    let runtime = runtime_with(hostile_component(), grant(&server.origin(), quotas), None).await;

    let output = fetch(&runtime, &server.url()).await;
    assert_eq!(output["status"], 429, "{output}");
    let output = fetch(&runtime, &server.url()).await;
    assert_eq!(output["status"], 200, "{output}");

    let arrivals = server.arrivals();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_millis(900),
        "the second request came {gap:?} after the 429"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_one_never_overlaps() {
    const CALLS: usize = 4;
    let delay = Duration::from_millis(200);

    // Without a rule the server records the calls overlapping, which shows
    // that it can detect an overlap.
    let unlimited = CountingServer::answering(Reply::delayed(delay));
    let runtime = runtime_with(
        hostile_component(),
        grant(&unlimited.origin(), Vec::new()),
        None,
    )
    .await;
    fetch_concurrently(&runtime, &unlimited.url(), CALLS).await;
    assert!(
        unlimited.max_in_flight() >= 2,
        "unlimited calls never overlapped"
    );

    let limited = CountingServer::answering(Reply::delayed(delay));
    let quotas = rules(
        r#"
        [[quotas]]
        concurrency = 1
        on_exceed = "wait"
        max_wait_ms = 10000
        "#,
    );
    let runtime = runtime_with(hostile_component(), grant(&limited.origin(), quotas), None).await;
    let outputs = fetch_concurrently(&runtime, &limited.url(), CALLS).await;
    for output in &outputs {
        assert_eq!(output["status"], 200, "{output}");
    }
    assert_eq!(limited.requests(), CALLS);
    assert_eq!(limited.max_in_flight(), 1, "two requests were in flight");
    let status = runtime.quotas().status();
    assert_eq!(status[0].rules[0].in_flight, 0, "a slot was not given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_with_fail_refuses_the_overlap() {
    let server = CountingServer::answering(Reply::delayed(Duration::from_millis(300)));
    let quotas = rules(
        r#"
        [[quotas]]
        concurrency = 1
        "#,
    );
    let runtime = runtime_with(hostile_component(), grant(&server.origin(), quotas), None).await;

    let first = {
        let runtime = runtime.clone();
        let url = server.url();
        tokio::spawn(async move { fetch(&runtime, &url).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.requests() == 0 {
        assert!(Instant::now() < deadline, "the first request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = fetch(&runtime, &server.url()).await;
    assert_eq!(fetch_error_kind(&second), Some("rate-limited"), "{second}");
    assert_eq!(second["error"]["retry_after_ms"], Value::Null);
    assert_eq!(first.await.unwrap()["status"], 200);
    assert_eq!(server.requests(), 1);
}

// ---------------------------------------------------------------------------
// Configuration.

#[tokio::test]
async fn invalid_quota_is_rejected_at_load() {
    let cases = [
        (
            "[[quotas]]\nrate = { requests = 0, per_seconds = 60 }",
            "quotas[0].rate.requests",
        ),
        (
            "[[quotas]]\ndaily = 10\n[[quotas]]\nconcurrency = 0",
            "quotas[1].concurrency",
        ),
        (
            "[[quotas]]\ndaily = 10\non_exceed = \"wait\"",
            "quotas[0].max_wait_ms",
        ),
        (
            "[[quotas]]\ndaily = 10\norigin = \"https://elsewhere.example\"",
            "quotas[0].origin",
        ),
        ("[[quotas]]\non_exceed = \"fail\"", "quotas[0]`"),
    ];
    let runtime = Runtime::new(RuntimeConfig::default(), None, None).unwrap();
    for (text, field) in cases {
        let grant = grant("http://127.0.0.1:9", rules(text));
        let error = runtime
            .load(hostile_component(), |_| grant.clone())
            .await
            .err()
            .unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(
            matches!(&error, LoadError::Grant { plugin, .. } if plugin == "hostile"),
            "{text:?}: {error:?}"
        );
        let chain = format!("{:#}", anyhow::Error::new(error));
        assert!(chain.contains(field), "{text:?} gave {chain:?}");
    }
    assert!(runtime.plugin("hostile").is_none());
}

#[test]
fn malformed_quota_settings_name_the_setting() {
    let cases = [
        ("[[quotas]]\ndaily = 10\nburst = 3", "burst"),
        ("[[quotas]]\ndaily = 10\non_exceed = \"queue\"", "queue"),
        ("[[quotas]]\ndaily = -1", "daily"),
        ("[[quotas]]\nrate = { requests = 4 }", "per_seconds"),
    ];
    for (text, setting) in cases {
        let error = toml::from_str::<Grant>(text).unwrap_err();
        assert!(error.to_string().contains(setting), "{text:?} gave {error}");
    }
}

#[test]
fn configuration_file_with_invalid_quota_fails_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisade.toml");
    let text = r#"
        [plugins.virustotal]
        http_origins = ["https://www.virustotal.com"]

        [[plugins.virustotal.quotas]]
        origin = "https://www.virustotal.com"
        rate = { requests = 4, per_seconds = 60 }
        on_exceed = "wait"
    "#;
    std::fs::write(&path, text).unwrap();
    let error = palisade::config::Config::load(Some(&path)).unwrap_err();
    let chain = format!("{error:#}");
    assert!(chain.contains("\"virustotal\""), "{chain}");
    assert!(chain.contains("quotas[0].max_wait_ms"), "{chain}");
    assert!(chain.contains("palisade.toml"), "{chain}");
}

// ---------------------------------------------------------------------------
// `palisade serve`, `GET /v1/quotas` and `palisade quota`.

impl Daemon {
    /// Waits until no run is running and at least `expected` exist.
    async fn wait_for_runs(&self, expected: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let runs = self.get("/v1/runs").await;
            let runs = runs.as_array().unwrap().clone();
            let running = runs.iter().any(|run| run["status"] == "running");
            if runs.len() >= expected && !running {
                return;
            }
            assert!(Instant::now() < deadline, "runs did not finish: {runs:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn palisade_quota(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env("PALISADE_TOKEN", support::TEST_ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "palisade {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Returns the VirusTotal rule's daily count from a `/v1/quotas` document.
fn virustotal_daily(quotas: &Value) -> (u64, u64) {
    let plugins = quotas.as_array().unwrap();
    let virustotal = plugins
        .iter()
        .find(|plugin| plugin["plugin"] == "virustotal")
        .unwrap_or_else(|| panic!("no virustotal entry in {quotas}"));
    let daily = &virustotal["rules"][0]["daily"];
    (
        daily["used"].as_u64().unwrap(),
        daily["allowed"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn daemon_reports_quota_use() {
    avoid_utc_midnight(Duration::from_secs(120)).await;
    let dir = tempfile::tempdir().unwrap();
    let replay = support::start_virustotal_replay().await;
    let config = support::write_config(dir.path(), Some(&replay.origin()));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        r#"
[[plugins.virustotal.quotas]]
origin = "{}"
daily = 1000
rate = {{ requests = 100, per_seconds = 1 }}
"#,
        replay.origin()
    ));
    std::fs::write(&config, text).unwrap();
    let config_arg = config.to_str().unwrap();

    let daemon = Daemon::start(&config);
    let alerts = std::fs::read_to_string(
        support::repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl"),
    )
    .unwrap();
    let response = daemon
        .client()
        .post(format!("{}/v1/alerts", daemon.base))
        .body(alerts)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    daemon.wait_for_runs(5).await;

    let quotas = daemon.get("/v1/quotas").await;
    let (used, allowed) = virustotal_daily(&quotas);
    assert!(
        replay.requests() > 0,
        "the playbooks made no VirusTotal request"
    );
    assert_eq!(used, replay.requests() as u64, "{quotas}");
    assert_eq!(allowed, 1000);

    let table = palisade_quota(&["quota", "--server", &daemon.base]);
    let row = table
        .lines()
        .find(|line| line.starts_with("virustotal"))
        .unwrap_or_else(|| panic!("no virustotal row in {table}"));
    assert!(row.contains(&format!("{used}/1000")), "{row}");
    daemon.stop();

    // Without a daemon the stored counts are read from the database.
    let stored: Value = serde_json::from_str(&palisade_quota(&[
        "--config", config_arg, "quota", "--json",
    ]))
    .unwrap();
    assert_eq!(virustotal_daily(&stored), (used, 1000));
}
