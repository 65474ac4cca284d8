//! Durability: the daemon is killed with SIGKILL while alerts stream in
//! and steps with side effects are in flight, and restarted; nothing it
//! acknowledged may be lost and no side effect may happen twice.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::Daemon;
use support::ticketing::{Behaviour, TicketServer, start_ticket_server, write_ticketing_config};

/// Extract, open a ticket (a side effect), score. The ticket step retries
/// after an interruption with the same idempotency key, and retries failed
/// attempts after a stored delay.
const TICKET_PLAYBOOK: &str = r#"
name: ticket-triage
trigger:
  source: wazuh
steps:
  - id: extract
    uses: ioc-extractor.extract
    with:
      document: "{{ alert.raw }}"
  - id: ticket
    uses: ticketing.open-ticket
    on_interrupt: retry
    retry:
      attempts: 8
      backoff: 100ms
      max_backoff: 1s
    with:
      title: "{{ alert.rule.name }}"
      case_id: "{{ case.id }}"
      alert_id: "{{ alert.id }}"
      observables: "{{ steps.extract.observables }}"
  - id: score
    uses: triage-scorer.score
    with:
      alert:
        source: "{{ alert.source }}"
        severity: "{{ alert.severity }}"
        rule: "{{ alert.rule }}"
      observables: "{{ steps.extract.observables }}"
"#;

/// Builds a Wazuh SSH alert made unique by `n`.
fn wazuh_alert(n: u64) -> String {
    let (a, b) = (n / 250 % 250 + 1, n % 250 + 1);
    serde_json::json!({
        "timestamp": "2026-12-04T10:00:00.000+0000",
        "rule": {"level": 7, "id": "5710", "description": "sshd: attempt to login using a non-existent user"},
        "agent": {"id": "001", "name": "web-01", "ip": "10.0.0.5"},
        "data": {"srcip": format!("198.51.{a}.{b}"), "srcuser": format!("user{n}")},
        "full_log": format!("sshd[{n}]: Invalid user user{n} from 198.51.{a}.{b} port 22"),
        "id": format!("crash-test-{n}")
    })
    .to_string()
}

fn write_playbook(dir: &Path, text: &str) -> std::path::PathBuf {
    let playbooks = dir.join("playbooks");
    std::fs::create_dir_all(&playbooks).unwrap();
    std::fs::write(playbooks.join("playbook.yaml"), text).unwrap();
    playbooks
}

/// A small generator of pseudo-random numbers, seeded from the clock and
/// printed, so a failing run can be repeated.
struct Random(u64);

