//! Export of a whole database as JSON lines. [`crate::import`] reads such
//! an export into an empty database.
//!
//! The first line is a header:
//! `{"palisade_export":1,"schema_version":3,"exported_at":"..."}`. Each
//! following line is one record, tagged by `kind`:
//!
//! - `counter`: `tree`, `name` and `value` of a sequence counter (the
//!   `counters` tree, and the case counter kept in `cases`);
//! - `alert`: the `alert` and the `case_id` it joined;
//! - `case`: the `case` with its alert ids, timeline and run ids;
//! - `run`: the `run` without its steps, followed by its `step` lines;
//! - `step`: the `run_id`, the `index` of the step in the run's journal and
//!   the `step` record. Exports written before `step` lines existed carry
//!   the steps in the run line instead, which an import numbers from 0;
//! - `pending`: the `alert_id` of an accepted alert whose runs have not
//!   finished, oldest first;
//! - `kv`: a plugin's `namespace`, `key` and `value` (base64);
//! - `secret`: a secret's `name` and its encrypted `record` (base64), which
//!   is never decrypted here;
//! - `audit`: an audit `record`, unchanged, so its hashes still verify;
//! - `raw`: `tree`, `key` and `value` (both base64) of an entry in a tree
//!   this module does not know. Entries of known trees that no typed line
//!   can carry are raw lines too, such as a case list item whose case is
//!   missing or an audit record that is not JSON. So nothing in the
//!   database is left out. The `import` module lists which raw lines an
//!   import accepts.
//!
//! The `pending_index` tree is not exported, because it is derived from
//! `pending`, whose keys an import renumbers; the import builds it again.
//! Every other key survives an import unchanged: alert, case and run ids,
//! step indexes, audit sequence numbers and the keys of raw entries, so the
//! trees that refer to them (`alert_runs`, `active_runs`, `timers`,
//! `correlation`, `open_cases`) stay valid.
//!
//! The last line is `{"kind":"end","records":N}` with the number of record
//! lines, so an import notices a file that was cut short. Records are
//! written in a fixed order, so exporting an imported database gives the
//! same lines except the header's `exported_at` and the keys of raw
//! `pending` lines, which an import renumbers. No line is longer than
//! [`MAX_LINE_BYTES`], because an import reads no longer line.

use std::collections::BTreeMap;
use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use palisade_model::{Alert, Case, RunRecord, StepRecord};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::audit::{AUDIT_TREE, AuditRecord};
use crate::schema::{META_TREE, SCHEMA_VERSION};
use crate::sled_store::{CASE_COUNTER, SledStore};

/// Version of the export format in the header's `palisade_export`.
pub const EXPORT_FORMAT: u32 = 1;

/// Maximum length of one line of an export, without its line break. An
/// import stops at a longer line instead of buffering it whole, and export
/// fails rather than write a line that no import would read.
///
/// NOTE: a case line carries every alert id and timeline event of the
/// case, so a case with roughly 250,000 alerts reaches this limit and
/// cannot be exported. Writing case lists as lines of their own would lift
/// the limit; such lines must keep each list's order.
pub(crate) const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Trees whose entries are written as typed lines. Every other tree is
/// written as `raw` lines, except the [`DERIVED_TREES`].
pub(crate) const TYPED_TREES: &[&str] = &[
    "counters",
    "alerts",
    "alert_cases",
    "cases",
    "case_items",
    "runs",
    "run_steps",
    "pending",
    "kv",
    "secrets",
    AUDIT_TREE,
    META_TREE,
];

/// Trees that are rebuilt from other trees on import and so not exported.
pub(crate) const DERIVED_TREES: &[&str] = &["pending_index"];

/// Summary of an export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub schema_version: u32,
    /// Record lines, without the header and end lines.
    pub records: u64,
    /// Record lines by kind.
    pub kinds: BTreeMap<String, u64>,
}

/// The first line of an export.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Header {
    pub(crate) palisade_export: u32,
    pub(crate) schema_version: u32,
    pub(crate) exported_at: DateTime<Utc>,
}

