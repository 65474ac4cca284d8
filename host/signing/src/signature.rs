//! Signing components, and the signature document in its detached and
//! embedded forms.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::SIGNATURE_FORMAT;
use crate::key::SigningKey;
use crate::section::{self, FormatError};

/// The bytes signed before the digest, so a Palisade plugin signature
/// cannot be mistaken for a signature of anything else made with the same
/// key.
const MESSAGE_PREFIX: &[u8] = b"palisade-plugin-v1\0";

/// Prefix of the `digest` field of a signature document.
const DIGEST_PREFIX: &str = "sha256:";

/// Length of a key id in hexadecimal digits.
const KEY_ID_LEN: usize = 16;

/// A signature of a component: who signed it, the digest of the component,
/// and the Ed25519 signature of that digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    key_id: String,
    digest: [u8; 32],
    bytes: ed25519_dalek::Signature,
}

/// The JSON form. The field order is part of the format.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    key_id: String,
    digest: String,
    signature: String,
}

impl Signature {
    /// Returns the id of the key that made the signature.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Returns the signed digest as 64 hexadecimal digits: the SHA-256 of
    /// the component without its embedded signature.
    pub fn digest(&self) -> String {
        hex::encode(self.digest)
    }

    /// Returns the signature document as one line of JSON, without a line
    /// break.
    pub fn to_json(&self) -> String {
        let document = Document {
            format: SIGNATURE_FORMAT.into(),
            key_id: self.key_id.clone(),
            digest: format!("{DIGEST_PREFIX}{}", hex::encode(self.digest)),
            signature: BASE64.encode(self.bytes.to_bytes()),
        };
        // A struct of four strings always serializes.
        serde_json::to_string(&document).unwrap_or_default()
    }

    /// Parses a signature document. Surrounding whitespace is ignored.
    ///
    /// # Errors
    ///
    /// [`FormatError::Malformed`] for invalid JSON, an unknown `format`, or
    /// a field of the wrong form.
    pub fn from_json(text: &str) -> Result<Self, FormatError> {
        let document: Document = serde_json::from_str(text.trim()).map_err(|error| {
            FormatError::malformed(format!("the signature document is not valid: {error}"))
        })?;
        if document.format != SIGNATURE_FORMAT {
            return Err(FormatError::malformed(format!(
                "signature format {:?} is not supported; this host reads {SIGNATURE_FORMAT:?}, so sign the component again with this version's `palisade plugin sign`",
                document.format
            )));
        }
        let key_id = document.key_id;
        let is_key_id = key_id.len() == KEY_ID_LEN
            && key_id
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !is_key_id {
            return Err(FormatError::malformed(format!(
                "`key_id` {key_id:?} is not 16 lowercase hexadecimal digits"
            )));
        }
        let digest = parse_digest(&document.digest)?;
        let bytes = parse_signature_bytes(&document.signature)?;
        Ok(Self {
            key_id,
            digest,
            bytes,
        })
    }

    pub(crate) fn digest_bytes(&self) -> &[u8; 32] {
        &self.digest
    }

    pub(crate) fn signature_bytes(&self) -> &ed25519_dalek::Signature {
        &self.bytes
    }

    pub(crate) fn from_payload(payload: &[u8]) -> Result<Self, FormatError> {
        let text = std::str::from_utf8(payload).map_err(|_| {
            FormatError::malformed(format!(
                "the embedded `{}` section is not UTF-8 text",
                crate::SECTION_NAME
            ))
        })?;
        Self::from_json(text)
    }
}

/// Signs `component` with `key`. An embedded signature is removed first,
/// so signing a signed component gives the signature of its code.
///
/// # Errors
///
/// [`FormatError`] when `component` is not a WebAssembly binary or its
/// sections are malformed.
pub fn sign(component: &[u8], key: &SigningKey) -> Result<Signature, FormatError> {
    let unsigned = section::locate(component)?.unsigned;
    let digest = sha256(unsigned);
    Ok(Signature {
        key_id: key.key_id(),
        digest,
        bytes: key.sign(&signed_message(&digest)),
    })
}

/// Returns `component` with `signature` embedded as its last section,
/// replacing an embedded signature it already has.
///
/// # Errors
///
/// [`FormatError`] when `component` is not a WebAssembly binary or its
/// sections are malformed.
pub fn embed(component: &[u8], signature: &Signature) -> Result<Vec<u8>, FormatError> {
    let unsigned = section::locate(component)?.unsigned;
    section::append_signature(unsigned, signature.to_json().as_bytes())
}

/// Splits `component` into the component without its embedded signature
/// and that signature, when there is one.
///
/// # Errors
///
/// [`FormatError`] when `component` is not a WebAssembly binary, its
/// sections are malformed, or the embedded signature does not parse.
pub fn split(component: &[u8]) -> Result<(Vec<u8>, Option<Signature>), FormatError> {
    let located = section::locate(component)?;
    let signature = located.payload.map(Signature::from_payload).transpose()?;
    Ok((located.unsigned.to_vec(), signature))
}

