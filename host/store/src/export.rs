//! Export of a whole database as JSON lines, and import of such an export
//! into an empty database.
//!
//! The first line is a header:
//! `{"palisade_export":1,"schema_version":2,"exported_at":"..."}`. Each
//! following line is one record, tagged by `kind`:
//!
//! - `counter`: `tree`, `name` and `value` of a sequence counter (the
//!   `counters` tree, and the case counter kept in `cases`);
//! - `alert`: the `alert` and the `case_id` it joined;
//! - `case`: the `case` with its alert ids, timeline and run ids;
//! - `run`: the `run` with its steps;
//! - `pending`: the `alert_id` of an accepted alert whose runs have not
//!   finished, oldest first;
//! - `kv`: a plugin's `namespace`, `key` and `value` (base64);
//! - `secret`: a secret's `name` and its encrypted `record` (base64), which
//!   is never decrypted here;
//! - `audit`: an audit `record`, unchanged, so its hashes still verify;
//! - `raw`: `tree`, `key` and `value` (both base64) of an entry in a tree
//!   this module does not know. Entries of known trees that no other kind
//!   covers are raw lines too, such as a case list item whose case is
//!   missing or an audit record that is not JSON. So nothing in the
//!   database is left out.
//!
//! The last line is `{"kind":"end","records":N}` with the number of record
//! lines, so an import notices a file that was cut short. Records are
//! written in a fixed order, so exporting an imported database gives the
//! same lines except the header's `exported_at`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use palisade_model::{Alert, Case, RunRecord};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::audit::{AUDIT_TREE, AuditRecord, AuditVerdict};
use crate::schema::{self, META_TREE, SCHEMA_VERSION};
use crate::sled_store::{CASE_COUNTER, SledStore};

/// Version of the export format in the header's `palisade_export`.
pub const EXPORT_FORMAT: u32 = 1;

/// Trees whose entries are written as typed lines. Every other tree is
/// written as `raw` lines.
const TYPED_TREES: &[&str] = &[
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

/// Summary of an export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub schema_version: u32,
    /// Record lines, without the header and end lines.
    pub records: u64,
    /// Record lines by kind.
    pub kinds: BTreeMap<String, u64>,
}

/// Summary of an import, with the state of the audit chain it brought in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportSummary {
    /// Schema version in the export's header.
    pub exported_schema_version: u32,
    /// Schema version of the database after the import, which ran any
    /// migrations from the exported version.
    pub schema_version: u32,
    pub records: u64,
    pub kinds: BTreeMap<String, u64>,
    pub audit: AuditVerdict,
}

/// The first line of an export.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    palisade_export: u32,
    schema_version: u32,
    exported_at: DateTime<Utc>,
}

