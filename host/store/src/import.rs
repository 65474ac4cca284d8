//! Import of an export written by [`crate::export`] into an empty database.
//!
//! The import reads one line at a time, at most [`MAX_LINE_BYTES`] long,
//! checks it and writes it. On any error it empties the database again, so
//! the import can be retried. What it accepts:
//!
//! - The header's format is [`EXPORT_FORMAT`] and its schema version is
//!   between 1 and [`SCHEMA_VERSION`]. The records must fit that version:
//!   audit lines need version 2, which created the audit log, `correlation`
//!   entries need version 3, and a `schema_migrated` audit record needs the
//!   version it migrated to. So a header changed to an older version is
//!   rejected instead of running migrations on records that already have
//!   the newer layout. Records with nothing of a newer layout in them are
//!   migrated from the header's version, as if they were that old.
//! - Alert, case and run ids are not empty and contain no zero byte,
//!   because the store uses them as key prefixes that end at a zero byte.
//!   Each record, step, counter, key-value entry, secret and audit record
//!   appears once.
//! - A raw line of a tree that no typed line covers is written as it is.
//!   For a typed tree, a raw line may carry only an entry that no typed
//!   line can carry, which is the rule export follows. Such entries are:
//!   - a counter whose name is not UTF-8 or whose value is not 8 bytes;
//!   - a case list item or a step whose case or run is not in the export,
//!     or whose key has another shape;
//!   - a pending entry that is not UTF-8;
//!   - a key-value key without a namespace, or a secret name that is not
//!     UTF-8;
//!   - an audit record that is not exactly as [`crate::audit`] writes it.
//!
//!   Raw lines for `alerts`, `runs` and `meta` are rejected. Raw
//!   `pending_index` lines, which older exports contain, are read and
//!   skipped, because the index is built again from the `pending` lines.
//!
//! After the last line, the migrations from the header's version run, every
//! record is read back the way an export reads it, and the audit chain and
//! the step digests are verified. A broken chain does not undo the import:
//! an export copies a broken chain as it is, so that a backup of a damaged
//! database can still be restored, and [`ImportSummary::audit`] names the
//! first break.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use crate::audit::AUDIT_TREE;
use crate::correlation::CORRELATION_TREE;
use crate::export::{
    DERIVED_TREES, EXPORT_FORMAT, Header, Line, MAX_LINE_BYTES, before_zero, case_counter_value,
    counter_entry, database, kv_entry, step_position, text, typed_audit,
};
use crate::schema::{self, META_TREE, SCHEMA_VERSION};
use crate::sled_store::{CASE_COUNTER, SledStore, step_key};
use crate::{AuditVerdict, Store, StoreError};

/// Schema version that created the audit log.
const AUDIT_LOG_VERSION: u32 = 2;

/// Schema version that created the `correlation` index.
const CORRELATION_VERSION: u32 = 3;

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
    /// Result of [`Store::verify_audit`] on the imported database. The
    /// imported records stay when it is broken.
    pub audit: AuditVerdict,
}

/// Reads an export into `store`, which must be empty; see the module
/// documentation for what it accepts.
pub(crate) fn import(
    store: &SledStore,
    input: &mut dyn BufRead,
) -> Result<ImportSummary, StoreError> {
    import_with_limit(store, input, MAX_LINE_BYTES)
}

/// [`import`] with a maximum line length of `max_line` bytes.
fn import_with_limit(
    store: &SledStore,
    input: &mut dyn BufRead,
    max_line: usize,
) -> Result<ImportSummary, StoreError> {
    let db = store.db();
    if schema::has_data(db)? {
        return Err(StoreError::NotEmpty {
            path: store.path().display().to_string(),
        });
    }
    let result = import_lines(store, input, max_line);
    if result.is_err() {
        empty_database(store)?;
    }
    result
}

fn import_lines(
    store: &SledStore,
    input: &mut dyn BufRead,
    max_line: usize,
) -> Result<ImportSummary, StoreError> {
    let db = store.db();
    let mut reader = LineReader {
        input,
        max_line,
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
        check_version(&line, header.schema_version).map_err(|message| reader.invalid(message))?;
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
    read_back(store)?;
    db.flush().map_err(database)?;
    let audit = store.verify_audit()?;
    Ok(ImportSummary {
        exported_schema_version: header.schema_version,
        schema_version: SCHEMA_VERSION,
        records,
        kinds,
        audit,
    })
}

/// Reads lines of at most `max_line` bytes and numbers them from 1.
struct LineReader<'a> {
    input: &'a mut dyn BufRead,
    max_line: usize,
    number: u64,
    buffer: Vec<u8>,
}

