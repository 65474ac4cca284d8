//! `palisade playbook check` on playbooks with known mistakes: its report
//! is pinned line by line in `tests/fixtures/check/expected.txt`, so a
//! change to a message shows up as a diff here.

mod support;

use std::process::{Command, Output};

use support::{plugins_dir, repo_root};

/// Runs `palisade playbook check` from the repository root, so the paths
/// in the report are relative and stable.
fn check(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palisade.toml");
    std::fs::write(
        &config,
        format!(
            "plugins_dir = \"{}\"\ndata_dir = \"{}\"\ncache_dir = \"{}\"\n{}",
            plugins_dir().display(),
            dir.path().join("data").display(),
            support::cache_dir().display(),
            support::trust_table()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .current_dir(repo_root())
        .arg("--config")
        .arg(&config)
        .args(["playbook", "check"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn report_matches_the_snapshot() {
    let output = check(&["tests/fixtures/check"]);
    assert_eq!(output.status.code(), Some(1), "errors make the exit code 1");
    let report = String::from_utf8(output.stdout).unwrap();
    let expected =
        std::fs::read_to_string(repo_root().join("tests/fixtures/check/expected.txt")).unwrap();
    for (number, (got, want)) in report.lines().zip(expected.lines()).enumerate() {
        assert_eq!(got, want, "line {} of the report", number + 1);
    }
    assert_eq!(
        report.lines().count(),
        expected.lines().count(),
        "whole report:\n{report}"
    );
    let summary = String::from_utf8(output.stderr).unwrap();
    assert!(
        summary.contains("checked 6 playbooks: 12 errors, 2 warnings"),
        "{summary}"
    );
}

#[test]
fn bundled_playbooks_have_no_errors() {
    let output = check(&["playbooks"]);
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}{summary}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(summary.contains("0 errors, 0 warnings"), "{summary}");
}

/// Turns the lines of `expected.txt` about `file` into the JSON the API
/// returns for each diagnostic: line, column, level, message and hint.
fn expected_diagnostics(file: &str) -> Vec<serde_json::Value> {
    let expected =
        std::fs::read_to_string(repo_root().join("tests/fixtures/check/expected.txt")).unwrap();
    let prefix = format!("tests/fixtures/check/{file}:");
    let mut diagnostics: Vec<serde_json::Value> = Vec::new();
    for line in expected.lines() {
        if let Some(hint) = line.strip_prefix("  hint: ") {
            if let Some(last) = diagnostics.last_mut()
                && !last.is_null()
            {
                last["hint"] = serde_json::json!(hint);
            }
            continue;
        }
        let Some(rest) = line.strip_prefix(&prefix) else {
            // A hint after another file's diagnostic must not attach here.
            diagnostics.push(serde_json::Value::Null);
            continue;
        };
        let mut parts = rest.splitn(4, ':');
        let line_number: u64 = parts.next().unwrap().parse().unwrap();
        let column: u64 = parts.next().unwrap().parse().unwrap();
        let level = parts.next().unwrap().trim();
        let message = parts.next().unwrap().trim();
        diagnostics.push(serde_json::json!({
            "line": line_number,
            "column": column,
            "level": level,
            "message": message,
            "hint": null,
        }));
    }
    diagnostics.retain(|diagnostic| !diagnostic.is_null());
    diagnostics
}

#[tokio::test]
async fn api_check_reports_what_the_cli_reports() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(dir.path(), None);
    let daemon = support::daemon::Daemon::start(&config);
    let analyst = daemon.create_token("analyst", "analyst").await;
    let check_body = |file: &str| {
        std::fs::read_to_string(repo_root().join("tests/fixtures/check").join(file)).unwrap()
    };
    let post = |body: String| {
        daemon
            .client()
            .post(format!("{}/v1/playbooks/check", daemon.base))
            .bearer_auth(&analyst)
            .body(body)
            .send()
    };

    let response = post(check_body("mistakes.yaml")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let report: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let expected = expected_diagnostics("mistakes.yaml");
    assert!(!expected.is_empty());
    assert_eq!(
        report["diagnostics"].as_array().unwrap(),
        &expected,
        "{report:#}"
    );
    assert_eq!(report["valid"], false);
    let errors = expected
        .iter()
        .filter(|diagnostic| diagnostic["level"] == "error")
        .count();
    assert_eq!(report["errors"], errors);
    assert_eq!(report["warnings"], expected.len() - errors);

    let response = post(check_body("clean.yaml")).await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(report["valid"], true, "{report:#}");
    assert_eq!(report["diagnostics"], serde_json::json!([]));

    // A body may call the daemon's playbooks as sub-playbooks.
    let caller = "name: caller\nsteps:\n  - id: enrich\n    playbook: enrich-observable\n    with: { observable: { type: ipv4, value: 198.51.100.7 } }\n";
    let response = post(caller.to_string()).await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let messages = report["diagnostics"].to_string();
    assert!(
        !messages.contains("not among the checked playbooks"),
        "{report:#}"
    );

    // The loaded playbooks are listed and shown.
    let listed = daemon.get("/v1/playbooks").await;
    let triage = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|playbook| playbook["name"] == "wazuh-triage")
        .unwrap_or_else(|| panic!("no wazuh-triage in {listed}"));
    assert_eq!(triage["trigger"]["source"], "wazuh");
    let plugins = triage["plugins"].as_array().unwrap();
    assert!(
        plugins.contains(&serde_json::json!("ioc-extractor")),
        "{triage}"
    );
    let document = daemon.get("/v1/playbooks/wazuh-triage").await;
    assert_eq!(document["name"], "wazuh-triage");
    assert_eq!(
        document["steps"].as_array().unwrap().len() as u64,
        triage["steps"].as_u64().unwrap()
    );
    let (status, _) = daemon
        .call_as(Some(&analyst), "GET", "/v1/playbooks/nothing", None)
        .await;
    assert_eq!(status, 404);
    daemon.stop();
}
