//! The operator's configuration file, `palisade.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palisade_model::{DURATION_FORMS, Severity, SlaPolicy, parse_duration};
use palisade_runtime::{Grant, Policy, SecretSource, SecretValue};
use palisade_signing::{KeyError, PublicKey, Trust, TrustedKey};
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
    #[serde(default)]
    pub sla: SlaConfig,
    #[serde(default)]
    pub correlation: CorrelationConfig,
    #[serde(default)]
    pub trust: TrustConfig,
    /// `[api]`: tokens, TLS and webhooks of the HTTP API.
    #[serde(default)]
    pub api: crate::api_config::ApiConfig,
}

/// A duration as written in the file: text such as `"15m"`, or the number
/// `0`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum DurationSetting {
    Text(String),
    Number(i64),
}

impl DurationSetting {
    /// Parses the setting at `key`, where `none` means no duration.
    fn parse(&self, key: &str) -> Result<Option<Duration>, String> {
        let text = match self {
            Self::Text(text) if text.trim() == "none" => return Ok(None),
            Self::Text(text) => text.as_str(),
            Self::Number(0) => "0",
            Self::Number(number) => {
                return Err(format!(
                    "`{key}` = {number} has no unit; write {DURATION_FORMS} as a string"
                ));
            }
        };
        parse_duration(text)
            .map(Some)
            .map_err(|error| format!("`{key}`: {error}"))
    }
}

/// `[sla]`: deadlines to acknowledge and resolve cases, by severity,
/// counted from when a case opens. A severity or a deadline left out keeps
/// its default (see [`SlaPolicy::default`]), and `"none"` sets no deadline.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaConfig {
    pub critical: Option<SlaDeadlines>,
    pub high: Option<SlaDeadlines>,
    pub medium: Option<SlaDeadlines>,
    pub low: Option<SlaDeadlines>,
    pub informational: Option<SlaDeadlines>,
}

/// Deadlines of one severity in `[sla.SEVERITY]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaDeadlines {
    pub acknowledge: Option<DurationSetting>,
    pub resolve: Option<DurationSetting>,
}

impl SlaConfig {
    /// Builds the policy: the defaults, with the configured deadlines in
    /// their place. A deadline of zero is rejected, because every case
    /// would miss it.
    pub fn policy(&self) -> Result<SlaPolicy, String> {
        let mut policy = SlaPolicy::default();
        let entries = [
            (Severity::Critical, &self.critical),
            (Severity::High, &self.high),
            (Severity::Medium, &self.medium),
            (Severity::Low, &self.low),
            (Severity::Informational, &self.informational),
        ];
        for (severity, entry) in entries {
            let Some(entry) = entry else { continue };
            let mut target = policy.target(severity);
            let fields = [
                ("acknowledge", &entry.acknowledge, &mut target.acknowledge),
                ("resolve", &entry.resolve, &mut target.resolve),
            ];
            for (field, setting, slot) in fields {
                let Some(setting) = setting else { continue };
                let key = format!("sla.{}.{field}", severity.as_str());
                let deadline = setting.parse(&key)?;
                if deadline == Some(Duration::ZERO) {
                    return Err(format!(
                        "`{key}` is zero, so every case would miss it; write a duration such as 4h, or \"none\" for no deadline"
                    ));
                }
                *slot = deadline;
            }
            policy.set(severity, target);
        }
        Ok(policy)
    }
}

/// `[correlation]`: the rule by which alerts with different fingerprints
/// join one case.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationConfig {
    /// Maximum distance in event time between an alert and the last alert
    /// with a shared correlation key for the two to join one case. The
    /// default is one hour, and `0` groups alerts by fingerprint only.
    pub window: Option<DurationSetting>,
}

/// `[trust]`: the keys whose plugin signatures the host accepts.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Public key files (`palisade-ed25519-public:...`), relative to the
    /// configuration file. A key's name in messages is its file stem.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// Accept plugins without a signature, for development only, since any
    /// component in `plugins_dir` then runs, from any author. This waives
    /// only [`palisade_signing::TrustError::Missing`]: a signature that is
    /// present must still verify.
    #[serde(default)]
    pub allow_unsigned: bool,
}

