//! The operator's configuration file, `palisade.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::Context;
use palisade_runtime::{Grant, Policy, SecretSource, SecretValue};
use palisade_store::Store;
use serde::Deserialize;

use crate::secrets::{MasterKey, StoredSecrets};

/// Default address of `palisade serve`: loopback only, so a fresh install is
/// not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// Source of a secret's value: an environment variable, a file (whose
/// content, trimmed, is the value), or the database, encrypted with the
/// secret key (`stored = true`). Exactly one must be set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub stored: bool,
}

/// The whole configuration file. Relative paths are relative to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_plugins_dir")]
    pub plugins_dir: PathBuf,
    #[serde(default = "default_playbooks_dir")]
    pub playbooks_dir: PathBuf,
    /// Directory of precompiled plugin artifacts; `data_dir/cache` when
    /// unset. It must be writable by the host only, since its files are
    /// loaded as native code.
    pub cache_dir: Option<PathBuf>,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File that contains the key of the stored secrets as 64 hexadecimal
    /// digits. The `PALISADE_SECRET_KEY` environment variable is the
    /// alternative, and setting both is an error.
    pub secret_key_file: Option<PathBuf>,
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretConfig>,
    /// Grants by plugin name. A plugin with no entry is granted nothing.
    #[serde(default)]
    pub plugins: BTreeMap<String, Grant>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("palisade-data")
}

fn default_plugins_dir() -> PathBuf {
    PathBuf::from("plugins/target/wasm32-wasip2/release")
}

fn default_playbooks_dir() -> PathBuf {
    PathBuf::from("playbooks")
}

fn default_listen() -> SocketAddr {
    // The constant is a valid socket address.
    DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!())
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            plugins_dir: default_plugins_dir(),
            playbooks_dir: default_playbooks_dir(),
            cache_dir: None,
            listen: default_listen(),
            secret_key_file: None,
            secrets: BTreeMap::new(),
            plugins: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Reads `path`, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid configuration file {}", path.display()))?;
        for (name, grant) in &config.plugins {
            Policy::new(grant.clone()).with_context(|| {
                format!("invalid grant for plugin {name:?} in {}", path.display())
            })?;
        }
        for (name, secret) in &config.secrets {
            let sources = [secret.env.is_some(), secret.file.is_some(), secret.stored];
            if sources.into_iter().filter(|&set| set).count() != 1 {
                anyhow::bail!(
                    "secret {name:?} in {} must set exactly one of `env`, `file` or `stored = true`",
                    path.display()
                );
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let secret_files = config.secrets.values_mut().filter_map(|s| s.file.as_mut());
        let cache_dir = config.cache_dir.as_mut();
        let key_file = config.secret_key_file.as_mut();
        let dirs = [
            &mut config.data_dir,
            &mut config.plugins_dir,
            &mut config.playbooks_dir,
        ];
        for path in dirs
            .into_iter()
            .chain(cache_dir)
            .chain(key_file)
            .chain(secret_files)
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(config)
    }

    /// Returns the directory of precompiled plugin artifacts.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }

    /// Returns the grant for plugin `name`: its entry, or nothing.
    pub fn grant(&self, name: &str) -> Grant {
        self.plugins.get(name).cloned().unwrap_or_default()
    }

    /// Returns whether secret `name` is configured with `stored = true`.
    pub fn is_stored_secret(&self, name: &str) -> bool {
        self.secrets.get(name).is_some_and(|secret| secret.stored)
    }

    /// Loads the secret key when a secret is `stored = true`, and fails
    /// with the fix when the key is missing or malformed. Returns `None`
    /// when no secret is stored.
    pub fn stored_secrets_key(&self) -> anyhow::Result<Option<MasterKey>> {
        let stored_names: Vec<&str> = self
            .secrets
            .iter()
            .filter(|(_, secret)| secret.stored)
            .map(|(name, _)| name.as_str())
            .collect();
        if stored_names.is_empty() {
            return Ok(None);
        }
        let key = MasterKey::require(self.secret_key_file.as_deref())
            .with_context(|| format!("stored secrets {stored_names:?} need the secret key"))?;
        Ok(Some(key))
    }
}

