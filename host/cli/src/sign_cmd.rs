//! `palisade plugin keygen` and `palisade plugin sign`: the plugin author's
//! side of plugin signatures. The operator's side, checking a component
//! against the keys of `[trust]`, happens where plugins are loaded.

use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_signing::{PublicKey, SigningKey, signature_path};

/// Creates a key pair `dir/NAME.key` and `dir/NAME.pub` and prints the two
/// paths and the key id. Existing files are never overwritten.
pub fn keygen(dir: &Path, name: &str) -> anyhow::Result<()> {
    let (secret_path, public_path) = palisade_signing::write_key_pair(dir, name)?;
    let key_id = PublicKey::read_file(&public_path)?.key_id();
    println!("secret key: {}", secret_path.display());
    println!("public key: {}", public_path.display());
    println!("key id:     {key_id}");
    println!(
        "Keep the secret key private. Operators who run your plugins add the public key file to `[trust] keys`."
    );
    Ok(())
}

/// Signs the component `file` with the secret key file `key`.
///
/// Without `embed`, writes the detached signature to `output`, or to
/// `FILE.sig` by default. With `embed`, writes the component with the
/// signature as its last section to `output`, or back to `file`, replacing
/// any embedded signature. Files are replaced atomically, so a daemon that
/// watches the directory never reads half a file.
pub fn sign(file: &Path, key: &Path, embed: bool, output: Option<&Path>) -> anyhow::Result<()> {
    let key = SigningKey::read_file(key)?;
    let component = std::fs::read(file)
        .with_context(|| format!("cannot read plugin component {}", file.display()))?;
    let signature = palisade_signing::sign(&component, &key)
        .with_context(|| format!("cannot sign {}", file.display()))?;

    let target = if embed {
        let signed = palisade_signing::embed(&component, &signature)
            .with_context(|| format!("cannot embed the signature in {}", file.display()))?;
        let target = output.unwrap_or(file).to_path_buf();
        replace_file(&target, &signed)?;
        target
    } else {
        let target = output.map_or_else(|| signature_path(file), Path::to_path_buf);
        if same_file(&target, file) {
            anyhow::bail!(
                "the signature output {} is the component itself; pass another `--output`, or `--embed` to put the signature inside the component",
                target.display()
            );
        }
        replace_file(&target, format!("{}\n", signature.to_json()).as_bytes())?;
        target
    };
    println!(
        "signed {} with key {} (digest sha256:{})",
        file.display(),
        signature.key_id(),
        signature.digest()
    );
    println!("wrote {}", target.display());
    Ok(())
}

/// Returns whether `a` and `b` name the same file, comparing canonical
/// paths when both exist.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`. A file that is replaced keeps its permissions, and a new file is
/// readable by everyone (mode 0644 on unix), since components and
/// signatures are not secret.
fn replace_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;

    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let write = || -> std::io::Result<()> {
        let mut temporary = tempfile::NamedTempFile::new_in(&dir)?;
        temporary.write_all(bytes)?;
        temporary.as_file().sync_all()?;
        let permissions = match std::fs::metadata(path) {
            Ok(metadata) => metadata.permissions(),
            Err(_) => new_file_permissions(temporary.as_file())?,
        };
        temporary.as_file().set_permissions(permissions)?;
        temporary.persist(path).map_err(|error| error.error)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(unix)]
fn new_file_permissions(_file: &std::fs::File) -> std::io::Result<std::fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn new_file_permissions(file: &std::fs::File) -> std::io::Result<std::fs::Permissions> {
    Ok(file.metadata()?.permissions())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_signing::{Trust, TrustError, TrustedKey};

    /// An empty core module: the header alone is a valid binary.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, Trust) {
        let dir = tempfile::tempdir().unwrap();
        keygen(&dir.path().join("keys"), "author").unwrap();
        let secret = dir.path().join("keys/author.key");
        let public = PublicKey::read_file(&dir.path().join("keys/author.pub")).unwrap();
        let trust = Trust {
            keys: vec![TrustedKey {
                name: "author".into(),
                key: public,
            }],
        };
        let component = dir.path().join("plugin.wasm");
        std::fs::write(&component, EMPTY_MODULE).unwrap();
        (dir, secret, component, trust)
    }

    #[test]
    fn detached_signature_goes_beside_the_component() {
        let (_dir, secret, component, trust) = setup();
        sign(&component, &secret, false, None).unwrap();
        let text = std::fs::read_to_string(signature_path(&component)).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        assert_eq!(
            std::fs::read(&component).unwrap(),
            EMPTY_MODULE,
            "unchanged"
        );
        let verified = trust.verify(EMPTY_MODULE, Some(&text)).unwrap();
        assert_eq!(verified.key_name, "author");
    }

    #[test]
    fn embedded_signature_replaces_the_file_or_writes_output() {
        let (dir, secret, component, trust) = setup();
        let copy = dir.path().join("signed.wasm");
        sign(&component, &secret, true, Some(&copy)).unwrap();
        assert_eq!(
            std::fs::read(&component).unwrap(),
            EMPTY_MODULE,
            "unchanged"
        );
        assert!(trust.verify(&std::fs::read(&copy).unwrap(), None).is_ok());

        sign(&component, &secret, true, None).unwrap();
        let signed = std::fs::read(&component).unwrap();
        assert!(trust.verify(&signed, None).is_ok());
        // Signing again replaces the embedded signature.
        sign(&component, &secret, true, None).unwrap();
        assert_eq!(std::fs::read(&component).unwrap(), signed);
    }

    #[cfg(unix)]
    #[test]
    fn replaced_component_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, secret, component, _) = setup();
        let mode = std::fs::Permissions::from_mode(0o640);
        std::fs::set_permissions(&component, mode).unwrap();
        sign(&component, &secret, true, None).unwrap();
        let after = std::fs::metadata(&component).unwrap().permissions().mode();
        assert_eq!(after & 0o777, 0o640, "mode {after:o}");
        sign(&component, &secret, false, None).unwrap();
        let signature = std::fs::metadata(signature_path(&component)).unwrap();
        assert_eq!(signature.permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn detached_output_cannot_be_the_component() {
        let (_dir, secret, component, _) = setup();
        let error = format!(
            "{:#}",
            sign(&component, &secret, false, Some(&component)).unwrap_err()
        );
        assert!(error.contains("is the component itself"), "{error}");
        assert_eq!(std::fs::read(&component).unwrap(), EMPTY_MODULE);
    }

    #[test]
    fn signing_needs_the_secret_key_and_a_component() {
        let (dir, secret, component, trust) = setup();
        let public = dir.path().join("keys/author.pub");
        let error = format!("{:#}", sign(&component, &public, false, None).unwrap_err());
        assert!(error.contains("author.pub"), "{error}");
        assert!(error.contains("this is a public key"), "{error}");

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        let error = format!("{:#}", sign(&text, &secret, false, None).unwrap_err());
        assert!(error.contains("notes.txt"), "{error}");
        assert!(error.contains("not a WebAssembly binary"), "{error}");
        assert_eq!(
            trust.verify(b"hello", None).unwrap_err(),
            TrustError::NotWasm
        );
    }

    #[test]
    fn keygen_never_overwrites() {
        let (dir, _, _, _) = setup();
        let error = format!(
            "{:#}",
            keygen(&dir.path().join("keys"), "author").unwrap_err()
        );
        assert!(error.contains("already exists"), "{error}");
    }
}
