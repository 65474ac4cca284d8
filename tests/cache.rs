//! The precompiled-component cache: one artifact per component content and
//! engine, reused by later loads, and rebuilt when it is damaged.

mod support;

use palisade_runtime::{CallContext, Grant, Runtime, RuntimeConfig};
use serde_json::json;
use support::{files_under, plugins_dir};

fn runtime(cache: &std::path::Path) -> Runtime {
    let config = RuntimeConfig {
        cache_dir: Some(cache.to_path_buf()),
    };
    Runtime::new(config, None, None).unwrap()
}

async fn echo(runtime: &Runtime) -> serde_json::Value {
    runtime
        .invoke("noop", "echo", &json!({ "n": 1 }), &CallContext::default())
        .await
        .unwrap()
        .output
}

#[tokio::test]
async fn artifact_is_written_once_and_reused() {
    let cache = tempfile::tempdir().unwrap();
    let noop = plugins_dir().join("noop.wasm");

    let first = runtime(cache.path());
    let loaded = first.load(&noop, |_| Grant::default()).await.unwrap();
    let artifacts = files_under(cache.path());
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let name = artifacts[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&loaded.digest),
        "{name} is keyed by {}",
        loaded.digest
    );
    let written = std::fs::metadata(&artifacts[0])
        .unwrap()
        .modified()
        .unwrap();

    let second = runtime(cache.path());
    second.load(&noop, |_| Grant::default()).await.unwrap();
    assert_eq!(files_under(cache.path()), artifacts);
    let after = std::fs::metadata(&artifacts[0])
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(written, after, "the artifact was reused, not rewritten");
    assert_eq!(echo(&second).await, json!({ "n": 1 }));
}

#[tokio::test]
async fn damaged_artifact_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let noop = plugins_dir().join("noop.wasm");
    runtime(cache.path())
        .load(&noop, |_| Grant::default())
        .await
        .unwrap();
    let artifact = files_under(cache.path()).pop().unwrap();
    std::fs::write(&artifact, b"not a compiled component").unwrap();

    let runtime = runtime(cache.path());
    runtime.load(&noop, |_| Grant::default()).await.unwrap();
    assert_eq!(echo(&runtime).await, json!({ "n": 1 }));
    let rewritten = std::fs::read(&artifact).unwrap();
    assert_ne!(rewritten, b"not a compiled component");
}
