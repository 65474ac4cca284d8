//! Real Wazuh alerts through the bundled playbooks: every step runs as a
//! WebAssembly component built from `plugins/`, cases go to a sled database
//! in a temporary directory, and VirusTotal is a replay of recorded
//! responses on 127.0.0.1.

mod support;

use std::path::Path;

use palisade::config::Config;
use palisade::host::{self, Host};
use palisade_model::{Case, RunStatus, Severity, StepStatus, parse_alerts};
use palisade_runtime::CallContext;
use palisade_store::Store;
use serde_json::{Value, json};
use support::{TEST_API_KEY, files_under, repo_root, start_virustotal_replay, write_config};

const EICAR_SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

async fn build_host(dir: &Path, vt_origin: Option<&str>) -> Host {
    let config = Config::load(Some(&write_config(dir, vt_origin))).unwrap();
    host::build(&config, None).await.unwrap()
}

async fn load_demo_intel(host: &Host) {
    let bundle: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("samples/intel/palisade-demo-eicar.json"))
            .unwrap(),
    )
    .unwrap();
    let input = json!({ "bundle": bundle, "source": "demo" });
    let loaded = host
        .caller
        .runtime
        .invoke("ti-matcher", "load-stix", &input, &CallContext::default())
        .await
        .unwrap();
    assert_eq!(loaded.output["loaded"], 1, "{}", loaded.output);
}

/// Ingests every alert of the bundled Wazuh samples; returns the case ids
/// in order of first appearance.
async fn ingest_wazuh_samples(host: &Host) -> Vec<String> {
    let mut case_ids = Vec::new();
    for file in [
        "samples/wazuh/fim_virustotal_alerts.jsonl",
        "samples/wazuh/windows_defender_1116_alert.json",
    ] {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        for alert in parse_alerts(&text) {
            let alert = alert.unwrap_or_else(|error| panic!("{file}: {error}"));
            let report = host.engine.ingest(&alert).await.unwrap();
            if !case_ids.contains(&report.case_id) {
                case_ids.push(report.case_id);
            }
        }
    }
    case_ids
}

fn case_about(cases: &[Case], rule_id: &str) -> Case {
    cases
        .iter()
        .find(|case| case.rule.id == rule_id)
        .unwrap_or_else(|| panic!("no case for rule {rule_id}"))
        .clone()
}

fn verdict_for<'a>(case: &'a Case, value: &str) -> &'a Value {
    case.verdicts
        .iter()
        .find(|verdict| verdict["value"] == value)
        .unwrap_or_else(|| {
            panic!(
                "case {} has no verdict for {value}: {:?}",
                case.id, case.verdicts
            )
        })
}

#[tokio::test]
async fn wazuh_samples_become_enriched_cases() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let host = build_host(dir.path(), Some(&replay.origin())).await;
    load_demo_intel(&host).await;

    let case_ids = ingest_wazuh_samples(&host).await;
    assert_eq!(case_ids.len(), 6, "six alerts with six fingerprints");
    let cases = host.store.cases().unwrap();
    assert_eq!(cases.len(), 6);

    // The EICAR detection: observables, a threat-intel hit and a malicious
    // VirusTotal verdict from the replayed recording.
    let eicar = case_about(&cases, "87105");
    let values: Vec<&str> = eicar.observables.iter().map(|o| o.value.as_str()).collect();
    assert!(values.contains(&EICAR_SHA256), "{values:?}");
    assert!(
        values.contains(&"44d88612fea8a8f36de82e1278abb02f"),
        "{values:?}"
    );
    let agent = eicar
        .observables
        .iter()
        .find(|o| o.value == "10.0.2.15")
        .unwrap();
    assert!(agent.internal, "the agent address is internal");
    assert!(
        eicar
            .intel_hits
            .iter()
            .any(|hit| hit["value"] == EICAR_SHA256),
        "{:?}",
        eicar.intel_hits
    );
    assert_eq!(verdict_for(&eicar, EICAR_SHA256)["verdict"], "malicious");
    assert!(eicar.severity >= Severity::High);
    assert_eq!(eicar.priority.as_deref(), Some("P1"));

    // The empty file: found in VirusTotal and clean.
    let empty = case_about(&cases, "87104");
    let verdict = verdict_for(&empty, EMPTY_SHA256);
    assert_eq!(verdict["found"], true);
    assert_ne!(verdict["verdict"], "malicious");
    assert_ne!(verdict["verdict"], "suspicious");
    assert!(empty.intel_hits.is_empty(), "{:?}", empty.intel_hits);

    // Every run finished, and every step of the EICAR run succeeded.
    let all_runs = host.store.runs().unwrap();
    assert!(
        all_runs
            .iter()
            .all(|run| run.status == RunStatus::Succeeded)
    );
    // One run per alert; the others are enrich-observable sub-playbook runs.
    let runs: Vec<_> = all_runs.iter().filter(|run| run.parent.is_none()).collect();
    assert_eq!(runs.len(), 6);
    let eicar_run = runs.iter().find(|run| run.case_id == eicar.id).unwrap();
    let steps: Vec<(&str, StepStatus)> = eicar_run
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.status))
        .collect();
    assert_eq!(
        steps,
        [
            ("extract", StepStatus::Succeeded),
            ("intel", StepStatus::Succeeded),
            ("plan", StepStatus::Succeeded),
            ("enrich", StepStatus::Succeeded),
            ("enrich", StepStatus::Succeeded),
            ("score", StepStatus::Succeeded),
            // The approval and the containment need the skipped notice,
            // so they never start and leave no record.
            ("notify", StepStatus::Skipped),
        ]
    );
    assert_eq!(eicar.run_ids, vec![eicar_run.id.clone()]);
    assert!(replay.requests() > 0);
}

