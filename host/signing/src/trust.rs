//! The operator's list of trusted keys, and verification against it.

use crate::key::PublicKey;
use crate::section::{self, FormatError};
use crate::signature::{Signature, sha256, signed_message};

/// The keys whose signatures the operator accepts.
///
/// An empty list accepts no signature. Removing a key revokes every
/// signature it made.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// The trusted keys, in configuration order.
    pub keys: Vec<TrustedKey>,
}

/// One trusted key and the name it is shown under.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    /// The name shown in messages, such as the key file's stem.
    pub name: String,
    /// The public key.
    pub key: PublicKey,
}

/// A component whose signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The id of the key that signed it.
    pub key_id: String,
    /// The name of that key in the trust list.
    pub key_name: String,
    /// The component's digest as 64 hexadecimal digits (see
    /// [`crate::digest`]).
    pub digest: String,
}

/// Reason a component is rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// The component has no embedded signature and none was given.
    #[error(
        "the plugin has no signature; sign it with `palisade plugin sign`, or set `allow_unsigned = true` under `[trust]` for development only"
    )]
    Missing,
    /// The signing key is not in the trust list.
    #[error(
        "the plugin is signed by key {key_id}, which is not trusted; add the author's public key file to `[trust] keys` in the configuration"
    )]
    UnknownKey {
        /// The id of the signing key.
        key_id: String,
    },
    /// The signature does not verify with any trusted key of that id.
    #[error(
        "the signature by key {key_id} does not match the plugin: the component changed after signing, or another key with the same id made the signature; sign it again or reinstall the original file"
    )]
    BadSignature {
        /// The id of the signing key.
        key_id: String,
    },
    /// The signature verifies, but the document names another digest.
    #[error(
        "the signature document names digest sha256:{claimed}, but the plugin's digest is sha256:{actual}; the document was edited after signing, so sign the plugin again"
    )]
    DigestMismatch {
        /// The digest in the signature document.
        claimed: String,
        /// The digest of the component.
        actual: String,
    },
    /// The component's sections or the signature document are invalid.
    #[error("malformed plugin component or signature: {detail}")]
    Malformed {
        /// Description of the problem.
        detail: String,
    },
    /// The bytes are not a WebAssembly binary.
    #[error(
        "not a WebAssembly binary (it does not start with `\\0asm`); check that the path names a compiled `.wasm` component"
    )]
    NotWasm,
}

impl From<FormatError> for TrustError {
    fn from(error: FormatError) -> Self {
        match error {
            FormatError::NotWasm => Self::NotWasm,
            FormatError::Malformed { detail } => Self::Malformed { detail },
        }
    }
}

