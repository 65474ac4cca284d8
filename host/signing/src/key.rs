//! Ed25519 keys and their one-line text files.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

const SECRET_PREFIX: &str = "palisade-ed25519-secret:";
const PUBLIC_PREFIX: &str = "palisade-ed25519-public:";

/// Number of bytes of a public key's SHA-256 that form its key id.
const KEY_ID_BYTES: usize = 8;

/// A key, a key file or a key name that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key text that does not parse.
    #[error("{detail}")]
    Invalid {
        /// Description of the problem and its fix.
        detail: String,
    },
    /// A key file whose content does not parse.
    #[error("invalid key file {}: {detail}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// Description of the problem and its fix.
        detail: String,
    },
    /// A key file that cannot be read.
    #[error("cannot read key file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A key file that cannot be written.
    #[error("cannot write key file {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A key file that already exists. Keys are never overwritten, since a
    /// lost secret key cannot be recovered.
    #[error(
        "key file {} already exists; choose another name or directory, or delete the old pair first if it is no longer needed",
        path.display()
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A public key file that does not belong to the secret key beside it.
    #[error(
        "public key file {} does not match secret key file {}; restore the matching public key file, or delete both to create a new pair",
        public.display(),
        secret.display()
    )]
    Mismatch {
        /// The secret key file.
        secret: PathBuf,
        /// The public key file.
        public: PathBuf,
    },
    /// A key pair name that cannot be used as a file name.
    #[error(
        "invalid key name {name:?}: use a plain file name without `/`, `\\` or a leading `.`, such as `acme-plugins`"
    )]
    InvalidName {
        /// The name.
        name: String,
    },
    /// The operating system did not provide random bytes.
    #[error("cannot get random bytes for a new key from the operating system")]
    Random(#[source] getrandom::Error),
}

/// An Ed25519 secret key, which signs plugin components.
///
/// The key bytes are erased from memory when the value is dropped. `Debug`
/// prints the key id only.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

/// An Ed25519 public key, which verifies plugin signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl SigningKey {
    /// Generates a new key from the operating system's random number
    /// generator.
    ///
    /// # Errors
    ///
    /// [`KeyError::Random`] when the operating system provides no random
    /// bytes.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; ed25519_dalek::SECRET_KEY_LENGTH];
        getrandom::fill(&mut seed).map_err(KeyError::Random)?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Parses the one-line text form, `palisade-ed25519-secret:<base64>`.
    /// Surrounding whitespace is ignored.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let seed = decode_key_text(text, KeyKind::Secret)?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Returns the one-line text form, without a line break.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }

    /// Reads a secret key file.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::from_text(&text).map_err(|error| in_file(error, path))
    }

    /// Returns the public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Returns the key id of the public key.
    pub fn key_id(&self) -> String {
        self.public().key_id()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        ed25519_dalek::Signer::sign(&self.0, message)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Parses the one-line text form, `palisade-ed25519-public:<base64>`.
    /// Surrounding whitespace is ignored.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_key_text(text, KeyKind::Public)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Invalid {
            detail: "the public key is not a valid Ed25519 point; copy the `.pub` file again from its author".into(),
        })?;
        Ok(Self(key))
    }

    /// Returns the one-line text form, without a line break.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }

    /// Reads a public key file.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::from_text(&text).map_err(|error| in_file(error, path))
    }

    /// Returns the key id: the first 16 hexadecimal digits of the SHA-256
    /// of the 32 key bytes.
    pub fn key_id(&self) -> String {
        let digest: [u8; 32] = Sha256::digest(self.0.as_bytes()).into();
        hex::encode(&digest[..KEY_ID_BYTES])
    }

    /// Returns whether `signature` is this key's signature of `message`.
    /// Strict verification rejects the malleable and small-order forms
    /// that plain Ed25519 verification lets through.
    pub(crate) fn verifies(&self, message: &[u8], signature: &ed25519_dalek::Signature) -> bool {
        self.0.verify_strict(message, signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey").field(&self.key_id()).finish()
    }
}

/// Generates a key pair and writes it to `dir/NAME.key` (the secret key,
/// mode 0600 on unix) and `dir/NAME.pub`, creating `dir` when missing.
/// Returns the two paths, secret key first.
///
/// # Errors
///
/// [`KeyError::Exists`] when either file exists, since a key file is never
/// overwritten. [`KeyError::InvalidName`] when `name` is not a plain file
/// name.
pub fn write_key_pair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), KeyError> {
    let (secret_path, public_path) = key_pair_paths(dir, name)?;
    for path in [&secret_path, &public_path] {
        if path.symlink_metadata().is_ok() {
            return Err(KeyError::Exists { path: path.clone() });
        }
    }
    let key = SigningKey::generate()?;
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: secret_path.clone(),
        source,
    })?;
    write_new_file(&secret_path, &key.to_text(), SECRET_MODE)?;
    write_new_file(&public_path, &key.public().to_text(), PUBLIC_MODE)?;
    Ok((secret_path, public_path))
}

