//! The operator's configuration file, `palisade.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_runtime::{Grant, Policy, SecretSource, SecretValue};
use serde::Deserialize;

/// Default address of `palisade serve`: loopback only, so a fresh install is
/// not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// Source of a secret's value: an environment variable or a file
/// (whose content, trimmed, is the value). Exactly one must be set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
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
            if secret.env.is_some() == secret.file.is_some() {
                anyhow::bail!(
                    "secret {name:?} in {} must set exactly one of `env` or `file`",
                    path.display()
                );
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let secret_files = config.secrets.values_mut().filter_map(|s| s.file.as_mut());
        let cache_dir = config.cache_dir.as_mut();
        let dirs = [
            &mut config.data_dir,
            &mut config.plugins_dir,
            &mut config.playbooks_dir,
        ];
        for path in dirs.into_iter().chain(cache_dir).chain(secret_files) {
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
}

/// Secrets read, at each use, from the environment variables and files
/// named in the configuration. Values are never stored by Palisade.
pub struct ConfiguredSecrets {
    sources: BTreeMap<String, SecretConfig>,
}

impl ConfiguredSecrets {
    pub fn new(secrets: &BTreeMap<String, SecretConfig>) -> Self {
        Self {
            sources: secrets.clone(),
        }
    }
}

impl SecretSource for ConfiguredSecrets {
    fn secret(&self, name: &str) -> Option<SecretValue> {
        let source = self.sources.get(name)?;
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
    fn unknown_keys_are_rejected() {
        let error = toml::from_str::<Config>("[plugins.x]\nhttp_orgins = []\n").unwrap_err();
        assert!(error.to_string().contains("http_orgins"), "{error}");
    }
}
