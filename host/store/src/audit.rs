//! The audit log: an append-only, hash-chained record of what the host and
//! its operators did.
//!
//! Records live in the sled tree `audit`, keyed by their sequence number
//! (big-endian `u64`, from 1), as JSON. Each record's `hash` is the hex
//! SHA-256 of a canonical encoding of its other fields, `prev_hash`
//! included, and `prev_hash` is the hash of the record before it (64 zeros
//! for record 1). Changing, removing or reordering a stored record
//! therefore breaks the chain at that record, and [`AuditLog::verify_with`]
//! finds the first break. [`crate::step_digest`] then checks the run
//! journal against the digests in `step_finished` records.
//!
//! A chain alone cannot show that records were cut off at the end. The
//! head hash that `palisade audit verify` prints is what to keep elsewhere
//! to detect that.

use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::StoreError;

/// Name of the sled tree that contains the audit records.
pub(crate) const AUDIT_TREE: &str = "audit";

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Something that happened, as a caller reports it to
/// [`crate::Store::append_audit`]. The store adds the sequence number, the
/// time and the hashes.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// The actor: `engine`, `daemon`, `cli`, `host` (plugin loading) or
    /// `store` (schema migrations) for the host itself, and `operator:NAME`
    /// for a person.
    pub actor: String,
    /// Event type in snake case: `run_started`, `step_finished`,
    /// `run_finished`, `case_updated`, `plugin_loaded`, `plugin_changed`,
    /// `schema_migrated`.
    pub action: String,
    /// Id of the thing acted on: a run id, a case id or a plugin name.
    pub subject: String,
    /// Facts about the event, as JSON. Callers must keep secret values out
    /// of it, because the store writes it as it is and never redacts it.
    pub detail: Value,
}

/// A stored audit record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the store appended the record.
    pub time: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: Value,
    /// `hash` of the record before this one, or [`GENESIS_HASH`] for record 1.
    pub prev_hash: String,
    /// Hex SHA-256 of the canonical encoding of the fields above.
    pub hash: String,
}

/// Result of checking the whole chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Every record is present and unchanged. `head` is the hash of the last
    /// record, or [`GENESIS_HASH`] when the log is empty.
    Intact { records: u64, head: String },
    /// Record `seq` is the first one that is missing, changed or out of
    /// place, for the reason given.
    Broken { seq: u64, reason: String },
}

/// Sequence number and hash of the last record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuditHead {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

impl AuditHead {
    fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
}

/// The audit tree with its head kept in memory. The mutex serialises
/// appends, so two callers never chain records to the same predecessor.
pub(crate) struct AuditLog {
    tree: sled::Tree,
    head: Mutex<AuditHead>,
}

impl AuditLog {
    /// Opens the log on `tree` and reads its head from the last record.
    pub(crate) fn open(tree: sled::Tree) -> Result<Self, StoreError> {
        let head = read_head(&tree)?;
        Ok(Self {
            tree,
            head: Mutex::new(head),
        })
    }

    fn lock_head(&self) -> MutexGuard<'_, AuditHead> {
        // A panic while the lock was held happened before the head was
        // updated (the update is the last step), so the head is still valid.
        self.head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `event` as the next record, stamped with the current time.
    pub(crate) fn append(&self, event: AuditEvent) -> Result<AuditRecord, StoreError> {
        let mut head = self.lock_head();
        let record = chain_record(&head, event, Utc::now());
        insert_new(&self.tree, &record)?;
        *head = AuditHead {
            seq: record.seq,
            hash: record.hash.clone(),
        };
        Ok(record)
    }

    /// Returns up to `limit` records with a sequence number above
    /// `after_seq`, in ascending order.
    pub(crate) fn records(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let Some(start) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.tree
            .range(start.to_be_bytes()..)
            .take(limit)
            .map(|entry| {
                let (key, bytes) = entry.map_err(database)?;
                decode_record(&key, &bytes)
            })
            .collect()
    }

    /// Checks the chain alone, for tests.
    #[cfg(test)]
    pub(crate) fn verify(&self) -> Result<AuditVerdict, StoreError> {
        self.verify_with(&mut |_| {})
    }

