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

/// Builds every plugin for `wasm32-wasip2` once per test binary, signs each
/// with the development key as `cargo xtask build-plugins` does, and
/// returns the directory holding the components. Cargo does nothing when
/// they are already up to date.
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
            let dir = root.join("plugins/target/wasm32-wasip2/release");
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .extension()
                    .is_some_and(|extension| extension == "wasm")
                {
                    sign_component(&path);
                }
            }
            dir
        })
        .clone()
}

/// Returns the path of the development public key, whose pair signs the
/// plugins of [`plugins_dir`] and [`hostile_plugin`].
/// `cargo xtask build-plugins` uses the same pair.
pub fn dev_public_key() -> PathBuf {
    repo_root().join("plugins/target/dev-signing/palisade-dev.pub")
}

/// Returns the `[trust]` table that accepts the development key, for the
/// configuration files the tests write.
pub fn trust_table() -> String {
    format!("[trust]\nkeys = [\"{}\"]\n", dev_public_key().display())
}

/// Writes the detached signature `COMPONENT.sig` with the development key,
/// creating the key pair on first use. The file is replaced by a rename,
/// and only when the signature changed, so a test binary running at the
/// same time never reads half a signature.
pub fn sign_component(component: &Path) {
    let key_dir = dev_public_key().parent().unwrap().to_path_buf();
    let key = palisade_signing::load_or_create_key_pair(&key_dir, "palisade-dev").unwrap();
    let bytes = std::fs::read(component).unwrap();
    let text = format!(
        "{}\n",
        palisade_signing::sign(&bytes, &key).unwrap().to_json()
    );
    let path = palisade_signing::signature_path(component);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return;
    }
    let temporary = path.with_extension(format!("sig.{}.tmp", std::process::id()));
    std::fs::write(&temporary, &text).unwrap();
    std::fs::rename(&temporary, &path).unwrap();
}

/// Copies a component and its detached signature into `dir`, under the
/// component's file name.
pub fn copy_signed_plugin(component: &Path, dir: &Path) {
    let name = component.file_name().unwrap();
    std::fs::copy(component, dir.join(name)).unwrap();
    let signature = palisade_signing::signature_path(component);
    let signature_name = signature.file_name().unwrap();
    std::fs::copy(&signature, dir.join(signature_name)).unwrap();
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

/// The admin API token every configuration the tests write grants, as
/// `[[api.tokens]]` named [`TEST_ADMIN_NAME`]. [`daemon::Daemon`] sends it.
pub const TEST_ADMIN_TOKEN: &str = "pal_test-admin-token-4b1d0c9e7a2f53816d0e";

/// Name of [`TEST_ADMIN_TOKEN`], which is the actor of its requests.
pub const TEST_ADMIN_NAME: &str = "test-admin";

/// Returns the `[[api.tokens]]` entry of [`TEST_ADMIN_TOKEN`], for the
/// configuration files the tests write.
pub fn api_tokens_table() -> String {
    format!(
        "\n[[api.tokens]]\nname = \"{TEST_ADMIN_NAME}\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
        palisade::auth::token_sha256(TEST_ADMIN_TOKEN)
    )
}

/// The secret value the tests grant to the VirusTotal plugin. Tests search
/// storage and output for it.
pub const TEST_API_KEY: &str = "test-key-5f1c9a7e0b2d4e68";

/// Writes a `palisade.toml` in `dir` that grants the VirusTotal plugin the
/// replay server at `vt_origin` (or nothing, when `None`) and returns its
/// path. The database goes in `dir/data` and the API key in a file beside
/// the configuration. Key correlation is off (`window = "0"`), and the
/// daemon takes [`TEST_ADMIN_TOKEN`].
pub fn write_config(dir: &Path, vt_origin: Option<&str>) -> PathBuf {
    let root = repo_root();
    std::fs::write(dir.join("vt-api-key"), TEST_API_KEY).unwrap();
    let mut text = format!(
        r#"data_dir = "{data}"
cache_dir = "{cache}"
plugins_dir = "{plugins}"
playbooks_dir = "{root}/playbooks"

{trust}
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
        trust = trust_table(),
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
    text.push_str(&api_tokens_table());
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
/// `plugins/` so it is never loaded by accident) once per test binary,
/// signs it with the development key, and returns the path of
/// `hostile.wasm`.
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
            let component = target_dir.join("wasm32-wasip2/release/hostile.wasm");
            sign_component(&component);
            component
        })
        .clone()
}
