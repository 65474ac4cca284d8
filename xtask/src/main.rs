//! Build tasks for Palisade, run as `cargo xtask <task>`:
//!
//! - `build-plugins`: add the `wasm32-wasip2` target, build every plugin
//!   in `plugins/` as a WebAssembly component, and sign each one with the
//!   development key in `plugins/target/dev-signing/`, created on first use;
//! - `demo`: build the plugins and run the bundled sample alerts through the
//!   bundled playbooks, with VirusTotal served by a replay of recorded
//!   responses on 127.0.0.1;
//! - `test`: build the plugins and run every test: the plugins' own unit
//!   tests, then the host workspace's tests.
//!
//! The only dependency is `palisade-signing`, for the development
//! signatures, so this crate builds without wasmtime.

mod dev_signing;
mod replay;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "build-plugins" => build_plugins(),
        "demo" => demo(),
        "test" => test(),
        _ => Err(format!(
            "unknown task {task:?}; use one of: build-plugins, demo, test"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Returns the repository root: the parent of this crate's directory.
/// `cargo run` sets `CARGO_MANIFEST_DIR` for the running task, so the path
/// stays right when a built task is copied along with a `target` directory.
/// The value from the build is the fallback.
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

fn run(mut command: Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .map_err(|error| format!("cannot start {shown}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn build_plugins() -> Result<(), String> {
    // rust-toolchain.toml lists the target, but automatic installs can be
    // switched off, so add it explicitly; this is a no-op when present.
    let mut rustup = Command::new("rustup");
    rustup
        .current_dir(root())
        .args(["target", "add", "wasm32-wasip2"]);
    if let Err(message) = run(rustup) {
        eprintln!("xtask: warning: {message}; building anyway");
    }
    let mut build = cargo();
    build.args([
        "build",
        "--manifest-path",
        "plugins/Cargo.toml",
        "--workspace",
        "--target",
        "wasm32-wasip2",
        "--release",
    ]);
    run(build)?;
    let root = root();
    dev_signing::sign_dir(&root, &root.join(PLUGINS_OUT_DIR))
}

/// Directory of the built plugin components, relative to the repository
/// root.
const PLUGINS_OUT_DIR: &str = "plugins/target/wasm32-wasip2/release";

fn test() -> Result<(), String> {
    build_plugins()?;
    let mut totals = TestTotals::default();
    let mut plugin_tests = cargo();
    plugin_tests.args([
        "test",
        "--manifest-path",
        "plugins/Cargo.toml",
        "--workspace",
        "--lib",
    ]);
    let plugins = run_tests(plugin_tests, &mut totals);
    let mut host_tests = cargo();
    host_tests.args([
        "test",
        "--workspace",
        "--lib",
        "--bins",
        "--tests",
        "--no-fail-fast",
    ]);
    // Tests that read the shared sample data (whose licences keep it out of
    // the repository) are ignored by default; run them when it is present.
    if root().join("../shared/data").is_dir() {
        host_tests.args(["--", "--include-ignored"]);
    } else {
        eprintln!("xtask: ../shared/data not found; tests that read it are skipped");
    }
    let host = run_tests(host_tests, &mut totals);
    // One closing line over every test binary, so the last line of the run
    // is the whole suite's result rather than the last binary's.
    // A test binary that did not build or crashed reports no counts, so
    // the summary reports that rather than showing a clean "0 failed".
    let broken = [&plugins, &host].iter().any(|result| result.is_err()) && totals.failed == 0;
    println!(
        "summary: {} passed, {} failed, {} skipped{}",
        totals.passed,
        totals.failed,
        totals.ignored,
        if broken {
            "; a test binary failed to build or run, see the errors above"
        } else {
            ""
        }
    );
    plugins.and(host)
}

/// Test counts added up over the `test result:` lines of cargo's output.
#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    /// Adds the counts of one `test result: ok. 3 passed; 0 failed; ...`
    /// line.
    fn add(&mut self, line: &str) {
        let Some(counts) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in counts.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(number), Some(label)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                "ignored" => self.ignored += number,
                _ => {}
            }
        }
    }
}

/// Runs a `cargo test` command, passing its output through and adding up
/// its results.
fn run_tests(mut command: Command, totals: &mut TestTotals) -> Result<(), String> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start {shown}: {error}"))?;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let line = line.map_err(|error| format!("cannot read test output: {error}"))?;
            println!("{line}");
            totals.add(&line);
        }
    }
    let status = child
        .wait()
        .map_err(|error| format!("{shown} did not finish: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

/// Environment variable that carries the demo's placeholder API key, so a
/// real `VT_API_KEY` in the caller's environment is never used by the demo.
const DEMO_KEY_VARIABLE: &str = "PALISADE_DEMO_VT_KEY";

fn demo() -> Result<(), String> {
    build_plugins()?;
    let root = root();
    let server = replay::start(&root.join("tests/fixtures/virustotal/files"))?;
    let address = server.address();
    let demo_dir = root.join("target/demo");
    std::fs::create_dir_all(&demo_dir)
        .map_err(|error| format!("cannot create {}: {error}", demo_dir.display()))?;
    let config_path = demo_dir.join("palisade.toml");
    std::fs::write(&config_path, demo_config(&root, &address))
        .map_err(|error| format!("cannot write {}: {error}", config_path.display()))?;

    eprintln!("xtask: VirusTotal lookups go to a replay of recorded responses on http://{address}");
    eprintln!(
        "xtask: cases are kept in palisade-data/; run the demo again to see they are not duplicated"
    );
    let mut palisade = cargo();
    palisade
        .env(DEMO_KEY_VARIABLE, "replay-only-key")
        .args(["run", "--quiet", "--bin", "palisade", "--", "--config"])
        .arg(&config_path)
        .args([
            "run",
            "--alerts",
            "samples/wazuh/fim_virustotal_alerts.jsonl",
            "--alerts",
            "samples/wazuh/windows_defender_1116_alert.json",
            "--intel",
            "samples/intel/palisade-demo-eicar.json",
            "--intel",
            "samples/intel/indicators-for-C2-with-COA.json",
        ]);
    // Suricata's sample events are under the Elastic License 2.0 and are not
    // in the repository; use them when the shared data folder is beside it.
    let suricata = root.join("../shared/data/suricata/elastic-integrations_test-eve-6-0.log");
    if suricata.is_file() {
        palisade.arg("--alerts").arg(&suricata);
    } else {
        eprintln!("xtask: ../shared/data/suricata not found; running the Wazuh samples only");
    }
    run(palisade)
}

fn demo_config(root: &Path, address: &str) -> String {
    let trusted_key = dev_signing::dev_public_key(root);
    let trusted_key = trusted_key.display();
    let root = root.display();
    format!(
        r#"# Written by `cargo xtask demo`; palisade.toml at the repository root is
# the configuration to start from.
data_dir = "{root}/palisade-data"
plugins_dir = "{root}/plugins/target/wasm32-wasip2/release"
playbooks_dir = "{root}/playbooks"

# The development key that `cargo xtask build-plugins` signs the bundled
# plugins with.
[trust]
keys = ["{trusted_key}"]

[secrets.virustotal-api-key]
env = "{DEMO_KEY_VARIABLE}"

[plugins.ti-matcher]
key_value = true

[plugins.virustotal]
http_origins = ["http://{address}"]
config = {{ base_url = "http://{address}" }}

[[plugins.virustotal.secrets]]
name = "virustotal-api-key"
origins = ["http://{address}"]
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_result_lines() {
        let mut totals = TestTotals::default();
        totals.add("test result: ok. 76 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.15s");
        totals
            .add("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        totals.add("running 4 tests");
        assert_eq!(totals.passed, 79);
        assert_eq!(totals.failed, 2);
        assert_eq!(totals.ignored, 1);
    }

    #[test]
    fn demo_config_trusts_the_development_key() {
        let text = demo_config(Path::new("/repo"), "127.0.0.1:9");
        let line = "keys = [\"/repo/plugins/target/dev-signing/palisade-dev.pub\"]";
        assert!(text.contains(&format!("[trust]\n{line}\n")), "{text}");
    }
}
