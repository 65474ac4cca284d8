//! On-disk cache of precompiled components.
//!
//! Compiling a component takes tens of milliseconds; loading its precompiled
//! artifact takes about a tenth of a millisecond. Artifacts are named by the
//! SHA-256 of the component bytes and by the engine's compatibility hash, so
//! a changed component or a different wasmtime build never loads a stale
//! artifact.
//!
//! Loading an artifact runs native code produced earlier, so the cache
//! directory must be writable only by the Palisade host. An artifact that
//! fails to load is recompiled and overwritten.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Returns the hex SHA-256 of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compiles `bytes`, or loads the cached artifact for them.
pub(crate) fn compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
    bytes: &[u8],
    digest: &str,
) -> Result<Component, String> {
    let Some(cache_dir) = cache_dir else {
        return Component::new(engine, bytes).map_err(|error| format!("{error:#}"));
    };
    let path = artifact_path(engine, cache_dir, digest);
    if path.exists() {
        match load_artifact(engine, &path) {
            Ok(component) => return Ok(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cached artifact failed to load; recompiling");
            }
        }
    }
    let artifact = engine
        .precompile_component(bytes)
        .map_err(|error| format!("{error:#}"))?;
    if let Err(error) = store_artifact(&path, &artifact) {
        tracing::warn!(path = %path.display(), %error, "cannot write the compilation cache");
    }
    load_from_bytes(engine, &artifact)
}

fn artifact_path(engine: &Engine, cache_dir: &Path, digest: &str) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let engine_key = hasher.finish();
    cache_dir.join(format!("{digest}-{engine_key:016x}.cwasm"))
}

fn store_artifact(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Write then rename, so a concurrent reader never sees half a file.
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, artifact)?;
    std::fs::rename(&temporary, path)
}

#[expect(
    unsafe_code,
    reason = "artifacts in the cache directory were written by this host's own engine"
)]
fn load_artifact(engine: &Engine, path: &Path) -> Result<Component, String> {
    // SAFETY: the file was produced by `Engine::precompile_component` of an
    // engine with the same compatibility hash (it is part of the name), and
    // the cache directory is documented as writable by the host only.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|error| format!("{error:#}"))
}

#[expect(
    unsafe_code,
    reason = "the bytes were produced by `precompile_component` a moment earlier"
)]
fn load_from_bytes(engine: &Engine, artifact: &[u8]) -> Result<Component, String> {
    // SAFETY: `artifact` comes straight from `Engine::precompile_component`
    // on this same engine.
    unsafe { Component::deserialize(engine, artifact) }.map_err(|error| format!("{error:#}"))
}