/// Reads the key pair `dir/NAME.key` and `dir/NAME.pub`, and creates it
/// first when the secret key file does not exist. A missing public key
/// file is written from the secret key. Several processes may call this at
/// once: each file appears whole or not at all, so they all end up with
/// the same pair.
///
/// # Errors
///
/// [`KeyError::Mismatch`] when the public key file belongs to another key,
/// and the errors of reading and writing key files.
pub fn load_or_create_key_pair(dir: &Path, name: &str) -> Result<SigningKey, KeyError> {
    let (secret_path, public_path) = key_pair_paths(dir, name)?;
    if secret_path.symlink_metadata().is_err() {
        match write_key_pair(dir, name) {
            Ok(_) => {}
            // Another process created the pair first.
            Err(KeyError::Exists { .. }) if secret_path.symlink_metadata().is_ok() => {}
            // A public key file without its secret key blocks a new pair.
            Err(error) => return Err(error),
        }
    }
    let key = SigningKey::read_file(&secret_path)?;
    if public_path.symlink_metadata().is_err() {
        match write_new_file(&public_path, &key.public().to_text(), PUBLIC_MODE) {
            Ok(()) | Err(KeyError::Exists { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    if PublicKey::read_file(&public_path)? != key.public() {
        return Err(KeyError::Mismatch {
            secret: secret_path,
            public: public_path,
        });
    }
    Ok(key)
}

const SECRET_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;

#[derive(Clone, Copy)]
enum KeyKind {
    Secret,
    Public,
}

impl KeyKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Secret => SECRET_PREFIX,
            Self::Public => PUBLIC_PREFIX,
        }
    }
}

/// Decodes the 32 key bytes after the prefix of `kind`. The messages never
/// quote the text, because it may be a secret.
fn decode_key_text(text: &str, kind: KeyKind) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let invalid = |detail: String| KeyError::Invalid { detail };
    let Some(encoded) = text.strip_prefix(kind.prefix()) else {
        let detail = match kind {
            KeyKind::Public if text.starts_with(SECRET_PREFIX) => {
                "this is a secret key; use the `.pub` file of the pair, and keep the secret key with its author".to_string()
            }
            KeyKind::Secret if text.starts_with(PUBLIC_PREFIX) => {
                "this is a public key; signing needs the `.key` file of the pair".to_string()
            }
            _ => format!(
                "expected one line starting with `{}`; create keys with `palisade plugin keygen`",
                kind.prefix()
            ),
        };
        return Err(invalid(detail));
    };
    let bytes = BASE64.decode(encoded).map_err(|error| {
        invalid(format!(
            "the text after `{}` is not valid base64 ({error})",
            kind.prefix()
        ))
    })?;
    let length = bytes.len();
    bytes.try_into().map_err(|_| {
        invalid(format!(
            "the key is {length} bytes long, but an Ed25519 key has 32"
        ))
    })
}

fn key_pair_paths(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), KeyError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    if !plain {
        return Err(KeyError::InvalidName { name: name.into() });
    }
    Ok((
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    ))
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn in_file(error: KeyError, path: &Path) -> KeyError {
    match error {
        KeyError::Invalid { detail } => KeyError::InvalidFile {
            path: path.to_path_buf(),
            detail,
        },
        other => other,
    }
}

/// Writes `text` and a line break to a new file at `path`, with `mode` on
/// unix. The content goes to a temporary file first, which is then hard
/// linked to `path`: the link fails when `path` exists, so another process
/// never reads a partly written key. Where the file system has no hard
/// links, the file is created in place instead.
fn write_new_file(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let write_error = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(KeyError::Random)?;
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", hex::encode(suffix)));
    write_exclusive(&temporary, text, mode).map_err(write_error)?;

    let linked = std::fs::hard_link(&temporary, path);
    // The temporary name only ever matters to this call.
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Err(KeyError::Exists {
            path: path.to_path_buf(),
        }),
        Err(_) => write_exclusive(path, text, mode).map_err(|error| {
            if error.kind() == io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                write_error(error)
            }
        }),
    }
}

