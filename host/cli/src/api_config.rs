//! `[api]` of palisade.toml: tokens managed outside Palisade, TLS, and
//! webhooks that authenticate with an HMAC signature.
//!
//! ```toml
//! [[api.tokens]]
//! name = "soc-portal"
//! role = "analyst"
//! sha256 = "64 hexadecimal digits: the SHA-256 of the token"
//!
//! [api.tls]
//! cert = "tls/cert.pem"   # certificate chain, leaf first
//! key = "tls/key.pem"     # PKCS#8, PKCS#1 or SEC1 private key
//!
//! [api.webhooks.wazuh]
//! secret = "wazuh-webhook"   # a [secrets.NAME] entry
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::{Role, check_token_name};
use crate::config::SecretConfig;

/// `[api]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Tokens whose hash the operator manages in this file. The API cannot
    /// create or revoke them.
    #[serde(default)]
    pub tokens: Vec<ConfiguredToken>,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Webhooks by source name, for `POST /v1/webhooks/{source}`.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookConfig>,
}

/// One `[[api.tokens]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfiguredToken {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token, as 64 hexadecimal digits. `palisade token
    /// create` prints tokens; `printf %s TOKEN | sha256sum` hashes one.
    pub sha256: String,
}

/// `[api.tls]`: PEM files, relative to palisade.toml.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// Private key of the server's certificate.
    pub key: PathBuf,
}

/// `[api.webhooks.SOURCE]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Name of the `[secrets.NAME]` entry whose value is the HMAC key.
    pub secret: String,
}

impl ApiConfig {
    /// Checks the tokens and that every webhook names a configured secret.
    /// Messages name the entry and the fix.
    pub fn check(&self, secrets: &BTreeMap<String, SecretConfig>) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for token in &self.tokens {
            check_token_name(&token.name).map_err(|error| format!("`[[api.tokens]]`: {error}"))?;
            if !names.insert(token.name.as_str()) {
                return Err(format!(
                    "`[[api.tokens]]` names {:?} twice; give each token its own name",
                    token.name
                ));
            }
            let digits =
                token.sha256.len() == 64 && token.sha256.chars().all(|c| c.is_ascii_hexdigit());
            if !digits {
                return Err(format!(
                    "`[[api.tokens]]` {:?}: `sha256` must be 64 hexadecimal digits, the SHA-256 of the token (`printf %s TOKEN | sha256sum`)",
                    token.name
                ));
            }
        }
        for (source, webhook) in &self.webhooks {
            if !secrets.contains_key(&webhook.secret) {
                return Err(format!(
                    "`[api.webhooks.{source}]` names secret {:?}, which has no `[secrets.{}]` entry; add one with its source (`env`, `file` or `stored = true`)",
                    webhook.secret, webhook.secret
                ));
            }
        }
        Ok(())
    }

    /// Returns the configured tokens with their hashes in lowercase, the
    /// form the token registry compares.
    pub fn tokens(&self) -> Vec<ConfiguredToken> {
        self.tokens
            .iter()
            .map(|token| ConfiguredToken {
                sha256: token.sha256.to_ascii_lowercase(),
                ..token.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|error| error.to_string())?;
        config.api.check(&config.secrets)?;
        Ok(config)
    }

    #[test]
    fn api_section_parses() {
        let text = format!(
            r#"
            [[api.tokens]]
            name = "portal"
            role = "ingest-only"
            sha256 = "{}"

            [api.tls]
            cert = "cert.pem"
            key = "key.pem"

            [secrets.wazuh-hook]
            env = "WAZUH_HOOK_SECRET"

            [api.webhooks.wazuh]
            secret = "wazuh-hook"
            "#,
            "AB".repeat(32)
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.api.tokens[0].role, Role::IngestOnly);
        assert_eq!(config.api.tokens()[0].sha256, "ab".repeat(32));
        assert_eq!(
            config.api.tls.unwrap().cert,
            std::path::Path::new("cert.pem")
        );
        assert_eq!(config.api.webhooks["wazuh"].secret, "wazuh-hook");
    }

    #[test]
    fn bad_api_entries_name_the_fix() {
        let hash = "ab".repeat(32);
        let cases = [
            (
                format!("[[api.tokens]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"{hash}\"\n"),
                "unknown variant `root`",
            ),
            (
                "[[api.tokens]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"abc\"\n".to_string(),
                "64 hexadecimal digits",
            ),
            (
                format!("[[api.tokens]]\nname = \"a b\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n"),
                "may contain only",
            ),
            (
                format!(
                    "[[api.tokens]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n[[api.tokens]]\nname = \"a\"\nrole = \"analyst\"\nsha256 = \"{hash}\"\n"
                ),
                "twice",
            ),
            (
                "[api.webhooks.wazuh]\nsecret = \"missing\"\n".to_string(),
                "no `[secrets.missing]` entry",
            ),
            (
                "[api.tls]\ncert = \"c.pem\"\n".to_string(),
                "missing field `key`",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
