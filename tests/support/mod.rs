//! Shared parts of the end-to-end tests: the plugins built from source, a
//! VirusTotal stand-in on 127.0.0.1 that replays recorded responses, and
//! configuration files in temporary directories.

#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod daemon;
pub mod ticketing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds every plugin for `wasm32-wasip2` once per test binary and returns
/// the directory holding the components. Cargo does nothing when they are
/// already up to date.
pub fn plugins_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = repo_root();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&root)
                .args([
                    "build",
                    "--manifest-path",
                    "plugins/Cargo.toml",
                    "--workspace",
                    "--target",
                    "wasm32-wasip2",
                    "--release",
                    "--quiet",
                ])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the plugins failed");
            root.join("plugins/target/wasm32-wasip2/release")
        })
        .clone()
}

/// Precompiled-plugin cache shared by all tests, so each component is
/// compiled once per build rather than once per test.
pub fn cache_dir() -> PathBuf {
    repo_root().join("target/test-plugin-cache")
}

/// What the VirusTotal stand-in has seen.
#[derive(Default)]
pub struct ReplayLog {
    /// Request paths, in order.
    pub paths: Vec<String>,
    /// `x-apikey` header values received.
    pub api_keys: Vec<String>,
}

/// A VirusTotal API v3 stand-in on 127.0.0.1.
pub struct VirusTotalReplay {
    pub address: SocketAddr,
    pub log: Arc<Mutex<ReplayLog>>,
}

impl VirusTotalReplay {
    pub fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn requests(&self) -> usize {
        self.log.lock().unwrap().paths.len()
    }
}

/// Starts the stand-in. `GET /api/v3/files/<sha256>` returns the
/// recorded response in `tests/fixtures/virustotal/files` when there is one
/// and with VirusTotal's `NotFoundError` otherwise; requests without an
/// `x-apikey` header get `AuthenticationRequiredError`.
pub async fn start_virustotal_replay() -> VirusTotalReplay {
    let log = Arc::new(Mutex::new(ReplayLog::default()));
    let app = Router::new()
        .route("/api/v3/files/{id}", get(replay_file))
        .fallback(not_found)
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    VirusTotalReplay { address, log }
}

fn vt_error(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

async fn replay_file(
    State(log): State<Arc<Mutex<ReplayLog>>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    let key = headers
        .get("x-apikey")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    {
        let mut log = log.lock().unwrap();
        log.paths.push(format!("/api/v3/files/{id}"));
        log.api_keys.extend(key.clone());
    }
    if key.is_none() {
        return vt_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationRequiredError",
            "X-Apikey header is missing",
        );
    }
    let file = repo_root()
        .join("tests/fixtures/virustotal/files")
        .join(format!("{}.json", id.to_ascii_lowercase()));
    match std::fs::read_to_string(file) {
        Ok(body) if id.len() == 64 => {
            ([("content-type", "application/json")], body).into_response()
        }
        _ => vt_error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &format!("File \"{id}\" not found"),
        ),
    }
}

async fn not_found(
    State(log): State<Arc<Mutex<ReplayLog>>>,
    uri: axum::http::Uri,
) -> impl IntoResponse {
    log.lock().unwrap().paths.push(uri.path().to_string());
    vt_error(StatusCode::NOT_FOUND, "NotFoundError", "not found")
}

/// The secret value the tests grant to the VirusTotal plugin. Tests search
/// storage and output for it.
pub const TEST_API_KEY: &str = "test-key-5f1c9a7e0b2d4e68";

/// Writes a `palisade.toml` in `dir` that grants the VirusTotal plugin the
/// replay server at `vt_origin` (or nothing, when `None`) and returns its
/// path. The database goes in `dir/data` and the API key in a file beside
/// the configuration. Key correlation is off (`window = "0"`).
pub fn write_config(dir: &Path, vt_origin: Option<&str>) -> PathBuf {
    let root = repo_root();
    std::fs::write(dir.join("vt-api-key"), TEST_API_KEY).unwrap();
    let mut text = format!(
        r#"data_dir = "{data}"
cache_dir = "{cache}"
plugins_dir = "{plugins}"
playbooks_dir = "{root}/playbooks"

# One case per fingerprint, which the tests count on. Key correlation has
# its own tests, which set a window in place of this one.
[correlation]
window = "0"

[secrets.virustotal-api-key]
file = "vt-api-key"

[plugins.ti-matcher]
key_value = true
"#,
        data = dir.join("data").display(),
        cache = cache_dir().display(),
        plugins = plugins_dir().display(),
        root = root.display(),
    );
    if let Some(origin) = vt_origin {
        text.push_str(&format!(
            r#"
[plugins.virustotal]
http_origins = ["{origin}"]
config = {{ base_url = "{origin}" }}

[[plugins.virustotal.secrets]]
name = "virustotal-api-key"
origins = ["{origin}"]
"#
        ));
    }
    let path = dir.join("palisade.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Lists every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Path of `name` in the shared sample data beside the repository, when
/// that folder is present. Tests that read files which may not be copied
/// into the repository are `#[ignore]`d, and `cargo xtask test` includes
/// them only when the folder exists, so a fresh clone reports them as
/// skipped.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let path = repo_root().join("../shared/data").join(name);
    path.is_file().then_some(path)
}

/// Builds the hostile plugin fixture (its own cargo workspace, kept out of
/// `plugins/` so it is never loaded by accident) once per test binary and
/// returns the path of `hostile.wasm`.
pub fn hostile_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-plugins");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--manifest-path"])
                .arg(repo_root().join("plugins/hostile/Cargo.toml"))
                .args(["--target", "wasm32-wasip2", "--release", "--quiet"])
                .arg("--target-dir")
                .arg(&target_dir)
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the hostile fixture failed");
            target_dir.join("wasm32-wasip2/release/hostile.wasm")
        })
        .clone()
}
