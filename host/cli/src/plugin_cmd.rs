//! `palisade plugin install|activate|rollback|history`: the registry
//! operations, on the database directly when no daemon runs, or through a
//! daemon's API with `--server`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use palisade_store::Store;

use crate::api_client::ApiClient;
use crate::config::Config;
use crate::host;
use crate::registry::{InstallReport, InstallRequest};

/// Installs the component at `file`, with `signature` (default
/// `FILE.sig` when present) as its detached signature.
pub async fn install(
    config: &Config,
    file: &Path,
    signature: Option<&Path>,
    stage: bool,
    client: Option<ApiClient>,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read plugin file {}", file.display()))?;
    let default_signature = palisade_signing::signature_path(file);
    let signature_file = signature.unwrap_or(&default_signature);
    let detached = match std::fs::read_to_string(signature_file) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && signature.is_none() => None,
        Err(error) => {
            anyhow::bail!(
                "cannot read signature file {}: {error}",
                signature_file.display()
            )
        }
    };
    let report: Value = match client {
        Some(client) => upload(&client, bytes, detached.as_deref(), stage).await?,
        None => {
            let host = host::build(config, None).await?;
            let report = host
                .registry
                .install(InstallRequest {
                    bytes,
                    detached_signature: detached,
                    source: format!("cli:{}", file.display()),
                    actor: "cli".into(),
                    activate: !stage,
                })
                .await?;
            host.store.flush()?;
            serde_json::to_value(report)?
        }
    };
    if json_output {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let report: InstallReport = serde_json::from_value(report)
            .context("the daemon's install report has an unexpected shape")?;
        print!("{}", install_summary(&report));
    }
    Ok(ExitCode::SUCCESS)
}

async fn upload(
    client: &ApiClient,
    bytes: Vec<u8>,
    detached: Option<&str>,
    stage: bool,
) -> anyhow::Result<Value> {
    let mut headers = vec![("content-type".to_string(), "application/wasm".to_string())];
    if let Some(text) = detached {
        headers.push((
            crate::plugin_api::SIGNATURE_HEADER.to_string(),
            base64::engine::general_purpose::STANDARD.encode(text),
        ));
    }
    let query = if stage {
        vec![("stage".to_string(), "true".to_string())]
    } else {
        Vec::new()
    };
    client
        .send_bytes(Method::POST, "/v1/plugins", &query, &headers, bytes)
        .await
}

