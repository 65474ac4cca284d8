//! Playbook control flow on real plugins: needed steps and joins, parallel
//! branches, `for_each` with a concurrency limit, step timeouts, handlers
//! and `on_error`. Failures come from the ticketing plugin talking to a
//! stand-in on 127.0.0.1 that fails, hangs, or is not configured.

mod support;

use std::path::Path;
use std::time::Duration;

use palisade::config::Config;
use palisade::host::{self, Host};
use palisade_model::{RunRecord, RunStatus, StepRecord, StepStatus, parse_alerts};
use palisade_store::Store;
use serde_json::json;
use support::ticketing::{Behaviour, start_ticket_server, write_ticketing_config};

const ALERT: &str = r#"{"timestamp":"2026-12-04T10:00:00.000+0000","rule":{"level":7,"id":"5710","description":"sshd: attempt to login using a non-existent user"},"agent":{"id":"001","name":"web-01","ip":"10.0.0.5"},"data":{"srcip":"198.51.100.7"},"full_log":"Invalid user admin from 198.51.100.7 port 22"}"#;

/// Builds a host whose only playbook is `playbook`, with the ticketing
/// plugin granted `origin`.
async fn build(dir: &Path, playbook: &str, origin: &str) -> Host {
    let playbooks = dir.join("playbooks");
    std::fs::create_dir_all(&playbooks).unwrap();
    std::fs::write(playbooks.join("flow.yaml"), playbook).unwrap();
    let config = Config::load(Some(&write_ticketing_config(dir, &playbooks, origin))).unwrap();
    host::build(&config, None).await.unwrap()
}

/// Ingests the test alert and returns its one run.
async fn run_once(host: &Host) -> RunRecord {
    let alert = parse_alerts(ALERT).pop().unwrap().unwrap();
    let report = host.engine.ingest(&alert).await.unwrap();
    assert_eq!(report.runs.len(), 1, "{:?}", report.runs);
    host.store.run(&report.runs[0].0).unwrap().unwrap()
}

fn record<'r>(run: &'r RunRecord, id: &str) -> &'r StepRecord {
    run.steps
        .iter()
        .rfind(|step| step.id == id && step.handles.is_none())
        .unwrap_or_else(|| panic!("no record of {id}: {:#?}", run.steps))
}

fn position(run: &RunRecord, id: &str) -> usize {
    run.steps
        .iter()
        .position(|step| step.id == id)
        .unwrap_or_else(|| panic!("no record of {id}"))
}

#[tokio::test]
async fn branches_join_after_both_end() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: start
    uses: noop.echo
    with: { ip: "{{ alert.raw.data.srcip }}" }
  - id: left
    needs: [start]
    uses: noop.echo
    with: { side: left, ip: "{{ steps.start.ip }}" }
  - id: right
    needs: [start]
    uses: noop.echo
    with: { side: right }
  - id: both
    needs: [left, right]
    uses: noop.echo
    with: { left: "{{ steps.left.side }}", right: "{{ steps.right.side }}" }
"#,
        &tickets.origin(),
    )
    .await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        record(&run, "both").output,
        Some(json!({"left": "left", "right": "right"}))
    );
    assert_eq!(record(&run, "left").input["ip"], "198.51.100.7");
    assert!(position(&run, "both") > position(&run, "left"));
    assert!(position(&run, "both") > position(&run, "right"));
}

#[tokio::test]
async fn join_any_takes_the_branch_that_ran() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: start
    uses: noop.echo
    with: { severity: "{{ alert.severity }}" }
  - id: high
    needs: [start]
    if: "steps.start.severity == 'high'"
    uses: noop.echo
    with: { path: high }
  - id: other
    needs: [start]
    if: "steps.start.severity != 'high'"
    uses: noop.echo
    with: { path: other }
  - id: merge
    needs: [high, other]
    join: any
    uses: noop.echo
    with: { path: "{{ steps.high.path or steps.other.path }}" }
  - id: both
    needs: [high, other]
    join: 2
    uses: noop.echo
