//! Key correlation on real alerts through the engine and a sled database:
//! the events of one Suricata flow share a case, as do the Wazuh alerts of
//! one agent, while unrelated traffic of one busy internal host does not.
//! An alert outside the window, or after its case was resolved, opens a
//! new case.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use chrono::Utc;
use palisade::config::Config;
use palisade::host::{self, Host};
use palisade_engine::{CaseEdit, CaseService};
use palisade_model::{Alert, Case, Severity, parse_alerts};
use palisade_store::Store;
use serde_json::Value;
use support::{repo_root, shared_data, write_config};

/// Builds the host with the default correlation window of one hour.
async fn correlating_host(dir: &Path) -> Host {
    let path = write_config(dir, None);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("window = \"0\"", "window = \"1h\"");
    assert!(text.contains("window = \"1h\""), "{text}");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(Some(&path)).unwrap();
    host::build(&config, None).await.unwrap()
}

fn alerts_in(text: &str) -> Vec<Alert> {
    parse_alerts(text)
        .into_iter()
        .map(|alert| alert.unwrap())
        .collect()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_root().join(relative)).unwrap()
}

/// Ingests `alerts` in order and returns the case id of each.
async fn ingest(host: &Host, alerts: &[Alert]) -> Vec<String> {
    let mut case_ids = Vec::new();
    for alert in alerts {
        case_ids.push(host.engine.ingest(alert).await.unwrap().case_id);
    }
    case_ids
}

fn case(host: &Host, id: &str) -> Case {
    host.store.case(id).unwrap().unwrap()
}

/// Returns a copy of the Wazuh alert `raw` with its timestamp replaced.
fn wazuh_at(raw: &Value, timestamp: &str) -> Alert {
    let mut raw = raw.clone();
    raw["timestamp"] = Value::String(timestamp.into());
    Alert::from_raw(raw).unwrap()
}

#[tokio::test]
async fn suricata_flow_events_share_one_case() {
    let dir = tempfile::tempdir().unwrap();
    let host = correlating_host(dir.path()).await;
    let alerts = alerts_in(&read("tests/fixtures/suricata/one-flow.eve.json"));
    assert_eq!(alerts.len(), 6);
    let case_ids = ingest(&host, &alerts).await;

    // The http, alert, fileinfo and flow events of flow 1361552071523019.
    let flow_case = &case_ids[0];
    for (index, event) in ["http", "alert", "fileinfo", "flow"].iter().enumerate() {
        assert_eq!(&case_ids[index], flow_case, "{event} event");
    }
    let flow = case(&host, flow_case);
    assert_eq!(flow.alert_ids.len(), 4);
    // The http event opened the case; the alert it triggered names it.
    assert_eq!(flow.rule.id, "2018959");
    assert_eq!(
        flow.title,
        "ET POLICY PE EXE or DLL Windows file download HTTP"
    );
    assert_eq!(flow.severity, Severity::High);
    assert_eq!(flow.run_ids.len(), 1, "only the alert event starts a run");

    // The same internal client, other flows: cases of their own.
    assert_ne!(&case_ids[4], flow_case, "dns query of another flow");
    assert_ne!(&case_ids[5], flow_case, "SMB alert of another flow");
    assert_ne!(case_ids[4], case_ids[5]);
    assert_eq!(host.store.cases().unwrap().len(), 3);
}

