//! Approval steps in the daemon: the question goes to a chat webhook on
//! 127.0.0.1, the run waits, and a person answers over HTTP or the CLI;
//! an unanswered question takes its timeout decision, across a restart.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use support::daemon::Daemon;
use support::ticketing::{Behaviour, TicketServer, start_ticket_server, write_ticketing_config};

const ALERT: &str = r#"{"timestamp":"2026-12-04T10:00:00.000+0000","rule":{"level":12,"id":"5712","description":"sshd: brute force trying to get access to the system"},"agent":{"id":"001","name":"web-01","ip":"10.0.0.5"},"data":{"srcip":"198.51.100.7"},"full_log":"Invalid user admin from 198.51.100.7 port 22"}"#;

/// Ask in the chat channel, wait for a lead's approval with a reason, then
/// open a containment ticket only when approved.
const PLAYBOOK: &str = r#"
name: contain-with-approval
trigger: { source: wazuh }
steps:
  - id: notify
    uses: chat-webhook.post-message
    with:
      text: "Block {{ alert.raw.data.srcip }} for case {{ case.id }}? Answer in Palisade."
  - id: approve
    approval:
      question: "Block {{ alert.raw.data.srcip }} at the firewall?"
      approvers: [lead]
      form:
        type: object
        required: [reason]
        properties: { reason: { type: string, minLength: 3 } }
      timeout: TIMEOUT
      on_timeout: ON_TIMEOUT
  - id: contain
    if: "steps.approve.approved"
    uses: ticketing.open-ticket
    with:
      title: "Block {{ alert.raw.data.srcip }}: {{ steps.approve.response.reason }}"
      alert_id: "{{ alert.id }}"
"#;

/// A chat webhook that records the messages it receives.
async fn start_chat_server() -> (String, Arc<Mutex<Vec<Value>>>) {
    async fn receive(
        State(messages): State<Arc<Mutex<Vec<Value>>>>,
        Json(body): Json<Value>,
    ) -> &'static str {
        messages.lock().unwrap().push(body);
        "ok"
    }
    let messages = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hooks/soc", post(receive))
        .with_state(messages.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), messages)
}