"#,
        &tickets.origin(),
    )
    .await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(record(&run, "high").status, StepStatus::Skipped);
    assert_eq!(record(&run, "merge").output, Some(json!({"path": "other"})));
    // Only one of the two branches ran, so `join: 2` cannot be met.
    assert!(
        run.steps.iter().all(|step| step.id != "both"),
        "{:#?}",
        run.steps
    );
}

#[tokio::test]
async fn for_each_runs_every_item_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: list
    uses: noop.echo
    with: { items: [a, b, c, d, e] }
  - id: each
    for_each: "steps.list['items']"
    concurrency: 2
    if: "item != 'c'"
    uses: noop.echo
    with: { value: "{{ item }}" }
  - id: after
    uses: noop.echo
    with: { all: "{{ steps.each }}" }
"#,
        &tickets.origin(),
    )
    .await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    let items: Vec<&StepRecord> = run.steps.iter().filter(|s| s.id == "each").collect();
    assert_eq!(items.len(), 5);
    let mut positions: Vec<u32> = items.iter().map(|s| s.item.unwrap()).collect();
    positions.sort();
    assert_eq!(positions, [0, 1, 2, 3, 4]);
    assert_eq!(
        record(&run, "after").output,
        Some(json!({"all": [
            {"value": "a"}, {"value": "b"}, null, {"value": "d"}, {"value": "e"}
        ]}))
    );
    // Each item has its own idempotency key.
    let mut keys: Vec<&str> = items
        .iter()
        .filter_map(|s| s.idempotency_key.as_deref())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 5);
}

#[tokio::test]
async fn for_each_needs_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: each
    for_each: "alert.rule"
    uses: noop.echo
"#,
        &tickets.origin(),
    )
    .await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = record(&run, "each").error.clone().unwrap();
    assert_eq!(error.kind, "expression");
    assert!(error.message.contains("not a list"), "{}", error.message);
}

#[tokio::test]
async fn timeout_fails_the_step_and_handler_runs() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour {
        hang_first: 1,
        ..Behaviour::default()
    })
    .await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: ticket
    uses: ticketing.open-ticket
    timeout: 300ms
    handler: report
    on_error: continue
    with: { title: "{{ alert.rule.name }}", alert_id: "{{ alert.id }}" }
  - id: after
    uses: noop.echo
    with: { ticket: "{{ steps.ticket.ticket_id }}" }
handlers:
  - id: report
    uses: noop.echo
    with: { failed: "{{ error.step }}", kind: "{{ error.kind }}" }
"#,
        &tickets.origin(),
    )
    .await;
    let started = std::time::Instant::now();
    let run = run_once(&host).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    let ticket = record(&run, "ticket");
    assert_eq!(ticket.status, StepStatus::Failed);
    assert_eq!(ticket.error.as_ref().unwrap().kind, "timeout");
    let handler = run
        .steps
        .iter()
        .find(|step| step.handles.as_deref() == Some("ticket"))
        .expect("the handler ran");
    assert_eq!(handler.id, "report");
    assert_eq!(
        handler.output,
        Some(json!({"failed": "ticket", "kind": "timeout"}))
    );
    assert_eq!(record(&run, "after").output, Some(json!({"ticket": null})));
}

#[tokio::test]
async fn failure_with_handler_still_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour {
        fail_first: 10,
        ..Behaviour::default()
    })
    .await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: ticket
    uses: ticketing.open-ticket
    handler: report
    with: { title: "x", alert_id: "{{ alert.id }}" }
  - id: after
    uses: noop.echo
handlers:
  - id: report
    uses: noop.echo
    with: { message: "{{ error.message }}" }
"#,
        &tickets.origin(),
    )
    .await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:#?}");
    assert_eq!(run.error.as_ref().unwrap().kind, "upstream");
    let handler = run
        .steps
        .iter()
        .find(|step| step.handles.as_deref() == Some("ticket"))
        .expect("the handler ran");
    let message = handler.output.as_ref().unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("503"), "{message}");
    assert!(run.steps.iter().all(|step| step.id != "after"));
    assert_eq!(tickets.requests().len(), 1);
}

