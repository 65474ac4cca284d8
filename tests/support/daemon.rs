//! `palisade serve` as a child process on an ephemeral loopback port, and
//! an HTTP client that sends the admin token of the test configurations.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::TEST_ADMIN_TOKEN;

/// A running daemon, killed when dropped.
pub struct Daemon {
    child: Child,
    /// `http://ADDRESS`, from the daemon's `listening on ADDRESS` line.
    pub base: String,
    /// Address the daemon listens on.
    pub address: String,
}

/// Returns a client that sends `Authorization: Bearer TOKEN` with every
/// request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl Daemon {
    pub fn start(config: &Path) -> Self {
        Self::spawn(config, Stdio::inherit(), None, None)
    }

    /// Starts the daemon with its standard error appended to `log`.
    pub fn start_logged(config: &Path, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::spawn(config, Stdio::from(file), None, Some(log))
    }

    /// Starts the daemon with `RUST_LOG=trace`, its standard error written
    /// to `log`.
    pub fn start_tracing(config: &Path, log: &Path) -> Self {
        let file = std::fs::File::create(log).unwrap();
        Self::spawn(config, Stdio::from(file), Some("trace"), Some(log))
    }

    /// Starts the daemon with the global options `args` and the
    /// environment variables `env`, its standard error written to `log`.
    pub fn start_with(config: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let file = std::fs::File::create(log).unwrap();
        Self::launch(config, Stdio::from(file), args, env, Some(log))
    }

    fn spawn(config: &Path, stderr: Stdio, log_level: Option<&str>, log: Option<&Path>) -> Self {
        let env: Vec<(&str, &str)> = log_level
            .map(|level| ("RUST_LOG", level))
            .into_iter()
            .collect();
        Self::launch(config, stderr, &[], &env, log)
    }

    /// Starts the daemon and waits for its `listening on` line. A daemon
    /// that exits first fails the test with the end of its log, when
    /// standard error goes to `log`.
    fn launch(
        config: &Path,
        stderr: Stdio,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
        command
            .arg("--config")
            .arg(config)
            .args(args)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let Some(address) = line
            .trim()
            .strip_prefix("listening on ")
            .map(str::to_string)
        else {
            let status = child.wait();
            let text = log
                .and_then(|log| std::fs::read_to_string(log).ok())
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            panic!(
                "the daemon did not start ({status:?}), first line {line:?}; its log ends:\n{tail}"
            );
        };
        Self {
            child,
            base: format!("http://{address}"),
            address,
        }
    }

    /// Returns a client that sends the test configurations' admin token.
    pub fn client(&self) -> reqwest::Client {
        client_with_token(TEST_ADMIN_TOKEN)
    }

    /// Sends `method path`, with a JSON body when given, as the holder of
    /// `token` (none: no `Authorization` header), and returns the status
    /// and the JSON response.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let client = match token {
            Some(token) => client_with_token(token),
            None => reqwest::Client::new(),
        };
        let mut request = client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        // A body that is not JSON, such as the metrics page, comes back as
        // a JSON string.
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Creates an API token named `name` with `role` through the API, as
    /// the admin, and returns it.
    pub async fn create_token(&self, name: &str, role: &str) -> String {
        let body = json!({ "name": name, "role": role });
        let (status, reply) = self
            .call_as(Some(TEST_ADMIN_TOKEN), "POST", "/v1/tokens", Some(body))
            .await;
        assert_eq!(status, 201, "creating token {name}: {reply}");
        reply["token"].as_str().unwrap().to_string()
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
        let response = self
            .client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    pub async fn post_alerts(&self, body: String) -> (u16, Value) {
        let response = self
            .client()
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
