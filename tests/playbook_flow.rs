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
    build_all(dir, &[playbook], origin).await.unwrap()
}

/// Builds a host with every playbook of `playbooks`.
async fn build_all(dir: &Path, playbooks: &[&str], origin: &str) -> anyhow::Result<Host> {
    let folder = dir.join("playbooks");
    std::fs::create_dir_all(&folder).unwrap();
    for (position, text) in playbooks.iter().enumerate() {
        std::fs::write(folder.join(format!("flow-{position}.yaml")), text).unwrap();
    }
    let config = Config::load(Some(&write_ticketing_config(dir, &folder, origin))).unwrap();
    host::build(&config, None).await
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

/// Enriches one observable; called by the main playbook once per item.
const ENRICH: &str = r#"
name: enrich-observable
inputs:
  observable: { required: true }
  label: { default: "seen" }
steps:
  - id: describe
    uses: noop.echo
    with:
      value: "{{ inputs.observable.value }}"
      label: "{{ inputs.label }}"
outputs:
  summary: "{{ steps.describe.label }} {{ steps.describe.value }}"
"#;

const MAIN: &str = r#"
name: main-triage
trigger: { source: wazuh }
steps:
  - id: extract
    uses: ioc-extractor.extract
    with: { document: "{{ alert.raw }}" }
  - id: enrich
    for_each: "steps.extract.observables | rejectattr('internal') | list"
    concurrency: 2
    playbook: enrich-observable
    with: { observable: "{{ item }}" }
  - id: report
    uses: noop.echo
    with: { summaries: "{{ steps.enrich | map(attribute='summary') | list }}" }
"#;

#[tokio::test]
async fn sub_playbook_runs_per_item_and_returns_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let host = build_all(dir.path(), &[MAIN, ENRICH], &tickets.origin())
        .await
        .unwrap();
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        record(&run, "report").output,
        Some(json!({"summaries": ["seen 198.51.100.7"]}))
    );
    let call = record(&run, "enrich");
    assert_eq!(call.uses, "playbook:enrich-observable");
    let child_id = call.child_run.clone().expect("the step names its run");
    let child = host.store.run(&child_id).unwrap().unwrap();
    assert_eq!(child.playbook, "enrich-observable");
    assert_eq!(child.status, RunStatus::Succeeded);
    assert_eq!(child.inputs["label"], "seen", "the default applies");
    assert_eq!(child.parent.as_ref().unwrap().run_id, run.id);
    assert_eq!(child.parent.as_ref().unwrap().depth, 1);
    assert_eq!(child.outputs, Some(json!({"summary": "seen 198.51.100.7"})));
    // The sub-playbook has no trigger, so the alert started only one run.
    assert_eq!(
        host.store
            .run_of_alert(&run.alert_id, "enrich-observable")
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn sub_playbook_calls_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let calls = |name: &str, calls: &str| {
        format!("name: {name}\nsteps:\n  - {{ id: call, playbook: {calls} }}\n")
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![calls("a", "b"), calls("b", "c"), calls("c", "a")],
            "a -> b -> c -> a",
        ),
        (vec![calls("a", "a")], "calls itself"),
        (
            vec![calls("a", "missing")],
            "\"missing\", which is not loaded",
        ),
        (
            vec![
                MAIN.replace("observable: \"{{ item }}\"", "colour: red"),
                ENRICH.to_string(),
            ],
            "has no input \"colour\"",
        ),
        (
            vec![
                MAIN.replace("observable: \"{{ item }}\"", "label: x"),
                ENRICH.to_string(),
            ],
            "needs input \"observable\"",
        ),
        (
            vec![ENRICH.replace(
                "name: enrich-observable",
                "name: e\ntrigger: { source: wazuh }",
            )],
            "input \"observable\" is required",
        ),
    ];
    for (position, (playbooks, expected)) in cases.into_iter().enumerate() {
        let case_dir = dir.path().join(position.to_string());
        std::fs::create_dir_all(&case_dir).unwrap();
        let texts: Vec<&str> = playbooks.iter().map(String::as_str).collect();
        let error = match build_all(&case_dir, &texts, &tickets.origin()).await {
            Ok(_) => panic!("case {position} loaded; expected {expected:?}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
    }
}

#[tokio::test]
async fn sub_playbook_failure_reaches_the_calling_step() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour {
        fail_first: 10,
        ..Behaviour::default()
    })
    .await;
    let child = r#"
name: open-ticket
inputs:
  title: { required: true }
steps:
  - id: ticket
    uses: ticketing.open-ticket
    with: { title: "{{ inputs.title }}" }
outputs:
  id: "{{ steps.ticket.ticket_id }}"
"#;
    let parent = r#"
