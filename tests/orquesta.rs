//! StackStorm's Orquesta example workflows (`contrib/examples/actions/
//! workflows` in the st2 repository, Apache-2.0), re-expressed as Palisade
//! playbooks and run on real plugins, as tests of what the playbook
//! language can express. `core.echo` and `core.noop` become `noop.echo`, whose
//! output is its input; a shell command that fails until another task has
//! run becomes a ticket request to a stand-in on 127.0.0.1 that fails at
//! first.

mod support;

use std::path::Path;
use std::time::Duration;

use palisade::config::Config;
use palisade::host::{self, Host};
use palisade_model::{RunRecord, RunStatus, StepStatus, parse_alerts};
use palisade_store::Store;
use serde_json::{Value, json};
use support::ticketing::{Behaviour, start_ticket_server, write_ticketing_config};

const ALERT: &str = r#"{"timestamp":"2026-12-04T10:00:00.000+0000","rule":{"level":7,"id":"5710","description":"sshd: attempt to login using a non-existent user"},"agent":{"id":"001","name":"web-01","ip":"10.0.0.5"},"data":{"srcip":"198.51.100.7"}}"#;

async fn build(
    dir: &Path,
    playbooks: &[&str],
    behaviour: Behaviour,
) -> (Host, support::ticketing::TicketServer) {
    let tickets = start_ticket_server(behaviour).await;
    let folder = dir.join("playbooks");
    std::fs::create_dir_all(&folder).unwrap();
    for (position, text) in playbooks.iter().enumerate() {
        std::fs::write(folder.join(format!("{position}.yaml")), text).unwrap();
    }
    let config = write_ticketing_config(dir, &folder, &tickets.origin());
    let config = Config::load(Some(&config)).unwrap();
    (host::build(&config, None).await.unwrap(), tickets)
}

/// Ingests the alert and returns its one run as it is afterwards.
async fn start_run(host: &Host) -> RunRecord {
    let alert = parse_alerts(ALERT).pop().unwrap().unwrap();
    let report = host.engine.ingest(&alert).await.unwrap();
    assert_eq!(report.runs.len(), 1);
    host.store.run(&report.runs[0].0).unwrap().unwrap()
}

