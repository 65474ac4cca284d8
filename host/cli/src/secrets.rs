//! Secrets stored encrypted in the database, and the master key that
//! encrypts them.
//!
//! A stored record is a random 24-byte nonce followed by the
//! XChaCha20-Poly1305 ciphertext and tag of the value. The secret's name is
//! the associated data, so a record copied to another name does not decrypt.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chacha20poly1305::aead::{Aead, Generate, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use palisade_runtime::SecretValue;
use palisade_store::Store;

/// Environment variable that contains the master key as 64 hexadecimal
/// digits.
pub const KEY_VARIABLE: &str = "PALISADE_SECRET_KEY";

/// Length of the master key in bytes.
const KEY_BYTES: usize = 32;
/// Length of the XChaCha20-Poly1305 nonce at the start of a record.
const NONCE_BYTES: usize = 24;
/// Maximum length of a secret's value in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Maximum length of a secret's name in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// The 32-byte key that encrypts stored secrets. Its `Debug` output is
/// redacted.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_BYTES]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Generates a key from the operating system's random number generator.
    pub fn generate() -> anyhow::Result<Self> {
        let mut key = [0; KEY_BYTES];
        let generated = chacha20poly1305::Key::try_generate()
            .map_err(|error| anyhow::anyhow!("cannot read random bytes: {error}"))?;
        key.copy_from_slice(&generated);
        Ok(Self(key))
    }

    /// Parses 64 hexadecimal digits. Surrounding whitespace is ignored.
    /// `origin` names where the text came from, for the error message,
    /// which never contains the text itself.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let invalid = || {
            anyhow::anyhow!(
                "{origin} contains an invalid secret key: expected {} hexadecimal digits ({KEY_BYTES} bytes); create one with `palisade secret generate-key`",
                KEY_BYTES * 2
            )
        };
        let bytes = hex::decode(text.trim()).map_err(|_| invalid())?;
        let key: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| invalid())?;
        Ok(Self(key))
    }

    /// Loads the key from the `PALISADE_SECRET_KEY` environment variable or
    /// from `key_file`. Setting both is an error, so the key in use is never
    /// ambiguous. Returns `None` when neither is set.
    pub fn load(key_file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        let variable = std::env::var_os(KEY_VARIABLE);
        match (variable, key_file) {
            (Some(_), Some(file)) => anyhow::bail!(
                "both the {KEY_VARIABLE} environment variable and `secret_key_file` ({}) are set; unset one of them",
                file.display()
            ),
            (Some(value), None) => {
                let text = value.into_string().map_err(|_| {
                    anyhow::anyhow!(
                        "{KEY_VARIABLE} is not valid UTF-8; expected 64 hexadecimal digits"
                    )
                })?;
                Self::parse(&text, &format!("the {KEY_VARIABLE} environment variable")).map(Some)
            }
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read secret key file {}", file.display()))?;
                warn_if_readable_by_others(file);
                Self::parse(&text, &format!("secret key file {}", file.display())).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// Loads the key like [`MasterKey::load`], failing with the fix when no
    /// key is configured.
    pub fn require(key_file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load(key_file)?.ok_or_else(|| {
            anyhow::anyhow!(
                "no secret key: set the {KEY_VARIABLE} environment variable or `secret_key_file` in palisade.toml to a key from `palisade secret generate-key`"
            )
        })
    }

    /// Returns the key as 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// Encrypts `value` for secret `name` under a fresh random nonce and
    /// returns the record to store: the nonce, then the ciphertext and tag.
    pub fn encrypt(&self, name: &str, value: &[u8]) -> anyhow::Result<Vec<u8>> {
        let nonce = XNonce::try_generate()
            .map_err(|error| anyhow::anyhow!("cannot read random bytes: {error}"))?;
        let payload = Payload {
            msg: value,
            aad: name.as_bytes(),
        };
        let ciphertext = self
            .cipher()
            .encrypt(&nonce, payload)
            .map_err(|_| anyhow::anyhow!("cannot encrypt secret {name:?}"))?;
        let mut record = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        record.extend_from_slice(&nonce);
        record.extend_from_slice(&ciphertext);
        Ok(record)
    }

    /// Decrypts a record written by [`MasterKey::encrypt`] for `name`.
    /// Returns `None` when the record is truncated, was encrypted under
    /// another key or name, or was changed since.
    pub fn decrypt(&self, name: &str, record: &[u8]) -> Option<Vec<u8>> {
        if record.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, ciphertext) = record.split_at(NONCE_BYTES);
        let nonce = XNonce::try_from(nonce).ok()?;
        let payload = Payload {
            msg: ciphertext,
            aad: name.as_bytes(),
        };
        self.cipher().decrypt(&nonce, payload).ok()
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(file)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %file.display(), "the secret key file is accessible to other users; restrict it with `chmod 600`");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &Path) {}

