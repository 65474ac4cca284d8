//! Signed webhooks: `POST /v1/webhooks/{source}` takes alert batches from
//! a sender that shares a secret with the daemon instead of holding an API
//! token.
//!
//! The sender puts the time in `X-Palisade-Timestamp` (unix seconds) and
//! `sha256=` followed by the hex HMAC-SHA256 of `TIMESTAMP.BODY` under the
//! secret in `X-Palisade-Signature`. The daemon accepts the request when
//! the timestamp is within five minutes of its clock and the MAC matches,
//! compared in constant time. The secret is `[secrets.NAME]`, named by
//! `[api.webhooks.SOURCE] secret = "NAME"`, and is read at each request.
//!
//! NOTE: a request captured in transit can be sent again within the five
//! minutes. Alerts are deduplicated by content, so a replayed batch adds
//! no alert; a replay cache keyed by signature would also reject it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use palisade_runtime::SecretSource;
use sha2::Sha256;

use crate::api_config::ApiConfig;
use crate::api_error::{ApiError, ErrorCode};

pub const SIGNATURE_HEADER: &str = "x-palisade-signature";
pub const TIMESTAMP_HEADER: &str = "x-palisade-timestamp";

/// Maximum distance between a request's timestamp and the daemon's clock,
/// in seconds, in either direction.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

const SIGNATURE_PREFIX: &str = "sha256=";

type HmacSha256 = Hmac<Sha256>;

/// Returns the `X-Palisade-Signature` value for `body` sent at
/// `timestamp` (the `X-Palisade-Timestamp` text) under `secret`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Reason for rejecting a signed request.
#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// A header is absent; the name is the header's.
    Missing(&'static str),
    /// The timestamp is not a whole number of seconds.
    MalformedTimestamp(String),
    /// The timestamp is this many seconds from now, over the limit.
    Stale(i64),
    /// The signature is not `sha256=` and 64 hexadecimal digits.
    MalformedSignature,
    /// The MAC does not match.
    Mismatch,
}

impl SignatureError {
    fn into_api_error(self, source: &str) -> ApiError {
        match self {
            SignatureError::Missing(header) => ApiError::new(
                ErrorCode::SignatureMissing,
                format!(
                    "the request has no `{header}` header; webhook {source:?} takes only requests signed with `{TIMESTAMP_HEADER}` and `{SIGNATURE_HEADER}`"
                ),
            ),
            SignatureError::MalformedTimestamp(value) => ApiError::new(
                ErrorCode::TimestampInvalid,
                format!(
                    "`{TIMESTAMP_HEADER}` is {value:?}, not a whole number of seconds since 1970-01-01 UTC"
                ),
            ),
            SignatureError::Stale(seconds) => ApiError::new(
                ErrorCode::TimestampInvalid,
                format!(
                    "`{TIMESTAMP_HEADER}` is {seconds} seconds away from the daemon's clock, over the limit of {MAX_CLOCK_SKEW_SECONDS}; sign each request when sending it, and check that both clocks are right"
                ),
            ),
            SignatureError::MalformedSignature => ApiError::new(
                ErrorCode::SignatureMismatch,
                format!(
                    "`{SIGNATURE_HEADER}` is not `{SIGNATURE_PREFIX}` followed by 64 hexadecimal digits"
                ),
            ),
            SignatureError::Mismatch => ApiError::new(
                ErrorCode::SignatureMismatch,
                format!(
                    "`{SIGNATURE_HEADER}` does not match the request: it must be the HMAC-SHA256 of `TIMESTAMP.BODY` under the secret of webhook {source:?}; check the secret, and that the body and timestamp are sent exactly as signed"
                ),
            ),
        }
    }
}

