//! `palisade serve` as a child process on an ephemeral loopback port.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A running daemon, killed when dropped.
pub struct Daemon {
    child: Child,
    pub base: String,
}

impl Daemon {
    pub fn start(config: &Path) -> Self {
        Self::spawn(config, Stdio::inherit(), None)
    }

    /// Starts the daemon with its standard error appended to `log`.
    pub fn start_logged(config: &Path, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::spawn(config, Stdio::from(file), None)
    }

    /// Starts the daemon with `RUST_LOG=trace`, its standard error written
    /// to `log`.
    pub fn start_tracing(config: &Path, log: &Path) -> Self {
        let file = std::fs::File::create(log).unwrap();
        Self::spawn(config, Stdio::from(file), Some("trace"))
    }

    fn spawn(config: &Path, stderr: Stdio, log_level: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
        command
            .arg("--config")
            .arg(config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(level) = log_level {
            command.env("RUST_LOG", level);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self {
            child,
            base: format!("http://{address}"),
        }
    }

    /// Stops the daemon with SIGINT and waits for it to exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "daemon exited with {exit}");
    }

    /// Process id of the daemon.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    pub async fn post_alerts(&self, body: String) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/alerts", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