/// Checks a secret name given to `palisade secret set`.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        anyhow::bail!("secret name must be 1 to {MAX_NAME_BYTES} bytes long");
    }
    if name.chars().any(char::is_control) {
        anyhow::bail!("secret name {name:?} contains control characters");
    }
    Ok(())
}

/// Secrets decrypted, at each use, from the `secrets` tree of the store.
pub struct StoredSecrets {
    key: MasterKey,
    store: Arc<dyn Store>,
    /// Failures already logged, by secret name and record, so a bad record
    /// gives one warning and not one per request.
    warned: Mutex<HashSet<(String, Option<Vec<u8>>)>>,
}

impl StoredSecrets {
    pub fn new(key: MasterKey, store: Arc<dyn Store>) -> Self {
        Self {
            key,
            store,
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// Reads and decrypts secret `name`. A missing, undecryptable or
    /// non-UTF-8 record gives `None` and one warning, which names the
    /// secret but never contains its record or value.
    pub fn secret(&self, name: &str) -> Option<SecretValue> {
        let record = match self.store.secret(name) {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(secret.name = %name, %error, "cannot read stored secret");
                return None;
            }
        };
        let Some(record) = record else {
            self.warn_once(
                name,
                None,
                "stored secret not found; store it with `palisade secret set`",
            );
            return None;
        };
        let value = self
            .key
            .decrypt(name, &record)
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match value {
            Some(value) if !value.is_empty() => Some(SecretValue::new(value)),
            _ => {
                self.warn_once(
                    name,
                    Some(record),
                    "stored secret cannot be decrypted: the secret key differs from the one it was stored with, or the record was changed",
                );
                None
            }
        }
    }

    fn warn_once(&self, name: &str, record: Option<Vec<u8>>, message: &str) {
        let first = self
            .warned
            .lock()
            .map(|mut warned| warned.insert((name.to_string(), record)))
            .unwrap_or(true);
        if first {
            tracing::warn!(secret.name = %name, "{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::generate().unwrap()
    }

    #[test]
    fn record_decrypts_with_same_key_and_name() {
        let key = key();
        let record = key.encrypt("vt", b"value-1").unwrap();
        assert_eq!(key.decrypt("vt", &record).unwrap(), b"value-1");
    }

    #[test]
    fn each_write_uses_a_new_nonce() {
        let key = key();
        let first = key.encrypt("vt", b"value-1").unwrap();
        let second = key.encrypt("vt", b"value-1").unwrap();
        assert_ne!(first[..NONCE_BYTES], second[..NONCE_BYTES]);
        assert_ne!(first, second);
    }

    #[test]
    fn wrong_key_name_or_bytes_fail() {
        let key = key();
        let record = key.encrypt("vt", b"value-1").unwrap();
        assert!(
            MasterKey::generate()
                .unwrap()
                .decrypt("vt", &record)
                .is_none()
        );
        assert!(key.decrypt("other", &record).is_none());
        for index in [0, NONCE_BYTES, record.len() - 1] {
            let mut changed = record.clone();
            changed[index] ^= 1;
            assert!(key.decrypt("vt", &changed).is_none(), "byte {index}");
        }
        assert!(key.decrypt("vt", &record[..NONCE_BYTES - 1]).is_none());
        assert!(key.decrypt("vt", &record[..NONCE_BYTES + 15]).is_none());
    }

    #[test]
    fn key_parses_from_hex_only() {
        let key = key();
        let parsed = MasterKey::parse(&format!(" {}\n", key.to_hex()), "test").unwrap();
        assert_eq!(parsed.to_hex(), key.to_hex());
        for text in ["", "abcd", &"g".repeat(64), &"a".repeat(66)] {
            let error = MasterKey::parse(text, "the test key")
                .unwrap_err()
                .to_string();
            assert!(error.contains("the test key"), "{error}");
            assert!(error.contains("generate-key"), "{error}");
        }
    }

    #[test]
    fn key_debug_is_redacted() {
        let key = key();
        assert!(!format!("{key:?}").contains(&key.to_hex()));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("virustotal-api-key").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"a".repeat(MAX_NAME_BYTES + 1)).is_err());
    }
}
