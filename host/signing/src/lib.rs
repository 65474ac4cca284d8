//! Ed25519 signatures of Palisade plugin components.
//!
//! A plugin runs inside the sandbox, but the operator still decides which
//! code may run there at all. This crate lets an author sign a component
//! and lets the host check that a component was signed by a key the
//! operator trusts. It reads and writes key files, signs, embeds and
//! extracts signatures, and verifies them against a [`Trust`] list. It does
//! not decide what happens to an unsigned plugin: the caller reads
//! `allow_unsigned` from the configuration and acts on [`TrustError`].
//!
//! # Threat model
//!
//! The signature binds a key to the exact bytes of a component, so a
//! component changed after signing, or signed by a key the operator never
//! listed, is rejected. It proves nothing about the code's behaviour, so a
//! trusted author's plugin still gets only the capabilities the operator
//! grants. A stolen secret key signs anything, so the secret key file is
//! written readable by its owner only (mode 0600 on unix). There is no
//! revocation list: removing a key from the trust list revokes it.
//!
//! # Formats
//!
//! These formats are fixed. A change needs a new prefix or format name.
//!
//! - **Secret key file**: one line, `palisade-ed25519-secret:` followed by
//!   the base64 (standard alphabet, padded) of the 32-byte Ed25519 seed.
//! - **Public key file**: one line, `palisade-ed25519-public:` followed by
//!   the base64 of the 32-byte public key.
//! - **Key id**: the first 16 hexadecimal digits (lowercase) of the SHA-256
//!   of the 32 public key bytes.
//! - **Signature document**: the JSON object
//!   `{"format":"palisade-signature-v1","key_id":"…","digest":"sha256:<hex>","signature":"<base64>"}`,
//!   where `signature` is the base64 of the 64-byte Ed25519 signature. It
//!   is the content of a detached `<component>.wasm.sig` file (see
//!   [`signature_path`]) and the payload of an embedded signature.
//! - **Digest**: the SHA-256 of the component with its embedded signature
//!   section removed. Embedding or replacing a signature does not change
//!   it, so the digest identifies the plugin's code.
//! - **Signed message**: the 19 bytes `palisade-plugin-v1\0` followed by
//!   the 32 bytes of the digest.
//! - **Embedded signature**: a custom section (id 0) named
//!   `palisade-signature` whose payload is the signature document. It must
//!   be the last section of the binary and appear at most once. Sections
//!   are walked generically after the 8-byte header (an id byte, a LEB128
//!   u32 size, the contents), so core modules and components are handled
//!   alike. Sections nested inside a component are not inspected.

#![deny(missing_docs)]

mod key;
mod section;
mod signature;
mod trust;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use key::{KeyError, PublicKey, SigningKey, load_or_create_key_pair, write_key_pair};
pub use section::FormatError;
pub use signature::{Signature, digest, embed, sign, split};
pub use trust::{Trust, TrustError, TrustedKey, Verified};

/// Name of the custom section that carries an embedded signature.
pub const SECTION_NAME: &str = "palisade-signature";

/// Value of the `format` field of a signature document.
pub const SIGNATURE_FORMAT: &str = "palisade-signature-v1";

/// Returns the path of the detached signature of the component at `path`:
/// the same path with `.sig` appended, so `noop.wasm` has `noop.wasm.sig`.
pub fn signature_path(path: &Path) -> PathBuf {
    let mut text = OsString::from(path.as_os_str());
    text.push(".sig");
    PathBuf::from(text)
}

/// Components built by hand for the unit tests.
#[cfg(test)]
mod test_support {
    use crate::SigningKey;

    /// Returns a new random key.
    pub fn test_key() -> SigningKey {
        SigningKey::generate().unwrap()
    }

    /// Returns a valid core module: one function type `() -> ()`, one
    /// function, and its body `i32.const 42; drop` at the very end.
    pub fn module() -> Vec<u8> {
        let mut bytes = b"\0asm\x01\0\0\0".to_vec();
        append_section(&mut bytes, 1, &[0x01, 0x60, 0x00, 0x00]);
        append_section(&mut bytes, 3, &[0x01, 0x00]);
        append_section(&mut bytes, 10, &[0x01, 0x05, 0x00, 0x41, 0x2a, 0x1a, 0x0b]);
        bytes
    }

    /// Returns a component binary: the component header, the module of
    /// [`module`] as a nested core module, and a custom section of 300
    /// bytes, whose size takes two LEB128 bytes.
    pub fn component() -> Vec<u8> {
        let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
        append_section(&mut bytes, 1, &module());
        let mut custom = vec![9];
        custom.extend_from_slice(b"producers");
        custom.resize(300, b'p');
        append_section(&mut bytes, 0, &custom);
        bytes
    }

    /// Returns the offsets where the top-level sections of `bytes` start,
    /// and its length, where a section appended next would start. The
    /// walk is written apart from the crate's own, as a cross-check.
    pub fn section_starts(bytes: &[u8]) -> Vec<usize> {
        let mut starts = Vec::new();
        let mut offset = 8;
        while offset < bytes.len() {
            starts.push(offset);
            offset += 1;
            let (mut size, mut shift) = (0usize, 0);
            loop {
                let byte = bytes[offset];
                offset += 1;
                size |= usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            offset += size;
        }
        starts.push(bytes.len());
        starts
    }

    fn append_section(bytes: &mut Vec<u8>, id: u8, contents: &[u8]) {
        bytes.push(id);
        let mut size = contents.len();
        loop {
            let byte = (size & 0x7f) as u8;
            size >>= 7;
            if size == 0 {
                bytes.push(byte);
                break;
            }
            bytes.push(byte | 0x80);
        }
        bytes.extend_from_slice(contents);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_path_appends_sig() {
        assert_eq!(
            signature_path(Path::new("plugins/noop.wasm")),
            Path::new("plugins/noop.wasm.sig")
        );
    }
}
