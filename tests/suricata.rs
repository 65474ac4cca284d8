//! The Suricata triage playbook on EVE lines. Alert events start runs and
//! become scored cases. Flow, dns and other context events are stored and
//! grouped but start no run.

mod support;

use std::path::Path;

use palisade::config::Config;
use palisade::host::{self, Host};
use palisade_model::{RunStatus, Severity, parse_alerts};
use palisade_store::Store;
use support::{shared_data, start_virustotal_replay, write_config};

/// An EVE alert line written for this test in Suricata's format, with
/// addresses from the documentation ranges. It needs no shared data.
const EVE_ALERT: &str = r#"{"timestamp":"2024-03-02T10:15:01.120044+0000","flow_id":88120456120331,"in_iface":"eth0","event_type":"alert","src_ip":"192.168.10.5","src_port":50212,"dest_ip":"198.51.100.23","dest_port":443,"proto":"TCP","alert":{"action":"allowed","gid":1,"signature_id":2027865,"rev":4,"signature":"ET INFO Observed DNS over HTTPS Domain in TLS SNI","category":"Misc activity","severity":3},"tls":{"sni":"dns.example.net","version":"TLS 1.3"},"app_proto":"tls"}"#;
const EVE_FLOW: &str = r#"{"timestamp":"2024-03-02T10:16:01.000000+0000","flow_id":88120456120331,"event_type":"flow","src_ip":"192.168.10.5","src_port":50212,"dest_ip":"198.51.100.23","dest_port":443,"proto":"TCP","flow":{"pkts_toserver":12,"pkts_toclient":10,"state":"closed"}}"#;

async fn build_host(dir: &Path, vt_origin: &str) -> Host {
    let config = Config::load(Some(&write_config(dir, Some(vt_origin)))).unwrap();
    host::build(&config, None).await.unwrap()
}

async fn ingest(host: &Host, text: &str) {
    for alert in parse_alerts(text) {
        host.engine.ingest(&alert.unwrap()).await.unwrap();
    }
}

#[tokio::test]
async fn eve_alert_runs_and_flow_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let host = build_host(dir.path(), &replay.origin()).await;
    ingest(&host, &format!("{EVE_ALERT}\n{EVE_FLOW}\n")).await;

    let cases = host.store.cases().unwrap();
    assert_eq!(
        cases.len(),
        2,
        "the alert and the flow have different rules"
    );
    let alert_case = cases.iter().find(|c| c.rule.id == "2027865").unwrap();
    assert_eq!(alert_case.source, "suricata");
    assert!(alert_case.severity >= Severity::Low);
    let values: Vec<&str> = alert_case
        .observables
        .iter()
        .map(|o| o.value.as_str())
        .collect();
    assert!(values.contains(&"198.51.100.23"), "{values:?}");
    assert!(values.contains(&"dns.example.net"), "{values:?}");
    assert!(alert_case.score.is_some(), "the triage scorer ran");

    // Top-level runs; the others are enrich-observable sub-playbook runs.
    let runs: Vec<_> = host
        .store
        .runs()
        .unwrap()
        .into_iter()
        .filter(|run| run.parent.is_none())
        .collect();
    assert_eq!(runs.len(), 1, "only the alert event starts a run");
    assert_eq!(runs[0].case_id, alert_case.id);
    assert_eq!(runs[0].status, RunStatus::Succeeded);
    let flow_case = cases.iter().find(|c| c.rule.id == "eve.flow").unwrap();
    assert!(flow_case.run_ids.is_empty());
}

#[tokio::test]
#[ignore = "reads ../shared/data; `cargo xtask test` runs it when that folder is present"]
async fn shared_eve_samples_become_cases() {
    let path = shared_data("suricata/elastic-beats_eve-small.log")
        .expect("../shared/data is beside the repository");
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let host = build_host(dir.path(), &replay.origin()).await;
    let text = std::fs::read_to_string(path).unwrap();
    let parsed = parse_alerts(&text);
    assert_eq!(parsed.len(), 8);
    assert!(parsed.iter().all(Result::is_ok), "{parsed:?}");
    ingest(&host, &text).await;

    let cases = host.store.cases().unwrap();
    let policy = cases.iter().find(|c| c.rule.id == "2024833").unwrap();
    assert!(
        policy.severity >= Severity::High,
        "Suricata severity 1 is high"
    );
    let values: Vec<&str> = policy
        .observables
        .iter()
        .map(|o| o.value.as_str())
        .collect();
    assert!(
        values.contains(&"l2.io"),
        "the TLS SNI is an observable: {values:?}"
    );
    let runs: Vec<_> = host
        .store
        .runs()
        .unwrap()
        .into_iter()
        .filter(|run| run.parent.is_none())
        .collect();
    assert_eq!(runs.len(), 1, "one alert event among eight");
    assert!(runs.iter().all(|run| run.status == RunStatus::Succeeded));
}