    /// Walks the chain from record 1 and reports the first record that is
    /// missing, out of place, unreadable or changed. Each record that fits
    /// the chain is passed to `visit`, in sequence order.
    pub(crate) fn verify_with(
        &self,
        visit: &mut dyn FnMut(&AuditRecord),
    ) -> Result<AuditVerdict, StoreError> {
        // Every record up to this head was inserted before the head moved,
        // so the walk must reach it. Records appended during the walk are
        // checked if the walk reaches them.
        let known_head = self.lock_head().clone();
        let mut previous = AuditHead::genesis();
        for entry in self.tree.iter() {
            let (key, bytes) = entry.map_err(database)?;
            let expected = previous.seq + 1;
            let Some(stored_seq) = seq_of_key(&key) else {
                return Ok(broken(
                    expected,
                    format!("key {key:?} is not an 8-byte sequence number"),
                ));
            };
            if stored_seq != expected {
                return Ok(broken(
                    expected,
                    format!("record {expected} is missing; the next stored record is {stored_seq}"),
                ));
            }
            let record: AuditRecord = match serde_json::from_slice(&bytes) {
                Ok(record) => record,
                Err(error) => {
                    return Ok(broken(stored_seq, format!("record is not JSON: {error}")));
                }
            };
            if let Some(reason) = check_record(&record, stored_seq, &previous.hash) {
                return Ok(broken(stored_seq, reason));
            }
            visit(&record);
            previous = AuditHead {
                seq: record.seq,
                hash: record.hash,
            };
        }
        if previous.seq < known_head.seq {
            let missing = previous.seq + 1;
            return Ok(broken(
                missing,
                format!(
                    "record {missing} is missing; this process appended up to record {}",
                    known_head.seq
                ),
            ));
        }
        Ok(AuditVerdict::Intact {
            records: previous.seq,
            head: previous.hash,
        })
    }

    /// Writes `record` exactly as given, for an import. The chain is not
    /// checked here; the importer verifies it once every record is in.
    pub(crate) fn restore(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let mut head = self.lock_head();
        insert_new(&self.tree, record)?;
        if record.seq > head.seq {
            *head = AuditHead {
                seq: record.seq,
                hash: record.hash.clone(),
            };
        }
        Ok(())
    }

    /// Reads the head again from the tree, after something other than
    /// [`AuditLog::append`] wrote to it.
    pub(crate) fn reload_head(&self) -> Result<(), StoreError> {
        let mut head = self.lock_head();
        *head = read_head(&self.tree)?;
        Ok(())
    }
}

/// Returns the problem with `record`, stored under `stored_seq` after a
/// record whose hash is `prev_hash`, or `None` when it fits the chain.
fn check_record(record: &AuditRecord, stored_seq: u64, prev_hash: &str) -> Option<String> {
    if record.seq != stored_seq {
        return Some(format!(
            "record stored as {stored_seq} has seq {}; records were reordered",
            record.seq
        ));
    }
    if record.prev_hash != prev_hash {
        return Some(format!(
            "prev_hash mismatch: the record has {}, the record before it hashes to {prev_hash}",
            record.prev_hash
        ));
    }
    let computed = record_hash(record);
    if record.hash != computed {
        return Some(format!(
            "hash mismatch: the record has {}, its content hashes to {computed}; it was changed after it was written",
            record.hash
        ));
    }
    None
}

fn broken(seq: u64, reason: String) -> AuditVerdict {
    AuditVerdict::Broken { seq, reason }
}

/// Builds the record that follows `head` for `event` at `time`.
pub(crate) fn chain_record(
    head: &AuditHead,
    event: AuditEvent,
    time: DateTime<Utc>,
) -> AuditRecord {
    let mut record = AuditRecord {
        seq: head.seq + 1,
        time,
        actor: event.actor,
        action: event.action,
        subject: event.subject,
        detail: event.detail,
        prev_hash: head.hash.clone(),
        hash: String::new(),
    };
    record.hash = record_hash(&record);
    record
}

/// Returns the hex SHA-256 of the canonical encoding of every field of
/// `record` but `hash`. The encoding is a JSON array of seq, time, actor,
/// action, subject, detail and prev_hash, with no whitespace. The time is
/// RFC 3339 in UTC with nine fractional digits. Object keys are sorted by
/// their bytes at every depth, so the hash does not depend on the key order
/// of `detail` or on serde_json features.
pub fn record_hash(record: &AuditRecord) -> String {
    let mut text = String::from("[");
    text.push_str(&record.seq.to_string());
    for field in [
        record
            .time
            .to_rfc3339_opts(SecondsFormat::Nanos, true)
            .as_str(),
        &record.actor,
        &record.action,
        &record.subject,
    ] {
        text.push(',');
        write_canonical(&Value::from(field), &mut text);
    }
    text.push(',');
    write_canonical(&record.detail, &mut text);
    text.push(',');
    write_canonical(&Value::from(record.prev_hash.as_str()), &mut text);
    text.push(']');
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Appends `value` to `out` as compact JSON with sorted object keys.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|left, right| left.0.as_bytes().cmp(right.0.as_bytes()));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        // Scalars print the same whatever the features: strings with JSON
        // escapes, numbers in serde_json's shortest round-trip form.
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Inserts `record` under its sequence number, failing if that number is
/// already taken, so the log stays append-only.
pub(crate) fn insert_new(tree: &sled::Tree, record: &AuditRecord) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(record).map_err(|error| {
        StoreError::Database(format!(
            "cannot encode audit record {}: {error}",
            record.seq
        ))
    })?;
    let swapped = tree
        .compare_and_swap(record.seq.to_be_bytes(), None::<&[u8]>, Some(bytes))
        .map_err(database)?;
    swapped.map_err(|_| {
        StoreError::Database(format!(
            "audit record {} already exists; the audit log is append-only",
            record.seq
        ))
    })
}