#[tokio::test]
async fn parallel_branch_failure_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // An empty title fails in the plugin before any request is sent.
    let tickets = start_ticket_server(Behaviour::default()).await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: start
    uses: noop.echo
  - id: good
    needs: [start]
    uses: noop.echo
  - id: bad
    needs: [start]
    uses: ticketing.open-ticket
    with: { title: "" }
  - id: after
    needs: [good, bad]
    uses: noop.echo
"#,
        &tickets.origin(),
    )
    .await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:#?}");
    assert_eq!(
        record(&run, "bad").error.as_ref().unwrap().kind,
        "bad_input"
    );
    assert_eq!(record(&run, "good").status, StepStatus::Succeeded);
    assert!(run.steps.iter().all(|step| step.id != "after"));
    assert!(tickets.requests().is_empty());
}

#[test]
fn graph_errors_name_the_step() {
    let base = |steps: &str| format!("name: flow\ntrigger: {{ source: wazuh }}\nsteps:\n{steps}");
    let cases = [
        (
            base("  - { id: a, uses: noop.echo, needs: [b] }\n  - { id: b, uses: noop.echo }\n"),
            "not a step above it",
        ),
        (
            base("  - { id: a, uses: noop.echo }\n  - { id: b, uses: noop.echo, needs: [a, a] }\n"),
            "twice",
        ),
        (
            base(
                "  - { id: a, uses: noop.echo }\n  - { id: b, uses: noop.echo, needs: [a], join: 2 }\n",
            ),
            "`join: 2`",
        ),
        (
            base(
                "  - { id: a, uses: noop.echo }\n  - { id: b, uses: noop.echo, needs: [a], join: most }\n",
            ),
            "join: most",
        ),
        (
            base(
                "  - { id: a, uses: noop.echo }\n  - { id: b, uses: noop.echo, needs: [] }\n  - { id: c, uses: noop.echo, needs: [b], with: { x: '{{ steps.a }}' } }\n",
            ),
            "`steps.a`",
        ),
        (
            base("  - { id: a, uses: noop.echo, handler: missing }\n"),
            "handler \"missing\"",
        ),
        (
            base("  - { id: a, uses: noop.echo, for_each: '[1]', concurrency: 0 }\n"),
            "concurrency: 0",
        ),
        (
            base("  - { id: a, uses: noop.echo, timeout: soon }\n"),
            "not a duration",
        ),
    ];
    for (text, expected) in cases {
        let error = palisade_engine::Playbook::parse(&text, Path::new("flow.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
    }
}

#[tokio::test]
async fn interrupted_item_resumes_alone() {
    // Every item but one finished before the stop: the restart runs only
    // that one again.
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let playbook = r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: each
    for_each: "[1, 2, 3]"
    uses: noop.echo
    with: { n: "{{ item }}" }
"#;
    let host = build(dir.path(), playbook, &tickets.origin()).await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    // Rewrite the journal as a stop in the middle of item 1 would leave it.
    let mut interrupted = run.clone();
    interrupted.status = RunStatus::Running;
    interrupted.finished_at = None;
    let index = interrupted
        .steps
        .iter()
        .position(|s| s.item == Some(1))
        .unwrap();
    interrupted.steps[index].status = StepStatus::Started;
    interrupted.steps[index].output = None;
    host.store.put_run(&interrupted).unwrap();
    host.store
        .put_step(&run.id, index, &interrupted.steps[index])
        .unwrap();

    let resumed = host.engine.resume_run(&run.id).await.unwrap();
    assert_eq!(resumed.status, RunStatus::Succeeded, "{resumed:#?}");
    assert_eq!(resumed.steps.len(), 3, "{:#?}", resumed.steps);
    assert_eq!(resumed.steps[index].output, Some(json!({"n": 2})));
    assert_eq!(
        resumed.steps[index].idempotency_key, run.steps[index].idempotency_key,
        "the retried item keeps its key"
    );
}