/// One line after the header.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Line {
    Counter {
        tree: String,
        name: String,
        value: u64,
    },
    Alert {
        alert: Box<Alert>,
        case_id: Option<String>,
    },
    Case {
        case: Box<Case>,
    },
    Run {
        run: Box<RunRecord>,
    },
    Step {
        run_id: String,
        index: u32,
        step: Box<StepRecord>,
    },
    Pending {
        alert_id: String,
    },
    Kv {
        namespace: String,
        key: String,
        value: String,
    },
    Secret {
        name: String,
        record: String,
    },
    Audit {
        record: Box<AuditRecord>,
    },
    Raw {
        tree: String,
        key: String,
        value: String,
    },
    End {
        records: u64,
    },
}

impl Line {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Line::Counter { .. } => "counter",
            Line::Alert { .. } => "alert",
            Line::Case { .. } => "case",
            Line::Run { .. } => "run",
            Line::Step { .. } => "step",
            Line::Pending { .. } => "pending",
            Line::Kv { .. } => "kv",
            Line::Secret { .. } => "secret",
            Line::Audit { .. } => "audit",
            Line::Raw { .. } => "raw",
            Line::End { .. } => "end",
        }
    }
}

fn raw(tree: &str, key: &[u8], value: &[u8]) -> Line {
    Line::Raw {
        tree: tree.to_string(),
        key: BASE64.encode(key),
        value: BASE64.encode(value),
    }
}

/// Writes lines and counts them.
struct LineWriter<'a> {
    out: &'a mut dyn Write,
    summary: ExportSummary,
}

impl LineWriter<'_> {
    fn write_json<T: Serialize>(&mut self, value: &T) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec(value)
            .map_err(|error| StoreError::Io(format!("cannot write the export: {error}")))?;
        if bytes.len() > MAX_LINE_BYTES {
            return Err(StoreError::Io(format!(
                "cannot write the export: line {} would be {} bytes, more than the {MAX_LINE_BYTES} bytes an import reads; it starts with {:?}",
                self.summary.records + 2,
                bytes.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
            )));
        }
        bytes.push(b'\n');
        self.out.write_all(&bytes).map_err(write_error)
    }

    fn record(&mut self, line: Line) -> Result<(), StoreError> {
        self.write_json(&line)?;
        self.summary.records += 1;
        *self
            .summary
            .kinds
            .entry(line.kind().to_string())
            .or_default() += 1;
        Ok(())
    }
}

fn write_error(error: std::io::Error) -> StoreError {
    StoreError::Io(format!("cannot write the export: {error}"))
}

pub(crate) fn database(error: sled::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

pub(crate) fn text(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        message: error.to_string(),
    })
}

/// Part of a key before its first zero byte, which is the record id in
/// `case_items`, `run_steps` and `kv` keys.
pub(crate) fn before_zero(key: &[u8]) -> Option<&[u8]> {
    key.iter()
        .position(|&byte| byte == 0)
        .map(|end| &key[..end])
}

// The functions below decide which entries of the typed trees a typed line
// carries. Export writes every other entry as a raw line, and import
// accepts a raw line for a typed tree only for such an entry, so a raw line
// cannot stand in for a record that the typed lines check.

/// Name and value of a `counters` entry that a `counter` line carries.
pub(crate) fn counter_entry(key: &[u8], value: &[u8]) -> Option<(String, u64)> {
    let name = text(key)?;
    let bytes = <[u8; 8]>::try_from(value).ok()?;
    Some((name, u64::from_be_bytes(bytes)))
}