/// Ingests the alert and drives its one run until it ends, sleeping
/// through its stored retry delays.
async fn run_to_end(host: &Host) -> RunRecord {
    let mut run = start_run(host).await;
    for _ in 0..20 {
        if run.status != RunStatus::Waiting {
            break;
        }
        let wait = (run.wake_at.unwrap() - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        tokio::time::sleep(wait + Duration::from_millis(10)).await;
        run = host.engine.resume_run(&run.id).await.unwrap();
    }
    run
}

/// orquesta-join: four branches from task1 converge on task10 with
/// `join: all`, and the output gathers what each branch published.
const JOIN: &str = r#"
name: orquesta-join
trigger: { source: wazuh }
steps:
  - { id: task1, uses: noop.echo }
  - { id: task2, needs: [task1], uses: noop.echo, with: { stdout: "Fee fi" } }
  - id: task3
    needs: [task2]
    uses: noop.echo
    with: { stdout: "{{ steps.task2.stdout }} fo fum" }
  - { id: task4, needs: [task1], uses: noop.echo, with: { stdout: "I smell the blood of an English man" } }
  - { id: task5, needs: [task4], uses: noop.echo }
  - { id: task6, needs: [task1], uses: noop.echo }
  - { id: task7, needs: [task6], uses: noop.echo, with: { stdout: "Be alive, or be he dead" } }
  - { id: task8, needs: [task1], uses: noop.echo }
  - { id: task9, needs: [task8], uses: noop.echo, with: { msg4: "I'll grind his bones to make my bread" } }
  - { id: task10, needs: [task3, task5, task7, task9], join: all, uses: noop.echo }
outputs:
  messages: "{{ [steps.task3.stdout, steps.task4.stdout, steps.task7.stdout, steps.task9.msg4] }}"
"#;

#[tokio::test]
async fn join_of_four_branches() {
    let dir = tempfile::tempdir().unwrap();
    let (host, _) = build(dir.path(), &[JOIN], Behaviour::default()).await;
    let run = run_to_end(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        run.outputs,
        Some(json!({"messages": [
            "Fee fi fo fum",
            "I smell the blood of an English man",
            "Be alive, or be he dead",
            "I'll grind his bones to make my bread"
        ]}))
    );
    let position = |id: &str| run.steps.iter().position(|s| s.id == id).unwrap();
    for branch_end in ["task3", "task5", "task7", "task9"] {
        assert!(position("task10") > position(branch_end), "{branch_end}");
    }
}

/// orquesta-with-items-concurrency: one action per member, two at a time,
/// inside a sub-playbook that takes `members` as input.
const WITH_ITEMS: &str = r#"
name: orquesta-with-items-concurrency
inputs:
  members: { required: true }
steps:
  - id: task1
    for_each: "inputs.members"
    concurrency: 2
    uses: noop.echo
    with: { stdout: "{{ item }}, resistance is futile!" }
outputs:
  items: "{{ steps.task1 | map(attribute='stdout') | list }}"
"#;

const WITH_ITEMS_CALLER: &str = r#"
name: borg
trigger: { source: wazuh }
steps:
  - id: assimilate
    playbook: orquesta-with-items-concurrency
    with: { members: [Lakshmi, Lindsay, Tomaz, Matt, Drew] }
"#;

#[tokio::test]
async fn items_with_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let (host, _) = build(
        dir.path(),
        &[WITH_ITEMS_CALLER, WITH_ITEMS],
        Behaviour::default(),
    )
    .await;
    let run = run_to_end(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        run.steps[0].output,
        Some(json!({"items": [
            "Lakshmi, resistance is futile!",
            "Lindsay, resistance is futile!",
            "Tomaz, resistance is futile!",
            "Matt, resistance is futile!",
            "Drew, resistance is futile!"
        ]}))
    );
    let child = host
        .store
        .run(run.steps[0].child_run.as_ref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(child.steps.iter().filter(|s| s.item.is_some()).count(), 5);
}

/// orquesta-task-retry: `check` fails until `create`, which runs beside
/// it, has done its work; `check` retries three times a second apart.
const RETRY: &str = r#"
name: orquesta-task-retry
trigger: { source: wazuh }
steps:
  - { id: init, uses: noop.echo }
  - id: check
    needs: [init]
    uses: ticketing.open-ticket
    retry: { attempts: 4, backoff: 1s, factor: 1, jitter: false, on: [upstream] }
    with: { title: "Do something useful here.", alert_id: "{{ alert.id }}" }
  - { id: create, needs: [init], uses: noop.echo, with: { touched: true } }
  - { id: delete, needs: [check], uses: noop.echo }
"#;

#[tokio::test]
async fn task_retry_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (host, tickets) = build(
        dir.path(),
        &[RETRY],
        Behaviour {
            fail_first: 2,
            ..Behaviour::default()
        },
    )
    .await;
    let run = run_to_end(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    let attempts: Vec<(u32, StepStatus)> = run
        .steps
        .iter()
        .filter(|s| s.id == "check")
        .map(|s| (s.attempt, s.status))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, StepStatus::Failed),
            (2, StepStatus::Failed),
            (3, StepStatus::Succeeded)
        ]
    );
    assert_eq!(tickets.requests().len(), 3);
    assert!(run.steps.iter().any(|s| s.id == "delete"));
}

/// orquesta-ask-basic: an inquiry; approval goes to `finish`, anything
/// else to `stop`, which fails the workflow.
const ASK: &str = r#"
name: orquesta-ask-basic
trigger: { source: wazuh }
steps:
  - { id: start, uses: noop.echo, with: { message: "Automation started." } }
  - id: get_approval
    approval:
      question: "Continue?"
      timeout: 1h
  - id: finish
    if: "steps.get_approval.approved"
    uses: noop.echo
    with: { message: "Automation completed." }
  - id: stop
    needs: [get_approval]
    if: "not steps.get_approval.approved"
    fail: "Automation stopped."
