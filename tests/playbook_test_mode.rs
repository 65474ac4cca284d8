//! `palisade playbook test` on the bundled triage playbook, with every
//! HTTP request answered from `tests/fixtures/playbook-test/responses`:
//! nothing leaves the machine, and the hosts named there are never
//! resolved.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{cache_dir, plugins_dir, repo_root};

/// Grants VirusTotal (with a quota), the chat webhook and the ticketing
/// system the origins the recordings answer for.
fn write_config(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("key"), "recorded-key").unwrap();
    let text = format!(
        r#"plugins_dir = "{plugins}"
cache_dir = "{cache}"
data_dir = "{data}"

{trust}
[secrets.virustotal-api-key]
file = "key"

[secrets.ticketing-token]
file = "key"

[plugins.ti-matcher]
key_value = true

[plugins.virustotal]
http_origins = ["https://www.virustotal.com"]
quotas = [{{ rate = {{ requests = 4, per_seconds = 60 }}, daily = 500 }}]

[[plugins.virustotal.secrets]]
name = "virustotal-api-key"
origins = ["https://www.virustotal.com"]

[plugins.chat-webhook]
http_origins = ["https://chat.example.test"]
config = {{ webhook_url = "https://chat.example.test/hooks/soc" }}

[plugins.ticketing]
http_origins = ["https://tickets.example.test"]
config = {{ base_url = "https://tickets.example.test" }}

[[plugins.ticketing.secrets]]
name = "ticketing-token"
origins = ["https://tickets.example.test"]
"#,
        plugins = plugins_dir().display(),
        cache = cache_dir().display(),
        data = dir.join("data").display(),
        trust = support::trust_table(),
    );
    let path = dir.join("palisade.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn playbook_test(alert: &str, extra: &[&str]) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .current_dir(repo_root())
        .arg("--config")
        .arg(&config)
        .args(["playbook", "test", "playbooks/wazuh-triage.yaml", "--alert"])
        .arg(format!("tests/fixtures/playbook-test/{alert}"))
        .args(["--fixtures", "tests/fixtures/playbook-test/responses"])
        .args(extra)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        !dir.path().join("data").exists(),
        "a test leaves the configured database alone"
    );
    (output, report)
}

#[test]
fn rate_limited_lookup_goes_to_its_handler() {
    let (output, report) = playbook_test("alert.json", &[]);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The EICAR hash comes back malicious from the recording.
    let (_, json) = playbook_test("alert.json", &["--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let score = json["runs"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["id"] == "score")
        .unwrap();
    let reasons = score["output"]["reasons"].to_string();
    assert!(reasons.contains("malicious (59/64 engines)"), "{reasons}");
    assert!(
        json["api_calls"]["virustotal"]["calls"] == 3,
        "{}",
        json["api_calls"]
    );
    // The address lookup is rate limited twice, then handed to the handler.
    assert!(report.contains("deferred (handles lookup)"), "{report}");
    assert!(report.contains("attempt 2"), "{report}");
    // Branches the alert did not take are listed.
    assert!(
        report.contains("wazuh-triage.notify: its `if` was only false"),
        "{report}"
    );
    assert!(
        report.contains("wazuh-triage.approve_block: never reached"),
        "{report}"
    );
    assert!(
        report.contains("virustotal: 3 requests; rate 4 per 60s; daily 500"),
        "{report}"
    );
}

#[test]
fn approval_then_containment() {
    let (output, report) = playbook_test("ssh-brute-force.json", &[]);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "approving \"approve_block\": Open a containment ticket to block 198.51.100.7"
        ),
        "{stderr}"
    );
    assert!(report.contains("\"ticket_id\":\"T-100\""), "{report}");
    assert!(
        report.contains("chat-webhook: 1 requests, no quota configured"),
        "{report}"
    );
    assert!(report.contains("ticketing: 1 requests"), "{report}");

    let (output, report) = playbook_test("ssh-brute-force.json", &["--reject"]);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("\"approved\":false"), "{report}");
    assert!(!report.contains("T-100"), "{report}");
    assert!(
        report.contains("ticketing.open-ticket        skipped"),
        "{report}"
    );
}

#[test]
fn request_without_a_recording_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-responses");
    std::fs::create_dir(&empty).unwrap();
    let config = write_config(dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .current_dir(repo_root())
        .arg("--config")
        .arg(&config)
        .args(["playbook", "test", "playbooks/wazuh-triage.yaml", "--alert"])
        .arg("tests/fixtures/playbook-test/ssh-brute-force.json")
        .arg("--fixtures")
        .arg(&empty)
        .arg("--reject")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains(
            "no recorded response for GET https://www.virustotal.com/api/v3/ip_addresses/198.51.100.7"
        ),
        "{report}"
    );
    // The chat notice failed too, and its `on_error: continue` let the
    // run go on to the (rejected) approval.
    assert!(
        report.contains("no recorded response for POST https://chat.example.test/hooks/soc"),
        "{report}"
    );
    assert!(output.status.success(), "{report}");
}