#[tokio::test]
async fn ingesting_twice_creates_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let host = build_host(dir.path(), Some(&replay.origin())).await;
    let first = ingest_wazuh_samples(&host).await;
    let runs_after_first = host.store.runs().unwrap().len();
    let requests_after_first = replay.requests();

    let second = ingest_wazuh_samples(&host).await;
    assert_eq!(first, second);
    assert_eq!(host.store.cases().unwrap().len(), first.len());
    assert_eq!(host.store.runs().unwrap().len(), runs_after_first);
    assert_eq!(
        replay.requests(),
        requests_after_first,
        "no lookup repeated"
    );
}

#[tokio::test]
async fn cases_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let host = build_host(dir.path(), None).await;
        ingest_wazuh_samples(&host).await;
        host.store.flush().unwrap();
        host.store.cases().unwrap()
    };
    let host = build_host(dir.path(), None).await;
    assert_eq!(host.store.cases().unwrap(), before);
}

#[tokio::test]
async fn virustotal_connector_reads_recorded_reports() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let host = build_host(dir.path(), Some(&replay.origin())).await;
    let runtime = &host.caller.runtime;
    let context = CallContext::default();

    let eicar = runtime
        .invoke(
            "virustotal",
            "file-report",
            &json!({ "hash": EICAR_SHA256 }),
            &context,
        )
        .await
        .unwrap();
    assert_eq!(eicar.output["verdict"], "malicious");
    assert_eq!(eicar.output["found"], true);
    assert!(eicar.output["stats"]["malicious"].as_u64().unwrap() >= 50);

    let empty = runtime
        .invoke(
            "virustotal",
            "file-report",
            &json!({ "hash": EMPTY_SHA256 }),
            &context,
        )
        .await
        .unwrap();
    assert_eq!(empty.output["stats"]["malicious"], 0);
    assert!(
        ["harmless", "undetected"].contains(&empty.output["verdict"].as_str().unwrap()),
        "{}",
        empty.output
    );

    let unknown = runtime
        .invoke(
            "virustotal",
            "file-report",
            &json!({ "hash": "a".repeat(64) }),
            &context,
        )
        .await
        .unwrap();
    assert_eq!(unknown.output["found"], false);
    assert_eq!(unknown.output["verdict"], "unknown");

    // The host placed the granted secret in every request.
    let log = replay.log.lock().unwrap();
    assert_eq!(log.api_keys.len(), 3);
    assert!(log.api_keys.iter().all(|key| key == TEST_API_KEY));
}

