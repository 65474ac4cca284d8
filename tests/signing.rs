//! Plugin signatures on the real components. Every bundled plugin carries
//! a detached signature by the development key that a test configuration
//! trusts. A component with an embedded signature still loads and runs,
//! because the signature is a custom section, which wasmtime ignores.

mod support;

use palisade::config::Config;
use palisade_runtime::{CallContext, Grant, Runtime, RuntimeConfig};
use palisade_signing::{TrustError, signature_path};
use serde_json::json;
use support::{cache_dir, plugins_dir, trust_table};

fn test_trust() -> palisade_signing::Trust {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisade.toml");
    std::fs::write(&path, trust_table()).unwrap();
    Config::load(Some(&path)).unwrap().trust().unwrap()
}

#[test]
fn bundled_plugins_have_trusted_signatures() {
    let trust = test_trust();
    let mut checked = 0;
    for entry in std::fs::read_dir(plugins_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "wasm") {
            continue;
        }
        let component = std::fs::read(&path).unwrap();
        let detached = std::fs::read_to_string(signature_path(&path)).unwrap();
        let verified = trust
            .verify(&component, Some(&detached))
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert_eq!(verified.key_name, "palisade-dev", "{}", path.display());
        assert_eq!(
            trust.verify(&component, None).unwrap_err(),
            TrustError::Missing,
            "{} has no embedded signature",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} plugins in {:?}",
        plugins_dir()
    );
}

#[tokio::test]
async fn embedded_signature_loads_and_runs() {
    let noop = std::fs::read(plugins_dir().join("noop.wasm")).unwrap();
    let key = palisade_signing::load_or_create_key_pair(
        support::dev_public_key().parent().unwrap(),
        "palisade-dev",
    )
    .unwrap();
    let signed =
        palisade_signing::embed(&noop, &palisade_signing::sign(&noop, &key).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noop.wasm");
    std::fs::write(&path, &signed).unwrap();

    let verified = test_trust().verify(&signed, None).unwrap();
    assert_eq!(verified.digest, palisade_signing::digest(&noop).unwrap());

    let config = RuntimeConfig {
        cache_dir: Some(cache_dir()),
    };
    let runtime = Runtime::new(config, None, None).unwrap();
    runtime.load(&path, |_| Grant::default()).await.unwrap();
    let output = runtime
        .invoke("noop", "echo", &json!({ "n": 7 }), &CallContext::default())
        .await
        .unwrap()
        .output;
    assert_eq!(output, json!({ "n": 7 }));
}
