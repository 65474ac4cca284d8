//! `palisade playbook check` on playbooks with known mistakes: its report
//! is pinned line by line in `tests/fixtures/check/expected.txt`, so a
//! change to a message shows up as a diff here.

mod support;

use std::process::{Command, Output};

use support::{plugins_dir, repo_root};

/// Runs `palisade playbook check` from the repository root, so the paths
/// in the report are relative and stable.
fn check(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palisade.toml");
    std::fs::write(
        &config,
        format!(
            "plugins_dir = \"{}\"\ndata_dir = \"{}\"\ncache_dir = \"{}\"\n{}",
            plugins_dir().display(),
            dir.path().join("data").display(),
            support::cache_dir().display(),
            support::trust_table()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .current_dir(repo_root())
        .arg("--config")
        .arg(&config)
        .args(["playbook", "check"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn report_matches_the_snapshot() {
    let output = check(&["tests/fixtures/check"]);
    assert_eq!(output.status.code(), Some(1), "errors make the exit code 1");
    let report = String::from_utf8(output.stdout).unwrap();
    let expected =
        std::fs::read_to_string(repo_root().join("tests/fixtures/check/expected.txt")).unwrap();
    for (number, (got, want)) in report.lines().zip(expected.lines()).enumerate() {
        assert_eq!(got, want, "line {} of the report", number + 1);
    }
    assert_eq!(
        report.lines().count(),
        expected.lines().count(),
        "whole report:\n{report}"
    );
    let summary = String::from_utf8(output.stderr).unwrap();
    assert!(
        summary.contains("checked 6 playbooks: 12 errors, 2 warnings"),
        "{summary}"
    );
}

#[test]
fn bundled_playbooks_have_no_errors() {
    let output = check(&["playbooks"]);
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}{summary}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(summary.contains("0 errors, 0 warnings"), "{summary}");
}