/// Writes the configuration and the playbook with `timeout` and
/// `on_timeout` filled in.
fn setup(
    dir: &Path,
    tickets: &TicketServer,
    chat: &str,
    timeout: &str,
    on_timeout: &str,
) -> PathBuf {
    let playbooks = dir.join("playbooks");
    std::fs::create_dir_all(&playbooks).unwrap();
    let text = PLAYBOOK
        .replace("ON_TIMEOUT", on_timeout)
        .replace("TIMEOUT", timeout);
    std::fs::write(playbooks.join("contain.yaml"), text).unwrap();
    let config = write_ticketing_config(dir, &playbooks, &tickets.origin());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[plugins.chat-webhook]\nhttp_origins = [\"{chat}\"]\nconfig = {{ webhook_url = \"{chat}/hooks/soc\" }}\n"
    ));
    std::fs::write(&config, text).unwrap();
    config
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Answers approval `step` of `run` with the token `token`, whose name is
/// who answers.
async fn answer(daemon: &Daemon, token: &str, run: &str, step: &str, body: Value) -> (u16, Value) {
    let path = format!("/v1/approvals/{run}/{step}");
    daemon.call_as(Some(token), "POST", &path, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_waits_for_an_allowed_answer() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let (chat, messages) = start_chat_server().await;
    let config = setup(dir.path(), &tickets, &chat, "1h", "reject");
    let daemon = Daemon::start_logged(&config, &dir.path().join("daemon.log"));
    assert_eq!(daemon.post_alerts(ALERT.to_string()).await.0, 202);

    let pending = wait_for("the question", async || {
        let pending = daemon.get("/v1/approvals").await;
        (pending.as_array().unwrap().len() == 1).then_some(pending[0].clone())
    })
    .await;
    assert_eq!(pending["question"], "Block 198.51.100.7 at the firewall?");
    assert_eq!(pending["approvers"], json!(["lead"]));
    let run_id = pending["run_id"].as_str().unwrap().to_string();
    let run = daemon.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run["status"], "waiting");
    let message = messages.lock().unwrap()[0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("Block 198.51.100.7 for case C"),
        "{message}"
    );

    // Someone who is not an approver, a token that claims to be an
    // approver, a wrong decision and a response that does not fit the form
    // are all refused and change nothing. Who answers is the token's name.
    let intern = daemon.create_token("intern", "analyst").await;
    let lead = daemon.create_token("lead", "analyst").await;
    let (status, body) = answer(
        &daemon,
        &intern,
        &run_id,
        "approve",
        json!({"decision": "approve", "response": {"reason": "yes"}}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let (status, body) = answer(
        &daemon,
        &intern,
        &run_id,
        "approve",
        json!({"decision": "approve", "actor": "lead", "response": {"reason": "yes"}}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "actor_mismatch", "{body}");
    let (status, _) = answer(
        &daemon,
        &lead,
        &run_id,
        "approve",
        json!({"decision": "maybe"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = answer(
        &daemon,
        &lead,
        &run_id,
        "approve",
        json!({"decision": "approve", "response": {"reason": 1}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("form"),
        "{body}"
    );
    let (status, _) = answer(
        &daemon,
        &lead,
        &run_id,
        "nothing",
        json!({"decision": "approve"}),
    )
    .await;
    assert_eq!(status, 409);
    assert!(tickets.requests().is_empty());

    let (status, run) = answer(&daemon, &lead, &run_id, "approve", json!({"decision": "approve", "actor": "lead", "response": {"reason": "confirmed brute force"}})).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][1]["output"]["approved"], true);
    assert_eq!(run["steps"][1]["output"]["by"], "lead");
    assert_eq!(run["steps"][2]["output"]["ticket_id"], "T-1");
    assert_eq!(daemon.get("/v1/approvals").await, json!([]));

    // The decision is in the case timeline.
    let case = daemon
        .get(&format!("/v1/cases/{}", run["case_id"].as_str().unwrap()))
        .await;
    let kinds: Vec<&str> = case["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"approval_requested"), "{kinds:?}");
    assert!(kinds.contains(&"approval_answered"), "{kinds:?}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_over_the_cli_skips_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let (chat, _messages) = start_chat_server().await;
    let config = setup(dir.path(), &tickets, &chat, "1h", "reject");
    let daemon = Daemon::start_logged(&config, &dir.path().join("daemon.log"));
    assert_eq!(daemon.post_alerts(ALERT.to_string()).await.0, 202);
    let run_id = wait_for("the question", async || {
        let pending = daemon.get("/v1/approvals").await;
        pending[0]["run_id"].as_str().map(str::to_string)
    })
    .await;

    // The CLI sends the token of `PALISADE_TOKEN`; its name must be the
    // approver's.
    let lead = daemon.create_token("lead", "analyst").await;
    let cli = |token: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("PALISADE_TOKEN", token)
            .output()
            .unwrap()
    };
    let listed = cli(
        support::TEST_ADMIN_TOKEN,
        &["approvals", "--server", &daemon.base],
    );
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains(&run_id) && listed.contains("may answer: lead"),
        "{listed}"
    );

    let output = cli(
        &lead,
        &[
            "approve",
            &run_id,
            "approve",
            "--decision",
            "reject",
            "--server",
            &daemon.base,
            "--json",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][1]["output"]["approved"], false);
    assert_eq!(run["steps"][2]["status"], "skipped");
    assert!(tickets.requests().is_empty());
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_question_times_out_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let (chat, _messages) = start_chat_server().await;
    let config = setup(dir.path(), &tickets, &chat, "2s", "approve");
    let log = dir.path().join("daemon.log");
    let daemon = Daemon::start_logged(&config, &log);
    assert_eq!(daemon.post_alerts(ALERT.to_string()).await.0, 202);
    let pending = wait_for("the question", async || {
        let pending = daemon.get("/v1/approvals").await;
        pending.as_array().unwrap().first().cloned()
    })
    .await;
    daemon.kill();

    let daemon = Daemon::start_logged(&config, &log);
    let run_id = pending["run_id"].as_str().unwrap();
    let run = wait_for("the timeout decision", async || {
        let run = daemon.get(&format!("/v1/runs/{run_id}")).await;
        (run["status"] == "succeeded").then_some(run)
    })
    .await;
    assert_eq!(run["steps"][1]["output"]["timed_out"], true);
    assert_eq!(run["steps"][1]["output"]["approved"], true);
    let decided: chrono::DateTime<chrono::Utc> =
        run["finished_at"].as_str().unwrap().parse().unwrap();
    let deadline: chrono::DateTime<chrono::Utc> =
        pending["deadline"].as_str().unwrap().parse().unwrap();
    assert!(
        decided >= deadline,
        "decided at {decided}, before {deadline}"
    );
    // Approved on timeout, so the action ran, with no reason given.
    assert_eq!(tickets.requests().len(), 1);
    daemon.stop();
}
