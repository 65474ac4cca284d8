//! Secrets stored encrypted in the database: `palisade secret` through the
//! real binary, and the VirusTotal plugin using a stored key against the
//! replay server on 127.0.0.1.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use palisade::config::Config;
use palisade::host;
use palisade_runtime::CallContext;
use palisade_store::{SledStore, Store};
use serde_json::json;
use support::{cache_dir, files_under, plugins_dir, repo_root, start_virustotal_replay};

const SECRET_NAME: &str = "virustotal-api-key";
/// The value stored in these tests. Tests search the database for it.
const STORED_VALUE: &str = "stored-key-8c2e41d7a9f30b65";
/// Two valid keys, as `palisade secret generate-key` prints them.
const KEY: &str = "4f1d9c0a7b2e83f6d5c4b3a29180f7e6d5c4b3a291807f6e5d4c3b2a19087f6e";
const OTHER_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const EICAR_SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";

/// Writes a `palisade.toml` in `dir` whose VirusTotal key is a stored
/// secret, granted to the plugin for `vt_origin`. With `key_file`, the
/// configuration names it as `secret_key_file`.
fn write_stored_config(dir: &Path, vt_origin: &str, key_file: Option<&Path>) -> PathBuf {
    let mut text = String::new();
    if let Some(key_file) = key_file {
        text.push_str(&format!("secret_key_file = \"{}\"\n", key_file.display()));
    }
    text.push_str(&format!(
        r#"data_dir = "{data}"
cache_dir = "{cache}"
plugins_dir = "{plugins}"
playbooks_dir = "{root}/playbooks"

{trust}
[secrets.{SECRET_NAME}]
stored = true

[plugins.ti-matcher]
key_value = true

[plugins.virustotal]
http_origins = ["{vt_origin}"]
config = {{ base_url = "{vt_origin}" }}

[[plugins.virustotal.secrets]]
name = "{SECRET_NAME}"
origins = ["{vt_origin}"]
"#,
        data = dir.join("data").display(),
        cache = cache_dir().display(),
        plugins = plugins_dir().display(),
        root = repo_root().display(),
        trust = support::trust_table(),
    ));
    let path = dir.join("palisade.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes `key` to a key file in `dir` and returns its path.
fn write_key_file(dir: &Path, key: &str) -> PathBuf {
    let path = dir.join("secret-key");
    std::fs::write(&path, format!("{key}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// Runs the `palisade` binary with `args` and `config`, writing `stdin` to
/// its standard input. `key` is set as `PALISADE_SECRET_KEY` on the child
/// process only.
fn palisade(config: &Path, args: &[&str], key: Option<&str>, stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("PALISADE_SECRET_KEY")
        .env_remove("PALISADE_CONFIG")
        .env_remove("PALISADE_DATA_DIR")
        .env_remove("VT_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(key) = key {
        command.env("PALISADE_SECRET_KEY", key);
    }
    let mut child = command.spawn().unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn set_secret(config: &Path, name: &str, value: &str, key: Option<&str>) -> Output {
    palisade(config, &["secret", "set", name], key, &format!("{value}\n"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Asserts that no file of the database contains `value`.
fn assert_not_in_database(dir: &Path, value: &str) {
    let files = files_under(&dir.join("data"));
    assert!(!files.is_empty(), "the database exists");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!contains(&bytes, value), "plaintext in {}", file.display());
    }
}

/// Looks up the EICAR hash through the VirusTotal plugin of a host built
/// in-process from `config`; returns the error kind when the call fails.
async fn lookup_eicar(config: &Path) -> Result<(), String> {
    let config = Config::load(Some(config)).unwrap();
    let host = host::build(&config, None).await.unwrap();
    host.caller
        .runtime
        .invoke(
            "virustotal",
            "file-report",
            &json!({ "hash": EICAR_SHA256 }),
            &CallContext::default(),
        )
        .await
        .map(|_| ())
        .map_err(|failure| failure.error.kind().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_secret_reaches_upstream_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let config = write_stored_config(dir.path(), &replay.origin(), None);

    let set = set_secret(&config, SECRET_NAME, STORED_VALUE, Some(KEY));
    assert!(set.status.success(), "{}", stderr(&set));
    assert!(!contains(&set.stdout, STORED_VALUE));
    assert!(!contains(&set.stderr, STORED_VALUE));
    assert_not_in_database(dir.path(), STORED_VALUE);

    // The daemon's one-shot mode, with the key in its environment only.
    let alerts = repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl");
    let run = tokio::task::spawn_blocking(move || {
        let alerts = alerts.to_str().unwrap();
        palisade(&config, &["run", "--alerts", alerts], Some(KEY), "")
    })
    .await
    .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(!contains(&run.stdout, STORED_VALUE));
    assert!(!contains(&run.stderr, STORED_VALUE));

    let log = replay.log.lock().unwrap();
    assert!(!log.api_keys.is_empty(), "the plugin called the upstream");
    // The replay server records the key of file lookups only.
    let file_lookups = log
        .paths
        .iter()
        .filter(|path| path.starts_with("/api/v3/files/"))
        .count();
    assert_eq!(log.api_keys.len(), file_lookups, "{:?}", log.paths);
    assert!(
        log.api_keys.iter().all(|key| key == STORED_VALUE),
        "{:?}",
        log.api_keys
    );
    drop(log);
    assert_not_in_database(dir.path(), STORED_VALUE);
}

#[tokio::test]
async fn stored_secret_decrypts_with_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let key_file = write_key_file(dir.path(), KEY);
    let config = write_stored_config(dir.path(), &replay.origin(), Some(&key_file));

    let set = set_secret(&config, SECRET_NAME, STORED_VALUE, None);
    assert!(set.status.success(), "{}", stderr(&set));
    assert_eq!(lookup_eicar(&config).await, Ok(()));
    let log = replay.log.lock().unwrap();
    assert_eq!(log.api_keys, [STORED_VALUE]);
}

#[tokio::test]
async fn wrong_key_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let config = write_stored_config(dir.path(), &replay.origin(), None);
    let set = set_secret(&config, SECRET_NAME, STORED_VALUE, Some(KEY));
    assert!(set.status.success(), "{}", stderr(&set));

    let key_file = write_key_file(dir.path(), OTHER_KEY);
    let config = write_stored_config(dir.path(), &replay.origin(), Some(&key_file));
    assert_eq!(lookup_eicar(&config).await, Err("denied".to_string()));
    assert_eq!(replay.requests(), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_key_logs_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let config = write_stored_config(dir.path(), &replay.origin(), None);
    let set = set_secret(&config, SECRET_NAME, STORED_VALUE, Some(KEY));
    assert!(set.status.success(), "{}", stderr(&set));

    // The playbooks look up several hashes, each needing the secret.
    let alerts = repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl");
    let run = tokio::task::spawn_blocking(move || {
        let alerts = alerts.to_str().unwrap();
        palisade(
            &config,
            &["run", "--alerts", alerts, "--json"],
            Some(OTHER_KEY),
            "",
        )
    })
    .await
    .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(replay.requests(), 0, "nothing reached the upstream");

    let log = stderr(&run);
    let warnings = log.matches("stored secret cannot be decrypted").count();
    assert_eq!(warnings, 1, "{log}");
    assert!(log.contains(SECRET_NAME), "{log}");
    assert!(!log.contains(STORED_VALUE), "{log}");
    assert!(!log.contains(OTHER_KEY), "{log}");
    assert!(!contains(&run.stdout, STORED_VALUE));
}

#[tokio::test]
async fn tampered_record_gives_no_value() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let key_file = write_key_file(dir.path(), KEY);
    let config = write_stored_config(dir.path(), &replay.origin(), Some(&key_file));
    let set = set_secret(&config, SECRET_NAME, STORED_VALUE, None);
    assert!(set.status.success(), "{}", stderr(&set));

    {
        let store = SledStore::open(&dir.path().join("data/db")).unwrap();
        let mut record = store.secret(SECRET_NAME).unwrap().unwrap();
        let last = record.len() - 1;
        record[last] ^= 0x01;
        store.put_secret(SECRET_NAME, &record).unwrap();
        store.flush().unwrap();
    }
    assert_eq!(lookup_eicar(&config).await, Err("denied".to_string()));
    assert_eq!(replay.requests(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn record_under_other_name_gives_no_value() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let key_file = write_key_file(dir.path(), KEY);
    let config = write_stored_config(dir.path(), &replay.origin(), Some(&key_file));
    let set = set_secret(&config, "other-secret", STORED_VALUE, None);
    assert!(set.status.success(), "{}", stderr(&set));

    // The name is the associated data, so a record copied to another
    // name does not decrypt.
    {
        let store = SledStore::open(&dir.path().join("data/db")).unwrap();
        let record = store.secret("other-secret").unwrap().unwrap();
        store.put_secret(SECRET_NAME, &record).unwrap();
        store.flush().unwrap();
    }
    assert_eq!(lookup_eicar(&config).await, Err("denied".to_string()));
    assert_eq!(replay.requests(), 0, "nothing reached the upstream");
}

#[test]
fn secret_list_shows_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_stored_config(dir.path(), "http://127.0.0.1:9", None);
    for (name, value) in [(SECRET_NAME, STORED_VALUE), ("b-other", "other-value-4d21")] {
        let set = set_secret(&config, name, value, Some(KEY));
        assert!(set.status.success(), "{}", stderr(&set));
    }

    // Listing needs no key: it reads names only.
    let list = palisade(&config, &["secret", "list"], None, "");
    assert!(list.status.success(), "{}", stderr(&list));
    let stdout = String::from_utf8(list.stdout).unwrap();
    assert_eq!(stdout, format!("b-other\n{SECRET_NAME}\n"));

    let delete = palisade(&config, &["secret", "delete", "b-other"], None, "");
    assert!(delete.status.success(), "{}", stderr(&delete));
    let list = palisade(&config, &["secret", "list"], None, "");
    assert_eq!(
        String::from_utf8(list.stdout).unwrap(),
        format!("{SECRET_NAME}\n")
    );
    let again = palisade(&config, &["secret", "delete", "b-other"], None, "");
    assert!(!again.status.success());
    assert!(stderr(&again).contains("not stored"), "{}", stderr(&again));
}

#[test]
fn secret_set_without_key_names_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_stored_config(dir.path(), "http://127.0.0.1:9", None);
    let set = set_secret(&config, SECRET_NAME, STORED_VALUE, None);
    assert!(!set.status.success());
    let message = stderr(&set);
    assert!(message.contains("PALISADE_SECRET_KEY"), "{message}");
    assert!(message.contains("generate-key"), "{message}");

    let malformed = set_secret(&config, SECRET_NAME, STORED_VALUE, Some("abc123"));
    assert!(!malformed.status.success());
    let message = stderr(&malformed);
    assert!(message.contains("64 hexadecimal digits"), "{message}");
    assert!(!message.contains("abc123"), "{message}");

    let empty = set_secret(&config, SECRET_NAME, "  ", Some(KEY));
    assert!(!empty.status.success());
    assert!(stderr(&empty).contains("empty"), "{}", stderr(&empty));
}

#[tokio::test]
async fn host_without_key_names_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-key");
    let config = write_stored_config(dir.path(), "http://127.0.0.1:9", Some(&missing));
    let config = Config::load(Some(&config)).unwrap();
    let error = match host::build(&config, None).await {
        Ok(_) => panic!("the host started without its secret key"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains(SECRET_NAME), "{error}");
    assert!(error.contains("no-such-key"), "{error}");

    let dir = tempfile::tempdir().unwrap();
    let key_file = write_key_file(dir.path(), "not-hex");
    let config = write_stored_config(dir.path(), "http://127.0.0.1:9", Some(&key_file));
    let config = Config::load(Some(&config)).unwrap();
    let error = match host::build(&config, None).await {
        Ok(_) => panic!("the host started with a malformed secret key"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("64 hexadecimal digits"), "{error}");
    assert!(error.contains("generate-key"), "{error}");
}

#[test]
fn generated_keys_are_new_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_stored_config(dir.path(), "http://127.0.0.1:9", None);
    let first = palisade(&config, &["secret", "generate-key"], None, "");
    let second = palisade(&config, &["secret", "generate-key"], None, "");
    assert!(first.status.success(), "{}", stderr(&first));
    let first = String::from_utf8(first.stdout).unwrap();
    let second = String::from_utf8(second.stdout).unwrap();
    assert_eq!(first.trim().len(), 64, "{first}");
    assert!(first.trim().bytes().all(|byte| byte.is_ascii_hexdigit()));
    assert_ne!(first, second);

    let set = set_secret(&config, SECRET_NAME, STORED_VALUE, Some(first.trim()));
    assert!(set.status.success(), "{}", stderr(&set));
}