/// Correlation window when `[correlation] window` is not set.
pub const DEFAULT_CORRELATION_WINDOW: Duration = Duration::from_secs(3600);

impl CorrelationConfig {
    pub fn window(&self) -> Result<Duration, String> {
        let Some(setting) = &self.window else {
            return Ok(DEFAULT_CORRELATION_WINDOW);
        };
        setting.parse("correlation.window")?.ok_or_else(|| {
            "`correlation.window` cannot be \"none\"; write 0 to group alerts by fingerprint only"
                .to_string()
        })
    }
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
            sla: SlaConfig::default(),
            correlation: CorrelationConfig::default(),
            trust: TrustConfig::default(),
            api: crate::api_config::ApiConfig::default(),
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
        config.sla.policy().map_err(|error| {
            anyhow::anyhow!("invalid configuration file {}: {error}", path.display())
        })?;
        config.correlation.window().map_err(|error| {
            anyhow::anyhow!("invalid configuration file {}: {error}", path.display())
        })?;
        config.api.check(&config.secrets).map_err(|error| {
            anyhow::anyhow!("invalid configuration file {}: {error}", path.display())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let secret_files = config.secrets.values_mut().filter_map(|s| s.file.as_mut());
        let cache_dir = config.cache_dir.as_mut();
        let key_file = config.secret_key_file.as_mut();
        let trusted_keys = config.trust.keys.iter_mut();
        let tls_files = config
            .api
            .tls
            .iter_mut()
            .flat_map(|tls| [&mut tls.cert, &mut tls.key]);
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
            .chain(trusted_keys)
            .chain(tls_files)
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

    /// Returns the directory of installed plugin versions, under the data
    /// directory.
    pub fn plugin_store_dir(&self) -> PathBuf {
        self.data_dir.join("plugins")
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

    /// Reads the public key files of `[trust] keys`. Each key is named
    /// after its file stem.
    pub fn trust(&self) -> anyhow::Result<Trust> {
        let mut keys = Vec::with_capacity(self.trust.keys.len());
        for path in &self.trust.keys {
            let key = PublicKey::read_file(path).map_err(|error| match &error {
                KeyError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    anyhow::anyhow!(
                        "trusted key file {} in `[trust] keys` does not exist; `cargo xtask build-plugins` creates the development key, or fix the path",
                        path.display()
                    )
                }
                _ => anyhow::Error::new(error).context("cannot load `[trust] keys`"),
            })?;
            let name = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            keys.push(TrustedKey { name, key });
        }
        Ok(Trust { keys })
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

    fn load_text(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path))
    }

    #[test]
    fn sla_overrides_keep_other_defaults() {
        let config = load_text(
            "[sla.high]\nacknowledge = \"30m\"\n[sla.informational]\nresolve = \"2d\"\n[sla.low]\nresolve = \"none\"\n",
        )
        .unwrap();
        let policy = config.sla.policy().unwrap();
        let high = policy.target(Severity::High);
        assert_eq!(high.acknowledge, Some(Duration::from_secs(1800)));
        assert_eq!(
            high.resolve,
            Some(Duration::from_secs(86_400)),
            "default kept"
        );
        let informational = policy.target(Severity::Informational);
        assert_eq!(informational.acknowledge, None);
        assert_eq!(informational.resolve, Some(Duration::from_secs(172_800)));
        assert_eq!(policy.target(Severity::Low).resolve, None);
        assert_eq!(
            policy.target(Severity::Critical),
            SlaPolicy::default().target(Severity::Critical)
        );
    }

    #[test]
    fn bad_sla_values_name_key_and_form() {
        let cases = [
            (
                "[sla.high]\nacknowledge = \"4 h\"\n",
                "sla.high.acknowledge",
                "such as 30s",
            ),
            (
                "[sla.critical]\nresolve = \"1w\"\n",
                "sla.critical.resolve",
                "ms, s, m, h or d",
            ),
            (
                "[sla.low]\nresolve = 15\n",
                "sla.low.resolve",
                "has no unit",
            ),
            (
                "[sla.medium]\nacknowledge = \"0\"\n",
                "sla.medium.acknowledge",
                "every case would miss it",
            ),
        ];
        for (text, key, form) in cases {
            let error = format!("{:#}", load_text(text).unwrap_err());
            assert!(error.contains(key), "{text}: {error}");
            assert!(error.contains(form), "{text}: {error}");
        }
        let error = format!(
            "{:#}",
            load_text("[sla.urgent]\nresolve = \"1h\"\n").unwrap_err()
        );
        assert!(error.contains("urgent"), "{error}");
    }

    #[test]
    fn correlation_window_defaults_and_switches_off() {
        assert_eq!(
            Config::default().correlation.window().unwrap(),
            DEFAULT_CORRELATION_WINDOW
        );
        for (text, expected) in [
            ("window = \"30m\"", Duration::from_secs(1800)),
            ("window = \"0\"", Duration::ZERO),
            ("window = 0", Duration::ZERO),
        ] {
            let config = load_text(&format!("[correlation]\n{text}\n")).unwrap();
            assert_eq!(config.correlation.window().unwrap(), expected, "{text}");
        }
        let error = format!(
            "{:#}",
            load_text("[correlation]\nwindow = \"soon\"\n").unwrap_err()
        );
        assert!(error.contains("correlation.window"), "{error}");
        assert!(error.contains("\"soon\""), "{error}");
    }

    #[test]
    fn trust_keys_load_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public_path) =
            palisade_signing::write_key_pair(&dir.path().join("keys"), "acme").unwrap();
        let path = dir.path().join("palisade.toml");
        std::fs::write(&path, "[trust]\nkeys = [\"keys/acme.pub\"]\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.trust.keys, std::slice::from_ref(&public_path));
        assert!(
            !config.trust.allow_unsigned,
            "unsigned plugins are rejected by default"
        );

        let trust = config.trust().unwrap();
        assert_eq!(trust.keys.len(), 1);
        assert_eq!(trust.keys[0].name, "acme");
        assert_eq!(
            trust.keys[0].key,
            palisade_signing::PublicKey::read_file(&public_path).unwrap()
        );
        assert!(Config::default().trust().unwrap().keys.is_empty());
    }

