//! Durable storage of Palisade: alerts, cases, runs, the plugins'
//! key-value namespaces and encrypted secrets.
//!
//! [`Store`] is the interface the rest of the host uses; [`SledStore`] is
//! the embedded default. Every record except an encrypted secret is JSON, so
//! a database can be read with any tool that opens sled. Writes that must happen together (an
//! alert and the case it joins) run in one transaction.

mod audit;
mod correlation;
mod export;
mod import;
mod plugins;
mod schema;
mod sled_store;
mod step_digest;
mod tokens;

#[cfg(test)]
pub(crate) mod test_support {
    /// Opens the database at `path` with `open`, waiting up to five seconds
    /// for the lock: sled's flusher thread can hold it for a moment after
    /// the last handle of an earlier open in this process is dropped.
    pub(crate) fn reopen<T, E: std::fmt::Debug>(
        path: &std::path::Path,
        open: impl Fn(&std::path::Path) -> Result<T, E>,
    ) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match open(path) {
                Ok(db) => return db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => panic!("cannot open {}: {error:?}", path.display()),
            }
        }
    }
}

use chrono::{DateTime, Utc};
use palisade_model::{Alert, Case, RunRecord, StepRecord};

pub use audit::{AuditEvent, AuditRecord, AuditVerdict, GENESIS_HASH, record_hash};
pub use export::ExportSummary;
pub use import::ImportSummary;
pub use plugins::{PluginEvent, PluginSigner, PluginVersionRecord};
pub use schema::SCHEMA_VERSION;
pub use sled_store::SledStore;
pub use step_digest::step_record_sha256;
pub use tokens::ApiTokenRecord;

/// A storage failure. The message names the record involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the database at {path:?}: {message}; check the path and that no other palisade process has it open"
    )]
    Open { path: String, message: String },
    #[error("database error: {0}")]
    Database(String),
    #[error("record {key:?} in {tree} is not valid JSON: {message}")]
    Corrupt {
        tree: &'static str,
        key: String,
        message: String,
    },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error(
        "the database at {path:?} has schema version {found}, but this palisade supports up to version {supported}; upgrade palisade to open it"
    )]
    SchemaTooNew {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("migrating the database from schema version {from} to {to} failed: {message}")]
    Migration { from: u32, to: u32, message: String },
    #[error(
        "cannot import into the database at {path:?} because it already contains data; import into a fresh data directory (`--data-dir`)"
    )]
    NotEmpty { path: String },
    #[error("import line {line} is invalid: {message}")]
    InvalidImport { line: u64, message: String },
    #[error("{0}")]
    Io(String),
}

/// Outcome of ingesting one alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestOutcome {
    /// False when the same alert was ingested before; nothing was written.
    pub alert_is_new: bool,
    pub case_id: String,
    pub case_is_new: bool,
}

/// The storage interface of the host.
pub trait Store: Send + Sync {
    /// Stores `alert` and adds it to the open case with its fingerprint.
    /// Failing that, when the store has a correlation window, it adds the
    /// alert to the open case that shares one of its correlation keys
    /// within that window. Otherwise it creates a case. Ingesting an alert
    /// that is already stored changes nothing.
    fn ingest_alert(&self, alert: &Alert, now: DateTime<Utc>) -> Result<IngestOutcome, StoreError>;

    /// Ids of alerts that were accepted but whose playbook runs have not
    /// all finished, oldest first. [`Store::ingest_alert`] adds an alert
    /// here in the same transaction that stores it.
    fn pending_alerts(&self) -> Result<Vec<String>, StoreError>;

    /// Removes alert `id` from the pending list once its runs are done.
    fn finish_pending(&self, id: &str) -> Result<(), StoreError>;

    /// Id of the case alert `id` joined.
    fn case_of_alert(&self, id: &str) -> Result<Option<String>, StoreError>;

    fn alert(&self, id: &str) -> Result<Option<Alert>, StoreError>;

    fn case(&self, id: &str) -> Result<Option<Case>, StoreError>;

    /// Returns every case, oldest first.
    fn cases(&self) -> Result<Vec<Case>, StoreError>;

