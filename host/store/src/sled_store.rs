//! The sled backend.
//!
//! Trees and their keys:
//! - `alerts`: alert id to the alert;
//! - `alert_cases`: alert id to the id of the case it joined;
//! - `cases`: case id (`C` and eight digits, in creation order) to the case,
//!   and the case counter under a key that sorts last;
//! - `case_items`: case id, a zero byte, a list tag (0 alert ids, 1
//!   timeline, 2 run ids, 3 notes) and an index (big-endian `u32`) to one
//!   item of that list;
//! - `open_cases`: fingerprint to the id of the open case with it;
//! - `correlation`: correlation key to the case that last took an alert
//!   with it and that alert's event time (see [`crate::correlation`]);
//! - `pending_index`: alert id to its key in `pending`, so finishing an
//!   alert does not scan the list. An export leaves it out, and an import
//!   builds it again;
//! - `pending`: sequence number to the id of an accepted alert whose runs
//!   have not finished;
//! - `runs`: run id (`R` and eight digits) to the run record without its
//!   steps;
//! - `run_steps`: run id, a zero byte and the step index (big-endian `u32`)
//!   to the step record;
//! - `alert_runs`: alert id, a zero byte and the playbook name to the id of
//!   the run of that playbook for that alert;
//! - `active_runs`: id of a run that is not final to its status and wake
//!   time;
//! - `timers`: wake time (milliseconds since the epoch, big-endian `i64`)
//!   and run id to nothing, one entry per waiting run;
//! - `counters`: sequence name to the last number handed out;
//! - `kv`: plugin name, a zero byte, then the plugin's key, to the value;
//! - `secrets`: secret name to its encrypted record, which the store does
//!   not read;
//! - `api_tokens`: API token name to its role and the SHA-256 of the token
//!   (see [`crate::tokens`]);
//! - `audit`: sequence number (big-endian `u64`) to an audit record (see
//!   [`crate::audit`]);
//! - `meta`: `schema_version` to the layout version (see [`crate::schema`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use palisade_model::{
    Alert, Case, CaseStatus, ParentStep, RunRecord, RunStatus, StepError, StepRecord,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::audit::{AUDIT_TREE, AuditLog};
use crate::correlation::{self, CORRELATION_TREE};
use crate::{
    AuditEvent, AuditRecord, AuditVerdict, ExportSummary, ImportSummary, IngestOutcome, Store,
    StoreError,
};

/// A [`Store`] on an embedded sled database.
pub struct SledStore {
    db: sled::Db,
    alerts: sled::Tree,
    alert_cases: sled::Tree,
    cases: sled::Tree,
    open_cases: sled::Tree,
    correlation: sled::Tree,
    /// Maximum distance in event time at which an alert joins a case by a
    /// shared correlation key; zero turns key correlation off.
    correlation_window: Duration,
    pending: sled::Tree,
    pending_index: sled::Tree,
    case_items: sled::Tree,
    runs: sled::Tree,
    run_steps: sled::Tree,
    alert_runs: sled::Tree,
    active_runs: sled::Tree,
    timers: sled::Tree,
    kv: sled::Tree,
    counters: sled::Tree,
    secrets: sled::Tree,
    audit: AuditLog,
    path: PathBuf,
}

/// Key of the case counter in the `cases` tree. It sorts after every case
/// id, which starts with `C`.
pub(crate) const CASE_COUNTER: &[u8] = b"~case-counter";

impl SledStore {
    /// Opens or creates the database in directory `path` and migrates it
    /// to the current schema version. A database written by a newer
    /// palisade is rejected.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|error| StoreError::Open {
                path: path.display().to_string(),
                message: error.to_string(),
            })?;
        crate::schema::prepare(&db, path)?;
        let tree = |name: &str| db.open_tree(name).map_err(database);
        Ok(Self {
            alerts: tree("alerts")?,
            alert_cases: tree("alert_cases")?,
            cases: tree("cases")?,
            open_cases: tree("open_cases")?,
            correlation: tree(CORRELATION_TREE)?,
            correlation_window: Duration::ZERO,
            pending: tree("pending")?,
            pending_index: tree("pending_index")?,
            case_items: tree("case_items")?,
            runs: tree("runs")?,
            run_steps: tree("run_steps")?,
            alert_runs: tree("alert_runs")?,
            active_runs: tree("active_runs")?,
            timers: tree("timers")?,
            kv: tree("kv")?,
            counters: tree("counters")?,
            secrets: tree("secrets")?,
            audit: AuditLog::open(tree(AUDIT_TREE)?)?,
            path: path.to_path_buf(),
            db,
        })
    }

    /// Sets how far apart in event time two alerts with a shared
    /// correlation key may be and still join one case. The default, zero,
    /// groups alerts by fingerprint only.
    pub fn with_correlation_window(mut self, window: Duration) -> Self {
        self.correlation_window = window;
        self
    }

    fn next_sequence(&self, name: &str) -> Result<u64, StoreError> {
        let next = self
            .counters
            .update_and_fetch(name, |current| {
                let value = current.map_or(0, decode_counter) + 1;
                Some(value.to_be_bytes().to_vec())
            })
            .map_err(database)?;
        Ok(next.as_deref().map_or(1, decode_counter))
    }
}