    #[test]
    fn trust_key_errors_name_the_file_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.toml");
        std::fs::write(&path, "[trust]\nkeys = [\"missing.pub\"]\n").unwrap();
        let error = format!(
            "{:#}",
            Config::load(Some(&path)).unwrap().trust().unwrap_err()
        );
        assert!(
            error.contains(&dir.path().join("missing.pub").display().to_string()),
            "{error}"
        );
        assert!(error.contains("cargo xtask build-plugins"), "{error}");

        let (secret_path, _) = palisade_signing::write_key_pair(dir.path(), "author").unwrap();
        std::fs::write(&path, "[trust]\nkeys = [\"author.key\"]\n").unwrap();
        let error = format!(
            "{:#}",
            Config::load(Some(&path)).unwrap().trust().unwrap_err()
        );
        assert!(
            error.contains(&secret_path.display().to_string()),
            "{error}"
        );
        assert!(error.contains("this is a secret key"), "{error}");
    }

    #[test]
    fn trust_section_parses_allow_unsigned_and_rejects_typos() {
        let config = load_text("[trust]\nallow_unsigned = true\n").unwrap();
        assert!(config.trust.allow_unsigned);
        assert!(config.trust.keys.is_empty());
        let error = format!("{:#}", load_text("[trust]\nkey = []\n").unwrap_err());
        assert!(error.contains("key"), "{error}");
        assert!(error.contains("unknown field"), "{error}");
    }
}