impl LineReader<'_> {
    /// Returns the next line without its line break, or `None` at the end.
    fn next_line(&mut self) -> Result<Option<String>, StoreError> {
        self.buffer.clear();
        // One byte more than a line may have, so that a full buffer without
        // a line break shows the line is too long.
        let limit = self.max_line as u64 + 1;
        let read = (&mut *self.input)
            .take(limit)
            .read_until(b'\n', &mut self.buffer)
            .map_err(|error| StoreError::Io(format!("cannot read the import: {error}")))?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if self.buffer.last() == Some(&b'\n') {
            self.buffer.pop();
        } else if read as u64 == limit {
            return Err(self.invalid(format!(
                "the line is longer than {} bytes, which no palisade export writes; check that the file is an export",
                self.max_line
            )));
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

/// Fails when `line` contains a record that schema version `version` did
/// not have, which means the header's version was changed.
fn check_version(line: &Line, version: u32) -> Result<(), String> {
    let (needed, what) = match line {
        Line::Audit { record } if record.action == "schema_migrated" => {
            let to = record
                .detail
                .get("to")
                .and_then(Value::as_u64)
                .map_or(AUDIT_LOG_VERSION, |to| {
                    u32::try_from(to).unwrap_or(u32::MAX)
                });
            let what = format!(
                "audit record {} records a migration to schema version {to}",
                record.seq
            );
            (to.max(AUDIT_LOG_VERSION), what)
        }
        Line::Audit { record } => (
            AUDIT_LOG_VERSION,
            format!("audit record {} needs the audit log", record.seq),
        ),
        Line::Raw { tree, .. } if tree == AUDIT_TREE => (
            AUDIT_LOG_VERSION,
            "this entry of the audit log needs the audit log".to_string(),
        ),
        Line::Raw { tree, .. } if tree == CORRELATION_TREE => (
            CORRELATION_VERSION,
            "this entry of the `correlation` tree needs the correlation index".to_string(),
        ),
        _ => return Ok(()),
    };
    if needed <= version {
        return Ok(());
    }
    Err(format!(
        "the header has schema version {version}, but {what}, which schema version {needed} introduced; the header does not match the records, so import the export as palisade wrote it"
    ))
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

/// Fails unless `id` can be the key of a `what` record.
fn check_record_id(what: &str, id: &str) -> Result<(), LineError> {
    if id.is_empty() {
        return Err(LineError::Invalid(format!("{what} id is empty")));
    }
    if id.contains('\0') {
        return Err(LineError::Invalid(format!(
            "{what} id {id:?} contains a zero byte, which ends a key prefix in the store"
        )));
    }
    Ok(())
}

/// Returns whether `tree` has an entry whose key starts with `id` and a
/// zero byte.
fn has_items(tree: &sled::Tree, id: &str) -> Result<bool, LineError> {
    let mut prefix = id.as_bytes().to_vec();
    prefix.push(0);
    Ok(tree.scan_prefix(prefix).next().transpose()?.is_some())
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, LineError> {
    serde_json::to_vec(value)
        .map_err(|error| LineError::Invalid(format!("{what} cannot be encoded: {error}")))
}

/// Writes step `index` of run `run_id` unless it is written already.
fn insert_step(
    run_steps: &sled::Tree,
    run_id: &str,
    index: usize,
    step: &palisade_model::StepRecord,
) -> Result<(), LineError> {
    let bytes = encode("step", step)?;
    let swapped =
        run_steps.compare_and_swap(step_key(run_id, index), None::<&[u8]>, Some(bytes))?;
    swapped.map_err(|_| LineError::Invalid(format!("step {index} of run {run_id:?} appears twice")))
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
            check_record_id("alert", &alert.id)?;
            let alert_cases = tree("alert_cases")?;
            if alert_cases.contains_key(alert.id.as_bytes())? {
                return Err(LineError::Invalid(format!(
                    "alert {:?} follows a raw line that links it to a case; a raw line may only link an alert that the export does not contain",
                    alert.id
                )));
            }
            let bytes = encode("alert", &alert)?;
            insert_new(&tree("alerts")?, alert.id.as_bytes(), &bytes, "alert")?;
            if let Some(case_id) = case_id {
                alert_cases.insert(alert.id.as_bytes(), case_id.as_bytes())?;
            }
            Ok(())
        }
        Line::Case { case } => {
            check_record_id("case", &case.id)?;
            if case.id.as_bytes() == CASE_COUNTER
                || tree("cases")?.contains_key(case.id.as_bytes())?
            {
                return Err(LineError::Invalid(format!(
                    "case {:?} appears twice",
                    case.id
                )));
            }
            if has_items(&tree("case_items")?, &case.id)? {
                return Err(LineError::Invalid(format!(
                    "case {:?} follows raw list items of the same case; a raw line may only carry items of a case that the export does not contain",
                    case.id
                )));
            }
            Ok(store.restore_case(*case)?)
        }
        Line::Run { run } => {
            check_record_id("run", &run.id)?;
            if tree("runs")?.contains_key(run.id.as_bytes())? {
                return Err(LineError::Invalid(format!(
                    "run {:?} appears twice",
                    run.id
                )));
            }
            let run_steps = tree("run_steps")?;
            if has_items(&run_steps, &run.id)? {
                return Err(LineError::Invalid(format!(
                    "run {:?} follows steps of the same run; its steps must follow it",
                    run.id
                )));
            }
            store.restore_run_header(&run)?;
            // Exports without `step` lines carry the steps here, numbered
            // from 0.
            for (index, step) in run.steps.iter().enumerate() {
                insert_step(&run_steps, &run.id, index, step)?;
            }
            Ok(())
        }
        Line::Step {
            run_id,
            index,
            step,
        } => {
            if !tree("runs")?.contains_key(run_id.as_bytes())? {
                return Err(LineError::Invalid(format!(
                    "step {index} of run {run_id:?} comes before the line of its run, or that run is missing"
                )));
            }
            insert_step(&tree("run_steps")?, &run_id, index as usize, &step)
        }
        Line::Pending { alert_id } => {
            // Fresh keys from this database keep the order and never clash
            // with keys it hands out later. The index maps each alert to
            // its new key.
            let key = db.generate_id()?.to_be_bytes();
            let swapped = tree("pending_index")?.compare_and_swap(
                alert_id.as_bytes(),
                None::<&[u8]>,
                Some(&key[..]),
            )?;
            if swapped.is_err() {
                return Err(LineError::Invalid(format!(
                    "alert {alert_id:?} is pending twice"
                )));
            }
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
            let key = base64_field("key", &key)?;
            let value = base64_field("value", &value)?;
            if let RawEntry::Skip = admit_raw(db, &name, &key, &value)? {
                return Ok(());
            }
            if name == "pending" {
                // Renumbered like a `pending` line, to keep the order.
                let fresh = db.generate_id()?.to_be_bytes();
                tree("pending")?.insert(fresh, value)?;
                return Ok(());
            }
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

/// Action on the entry of a raw line.
enum RawEntry {
    Write,
    /// The entry belongs to a tree the import builds itself.
    Skip,
}

/// Decides whether a raw line may carry entry `key` of tree `name`; see the
/// module documentation for the rules.
fn admit_raw(db: &sled::Db, name: &str, key: &[u8], value: &[u8]) -> Result<RawEntry, LineError> {
    let contains = |tree: &str, key: &[u8]| -> Result<bool, LineError> {
        Ok(db.open_tree(tree)?.contains_key(key)?)
    };
    let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let covered = match name {
        META_TREE => {
            return Err(LineError::Invalid(
                "raw entries of the `meta` tree are not accepted; the header sets the schema version".into(),
            ));
        }
        "alerts" | "runs" => {
            return Err(LineError::Invalid(format!(
                "raw entries of tree `{name}` are not accepted; an export writes each of its entries as a typed line"
            )));
        }
        name if DERIVED_TREES.contains(&name) => return Ok(RawEntry::Skip),
        "counters" => counter_entry(key, value)
            .map(|(counter, _)| (format!("counter {counter:?}"), "counter")),
        "cases" if key != CASE_COUNTER => Some((format!("case {:?}", lossy(key)), "case")),
        "cases" => case_counter_value(value).map(|_| ("the case counter".to_string(), "counter")),
        "alert_cases" => contains("alerts", key)?
            .then(|| (format!("the case link of alert {:?}", lossy(key)), "alert")),
        "case_items" => match before_zero(key) {
            Some(case_id) if case_id != CASE_COUNTER && contains("cases", case_id)? => {
                Some((format!("a list item of case {:?}", lossy(case_id)), "case"))
            }
            _ => None,
        },
        "run_steps" => match step_position(key) {
            Some((run_id, index)) if contains("runs", run_id)? => {
                Some((format!("step {index} of run {:?}", lossy(run_id)), "step"))
            }
            _ => None,
        },
        "pending" => text(value).map(|alert_id| (format!("pending alert {alert_id:?}"), "pending")),
        "kv" => kv_entry(key)
            .map(|(namespace, key)| (format!("key {key:?} of namespace {namespace:?}"), "kv")),
        "secrets" => text(key).map(|secret| (format!("secret {secret:?}"), "secret")),
        AUDIT_TREE => {
            typed_audit(key, value).map(|record| (format!("audit record {}", record.seq), "audit"))
        }
        _ => None,
    };
    match covered {
        Some((what, kind)) => Err(LineError::Invalid(format!(
            "a raw line for tree `{name}` may not carry {what}, because an export writes it as a `{kind}` line; raw lines carry only entries that no typed line can"
        ))),
        None => Ok(RawEntry::Write),
    }
}

/// Reads every record back the way an export does, so that an import never
/// leaves a database whose cases, runs or alerts cannot be read.
fn read_back(store: &SledStore) -> Result<(), StoreError> {
    crate::export::export(store, &mut std::io::sink())
        .map(|_| ())
        .map_err(|error| {
            StoreError::Database(format!(
                "the imported records cannot be read back, so the import was undone: {error}"
            ))
        })
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
    use crate::export::tests::{FIM, alert, body, export_text, import_text, populate};
    use crate::{AuditEvent, step_record_sha256};
    use chrono::Utc;
    use palisade_model::{RunRecord, StepRecord};
    use serde_json::json;

    fn open_store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        (dir, store)
    }

    /// Returns the export of a store that `fill` wrote to.
    fn exported(fill: impl FnOnce(&SledStore)) -> String {
        let (_dir, source) = open_store();
        fill(&source);
        export_text(&source).0
    }

    /// `exported` with `extra` inserted before the end line, whose count
    /// is raised to match. Returns the text and the first extra line's
    /// number.
    fn with_lines(exported: &str, extra: &[String]) -> (String, u64) {
        let mut lines: Vec<String> = exported.lines().map(str::to_string).collect();
        let end: Value = serde_json::from_str(&lines.pop().unwrap()).unwrap();
        let records = end["records"].as_u64().unwrap() + extra.len() as u64;
        let first = lines.len() as u64 + 1;
        lines.extend_from_slice(extra);
        lines.push(json!({ "kind": "end", "records": records }).to_string());
        (lines.join("\n") + "\n", first)
    }

    fn raw_line(tree: &str, key: &[u8], value: &[u8]) -> String {
        json!({
            "kind": "raw",
            "tree": tree,
            "key": BASE64.encode(key),
            "value": BASE64.encode(value),
        })
        .to_string()
    }

    /// Imports `text` into a fresh store, expects it to fail at `line`, and
    /// returns the message. The store must be empty afterwards.
    fn rejected_at(text: &str, line: u64) -> String {
        let (_dir, store) = open_store();
        let error = import_text(&store, text).unwrap_err();
        let message = error.to_string();
        match error {
            StoreError::InvalidImport { line: found, .. } => {
                assert_eq!(found, line, "{message}")
            }
            other => panic!("expected an invalid line {line}, got {other}"),
        }
        assert!(!schema::has_data(store.db()).unwrap(), "{message}");
        message
    }

    fn step(id: &str, output: Value) -> StepRecord {
        serde_json::from_value(json!({
            "id": id,
            "uses": "virustotal.lookup",
            "status": "succeeded",
            "attempt": 1,
            "started_at": "2024-05-01T10:00:00.25Z",
            "duration_us": 1500,
            "plugin_version": "0.1.0",
            "input": { "ip": "10.0.2.15" },
            "output": output,
            "error": null,
            "logs": [],
            "http_calls": []
        }))
        .unwrap()
    }

    /// Writes run `run_id` with a step at each of `indexes`, each followed
    /// by its `step_finished` audit record, as the engine writes them.
    fn journal_run(store: &SledStore, run_id: &str, indexes: &[u32]) {
        let run: RunRecord = serde_json::from_value(json!({
            "id": run_id,
            "playbook": "wazuh-triage",
            "alert_id": "a1",
            "case_id": "C00000001",
            "status": "succeeded",
            "started_at": "2024-05-01T10:00:00Z",
            "finished_at": "2024-05-01T10:00:01Z",
            "error": null
        }))
        .unwrap();
        store.put_run(&run).unwrap();
        for &index in indexes {
            let record = step(
                &format!("s{index}"),
                json!({ "malicious": index, "score": 0.7 }),
            );
            store.put_step(run_id, index as usize, &record).unwrap();
            store
                .append_audit(AuditEvent {
                    actor: "engine".into(),
                    action: "step_finished".into(),
                    subject: run_id.into(),
                    detail: json!({
                        "step": record.id,
                        "index": index,
                        "record_sha256": step_record_sha256(&record),
                    }),
                })
                .unwrap();
        }
    }
    #[test]
    fn finishing_an_imported_pending_alert_removes_only_it() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(source_dir.path()).unwrap();
        let now = Utc::now();
        let rules = ["554", "550", "551", "552", "553"];
        let ids: Vec<String> = rules
            .iter()
            .map(|rule| {
                let alert = alert(&FIM.replace("\"554\"", &format!("\"{rule}\"")));
                source.ingest_alert(&alert, now).unwrap();
                alert.id
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_ne!(sorted, ids, "pending keys must not follow alert id order");
        source.finish_pending(&ids[0]).unwrap();
        let (exported, _) = export_text(&source);

        for finished in &ids[1..] {
            let dir = tempfile::tempdir().unwrap();
            let copy = SledStore::open(dir.path()).unwrap();
            import_text(&copy, &exported).unwrap();
            copy.finish_pending(finished).unwrap();
            let expected: Vec<String> = ids[1..]
                .iter()
                .filter(|id| *id != finished)
                .cloned()
                .collect();
            assert_eq!(
                copy.pending_alerts().unwrap(),
                expected,
                "finished {finished}"
            );
        }
    }

    #[test]
    fn old_pending_index_lines_are_skipped() {
        let ids: Vec<String> = ["554", "550", "551"]
            .iter()
            .map(|rule| alert(&FIM.replace("\"554\"", &format!("\"{rule}\""))).id)
            .collect();
        let text = exported(|source| {
            for id_rule in ["554", "550", "551"] {
                let alert = alert(&FIM.replace("\"554\"", &format!("\"{id_rule}\"")));
                source.ingest_alert(&alert, Utc::now()).unwrap();
            }
        });
        assert!(!text.contains("pending_index"), "the index is not exported");
        // An export from before the index was derived maps each alert to a
        // key of the old database.
        let stale: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(number, id)| {
                raw_line(
                    "pending_index",
                    id.as_bytes(),
                    &(number as u64 + 7).to_be_bytes(),
                )
            })
            .collect();
        let raw_before = text.matches(r#""kind":"raw""#).count() as u64;
        let (text, _) = with_lines(&text, &stale);

        let (_dir, store) = open_store();
        let summary = import_text(&store, &text).unwrap();
        assert_eq!(summary.kinds["raw"], raw_before + 3);
        store.finish_pending(&ids[1]).unwrap();
        assert_eq!(
            store.pending_alerts().unwrap(),
            vec![ids[0].clone(), ids[2].clone()]
        );
    }

    #[test]
    fn pending_alert_listed_twice_is_rejected() {
        let text = exported(|source| {
            source.ingest_alert(&alert(FIM), Utc::now()).unwrap();
        });
        let pending = json!({ "kind": "pending", "alert_id": alert(FIM).id }).to_string();
        let (text, line) = with_lines(&text, &[pending]);
        let message = rejected_at(&text, line);
        assert!(message.contains("is pending twice"), "{message}");
    }

    #[test]
    fn raw_line_for_typed_entry_is_rejected() {
        let text = exported(populate);
        let fim_id = alert(FIM).id;
        let audit_record = {
            let (_dir, store) = open_store();
            populate(&store);
            store.audit_records(0, 1).unwrap().remove(0)
        };
        let mut item_key = b"C00000001\0\x01".to_vec();
        item_key.extend_from_slice(&9u32.to_be_bytes());
        let cases = [
            (
                "cases",
                b"C00000009".to_vec(),
                b"garbage".to_vec(),
                "case \"C00000009\"",
            ),
            (
                "cases",
                CASE_COUNTER.to_vec(),
                5u64.to_be_bytes().to_vec(),
                "the case counter",
            ),
            (
                "counters",
                b"other".to_vec(),
                5u64.to_be_bytes().to_vec(),
                "counter \"other\"",
            ),
            (
                "alerts",
                b"x".to_vec(),
                b"{}".to_vec(),
                "tree `alerts` are not accepted",
            ),
            (
                "runs",
                b"R00000009".to_vec(),
                b"{}".to_vec(),
                "tree `runs` are not accepted",
            ),
            (
                "meta",
                b"schema_version".to_vec(),
                vec![0, 0, 0, 1],
                "`meta` tree",
            ),
            (
                "alert_cases",
                fim_id.into_bytes(),
                b"C00000002".to_vec(),
                "case link of alert",
            ),
            (
                "case_items",
                item_key,
                b"{}".to_vec(),
                "list item of case \"C00000001\"",
            ),
            (
                "run_steps",
                step_key("R00000001", 7),
                b"{}".to_vec(),
                "step 7 of run \"R00000001\"",
            ),
            (
                "pending",
                vec![1; 8],
                b"some-alert".to_vec(),
                "pending alert \"some-alert\"",
            ),
            (
                "kv",
                b"ns\0key".to_vec(),
                b"v".to_vec(),
                "key \"key\" of namespace \"ns\"",
            ),
            (
                "secrets",
                b"api-key".to_vec(),
                b"sealed".to_vec(),
                "secret \"api-key\"",
            ),
            (
                AUDIT_TREE,
                9u64.to_be_bytes().to_vec(),
                {
                    let mut record = audit_record;
                    record.seq = 9;
                    serde_json::to_vec(&record).unwrap()
                },
                "audit record 9",
            ),
        ];
        for (tree, key, value, expected) in cases {
            let (input, line) = with_lines(&text, &[raw_line(tree, &key, &value)]);
            let message = rejected_at(&input, line);
            assert!(message.contains(&format!("`{tree}`")), "{tree}: {message}");
            assert!(message.contains(expected), "{tree}: {message}");
        }
    }

    #[test]
    fn raw_line_before_its_owner_is_rejected() {
        let text = exported(populate);
        let lines: Vec<&str> = text.lines().collect();
        let position = |kind: &str, id: &str| {
            lines
                .iter()
                .position(|line| {
                    line.starts_with(&format!(r#"{{"kind":"{kind}""#))
                        && line.contains(&format!(r#""id":"{id}""#))
                })
                .unwrap()
        };
        let fim_id = alert(FIM).id;
        let mut item_key = b"C00000001\0\x01".to_vec();
        item_key.extend_from_slice(&0u32.to_be_bytes());
        let cases = [
            (
                "alert",
                fim_id.as_str(),
                raw_line("alert_cases", fim_id.as_bytes(), b"C00000002"),
                "links it to a case",
            ),
            (
                "case",
                "C00000001",
                raw_line("case_items", &item_key, b"{}"),
                "follows raw list items",
            ),
            (
                "run",
                "R00000001",
                raw_line("run_steps", &step_key("R00000001", 0), b"{}"),
                "follows steps",
            ),
        ];
        for (kind, id, raw, expected) in cases {
            let mut changed: Vec<&str> = lines.clone();
            let at = position(kind, id);
            changed.insert(at, &raw);
            let end = changed.pop().unwrap();
            let mut end: Value = serde_json::from_str(end).unwrap();
            end["records"] = json!(end["records"].as_u64().unwrap() + 1);
            let end = end.to_string();
            changed.push(&end);
            let message = rejected_at(&changed.join("\n"), at as u64 + 2);
            assert!(message.contains(expected), "{kind}: {message}");
        }
    }

    #[test]
    fn raw_lines_of_damaged_entries_round_trip() {
        let plain_raw = exported(populate).matches(r#""kind":"raw""#).count() as u64;
        let text = exported(|source| {
            populate(source);
            let db = source.db();
            let tree = |name: &str| db.open_tree(name).unwrap();
            tree("counters").insert(b"short", &[1u8, 2][..]).unwrap();
            tree("counters")
                .insert(&[0xffu8, 0][..], &7u64.to_be_bytes()[..])
                .unwrap();
            tree("alert_cases")
                .insert(b"lost-alert", b"C00000001")
                .unwrap();
            tree("case_items")
                .insert(b"C00000077\0\x00\0\0\0\0", b"orphan")
                .unwrap();
            tree("case_items")
                .insert(b"no-zero-byte", b"orphan")
                .unwrap();
            tree("run_steps")
                .insert(step_key("R00000077", 0), b"orphan")
                .unwrap();
            tree("run_steps")
                .insert(b"R00000001\0ab", b"odd key")
                .unwrap();
            tree("pending")
                .insert(u64::MAX.to_be_bytes(), &[0xffu8, 0xfe][..])
                .unwrap();
            tree("kv").insert(b"no-namespace", b"v").unwrap();
            tree("secrets")
                .insert(&[0xc3u8, 0x28][..], b"sealed")
                .unwrap();
        });
        let (_dir, store) = open_store();
        let summary = import_text(&store, &text).unwrap();
        assert_eq!(summary.kinds["raw"], plain_raw + 10, "{:?}", summary.kinds);
        // The pending entry is renumbered like a `pending` line; every
        // other line comes back unchanged.
        let without_pending_key = |text: &str| -> Vec<String> {
            body(text)
                .into_iter()
                .map(|line| {
                    let mut value: Value = serde_json::from_str(line).unwrap();
                    if value["tree"] == "pending" {
                        value["key"] = json!("renumbered");
                    }
                    value.to_string()
                })
                .collect()
        };
        let (again, _) = export_text(&store);
        assert_eq!(without_pending_key(&again), without_pending_key(&text));
    }

    #[test]
    fn ids_that_break_key_prefixes_are_rejected() {
        let text = exported(populate);
        let cases = [
            (
                "alert",
                "a\u{0}b",
                "alert id \"a\\0b\" contains a zero byte",
            ),
            ("case", "C1\u{0}", "case id \"C1\\0\" contains a zero byte"),
            ("run", "", "run id is empty"),
        ];
        for (kind, id, expected) in cases {
            let mut lines: Vec<Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            let at = lines.iter().position(|line| line["kind"] == kind).unwrap();
            lines[at][kind]["id"] = json!(id);
            let changed: Vec<String> = lines.iter().map(Value::to_string).collect();
            let message = rejected_at(&changed.join("\n"), at as u64 + 1);
            assert!(message.contains(expected), "{kind}: {message}");
        }
    }

    #[test]
    fn step_indexes_survive_import() {
        let text = exported(|source| journal_run(source, "R00000001", &[0, 2, 5]));
        let step_lines = text
            .lines()
            .filter(|line| line.starts_with(r#"{"kind":"step""#))
            .count();
        assert_eq!(step_lines, 3);
        let (_dir, store) = open_store();
        let summary = import_text(&store, &text).unwrap();
        assert!(
            matches!(summary.audit, AuditVerdict::Intact { records: 3, .. }),
            "{:?}",
            summary.audit
        );
        let run_steps = store.db().open_tree("run_steps").unwrap();
        let indexes: Vec<u32> = run_steps
            .iter()
            .keys()
            .map(|key| step_position(&key.unwrap()).unwrap().1)
            .collect();
        assert_eq!(indexes, [0, 2, 5]);
    }

    #[test]
    fn steps_inside_run_line_are_numbered_from_zero() {
        // An export from before `step` lines existed.
        let text = exported(|source| journal_run(source, "R00000001", &[0, 1]));
        let mut steps = Vec::new();
        let mut lines: Vec<Value> = Vec::new();
        for line in text.lines().skip(1) {
            let value: Value = serde_json::from_str(line).unwrap();
            if value["kind"] == "step" {
                steps.push(value["step"].clone());
            } else {
                lines.push(value);
            }
        }
        for line in &mut lines {
            if line["kind"] == "run" {
                line["run"]["steps"] = json!(steps);
            }
            if line["kind"] == "end" {
                line["records"] = json!(line["records"].as_u64().unwrap() - 2);
            }
        }
        let mut old = vec![text.lines().next().unwrap().to_string()];
        old.extend(lines.iter().map(Value::to_string));

        let (_dir, store) = open_store();
        let summary = import_text(&store, &old.join("\n")).unwrap();
        assert!(matches!(summary.audit, AuditVerdict::Intact { .. }));
        let run = store.run("R00000001").unwrap().unwrap();
        let ids: Vec<&str> = run.steps.iter().map(|step| step.id.as_str()).collect();
        assert_eq!(ids, ["s0", "s1"]);
    }

    #[test]
    fn step_without_its_run_is_rejected() {
        let text = exported(|_| {});
        let line = json!({
            "kind": "step",
            "run_id": "R00000001",
            "index": 0,
            "step": step("s0", json!({})),
        });
        let (text, at) = with_lines(&text, &[line.to_string()]);
        let message = rejected_at(&text, at);
        assert!(message.contains("step 0 of run \"R00000001\""), "{message}");
    }

    #[test]
    fn edited_step_output_imports_as_broken() {
        let text = exported(|source| journal_run(source, "R00000012", &[0, 1, 2, 3]));
        let edited: Vec<String> = text
            .lines()
            .map(|line| {
                let mut value: Value = serde_json::from_str(line).unwrap();
                if value["kind"] == "step" && value["index"] == 3 {
                    value["step"]["output"]["malicious"] = json!(0);
                    return value.to_string();
                }
                line.to_string()
            })
            .collect();
        let (_dir, store) = open_store();
        let summary = import_text(&store, &edited.join("\n")).unwrap();
        match summary.audit {
            AuditVerdict::Broken { seq, reason } => {
                assert_eq!(seq, 4);
                assert!(
                    reason.starts_with("step 3 of run R00000012 does not match audit record 4"),
                    "{reason}"
                );
            }
            intact => panic!("expected a broken verdict, got {intact:?}"),
        }
        assert_eq!(store.runs().unwrap().len(), 1, "the data is kept");
    }

    #[test]
    fn long_line_is_rejected_with_its_number() {
        let text = exported(populate);
        let (_dir, store) = open_store();
        let longest = text.lines().map(str::len).max().unwrap();
        // A limit of exactly the longest line accepts the export.
        let summary = import_with_limit(&store, &mut text.as_bytes(), longest).unwrap();
        assert!(summary.records > 0);

        let (_dir, store) = open_store();
        let error = import_with_limit(&store, &mut text.as_bytes(), longest - 1).unwrap_err();
        let line = text.lines().position(|line| line.len() == longest).unwrap() as u64 + 1;
        match &error {
            StoreError::InvalidImport {
                line: found,
                message,
            } => {
                assert_eq!(*found, line, "{message}");
                assert!(
                    message.contains(&format!("longer than {}", longest - 1)),
                    "{message}"
                );
            }
            other => panic!("expected an invalid line, got {other}"),
        }
        assert!(!schema::has_data(store.db()).unwrap());
    }

    #[test]
    fn overlong_line_stops_the_read() {
        let header = format!(
            "{{\"palisade_export\":1,\"schema_version\":{SCHEMA_VERSION},\"exported_at\":\"2024-01-01T00:00:00Z\"}}\n"
        );
        // Twice the limit without a line break, streamed rather than held.
        let endless = std::io::repeat(b'x').take(2 * MAX_LINE_BYTES as u64);
        let mut input = std::io::BufReader::new(header.as_bytes().chain(endless));
        let (_dir, store) = open_store();
        let error = store.import(&mut input).unwrap_err();
        assert!(
            matches!(&error, StoreError::InvalidImport { line: 2, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("longer than 67108864 bytes"),
            "{error}"
        );
    }

    #[test]
    fn header_older_than_its_records_is_rejected() {
        let with_audit = exported(populate);
        let relabel = |text: &str, version: u32| {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let mut header: Value = serde_json::from_str(&lines[0]).unwrap();
            header["schema_version"] = json!(version);
            lines[0] = header.to_string();
            lines.join("\n")
        };
        let first_audit = with_audit
            .lines()
            .position(|line| line.starts_with(r#"{"kind":"audit""#))
            .unwrap() as u64
            + 1;
        let message = rejected_at(&relabel(&with_audit, 1), first_audit);
        assert!(
            message.contains("schema version 1, but audit record 1"),
            "{message}"
        );

        // The export of a migrated database records its last migration.
        let migrated = {
            let (_dir, store) = open_store();
            populate(&store);
            store
                .append_audit(AuditEvent {
                    actor: "store".into(),
                    action: "schema_migrated".into(),
                    subject: "database".into(),
                    detail: json!({ "from": 2, "to": 3, "description": "index" }),
                })
                .unwrap();
            export_text(&store).0
        };
        let migration_line = migrated
            .lines()
            .position(|line| line.contains("schema_migrated"))
            .unwrap() as u64
            + 1;
        let message = rejected_at(&relabel(&migrated, 2), migration_line);
        assert!(
            message.contains("records a migration to schema version 3"),
            "{message}"
        );

        let correlation = raw_line(CORRELATION_TREE, b"ip:10.0.2.15", b"{}");
        let (text, line) = with_lines(&exported(|_| {}), &[correlation]);
        let message = rejected_at(&relabel(&text, 2), line);
        assert!(message.contains("`correlation`"), "{message}");
    }

    #[test]
    fn introducing_versions_match_the_migrations() {
        let version_of = |description: &str| {
            schema::MIGRATIONS
                .iter()
                .find(|migration| migration.description == description)
                .map(|migration| migration.to)
        };
        assert_eq!(version_of("create the audit log"), Some(AUDIT_LOG_VERSION));
        assert_eq!(
            version_of("index open cases by correlation key"),
            Some(CORRELATION_VERSION)
        );
    }
}
