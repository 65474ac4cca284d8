//! The IOC extractor component, run in the real host on real alerts: the
//! observables an analyst needs are found, and version strings, file
//! names, compliance ids and schema URLs are not taken for IOCs.

mod support;

use std::sync::Arc;

use palisade_runtime::{CallContext, Grant, Runtime, RuntimeConfig};
use serde_json::{Value, json};
use support::{cache_dir, plugins_dir, repo_root, shared_data};

async fn runtime() -> Arc<Runtime> {
    let config = RuntimeConfig {
        cache_dir: Some(cache_dir()),
    };
    let runtime = Runtime::new(config, None, None).unwrap();
    runtime
        .load(&plugins_dir().join("ioc_extractor.wasm"), |_| {
            Grant::default()
        })
        .await
        .unwrap();
    Arc::new(runtime)
}

async fn extract(runtime: &Runtime, input: Value) -> Vec<(String, String, bool)> {
    let output = runtime
        .invoke("ioc-extractor", "extract", &input, &CallContext::default())
        .await
        .unwrap_or_else(|failure| panic!("extract failed: {}", failure.error))
        .output;
    output["observables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["type"].as_str().unwrap().to_string(),
                o["value"].as_str().unwrap().to_string(),
                o["internal"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn has(observables: &[(String, String, bool)], kind: &str, value: &str) -> bool {
    observables.iter().any(|(k, v, _)| k == kind && v == value)
}

fn values(observables: &[(String, String, bool)]) -> Vec<&str> {
    observables.iter().map(|(_, v, _)| v.as_str()).collect()
}

#[tokio::test]
async fn wazuh_alerts_yield_hashes_and_addresses_only() {
    let runtime = runtime().await;
    let text =
        std::fs::read_to_string(repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl"))
            .unwrap();
    let alerts: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let fim = extract(&runtime, json!({ "document": alerts[0] })).await;
    for (kind, value) in [
        ("md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ("sha1", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        (
            "sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        ("ipv4", "10.0.2.15"),
    ] {
        assert!(
            has(&fim, kind, value),
            "FIM alert: missing {kind} {value} in {fim:?}"
        );
    }
    let agent = fim.iter().find(|(_, v, _)| v == "10.0.2.15").unwrap();
    assert!(agent.2, "10.0.2.15 is internal");
    for wrong in [
        "suspicious-file.exe",
        "164.312.c.1",
        "11.5",
        "PI1.4",
        "4.11",
        "1668705462.50453",
    ] {
        assert!(
            !values(&fim).contains(&wrong),
            "FIM alert: {wrong} taken for an IOC"
        );
    }
    for (kind, value, internal) in &fim {
        if kind == "domain" {
            assert!(*internal, "FIM alert: external domain {value}");
        }
    }

    let eicar = extract(&runtime, json!({ "document": alerts[4] })).await;
    assert!(
        has(&eicar, "md5", "44d88612fea8a8f36de82e1278abb02f"),
        "{eicar:?}"
    );
    assert!(
        has(&eicar, "sha1", "3395856ce81f2b7382dee72602f798b642f14140"),
        "{eicar:?}"
    );
    assert!(
        has(
            &eicar,
            "sha256",
            "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
        ),
        "the hash inside the permalink is found: {eicar:?}"
    );
    assert!(
        eicar
            .iter()
            .any(|(k, v, _)| k == "url" && v.starts_with("https://www.virustotal.com/gui/file/"))
    );
    assert!(
        !has(&eicar, "domain", "eicar.com"),
        "a file name is not a domain: {eicar:?}"
    );
}

#[tokio::test]
async fn defanged_text_is_refanged() {
    let runtime = runtime().await;
    let text = "Block hxxps://evil-example[.]com/payload.exe and 203.0.113[.]7; \
                contact phish[@]bad-example[.]org. Tool version 2.4.1, OpenSSH_7.6, \
                see http://www.w3.org/2001/XMLSchema and report.pdf";
    let found = extract(&runtime, json!({ "text": text })).await;
    assert!(
        has(&found, "url", "https://evil-example.com/payload.exe"),
        "{found:?}"
    );
    assert!(has(&found, "ipv4", "203.0.113.7"), "{found:?}");
    assert!(has(&found, "email", "phish@bad-example.org"), "{found:?}");
    for wrong in [
        "2.4.1",
        "7.6",
        "report.pdf",
        "http://www.w3.org/2001/XMLSchema",
        "www.w3.org",
    ] {
        assert!(
            !values(&found).contains(&wrong),
            "{wrong} taken for an IOC: {found:?}"
        );
    }
}

#[tokio::test]
async fn defender_alert_yields_download_url() {
    let runtime = runtime().await;
    let text =
        std::fs::read_to_string(repo_root().join("samples/wazuh/windows_defender_1116_alert.json"))
            .unwrap();
    let document: Value = serde_json::from_str(&text).unwrap();
    let found = extract(&runtime, json!({ "document": document })).await;
    assert!(
        has(&found, "url", "https://secure.eicar.org/eicar.com.txt"),
        "{found:?}"
    );
    assert!(!values(&found).contains(&"0x8000000000000000"));
    assert!(
        !found.iter().any(|(k, _, _)| k == "md5"),
        "no GUID or keyword read as MD5: {found:?}"
    );
}

#[tokio::test]
#[ignore = "reads ../shared/data; `cargo xtask test` runs it when that folder is present"]
async fn suricata_eve_yields_flow_addresses() {
    let path = shared_data("suricata/elastic-integrations_test-eve-6-0.log")
        .expect("../shared/data is beside the repository");
    let runtime = runtime().await;
    let line = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let document: Value = serde_json::from_str(&line).unwrap();
    let found = extract(&runtime, json!({ "document": document })).await;
    assert!(has(&found, "ipv4", "175.16.199.1"), "{found:?}");
    assert!(has(&found, "domain", "testmynids.org"), "{found:?}");
    let inside = found.iter().find(|(_, v, _)| v == "10.31.64.240").unwrap();
    assert!(inside.2, "10.31.64.240 is internal");
    for wrong in ["7.58.0", "2010_09_23", "00:03:2d:3f:e5:63"] {
        assert!(
            !values(&found).contains(&wrong),
            "{wrong} taken for an IOC: {found:?}"
        );
    }
}
