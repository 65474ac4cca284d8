//! Case work by analysts through the real `palisade` binary: updates,
//! comments and tasks over the daemon's HTTP API on 127.0.0.1 and with
//! `palisade case` on the database. Each change is read back, survives a
//! restart and is in the audit log; bad input is rejected with a message
//! that names it.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use palisade_store::{SledStore, Store};
use serde_json::{Value, json};
use support::daemon::Daemon;
use support::{TEST_ADMIN_NAME, TEST_ADMIN_TOKEN, repo_root, write_config};

fn wazuh_samples() -> String {
    std::fs::read_to_string(repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl")).unwrap()
}

/// Sends `method path` with an optional JSON body to the daemon as the
/// test admin and returns the status and the JSON response.
async fn call(daemon: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    daemon
        .call_as(Some(TEST_ADMIN_TOKEN), method, path, body)
        .await
}

/// Asserts a 400 whose message contains each of `parts`.
fn assert_bad_request((status, body): (u16, Value), parts: &[&str]) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
}

fn kinds_by(case: &Value, actor: &str) -> Vec<String> {
    case["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["actor"] == actor)
        .map(|event| event["kind"].as_str().unwrap().to_string())
        .collect()
}

fn palisade(config: &Path, args: &[&str]) -> Output {
    palisade_with_token(config, args, TEST_ADMIN_TOKEN)
}

/// Runs `palisade` with `token` in `PALISADE_TOKEN`, for `--server`.
fn palisade_with_token(config: &Path, args: &[&str], token: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("USER")
        .env("PALISADE_TOKEN", token)
        .output()
        .unwrap()
}

fn succeed(config: &Path, args: &[&str]) -> String {
    succeed_with_token(config, args, TEST_ADMIN_TOKEN)
}

fn succeed_with_token(config: &Path, args: &[&str], token: &str) -> String {
    let output = palisade_with_token(config, args, token);
    assert!(
        output.status.success(),
        "palisade {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn fail(config: &Path, args: &[&str]) -> String {
    let output = palisade(config, args);
    assert!(!output.status.success(), "palisade {args:?} succeeded");
    String::from_utf8(output.stderr).unwrap()
}

fn audit_actions(config_dir: &Path) -> Vec<(String, String, String)> {
    let store = SledStore::open(&config_dir.join("data/db")).unwrap();
    store
        .audit_records(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|record| record.action.starts_with("case_"))
        .map(|record| (record.actor, record.action, record.subject))
        .collect()
}

#[tokio::test]
async fn case_work_over_http_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let daemon = Daemon::start(&config);
    let (status, body) = daemon.post_alerts(wazuh_samples()).await;
    assert_eq!(status, 202, "{body}");
    let id = body["accepted"][0]["case_id"].as_str().unwrap().to_string();
    // Each person acts with a token of their name.
    let lead = daemon.create_token("lead", "analyst").await;
    let ana = daemon.create_token("ana", "analyst").await;
    let bo = daemon.create_token("bo", "analyst").await;
    let cy = daemon.create_token("cy", "analyst").await;

    let update = json!({
        "status": "in_progress",
        "assignee": "ana",
        "add_tags": ["Malware", "eicar"],
        "priority": "P1",
        "actor": "lead",
    });
    let path = format!("/v1/cases/{id}");
    let (status, body) = call(&daemon, "PATCH", &path, Some(update.clone())).await;
    assert_eq!(status, 403, "the admin token acted as lead: {body}");
    assert_eq!(body["error"]["code"], "actor_mismatch");
    let (status, case) = daemon
        .call_as(Some(&lead), "PATCH", &path, Some(update))
        .await;
    assert_eq!(status, 200, "{case}");
    assert_eq!(case["status"], "in_progress");
    assert_eq!(case["assignee"], "ana");
    assert_eq!(case["tags"], json!(["eicar", "malware"]));
    assert!(case["acknowledged_at"].is_string());
    assert!(case["sla"]["acknowledge_by"].is_string(), "{case}");

    let comment = json!({ "text": "Looks like the EICAR test file.", "actor": "ana" });
    let path = format!("/v1/cases/{id}/comments");
    let (status, case) = daemon
        .call_as(Some(&ana), "POST", &path, Some(comment))
        .await;
    assert_eq!(status, 201, "{case}");
    assert_eq!(case["notes"][0]["author"], "ana");

    let path = format!("/v1/cases/{id}/tasks?actor=bo");
    let task = json!({ "title": "Ask the owner where the file came from" });
    let (status, body) = daemon
        .call_as(Some(&ana), "POST", &path, Some(task.clone()))
        .await;
    assert_eq!(status, 403, "ana's token acted as bo: {body}");
    assert_eq!(body["error"]["code"], "actor_mismatch");
    let (status, reply) = daemon.call_as(Some(&bo), "POST", &path, Some(task)).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["task_id"], "T1");
    let path = format!("/v1/cases/{id}/tasks/T1/done");
    let (status, case) = call(&daemon, "POST", &path, None).await;
    assert_eq!(status, 200, "{case}");

    // Read back.
    let case = daemon.get(&format!("/v1/cases/{id}")).await;
    assert_eq!(case["notes"][0]["text"], "Looks like the EICAR test file.");
    let task = &case["tasks"][0];
    assert_eq!(task["title"], "Ask the owner where the file came from");
    assert_eq!(task["created_by"], "bo");
    assert_eq!(task["done"], true);
    assert_eq!(task["done_by"], TEST_ADMIN_NAME, "no actor given");
    assert_eq!(
        kinds_by(&case, "lead"),
        [
            "status_changed",
            "assigned",
            "tag_added",
            "tag_added",
            "priority_changed"
        ]
    );
    assert_eq!(kinds_by(&case, "ana"), ["comment"]);
    assert_eq!(kinds_by(&case, "bo"), ["task_added"]);
    assert_eq!(kinds_by(&case, TEST_ADMIN_NAME), ["task_done"]);

    // Filters and statistics.
    let listed = daemon
        .get("/v1/cases?status=in_progress&assignee=ana&tag=malware&severity=informational")
        .await;
    let listed: Vec<&Value> = listed.as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(
        daemon
            .get("/v1/cases?status=new")
            .await
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(daemon.get("/v1/cases?breached=true").await, json!([]));
    let stats = daemon.get("/v1/cases/stats?since=1d").await;
    assert_eq!(stats["opened"], 5, "{stats}");
    assert_eq!(stats["acknowledged"], 1, "{stats}");
    assert_eq!(stats["resolved"], 0, "{stats}");

    // Bad input: 400 naming the value, 404 for an unknown case.
    let path = format!("/v1/cases/{id}");
    assert_bad_request(
        call(&daemon, "PATCH", &path, Some(json!({ "status": "closed" }))).await,
        &["\"closed\"", "in_progress", "false_positive"],
    );
    let (status, body) = call(&daemon, "PATCH", &path, Some(json!({ "tags": ["x"] }))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_body");
    assert!(body["error"]["message"].as_str().unwrap().contains("tags"));
    let (status, body) = call(
        &daemon,
        "PATCH",
        "/v1/cases/C99999999",
        Some(json!({ "status": "resolved" })),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_bad_request(
        call(
            &daemon,
            "POST",
            &format!("{path}/comments"),
            Some(json!({ "text": " " })),
        )
        .await,
        &["empty"],
    );
    let long = "x".repeat(10_001);
    assert_bad_request(
        call(
            &daemon,
            "POST",
            &format!("{path}/comments"),
            Some(json!({ "text": long })),
        )
        .await,
        &["10001 characters", "10000"],
    );
    assert_bad_request(
        call(&daemon, "POST", &format!("{path}/tasks/T9/done"), None).await,
        &["\"T9\"", "T1"],
    );
    let (status, body) = call(&daemon, "GET", "/v1/cases?status=bogus", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(&daemon, "GET", "/v1/cases?colour=red", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query");
    let (status, body) = call(&daemon, "GET", "/v1/cases/stats?since=soon", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"soon\"")
    );

    // The CLI works through the daemon, which holds the database lock.
    let base = daemon.base.clone();
    let config_path = config.clone();
    let cli_id = id.clone();
    let listed = tokio::task::spawn_blocking(move || {
        succeed_with_token(
            &config_path,
            &[
                "case",
                "comment",
                &cli_id,
                "Closing soon.",
                "--server",
                &base,
                "--as",
                "cy",
            ],
            &cy,
        );
        // The admin token cannot act as cy.
        let error = fail(
            &config_path,
            &[
                "case",
                "comment",
                &cli_id,
                "Not mine.",
                "--server",
                &base,
                "--as",
                "cy",
            ],
        );
        assert!(error.contains("actor_mismatch"), "{error}");
        succeed(
            &config_path,
            &[
                "cases",
                "--server",
                &base,
                "--status",
                "in_progress",
                "--json",
            ],
        )
    })
    .await
    .unwrap();
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["notes"][1]["author"], "cy");
    daemon.stop();

    // After a restart every change is still there.
    let daemon = Daemon::start(&config);
    let again = daemon.get(&format!("/v1/cases/{id}")).await;
    assert_eq!(again["notes"].as_array().unwrap().len(), 2);
    assert_eq!(again["tasks"], case["tasks"]);
    assert_eq!(kinds_by(&again, "lead"), kinds_by(&case, "lead"));
    assert_eq!(kinds_by(&again, "cy"), ["comment"]);
    daemon.stop();

    let actions = audit_actions(dir.path());
    let expected = [
        ("operator:lead", "case_updated"),
        ("operator:ana", "case_commented"),
        ("operator:bo", "case_task_added"),
        ("operator:test-admin", "case_task_done"),
        ("operator:cy", "case_commented"),
    ];
    let found: Vec<(&str, &str)> = actions
        .iter()
        .map(|(actor, action, subject)| {
            assert_eq!(subject, &id);
            (actor.as_str(), action.as_str())
        })
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn case_work_on_the_database_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let alerts = repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl");
    let alerts = alerts.to_str().unwrap();
    {
        let cases: Value =
            serde_json::from_str(&succeed(&config, &["run", "--json", "--alerts", alerts]))
                .unwrap();
        let id = cases[0]["id"].as_str().unwrap().to_string();

        let out = succeed(
            &config,
            &[
                "case",
                "update",
                &id,
                "--status",
                "in_progress",
                "--assignee",
                "ana",
                "--tag",
                "malware",
                "--tag",
                "lab",
                "--priority",
                "P2",
                "--severity",
                "critical",
                "--as",
                "lead",
            ],
        );
        assert_eq!(out, format!("updated case {id}\n"));
        succeed(
            &config,
            &["case", "update", &id, "--untag", "lab", "--as", "lead"],
        );
        succeed(
            &config,
            &["case", "comment", &id, "First look: benign.", "--as", "ana"],
        );
        let out = succeed(
            &config,
            &[
                "case",
                "task",
                &id,
                "add",
                "Reimage the host",
                "--as",
                "ana",
            ],
        );
        assert_eq!(out, format!("added task T1 to case {id}\n"));
        // Without `--as` and without `USER`, the actor is `cli`.
        succeed(&config, &["case", "task", &id, "done", "T1"]);
        succeed(
            &config,
            &["case", "update", &id, "--status", "resolved", "--as", "ana"],
        );

        let shown: Value =
            serde_json::from_str(&succeed(&config, &["cases", &id, "--json"])).unwrap();
        let case = &shown[0];
        assert_eq!(case["status"], "resolved");
        assert!(case["resolved_at"].is_string());
        assert_eq!(case["severity"], "critical");
        assert_eq!(case["priority"], "P2");
        assert_eq!(case["tags"], json!(["malware"]));
        assert_eq!(case["notes"][0]["text"], "First look: benign.");
        assert_eq!(case["tasks"][0]["done_by"], "cli");
        assert_eq!(
            kinds_by(case, "lead"),
            [
                "status_changed",
                "assigned",
                "tag_added",
                "tag_added",
                "priority_changed",
                "severity_changed",
                "tag_removed"
            ]
        );
        assert_eq!(
            kinds_by(case, "ana"),
            ["comment", "task_added", "status_changed"]
        );
        assert_eq!(kinds_by(case, "cli"), ["task_done"]);

        // The table view shows the workflow fields.
        let table = succeed(&config, &["cases", &id]);
        assert!(table.contains("assignee     ana"), "{table}");
        assert!(
            table.contains("[x] T1   Reimage the host (done by cli"),
            "{table}"
        );
        assert!(table.contains("First look: benign."), "{table}");
        let list = succeed(&config, &["cases", "--status", "resolved"]);
        assert_eq!(list.lines().count(), 2, "{list}");
        assert!(list.contains(&id), "{list}");
        let stats: Value = serde_json::from_str(&succeed(
            &config,
            &["case", "stats", "--since", "1h", "--json"],
        ))
        .unwrap();
        assert_eq!(stats["opened"], 5);
        assert_eq!(stats["resolved"], 1);

        // Bad input fails with the value and the accepted ones.
        let error = fail(&config, &["case", "update", &id, "--status", "closed"]);
        assert!(error.contains("\"closed\""), "{error}");
        assert!(error.contains("false_positive"), "{error}");
        let error = fail(&config, &["case", "task", &id, "done", "T4"]);
        assert!(error.contains("\"T4\""), "{error}");
        assert!(error.contains("its tasks are T1"), "{error}");
        let error = fail(&config, &["case", "comment", &id, ""]);
        assert!(error.contains("empty"), "{error}");
        let error = fail(&config, &["case", "comment", "C99999999", "hello"]);
        assert!(error.contains("\"C99999999\" not found"), "{error}");
        let error = fail(&config, &["cases", "--severity", "urgent"]);
        assert!(error.contains("\"urgent\""), "{error}");
        let error = fail(&config, &["case", "stats", "--since", "forever"]);
        assert!(error.contains("\"forever\""), "{error}");
    }

    let actions = audit_actions(dir.path());
    let names: Vec<&str> = actions
        .iter()
        .map(|(_, action, _)| action.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "case_updated",
            "case_updated",
            "case_commented",
            "case_task_added",
            "case_task_done",
            "case_updated"
        ]
    );
    assert_eq!(actions[4].0, "operator:cli");
}
