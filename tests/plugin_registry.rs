//! Plugin install, signatures and hot swaps against a real daemon: the
//! `versioned` fixture built from source in several versions, signed with
//! the development key, installed over the HTTP API while alerts stream.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::daemon::Daemon;

const ADMIN_TOKEN: &str = "pal_test-admin-token-for-plugin-registry-tests";
const ANALYST_TOKEN: &str = "pal_test-analyst-token-for-plugin-registry-tests";

/// Three chained steps on the `versioned` plugin.
const SWAP_PLAYBOOK: &str = include_str!("../plugins/versioned/swap-chain.yaml");

/// The same chain pinned to the 1.0 series.
const PINNED_PLAYBOOK: &str = r#"
name: swap-pinned
trigger:
  source: wazuh
plugins:
  versioned: "~1.0"
steps:
  - id: only
    uses: versioned.stamp
    with:
      alert: "{{ alert.id }}"
"#;

/// Builds the `versioned` fixture with `env` set at build time, signs it
/// with the development key, and returns the copy named `label.wasm`.
/// Builds share one target directory, so only the fixture recompiles.
fn build_versioned(label: &str, env: &[(&str, &str)]) -> PathBuf {
    static BUILDS: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("versioned-plugins");
    let out_dir = target.join("out");
    let out = out_dir.join(format!("{label}.wasm"));
    if out.is_file() {
        return out;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--manifest-path"])
        .arg(support::repo_root().join("plugins/versioned/Cargo.toml"))
        .args(["--target", "wasm32-wasip2", "--release", "--quiet"])
        .arg("--target-dir")
        .arg(&target)
        .env_remove("PALISADE_FIXTURE_VERSION")
        .env_remove("PALISADE_FIXTURE_BROKEN")
        .env_remove("PALISADE_FIXTURE_NO_STAMP");
    for (name, value) in env {
        command.env(name, value);
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building the versioned fixture failed");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::copy(target.join("wasm32-wasip2/release/versioned.wasm"), &out).unwrap();
    support::sign_component(&out);
    out
}

fn version(v: &str) -> PathBuf {
    build_versioned(v, &[("PALISADE_FIXTURE_VERSION", v)])
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Writes a configuration whose plugin directory contains `initial` and
/// whose playbooks are `playbooks`, with an admin and an analyst token.
fn write_swap_config(dir: &Path, initial: &[&Path], playbooks: &[&str]) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for component in initial {
        support::copy_signed_plugin(component, &plugins);
    }
    let playbook_dir = dir.join("playbooks");
    std::fs::create_dir_all(&playbook_dir).unwrap();
    for (index, text) in playbooks.iter().enumerate() {
        std::fs::write(playbook_dir.join(format!("playbook-{index}.yaml")), text).unwrap();
    }
    let text = format!(
        r#"data_dir = "{data}"
cache_dir = "{cache}"
plugins_dir = "{plugins}"
playbooks_dir = "{playbooks}"

{trust}
[correlation]
window = "0"

[[api.tokens]]
name = "admin"
role = "admin"
sha256 = "{admin}"

[[api.tokens]]
name = "analyst"
role = "analyst"
sha256 = "{analyst}"
"#,
        data = dir.join("data").display(),
        cache = support::cache_dir().display(),
        plugins = plugins.display(),
        playbooks = playbook_dir.display(),
        trust = support::trust_table(),
        admin = sha256_hex(ADMIN_TOKEN),
        analyst = sha256_hex(ANALYST_TOKEN),
    );
    let path = dir.join("palisade.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Builds a Wazuh alert made unique by `n`.
fn wazuh_alert(n: u64) -> String {
    json!({
        "timestamp": "2026-12-04T10:00:00.000+0000",
        "rule": {"level": 5, "id": "5710", "description": "sshd: attempt to login using a non-existent user"},
        "agent": {"id": "001", "name": "web-01", "ip": "10.0.0.5"},
        "data": {"srcip": format!("198.51.100.{}", n % 250 + 1), "srcuser": format!("user{n}")},
        "id": format!("swap-test-{n}")
    })
    .to_string()
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(daemon: &Daemon) -> Self {
        Self {
            base: daemon.base.clone(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        let response = build(request).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self
            .call(reqwest::Method::GET, path, ADMIN_TOKEN, |r| r)
            .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn upload(&self, component: &Path, signature: Option<&str>, token: &str) -> (u16, Value) {
        let bytes = std::fs::read(component).unwrap();
        self.upload_bytes(bytes, signature, token, false).await
    }

    async fn upload_bytes(
        &self,
        bytes: Vec<u8>,
        signature: Option<&str>,
        token: &str,
        stage: bool,
    ) -> (u16, Value) {
        use base64::Engine as _;
        let path = if stage {
            "/v1/plugins?stage=true"
        } else {
            "/v1/plugins"
        };
        let header = signature.map(|text| base64::engine::general_purpose::STANDARD.encode(text));
        self.call(reqwest::Method::POST, path, token, move |request| {
            let request = request
                .header("content-type", "application/wasm")
                .body(bytes);
            match header {
                Some(value) => request.header("x-palisade-signature", value),
                None => request,
            }
        })
        .await
    }

    async fn activate(&self, plugin: &str, version: &str) -> (u16, Value) {
        let body = json!({ "version": version }).to_string();
        self.call(
            reqwest::Method::POST,
            &format!("/v1/plugins/{plugin}/activate"),
            ADMIN_TOKEN,
            |r| r.header("content-type", "application/json").body(body),
        )
        .await
    }

    async fn rollback(&self, plugin: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/plugins/{plugin}/rollback"),
            ADMIN_TOKEN,
            |r| r,
        )
        .await
    }

    async fn post_alerts(&self, body: String) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/v1/alerts", ADMIN_TOKEN, |r| {
            r.body(body)
        })
        .await
    }

    async fn active_version(&self, plugin: &str) -> Option<String> {
        let body = self.get(&format!("/v1/plugins/{plugin}")).await;
        body["active_version"].as_str().map(str::to_string)
    }
}

fn signature_of(component: &Path) -> String {
    std::fs::read_to_string(palisade_signing::signature_path(component)).unwrap()
}

/// One change of the active version, as the test saw it: the request was
/// sent at `sent` and its response arrived at `answered`.
#[derive(Clone, Debug)]
struct Swap {
    sent: DateTime<Utc>,
    answered: DateTime<Utc>,
    version: String,
}

/// One batch of alerts: posted at `sent`, acknowledged at `answered`.
#[derive(Clone, Debug)]
struct Batch {
    sent: DateTime<Utc>,
    alert_ids: Vec<String>,
}

/// Versions a run started at `started` for an alert posted at `posted`
/// could have been given: the one active when the post was sent, and
/// every version a swap may have published between the post and the
/// run's start.
fn possible_versions(
    swaps: &[Swap],
    initial: &str,
    posted: DateTime<Utc>,
    started: DateTime<Utc>,
) -> BTreeSet<String> {
    let mut versions = BTreeSet::new();
    let settled = swaps
        .iter()
        .rfind(|swap| swap.answered <= posted)
        .map(|swap| swap.version.clone())
        .unwrap_or_else(|| initial.to_string());
    versions.insert(settled);
    for swap in swaps {
        if swap.sent <= started && swap.answered >= posted {
            versions.insert(swap.version.clone());
        }
    }
    versions
}

async fn wait_for_runs(api: &Api, expected: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = api.get("/v1/runs").await;
        let runs = runs.as_array().cloned().unwrap_or_default();
        let finished = runs
            .iter()
            .filter(|run| run["status"] == "succeeded" || run["status"] == "failed")
            .count();
        if finished >= expected {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "only {finished} of {expected} runs finished in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The plugin is swapped 100 times (installs, activations and rollbacks
/// over the API) while alerts stream in. No run fails. Each run's steps
/// all ran one version, the one recorded for the run, and that is a
/// version the run could have been given. The pinned playbook stays on 1.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_swaps_while_alerts_stream() {
    let v100 = version("1.0.0");
    let v110 = version("1.1.0");
    let v200 = version("2.0.0");
    let dir = tempfile::tempdir().unwrap();
    let config = write_swap_config(dir.path(), &[&v100], &[SWAP_PLAYBOOK, PINNED_PLAYBOOK]);
    let daemon = Daemon::start(&config);
    let api = Arc::new(Api::new(&daemon));
    assert_eq!(
        api.active_version("versioned").await.as_deref(),
        Some("1.0.0")
    );

    let streaming = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let batches = Arc::new(Mutex::new(Vec::<Batch>::new()));
    let producer = {
        let (api, streaming, batches) = (api.clone(), streaming.clone(), batches.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while streaming.load(std::sync::atomic::Ordering::Relaxed) {
                let body: Vec<String> = (n..n + 5).map(wazuh_alert).collect();
                n += 5;
                let sent = Utc::now();
                let (status, reply) = api.post_alerts(body.join("\n")).await;
                assert_eq!(status, 202, "{reply}");
                let alert_ids = reply["accepted"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|accepted| accepted["alert_id"].as_str().unwrap().to_string())
                    .collect();
                batches.lock().unwrap().push(Batch { sent, alert_ids });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut swaps = Vec::new();
    let mut expected_active = "1.0.0".to_string();
    for round in 0..100 {
        let sent = Utc::now();
        let (status, reply, target) = match round {
            0 => {
                let (status, reply) = api
                    .upload(&v110, Some(&signature_of(&v110)), ADMIN_TOKEN)
                    .await;
                (status, reply, "1.1.0".to_string())
            }
            1 => {
                let (status, reply) = api
                    .upload(&v200, Some(&signature_of(&v200)), ADMIN_TOKEN)
                    .await;
                (status, reply, "2.0.0".to_string())
            }
            n if n % 5 == 4 => {
                let (status, reply) = api.rollback("versioned").await;
                let target = reply["active_version"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (status, reply, target)
            }
            n => {
                // Always another version than the active one, so every
                // round changes what new runs get.
                let others: Vec<&str> = ["1.0.0", "1.1.0", "2.0.0"]
                    .into_iter()
                    .filter(|version| *version != expected_active)
                    .collect();
                let target = others[n % others.len()];
                let (status, reply) = api.activate("versioned", target).await;
                (status, reply, target.to_string())
            }
        };
        assert!(
            status == 200 || status == 201,
            "swap {round} to {target} failed with {status}: {reply}"
        );
        if round < 2 {
            assert_eq!(reply["active"], true, "{reply}");
            assert!(reply["signer"]["key_name"].is_string(), "{reply}");
        }
        expected_active = target.clone();
        swaps.push(Swap {
            sent,
            answered: Utc::now(),
            version: target,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    streaming.store(false, std::sync::atomic::Ordering::Relaxed);
    producer.await.unwrap();
    assert_eq!(
        api.active_version("versioned").await.as_deref(),
        Some(expected_active.as_str())
    );

    let batches = batches.lock().unwrap().clone();
    let alerts: usize = batches.iter().map(|batch| batch.alert_ids.len()).sum();
    assert!(
        alerts >= 100,
        "only {alerts} alerts streamed during the swaps"
    );
    let posted: BTreeMap<&str, DateTime<Utc>> = batches
        .iter()
        .flat_map(|batch| batch.alert_ids.iter().map(|id| (id.as_str(), batch.sent)))
        .collect();
    let runs = wait_for_runs(&api, 2 * alerts).await;
    assert_eq!(runs.len(), 2 * alerts, "each alert starts two runs");

    let mut seen_versions = BTreeSet::new();
    for run in &runs {
        let id = run["id"].as_str().unwrap();
        assert_eq!(run["status"], "succeeded", "run {id} failed: {run}");
        let pinned = run["plugin_versions"]["versioned"].as_str().unwrap();
        for step in run["steps"].as_array().unwrap() {
            assert_eq!(step["plugin_version"], pinned, "run {id}: {step}");
        }
        let stamped: Vec<&str> =
            run["steps"].as_array().unwrap().last().unwrap()["output"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
        assert!(
            stamped.iter().all(|v| *v == pinned),
            "run {id} ran {stamped:?}, recorded {pinned}"
        );
        let started: DateTime<Utc> = run["started_at"].as_str().unwrap().parse().unwrap();
        let alert = run["alert_id"].as_str().unwrap();
        let possible = possible_versions(&swaps, "1.0.0", posted[alert], started);
        if run["playbook"] == "swap-pinned" {
            assert_eq!(pinned, "1.0.0", "run {id} broke its ~1.0 pin");
        } else {
            assert!(
                possible.contains(pinned),
                "run {id} got {pinned}, but only {possible:?} were possible"
            );
            seen_versions.insert(pinned.to_string());
        }
    }
    eprintln!(
        "{} swaps, {alerts} alerts, {} runs, versions run: {seen_versions:?}",
        swaps.len(),
        runs.len()
    );
    assert!(
        seen_versions.len() >= 2,
        "runs saw only {seen_versions:?}; the swaps did not reach new runs"
    );

    let history = api.get("/v1/plugins/versioned/history").await;
    let changes = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["action"] != "installed")
        .count();
    assert!(changes >= 100, "history holds {changes} activations");
    daemon.stop();
}

/// A flipped byte, a key the operator does not trust and a missing
/// signature are each rejected with a message that names the fix, and
/// nothing changes.
#[tokio::test]
async fn unsigned_tampered_and_foreign_plugins_rejected() {
    let v100 = version("1.0.0");
    let v110 = version("1.1.0");
    let dir = tempfile::tempdir().unwrap();
    let config = write_swap_config(dir.path(), &[&v100], &[SWAP_PLAYBOOK]);
    let daemon = Daemon::start(&config);
    let api = Api::new(&daemon);
    let bytes = std::fs::read(&v110).unwrap();
    let signature = signature_of(&v110);

    let (status, reply) = api
        .upload_bytes(bytes.clone(), None, ADMIN_TOKEN, false)
        .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "plugin_signature_invalid");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no signature") && message.contains("palisade plugin sign"),
        "{message}"
    );

    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let (status, reply) = api
        .upload_bytes(flipped, Some(&signature), ADMIN_TOKEN, false)
        .await;
    assert_eq!(status, 422, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not match"), "{message}");

    let stranger_dir = tempfile::tempdir().unwrap();
    let (secret, _public) =
        palisade_signing::write_key_pair(stranger_dir.path(), "stranger").unwrap();
    let stranger = palisade_signing::SigningKey::read_file(&secret).unwrap();
    let foreign = palisade_signing::sign(&bytes, &stranger).unwrap().to_json();
    let (status, reply) = api
        .upload_bytes(bytes.clone(), Some(&foreign), ADMIN_TOKEN, false)
        .await;
    assert_eq!(status, 422, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not trusted") && message.contains(&stranger.key_id()),
        "{message}"
    );

    let (status, reply) = api
        .upload_bytes(bytes.clone(), Some(&signature), ANALYST_TOKEN, false)
        .await;
    assert_eq!(status, 403, "an analyst may not install: {reply}");

    assert_eq!(
        api.active_version("versioned").await.as_deref(),
        Some("1.0.0")
    );
    let listed = api.get("/v1/plugins").await;
    let versions = listed["plugins"][0]["versions"].as_array().unwrap().len();
    assert_eq!(versions, 1, "a rejected upload left a version: {listed}");

    // The untampered file with its signature goes in.
    let (status, reply) = api
        .upload_bytes(bytes, Some(&signature), ADMIN_TOKEN, false)
        .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(
        api.active_version("versioned").await.as_deref(),
        Some("1.1.0")
    );
    daemon.stop();
}

/// The canary checks: a core module, a failing self-test, a version that
/// drops an action a playbook calls, and a second build under a version
/// number already installed are rejected, each with its own code.
#[tokio::test]
async fn canary_checks_reject_bad_versions() {
    let v100 = version("1.0.0");
    let broken = build_versioned(
        "1.5.0-broken",
        &[
            ("PALISADE_FIXTURE_VERSION", "1.5.0"),
            ("PALISADE_FIXTURE_BROKEN", "1"),
        ],
    );
    let stampless = build_versioned(
        "1.6.0-stampless",
        &[
            ("PALISADE_FIXTURE_VERSION", "1.6.0"),
            ("PALISADE_FIXTURE_NO_STAMP", "1"),
        ],
    );
    let impostor = build_versioned(
        "1.0.0-impostor",
        &[
            ("PALISADE_FIXTURE_VERSION", "1.0.0"),
            ("PALISADE_FIXTURE_NO_STAMP", "1"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_swap_config(dir.path(), &[&v100], &[SWAP_PLAYBOOK]);
    let daemon = Daemon::start(&config);
    let api = Api::new(&daemon);

    let cases: [(&Path, u16, &str, &str); 3] = [
        (&broken, 422, "plugin_self_test_failed", "self-test failed"),
        (&stampless, 409, "plugin_incompatible", "\"stamp\""),
        (
            &impostor,
            409,
            "plugin_version_conflict",
            "new version number",
        ),
    ];
    for (component, status, code, fragment) in cases {
        let (got, reply) = api
            .upload(component, Some(&signature_of(component)), ADMIN_TOKEN)
            .await;
        assert_eq!(got, status, "{}: {reply}", component.display());
        assert_eq!(reply["error"]["code"], code, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(fragment), "{message}");
    }

    // A core module signed by a trusted key is still not a component.
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    support::sign_component(&core);
    let (status, reply) = api
        .upload(&core, Some(&signature_of(&core)), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "plugin_invalid");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module"),
        "{reply}"
    );

    // Staged, the stampless build is allowed: nothing calls it until a
    // playbook that does not need `stamp` is pinned to it.
    let bytes = std::fs::read(&stampless).unwrap();
    let (status, reply) = api
        .upload_bytes(bytes, Some(&signature_of(&stampless)), ADMIN_TOKEN, true)
        .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["active"], false);
    let (status, reply) = api.activate("versioned", "1.6.0").await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(
        api.active_version("versioned").await.as_deref(),
        Some("1.0.0")
    );

    let (status, reply) = api.rollback("versioned").await;
    assert_eq!(status, 409, "nothing to roll back to: {reply}");
    daemon.stop();
}

/// A file copied into the watched plugin directory is installed and
/// activated; an unsigned one is rejected and the daemon goes on. After a
/// rollback and a restart, the rolled-back version stays active although
/// the newer file is still in the directory.
#[tokio::test]
async fn watched_directory_and_rollback_survive_restart() {
    let v100 = version("1.0.0");
    let v110 = version("1.1.0");
    let v200 = version("2.0.0");
    let dir = tempfile::tempdir().unwrap();
    let config = write_swap_config(dir.path(), &[&v100], &[SWAP_PLAYBOOK]);
    let plugins = dir.path().join("plugins");
    let daemon = Daemon::start(&config);
    let api = Api::new(&daemon);

    support::copy_signed_plugin(&v110, &plugins);
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.active_version("versioned").await.as_deref() != Some("1.1.0") {
        assert!(
            Instant::now() < deadline,
            "the copied 1.1.0 was not installed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Unsigned: no .sig beside it.
    std::fs::copy(&v200, plugins.join("unsigned-2.0.0.wasm")).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        api.active_version("versioned").await.as_deref(),
        Some("1.1.0")
    );
    let (status, _) = api.post_alerts(wazuh_alert(1)).await;
    assert_eq!(status, 202, "the daemon still takes alerts");
    // The rejected file stays in the directory across the restart below:
    // it is logged and left out again, and the daemon starts.

    let (status, reply) = api.rollback("versioned").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["active_version"], "1.0.0");
    daemon.stop();

    let daemon = Daemon::start(&config);
    let api = Api::new(&daemon);
    assert_eq!(
        api.active_version("versioned").await.as_deref(),
        Some("1.0.0"),
        "the restart undid the rollback"
    );
    let plugin = api.get("/v1/plugins/versioned").await;
    let versions: Vec<&str> = plugin["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.0.0", "1.1.0"]);
    daemon.stop();
}

/// `palisade plugin keygen`, `sign --embed` and `install` on the database
/// directly: an embedded signature by a newly trusted key is accepted, and
/// the same file with one byte changed is rejected with the reason.
#[test]
fn cli_signs_and_installs_plugin() {
    let v110 = version("1.1.0");
    let v100 = version("1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let config = write_swap_config(dir.path(), &[&v100], &[SWAP_PLAYBOOK]);
    let palisade = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let keys = dir.path().join("keys");
    let output = palisade(&[
        "plugin",
        "keygen",
        "--dir",
        keys.to_str().unwrap(),
        "--name",
        "acme",
    ]);
    assert!(output.status.success(), "{output:?}");
    // The operator trusts the author's public key.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[trust]\nkeys = [",
        &format!("[trust]\nkeys = [\"{}\", ", keys.join("acme.pub").display()),
    );
    std::fs::write(&config, text).unwrap();

    let signed = dir.path().join("acme-versioned.wasm");
    let output = palisade(&[
        "plugin",
        "sign",
        v110.to_str().unwrap(),
        "--key",
        keys.join("acme.key").to_str().unwrap(),
        "--embed",
        "--output",
        signed.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");

    let mut tampered = std::fs::read(&signed).unwrap();
    let middle = tampered.len() / 3;
    tampered[middle] ^= 0x40;
    let tampered_path = dir.path().join("tampered.wasm");
    std::fs::write(&tampered_path, tampered).unwrap();
    let output = palisade(&["plugin", "install", tampered_path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not match"), "{stderr}");

    let output = palisade(&["plugin", "install", signed.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("versioned 1.1.0: installed and active"),
        "{stdout}"
    );
    assert!(stdout.contains("signed by  acme"), "{stdout}");

    let output = palisade(&["plugin", "history", "versioned"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("activated") && stdout.contains("1.1.0"),
        "{stdout}"
    );

    // Each command below opens the registry again, so the version signed
    // by its embedded section must verify from what was stored.
    let output = palisade(&["plugin", "rollback", "versioned"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("rolled back to 1.0.0"), "{stdout}");
    let output = palisade(&["plugin", "activate", "versioned", "1.1.0"]);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("not loaded"), "{stderr}");
}

#[test]
fn possible_versions_cover_swaps_in_flight() {
    let at = |s: i64| DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap();
    let swaps = [
        Swap {
            sent: at(10),
            answered: at(11),
            version: "1.1.0".into(),
        },
        Swap {
            sent: at(20),
            answered: at(21),
            version: "2.0.0".into(),
        },
    ];
    let list = |posted, started| {
        possible_versions(&swaps, "1.0.0", at(posted), at(started))
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(list(5, 6), ["1.0.0"]);
    assert_eq!(list(12, 13), ["1.1.0"]);
    assert_eq!(list(9, 20), ["1.0.0", "1.1.0", "2.0.0"]);
    assert_eq!(list(15, 19), ["1.1.0"]);
}

/// On a first start with several versions of one plugin in the plugin
/// directory, the highest version becomes active, whatever the file names.
#[tokio::test]
async fn first_start_activates_highest_version() {
    let v100 = version("1.0.0");
    let v110 = version("1.1.0");
    let dir = tempfile::tempdir().unwrap();
    let config = write_swap_config(dir.path(), &[], &[SWAP_PLAYBOOK]);
    let plugins = dir.path().join("plugins");
    // Name order puts 1.1.0 first and 1.0.0 last.
    for (component, name) in [(&v110, "a-versioned.wasm"), (&v100, "z-versioned.wasm")] {
        let target = plugins.join(name);
        std::fs::copy(component, &target).unwrap();
        std::fs::copy(
            palisade_signing::signature_path(component),
            palisade_signing::signature_path(&target),
        )
        .unwrap();
    }
    let daemon = Daemon::start(&config);
    let api = Api::new(&daemon);
    assert_eq!(
        api.active_version("versioned").await.as_deref(),
        Some("1.1.0")
    );
    daemon.stop();
}