    /// Applies `change` to case `id` atomically and returns the new case.
    /// The case `change` receives has empty `alert_ids`, `timeline`,
    /// `run_ids` and `notes`: those lists are append-only, and whatever
    /// `change` pushes to them is appended to the stored lists.
    fn update_case(&self, id: &str, change: &mut dyn FnMut(&mut Case)) -> Result<Case, StoreError>;

    /// Returns a new run id, unique in this database.
    fn next_run_id(&self) -> Result<String, StoreError>;

    /// Writes `run` without its steps, replacing an earlier version. Steps
    /// are written one at a time with [`Store::put_step`], so journaling a
    /// step does not rewrite the steps before it.
    fn put_run(&self, run: &RunRecord) -> Result<(), StoreError>;

    /// Writes `run`, which must be final, and applies `change` to its case
    /// in the same transaction, so a run's results reach its case exactly
    /// once even if the process stops between the two.
    fn finish_run(
        &self,
        run: &RunRecord,
        change: &mut dyn FnMut(&mut Case),
    ) -> Result<(), StoreError>;

    /// Id of the run of `playbook` for alert `alert_id`, if one was started.
    fn run_of_alert(&self, alert_id: &str, playbook: &str) -> Result<Option<String>, StoreError>;

    /// Runs that are not final (running, waiting or parked), with their
    /// steps, in id order.
    fn active_runs(&self) -> Result<Vec<RunRecord>, StoreError>;

    /// Ids and wake times of waiting runs whose wake time is at or before
    /// `now`, earliest first, at most `limit` of them.
    fn due_runs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError>;

    /// Earliest wake time of a waiting run.
    fn next_wake(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Writes step number `index` (from 0) of run `run_id`.
    fn put_step(&self, run_id: &str, index: usize, step: &StepRecord) -> Result<(), StoreError>;

    fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;

    /// Returns every run, oldest first.
    fn runs(&self) -> Result<Vec<RunRecord>, StoreError>;

    /// Waits until every write so far is on disk.
    fn flush(&self) -> Result<(), StoreError>;

    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn kv_set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError>;
    fn kv_list(
        &self,
        namespace: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Stores `record` under secret `name`, replacing an earlier record.
    /// The record is opaque to the store: the caller encrypts the value
    /// before and decrypts it after.
    fn put_secret(&self, name: &str, record: &[u8]) -> Result<(), StoreError>;

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes secret `name` and returns whether it was stored.
    fn delete_secret(&self, name: &str) -> Result<bool, StoreError>;

    /// Returns the names of the stored secrets, sorted by their bytes.
    fn secret_names(&self) -> Result<Vec<String>, StoreError>;

    /// Appends `event` to the hash-chained audit log and returns the stored
    /// record. Appends are serialised, so concurrent callers never fork the
    /// chain. The record is on disk after the next [`Store::flush`].
    fn append_audit(&self, event: AuditEvent) -> Result<AuditRecord, StoreError>;

    /// Returns up to `limit` audit records whose `seq` is above `after_seq`,
    /// in ascending order.
    fn audit_records(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;

    /// Walks the audit chain from the first record and names the first one
    /// that is missing, out of place, not JSON or changed. When the chain
    /// is intact, it then checks each step record that a `step_finished`
    /// audit record pins with its `record_sha256` against the journal (see
    /// [`step_record_sha256`]) and names the first that does not match.
    fn verify_audit(&self) -> Result<AuditVerdict, StoreError>;

    /// Writes every record as JSON lines to `out`: a header, one line per
    /// record, and an end line with the record count. The `export` module
    /// of this crate documents the line format.
    fn export(&self, out: &mut dyn std::io::Write) -> Result<ExportSummary, StoreError>;

    /// Reads an export written by [`Store::export`] into this database,
    /// which must be empty, and verifies the audit chain it brought in. On
    /// failure the database is emptied again. A broken audit chain is not a
    /// failure: the records stay, and [`ImportSummary::audit`] names the
    /// break.
    fn import(&self, input: &mut dyn std::io::BufRead) -> Result<ImportSummary, StoreError>;
}