/// One line after the header.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
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
    fn kind(&self) -> &'static str {
        match self {
            Line::Counter { .. } => "counter",
            Line::Alert { .. } => "alert",
            Line::Case { .. } => "case",
            Line::Run { .. } => "run",
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
        serde_json::to_writer(&mut *self.out, value)
            .map_err(|error| StoreError::Io(format!("cannot write the export: {error}")))?;
        self.out.write_all(b"\n").map_err(write_error)
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

fn database(error: sled::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

fn text(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

/// Part of a key before its first zero byte, which is the record id in
/// `case_items`, `run_steps` and `kv` keys.
fn before_zero(key: &[u8]) -> Option<&[u8]> {
    key.iter()
        .position(|&byte| byte == 0)
        .map(|end| &key[..end])
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
    export_runs(store, &tree("runs")?, &tree("run_steps")?, &mut writer)?;
    for entry in tree("pending")?.iter() {
        let (key, value) = entry.map_err(database)?;
        match text(&value) {
            Some(alert_id) => writer.record(Line::Pending { alert_id })?,
            None => writer.record(raw("pending", &key, &value))?,
        }
    }
    for entry in tree("kv")?.iter() {
        let (key, value) = entry.map_err(database)?;
        let split = before_zero(&key).and_then(|namespace| {
            let namespace = text(namespace)?;
            let name = text(&key[namespace.len() + 1..])?;
            Some((namespace, name))
        });
        match split {
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
        // A record that is not JSON, sits under another seq or does not
        // encode back to the same bytes is kept raw. Verifying the imported
        // chain then finds the same break as verifying this one.
        let typed = serde_json::from_slice::<AuditRecord>(&value)
            .ok()
            .filter(|record| key.as_ref() == record.seq.to_be_bytes())
            .filter(|record| serde_json::to_vec(record).ok().as_deref() == Some(&value[..]));
        match typed {
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
        let counter = text(&key).zip(<[u8; 8]>::try_from(value.as_ref()).ok());
        match counter {
            Some((name, bytes)) => writer.record(Line::Counter {
                tree: "counters".into(),
                name,
                value: u64::from_be_bytes(bytes),
            })?,
            None => writer.record(raw("counters", &key, &value))?,
        }
    }
    if let Some(value) = cases.get(CASE_COUNTER).map_err(database)? {
        match <[u8; 8]>::try_from(value.as_ref()) {
            Ok(bytes) => writer.record(Line::Counter {
                tree: "cases".into(),
                name: String::from_utf8_lossy(CASE_COUNTER).into_owned(),
                value: u64::from_be_bytes(bytes),
            })?,
            Err(_) => writer.record(raw("cases", CASE_COUNTER, &value))?,
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
        let alert: Alert = serde_json::from_slice(&bytes).map_err(|error| StoreError::Corrupt {
            tree: "alerts",
            key: String::from_utf8_lossy(&key).into_owned(),
            message: error.to_string(),
        })?;
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
    store: &SledStore,
    runs: &sled::Tree,
    run_steps: &sled::Tree,
    writer: &mut LineWriter<'_>,
) -> Result<(), StoreError> {
    for entry in runs.iter() {
        let (key, bytes) = entry.map_err(database)?;
        let run = store.assemble_run(&key, &bytes)?;
        check_id("runs", &key, &run.id)?;
        writer.record(Line::Run { run: Box::new(run) })?;
    }
    // Steps whose run is missing.
    for entry in run_steps.iter() {
        let (key, value) = entry.map_err(database)?;
        let has_run = match before_zero(&key) {
            Some(run_id) => runs.contains_key(run_id).map_err(database)?,
            None => false,
        };
        if !has_run {
            writer.record(raw("run_steps", &key, &value))?;
        }
    }
    Ok(())
}

/// Writes every entry of the trees not in [`TYPED_TREES`] as `raw` lines,
/// trees in name order.
fn export_other_trees(db: &sled::Db, writer: &mut LineWriter<'_>) -> Result<(), StoreError> {
    let mut names: Vec<String> = db
        .tree_names()
        .iter()
        .filter_map(|name| text(name))
        .filter(|name| !TYPED_TREES.contains(&name.as_str()))
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

/// Reads an export into `store`, which must be empty. On any error the
/// database is emptied again, so the import can be retried.
pub(crate) fn import(
    store: &SledStore,
    input: &mut dyn BufRead,
) -> Result<ImportSummary, StoreError> {
    let db = store.db();
    if schema::has_data(db)? {
        return Err(StoreError::NotEmpty {
            path: store.path().display().to_string(),
        });
    }
    let result = import_lines(store, input);
    if result.is_err() {
        empty_database(store)?;
    }
    result
}

fn import_lines(store: &SledStore, input: &mut dyn BufRead) -> Result<ImportSummary, StoreError> {
    let db = store.db();
    let mut reader = LineReader {
        input,
        number: 0,
        buffer: Vec::new(),
    };
    let header = read_header(&mut reader)?;
    let meta = db.open_tree(META_TREE).map_err(database)?;
    // Records are written in the exported layout, then migrated.
    schema::write_version(&meta, header.schema_version)?;

    let mut records = 0u64;
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let Some(text) = reader.next_line()? else {
            return Err(StoreError::InvalidImport {
                line: reader.number + 1,
                message: format!(
                    "the file ends after {records} records without the end line; it was cut short, so export again"
                ),
            });
        };
        let line: Line = serde_json::from_str(&text).map_err(|error| reader.invalid(error))?;
        if let Line::End { records: expected } = line {
            if expected != records {
                return Err(reader.invalid(format!(
                    "the end line counts {expected} records, but {records} were read"
                )));
            }
            break;
        }
        *kinds.entry(line.kind().to_string()).or_default() += 1;
        apply_line(store, line).map_err(|error| match error {
            LineError::Invalid(message) => reader.invalid(message),
            LineError::Store(error) => error,
        })?;
        records += 1;
    }
    if reader.next_line()?.is_some() {
        return Err(reader.invalid("a line follows the end line"));
    }

    schema::migrate(db, store.path(), header.schema_version)?;
    store.audit_log().reload_head()?;
    db.flush().map_err(database)?;
    let audit = store.audit_log().verify()?;
    Ok(ImportSummary {
        exported_schema_version: header.schema_version,
        schema_version: SCHEMA_VERSION,
        records,
        kinds,
        audit,
    })
}

/// Reads lines and numbers them from 1.
struct LineReader<'a> {
    input: &'a mut dyn BufRead,
    number: u64,
    buffer: Vec<u8>,
}

impl LineReader<'_> {
    /// Returns the next line without its line break, or `None` at the end.
    fn next_line(&mut self) -> Result<Option<String>, StoreError> {
        self.buffer.clear();
        let read = self
            .input
            .read_until(b'\n', &mut self.buffer)
            .map_err(|error| StoreError::Io(format!("cannot read the import: {error}")))?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if self.buffer.last() == Some(&b'\n') {
            self.buffer.pop();
        }
        if self.buffer.last() == Some(&b'\r') {
            self.buffer.pop();
        }
        let line = std::str::from_utf8(&self.buffer)
            .map_err(|error| self.invalid(format!("not UTF-8: {error}")))?;
        Ok(Some(line.to_string()))
    }

    fn invalid(&self, message: impl ToString) -> StoreError {
        StoreError::InvalidImport {
            line: self.number,
            message: message.to_string(),
        }
    }
}

fn read_header(reader: &mut LineReader<'_>) -> Result<Header, StoreError> {
    let Some(text) = reader.next_line()? else {
        return Err(StoreError::InvalidImport {
            line: 1,
            message: "the file is empty; expected a palisade export".into(),
        });
    };
    let header: Header = serde_json::from_str(&text).map_err(|error| {
        reader.invalid(format!(
            "expected the header {{\"palisade_export\": {EXPORT_FORMAT}, \"schema_version\": N, \"exported_at\": TIME}}: {error}"
        ))
    })?;
    if header.palisade_export != EXPORT_FORMAT {
        return Err(reader.invalid(format!(
            "export format {} is not supported; this palisade reads format {EXPORT_FORMAT}",
            header.palisade_export
        )));
    }
    if header.schema_version > SCHEMA_VERSION || header.schema_version == 0 {
        return Err(reader.invalid(format!(
            "the export has schema version {}, but this palisade supports versions 1 to {SCHEMA_VERSION}; import it with the palisade that exported it, or upgrade palisade",
            header.schema_version
        )));
    }
    Ok(header)
}

/// Failure to apply one line.
enum LineError {
    /// The line is well-formed JSON but its content is not acceptable.
    Invalid(String),
    /// The database failed.
    Store(StoreError),
}

impl From<StoreError> for LineError {
    fn from(error: StoreError) -> Self {
        LineError::Store(error)
    }
}

impl From<sled::Error> for LineError {
    fn from(error: sled::Error) -> Self {
        LineError::Store(database(error))
    }
}

fn base64_field(field: &str, value: &str) -> Result<Vec<u8>, LineError> {
    BASE64
        .decode(value)
        .map_err(|error| LineError::Invalid(format!("`{field}` is not base64: {error}")))
}

/// Inserts `key` into `tree` unless it is there already, which means the
/// export lists the same record twice.
fn insert_new(tree: &sled::Tree, key: &[u8], value: &[u8], what: &str) -> Result<(), LineError> {
    let swapped = tree.compare_and_swap(key, None::<&[u8]>, Some(value))?;
    swapped.map_err(|_| {
        LineError::Invalid(format!(
            "{what} {:?} appears twice",
            String::from_utf8_lossy(key)
        ))
    })
}

fn apply_line(store: &SledStore, line: Line) -> Result<(), LineError> {
    let db = store.db();
    let tree = |name: &str| db.open_tree(name).map_err(LineError::from);
    match line {
        Line::Counter {
            tree: name,
            name: key,
            value,
        } => {
            let valid = name == "counters" || (name == "cases" && key.as_bytes() == CASE_COUNTER);
            if !valid {
                return Err(LineError::Invalid(format!(
                    "counter {key:?} in tree {name:?} is not a known counter"
                )));
            }
            insert_new(
                &tree(&name)?,
                key.as_bytes(),
                &value.to_be_bytes(),
                "counter",
            )
        }
        Line::Alert { alert, case_id } => {
            let bytes = serde_json::to_vec(&alert)
                .map_err(|error| LineError::Invalid(format!("alert cannot be encoded: {error}")))?;
            insert_new(&tree("alerts")?, alert.id.as_bytes(), &bytes, "alert")?;
            if let Some(case_id) = case_id {
                tree("alert_cases")?.insert(alert.id.as_bytes(), case_id.as_bytes())?;
            }
            Ok(())
        }
        Line::Case { case } => {
            if case.id.as_bytes() == CASE_COUNTER
                || tree("cases")?.contains_key(case.id.as_bytes())?
            {
                return Err(LineError::Invalid(format!(
                    "case {:?} appears twice",
                    case.id
                )));
            }
            Ok(store.restore_case(*case)?)
        }
        Line::Run { run } => {
            if tree("runs")?.contains_key(run.id.as_bytes())? {
                return Err(LineError::Invalid(format!(
                    "run {:?} appears twice",
                    run.id
                )));
            }
            Ok(store.restore_run(&run)?)
        }
        Line::Pending { alert_id } => {
            // Fresh keys from this database keep the order and never clash
            // with keys it hands out later.
            let key = db.generate_id()?.to_be_bytes();
            tree("pending")?.insert(key, alert_id.as_bytes())?;
            Ok(())
        }
        Line::Kv {
            namespace,
            key,
            value,
        } => {
            if namespace.as_bytes().contains(&0) {
                return Err(LineError::Invalid(format!(
                    "kv namespace {namespace:?} contains a zero byte"
                )));
            }
            let mut full = namespace.into_bytes();
            full.push(0);
            full.extend_from_slice(key.as_bytes());
            insert_new(
                &tree("kv")?,
                &full,
                &base64_field("value", &value)?,
                "kv key",
            )
        }
        Line::Secret { name, record } => insert_new(
            &tree("secrets")?,
            name.as_bytes(),
            &base64_field("record", &record)?,
            "secret",
        ),
        Line::Audit { record } => {
            if tree(AUDIT_TREE)?.contains_key(record.seq.to_be_bytes())? {
                return Err(LineError::Invalid(format!(
                    "audit record {} appears twice",
                    record.seq
                )));
            }
            Ok(store.audit_log().restore(&record)?)
        }
        Line::Raw {
            tree: name,
            key,
            value,
        } => {
            if name == META_TREE {
                return Err(LineError::Invalid(
                    "raw entries of the `meta` tree are not accepted; the header sets the schema version".into(),
                ));
            }
            let key = base64_field("key", &key)?;
            let value = base64_field("value", &value)?;
            insert_new(
                &tree(&name)?,
                &key,
                &value,
                &format!("entry of tree {name:?}"),
            )
        }
        Line::End { .. } => Ok(()),
    }
}

/// Removes every entry a failed import wrote and stamps the current
/// schema version again.
fn empty_database(store: &SledStore) -> Result<(), StoreError> {
    let db = store.db();
    for name in db.tree_names() {
        db.open_tree(&name)
            .map_err(database)?
            .clear()
            .map_err(database)?;
    }
    let meta = db.open_tree(META_TREE).map_err(database)?;
    schema::write_version(&meta, SCHEMA_VERSION)?;
    store.audit_log().reload_head()?;
    db.flush().map_err(database)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditEvent, Store};
    use palisade_model::parse_alerts;
    use serde_json::json;

    const FIM: &str = r#"{"timestamp":"2022-11-17T19:17:42.694+0200","rule":{"level":5,"id":"554","description":"File added to the system."},"agent":{"name":"Ubuntu","ip":"10.0.2.15"},"syscheck":{"sha256_after":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#;

    fn alert(text: &str) -> Alert {
        parse_alerts(text).pop().unwrap().unwrap()
    }

    fn run_record(id: &str, alert_id: &str, case_id: &str) -> RunRecord {
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
    fn populate(store: &SledStore) {
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

    fn export_text(store: &SledStore) -> (String, ExportSummary) {
        let mut out = Vec::new();
        let summary = store.export(&mut out).unwrap();
        (String::from_utf8(out).unwrap(), summary)
    }

    fn body(text: &str) -> Vec<&str> {
        text.lines().skip(1).collect()
    }

    fn import_text(store: &SledStore, text: &str) -> Result<ImportSummary, StoreError> {
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