/// Lengths of a case's append-only lists, stored in the case record.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct ListLengths {
    alert_ids: u32,
    timeline: u32,
    run_ids: u32,
    /// Absent in records written before cases had notes.
    #[serde(default)]
    notes: u32,
}

/// A case as stored in the `cases` tree. Its alert ids, timeline, run ids
/// and notes are empty here and kept in `case_items`, one entry each, so
/// adding an alert to a large case does not rewrite all the earlier ones.
#[derive(Serialize, Deserialize)]
struct StoredCase {
    #[serde(flatten)]
    case: Case,
    lists: ListLengths,
}

/// The append-only lists of a case, by their tag byte in `case_items` keys.
pub(crate) const ALERT_IDS: u8 = 0;
const TIMELINE: u8 = 1;
const RUN_IDS: u8 = 2;
const NOTES: u8 = 3;

/// Key of item `index` of list `tag` of a case: the case id, a zero byte,
/// the tag and the index in big-endian, so a list's items sort in order.
fn case_item_key(case_id: &str, tag: u8, index: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(case_id.len() + 6);
    key.extend_from_slice(case_id.as_bytes());
    key.push(0);
    key.push(tag);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Writes `case`, whose lists hold only items added since it was read, as
/// the record plus one `case_items` entry per new item.
fn write_case(
    cases: &TransactionalTree,
    case_items: &TransactionalTree,
    mut case: Case,
    mut lists: ListLengths,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    for alert_id in std::mem::take(&mut case.alert_ids) {
        case_items.insert(
            case_item_key(&case.id, ALERT_IDS, lists.alert_ids),
            alert_id.as_bytes(),
        )?;
        lists.alert_ids += 1;
    }
    for event in std::mem::take(&mut case.timeline) {
        case_items.insert(
            case_item_key(&case.id, TIMELINE, lists.timeline),
            encode(&event),
        )?;
        lists.timeline += 1;
    }
    for run_id in std::mem::take(&mut case.run_ids) {
        case_items.insert(
            case_item_key(&case.id, RUN_IDS, lists.run_ids),
            run_id.as_bytes(),
        )?;
        lists.run_ids += 1;
    }
    for note in std::mem::take(&mut case.notes) {
        case_items.insert(case_item_key(&case.id, NOTES, lists.notes), encode(&note))?;
        lists.notes += 1;
    }
    let key = case.id.clone();
    cases.insert(key.as_bytes(), encode(&StoredCase { case, lists }))?;
    Ok(())
}

impl SledStore {
    /// Reads a stored case and fills in its lists from `case_items`.
    pub(crate) fn assemble_case(&self, key: &[u8], bytes: &[u8]) -> Result<Case, StoreError> {
        let StoredCase { mut case, .. } = decode("cases", key, bytes)?;
        let mut prefix = key.to_vec();
        prefix.push(0);
        for entry in self.case_items.scan_prefix(&prefix) {
            let (item_key, value) = entry.map_err(database)?;
            match item_key.get(prefix.len()) {
                Some(&ALERT_IDS) => case
                    .alert_ids
                    .push(String::from_utf8_lossy(&value).into_owned()),
                Some(&TIMELINE) => case.timeline.push(decode("case_items", &item_key, &value)?),
                Some(&RUN_IDS) => case
                    .run_ids
                    .push(String::from_utf8_lossy(&value).into_owned()),
                Some(&NOTES) => case.notes.push(decode("case_items", &item_key, &value)?),
                _ => {}
            }
        }
        Ok(case)
    }
}

/// A run record as stored in the `runs` tree: everything but the steps.
#[derive(Serialize)]
struct RunHeader<'a> {
    id: &'a str,
    playbook: &'a str,
    alert_id: &'a str,
    case_id: &'a str,
    status: RunStatus,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    error: &'a Option<StepError>,
    wake_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: &'a Option<ParentStep>,
    #[serde(skip_serializing_if = "Value::is_null")]
    inputs: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: &'a Option<Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    plugin_versions: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a RunRecord> for RunHeader<'a> {
    fn from(run: &'a RunRecord) -> Self {
        Self {
            id: &run.id,
            playbook: &run.playbook,
            alert_id: &run.alert_id,
            case_id: &run.case_id,
            status: run.status,
            started_at: run.started_at,
            finished_at: run.finished_at,
            error: &run.error,
            wake_at: run.wake_at,
            parent: &run.parent,
            inputs: &run.inputs,
            outputs: &run.outputs,
            plugin_versions: &run.plugin_versions,
        }
    }
}

/// Key of a step in the `run_steps` tree: the run id, a zero byte and the
/// step index in big-endian, so a run's steps sort in order.
pub(crate) fn step_key(run_id: &str, index: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(run_id.len() + 5);
    key.extend_from_slice(run_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&(index as u32).to_be_bytes());
    key
}

/// Entry of a run in `active_runs`.
#[derive(Serialize, Deserialize)]
struct ActiveRun {
    status: RunStatus,
    wake_at: Option<DateTime<Utc>>,
}

fn alert_run_key(alert_id: &str, playbook: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(alert_id.len() + 1 + playbook.len());
    key.extend_from_slice(alert_id.as_bytes());
    key.push(0);
    key.extend_from_slice(playbook.as_bytes());
    key
}

fn timer_key(at: DateTime<Utc>, run_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + run_id.len());
    key.extend_from_slice(&at.timestamp_millis().to_be_bytes());
    key.extend_from_slice(run_id.as_bytes());
    key
}