name: parent
trigger: { source: wazuh }
steps:
  - id: call
    playbook: open-ticket
    on_error: continue
    with: { title: "{{ alert.rule.name }}" }
  - id: after
    uses: noop.echo
    with: { ticket: "{{ steps.call.id }}" }
"#;
    let host = build_all(dir.path(), &[parent, child], &tickets.origin())
        .await
        .unwrap();
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    let call = record(&run, "call");
    assert_eq!(call.status, StepStatus::Failed);
    let error = call.error.as_ref().unwrap();
    assert_eq!(error.kind, "upstream");
    assert!(
        error.message.contains("playbook \"open-ticket\""),
        "{}",
        error.message
    );
    assert_eq!(record(&run, "after").output, Some(json!({"ticket": null})));
    let child = host
        .store
        .run(call.child_run.as_ref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(child.status, RunStatus::Failed);
}

#[tokio::test]
async fn waiting_sub_playbook_makes_the_caller_wait() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour {
        fail_first: 1,
        ..Behaviour::default()
    })
    .await;
    let child = r#"
name: open-ticket
steps:
  - id: ticket
    uses: ticketing.open-ticket
    retry: { attempts: 2, backoff: 500ms, jitter: false }
    with: { title: "x", alert_id: "a" }
outputs:
  id: "{{ steps.ticket.ticket_id }}"
"#;
    let parent = r#"
name: parent
trigger: { source: wazuh }
steps:
  - id: call
    playbook: open-ticket
  - id: after
    uses: noop.echo
    with: { ticket: "{{ steps.call.id }}" }
"#;
    let host = build_all(dir.path(), &[parent, child], &tickets.origin())
        .await
        .unwrap();
    let run = run_once(&host).await;
    let child_id = record(&run, "call").child_run.clone().unwrap();
    let child = host.store.run(&child_id).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Waiting, "{child:#?}");
    let wake_at = run.wake_at.unwrap();
    let child_id = record(&run, "call").child_run.clone().unwrap();
    let child = host.store.run(&child_id).unwrap().unwrap();
    assert_eq!(child.status, RunStatus::Waiting);
    assert_eq!(child.wake_at, Some(wake_at));
    // Only the top-level run has a timer.
    let due = host.store.due_runs(wake_at, 10).unwrap();
    assert_eq!(
        due.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        [run.id.as_str()]
    );

    tokio::time::sleep((wake_at - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    let run = host.engine.resume_run(&run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(record(&run, "after").output, Some(json!({"ticket": "T-1"})));
    assert_eq!(tickets.requests().len(), 2);
}

#[tokio::test]
async fn step_whose_needs_all_skipped_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - { id: start, uses: noop.echo }
  - { id: ask, needs: [start], if: "false", uses: noop.echo }
  - { id: act, needs: [ask], uses: noop.echo }
  - { id: after, uses: noop.echo }
"#,
        &tickets.origin(),
    )
    .await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert!(
        run.steps.iter().all(|step| step.id != "act"),
        "a step must not act on a need that never ran: {:#?}",
        run.steps
    );
    // A plain list passes over the skipped step.
    assert_eq!(record(&run, "after").status, StepStatus::Succeeded);
}

#[tokio::test]
async fn answer_after_the_deadline_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour::default()).await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: ask
    approval: { question: "Go?", timeout: 500ms, on_timeout: reject }
  - { id: act, if: "steps.ask.approved", uses: noop.echo }
"#,
        &tickets.origin(),
    )
    .await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Waiting);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let answer = palisade_engine::Answer {
        approve: true,
        response: serde_json::Value::Null,
        actor: "lead".into(),
    };
    let error = host
        .engine
        .answer_approval(&run.id, "ask", None, answer)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("closed at"), "{error}");
    // The timeout decision applies when the run continues.
    let run = host.engine.resume_run(&run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        record(&run, "ask").output.as_ref().unwrap()["timed_out"],
        true
    );
    assert_eq!(record(&run, "act").status, StepStatus::Skipped);
}

#[tokio::test]
async fn for_each_keeps_to_its_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let tickets = start_ticket_server(Behaviour {
        delay: Duration::from_millis(100),
        ..Behaviour::default()
    })
    .await;
    let host = build(
        dir.path(),
        r#"
name: flow
trigger: { source: wazuh }
steps:
  - id: each
    for_each: "[1, 2, 3, 4, 5]"
    concurrency: 2
    uses: ticketing.open-ticket
    with: { title: "item {{ item }}", alert_id: "{{ alert.id }}" }
"#,
        &tickets.origin(),
    )
    .await;
    let run = run_once(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(tickets.requests().len(), 5);
    assert_eq!(tickets.max_in_flight(), 2, "two items at a time");
}