/// Returns the digest of `component` as 64 hexadecimal digits: the SHA-256
/// of the component without its embedded signature. It identifies the
/// plugin's code and does not change when a signature is embedded.
///
/// # Errors
///
/// [`FormatError`] when `component` is not a WebAssembly binary or its
/// sections are malformed.
pub fn digest(component: &[u8]) -> Result<String, FormatError> {
    let unsigned = section::locate(component)?.unsigned;
    Ok(hex::encode(sha256(unsigned)))
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Returns the message that a signature covers: the prefix and the digest.
pub(crate) fn signed_message(digest: &[u8; 32]) -> Vec<u8> {
    [MESSAGE_PREFIX, digest.as_slice()].concat()
}

fn parse_digest(text: &str) -> Result<[u8; 32], FormatError> {
    let invalid = || {
        FormatError::malformed(format!(
            "`digest` {text:?} is not `sha256:` followed by 64 hexadecimal digits"
        ))
    };
    let encoded = text.strip_prefix(DIGEST_PREFIX).ok_or_else(invalid)?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(encoded, &mut digest).map_err(|_| invalid())?;
    Ok(digest)
}

fn parse_signature_bytes(text: &str) -> Result<ed25519_dalek::Signature, FormatError> {
    let invalid = |problem: String| {
        FormatError::malformed(format!(
            "`signature` is not the base64 of a 64-byte Ed25519 signature: {problem}"
        ))
    };
    let bytes = BASE64
        .decode(text)
        .map_err(|error| invalid(error.to_string()))?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| invalid(format!("it has {} bytes", bytes.len())))?;
    Ok(ed25519_dalek::Signature::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{module, test_key};

    #[test]
    fn document_has_the_fixed_shape() {
        let key = test_key();
        let signature = sign(&module(), &key).unwrap();
        let json = signature.to_json();
        let expected_start = format!(
            "{{\"format\":\"palisade-signature-v1\",\"key_id\":\"{}\",\"digest\":\"sha256:{}\",\"signature\":\"",
            key.key_id(),
            digest(&module()).unwrap()
        );
        assert!(json.starts_with(&expected_start), "{json}");
        assert!(json.ends_with("\"}"), "{json}");
        assert_eq!(
            Signature::from_json(&format!("{json}\n")).unwrap(),
            signature
        );
    }

    #[test]
    fn signed_message_is_prefix_and_digest() {
        let digest = [0xab; 32];
        let message = signed_message(&digest);
        assert_eq!(message.len(), 19 + 32);
        assert!(message.starts_with(b"palisade-plugin-v1\0"));
        assert!(message.ends_with(&digest));
    }

    #[test]
    fn embedding_keeps_the_digest() {
        let key = test_key();
        let component = module();
        let signature = sign(&component, &key).unwrap();
        let signed = embed(&component, &signature).unwrap();
        assert_ne!(signed, component);
        assert_eq!(digest(&signed).unwrap(), digest(&component).unwrap());
        assert_eq!(signature.digest(), digest(&component).unwrap());
        let (unsigned, embedded) = split(&signed).unwrap();
        assert_eq!(unsigned, component);
        assert_eq!(embedded, Some(signature.clone()));
        // Signing the signed file signs the same code.
        assert_eq!(sign(&signed, &key).unwrap(), signature);
    }

    #[test]
    fn bad_documents_are_malformed() {
        let key = test_key();
        let good: serde_json::Value =
            serde_json::from_str(&sign(&module(), &key).unwrap().to_json()).unwrap();
        let cases = [
            (
                "format",
                serde_json::json!("palisade-signature-v2"),
                "not supported",
            ),
            ("key_id", serde_json::json!("ABCDEF0123456789"), "key_id"),
            ("key_id", serde_json::json!("abc"), "key_id"),
            ("digest", serde_json::json!("md5:00"), "digest"),
            ("digest", serde_json::json!("sha256:zz"), "digest"),
            ("signature", serde_json::json!("AAAA"), "it has 3 bytes"),
            ("signature", serde_json::json!("%%%"), "signature"),
            ("extra", serde_json::json!(1), "unknown field"),
        ];
        for (field, value, expected) in cases {
            let mut document = good.clone();
            document[field] = value;
            let error = Signature::from_json(&document.to_string()).unwrap_err();
            assert!(error.to_string().contains(expected), "{field}: {error}");
        }
        let error = Signature::from_json("not json").unwrap_err();
        assert!(matches!(error, FormatError::Malformed { .. }), "{error}");
    }

    #[test]
    fn embedded_payload_must_be_a_document() {
        let component = module();
        let signed = section::append_signature(&component, b"\xff\xfe").unwrap();
        let error = split(&signed).unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
        // Signing and embedding replace a broken signature.
        let key = test_key();
        let signature = sign(&signed, &key).unwrap();
        let repaired = embed(&signed, &signature).unwrap();
        assert_eq!(split(&repaired).unwrap().1, Some(signature));
    }
}