fn timer_time(key: &[u8]) -> Option<DateTime<Utc>> {
    let millis = i64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    DateTime::from_timestamp_millis(millis)
}

/// Writes `run`'s header and updates `alert_runs`, `active_runs` and
/// `timers` to match, inside one transaction, so after a crash a run is
/// never found without its index entries or waiting without its timer.
fn write_run(
    runs: &TransactionalTree,
    alert_runs: &TransactionalTree,
    active_runs: &TransactionalTree,
    timers: &TransactionalTree,
    run: &RunRecord,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    runs.insert(run.id.as_bytes(), encode(&RunHeader::from(run)))?;
    // A sub-playbook run is driven only through the run that called it, so
    // it gets no index entries: recovery and timers go through the parent.
    if run.parent.is_some() {
        return Ok(());
    }
    alert_runs.insert(
        alert_run_key(&run.alert_id, &run.playbook),
        run.id.as_bytes(),
    )?;
    let previous = active_runs
        .get(run.id.as_bytes())?
        .and_then(|bytes| serde_json::from_slice::<ActiveRun>(&bytes).ok());
    if let Some(at) = previous.and_then(|active| active.wake_at)
        && (run.status != RunStatus::Waiting || run.wake_at != Some(at))
    {
        timers.remove(timer_key(at, &run.id))?;
    }
    if run.status.is_final() {
        active_runs.remove(run.id.as_bytes())?;
        return Ok(());
    }
    let wake_at = run.wake_at.filter(|_| run.status == RunStatus::Waiting);
    let entry = ActiveRun {
        status: run.status,
        wake_at,
    };
    active_runs.insert(run.id.as_bytes(), encode(&entry))?;
    if let Some(at) = wake_at {
        timers.insert(timer_key(at, &run.id), &[])?;
    }
    Ok(())
}

impl SledStore {
    pub(crate) fn assemble_run(&self, key: &[u8], header: &[u8]) -> Result<RunRecord, StoreError> {
        let mut run: RunRecord = decode("runs", key, header)?;
        let mut prefix = key.to_vec();
        prefix.push(0);
        for entry in self.run_steps.scan_prefix(prefix) {
            let (step_key, bytes) = entry.map_err(database)?;
            run.steps.push(decode("run_steps", &step_key, &bytes)?);
        }
        Ok(run)
    }
}