/// Value of the case counter, when a `counter` line carries it.
pub(crate) fn case_counter_value(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

/// Run id and index of a `run_steps` key of the form the store writes.
pub(crate) fn step_position(key: &[u8]) -> Option<(&[u8], u32)> {
    let run_id = before_zero(key)?;
    let index = <[u8; 4]>::try_from(&key[run_id.len() + 1..]).ok()?;
    Some((run_id, u32::from_be_bytes(index)))
}

/// Namespace and key of a `kv` entry that a `kv` line carries.
pub(crate) fn kv_entry(key: &[u8]) -> Option<(String, String)> {
    let namespace = text(before_zero(key)?)?;
    let name = text(&key[namespace.len() + 1..])?;
    Some((namespace, name))
}

/// Returns the audit record stored as `value` under `key` when an `audit`
/// line can carry it, which means it is JSON, sits under its own seq and
/// encodes back to the same bytes. Any other record is kept raw, so verifying the imported
/// chain finds the same break as verifying this one.
pub(crate) fn typed_audit(key: &[u8], value: &[u8]) -> Option<AuditRecord> {
    serde_json::from_slice::<AuditRecord>(value)
        .ok()
        .filter(|record| key == record.seq.to_be_bytes())
        .filter(|record| serde_json::to_vec(record).ok().as_deref() == Some(value))
}

/// Writes every record of `store` to `out`; see the module documentation
/// for the format.
pub(crate) fn export(store: &SledStore, out: &mut dyn Write) -> Result<ExportSummary, StoreError> {
    let db = store.db();
    let tree = |name: &str| db.open_tree(name).map_err(database);
    let mut writer = LineWriter {
        out,
        summary: ExportSummary {
            schema_version: SCHEMA_VERSION,
            ..ExportSummary::default()
        },
    };
    writer.write_json(&Header {
        palisade_export: EXPORT_FORMAT,
        schema_version: SCHEMA_VERSION,
        exported_at: Utc::now(),
    })?;

    export_counters(&tree("counters")?, &tree("cases")?, &mut writer)?;
    export_alerts(&tree("alerts")?, &tree("alert_cases")?, &mut writer)?;
    export_cases(store, &tree("cases")?, &tree("case_items")?, &mut writer)?;
    export_runs(&tree("runs")?, &tree("run_steps")?, &mut writer)?;
    for entry in tree("pending")?.iter() {
        let (key, value) = entry.map_err(database)?;
        match text(&value) {
            Some(alert_id) => writer.record(Line::Pending { alert_id })?,
            None => writer.record(raw("pending", &key, &value))?,
        }
    }
    for entry in tree("kv")?.iter() {
        let (key, value) = entry.map_err(database)?;
        match kv_entry(&key) {
            Some((namespace, key)) => writer.record(Line::Kv {
                namespace,
                key,
                value: BASE64.encode(&value),
            })?,
            None => writer.record(raw("kv", &key, &value))?,
        }
    }
    for entry in tree("secrets")?.iter() {
        let (key, value) = entry.map_err(database)?;
        match text(&key) {
            Some(name) => writer.record(Line::Secret {
                name,
                record: BASE64.encode(&value),
            })?,
            None => writer.record(raw("secrets", &key, &value))?,
        }
    }
    for entry in tree(AUDIT_TREE)?.iter() {
        let (key, value) = entry.map_err(database)?;
        match typed_audit(&key, &value) {
            Some(record) => writer.record(Line::Audit {
                record: Box::new(record),
            })?,
            None => writer.record(raw(AUDIT_TREE, &key, &value))?,
        }
    }
    export_other_trees(db, &mut writer)?;

    let records = writer.summary.records;
    writer.write_json(&Line::End { records })?;
    writer.out.flush().map_err(write_error)?;
    Ok(writer.summary)
}

/// Fails when a record stored under `key` names another id, because
/// importing it would move it to that id.
fn check_id(tree: &'static str, key: &[u8], id: &str) -> Result<(), StoreError> {
    if key == id.as_bytes() {
        return Ok(());
    }
    Err(StoreError::Database(format!(
        "record {:?} in {tree} has id {id:?}; it was changed outside palisade, so export the other records with a copy of the database where it is removed",
        String::from_utf8_lossy(key)
    )))
}

fn export_counters(
    counters: &sled::Tree,
    cases: &sled::Tree,
    writer: &mut LineWriter<'_>,
) -> Result<(), StoreError> {
    for entry in counters.iter() {
        let (key, value) = entry.map_err(database)?;
        match counter_entry(&key, &value) {
            Some((name, value)) => writer.record(Line::Counter {
                tree: "counters".into(),
                name,
                value,
            })?,
            None => writer.record(raw("counters", &key, &value))?,
        }
    }
    if let Some(value) = cases.get(CASE_COUNTER).map_err(database)? {
        match case_counter_value(&value) {
            Some(number) => writer.record(Line::Counter {
                tree: "cases".into(),
                name: String::from_utf8_lossy(CASE_COUNTER).into_owned(),
                value: number,
            })?,
            None => writer.record(raw("cases", CASE_COUNTER, &value))?,
        }
    }
    Ok(())
}

fn export_alerts(
    alerts: &sled::Tree,
    alert_cases: &sled::Tree,
    writer: &mut LineWriter<'_>,
) -> Result<(), StoreError> {
    for entry in alerts.iter() {
        let (key, bytes) = entry.map_err(database)?;
        let alert: Alert = decode("alerts", &key, &bytes)?;
        check_id("alerts", &key, &alert.id)?;
        let case_id = alert_cases
            .get(&key)
            .map_err(database)?
            .map(|id| String::from_utf8_lossy(&id).into_owned());
        writer.record(Line::Alert {
            alert: Box::new(alert),
            case_id,
        })?;
    }
    // Links whose alert is missing.
    for entry in alert_cases.iter() {
        let (key, value) = entry.map_err(database)?;
        if !alerts.contains_key(&key).map_err(database)? {
            writer.record(raw("alert_cases", &key, &value))?;
        }
    }
    Ok(())
}

fn export_cases(
    store: &SledStore,
    cases: &sled::Tree,
    case_items: &sled::Tree,
    writer: &mut LineWriter<'_>,
) -> Result<(), StoreError> {
    for entry in cases.iter() {
        let (key, bytes) = entry.map_err(database)?;
        if key.as_ref() == CASE_COUNTER {
            continue;
        }
        let case = store.assemble_case(&key, &bytes)?;
        check_id("cases", &key, &case.id)?;
        writer.record(Line::Case {
            case: Box::new(case),
        })?;
    }
    // List items whose case is missing.
    for entry in case_items.iter() {
        let (key, value) = entry.map_err(database)?;
        let has_case = match before_zero(&key) {
            Some(case_id) => {
                case_id != CASE_COUNTER && cases.contains_key(case_id).map_err(database)?
            }
            None => false,
        };
        if !has_case {
            writer.record(raw("case_items", &key, &value))?;
        }
    }
    Ok(())
}

fn export_runs(
    runs: &sled::Tree,
    run_steps: &sled::Tree,
    writer: &mut LineWriter<'_>,
) -> Result<(), StoreError> {
    for entry in runs.iter() {
        let (key, bytes) = entry.map_err(database)?;
        let run: RunRecord = decode("runs", &key, &bytes)?;
        check_id("runs", &key, &run.id)?;
        let run_id = run.id.clone();
        writer.record(Line::Run { run: Box::new(run) })?;

        let mut prefix = key.to_vec();
        prefix.push(0);
        for step in run_steps.scan_prefix(&prefix) {
            let (step_key, value) = step.map_err(database)?;
            // A key of another shape is written raw below.
            let Some((_, index)) = step_position(&step_key) else {
                continue;
            };
            let step: StepRecord = decode("run_steps", &step_key, &value)?;
            writer.record(Line::Step {
                run_id: run_id.clone(),
                index,
                step: Box::new(step),
            })?;
        }
    }
    // Steps whose run is missing or whose key has another shape.
    for entry in run_steps.iter() {
        let (key, value) = entry.map_err(database)?;
        let typed = match step_position(&key) {
            Some((run_id, _)) => runs.contains_key(run_id).map_err(database)?,
            None => false,
        };
        if !typed {
            writer.record(raw("run_steps", &key, &value))?;
        }
    }
    Ok(())
}

/// Writes every entry of the trees that are neither typed nor derived as
/// `raw` lines, trees in name order.
fn export_other_trees(db: &sled::Db, writer: &mut LineWriter<'_>) -> Result<(), StoreError> {
    let mut names: Vec<String> = db
        .tree_names()
        .iter()
        .filter_map(|name| text(name))
        .filter(|name| !TYPED_TREES.contains(&name.as_str()))
        .filter(|name| !DERIVED_TREES.contains(&name.as_str()))
        .collect();
    names.sort();
    for name in names {
        for entry in db.open_tree(&name).map_err(database)?.iter() {
            let (key, value) = entry.map_err(database)?;
            writer.record(raw(&name, &key, &value))?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema;
    use crate::{AuditEvent, AuditVerdict, ImportSummary, Store};
    use palisade_model::parse_alerts;
    use serde_json::json;

    pub(crate) const FIM: &str = r#"{"timestamp":"2022-11-17T19:17:42.694+0200","rule":{"level":5,"id":"554","description":"File added to the system."},"agent":{"name":"Ubuntu","ip":"10.0.2.15"},"syscheck":{"sha256_after":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#;

    pub(crate) fn alert(text: &str) -> Alert {
        parse_alerts(text).pop().unwrap().unwrap()
    }

    pub(crate) fn run_record(id: &str, alert_id: &str, case_id: &str) -> RunRecord {
        serde_json::from_value(json!({
            "id": id,
            "playbook": "wazuh-triage",
            "alert_id": alert_id,
            "case_id": case_id,
            "status": "succeeded",
            "started_at": "2024-05-01T10:00:00.123456789Z",
            "finished_at": "2024-05-01T10:00:01Z",
            "steps": [
                {
                    "id": "extract",
                    "uses": "ioc-extractor.extract",
                    "status": "succeeded",
                    "started_at": "2024-05-01T10:00:00.2Z",
                    "duration_us": 1500,
                    "plugin_version": "0.1.0",
                    "input": { "text": "10.0.2.15" },
                    "output": { "observables": [] },
                    "error": null,
                    "logs": [],
                    "http_calls": []
                },
                {
                    "id": "score",
                    "uses": "triage-scorer.score",
                    "status": "failed",
                    "started_at": "2024-05-01T10:00:00.5Z",
                    "duration_us": 20,
                    "plugin_version": null,
                    "input": {},
                    "output": null,
                    "error": { "kind": "timeout", "message": "timed out" },
                    "logs": null,
                    "http_calls": null
                }
            ],
            "error": null
        }))
        .unwrap()
    }

    /// Fills a store with every kind of record: alerts joined to cases,
    /// cases with every list, runs with steps, pending alerts, key-value
    /// entries, secrets, audit records and a tree no kind covers.
    pub(crate) fn populate(store: &SledStore) {
        let now = Utc::now();
        let first = store.ingest_alert(&alert(FIM), now).unwrap();
        let other = FIM.replace("\"554\"", "\"550\"");
        let second = store.ingest_alert(&alert(&other), now).unwrap();
        let again = FIM.replace("19:17:42", "19:20:00");
        store.ingest_alert(&alert(&again), now).unwrap();
        store.finish_pending(&alert(&other).id).unwrap();

        let run_id = store.next_run_id().unwrap();
        let run = run_record(&run_id, &alert(FIM).id, &first.case_id);
        store.put_run(&run).unwrap();
        for (index, step) in run.steps.iter().enumerate() {
            store.put_step(&run.id, index, step).unwrap();
        }
        store
            .update_case(&first.case_id, &mut |case| {
                case.run_ids.push(run_id.clone());
                case.score = Some(70);
                case.record("run_finished", format!("run {run_id}"), now);
            })
            .unwrap();
        store
            .update_case(&second.case_id, &mut |case| {
                case.status = palisade_model::CaseStatus::Resolved
            })
            .unwrap();

        store
            .kv_set("ti-matcher", "ind:ipv4:1.2.3.4", b"{\"x\":1}")
            .unwrap();
        store
            .kv_set("ti-matcher", "key with\nnewline", &[0, 159, 255])
            .unwrap();
        store.kv_set("palisade:plugins", "noop", b"{}").unwrap();
        store
            .put_secret("virustotal-api-key", &[1, 2, 3, 0, 250])
            .unwrap();
        for action in ["run_started", "step_finished", "run_finished"] {
            store
                .append_audit(AuditEvent {
                    actor: "engine".into(),
                    action: action.into(),
                    subject: run_id.clone(),
                    detail: json!({ "playbook": "wazuh-triage", "nested": { "b": 1.5, "a": [null, true] } }),
                })
                .unwrap();
        }
        let extra = store.db().open_tree("extra").unwrap();
        extra.insert([0u8, 1, 2], &[9u8, 8][..]).unwrap();
        store.db().insert(b"default-key", b"default-value").unwrap();
    }

    pub(crate) fn export_text(store: &SledStore) -> (String, ExportSummary) {
        let mut out = Vec::new();
        let summary = store.export(&mut out).unwrap();
        (String::from_utf8(out).unwrap(), summary)
    }

    pub(crate) fn body(text: &str) -> Vec<&str> {
        text.lines().skip(1).collect()
    }

    pub(crate) fn import_text(store: &SledStore, text: &str) -> Result<ImportSummary, StoreError> {
        store.import(&mut text.as_bytes())
    }

    #[test]
    fn round_trip_keeps_every_record() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(source_dir.path()).unwrap();
        populate(&source);
        let (exported, summary) = export_text(&source);

        let header: serde_json::Value =
            serde_json::from_str(exported.lines().next().unwrap()).unwrap();
        assert_eq!(header["palisade_export"], 1);
        assert_eq!(header["schema_version"], SCHEMA_VERSION);
        assert!(header["exported_at"].is_string(), "{header}");
        let expected_kinds = [
            ("alert", 3),
            ("case", 2),
            ("run", 1),
            ("step", 2),
            ("pending", 2),
            ("kv", 3),
            ("secret", 1),
            ("audit", 3),
            ("counter", 2),
        ];
        for (kind, count) in expected_kinds {
            assert_eq!(summary.kinds.get(kind), Some(&count), "{kind} lines");
        }
        assert!(summary.kinds["raw"] >= 2, "{:?}", summary.kinds);
        let last: serde_json::Value =
            serde_json::from_str(exported.lines().last().unwrap()).unwrap();
        assert_eq!(last, json!({ "kind": "end", "records": summary.records }));

        let copy_dir = tempfile::tempdir().unwrap();
        let copy = SledStore::open(copy_dir.path()).unwrap();
        let imported = import_text(&copy, &exported).unwrap();
        assert_eq!(imported.records, summary.records);
        assert_eq!(imported.kinds, summary.kinds);
        assert_eq!(imported.audit, source.verify_audit().unwrap());
        assert!(matches!(
            imported.audit,
            AuditVerdict::Intact { records: 3, .. }
        ));

        let (again, _) = export_text(&copy);
        assert_eq!(body(&again), body(&exported));

        assert_eq!(copy.cases().unwrap(), source.cases().unwrap());
        assert_eq!(copy.runs().unwrap(), source.runs().unwrap());
        assert_eq!(
            copy.pending_alerts().unwrap(),
            source.pending_alerts().unwrap()
        );
        assert_eq!(
            copy.secret("virustotal-api-key").unwrap(),
            Some(vec![1, 2, 3, 0, 250])
        );
        assert_eq!(
            copy.kv_get("ti-matcher", "key with\nnewline").unwrap(),
            Some(vec![0, 159, 255])
        );
        let alert_id = alert(FIM).id;
        assert_eq!(
            copy.case_of_alert(&alert_id).unwrap(),
            source.case_of_alert(&alert_id).unwrap()
        );
        assert_eq!(
            copy.audit_records(0, 10).unwrap(),
            source.audit_records(0, 10).unwrap()
        );
        let extra = copy.db().open_tree("extra").unwrap();
        assert_eq!(
            extra.get([0u8, 1, 2]).unwrap().as_deref(),
            Some(&[9u8, 8][..])
        );
        assert_eq!(
            copy.db().get(b"default-key").unwrap().as_deref(),
            Some(&b"default-value"[..])
        );
    }

    #[test]
    fn imported_store_keeps_counting() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(source_dir.path()).unwrap();
        populate(&source);
        let (exported, _) = export_text(&source);
        let copy_dir = tempfile::tempdir().unwrap();
        let copy = SledStore::open(copy_dir.path()).unwrap();
        import_text(&copy, &exported).unwrap();

        assert_eq!(copy.next_run_id().unwrap(), source.next_run_id().unwrap());
        let new_alert = FIM.replace("\"554\"", "\"999\"");
        let outcome = copy.ingest_alert(&alert(&new_alert), Utc::now()).unwrap();
        assert_eq!(outcome.case_id, "C00000003");
        // An alert with the fingerprint of the open case still joins it.
        let joining = FIM.replace("19:17:42", "21:00:00");
        let joined = copy.ingest_alert(&alert(&joining), Utc::now()).unwrap();
        assert_eq!(joined.case_id, "C00000001");
        assert!(!joined.case_is_new);

        let pending = copy.pending_alerts().unwrap();
        assert_eq!(pending.len(), 4, "{pending:?}");
        assert_eq!(pending[3], alert(&joining).id);
        let record = copy
            .append_audit(AuditEvent {
                actor: "cli".into(),
                action: "case_updated".into(),
                subject: "C00000001".into(),
                detail: json!({}),
            })
            .unwrap();
        assert_eq!(record.seq, 4);
        assert!(matches!(
            copy.verify_audit().unwrap(),
            AuditVerdict::Intact { records: 4, .. }
        ));
    }

    #[test]
    fn import_rejects_database_with_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        populate(&store);
        let (exported, _) = export_text(&store);
        let error = import_text(&store, &exported).unwrap_err();
        assert!(matches!(error, StoreError::NotEmpty { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("--data-dir"), "{message}");
        assert_eq!(store.cases().unwrap().len(), 2, "the data is untouched");
    }

    #[test]
    fn invalid_line_is_named_and_rolled_back() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(source_dir.path()).unwrap();
        populate(&source);
        let (exported, _) = export_text(&source);
        let mut lines: Vec<String> = exported.lines().map(str::to_string).collect();
        lines[4] = r#"{"kind":"alert","alert":42}"#.into();
        let broken = lines.join("\n");

        let copy_dir = tempfile::tempdir().unwrap();
        let copy = SledStore::open(copy_dir.path()).unwrap();
        match import_text(&copy, &broken).unwrap_err() {
            StoreError::InvalidImport { line, .. } => assert_eq!(line, 5),
            other => panic!("expected an invalid line, got {other}"),
        }
        assert!(
            !schema::has_data(copy.db()).unwrap(),
            "a failed import leaves no data"
        );
        let meta = copy.db().open_tree(META_TREE).unwrap();
        assert_eq!(schema::stored_version(&meta).unwrap(), Some(SCHEMA_VERSION));
        assert!(matches!(
            copy.verify_audit().unwrap(),
            AuditVerdict::Intact { records: 0, .. }
        ));

        // The same database then takes the valid export.
        import_text(&copy, &exported).unwrap();
        assert_eq!(copy.cases().unwrap().len(), 2);
    }

    #[test]
    fn import_rejects_bad_input() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(source_dir.path()).unwrap();
        populate(&source);
        let (exported, _) = export_text(&source);
        let lines: Vec<&str> = exported.lines().collect();
        let without_end = lines[..lines.len() - 1].join("\n");
        let duplicated = format!(
            "{}\n{}\n{}",
            lines[..3].join("\n"),
            lines[2],
            lines[3..].join("\n")
        );
        let wrong_count =
            exported.replace(r#""kind":"end","records":"#, r#""kind":"end","records":9"#);
        let cases = [
            ("", 1, "empty"),
            ("not json", 1, "expected the header"),
            (
                r#"{"palisade_export":2,"schema_version":2,"exported_at":"2024-01-01T00:00:00Z"}"#,
                1,
                "export format 2",
            ),
            (&without_end, lines.len() as u64, "cut short"),
            (&duplicated, 4, "appears twice"),
            (&wrong_count, lines.len() as u64, "end line counts"),
        ];
        for (input, expected_line, expected_text) in cases {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(dir.path()).unwrap();
            let error = import_text(&store, input).unwrap_err();
            let message = error.to_string();
            match error {
                StoreError::InvalidImport { line, .. } => {
                    assert_eq!(line, expected_line, "{message}")
                }
                other => panic!("expected an invalid line for {expected_text:?}, got {other}"),
            }
            assert!(message.contains(expected_text), "{message}");
            assert!(!schema::has_data(store.db()).unwrap(), "{expected_text}");
        }
    }

    #[test]
    fn newer_export_is_rejected() {
        let header = format!(
            r#"{{"palisade_export":1,"schema_version":{},"exported_at":"2024-01-01T00:00:00Z"}}"#,
            SCHEMA_VERSION + 1
        );
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let message = import_text(&store, &header).unwrap_err().to_string();
        assert!(
            message.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{message}"
        );
        assert!(message.contains("upgrade palisade"), "{message}");
    }

    #[test]
    fn older_export_is_migrated_after_import() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(source_dir.path()).unwrap();
        source.ingest_alert(&alert(FIM), Utc::now()).unwrap();
        let (exported, _) = export_text(&source);
        // A version 1 export: the same records under a version 1 header.
        let mut lines: Vec<String> = exported.lines().map(str::to_string).collect();
        lines[0] =
            r#"{"palisade_export":1,"schema_version":1,"exported_at":"2024-01-01T00:00:00Z"}"#
                .into();

        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let summary = import_text(&store, &lines.join("\n")).unwrap();
        assert_eq!(summary.exported_schema_version, 1);
        assert_eq!(summary.schema_version, SCHEMA_VERSION);
        let meta = store.db().open_tree(META_TREE).unwrap();
        assert_eq!(schema::stored_version(&meta).unwrap(), Some(SCHEMA_VERSION));
        // One `schema_migrated` record per migration from version 1.
        let records = store.audit_records(0, 100).unwrap();
        let migrations = schema::MIGRATIONS.len() as u64;
        assert_eq!(records.len() as u64, migrations);
        assert_eq!(records[0].action, "schema_migrated");
        assert_eq!(
            summary.audit,
            AuditVerdict::Intact {
                records: migrations,
                head: records.last().unwrap().hash.clone()
            }
        );
        assert_eq!(store.cases().unwrap().len(), 1);
    }

    #[test]
    fn reordered_chain_stays_broken_after_import() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(source_dir.path()).unwrap();
        populate(&source);
        let audit = source.db().open_tree(AUDIT_TREE).unwrap();
        let second = audit.get(2u64.to_be_bytes()).unwrap().unwrap();
        let third = audit.get(3u64.to_be_bytes()).unwrap().unwrap();
        audit.insert(2u64.to_be_bytes(), third).unwrap();
        audit.insert(3u64.to_be_bytes(), second).unwrap();
        let before = source.verify_audit().unwrap();
        assert!(
            matches!(before, AuditVerdict::Broken { seq: 2, .. }),
            "{before:?}"
        );

        let (exported, _) = export_text(&source);
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let imported = import_text(&store, &exported).unwrap();
        assert_eq!(imported.audit, before);
    }

    #[test]
    fn broken_chain_is_exported_and_reported() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(source_dir.path()).unwrap();
        populate(&source);
        let audit = source.db().open_tree(AUDIT_TREE).unwrap();
        audit.insert(2u64.to_be_bytes(), &b"not json"[..]).unwrap();
        let (exported, summary) = export_text(&source);
        assert_eq!(summary.kinds.get("audit"), Some(&2));

        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let imported = import_text(&store, &exported).unwrap();
        match imported.audit {
            AuditVerdict::Broken { seq, reason } => {
                assert_eq!(seq, 2);
                assert!(reason.starts_with("record is not JSON"), "{reason}");
            }
            intact => panic!("expected a broken chain, got {intact:?}"),
        }
        let (again, _) = export_text(&store);
        assert_eq!(body(&again), body(&exported));
    }
}