/// Secrets read at each use from the sources the configuration names:
/// environment variables and files, which Palisade never copies, and
/// encrypted records in the database.
pub struct ConfiguredSecrets {
    sources: BTreeMap<String, SecretConfig>,
    stored: Option<StoredSecrets>,
}

impl ConfiguredSecrets {
    /// Builds the sources of `config`. `key` decrypts the stored secrets
    /// in `store`; it comes from [`Config::stored_secrets_key`].
    pub fn new(config: &Config, key: Option<MasterKey>, store: Arc<dyn Store>) -> Self {
        Self {
            sources: config.secrets.clone(),
            stored: key.map(|key| StoredSecrets::new(key, store)),
        }
    }
}

impl SecretSource for ConfiguredSecrets {
    fn secret(&self, name: &str) -> Option<SecretValue> {
        let source = self.sources.get(name)?;
        if source.stored {
            return self.stored.as_ref()?.secret(name);
        }
        let value = match (&source.env, &source.file) {
            (Some(variable), None) => std::env::var(variable).ok()?,
            (None, Some(file)) => std::fs::read_to_string(file).ok()?.trim().to_string(),
            _ => return None,
        };
        (!value.is_empty()).then(|| SecretValue::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_from_toml() {
        let text = r#"
            [secrets.virustotal-api-key]
            env = "VT_API_KEY"

            [plugins.virustotal]
            http_origins = ["https://www.virustotal.com"]
            config = { base_url = "https://www.virustotal.com" }
            limits = { wall_ms = 3000 }

            [[plugins.virustotal.secrets]]
            name = "virustotal-api-key"
            origins = ["https://www.virustotal.com"]
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let grant = config.grant("virustotal");
        assert_eq!(grant.http_origins, ["https://www.virustotal.com"]);
        assert_eq!(grant.secrets[0].name, "virustotal-api-key");
        assert_eq!(grant.limits.wall_ms, 3000);
        assert_eq!(
            grant.limits.cpu_ms,
            palisade_runtime::Limits::default().cpu_ms
        );
        assert!(config.grant("unknown").http_origins.is_empty());
    }

    #[test]
    fn invalid_quota_names_plugin_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.toml");
        let text = r#"
            [plugins.virustotal]
            http_origins = ["https://www.virustotal.com"]

            [[plugins.virustotal.quotas]]
            rate = { requests = 0, per_seconds = 60 }
        "#;
        std::fs::write(&path, text).unwrap();
        let error = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(error.contains("\"virustotal\""), "{error}");
        assert!(error.contains("quotas[0].rate.requests"), "{error}");
    }

    #[test]
    fn quotas_parse_from_toml() {
        let text = r#"
            [plugins.virustotal]
            http_origins = ["https://www.virustotal.com"]

            [[plugins.virustotal.quotas]]
            origin = "https://www.virustotal.com"
            rate = { requests = 4, per_seconds = 60 }
            daily = 500
            on_exceed = "wait"
            max_wait_ms = 30000
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let grant = config.grant("virustotal");
        assert_eq!(grant.quotas.len(), 1);
        assert_eq!(grant.quotas[0].daily, Some(500));
        assert_eq!(grant.quotas[0].on_exceed, palisade_runtime::OnExceed::Wait);
        assert!(Policy::new(grant).is_ok());
    }

    #[test]
    fn secret_needs_exactly_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.toml");
        for source in [
            "",
            "stored = false",
            "env = \"A\"\nstored = true",
            "env = \"A\"\nfile = \"b\"",
        ] {
            std::fs::write(&path, format!("[secrets.vt]\n{source}\n")).unwrap();
            let error = format!("{:#}", Config::load(Some(&path)).unwrap_err());
            assert!(error.contains("exactly one of"), "{source}: {error}");
        }
        std::fs::write(
            &path,
            "secret_key_file = \"key\"\n[secrets.vt]\nstored = true\n",
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert!(config.is_stored_secret("vt"));
        assert_eq!(config.secret_key_file, Some(dir.path().join("key")));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let error = toml::from_str::<Config>("[plugins.x]\nhttp_orgins = []\n").unwrap_err();
        assert!(error.to_string().contains("http_orgins"), "{error}");
    }
}