/// Creates a file that must not exist yet and writes `text` and a line
/// break to it.
fn write_exclusive(path: &Path, text: &str, mode: u32) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trips() {
        let key = SigningKey::generate().unwrap();
        let parsed = SigningKey::from_text(&format!("{}\n", key.to_text())).unwrap();
        assert_eq!(parsed.public(), key.public());
        let public = PublicKey::from_text(&key.public().to_text()).unwrap();
        assert_eq!(public, key.public());
        assert_eq!(public.key_id(), key.key_id());
    }

    #[test]
    fn key_id_is_sixteen_hex_digits_of_sha256() {
        let key =
            SigningKey::from_text(&format!("{SECRET_PREFIX}{}", BASE64.encode([7u8; 32]))).unwrap();
        let id = key.key_id();
        assert_eq!(id.len(), 16);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let full = hex::encode(Sha256::digest(key.public().0.as_bytes()));
        assert!(full.starts_with(&id), "{id} is not a prefix of {full}");
    }

    #[test]
    fn key_files_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let (secret_path, public_path) = write_key_pair(dir.path(), "author").unwrap();
        assert_eq!(secret_path, dir.path().join("author.key"));
        assert_eq!(public_path, dir.path().join("author.pub"));
        let key = SigningKey::read_file(&secret_path).unwrap();
        let public = PublicKey::read_file(&public_path).unwrap();
        assert_eq!(key.public(), public);
        let text = std::fs::read_to_string(&public_path).unwrap();
        assert!(text.starts_with(PUBLIC_PREFIX), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn secret_key_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (secret_path, _) = write_key_pair(dir.path(), "author").unwrap();
        let mode = std::fs::metadata(&secret_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }

    #[test]
    fn key_pair_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (secret_path, _) = write_key_pair(dir.path(), "author").unwrap();
        let before = std::fs::read_to_string(&secret_path).unwrap();
        let error = write_key_pair(dir.path(), "author").unwrap_err();
        assert!(matches!(error, KeyError::Exists { .. }), "{error}");
        assert!(error.to_string().contains("author.key"), "{error}");
        assert_eq!(std::fs::read_to_string(&secret_path).unwrap(), before);

        // An orphaned public key file also blocks a new pair.
        std::fs::write(dir.path().join("other.pub"), "x").unwrap();
        let error = write_key_pair(dir.path(), "other").unwrap_err();
        assert!(error.to_string().contains("other.pub"), "{error}");
        assert!(!dir.path().join("other.key").exists());
    }

    #[test]
    fn wrong_prefix_is_a_clear_error() {
        let key = SigningKey::generate().unwrap();
        let error = PublicKey::from_text(&key.to_text())
            .unwrap_err()
            .to_string();
        assert!(error.contains("this is a secret key"), "{error}");
        assert!(!error.contains(&key.to_text()), "the secret is not quoted");
        let error = SigningKey::from_text(&key.public().to_text())
            .unwrap_err()
            .to_string();
        assert!(error.contains("this is a public key"), "{error}");
        let error = PublicKey::from_text("ssh-ed25519 AAAA")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`palisade-ed25519-public:`"), "{error}");
    }

    #[test]
    fn invalid_key_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.pub");
        let cases = [
            ("palisade-ed25519-public:not base64!", "not valid base64"),
            ("palisade-ed25519-public:AAAA", "3 bytes long"),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, text).unwrap();
            let error = PublicKey::read_file(&path).unwrap_err().to_string();
            assert!(error.contains("broken.pub"), "{text}: {error}");
            assert!(error.contains(expected), "{text}: {error}");
        }
        let missing = PublicKey::read_file(&dir.path().join("missing.pub")).unwrap_err();
        assert!(matches!(missing, KeyError::Read { .. }), "{missing}");
    }

    #[test]
    fn key_names_must_be_plain() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", ".hidden", "a/b", "..\\up"] {
            let error = write_key_pair(dir.path(), name).unwrap_err();
            assert!(
                matches!(error, KeyError::InvalidName { .. }),
                "{name:?}: {error}"
            );
        }
    }

    #[test]
    fn load_or_create_reuses_the_pair() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let first = load_or_create_key_pair(&keys, "dev").unwrap();
        let second = load_or_create_key_pair(&keys, "dev").unwrap();
        assert_eq!(first.public(), second.public());

        // A lost public key file is written again from the secret key.
        std::fs::remove_file(keys.join("dev.pub")).unwrap();
        let third = load_or_create_key_pair(&keys, "dev").unwrap();
        assert_eq!(third.public(), first.public());
        assert_eq!(
            PublicKey::read_file(&keys.join("dev.pub")).unwrap(),
            first.public()
        );
        let leftovers: Vec<_> = std::fs::read_dir(&keys)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn load_or_create_agrees_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let publics: Vec<PublicKey> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| load_or_create_key_pair(&keys, "dev").unwrap().public()))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });
        let stored = PublicKey::read_file(&keys.join("dev.pub")).unwrap();
        for public in &publics {
            assert_eq!(public, &stored);
        }
    }

    #[test]
    fn load_or_create_reports_an_orphaned_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let other = SigningKey::generate().unwrap();
        std::fs::write(dir.path().join("dev.pub"), other.public().to_text()).unwrap();
        let error = load_or_create_key_pair(dir.path(), "dev").unwrap_err();
        assert!(matches!(error, KeyError::Exists { .. }), "{error}");
        assert!(error.to_string().contains("dev.pub"), "{error}");
    }

    #[test]
    fn load_or_create_rejects_a_mismatched_pair() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_key_pair(dir.path(), "dev").unwrap();
        let other = SigningKey::generate().unwrap();
        std::fs::write(dir.path().join("dev.pub"), other.public().to_text()).unwrap();
        let error = load_or_create_key_pair(dir.path(), "dev").unwrap_err();
        assert!(matches!(error, KeyError::Mismatch { .. }), "{error}");
        assert!(error.to_string().contains("dev.pub"), "{error}");
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let key = SigningKey::generate().unwrap();
        let debug_text = format!("{key:?}");
        assert!(debug_text.contains(&key.key_id()), "{debug_text}");
        let encoded = key.to_text();
        let seed = encoded.trim_start_matches(SECRET_PREFIX);
        assert!(!debug_text.contains(seed), "{debug_text}");
    }
}