fn decode_counter(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

pub(crate) fn database(error: sled::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising the model types to JSON cannot fail, because they contain
    // only strings, numbers, maps with string keys and `serde_json::Value`s.
    // An empty record would still fail loudly when it is read back.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn decode<T: DeserializeOwned>(
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

/// Returns the title a case takes from `alert`: its rule name, or the
/// source and rule id when the rule has no name.
fn case_title(alert: &Alert) -> String {
    if alert.rule.name.is_empty() {
        format!("{} rule {}", alert.source, alert.rule.id)
    } else {
        alert.rule.name.clone()
    }
}

fn new_case(id: String, alert: &Alert, now: DateTime<Utc>) -> Case {
    let mut case = Case {
        id,
        fingerprint: alert.fingerprint.clone(),
        title: case_title(alert),
        status: CaseStatus::New,
        source: alert.source.clone(),
        rule: alert.rule.clone(),
        severity: alert.severity,
        priority: None,
        score: None,
        created_at: now,
        updated_at: now,
        alert_ids: Vec::new(),
        observables: Vec::new(),
        intel_hits: Vec::new(),
        verdicts: Vec::new(),
        run_ids: Vec::new(),
        timeline: Vec::new(),
        assignee: None,
        tags: Vec::new(),
        notes: Vec::new(),
        tasks: Vec::new(),
        acknowledged_at: None,
        resolved_at: None,
        sla: None,
    };
    case.record("case_opened", format!("opened for alert {}", alert.id), now);
    case
}

/// Applies `change` to case `id` inside a transaction and writes it back.
/// A case that leaves the open states stops taking new alerts, and a case
/// reopened takes its fingerprint back unless another open case has it.
fn change_case(
    cases: &TransactionalTree,
    case_items: &TransactionalTree,
    open_cases: &TransactionalTree,
    id: &str,
    change: &mut dyn FnMut(&mut Case),
) -> Result<Case, ConflictableTransactionError<StoreError>> {
    let not_found = || {
        ConflictableTransactionError::Abort(StoreError::NotFound {
            what: "case",
            id: id.to_string(),
        })
    };
    if id.as_bytes() == CASE_COUNTER {
        return Err(not_found());
    }
    let bytes = cases.get(id.as_bytes())?.ok_or_else(not_found)?;
    let StoredCase { mut case, lists } =
        decode("cases", id.as_bytes(), &bytes).map_err(ConflictableTransactionError::Abort)?;
    change(&mut case);
    write_case(cases, case_items, case.clone(), lists)?;
    let indexed = open_cases.get(case.fingerprint.as_bytes())?;
    if !case.status.is_open() {
        if indexed.as_deref() == Some(id.as_bytes()) {
            open_cases.remove(case.fingerprint.as_bytes())?;
        }
    } else if indexed.is_none() {
        open_cases.insert(case.fingerprint.as_bytes(), id.as_bytes())?;
    }
    Ok(case)
}

fn kv_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut full = Vec::with_capacity(namespace.len() + 1 + key.len());
    full.extend_from_slice(namespace.as_bytes());
    full.push(0);
    full.extend_from_slice(key.as_bytes());
    full
}

impl Store for SledStore {
    fn ingest_alert(&self, alert: &Alert, now: DateTime<Utc>) -> Result<IngestOutcome, StoreError> {
        let alert_bytes = encode(alert);
        // Reserved outside the transaction, which may run more than once.
        let pending_key = self.db.generate_id().map_err(database)?.to_be_bytes();
        let correlate = !self.correlation_window.is_zero();
        let keys = if correlate {
            alert.correlation_keys()
        } else {
            Vec::new()
        };
        let event_time = alert.time.to_utc();
        let trees = (
            &self.alerts,
            &self.alert_cases,
            &self.cases,
            &self.case_items,
            &self.open_cases,
            &self.pending,
            &self.correlation,
        );
        let result = trees.transaction(
            |(alerts, alert_cases, cases, case_items, open_cases, pending, correlation)| {
                if alerts.get(alert.id.as_bytes())?.is_some() {
                    let case_id = alert_cases
                        .get(alert.id.as_bytes())?
                        .map(|id| String::from_utf8_lossy(&id).into_owned())
                        .unwrap_or_default();
                    return Ok(IngestOutcome {
                        alert_is_new: false,
                        case_id,
                        case_is_new: false,
                    });
                }
                let mut joined_by = None;
                let mut case_id = open_cases
                    .get(alert.fingerprint.as_bytes())?
                    .map(|id| id.to_vec());
                if case_id.is_none() && !keys.is_empty() {
                    let window = self.correlation_window;
                    if let Some((id, key)) =
                        correlation::find_case(correlation, cases, &keys, event_time, window)?
                    {
                        case_id = Some(id.into_bytes());
                        joined_by = Some(key);
                    }
                }
                let existing = match case_id {
                    Some(case_id) => cases
                        .get(&case_id)?
                        .map(|bytes| decode::<StoredCase>("cases", &case_id, &bytes))
                        .transpose()
                        .map_err(ConflictableTransactionError::Abort)?,
                    None => None,
                };
                let case_is_new = existing.is_none();
                let StoredCase { mut case, lists } = match existing {
                    Some(stored) => stored,
                    None => {
                        // The case counter lives in the `cases` tree so that a
                        // number is taken only when a case is really created.
                        let number = cases.get(CASE_COUNTER)?.map_or(0, |b| decode_counter(&b)) + 1;
                        cases.insert(CASE_COUNTER, &number.to_be_bytes())?;
                        StoredCase {
                            case: new_case(format!("C{number:08}"), alert, now),
                            lists: ListLengths::default(),
                        }
                    }
                };
                case.alert_ids.push(alert.id.clone());
                let mut detail = format!("alert {} ({})", alert.id, alert.rule.name);
                if let Some(key) = &joined_by {
                    detail.push_str(&format!(" joined by correlation key {key}"));
                    // A case opened by context, such as a Suricata flow
                    // event, is named after the first more severe alert
                    // that joins it. The fingerprint stays the opener's.
                    if alert.severity > case.severity {
                        let title = case_title(alert);
                        let retitle = format!("{:?} -> {title:?}", case.title);
                        case.title = title;
                        case.rule = alert.rule.clone();
                        case.record("retitled", retitle, now);
                    }
                }
                case.severity = case.severity.max(alert.severity);
                case.record("alert_added", detail, now);

                alerts.insert(alert.id.as_bytes(), alert_bytes.as_slice())?;
                alert_cases.insert(alert.id.as_bytes(), case.id.as_bytes())?;
                write_case(cases, case_items, case.clone(), lists)?;
                // Only a case's own fingerprint is indexed, because closing
                // the case removes only that entry.
                if joined_by.is_none() {
                    open_cases.insert(alert.fingerprint.as_bytes(), case.id.as_bytes())?;
                }
                pending.insert(&pending_key, alert.id.as_bytes())?;
                correlation::record_keys(correlation, &keys, &case.id, event_time)?;
                Ok(IngestOutcome {
                    alert_is_new: true,
                    case_id: case.id,
                    case_is_new,
                })
            },
        );
        let outcome = result.map_err(transaction_error)?;
        if outcome.alert_is_new {
            // Written after the transaction, so an index entry always has
            // its pending entry; `finish_pending` scans for one without.
            self.pending_index
                .insert(alert.id.as_bytes(), &pending_key)
                .map_err(database)?;
        }
        Ok(outcome)
    }

    fn pending_alerts(&self) -> Result<Vec<String>, StoreError> {
        self.pending
            .iter()
            .values()
            .map(|id| Ok(String::from_utf8_lossy(&id.map_err(database)?).into_owned()))
            .collect()
    }

    fn finish_pending(&self, id: &str) -> Result<(), StoreError> {
        if let Some(key) = self.pending_index.remove(id.as_bytes()).map_err(database)? {
            self.pending.remove(key).map_err(database)?;
            return Ok(());
        }
        for entry in self.pending.iter() {
            let (key, value) = entry.map_err(database)?;
            if value.as_ref() == id.as_bytes() {
                self.pending.remove(key).map_err(database)?;
            }
        }
        Ok(())
    }

    fn case_of_alert(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .alert_cases
            .get(id.as_bytes())
            .map_err(database)?
            .map(|case_id| String::from_utf8_lossy(&case_id).into_owned()))
    }

    fn alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        self.alerts
            .get(id.as_bytes())
            .map_err(database)?
            .map(|bytes| decode("alerts", id.as_bytes(), &bytes))
            .transpose()
    }

    fn case(&self, id: &str) -> Result<Option<Case>, StoreError> {
        if id.as_bytes() == CASE_COUNTER {
            return Ok(None);
        }
        let Some(bytes) = self.cases.get(id.as_bytes()).map_err(database)? else {
            return Ok(None);
        };
        self.assemble_case(id.as_bytes(), &bytes).map(Some)
    }

    fn cases(&self) -> Result<Vec<Case>, StoreError> {
        self.cases
            .iter()
            .filter(|entry| !matches!(entry, Ok((key, _)) if key.as_ref() == CASE_COUNTER))
            .map(|entry| {
                let (key, bytes) = entry.map_err(database)?;
                self.assemble_case(&key, &bytes)
            })
            .collect()
    }

    fn update_case(&self, id: &str, change: &mut dyn FnMut(&mut Case)) -> Result<Case, StoreError> {
        // sled may run the transaction more than once; each run applies the
        // change to a freshly read case.
        let change = std::cell::RefCell::new(change);
        let trees = (&self.cases, &self.case_items, &self.open_cases);
        let result = trees.transaction(|(cases, case_items, open_cases)| {
            change_case(cases, case_items, open_cases, id, &mut |case| {
                (change.borrow_mut())(case)
            })
        });
        let updated = result.map_err(transaction_error)?;
        self.case(&updated.id)?.ok_or_else(|| StoreError::NotFound {
            what: "case",
            id: id.to_string(),
        })
    }

    fn next_run_id(&self) -> Result<String, StoreError> {
        Ok(format!("R{:08}", self.next_sequence("run")?))
    }

    fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let trees = (
            &self.runs,
            &self.alert_runs,
            &self.active_runs,
            &self.timers,
        );
        trees
            .transaction(|(runs, alert_runs, active_runs, timers)| {
                write_run(runs, alert_runs, active_runs, timers, run)
            })
            .map_err(transaction_error)
    }

    fn finish_run(
        &self,
        run: &RunRecord,
        change: &mut dyn FnMut(&mut Case),
    ) -> Result<(), StoreError> {
        if !run.status.is_final() {
            return Err(StoreError::Database(format!(
                "run {} is {}, not final; write it with put_run",
                run.id,
                run.status.as_str()
            )));
        }
        let change = std::cell::RefCell::new(change);
        let trees = (
            &self.runs,
            &self.alert_runs,
            &self.active_runs,
            &self.timers,
            &self.cases,
            &self.case_items,
            &self.open_cases,
        );
        let result = trees.transaction(
            |(runs, alert_runs, active_runs, timers, cases, case_items, open_cases)| {
                write_run(runs, alert_runs, active_runs, timers, run)?;
                change_case(cases, case_items, open_cases, &run.case_id, &mut |case| {
                    (change.borrow_mut())(case)
                })
            },
        );
        result.map_err(transaction_error)?;
        Ok(())
    }

    fn run_of_alert(&self, alert_id: &str, playbook: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .alert_runs
            .get(alert_run_key(alert_id, playbook))
            .map_err(database)?
            .map(|id| String::from_utf8_lossy(&id).into_owned()))
    }

    fn active_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = Vec::new();
        for entry in self.active_runs.iter().keys() {
            let id = entry.map_err(database)?;
            if let Some(bytes) = self.runs.get(&id).map_err(database)? {
                runs.push(self.assemble_run(&id, &bytes)?);
            }
        }
        Ok(runs)
    }

    fn due_runs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let end = (now.timestamp_millis() + 1).to_be_bytes();
        let mut due = Vec::new();
        for key in self.timers.range(..end.as_slice()).keys().take(limit) {
            let key = key.map_err(database)?;
            if let Some(at) = timer_time(&key) {
                due.push((String::from_utf8_lossy(&key[8..]).into_owned(), at));
            }
        }
        Ok(due)
    }

    fn next_wake(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .timers
            .first()
            .map_err(database)?
            .and_then(|(key, _)| timer_time(&key)))
    }

    fn put_step(&self, run_id: &str, index: usize, step: &StepRecord) -> Result<(), StoreError> {
        self.run_steps
            .insert(step_key(run_id, index), encode(step))
            .map_err(database)?;
        Ok(())
    }

    fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let Some(bytes) = self.runs.get(id.as_bytes()).map_err(database)? else {
            return Ok(None);
        };
        self.assemble_run(id.as_bytes(), &bytes).map(Some)
    }

    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.runs
            .iter()
            .map(|entry| {
                let (key, bytes) = entry.map_err(database)?;
                self.assemble_run(&key, &bytes)
            })
            .collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(database)?;
        Ok(())
    }

    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .kv
            .get(kv_key(namespace, key))
            .map_err(database)?
            .map(|value| value.to_vec()))
    }

    fn kv_set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.kv
            .insert(kv_key(namespace, key), value)
            .map_err(database)?;
        Ok(())
    }

    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.kv.remove(kv_key(namespace, key)).map_err(database)?;
        Ok(())
    }

    fn kv_list(
        &self,
        namespace: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let full_prefix = kv_key(namespace, prefix);
        let skip = namespace.len() + 1;
        self.kv
            .scan_prefix(full_prefix)
            .keys()
            .take(limit)
            .map(|key| {
                let key = key.map_err(database)?;
                Ok(String::from_utf8_lossy(&key[skip..]).into_owned())
            })
            .collect()
    }

    fn put_secret(&self, name: &str, record: &[u8]) -> Result<(), StoreError> {
        self.secrets.insert(name, record).map_err(database)?;
        Ok(())
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .secrets
            .get(name)
            .map_err(database)?
            .map(|record| record.to_vec()))
    }

    fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.secrets.remove(name).map_err(database)?.is_some())
    }

    fn secret_names(&self) -> Result<Vec<String>, StoreError> {
        self.secrets
            .iter()
            .keys()
            .map(|key| Ok(String::from_utf8_lossy(&key.map_err(database)?).into_owned()))
            .collect()
    }

    fn append_audit(&self, event: AuditEvent) -> Result<AuditRecord, StoreError> {
        self.audit.append(event)
    }

    fn audit_records(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit.records(after_seq, limit)
    }

    fn verify_audit(&self) -> Result<AuditVerdict, StoreError> {
        crate::step_digest::verify_audit_and_journal(&self.audit, &self.run_steps)
    }

    fn export(&self, out: &mut dyn std::io::Write) -> Result<ExportSummary, StoreError> {
        crate::export::export(self, out)
    }

    fn import(&self, input: &mut dyn std::io::BufRead) -> Result<ImportSummary, StoreError> {
        crate::import::import(self, input)
    }
}

