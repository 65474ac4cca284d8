//! The audit log, export and import through the real `palisade` binary. A
//! playbook run on a bundled Wazuh alert records an intact chain. Its
//! export, imported into a fresh data directory, verifies and exports the
//! same lines. A record changed in an export is named by `audit verify`
//! once it is imported, and so is a step output changed in the database or
//! in an export.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::{repo_root, start_virustotal_replay, write_config};

/// A valid secret key, as `palisade secret generate-key` prints it.
const KEY: &str = "4f1d9c0a7b2e83f6d5c4b3a29180f7e6d5c4b3a291807f6e5d4c3b2a19087f6e";

/// Runs `palisade --config CONFIG --data-dir DATA ARGS` with `stdin` as its
/// standard input and the secret key in its environment.
fn palisade(config: &Path, data_dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("PALISADE_CONFIG")
        .env_remove("PALISADE_DATA_DIR")
        .env_remove("VT_API_KEY")
        .env("PALISADE_SECRET_KEY", KEY)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed and returns its standard output.
fn succeed(config: &Path, data_dir: &Path, args: &[&str]) -> String {
    let output = palisade(config, data_dir, args, "");
    assert!(
        output.status.success(),
        "palisade {args:?} failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Returns the head hash from an `audit chain intact` line, checking that
/// the chain has at least `min_records` records.
fn intact_head(text: &str, min_records: u64) -> String {
    let line = text
        .lines()
        .find(|line| line.starts_with("audit chain intact: "))
        .unwrap_or_else(|| panic!("no intact verdict in {text:?}"));
    let rest = line.trim_start_matches("audit chain intact: ");
    let (count, head) = rest.split_once(" records, head ").unwrap();
    let count: u64 = count.parse().unwrap();
    assert!(count >= min_records, "{line}");
    assert_eq!(head.len(), 64, "{line}");
    head.to_string()
}

fn audit_records(config: &Path, data_dir: &Path) -> Vec<Value> {
    let text = succeed(
        config,
        data_dir,
        &["audit", "list", "--json", "--limit", "1000"],
    );
    serde_json::from_str(&text).unwrap()
}

/// Lines of an export without the header, which carries the export time.
fn body_lines(text: &str) -> Vec<&str> {
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["palisade_export"], 1, "{header}");
    lines.collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_chain_survives_export_and_import() {
    let vt = start_virustotal_replay().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), Some(&vt.origin()));
    let source = dir.path().join("source");
    let copy = dir.path().join("copy");
    let tampered = dir.path().join("tampered");

    let stored = palisade(
        &config,
        &source,
        &["secret", "set", "demo-key"],
        "value-1\n",
    );
    assert!(stored.status.success(), "{}", stderr(&stored));
    for _ in 0..2 {
        succeed(
            &config,
            &source,
            &[
                "run",
                "playbooks/wazuh-triage.yaml",
                "--alerts",
                "samples/wazuh/windows_defender_1116_alert.json",
                "--intel",
                "samples/intel/palisade-demo-eicar.json",
            ],
        );
    }

    // Each plugin is recorded once: the second run loaded the same files.
    let records = audit_records(&config, &source);
    let loaded: Vec<&str> = records
        .iter()
        .filter(|record| record["action"] == "plugin_loaded")
        .map(|record| record["subject"].as_str().unwrap())
        .collect();
    assert!(loaded.contains(&"virustotal"), "{loaded:?}");
    assert!(loaded.contains(&"ti-matcher"), "{loaded:?}");
    let mut unique = loaded.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        loaded.len(),
        "a plugin was recorded twice: {loaded:?}"
    );
    let virustotal = records
        .iter()
        .find(|record| record["subject"] == "virustotal")
        .unwrap();
    assert_eq!(virustotal["detail"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(records[0]["seq"], 1);
    assert_eq!(records[0]["prev_hash"], "0".repeat(64));

    let head = intact_head(&succeed(&config, &source, &["audit", "verify"]), 1);

    let export_file = dir.path().join("export.jsonl");
    succeed(
        &config,
        &source,
        &["export", "--out", export_file.to_str().unwrap()],
    );
    let exported = std::fs::read_to_string(&export_file).unwrap();
    for kind in [
        "alert", "case", "run", "step", "kv", "secret", "audit", "counter", "end",
    ] {
        let tag = format!(r#""kind":"{kind}""#);
        assert!(exported.contains(&tag), "no {kind} line in the export");
    }
    assert!(
        !exported.contains("value-1"),
        "the export holds a secret in clear text"
    );

    let imported = succeed(&config, &copy, &["import", export_file.to_str().unwrap()]);
    assert!(imported.contains("imported "), "{imported}");
    assert_eq!(intact_head(&imported, 1), head);
    assert_eq!(
        intact_head(&succeed(&config, &copy, &["audit", "verify"]), 1),
        head
    );

    // Exporting the copy, to standard output, gives the same records.
    let again = succeed(&config, &copy, &["export"]);
    assert_eq!(body_lines(&again), body_lines(&exported));
    let cases = succeed(&config, &copy, &["cases"]);
    assert!(cases.contains("C00000001"), "{cases}");

    // A second import into the same directory is rejected.
    let repeated = palisade(
        &config,
        &copy,
        &["import", export_file.to_str().unwrap()],
        "",
    );
    assert_eq!(repeated.status.code(), Some(1), "{}", stdout(&repeated));
    assert!(
        stderr(&repeated).contains("--data-dir"),
        "{}",
        stderr(&repeated)
    );

    // Change the detail of audit record 2 and import the result.
    let changed: Vec<String> = exported
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            if value["kind"] == "audit" && value["record"]["seq"] == 2 {
                value["record"]["detail"]["version"] = "9.9.9".into();
            }
            value.to_string()
        })
        .collect();
    assert_ne!(changed.join("\n"), exported.trim_end());
    let changed_file = dir.path().join("changed.jsonl");
    std::fs::write(&changed_file, changed.join("\n") + "\n").unwrap();

    let import = palisade(
        &config,
        &tampered,
        &["import", changed_file.to_str().unwrap()],
        "",
    );
    assert_eq!(import.status.code(), Some(1), "{}", stderr(&import));
    assert!(
        stderr(&import).contains("the records were imported into"),
        "{}",
        stderr(&import)
    );
    let verify = palisade(&config, &tampered, &["audit", "verify"], "");
    assert_eq!(verify.status.code(), Some(1), "{}", stderr(&verify));
    let verdict = stdout(&verify);
    assert!(
        verdict.starts_with("audit chain broken at record 2: hash mismatch"),
        "{verdict}"
    );
    // The source database is untouched.
    assert_eq!(
        intact_head(&succeed(&config, &source, &["audit", "verify"]), 1),
        head
    );
}

#[test]
fn import_rejects_cut_short_export() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let source = dir.path().join("source");
    let copy = dir.path().join("copy");
    let stored = palisade(
        &config,
        &source,
        &["secret", "set", "demo-key"],
        "value-1\n",
    );
    assert!(stored.status.success(), "{}", stderr(&stored));

    let exported = succeed(&config, &source, &["export"]);
    let lines: Vec<&str> = exported.lines().collect();
    let cut = lines[..lines.len() - 1].join("\n") + "\n";
    let cut_file = dir.path().join("cut.jsonl");
    std::fs::write(&cut_file, &cut).unwrap();

    let output = palisade(&config, &copy, &["import", cut_file.to_str().unwrap()], "");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cut short"), "{}", stderr(&output));

    // The failed import left the directory empty, so the full file imports.
    let full_file = dir.path().join("full.jsonl");
    std::fs::write(&full_file, &exported).unwrap();
    let imported = succeed(&config, &copy, &["import", full_file.to_str().unwrap()]);
    assert!(
        imported.contains("audit chain intact: 0 records"),
        "{imported}"
    );
}

