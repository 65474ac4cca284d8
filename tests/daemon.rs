//! `palisade serve` as a real process: alerts posted over HTTP on
//! 127.0.0.1 become cases, the cases are still there after the daemon
//! stops and starts again (gracefully or by SIGKILL), and the one-shot
//! `palisade run` prints the same cases.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::Daemon;
use support::{repo_root, start_virustotal_replay, write_config};

impl Daemon {
    /// Waits until `expected` top-level runs have succeeded and none is
    /// running, and returns the top-level runs. Sub-playbook runs are
    /// listed too but not counted.
    async fn wait_for_runs(&self, expected: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let runs = self.get("/v1/runs").await;
            let runs: Vec<Value> = runs
                .as_array()
                .unwrap()
                .iter()
                .filter(|run| run.get("parent").is_none())
                .cloned()
                .collect();
            let finished = runs
                .iter()
                .filter(|run| run["status"] == "succeeded")
                .count();
            let running = runs.iter().any(|run| run["status"] == "running");
            if finished >= expected && !running {
                return runs;
            }
            assert!(Instant::now() < deadline, "runs did not finish: {runs:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn wazuh_samples() -> String {
    std::fs::read_to_string(repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl")).unwrap()
}

#[tokio::test]
async fn served_cases_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let config = write_config(dir.path(), Some(&replay.origin()));

    let daemon = Daemon::start(&config);
    let (status, body) = daemon.post_alerts(wazuh_samples()).await;
    assert_eq!(status, 202, "{body}");
    let accepted = body["accepted"].as_array().unwrap();
    assert_eq!(accepted.len(), 5);
    assert!(accepted.iter().all(|a| a["duplicate"] == false));
    let runs = daemon.wait_for_runs(5).await;
    assert!(
        runs.iter().all(|run| run["status"] == "succeeded"),
        "{runs:?}"
    );
    let cases = daemon.get("/v1/cases").await;
    assert_eq!(cases.as_array().unwrap().len(), 5);
    daemon.stop();

    // A graceful restart keeps everything, and posting the same alerts
    // again is recognised as duplicates.
    let daemon = Daemon::start(&config);
    assert_eq!(daemon.get("/v1/cases").await, cases);
    let (status, body) = daemon.post_alerts(wazuh_samples()).await;
    assert_eq!(status, 202);
    assert!(
        body["accepted"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["duplicate"] == true)
    );
    let case_id = cases[0]["id"].as_str().unwrap();
    assert_eq!(daemon.get(&format!("/v1/cases/{case_id}")).await, cases[0]);

    // SIGKILL right after an acknowledgement loses nothing: the alert was
    // on disk, and its runs resume at the next start.
    let defender =
        std::fs::read_to_string(repo_root().join("samples/wazuh/windows_defender_1116_alert.json"))
            .unwrap();
    let (status, _) = daemon.post_alerts(defender).await;
    assert_eq!(status, 202);
    daemon.kill();

    let daemon = Daemon::start(&config);
    let cases = daemon.get("/v1/cases").await;
    assert_eq!(cases.as_array().unwrap().len(), 6);
    let runs = daemon.wait_for_runs(6).await;
    // A run cut off by the kill continued from its journal after the
    // restart; none is left behind.
    for run in &runs {
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    for case in cases.as_array().unwrap() {
        let alert_id = &case["alert_ids"][0];
        let succeeded = runs
            .iter()
            .any(|run| run["alert_id"] == *alert_id && run["status"] == "succeeded");
        assert!(succeeded, "no successful run for alert {alert_id}");
    }
    daemon.stop();
}

#[tokio::test]
async fn invalid_alerts_are_rejected_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let daemon = Daemon::start(&config);

    let (status, body) = daemon
        .post_alerts("{\"hello\": 1}\nnot json\n".into())
        .await;
    assert_eq!(status, 400, "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["line"], 1);
    assert!(
        rejected[0]["message"]
            .as_str()
            .unwrap()
            .contains("event_type")
    );
    assert_eq!(rejected[1]["line"], 2);

    // A batch with one bad line keeps the good ones.
    let mixed = format!("not json\n{}", wazuh_samples());
    let (status, body) = daemon.post_alerts(mixed).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"].as_array().unwrap().len(), 5);
    assert_eq!(body["rejected"][0]["line"], 1);

    let (status, body) = daemon.post_alerts("  \n".into()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "empty_body");

    let response = daemon
        .client()
        .delete(format!("{}/v1/cases", daemon.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    for path in [
        "/v1/cases/C99999999",
        "/v1/nothing",
        "/v1/cases/~case-counter",
    ] {
        let response = daemon
            .client()
            .get(format!("{}{path}", daemon.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404, "{path}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    daemon.stop();
}

#[test]
fn one_shot_run_prints_cases_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .arg("--config")
            .arg(&config)
            .args(["run", "--json", "--alerts"])
            .arg(repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl"))
            .arg("--intel")
            .arg(repo_root().join("samples/intel/palisade-demo-eicar.json"))
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = run();
    assert!(second.status.success());
    let first: Value = serde_json::from_slice(&first.stdout).unwrap();
    let second: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(first.as_array().unwrap().len(), 5);
    assert_eq!(first, second, "a second run changes no case");
    let hits: usize = first
        .as_array()
        .unwrap()
        .iter()
        .map(|case| case["intel_hits"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        hits, 3,
        "the EICAR md5, sha1 and sha256 match the demo indicator"
    );
}

#[test]
fn unreadable_alert_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(&config)
        .args(["run", "--alerts", "/nonexistent/alerts.json"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/alerts.json"), "{stderr}");
}

/// A playbook whose steps each call one misbehaving action of the hostile
/// fixture, then a well-behaved plugin.
const ZOO_PLAYBOOK: &str = r#"
name: zoo
trigger: { source: wazuh }
steps:
  - { id: spin, uses: hostile.spin, on_error: continue }
  - { id: allocate, uses: hostile.allocate, on_error: continue }
  - { id: recurse, uses: hostile.recurse, on_error: continue }
  - { id: panic, uses: hostile.panic, on_error: continue }
  - { id: huge_output, uses: hostile.huge-output, with: { bytes: 200000 }, on_error: continue }
  - { id: log_flood, uses: hostile.log-flood, with: { lines: 1000 }, on_error: continue }
  - { id: echo, uses: noop.echo, with: { rule: "{{ alert.rule.id }}" } }
"#;

#[tokio::test]
async fn misbehaving_steps_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let playbooks = dir.path().join("playbooks");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::create_dir_all(&playbooks).unwrap();
    support::copy_signed_plugin(&support::hostile_plugin(), &plugins);
    support::copy_signed_plugin(&support::plugins_dir().join("noop.wasm"), &plugins);
    std::fs::write(playbooks.join("zoo.yaml"), ZOO_PLAYBOOK).unwrap();
    let config = dir.path().join("palisade.toml");
    let text = format!(
        r#"data_dir = "{data}"
cache_dir = "{cache}"
plugins_dir = "{plugins}"
playbooks_dir = "{playbooks}"

{trust}
[plugins.hostile]
limits = {{ cpu_ms = 300, wall_ms = 3000, memory_bytes = 33554432, output_bytes = 65536, log_bytes = 4096 }}
"#,
        data = dir.path().join("data").display(),
        cache = support::cache_dir().display(),
        plugins = plugins.display(),
        playbooks = playbooks.display(),
        trust = support::trust_table(),
    );
    std::fs::write(&config, text + &support::api_tokens_table()).unwrap();

    let daemon = Daemon::start(&config);
    let (status, _) = daemon.post_alerts(wazuh_samples()).await;
    assert_eq!(status, 202);
    let runs = daemon.wait_for_runs(5).await;
    assert_eq!(runs.len(), 5);
    let expected = [
        ("spin", "failed", Some("cpu_time_limit")),
        ("allocate", "failed", Some("memory_limit")),
        ("recurse", "failed", Some("stack_overflow")),
        ("panic", "failed", Some("trap")),
        ("huge_output", "failed", Some("output_too_large")),
        ("log_flood", "succeeded", None),
        ("echo", "succeeded", None),
    ];
    for run in &runs {
        assert_eq!(run["status"], "succeeded", "{run}");
        let steps = run["steps"].as_array().unwrap();
        assert_eq!(steps.len(), expected.len());
        for (step, (id, status, kind)) in steps.iter().zip(expected) {
            assert_eq!(step["id"], id);
            assert_eq!(step["status"], status, "step {id}: {step}");
            match kind {
                Some(kind) => assert_eq!(step["error"]["kind"], kind, "step {id}"),
                None => assert!(step["error"].is_null(), "step {id}: {step}"),
            }
        }
        let echo = &steps[6]["output"]["rule"];
        assert!(
            echo.is_string(),
            "the well-behaved step got its input: {echo}"
        );
    }
    assert_eq!(daemon.get("/v1/health").await["status"], "ok");
    daemon.stop();
}

#[tokio::test]
async fn secret_stays_out_of_trace_logs() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let config = write_config(dir.path(), Some(&replay.origin()));
    // Kept in the target directory, so a failure can be read afterwards.
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("daemon-trace.log");

    let daemon = Daemon::start_tracing(&config, &log);
    let (status, _) = daemon.post_alerts(wazuh_samples()).await;
    assert_eq!(status, 202);
    daemon.wait_for_runs(5).await;
    let runs = daemon.get("/v1/runs").await.to_string();
    let cases = daemon.get("/v1/cases").await.to_string();
    // Everything the daemon logged so far is written; the test needs no
    // graceful stop. NOTE: a daemon logging at trace level has exited with
    // SIGABRT on SIGINT once; the cause is not known.
    daemon.kill();

    let keys = replay.log.lock().unwrap().api_keys.clone();
    assert!(!keys.is_empty(), "the key was sent");
    assert!(keys.iter().all(|key| key == support::TEST_API_KEY));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.len() > 1000,
        "trace logging was on: {} bytes",
        logged.len()
    );
    assert!(
        !logged.contains(support::TEST_API_KEY),
        "secret in the daemon log"
    );
    assert!(
        !runs.contains(support::TEST_API_KEY),
        "secret in a run record"
    );
    assert!(!cases.contains(support::TEST_API_KEY), "secret in a case");
}