impl Random {
    fn new() -> Self {
        let seed = std::env::var("PALISADE_CRASH_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("crash test seed {seed} (set PALISADE_CRASH_SEED to repeat)");
        Self(seed | 1)
    }

    fn below(&mut self, bound: u64) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Posts batches of new alerts until `stop` is set, and records the ids
/// of those the daemon acknowledged with 202.
async fn stream_alerts(
    base: String,
    first: u64,
    acknowledged: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let client = support::daemon::client_with_token(support::TEST_ADMIN_TOKEN);
    let mut next = first;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let batch: Vec<String> = (next..next + 3).map(wazuh_alert).collect();
        next += 3;
        let response = client
            .post(format!("{base}/v1/alerts"))
            .body(batch.join("\n"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let Ok(response) = response else { break };
        if response.status().as_u16() != 202 {
            break;
        }
        let Ok(Ok(body)) = response
            .text()
            .await
            .map(|text| serde_json::from_str::<Value>(&text))
        else {
            break;
        };
        let mut acknowledged = acknowledged.lock().unwrap();
        for item in body["accepted"].as_array().unwrap() {
            acknowledged.insert(item["alert_id"].as_str().unwrap().to_string());
        }
    }
    next
}

/// Waits until every run is final and there are at least `expected`.
async fn wait_until_settled(daemon: &Daemon, expected: usize) -> Vec<Value> {
    // Generous, because the last start may have thousands of runs to finish
    // on a loaded machine; a run that is really stuck stays stuck.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let runs = daemon.get("/v1/runs").await;
        let runs = runs.as_array().unwrap().clone();
        let open = runs
            .iter()
            .filter(|run| !matches!(run["status"].as_str(), Some("succeeded" | "failed")))
            .count();
        if runs.len() >= expected && open == 0 {
            return runs;
        }
        if Instant::now() >= deadline {
            let stuck: Vec<&Value> = runs
                .iter()
                .filter(|run| !matches!(run["status"].as_str(), Some("succeeded" | "failed")))
                .collect();
            panic!(
                "runs did not settle: {} runs, {open} not final, {expected} expected: {:#}",
                runs.len(),
                Value::Array(stuck.into_iter().cloned().collect())
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn palisade(config: &Path, args: &[&str]) -> std::process::Output {
    palisade_with_token(config, args, support::TEST_ADMIN_TOKEN)
}

/// Runs `palisade` with `token` in `PALISADE_TOKEN`, for `--server`.
fn palisade_with_token(config: &Path, args: &[&str], token: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("PALISADE_TOKEN", token)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sigkills_lose_no_alert_and_repeat_no_side_effect() {
    let cycles: usize = std::env::var("PALISADE_CRASH_CYCLES")
        .ok()
        .and_then(|cycles| cycles.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour {
        max_delay: Duration::from_millis(30),
        fail_every: 7,
        ..Behaviour::default()
    })
    .await;
    let playbooks = write_playbook(dir.path(), TICKET_PLAYBOOK);
    let config = write_ticketing_config(dir.path(), &playbooks, &tickets.origin());
    let log = dir.path().join("daemon.log");
    let mut random = Random::new();
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let mut next_alert = 0;

    for _ in 0..cycles {
        let daemon = Daemon::start_logged(&config, &log);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streamer = tokio::spawn(stream_alerts(
            daemon.base.clone(),
            next_alert,
            acknowledged.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(50 + random.below(400))).await;
        daemon.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        next_alert = streamer.await.unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > cycles,
        "too few alerts were acknowledged to test anything: {}",
        acknowledged.len()
    );
    let daemon = Daemon::start_logged(&config, &log);
    let runs = wait_until_settled(&daemon, acknowledged.len()).await;

    let cases = daemon.get("/v1/cases").await;
    let in_cases: BTreeSet<String> = cases
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|case| case["alert_ids"].as_array().unwrap().clone())
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !in_cases.contains(*id))
        .collect();

    let mut runs_by_alert: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for run in &runs {
        runs_by_alert
            .entry(run["alert_id"].as_str().unwrap().to_string())
            .or_default()
            .push(run);
    }
    let without_run: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !runs_by_alert.contains_key(*id))
        .collect();
    let repeated_runs = runs_by_alert.values().filter(|runs| runs.len() > 1).count();
    let failed_runs: Vec<&Value> = runs
        .iter()
        .filter(|run| run["status"] != "succeeded")
        .collect();

    let server = tickets.log.lock().unwrap();
    let keys_by_alert = server.keys_by_alert();
    let duplicated = keys_by_alert.values().filter(|keys| keys.len() > 1).count();
    let unauthorized = server.requests.iter().filter(|r| !r.authorized).count();
    let retried_keys = {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for request in &server.requests {
            if let Some(key) = &request.idempotency_key {
                *counts.entry(key).or_default() += 1;
            }
        }
        counts.values().filter(|count| **count > 1).count()
    };
    // Each run's ticket step used the key under which the ticket exists.
    let mut mismatched = 0;
    for run in &runs {
        let ticket = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .rfind(|step| step["id"] == "ticket")
            .expect("every run has a ticket step");
        let key = ticket["idempotency_key"].as_str().unwrap();
        let alert = run["alert_id"].as_str().unwrap();
        if keys_by_alert.get(alert) != Some(&BTreeSet::from([key.to_string()])) {
            mismatched += 1;
        }
    }
    eprintln!(
        "crash test: {cycles} cycles, {} alerts acknowledged, {} lost, {} runs, {} duplicated side effects, {} requests to the ticketing API, {} keys sent more than once, {} tickets",
        acknowledged.len(),
        lost.len(),
        runs.len(),
        duplicated,
        server.requests.len(),
        retried_keys,
        server.tickets.len(),
    );
    drop(server);
    daemon.stop();

    assert!(lost.is_empty(), "acknowledged alerts in no case: {lost:?}");
    assert!(
        without_run.is_empty(),
        "alerts without a run: {without_run:?}"
    );
    assert_eq!(repeated_runs, 0, "alerts with more than one run");
    assert!(
        failed_runs.is_empty(),
        "runs that did not succeed: {failed_runs:#?}"
    );
    assert_eq!(duplicated, 0, "alerts with a ticket opened twice");
    assert_eq!(mismatched, 0, "runs whose ticket key is not the server's");
    assert_eq!(unauthorized, 0, "requests without the bearer token");

    let verify = palisade(&config, &["audit", "verify"]);
    assert!(
        verify.status.success(),
        "audit verify failed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Default policy of a step with side effects: no `on_interrupt`, so an
/// interrupted ticket step parks the run.
const PARKING_PLAYBOOK: &str = r#"
name: ticket-park
trigger:
  source: wazuh
steps:
  - id: ticket
    uses: ticketing.open-ticket
    with:
      title: "{{ alert.rule.name }}"
      alert_id: "{{ alert.id }}"
  - id: after
    uses: noop.echo
    with:
      ticket: "{{ steps.ticket.ticket_id }}"
"#;

/// Starts a daemon, posts one alert whose ticket request never gets an
/// answer, kills the daemon while the step is in flight, restarts it and
/// returns it with the id of the run, which must be parked.
async fn park_one_run(config: &Path, tickets: &TicketServer, n: u64) -> (Daemon, String) {
    let daemon = Daemon::start_logged(config, &config.with_file_name("daemon.log"));
    let before = tickets.requests().len();
    let (status, _) = daemon.post_alerts(wazuh_alert(n)).await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tickets.requests().len() == before {
        assert!(Instant::now() < deadline, "the ticket request never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.kill();

    let daemon = Daemon::start_logged(config, &config.with_file_name("daemon.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = daemon.get("/v1/runs").await;
        if let Some(run) = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|run| run["status"] == "parked")
        {
            let error = run["error"]["message"].as_str().unwrap();
            assert!(error.contains("\"ticket\""), "{error}");
            assert!(error.contains("retry"), "{error}");
            return (daemon, run["id"].as_str().unwrap().to_string());
        }
        assert!(Instant::now() < deadline, "no run was parked: {runs:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_side_effect_parks_until_a_person_decides() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour {
        hang_first: 1,
        ..Behaviour::default()
    })
    .await;
    let playbooks = write_playbook(dir.path(), PARKING_PLAYBOOK);
    let config = write_ticketing_config(dir.path(), &playbooks, &tickets.origin());

    let (daemon, run_id) = park_one_run(&config, &tickets, 1).await;
    // Parked means the plugin was not called again on its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tickets.requests().len(), 1);

    // A decision on an unknown run or with an unknown name is refused.
    let client = daemon.client();
    let response = client
        .post(format!("{}/v1/runs/R99999999/resume", daemon.base))
        .header("content-type", "application/json")
        .body(serde_json::json!({"decision": "retry"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let response = client
        .post(format!("{}/v1/runs/{run_id}/resume", daemon.base))
        .header("content-type", "application/json")
        .body(serde_json::json!({"decision": "maybe"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("retry, skip, fail"));

    // The decision goes through the daemon with alice's token.
    let alice = daemon.create_token("alice", "analyst").await;
    let output = palisade_with_token(
        &config,
        &[
            "resume",
            &run_id,
            "--decision",
            "retry",
            "--as",
            "alice",
            "--server",
            &daemon.base,
            "--json",
        ],
        &alice,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let requests = tickets.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].idempotency_key, requests[1].idempotency_key,
        "the retry reuses the key"
    );
    assert_eq!(
        run["steps"][0]["idempotency_key"],
        requests[0].idempotency_key.clone().unwrap().as_str()
    );
    assert_eq!(run["steps"][1]["output"]["ticket"], "T-1");

    // A second decision on the finished run conflicts.
    let response = client
        .post(format!("{}/v1/runs/{run_id}/resume", daemon.base))
        .header("content-type", "application/json")
        .body(serde_json::json!({"decision": "retry"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);

    let case_id = run["case_id"].as_str().unwrap();
    let case = daemon.get(&format!("/v1/cases/{case_id}")).await;
    let kinds: Vec<&str> = case["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"run_parked"), "{kinds:?}");
    let decided = case["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["kind"] == "run_decided")
        .unwrap();
    assert!(
        decided["detail"]
            .as_str()
            .unwrap()
            .contains("alice chose retry")
    );
    daemon.stop();

    // Skip: the step is recorded as skipped and the run goes on without it.
    tickets.set_behaviour(Behaviour {
        hang_first: 3,
        ..Behaviour::default()
    });
    let (daemon, run_id) = park_one_run(&config, &tickets, 2).await;
    daemon.stop();
    let output = palisade(
        &config,
        &["resume", &run_id, "--decision", "skip", "--json"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["status"], "skipped");
    assert_eq!(run["steps"][0]["error"]["kind"], "skipped_by_operator");
    assert_eq!(run["steps"][1]["status"], "succeeded");
    assert_eq!(tickets.requests().len(), 3, "skip sends nothing");
}

/// The ticket step fails once with 503 and retries after a stored delay.
const RETRY_PLAYBOOK: &str = r#"
name: ticket-retry
trigger:
  source: wazuh
steps:
  - id: ticket
    uses: ticketing.open-ticket
    retry:
      attempts: 3
      backoff: 3s
      jitter: false
    with:
      title: "{{ alert.rule.name }}"
      alert_id: "{{ alert.id }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_deadline_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour {
        fail_first: 1,
        ..Behaviour::default()
    })
    .await;
    let playbooks = write_playbook(dir.path(), RETRY_PLAYBOOK);
    let config = write_ticketing_config(dir.path(), &playbooks, &tickets.origin());
    let log = dir.path().join("daemon.log");

    let daemon = Daemon::start_logged(&config, &log);
    let (status, _) = daemon.post_alerts(wazuh_alert(1)).await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let runs = daemon.get("/v1/runs").await;
        if let Some(run) = runs.as_array().unwrap().first()
            && run["status"] == "waiting"
        {
            break run.clone();
        }
        assert!(Instant::now() < deadline, "the run never waited: {runs:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    daemon.kill();
    let wake_at = waiting["wake_at"].as_str().unwrap().to_string();
    assert_eq!(
        waiting["steps"][0]["retry_at"],
        wake_at.as_str(),
        "{waiting:#}"
    );
    assert_eq!(waiting["steps"][0]["error"]["kind"], "upstream");

    // The restarted daemon keeps the stored deadline rather than starting
    // the delay again, and retries once it has passed.
    let daemon = Daemon::start_logged(&config, &log);
    let run_id = waiting["id"].as_str().unwrap();
    let still = daemon.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(still["wake_at"], wake_at.as_str());
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let run = daemon.get(&format!("/v1/runs/{run_id}")).await;
        if run["status"] == "succeeded" {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished: {run:#}\ndaemon log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    daemon.stop();

    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{run:#}");
    assert_eq!(steps[1]["attempt"], 2);
    assert_eq!(steps[0]["idempotency_key"], steps[1]["idempotency_key"]);
    let retried: chrono::DateTime<chrono::Utc> =
        steps[1]["started_at"].as_str().unwrap().parse().unwrap();
    let due: chrono::DateTime<chrono::Utc> = wake_at.parse().unwrap();
    assert!(retried >= due, "retried at {retried}, before {due}");
    let requests = tickets.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].idempotency_key, requests[1].idempotency_key);
}