/// Runs the triage playbook on the bundled Windows Defender alert in
/// `data_dir`.
fn run_triage(config: &Path, data_dir: &Path) {
    succeed(
        config,
        data_dir,
        &[
            "run",
            "playbooks/wazuh-triage.yaml",
            "--alerts",
            "samples/wazuh/windows_defender_1116_alert.json",
            "--intel",
            "samples/intel/palisade-demo-eicar.json",
        ],
    );
}

/// Seq, run id and journal index of the last `step_finished` record that
/// pins a step record with its digest.
fn last_pinned_step(records: &[Value]) -> (u64, String, u32) {
    let record = records
        .iter()
        .rev()
        .find(|record| {
            record["action"] == "step_finished" && record["detail"]["record_sha256"].is_string()
        })
        .expect("a step_finished record with a digest");
    (
        record["seq"].as_u64().unwrap(),
        record["subject"].as_str().unwrap().to_string(),
        record["detail"]["index"].as_u64().unwrap() as u32,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_step_output_is_reported() {
    let vt = start_virustotal_replay().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), Some(&vt.origin()));
    let source = dir.path().join("source");
    run_triage(&config, &source);
    let (seq, run_id, index) = last_pinned_step(&audit_records(&config, &source));
    let expected = format!("step {index} of run {run_id} does not match audit record {seq}");

    let export_file = dir.path().join("export.jsonl");
    succeed(
        &config,
        &source,
        &["export", "--out", export_file.to_str().unwrap()],
    );

    // Change the step's output in an export and import it.
    let exported = std::fs::read_to_string(&export_file).unwrap();
    let mut edited_lines = 0;
    let edited: Vec<String> = exported
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            if value["kind"] == "step" && value["run_id"] == run_id && value["index"] == index {
                value["step"]["output"] = serde_json::json!({ "forged": true });
                edited_lines += 1;
            }
            value.to_string()
        })
        .collect();
    assert_eq!(edited_lines, 1, "no step line for step {index} of {run_id}");
    let edited_file = dir.path().join("edited.jsonl");
    std::fs::write(&edited_file, edited.join("\n") + "\n").unwrap();
    let copy = dir.path().join("copy");
    let import = palisade(
        &config,
        &copy,
        &["import", edited_file.to_str().unwrap()],
        "",
    );
    assert_eq!(import.status.code(), Some(1), "{}", stderr(&import));
    let verdict = stdout(&import);
    assert!(
        verdict.contains(&format!("audit chain broken at record {seq}: {expected}")),
        "{verdict}"
    );
    assert!(
        stderr(&import).contains("the records were imported into"),
        "{}",
        stderr(&import)
    );
    let verify = palisade(&config, &copy, &["audit", "verify"], "");
    assert_eq!(verify.status.code(), Some(1), "{}", stderr(&verify));
    assert!(stdout(&verify).contains(&expected), "{}", stdout(&verify));

    // Change the same step in the source database itself.
    intact_head(&succeed(&config, &source, &["audit", "verify"]), 1);
    {
        use palisade_store::{SledStore, Store};
        let store = SledStore::open(&source.join("db")).unwrap();
        let run = store.run(&run_id).unwrap().unwrap();
        let mut step = run.steps[index as usize].clone();
        step.output = Some(serde_json::json!({ "forged": true }));
        store.put_step(&run_id, index as usize, &step).unwrap();
        store.flush().unwrap();
    }
    let verify = palisade(&config, &source, &["audit", "verify"], "");
    assert_eq!(verify.status.code(), Some(1), "{}", stderr(&verify));
    let verdict = stdout(&verify);
    assert!(
        verdict.starts_with(&format!("audit chain broken at record {seq}: {expected}")),
        "{verdict}"
    );
}

#[test]
fn import_of_missing_file_creates_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let data_dir = dir.path().join("never-created");
    let missing = dir.path().join("missing.jsonl");
    let output = palisade(
        &config,
        &data_dir,
        &["import", missing.to_str().unwrap()],
        "",
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot open import file"),
        "{}",
        stderr(&output)
    );
    assert!(
        !data_dir.exists(),
        "the import created {}",
        data_dir.display()
    );
}