/// Formats an install report for the operator: what was installed, who
/// signed it, what it requests and what it is granted.
pub fn install_summary(report: &InstallReport) -> String {
    let mut out = String::new();
    let state = match (report.already_installed, report.active) {
        (true, true) => "already installed, active",
        (true, false) => "already installed, not active",
        (false, true) => "installed and active",
        (false, false) => "installed, staged (not active)",
    };
    out.push_str(&format!("{} {}: {state}\n", report.name, report.version));
    if let Some(previous) = &report.replaced {
        out.push_str(&format!("replaced   {previous}\n"));
    }
    out.push_str(&format!("digest     sha256:{}\n", report.digest));
    match &report.signer {
        Some(signer) => out.push_str(&format!(
            "signed by  {} (key {})\n",
            signer.key_name, signer.key_id
        )),
        None => out.push_str("signed by  nobody (accepted under allow_unsigned)\n"),
    }
    out.push_str(&format!("actions    {}\n", report.actions.join(", ")));
    out.push_str(&format!(
        "self-test  {}\n",
        if report.self_test {
            "passed"
        } else {
            "none offered"
        }
    ));
    out.push_str(&format!("requested  {}\n", compact(&report.requested)));
    out.push_str(&format!("granted    {}\n", compact(&report.granted)));
    for warning in &report.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out.push_str(&format!("took       {} ms\n", report.duration_ms));
    out
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Makes installed `version` of plugin `name` active.
pub async fn activate(
    config: &Config,
    name: &str,
    version: &str,
    client: Option<ApiClient>,
) -> anyhow::Result<ExitCode> {
    let replaced = match client {
        Some(client) => {
            let path = format!("/v1/plugins/{name}/activate");
            let body = json!({ "version": version });
            let reply = client.send(Method::POST, &path, &[], Some(body)).await?;
            reply
                .get("replaced")
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        None => {
            let host = host::build(config, None).await?;
            let replaced = host.registry.activate(name, version, "cli").await?;
            host.store.flush()?;
            replaced
        }
    };
    println!(
        "{name} {version} is active (was {})",
        replaced.as_deref().unwrap_or("none")
    );
    Ok(ExitCode::SUCCESS)
}

/// Makes the version of plugin `name` that was active before the current
/// one active again.
pub async fn rollback(
    config: &Config,
    name: &str,
    client: Option<ApiClient>,
) -> anyhow::Result<ExitCode> {
    let (version, replaced) = match client {
        Some(client) => {
            let path = format!("/v1/plugins/{name}/rollback");
            let reply = client.send(Method::POST, &path, &[], None).await?;
            let field = |key: &str| reply.get(key).and_then(Value::as_str).map(str::to_string);
            (
                field("active_version").unwrap_or_default(),
                field("replaced"),
            )
        }
        None => {
            let host = host::build(config, None).await?;
            let rolled = host.registry.rollback(name, "cli").await?;
            host.store.flush()?;
            rolled
        }
    };
    println!(
        "{name} rolled back to {version} (was {})",
        replaced.as_deref().unwrap_or("none")
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints the installs, activations and rollbacks of plugin `name`.
pub async fn history(
    config: &Config,
    name: &str,
    client: Option<ApiClient>,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let history: Vec<Value> = match client {
        Some(client) => {
            let reply = client.get(&format!("/v1/plugins/{name}/history")).await?;
            reply
                .get("history")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        }
        None => {
            let store = host::open_store(config)?;
            let events = store.plugin_events(name)?;
            if events.is_empty() {
                anyhow::bail!(
                    "no plugin {name:?} is installed; `palisade plugin list` lists the plugins"
                );
            }
            events
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?
        }
    };
    if json_output {
        println!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<12} {:<12} {:<12} ACTOR",
        "AT", "ACTION", "VERSION", "PREVIOUS"
    );
    for event in &history {
        let field = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or("-");
        println!(
            "{:<32} {:<12} {:<12} {:<12} {}",
            field("at"),
            field("action"),
            field("version"),
            field("previous"),
            field("actor")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the installed plugins with their versions, from the daemon or
/// the database, or `None` when the database contains none yet.
pub async fn list(config: &Config, client: Option<ApiClient>) -> anyhow::Result<Option<Value>> {
    if let Some(client) = client {
        return Ok(Some(client.get("/v1/plugins").await?["plugins"].clone()));
    }
    let store = host::open_store(config).context(
        "cannot open the database; while the daemon runs, list through it with `--server URL`",
    )?;
    let active: std::collections::BTreeMap<String, String> =
        store.active_plugin_versions()?.into_iter().collect();
    let mut plugins: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for record in store.plugin_versions()? {
        plugins.entry(record.name.clone()).or_default().push(json!({
            "version": record.version,
            "digest": record.digest,
            "signer": record.signer,
            "installed_at": record.installed_at,
            "source": record.source,
        }));
    }
    if plugins.is_empty() {
        return Ok(None);
    }
    let listed = plugins
        .into_iter()
        .map(|(name, versions)| {
            json!({
                "name": name,
                "active_version": active.get(&name),
                "versions": versions,
            })
        })
        .collect();
    Ok(Some(Value::Array(listed)))
}

/// Prints one line per plugin: name, active version, kept versions.
pub fn print_list(listed: &Value, json_output: bool) -> anyhow::Result<ExitCode> {
    if json_output {
        println!("{}", serde_json::to_string_pretty(listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<16} {:<10} VERSIONS", "PLUGIN", "ACTIVE");
    for plugin in listed.as_array().into_iter().flatten() {
        let versions: Vec<&str> = plugin["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|version| version["version"].as_str())
            .collect();
        println!(
            "{:<16} {:<10} {}",
            plugin["name"].as_str().unwrap_or("?"),
            plugin["active_version"].as_str().unwrap_or("-"),
            versions.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
