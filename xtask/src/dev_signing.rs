//! Signatures of the bundled plugins with the development key.
//!
//! The host accepts only plugins signed by a key listed in `[trust] keys`.
//! For a checkout, that key is the development pair in `DEV_KEY_DIR`,
//! created on the first build and never committed (`plugins/target` is
//! ignored by git). It signs whatever this checkout builds, so it proves
//! only that a plugin came from this build: production configurations list
//! their authors' keys instead.

use std::error::Error;
use std::path::{Path, PathBuf};

use palisade_signing::SigningKey;

/// Directory of the development key pair, relative to the repository root.
pub const DEV_KEY_DIR: &str = "plugins/target/dev-signing";

/// Name of the development key pair: `palisade-dev.key` and
/// `palisade-dev.pub`.
pub const DEV_KEY_NAME: &str = "palisade-dev";

/// Returns the path of the development public key under `root`.
pub fn dev_public_key(root: &Path) -> PathBuf {
    root.join(DEV_KEY_DIR).join(format!("{DEV_KEY_NAME}.pub"))
}

/// Creates the development key pair under `root` when it does not exist,
/// and writes a detached signature beside every `.wasm` file in `dir`.
pub fn sign_dir(root: &Path, dir: &Path) -> Result<(), String> {
    let key = palisade_signing::load_or_create_key_pair(&root.join(DEV_KEY_DIR), DEV_KEY_NAME)
        .map_err(|error| {
            format!(
                "cannot prepare the development signing key: {}",
                chain(&error)
            )
        })?;
    let components = wasm_files(dir)?;
    for component in &components {
        sign_file(component, &key)?;
    }
    eprintln!(
        "xtask: signed {} plugins in {} with development key {} ({})",
        components.len(),
        dir.display(),
        dev_public_key(root).display(),
        key.key_id()
    );
    Ok(())
}

fn wasm_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|error| format!("cannot list {}: {error}", dir.display()))?
            .path();
        if path
            .extension()
            .is_some_and(|extension| extension == "wasm")
            && path.is_file()
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Writes `COMPONENT.sig`. An unchanged signature is left alone, and a new
/// one replaces the old by a rename, so a daemon or test that reads the
/// file at the same time reads the old or the new signature, never half.
fn sign_file(component: &Path, key: &SigningKey) -> Result<(), String> {
    let bytes = std::fs::read(component)
        .map_err(|error| format!("cannot read {}: {error}", component.display()))?;
    let signature = palisade_signing::sign(&bytes, key)
        .map_err(|error| format!("cannot sign {}: {error}", component.display()))?;
    let text = format!("{}\n", signature.to_json());
    let path = palisade_signing::signature_path(component);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let temporary = path.with_extension(format!("sig.{}.tmp", std::process::id()));
    std::fs::write(&temporary, &text)
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// Returns `error` and its sources, joined by `: `.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