"#;

#[tokio::test]
async fn inquiry_approved_and_rejected() {
    for (approve, expected) in [(true, RunStatus::Succeeded), (false, RunStatus::Failed)] {
        let dir = tempfile::tempdir().unwrap();
        let (host, _) = build(dir.path(), &[ASK], Behaviour::default()).await;
        let run = start_run(&host).await;
        assert_eq!(run.status, RunStatus::Waiting, "{run:#?}");
        let answer = palisade_engine::Answer {
            approve,
            response: Value::Null,
            actor: "st2admin".into(),
        };
        let run = host
            .engine
            .answer_approval(&run.id, "get_approval", None, answer)
            .await
            .unwrap();
        assert_eq!(run.status, expected, "{run:#?}");
        let finished = run.steps.iter().find(|s| s.id == "finish").unwrap();
        if approve {
            assert_eq!(finished.status, StepStatus::Succeeded);
        } else {
            assert_eq!(finished.status, StepStatus::Skipped);
            let error = run.error.unwrap();
            assert_eq!(error.kind, "failed_by_playbook");
            assert!(
                error.message.contains("Automation stopped."),
                "{}",
                error.message
            );
        }
    }
}

/// orquesta-subworkflow calling orquesta-sequential, whose three tasks
/// build a greeting from the `name` input.
const SEQUENTIAL: &str = r#"
name: orquesta-sequential
inputs:
  name: { required: true }
steps:
  - { id: task1, uses: noop.echo, with: { stdout: "{{ inputs.name }}" } }
  - id: task2
    uses: noop.echo
    with: { stdout: "{{ steps.task1.stdout }}, All your base are belong to us!" }
  - { id: task3, uses: noop.echo, with: { stdout: "{{ steps.task2.stdout }}" } }
outputs:
  greeting: "{{ steps.task3.stdout }}"
"#;

const SUBWORKFLOW: &str = r#"
name: orquesta-subworkflow
trigger: { source: wazuh }
steps:
  - { id: start, uses: noop.echo, with: { message: Started } }
  - { id: subworkflow, playbook: orquesta-sequential, with: { name: Stanley } }
  - { id: finish, uses: noop.echo, with: { message: "Completed: {{ steps.subworkflow.greeting }}" } }
"#;

#[tokio::test]
async fn subworkflow_returns_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let (host, _) = build(dir.path(), &[SUBWORKFLOW, SEQUENTIAL], Behaviour::default()).await;
    let run = run_to_end(&host).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    let finish = run.steps.iter().find(|s| s.id == "finish").unwrap();
    assert_eq!(
        finish.output,
        Some(json!({"message": "Completed: Stanley, All your base are belong to us!"}))
    );
}

/// orquesta-error-handling-fail-manually: on failure, a remediation task
/// publishes a message and the workflow then fails.
const ERROR_HANDLING: &str = r#"
name: orquesta-error-handling-fail-manually
trigger: { source: wazuh }
steps:
  - id: task1
    uses: ticketing.open-ticket
    timeout: 2s
    handler: task3
    with: { title: "run the command", alert_id: "{{ alert.id }}" }
  - { id: task2, uses: noop.echo, with: { message: "hooray!!!" } }
handlers:
  - { id: task3, uses: noop.echo, with: { message: "$%#&@#$!!!" } }
outputs:
  message: "{{ steps.task2.message or steps.task3.message }}"
"#;

#[tokio::test]
async fn error_handler_then_fail() {
    for (behaviour, status, message) in [
        (Behaviour::default(), RunStatus::Succeeded, "hooray!!!"),
        (
            Behaviour {
                fail_first: 1,
                ..Behaviour::default()
            },
            RunStatus::Failed,
            "$%#&@#$!!!",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (host, _) = build(dir.path(), &[ERROR_HANDLING], behaviour).await;
        let run = run_to_end(&host).await;
        assert_eq!(run.status, status, "{run:#?}");
        assert_eq!(run.outputs, Some(json!({ "message": message })));
    }
}