#[tokio::test]
async fn secret_value_stays_out_of_storage_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let host = build_host(dir.path(), Some(&replay.origin())).await;
    ingest_wazuh_samples(&host).await;
    host.store.flush().unwrap();
    assert!(
        !replay.log.lock().unwrap().api_keys.is_empty(),
        "the key was used"
    );

    let cases = serde_json::to_string(&host.store.cases().unwrap()).unwrap();
    let runs = serde_json::to_string(&host.store.runs().unwrap()).unwrap();
    assert!(!cases.contains(TEST_API_KEY));
    assert!(!runs.contains(TEST_API_KEY));
    for file in files_under(&dir.path().join("data")) {
        let bytes = std::fs::read(&file).unwrap();
        let found = bytes
            .windows(TEST_API_KEY.len())
            .any(|window| window == TEST_API_KEY.as_bytes());
        assert!(!found, "secret found in {}", file.display());
    }
}

#[tokio::test]
async fn ungranted_connector_fails_only_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    // No grant for the VirusTotal plugin: its requests must be denied.
    let host = build_host(dir.path(), None).await;
    ingest_wazuh_samples(&host).await;
    assert_eq!(replay.requests(), 0, "nothing reached the upstream");

    let runs = host.store.runs().unwrap();
    let eicar_case = case_about(&host.store.cases().unwrap(), "87105");
    let run = runs
        .iter()
        .find(|run| run.case_id == eicar_case.id)
        .unwrap();
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "the step has on_error: continue"
    );
    // Each lookup runs in an enrich-observable sub-playbook, whose handler
    // records the failure and lets the triage go on.
    let calls: Vec<_> = run
        .steps
        .iter()
        .filter(|step| step.id == "enrich")
        .collect();
    assert!(!calls.is_empty(), "{:#?}", run.steps);
    for call in calls {
        assert_eq!(call.status, StepStatus::Succeeded);
        let child = host
            .store
            .run(call.child_run.as_ref().unwrap())
            .unwrap()
            .unwrap();
        let lookup = child.steps.iter().find(|step| step.id == "lookup").unwrap();
        assert_eq!(lookup.status, StepStatus::Failed);
        let error = lookup.error.as_ref().unwrap();
        assert_eq!(error.kind, "denied", "{error:?}");
        let deferred = child
            .steps
            .iter()
            .find(|step| step.handles.as_deref() == Some("lookup"))
            .expect("the handler ran");
        assert_eq!(deferred.status, StepStatus::Succeeded);
    }
    let score = run.steps.iter().find(|step| step.id == "score").unwrap();
    assert_eq!(score.status, StepStatus::Succeeded);
}

#[tokio::test]
async fn echoed_secret_is_redacted() {
    // An upstream that puts the API key it received into its error message,
    // as some APIs do for invalid keys.
    async fn echo_key(headers: axum::http::HeaderMap) -> axum::response::Response {
        use axum::response::IntoResponse;
        let key = headers
            .get("x-apikey")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = json!({ "error": { "code": "WrongCredentialsError", "message": format!("key {key} is invalid") } });
        (axum::http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    }
    let app = axum::Router::new().fallback(echo_key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let host = build_host(dir.path(), Some(&origin)).await;
    let failure = host
        .caller
        .runtime
        .invoke(
            "virustotal",
            "file-report",
            &json!({ "hash": EICAR_SHA256 }),
            &CallContext::default(),
        )
        .await
        .unwrap_err();
    let error = failure.error.to_string();
    assert!(error.contains("[REDACTED]"), "{error}");
    assert!(!error.contains(TEST_API_KEY), "{error}");
    let report = serde_json::to_string(&failure.report).unwrap();
    assert!(!report.contains(TEST_API_KEY), "{report}");
}

#[tokio::test]
async fn plugin_show_lists_ignored_grants() {
    let dir = tempfile::tempdir().unwrap();
    let origin = "http://127.0.0.1:9";
    let path = write_config(dir.path(), Some(origin));
    // Grant the VirusTotal plugin an origin and a setting it does not
    // request, beside the ones it does.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            &format!(r#"http_origins = ["{origin}"]"#),
            &format!(r#"http_origins = ["{origin}", "https://unrequested.example"]"#),
        )
        .replace(
            &format!(r#"config = {{ base_url = "{origin}" }}"#),
            &format!(r#"config = {{ base_url = "{origin}", extra = "1" }}"#),
        );
    assert!(text.contains("unrequested.example"), "{text}");
    assert!(text.contains("extra"), "{text}");
    std::fs::write(&path, text).unwrap();

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(&path)
        .args(["plugin", "show", "virustotal"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "plugin show failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(
            "ignored (not requested): http-origins https://unrequested.example, config extra"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("config:base_url"),
        "requested origins are missing: {stdout}"
    );
}