/// Checks the headers of a signed request against `secret` at time `now`
/// (unix seconds).
pub fn check_signature(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.ok_or(SignatureError::Missing(TIMESTAMP_HEADER))?;
    let signature = signature.ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::MalformedTimestamp(timestamp.to_string()))?;
    let skew = now.saturating_sub(seconds).saturating_abs();
    if skew > MAX_CLOCK_SKEW_SECONDS {
        return Err(SignatureError::Stale(skew));
    }
    let expected = signature
        .trim()
        .strip_prefix(SIGNATURE_PREFIX)
        .and_then(|digits| hex::decode(digits).ok())
        .filter(|bytes| bytes.len() == 32)
        .ok_or(SignatureError::MalformedSignature)?;
    mac(secret, timestamp, body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The configured webhooks and the secrets they check signatures with.
pub struct Webhooks {
    /// Secret name by source.
    sources: BTreeMap<String, String>,
    secrets: Arc<dyn SecretSource>,
}

impl Webhooks {
    pub fn new(config: &ApiConfig, secrets: Arc<dyn SecretSource>) -> Self {
        let sources = config
            .webhooks
            .iter()
            .map(|(source, webhook)| (source.clone(), webhook.secret.clone()))
            .collect();
        Self { sources, secrets }
    }

    /// Checks that webhook `source` is configured and that the request is
    /// signed with its secret within the time limit. An unknown source is
    /// 404, so a webhook that is not configured looks like no route.
    pub fn verify(
        &self,
        source: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), ApiError> {
        let Some(secret_name) = self.sources.get(source) else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "no webhook {source:?} is configured; the operator adds `[api.webhooks.{source}]` to palisade.toml"
                ),
            ));
        };
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let timestamp = header(TIMESTAMP_HEADER);
        let signature = header(SIGNATURE_HEADER);
        // The headers are checked before the secret is read, so an
        // unsigned request never touches the secret's source.
        if timestamp.is_none() || signature.is_none() {
            let error = check_signature(&[], timestamp, signature, body, now).unwrap_err();
            tracing::debug!(webhook = %source, reason = ?error, "webhook request rejected");
            return Err(error.into_api_error(source));
        }
        let Some(secret) = self.secrets.secret(secret_name) else {
            tracing::warn!(webhook = %source, secret.name = %secret_name, "webhook secret has no value; its requests are rejected");
            return Err(ApiError::new(
                ErrorCode::WebhookUnavailable,
                format!(
                    "webhook {source:?} cannot check signatures because its secret has no value; the operator must set the source of `[secrets.{secret_name}]`"
                ),
            ));
        };
        check_signature(secret.expose().as_bytes(), timestamp, signature, body, now).map_err(
            |error| {
                tracing::debug!(webhook = %source, reason = ?error, "webhook request rejected");
                error.into_api_error(source)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"webhook-secret";
    const NOW: i64 = 1_700_000_000;

    fn check(
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        check_signature(SECRET, timestamp, signature, body, NOW)
    }

    #[test]
    fn good_signature_is_accepted() {
        let timestamp = NOW.to_string();
        let signature = sign(SECRET, &timestamp, b"{}");
        assert_eq!(check(Some(&timestamp), Some(&signature), b"{}"), Ok(()));
        let early = (NOW - MAX_CLOCK_SKEW_SECONDS).to_string();
        let signature = sign(SECRET, &early, b"{}");
        assert_eq!(check(Some(&early), Some(&signature), b"{}"), Ok(()));
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let timestamp = NOW.to_string();
        let signature = sign(SECRET, &timestamp, b"{\"a\":1}");
        assert_eq!(
            check(Some(&timestamp), Some(&signature), b"{\"a\":2}"),
            Err(SignatureError::Mismatch),
            "changed body"
        );
        let other = sign(b"other-secret", &timestamp, b"{\"a\":1}");
        assert_eq!(
            check(Some(&timestamp), Some(&other), b"{\"a\":1}"),
            Err(SignatureError::Mismatch),
            "wrong secret"
        );
        let later = (NOW + 1).to_string();
        assert_eq!(
            check(Some(&later), Some(&signature), b"{\"a\":1}"),
            Err(SignatureError::Mismatch),
            "timestamp not the signed one"
        );

        for stale in [
            NOW - MAX_CLOCK_SKEW_SECONDS - 1,
            NOW + MAX_CLOCK_SKEW_SECONDS + 1,
        ] {
            let stale = stale.to_string();
            let signature = sign(SECRET, &stale, b"{}");
            assert_eq!(
                check(Some(&stale), Some(&signature), b"{}"),
                Err(SignatureError::Stale(MAX_CLOCK_SKEW_SECONDS + 1)),
                "{stale}"
            );
        }

        assert_eq!(
            check(None, Some(&signature), b"{}"),
            Err(SignatureError::Missing(TIMESTAMP_HEADER))
        );
        assert_eq!(
            check(Some(&timestamp), None, b"{}"),
            Err(SignatureError::Missing(SIGNATURE_HEADER))
        );
        assert_eq!(
            check(Some("soon"), Some(&signature), b"{}"),
            Err(SignatureError::MalformedTimestamp("soon".into()))
        );

        for malformed in ["abc", "sha256=zz", "sha1=00", "sha256=abcd"] {
            assert_eq!(
                check(Some(&timestamp), Some(malformed), b"{}"),
                Err(SignatureError::MalformedSignature),
                "{malformed}"
            );
        }
    }

    #[test]
    fn messages_differ_by_failure() {
        let messages: Vec<String> = [
            SignatureError::Missing(SIGNATURE_HEADER),
            SignatureError::Stale(400),
            SignatureError::Mismatch,
        ]
        .into_iter()
        .map(|error| error.into_api_error("wazuh").message)
        .collect();
        assert!(
            messages[0].contains("no `x-palisade-signature` header"),
            "{}",
            messages[0]
        );
        assert!(messages[1].contains("400 seconds"), "{}", messages[1]);
        assert!(messages[2].contains("does not match"), "{}", messages[2]);
    }
}
