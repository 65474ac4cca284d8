//! `palisade audit`: checks and lists the hash-chained audit log, and
//! records which plugins the host loaded.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Subcommand;
use palisade_runtime::LoadedPlugin;
use palisade_store::{AuditEvent, AuditRecord, AuditVerdict, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Config;
use crate::host;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every record of the audit chain. Exits with 0 and prints the
    /// head hash when the chain is intact, and with 1 naming the first
    /// broken record otherwise.
    Verify,
    /// List audit records in sequence order.
    List {
        /// Show only records with a sequence number above SEQ.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
        /// Maximum number of records to show.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Print the records as a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `audit` subcommand on the database of `config`.
pub fn run(config: &Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let store = host::open_store(config)?;
    match command {
        AuditCommand::Verify => {
            let (line, intact) = verdict_line(&store.verify_audit()?);
            println!("{line}");
            Ok(if intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::List { after, limit, json } => {
            // Reading one record more than shown reveals whether more follow.
            let mut records = store.audit_records(after, limit.saturating_add(1))?;
            let more = records.len() > limit;
            records.truncate(limit);
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", record_table(&records));
            }
            if let (true, Some(last)) = (more, records.last()) {
                eprintln!("more records follow; continue with --after {}", last.seq);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Formats a verdict as the line `audit verify` prints, and whether the
/// chain is intact.
pub fn verdict_line(verdict: &AuditVerdict) -> (String, bool) {
    match verdict {
        AuditVerdict::Intact { records, head } => (
            format!("audit chain intact: {records} records, head {head}"),
            true,
        ),
        AuditVerdict::Broken { seq, reason } => (
            format!("audit chain broken at record {seq}: {reason}"),
            false,
        ),
    }
}

fn record_table(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<24}  {:<16} {:<16} {:<12} DETAIL",
        "SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT"
    );
    for record in records {
        let _ = writeln!(
            out,
            "{:>6}  {:<24}  {:<16} {:<16} {:<12} {}",
            record.seq,
            record
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            record.actor,
            record.action,
            record.subject,
            record.detail,
        );
    }
    crate::output::printable_lines(&out)
}

/// Key-value namespace where the host keeps the last version and SHA-256
/// it saw of each plugin. Plugin names cannot contain `:`, so no plugin
/// owns this namespace.
const PLUGIN_NAMESPACE: &str = "palisade:plugins";

/// A plugin as the audit log identifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginIdentity {
    pub name: String,
    pub version: String,
    /// Hex SHA-256 of the component file.
    pub sha256: String,
}

impl From<&LoadedPlugin> for PluginIdentity {
    fn from(plugin: &LoadedPlugin) -> Self {
        Self {
            name: plugin.info.name.clone(),
            version: plugin.info.version.clone(),
            sha256: plugin.digest.clone(),
        }
    }
}

/// Appends `plugin_loaded` for each plugin seen for the first time and
/// `plugin_changed` for each whose version or SHA-256 differs from the last
/// one recorded, and stores what was seen. A plugin loaded again unchanged
/// adds no record. Returns the records appended.
pub fn audit_plugins(
    store: &dyn Store,
    plugins: &[PluginIdentity],
) -> anyhow::Result<Vec<AuditRecord>> {
    let mut appended = Vec::new();
    for plugin in plugins {
        let previous: Option<PluginIdentity> = store
            .kv_get(PLUGIN_NAMESPACE, &plugin.name)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let (action, detail) = match &previous {
            None => (
                "plugin_loaded",
                json!({
                    "name": plugin.name,
                    "version": plugin.version,
                    "sha256": plugin.sha256,
                }),
            ),
            Some(previous) if previous == plugin => continue,
            Some(previous) => (
                "plugin_changed",
                json!({
                    "name": plugin.name,
                    "version": plugin.version,
                    "sha256": plugin.sha256,
                    "previous_version": previous.version,
                    "previous_sha256": previous.sha256,
                }),
            ),
        };
        appended.push(store.append_audit(AuditEvent {
            actor: "host".into(),
            action: action.into(),
            subject: plugin.name.clone(),
            detail,
        })?);
        store.kv_set(PLUGIN_NAMESPACE, &plugin.name, &serde_json::to_vec(plugin)?)?;
    }
    Ok(appended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_store::SledStore;

    fn identity(version: &str, sha256: &str) -> PluginIdentity {
        PluginIdentity {
            name: "virustotal".into(),
            version: version.into(),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn plugin_audit_records_first_load_and_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();

        let first = audit_plugins(&store, &[identity("0.1.0", "aa")]).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].action, "plugin_loaded");
        assert_eq!(first[0].subject, "virustotal");
        assert_eq!(first[0].detail["sha256"], "aa");

        let unchanged = audit_plugins(&store, &[identity("0.1.0", "aa")]).unwrap();
        assert!(unchanged.is_empty(), "{unchanged:?}");

        let rebuilt = audit_plugins(&store, &[identity("0.1.0", "bb")]).unwrap();
        assert_eq!(rebuilt.len(), 1);
        assert_eq!(rebuilt[0].action, "plugin_changed");
        assert_eq!(rebuilt[0].detail["previous_sha256"], "aa");
        assert_eq!(rebuilt[0].detail["sha256"], "bb");

        let upgraded = audit_plugins(&store, &[identity("0.2.0", "bb")]).unwrap();
        assert_eq!(upgraded[0].action, "plugin_changed");
        assert_eq!(upgraded[0].detail["previous_version"], "0.1.0");
        assert_eq!(upgraded[0].detail["version"], "0.2.0");

        assert!(matches!(
            store.verify_audit().unwrap(),
            AuditVerdict::Intact { records: 3, .. }
        ));
    }
}