/// Reads the head from the last record of `tree`. A last record that is not
/// readable JSON keeps its sequence number and gets an empty hash, so the
/// next record does not chain to it and verification reports the break.
pub(crate) fn read_head(tree: &sled::Tree) -> Result<AuditHead, StoreError> {
    let Some((key, bytes)) = tree.last().map_err(database)? else {
        return Ok(AuditHead::genesis());
    };
    let seq = seq_of_key(&key).unwrap_or(0);
    let hash = serde_json::from_slice::<AuditRecord>(&bytes)
        .map(|record| record.hash)
        .unwrap_or_default();
    Ok(AuditHead { seq, hash })
}

fn seq_of_key(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

fn decode_record(key: &[u8], bytes: &[u8]) -> Result<AuditRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        tree: AUDIT_TREE,
        key: seq_of_key(key).map_or_else(|| format!("{key:?}"), |seq| seq.to_string()),
        message: error.to_string(),
    })
}

fn database(error: sled::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open_log(dir: &std::path::Path) -> (sled::Db, AuditLog) {
        let db = sled::open(dir).unwrap();
        let log = AuditLog::open(db.open_tree(AUDIT_TREE).unwrap()).unwrap();
        (db, log)
    }

    fn event(action: &str, subject: &str) -> AuditEvent {
        AuditEvent {
            actor: "engine".into(),
            action: action.into(),
            subject: subject.into(),
            detail: json!({ "playbook": "wazuh-triage", "steps": [1, 2], "score": 0.5 }),
        }
    }

    /// Appends five records and returns the log.
    fn log_of_five(dir: &std::path::Path) -> (sled::Db, AuditLog) {
        let (db, log) = open_log(dir);
        for index in 1..=5 {
            log.append(event("run_started", &format!("R{index:08}")))
                .unwrap();
        }
        (db, log)
    }

    fn stored(log: &AuditLog, seq: u64) -> AuditRecord {
        let bytes = log.tree.get(seq.to_be_bytes()).unwrap().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn put_raw(log: &AuditLog, seq: u64, record: &AuditRecord) {
        log.tree
            .insert(seq.to_be_bytes(), serde_json::to_vec(record).unwrap())
            .unwrap();
    }

    fn broken_seq(verdict: AuditVerdict) -> (u64, String) {
        match verdict {
            AuditVerdict::Broken { seq, reason } => (seq, reason),
            intact => panic!("expected a broken chain, got {intact:?}"),
        }
    }

    #[test]
    fn empty_log_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = open_log(dir.path());
        assert_eq!(
            log.verify().unwrap(),
            AuditVerdict::Intact {
                records: 0,
                head: GENESIS_HASH.to_string()
            }
        );
    }

    #[test]
    fn appended_records_chain_from_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = open_log(dir.path());
        let first = log.append(event("run_started", "R00000001")).unwrap();
        let second = log.append(event("run_finished", "R00000001")).unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(first.prev_hash, GENESIS_HASH);
        assert_eq!(first.hash, record_hash(&first));
        assert_eq!(first.hash.len(), 64);
        assert_eq!(second.seq, 2);
        assert_eq!(second.prev_hash, first.hash);
        assert_eq!(
            log.verify().unwrap(),
            AuditVerdict::Intact {
                records: 2,
                head: second.hash.clone()
            }
        );
        assert_eq!(log.records(0, 10).unwrap(), vec![first, second.clone()]);
        assert_eq!(log.records(1, 10).unwrap(), vec![second]);
        assert!(log.records(2, 10).unwrap().is_empty());
        assert!(log.records(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(log.records(0, 1).unwrap().len(), 1);
    }

    #[test]
    fn hash_ignores_detail_key_order() {
        let head = AuditHead::genesis();
        let time = Utc::now();
        let mut first = event("case_updated", "C00000001");
        first.detail = json!({ "a": 1, "b": { "y": [true, null], "x": "text" } });
        let mut second = first.clone();
        second.detail =
            serde_json::from_str(r#"{"b":{"x":"text","y":[true,null]},"a":1}"#).unwrap();
        assert_eq!(
            chain_record(&head, first, time).hash,
            chain_record(&head, second, time).hash
        );
    }

    #[test]
    fn hash_covers_every_field() {
        let record = chain_record(
            &AuditHead::genesis(),
            event("run_started", "R1"),
            Utc::now(),
        );
        type Change = fn(&mut AuditRecord);
        let changes: [(&str, Change); 7] = [
            ("seq", |r| r.seq += 1),
            ("time", |r| r.time += chrono::Duration::nanoseconds(1)),
            ("actor", |r| r.actor.push('x')),
            ("action", |r| r.action.push('x')),
            ("subject", |r| r.subject.push('x')),
            ("detail", |r| r.detail["score"] = json!(0.25)),
            ("prev_hash", |r| r.prev_hash.replace_range(0..1, "1")),
        ];
        for (field, change) in changes {
            let mut changed = record.clone();
            change(&mut changed);
            assert_ne!(record_hash(&changed), record.hash, "changing {field}");
        }
    }

    #[test]
    fn head_is_read_back_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let (db, log) = log_of_five(dir.path());
            db.flush().unwrap();
            stored(&log, 5)
        };
        let (_db, log) = open_log(dir.path());
        let next = log.append(event("run_started", "R00000006")).unwrap();
        assert_eq!(next.seq, 6);
        assert_eq!(next.prev_hash, last.hash);
        assert!(matches!(
            log.verify().unwrap(),
            AuditVerdict::Intact { records: 6, .. }
        ));
    }

    #[test]
    fn changed_detail_breaks_at_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = log_of_five(dir.path());
        let mut record = stored(&log, 3);
        record.detail["playbook"] = json!("other");
        put_raw(&log, 3, &record);
        let (seq, reason) = broken_seq(log.verify().unwrap());
        assert_eq!(seq, 3);
        assert!(reason.starts_with("hash mismatch"), "{reason}");
    }

    #[test]
    fn rehashed_record_breaks_the_next_link() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = log_of_five(dir.path());
        let mut record = stored(&log, 2);
        record.subject = "R99999999".into();
        record.hash = record_hash(&record);
        put_raw(&log, 2, &record);
        let (seq, reason) = broken_seq(log.verify().unwrap());
        assert_eq!(seq, 3);
        assert!(reason.starts_with("prev_hash mismatch"), "{reason}");
    }

    #[test]
    fn deleted_record_is_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = log_of_five(dir.path());
        log.tree.remove(4u64.to_be_bytes()).unwrap();
        let (seq, reason) = broken_seq(log.verify().unwrap());
        assert_eq!(seq, 4);
        assert!(reason.contains("record 4 is missing"), "{reason}");
    }

    #[test]
    fn deleted_last_record_is_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = log_of_five(dir.path());
        log.tree.remove(5u64.to_be_bytes()).unwrap();
        let (seq, reason) = broken_seq(log.verify().unwrap());
        assert_eq!(seq, 5);
        assert!(reason.contains("record 5 is missing"), "{reason}");
    }

    #[test]
    fn reordered_records_break_at_the_first_swap() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = log_of_five(dir.path());
        let second = stored(&log, 2);
        let third = stored(&log, 3);
        put_raw(&log, 2, &third);
        put_raw(&log, 3, &second);
        let (seq, reason) = broken_seq(log.verify().unwrap());
        assert_eq!(seq, 2);
        assert!(reason.contains("reordered"), "{reason}");
    }

    #[test]
    fn record_that_is_not_json_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = log_of_five(dir.path());
        log.tree
            .insert(2u64.to_be_bytes(), &b"{not json"[..])
            .unwrap();
        let (seq, reason) = broken_seq(log.verify().unwrap());
        assert_eq!(seq, 2);
        assert!(reason.starts_with("record is not JSON"), "{reason}");
    }

    #[test]
    fn unreadable_last_record_does_not_stop_appends() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, log) = log_of_five(dir.path());
            log.tree
                .insert(5u64.to_be_bytes(), &b"garbage"[..])
                .unwrap();
            db.flush().unwrap();
        }
        let (_db, log) = open_log(dir.path());
        assert_eq!(log.append(event("run_started", "R6")).unwrap().seq, 6);
        assert_eq!(broken_seq(log.verify().unwrap()).0, 5);
    }

    #[test]
    fn concurrent_appends_never_fork_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = open_log(dir.path());
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let log = &log;
                scope.spawn(move || {
                    for index in 0..50 {
                        log.append(event("step_finished", &format!("{thread}-{index}")))
                            .unwrap();
                    }
                });
            }
        });
        assert!(matches!(
            log.verify().unwrap(),
            AuditVerdict::Intact { records: 200, .. }
        ));
    }

    #[test]
    fn existing_seq_cannot_be_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log) = log_of_five(dir.path());
        let error = log.restore(&stored(&log, 2)).unwrap_err();
        assert!(error.to_string().contains("append-only"), "{error}");
    }
}