/// Whole-record access for export and import.
impl SledStore {
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Directory of the database.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (or returns the open) tree `name`, for the modules that keep
    /// their own trees.
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(database)
    }

    pub(crate) fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Writes `case` with every item of its lists, as a case not stored
    /// before.
    pub(crate) fn restore_case(&self, case: Case) -> Result<(), StoreError> {
        (&self.cases, &self.case_items)
            .transaction(|(cases, case_items)| {
                write_case(cases, case_items, case.clone(), ListLengths::default())
            })
            .map_err(transaction_error)
    }

    /// Writes `run` without its steps, which an import writes one by one
    /// under their exported indexes. The run indexes are not written here
    /// either, because an export carries them as `raw` lines.
    pub(crate) fn restore_run_header(&self, run: &RunRecord) -> Result<(), StoreError> {
        self.runs
            .insert(run.id.as_bytes(), encode(&RunHeader::from(run)))
            .map_err(database)?;
        Ok(())
    }
}

fn transaction_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => database(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::parse_alerts;

    const FIM: &str = r#"{"timestamp":"2022-11-17T19:17:42.694+0200","rule":{"level":5,"id":"554","description":"File added to the system."},"agent":{"name":"Ubuntu","ip":"10.0.2.15"},"syscheck":{"sha256_after":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#;
    const FIM_AGAIN: &str = r#"{"timestamp":"2022-11-17T20:00:00.000+0200","rule":{"level":5,"id":"554","description":"File added to the system."},"agent":{"name":"Ubuntu","ip":"10.0.2.15"},"syscheck":{"sha256_after":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#;

    fn alert(text: &str) -> Alert {
        parse_alerts(text).pop().unwrap().unwrap()
    }

    #[test]
    fn same_alert_twice_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let first = store.ingest_alert(&alert(FIM), Utc::now()).unwrap();
        let second = store.ingest_alert(&alert(FIM), Utc::now()).unwrap();
        assert!(first.alert_is_new);
        assert!(first.case_is_new);
        assert!(!second.alert_is_new);
        assert_eq!(first.case_id, second.case_id);
        assert_eq!(store.cases().unwrap().len(), 1);
    }

    #[test]
    fn same_fingerprint_joins_open_case() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let first = store.ingest_alert(&alert(FIM), Utc::now()).unwrap();
        let second = store.ingest_alert(&alert(FIM_AGAIN), Utc::now()).unwrap();
        assert!(second.alert_is_new);
        assert!(!second.case_is_new);
        assert_eq!(first.case_id, second.case_id);
        let case = store.case(&first.case_id).unwrap().unwrap();
        assert_eq!(case.alert_ids.len(), 2);
    }

    #[test]
    fn case_ids_count_up_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let first = store.ingest_alert(&alert(FIM), Utc::now()).unwrap();
        store.ingest_alert(&alert(FIM_AGAIN), Utc::now()).unwrap();
        let other = FIM.replace("\"554\"", "\"550\"");
        let second = store.ingest_alert(&alert(&other), Utc::now()).unwrap();
        assert_eq!(first.case_id, "C00000001");
        assert_eq!(second.case_id, "C00000002");
        let ids: Vec<String> = store.cases().unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["C00000001", "C00000002"]);
        assert_eq!(store.next_run_id().unwrap(), "R00000001");
        assert_eq!(store.next_run_id().unwrap(), "R00000002");
    }

    #[test]
    fn large_case_keeps_every_list_item() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut case_id = String::new();
        for minute in 0..300 {
            let text = FIM_AGAIN.replace(
                "20:00:00",
                &format!("20:{:02}:{:02}", minute / 60, minute % 60),
            );
            case_id = store
                .ingest_alert(&alert(&text), Utc::now())
                .unwrap()
                .case_id;
        }
        store
            .update_case(&case_id, &mut |case| case.run_ids.push("R00000001".into()))
            .unwrap();
        let case = store.case(&case_id).unwrap().unwrap();
        assert_eq!(case.alert_ids.len(), 300);
        // One event for opening, one per alert.
        assert_eq!(case.timeline.len(), 301);
        assert_eq!(case.timeline[0].kind, "case_opened");
        assert_eq!(case.run_ids, vec!["R00000001".to_string()]);
        let record = store.cases.get(case_id.as_bytes()).unwrap().unwrap();
        assert!(
            record.len() < 2_000,
            "the case record stays small: {} bytes",
            record.len()
        );
    }

    #[test]
    fn resolved_case_takes_no_new_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let first = store.ingest_alert(&alert(FIM), Utc::now()).unwrap();
        store
            .update_case(&first.case_id, &mut |case| {
                case.status = CaseStatus::Resolved
            })
            .unwrap();
        let second = store.ingest_alert(&alert(FIM_AGAIN), Utc::now()).unwrap();
        assert!(second.case_is_new);
        assert_ne!(first.case_id, second.case_id);
    }

    #[test]
    fn cases_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let case_id = {
            let store = SledStore::open(dir.path()).unwrap();
            let outcome = store.ingest_alert(&alert(FIM), Utc::now()).unwrap();
            store.flush().unwrap();
            outcome.case_id
        };
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.case(&case_id).unwrap().is_some());
        assert!(
            !store
                .ingest_alert(&alert(FIM), Utc::now())
                .unwrap()
                .alert_is_new
        );
    }

    #[test]
    fn accepted_alert_is_pending_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let alert = alert(FIM);
        store.ingest_alert(&alert, Utc::now()).unwrap();
        store.ingest_alert(&alert, Utc::now()).unwrap();
        assert_eq!(store.pending_alerts().unwrap(), vec![alert.id.clone()]);
        store.finish_pending(&alert.id).unwrap();
        assert!(store.pending_alerts().unwrap().is_empty());
    }

    fn step(id: &str) -> StepRecord {
        StepRecord {
            id: id.into(),
            uses: "noop.echo".into(),
            status: palisade_model::StepStatus::Succeeded,
            item: None,
            handles: None,
            child_run: None,
            attempt: 1,
            idempotency_key: None,
            retry_at: None,
            started_at: Utc::now(),
            duration_us: 1,
            plugin_version: None,
            input: serde_json::Value::Null,
            output: None,
            error: None,
            logs: serde_json::Value::Null,
            http_calls: serde_json::Value::Null,
        }
    }

    #[test]
    fn run_steps_are_journaled_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut run = RunRecord {
            id: "R00000001".into(),
            playbook: "p".into(),
            alert_id: "a".into(),
            case_id: "C00000001".into(),
            status: RunStatus::Running,
            started_at: Utc::now(),
            finished_at: None,
            steps: Vec::new(),
            error: None,
            wake_at: None,
            parent: None,
            inputs: serde_json::Value::Null,
            outputs: None,
            plugin_versions: [("noop".to_string(), "1.2.0".to_string())].into(),
        };
        store.put_run(&run).unwrap();
        // Indexes past 255 check that steps sort by number, not by text.
        for index in [2, 0, 300, 1] {
            store
                .put_step(&run.id, index, &step(&format!("s{index}")))
                .unwrap();
        }
        run.status = RunStatus::Succeeded;
        store.put_run(&run).unwrap();

        let stored = store.run(&run.id).unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Succeeded);
        assert_eq!(stored.plugin_versions, run.plugin_versions);
        let ids: Vec<&str> = stored.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s0", "s1", "s2", "s300"]);
        assert_eq!(store.runs().unwrap(), vec![stored]);
        assert!(store.run("R00000002").unwrap().is_none());
    }

    fn new_run(id: &str, alert_id: &str, case_id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            playbook: "p".into(),
            alert_id: alert_id.into(),
            case_id: case_id.into(),
            status: RunStatus::Running,
            started_at: Utc::now(),
            finished_at: None,
            steps: Vec::new(),
            error: None,
            wake_at: None,
            parent: None,
            inputs: serde_json::Value::Null,
            outputs: None,
            plugin_versions: Default::default(),
        }
    }

    #[test]
    fn active_runs_and_timers_follow_the_run_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let case_id = store.ingest_alert(&alert(FIM), Utc::now()).unwrap().case_id;
        let mut first = new_run("R00000001", "a1", &case_id);
        let mut second = new_run("R00000002", "a2", &case_id);
        store.put_run(&first).unwrap();
        store.put_run(&second).unwrap();
        assert_eq!(
            store.run_of_alert("a1", "p").unwrap().as_deref(),
            Some("R00000001")
        );
        assert!(store.run_of_alert("a1", "other").unwrap().is_none());

        let now = Utc::now();
        let soon = now + chrono::Duration::seconds(5);
        first.status = RunStatus::Waiting;
        first.wake_at = Some(soon);
        store.put_run(&first).unwrap();
        assert!(store.due_runs(now, 10).unwrap().is_empty());
        assert_eq!(
            store.next_wake().unwrap().map(|at| at.timestamp_millis()),
            Some(soon.timestamp_millis())
        );
        let due = store.due_runs(soon, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "R00000001");

        // Waiting again with a new deadline replaces the old timer.
        let later = soon + chrono::Duration::seconds(5);
        first.wake_at = Some(later);
        store.put_run(&first).unwrap();
        assert!(store.due_runs(soon, 10).unwrap().is_empty());
        assert_eq!(store.due_runs(later, 10).unwrap().len(), 1);

        let active: Vec<String> = store
            .active_runs()
            .unwrap()
            .into_iter()
            .map(|run| run.id)
            .collect();
        assert_eq!(active, ["R00000001", "R00000002"]);

        // Finishing writes the run and the case together and drops the
        // run from the active list and the timers.
        first.status = RunStatus::Succeeded;
        first.wake_at = None;
        store
            .finish_run(&first, &mut |case| case.run_ids.push("R00000001".into()))
            .unwrap();
        assert_eq!(
            store.case(&case_id).unwrap().unwrap().run_ids,
            ["R00000001"]
        );
        assert!(store.next_wake().unwrap().is_none());
        let active: Vec<String> = store
            .active_runs()
            .unwrap()
            .into_iter()
            .map(|run| run.id)
            .collect();
        assert_eq!(active, ["R00000002"]);
        assert_eq!(
            store.run("R00000001").unwrap().unwrap().status,
            RunStatus::Succeeded
        );

        // A run that is not final cannot be finished.
        second.status = RunStatus::Parked;
        assert!(store.finish_run(&second, &mut |_| {}).is_err());
    }

    #[test]
    fn kv_namespaces_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.kv_set("a", "ind:ipv4:1.2.3.4", b"x").unwrap();
        store.kv_set("b", "ind:ipv4:5.6.7.8", b"y").unwrap();
        assert_eq!(
            store.kv_get("a", "ind:ipv4:1.2.3.4").unwrap().unwrap(),
            b"x"
        );
        assert!(store.kv_get("b", "ind:ipv4:1.2.3.4").unwrap().is_none());
        assert_eq!(
            store.kv_list("a", "ind:", 10).unwrap(),
            vec!["ind:ipv4:1.2.3.4"]
        );
        store.kv_delete("a", "ind:ipv4:1.2.3.4").unwrap();
        assert!(store.kv_list("a", "", 10).unwrap().is_empty());
    }

    #[test]
    fn secrets_are_kept_apart_from_kv() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.put_secret("b-key", b"\x00\x01record").unwrap();
        store.put_secret("a-key", b"first").unwrap();
        store.put_secret("a-key", b"second").unwrap();
        assert_eq!(store.secret("a-key").unwrap().unwrap(), b"second");
        assert_eq!(store.secret_names().unwrap(), ["a-key", "b-key"]);
        assert!(store.kv_list("a-key", "", 10).unwrap().is_empty());
        assert!(store.delete_secret("a-key").unwrap());
        assert!(!store.delete_secret("a-key").unwrap());
        assert!(store.secret("a-key").unwrap().is_none());
        assert_eq!(store.secret_names().unwrap(), ["b-key"]);
    }
}