impl Trust {
    /// Checks that `component` is signed by a trusted key. `detached` is
    /// the text of a detached signature file; when given, it is the
    /// signature checked, and an embedded one is ignored. Otherwise the
    /// embedded signature is checked.
    ///
    /// The signature is checked against the digest of the component as it
    /// is, so a changed byte anywhere outside the signature section gives
    /// [`TrustError::BadSignature`].
    ///
    /// # Errors
    ///
    /// A [`TrustError`] naming the reason the component is rejected.
    pub fn verify(&self, component: &[u8], detached: Option<&str>) -> Result<Verified, TrustError> {
        let located = section::locate(component)?;
        let signature = match (detached, located.payload) {
            (Some(text), _) => Signature::from_json(text)?,
            (None, Some(payload)) => Signature::from_payload(payload)?,
            (None, None) => return Err(TrustError::Missing),
        };
        let key_id = signature.key_id().to_string();

        // A key id is 64 bits of a hash, so two trusted keys can share one,
        // by chance or on purpose. Each of them is tried.
        let mut candidates = self
            .keys
            .iter()
            .filter(|trusted| trusted.key.key_id() == key_id)
            .peekable();
        if candidates.peek().is_none() {
            return Err(TrustError::UnknownKey { key_id });
        }
        let digest = sha256(located.unsigned);
        let message = signed_message(&digest);
        let trusted = candidates
            .find(|trusted| trusted.key.verifies(&message, signature.signature_bytes()))
            .ok_or_else(|| TrustError::BadSignature {
                key_id: key_id.clone(),
            })?;

        if signature.digest_bytes() != &digest {
            return Err(TrustError::DigestMismatch {
                claimed: signature.digest(),
                actual: hex::encode(digest),
            });
        }
        Ok(Verified {
            key_id,
            key_name: trusted.name.clone(),
            digest: hex::encode(digest),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{component, module, section_starts, test_key};
    use crate::{SigningKey, embed, sign};

    fn trust(keys: &[(&str, &SigningKey)]) -> Trust {
        Trust {
            keys: keys
                .iter()
                .map(|(name, key)| TrustedKey {
                    name: name.to_string(),
                    key: key.public(),
                })
                .collect(),
        }
    }

    #[test]
    fn detached_signature_round_trips() {
        let key = test_key();
        let component = module();
        let signature = sign(&component, &key).unwrap();
        let verified = trust(&[("author", &key)])
            .verify(&component, Some(&signature.to_json()))
            .unwrap();
        assert_eq!(verified.key_id, key.key_id());
        assert_eq!(verified.key_name, "author");
        assert_eq!(verified.digest, crate::digest(&component).unwrap());
    }

    #[test]
    fn embedded_signature_round_trips() {
        let key = test_key();
        for component in [module(), component()] {
            let signed = embed(&component, &sign(&component, &key).unwrap()).unwrap();
            let verified = trust(&[("author", &key)]).verify(&signed, None).unwrap();
            assert_eq!(verified.key_name, "author");
            assert_eq!(verified.digest, crate::digest(&component).unwrap());
        }
    }

    #[test]
    fn detached_signature_wins_over_embedded() {
        let trusted = test_key();
        let other = test_key();
        let component = module();
        let signed = embed(&component, &sign(&component, &other).unwrap()).unwrap();
        let detached = sign(&component, &trusted).unwrap().to_json();
        let trust = trust(&[("author", &trusted)]);
        assert!(trust.verify(&signed, Some(&detached)).is_ok());
        assert_eq!(
            trust.verify(&signed, None).unwrap_err(),
            TrustError::UnknownKey {
                key_id: other.key_id()
            }
        );
    }

    #[test]
    fn flipped_code_byte_is_bad_signature() {
        let key = test_key();
        let component = module();
        let signed = embed(&component, &sign(&component, &key).unwrap()).unwrap();
        let detached = sign(&component, &key).unwrap().to_json();
        let trust = trust(&[("author", &key)]);
        // The constant of `i32.const` and the instruction after it, both
        // in the code section at the end of `module()`.
        for index in [component.len() - 3, component.len() - 2] {
            let mut changed = signed.clone();
            changed[index] ^= 0x01;
            let mut changed_unsigned = component.clone();
            changed_unsigned[index] ^= 0x01;
            let expected = TrustError::BadSignature {
                key_id: key.key_id(),
            };
            assert_eq!(
                trust.verify(&changed, None).unwrap_err(),
                expected,
                "byte {index}"
            );
            assert_eq!(
                trust
                    .verify(&changed_unsigned, Some(&detached))
                    .unwrap_err(),
                expected,
                "byte {index}, detached"
            );
        }
    }

    #[test]
    fn flipped_signature_byte_is_bad_signature() {
        let key = test_key();
        let component = module();
        let json = sign(&component, &key).unwrap().to_json();
        let mut document: serde_json::Value = serde_json::from_str(&json).unwrap();
        let encoded = document["signature"].as_str().unwrap();
        let mut bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded).unwrap();
        bytes[10] ^= 0x80;
        document["signature"] =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes).into();
        let error = trust(&[("author", &key)])
            .verify(&component, Some(&document.to_string()))
            .unwrap_err();
        assert_eq!(
            error,
            TrustError::BadSignature {
                key_id: key.key_id()
            }
        );
    }

    #[test]
    fn edited_digest_field_is_digest_mismatch() {
        let key = test_key();
        let component = module();
        let json = sign(&component, &key).unwrap().to_json();
        let mut document: serde_json::Value = serde_json::from_str(&json).unwrap();
        document["digest"] = format!("sha256:{}", "0".repeat(64)).into();
        let error = trust(&[("author", &key)])
            .verify(&component, Some(&document.to_string()))
            .unwrap_err();
        assert!(
            matches!(error, TrustError::DigestMismatch { .. }),
            "{error}"
        );
    }

    #[test]
    fn untrusted_key_is_unknown_key() {
        let trusted = test_key();
        let other = test_key();
        let component = module();
        let signed = embed(&component, &sign(&component, &other).unwrap()).unwrap();
        let error = trust(&[("a", &trusted)]).verify(&signed, None).unwrap_err();
        assert_eq!(
            error,
            TrustError::UnknownKey {
                key_id: other.key_id()
            }
        );
        let message = error.to_string();
        assert!(message.contains(&other.key_id()), "{message}");
        assert!(message.contains("[trust] keys"), "{message}");
        let empty = Trust::default().verify(&signed, None).unwrap_err();
        assert!(matches!(empty, TrustError::UnknownKey { .. }), "{empty}");
    }

    #[test]
    fn unsigned_component_is_missing() {
        let key = test_key();
        let error = trust(&[("a", &key)]).verify(&module(), None).unwrap_err();
        assert_eq!(error, TrustError::Missing);
        assert!(error.to_string().contains("allow_unsigned"), "{error}");
    }

    #[test]
    fn verify_finds_the_signer_among_several_keys() {
        let signer = test_key();
        let other = test_key();
        let component = module();
        let signature = sign(&component, &signer).unwrap();
        let trust = trust(&[("other", &other), ("signer", &signer)]);
        let verified = trust
            .verify(&component, Some(&signature.to_json()))
            .unwrap();
        assert_eq!(verified.key_name, "signer");
    }

    #[test]
    fn re_embedding_replaces_the_signature() {
        let first = test_key();
        let second = test_key();
        let component = module();
        let once = embed(&component, &sign(&component, &first).unwrap()).unwrap();
        let twice = embed(&once, &sign(&once, &second).unwrap()).unwrap();
        let (unsigned, signature) = crate::split(&twice).unwrap();
        assert_eq!(unsigned, component);
        assert_eq!(signature.unwrap().key_id(), second.key_id());
        let trust = trust(&[("second", &second)]);
        assert_eq!(trust.verify(&twice, None).unwrap().key_name, "second");
        assert_eq!(
            section_starts(&twice).len(),
            section_starts(&component).len() + 1,
            "one signature section"
        );
    }

    #[test]
    fn signature_section_must_be_last_and_single() {
        let key = test_key();
        let component = module();
        let signed = embed(&component, &sign(&component, &key).unwrap()).unwrap();

        // A section after the signature.
        let mut trailing = signed.clone();
        trailing.extend_from_slice(&[0x00, 0x02, 0x01, b'x']);
        let error = trust(&[("a", &key)]).verify(&trailing, None).unwrap_err();
        assert!(error.to_string().contains("follows"), "{error}");

        // Two signature sections: the raw section appended again.
        let section = signed[component.len()..].to_vec();
        let mut doubled = signed.clone();
        doubled.extend_from_slice(&section);
        let error = trust(&[("a", &key)]).verify(&doubled, None).unwrap_err();
        assert!(error.to_string().contains("second"), "{error}");
        assert!(matches!(error, TrustError::Malformed { .. }), "{error}");
        assert!(crate::embed(&doubled, &sign(&component, &key).unwrap()).is_err());
    }

    #[test]
    fn not_wasm_is_rejected() {
        let key = test_key();
        let error = trust(&[("a", &key)])
            .verify(b"#!/bin/sh\necho hi\n", None)
            .unwrap_err();
        assert_eq!(error, TrustError::NotWasm);
    }

    #[test]
    fn truncations_are_errors_not_panics() {
        let key = test_key();
        let trust = trust(&[("a", &key)]);
        for component in [module(), component()] {
            let signed = embed(&component, &sign(&component, &key).unwrap()).unwrap();
            // Each section starts where the one before ends, and the
            // signature section starts at the end of the unsigned file.
            let boundaries = section_starts(&component);
            for length in 0..signed.len() {
                let cut = &signed[..length];
                let result = trust.verify(cut, None);
                if boundaries.contains(&length) {
                    // A cut between sections is a shorter valid binary
                    // without the signature.
                    assert_eq!(result.unwrap_err(), TrustError::Missing, "length {length}");
                } else {
                    assert!(
                        matches!(
                            result,
                            Err(TrustError::Malformed { .. } | TrustError::NotWasm)
                        ),
                        "length {length}: {result:?}"
                    );
                    assert!(crate::digest(cut).is_err(), "length {length}");
                    assert!(crate::split(cut).is_err(), "length {length}");
                }
            }
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        let key = test_key();
        let trust = trust(&[("a", &key)]);
        let signed = embed(&component(), &sign(&component(), &key).unwrap()).unwrap();
        // A fixed xorshift sequence, so a failure repeats exactly.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2_000 {
            let mut bytes = signed.clone();
            for _ in 0..(next() % 4 + 1) {
                let index = (next() as usize) % bytes.len();
                bytes[index] = next() as u8;
            }
            let length = (next() as usize) % (bytes.len() + 1);
            bytes.truncate(length);
            let result = trust.verify(&bytes, None);
            if let Ok(verified) = &result {
                // Only a mutation that left the code unchanged verifies,
                // such as a digest field spelled in capitals.
                let (unsigned, _) = crate::split(&bytes).unwrap();
                assert_eq!(unsigned, component(), "round {round}: {verified:?}");
            }
            let _ = crate::split(&bytes);
            let _ = crate::digest(&bytes);
        }
    }
}