#[tokio::test]
#[ignore = "reads ../shared/data; `cargo xtask test` runs it when that folder is present"]
async fn shared_suricata_flow_joins_and_busy_host_does_not() {
    let path = shared_data("suricata/elastic-beats_eve-small.log")
        .expect("../shared/data is beside the repository");
    let text = std::fs::read_to_string(path).unwrap();

    // As recorded, every event belongs to another flow, and most have the
    // same internal host, 192.168.86.85, at one end. None may merge.
    let dir = tempfile::tempdir().unwrap();
    let host = correlating_host(dir.path()).await;
    let alerts = alerts_in(&text);
    assert_eq!(alerts.len(), 8);
    let case_ids = ingest(&host, &alerts).await;
    let distinct: BTreeSet<&String> = case_ids.iter().collect();
    assert_eq!(distinct.len(), 8, "{case_ids:?}");

    // The sample has no two events of one flow, so the http, fileinfo and
    // flow events are given the flow id of its alert event here.
    let raw: Vec<Value> = alerts.iter().map(|alert| alert.raw.clone()).collect();
    let alert = raw.iter().find(|r| r["event_type"] == "alert").unwrap();
    let flow_id = alert["flow_id"].clone();
    let mut one_flow = vec![Alert::from_raw(alert.clone()).unwrap()];
    for event_type in ["http", "fileinfo", "flow"] {
        let mut event = raw
            .iter()
            .find(|r| r["event_type"] == event_type)
            .unwrap()
            .clone();
        event["flow_id"] = flow_id.clone();
        one_flow.push(Alert::from_raw(event).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let host = correlating_host(dir.path()).await;
    let case_ids = ingest(&host, &one_flow).await;
    assert!(case_ids.iter().all(|id| *id == case_ids[0]), "{case_ids:?}");
    let joined = case(&host, &case_ids[0]);
    assert_eq!(joined.alert_ids.len(), 4);
    assert_eq!(joined.rule.id, "2024833");
}

/// Checks the grouping of the Wazuh documentation samples. The three
/// alerts of agent 010 share a case. The manager's own integration errors
/// (agent 000) stay apart, and so does the Windows agent, although it
/// has the same address, 10.0.2.15.
async fn check_wazuh_grouping(jsonl: &str, defender: &str) {
    let dir = tempfile::tempdir().unwrap();
    let host = correlating_host(dir.path()).await;
    let mut alerts = alerts_in(jsonl);
    alerts.extend(alerts_in(defender));
    let rules: Vec<&str> = alerts.iter().map(|a| a.rule.id.as_str()).collect();
    assert_eq!(rules, ["554", "87102", "87101", "87104", "87105", "62123"]);
    let case_ids = ingest(&host, &alerts).await;

    let agent_case = &case_ids[0];
    assert_eq!(&case_ids[3], agent_case, "87104 of agent 010");
    assert_eq!(&case_ids[4], agent_case, "87105 of agent 010");
    let agent = case(&host, agent_case);
    assert_eq!(agent.alert_ids.len(), 3);
    assert_eq!(agent.rule.id, "87105", "named after the EICAR detection");
    assert!(agent.severity >= Severity::High);

    for (index, what) in [(1, "87102"), (2, "87101"), (5, "62123")] {
        assert_ne!(&case_ids[index], agent_case, "{what}");
    }
    assert_ne!(case_ids[1], case_ids[2], "agent 000 has no agent key");
    assert_eq!(host.store.cases().unwrap().len(), 4);
}

#[tokio::test]
async fn wazuh_alerts_of_one_agent_share_one_case() {
    check_wazuh_grouping(
        &read("samples/wazuh/fim_virustotal_alerts.jsonl"),
        &read("samples/wazuh/windows_defender_1116_alert.json"),
    )
    .await;
}

#[tokio::test]
#[ignore = "reads ../shared/data; `cargo xtask test` runs it when that folder is present"]
async fn shared_wazuh_alerts_of_one_agent_share_one_case() {
    let jsonl = shared_data("wazuh_ossec/wazuh_docs_fim_virustotal_alerts.jsonl")
        .expect("../shared/data is beside the repository");
    let defender = shared_data("wazuh_ossec/wazuh_docs_windows_defender_1116_alert.json")
        .expect("../shared/data is beside the repository");
    check_wazuh_grouping(
        &std::fs::read_to_string(jsonl).unwrap(),
        &std::fs::read_to_string(defender).unwrap(),
    )
    .await;
}

#[tokio::test]
async fn alert_outside_window_opens_a_new_case() {
    let dir = tempfile::tempdir().unwrap();
    let host = correlating_host(dir.path()).await;
    let raw: Vec<Value> = read("samples/wazuh/fim_virustotal_alerts.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (fim, eicar) = (&raw[0], &raw[4]);

    // The file-integrity alert at 19:17:42 (+02:00), then the EICAR
    // detection of the same agent at 20:17:42, exactly one hour later.
    let first = ingest(&host, &[wazuh_at(fim, "2022-11-17T19:17:42.694+0200")]).await;
    let within = ingest(&host, &[wazuh_at(eicar, "2022-11-17T20:17:42.694+0200")]).await;
    assert_eq!(within, first, "one hour apart is within the window");

    // The window slides with the agent's latest alert: 21:17:43 is just
    // over an hour after 20:17:42.
    let no_positives = &raw[3];
    let late = ingest(
        &host,
        &[wazuh_at(no_positives, "2022-11-17T21:17:43.000+0200")],
    )
    .await;
    assert_ne!(late, first);
    let late_case = case(&host, &late[0]);
    assert_eq!(late_case.alert_ids.len(), 1);
    assert_eq!(case(&host, &first[0]).alert_ids.len(), 2);
}

#[tokio::test]
async fn resolved_case_takes_no_new_alert() {
    let dir = tempfile::tempdir().unwrap();
    let host = correlating_host(dir.path()).await;
    let alerts = alerts_in(&read("samples/wazuh/fim_virustotal_alerts.jsonl"));
    let (fim, no_positives, eicar) = (&alerts[0], &alerts[3], &alerts[4]);
    let first = host.engine.ingest(fim).await.unwrap().case_id;

    let service = CaseService::new(host.store.clone(), Default::default());
    let resolve = CaseEdit {
        status: Some("resolved".into()),
        ..CaseEdit::default()
    };
    service.update(&first, &resolve, "ana", Utc::now()).unwrap();

    // Same agent, minutes later: a new case, which then takes the next
    // alert of the agent.
    let second = host.engine.ingest(no_positives).await.unwrap();
    assert!(second.case_is_new);
    assert_ne!(second.case_id, first);
    let third = host.engine.ingest(eicar).await.unwrap();
    assert_eq!(third.case_id, second.case_id);

    let resolved = case(&host, &first);
    assert_eq!(resolved.alert_ids.len(), 1);
    assert_eq!(resolved.alert_ids[0], fim.id);
}
