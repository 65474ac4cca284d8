//! Digests that tie the run journal to the audit log.
//!
//! When the engine finishes a step, it writes the step record to the
//! `run_steps` tree and then appends a `step_finished` audit record. That
//! record's subject is the run id, and its `detail` has the step's position
//! in the journal (`index`) and [`step_record_sha256`] of the record
//! (`record_sha256`). The hash chain protects the audit record, and the
//! digest extends that protection to the journal record. So an output
//! changed in the database, or in an export before it is imported, no
//! longer matches its digest.
//!
//! A step record can be written again after its audit record, when a
//! person decides on a parked step or responds to an approval, and each such
//! write appends another `step_finished` record. So only the last digest
//! for a run and index counts. Audit records without `record_sha256`,
//! written before the engine recorded digests, pin nothing. A journal
//! record without any audit record is not an error, because a stop between
//! the two writes leaves exactly that.

use std::collections::HashMap;

use palisade_model::StepRecord;
use sha2::{Digest, Sha256};

use crate::StoreError;
use crate::audit::{AuditLog, AuditRecord, AuditVerdict};
use crate::sled_store::step_key;

/// Returns the hex SHA-256 of `record` encoded with `serde_json::to_vec`,
/// which is also how [`crate::Store::put_step`] stores it.
///
/// The engine hashes the record it has in memory, and verification hashes
/// the stored bytes after decoding them into a [`StepRecord`]. Both give the
/// same encoding because the struct fixes the field order and JSON objects
/// inside it keep one order through a decode and an encode. Floating-point
/// numbers survive the decode exactly because this crate enables
/// serde_json's `float_roundtrip` feature.
pub fn step_record_sha256(record: &StepRecord) -> String {
    // serde_json fails to encode only maps with non-string keys and types
    // whose `Serialize` fails, and `StepRecord` has neither. If it ever
    // failed, the digest of the empty encoding would not match.
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// Walks the audit chain of `log` and, when it is intact, checks every
/// step record that a `step_finished` audit record pins against the
/// journal in `run_steps`. The first break in the chain wins over a
/// mismatch in the journal.
///
/// NOTE: the journal is read after the walk. A step record that the engine
/// rewrites during a verification can be reported as not matching, because
/// its new audit record was not walked, so verify a database no process is
/// writing to.
pub(crate) fn verify_audit_and_journal(
    log: &AuditLog,
    run_steps: &sled::Tree,
) -> Result<AuditVerdict, StoreError> {
    let mut digests = StepDigests::default();
    let verdict = log.verify_with(&mut |record| digests.note(record))?;
    if matches!(verdict, AuditVerdict::Broken { .. }) {
        return Ok(verdict);
    }
    Ok(digests.check(run_steps)?.unwrap_or(verdict))
}

/// The last digest that an audit record gave a step.
struct Pin {
    seq: u64,
    sha256: String,
}

/// Pins by run id and journal index, taken from `step_finished` records in
/// chain order, and the first such record whose pin cannot be read.
#[derive(Default)]
struct StepDigests {
    pins: HashMap<(String, u32), Pin>,
    unreadable: Option<(u64, String)>,
}

impl StepDigests {
    /// Takes the pin of `record` if it is a `step_finished` record with a
    /// `record_sha256`, replacing any earlier pin of the same step.
    fn note(&mut self, record: &AuditRecord) {
        if record.action != "step_finished" {
            return;
        }
        let Some(sha256) = record.detail.get("record_sha256") else {
            return;
        };
        let index = record
            .detail
            .get("index")
            .and_then(|index| index.as_u64())
            .and_then(|index| u32::try_from(index).ok());
        match (index, sha256.as_str()) {
            (Some(index), Some(sha256)) => {
                let pin = Pin {
                    seq: record.seq,
                    sha256: sha256.to_string(),
                };
                self.pins.insert((record.subject.clone(), index), pin);
            }
            _ => {
                if self.unreadable.is_none() {
                    let reason = format!(
                        "audit record {} pins a step record, but its `index` is not a journal position or its `record_sha256` is not a string",
                        record.seq
                    );
                    self.unreadable = Some((record.seq, reason));
                }
            }
        }
    }

    /// Compares each pin with the stored step record and returns the
    /// verdict for the pin with the lowest audit seq that fails, with the
    /// number of other failures, or `None` when every pin matches.
    fn check(self, run_steps: &sled::Tree) -> Result<Option<AuditVerdict>, StoreError> {
        let mut failures: Vec<(u64, String)> = self.unreadable.into_iter().collect();
        for ((run_id, index), pin) in &self.pins {
            if let Some(problem) = journal_problem(run_steps, run_id, *index, &pin.sha256)? {
                let reason = format!(
                    "step {index} of run {run_id} does not match audit record {}: {problem}",
                    pin.seq
                );
                failures.push((pin.seq, reason));
            }
        }
        failures.sort();
        let others = failures.len().saturating_sub(1);
        let Some((seq, mut reason)) = failures.into_iter().next() else {
            return Ok(None);
        };
        if others > 0 {
            reason.push_str(&format!(
                "; {others} more step records do not match their audit records"
            ));
        }
        Ok(Some(AuditVerdict::Broken { seq, reason }))
    }
}

/// Returns what is wrong with step `index` of run `run_id` in the journal
/// given the digest `expected`, or `None` when it matches.
fn journal_problem(
    run_steps: &sled::Tree,
    run_id: &str,
    index: u32,
    expected: &str,
) -> Result<Option<String>, StoreError> {
    let key = step_key(run_id, index as usize);
    let stored = run_steps
        .get(key)
        .map_err(|error| StoreError::Database(error.to_string()))?;
    let Some(bytes) = stored else {
        return Ok(Some("the journal has no record at that index".into()));
    };
    let record: StepRecord = match serde_json::from_slice(&bytes) {
        Ok(record) => record,
        Err(error) => {
            return Ok(Some(format!(
                "the journal record is not a valid step record: {error}"
            )));
        }
    };
    let actual = step_record_sha256(&record);
    if actual == expected {
        return Ok(None);
    }
    Ok(Some(format!(
        "the journal record hashes to {actual}, the audit record has {expected}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AUDIT_TREE, AuditEvent};
    use chrono::Utc;
    use palisade_model::StepStatus;
    use serde_json::{Value, json};

    fn step(output: Value) -> StepRecord {
        StepRecord {
            id: "lookup".into(),
            uses: "virustotal.lookup".into(),
            status: StepStatus::Succeeded,
            item: None,
            handles: None,
            child_run: None,
            attempt: 1,
            idempotency_key: Some("palisade-0123".into()),
            retry_at: None,
            started_at: Utc::now(),
            duration_us: 1500,
            plugin_version: Some("0.1.0".into()),
            input: json!({ "ip": "10.0.2.15" }),
            output: Some(output),
            error: None,
            logs: json!([]),
            http_calls: Value::Null,
        }
    }

    /// A sled database with an audit log and a journal.
    struct Fixture {
        _dir: tempfile::TempDir,
        db: sled::Db,
        log: AuditLog,
        run_steps: sled::Tree,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path()).unwrap();
            let log = AuditLog::open(db.open_tree(AUDIT_TREE).unwrap()).unwrap();
            let run_steps = db.open_tree("run_steps").unwrap();
            Self {
                _dir: dir,
                db,
                log,
                run_steps,
            }
        }

        /// Journals `record` at `index` of `run_id` the way the engine
        /// does, then appends its `step_finished` record.
        fn finish(&self, run_id: &str, index: u32, record: &StepRecord) -> u64 {
            let key = step_key(run_id, index as usize);
            self.run_steps
                .insert(key, serde_json::to_vec(record).unwrap())
                .unwrap();
            self.step_finished(
                run_id,
                json!({ "index": index, "record_sha256": step_record_sha256(record) }),
            )
        }

        fn step_finished(&self, run_id: &str, detail: Value) -> u64 {
            let event = AuditEvent {
                actor: "engine".into(),
                action: "step_finished".into(),
                subject: run_id.into(),
                detail,
            };
            self.log.append(event).unwrap().seq
        }

        fn edit_output(&self, run_id: &str, index: u32, output: Value) {
            let key = step_key(run_id, index as usize);
            let bytes = self.run_steps.get(&key).unwrap().unwrap();
            let mut stored: Value = serde_json::from_slice(&bytes).unwrap();
            stored["output"] = output;
            self.run_steps
                .insert(key, serde_json::to_vec(&stored).unwrap())
                .unwrap();
        }

        fn verify(&self) -> AuditVerdict {
            verify_audit_and_journal(&self.log, &self.run_steps).unwrap()
        }
    }

    fn broken(verdict: AuditVerdict) -> (u64, String) {
        match verdict {
            AuditVerdict::Broken { seq, reason } => (seq, reason),
            intact => panic!("expected a broken verdict, got {intact:?}"),
        }
    }

    #[test]
    fn matching_journal_verifies() {
        let fixture = Fixture::new();
        fixture.finish("R00000001", 0, &step(json!({ "malicious": 0 })));
        fixture.finish("R00000001", 1, &step(json!({ "score": 0.5 })));
        fixture.finish("R00000002", 0, &step(json!(null)));
        assert!(matches!(
            fixture.verify(),
            AuditVerdict::Intact { records: 3, .. }
        ));
    }

    #[test]
    fn changed_output_names_run_index_and_seq() {
        let fixture = Fixture::new();
        fixture.finish("R00000001", 0, &step(json!({ "malicious": 0 })));
        let seq = fixture.finish("R00000012", 3, &step(json!({ "malicious": 5 })));
        fixture.edit_output("R00000012", 3, json!({ "malicious": 0 }));
        let (broken_seq, reason) = broken(fixture.verify());
        assert_eq!(broken_seq, seq);
        assert!(
            reason.starts_with(&format!(
                "step 3 of run R00000012 does not match audit record {seq}: the journal record hashes to "
            )),
            "{reason}"
        );
    }

    #[test]
    fn key_order_of_stored_record_does_not_matter() {
        let fixture = Fixture::new();
        let record = step(json!({ "b": 1, "a": [true, { "y": 2, "x": 1 }] }));
        fixture.finish("R00000001", 0, &record);
        // The same record with its fields in reverse order.
        let value = serde_json::to_value(&record).unwrap();
        let reversed: Vec<String> = value
            .as_object()
            .unwrap()
            .iter()
            .rev()
            .map(|(key, item)| format!("{}:{item}", Value::from(key.as_str())))
            .collect();
        let text = format!("{{{}}}", reversed.join(","));
        assert_ne!(text.as_bytes(), serde_json::to_vec(&record).unwrap());
        fixture
            .run_steps
            .insert(step_key("R00000001", 0), text.as_bytes())
            .unwrap();
        assert!(matches!(fixture.verify(), AuditVerdict::Intact { .. }));
    }

    #[test]
    fn floats_survive_the_stored_encoding() {
        // Values whose shortest decimal form a fast, inexact parser reads
        // back as a neighbouring float.
        let floats = [
            0.1 + 0.2,
            1.0 / 3.0,
            2.2250738585072014e-308,
            5e-324,
            1.7976931348623157e308,
            9007199254740993.0,
            0.000_123_456_789_012_345_67,
            123_456.789_012_345_67,
            7.038531e-26,
            1.448997445238699,
            8.98846567431158e307,
            2.0_f64.powi(-1022) * 1.5,
        ];
        let fixture = Fixture::new();
        for (index, float) in floats.iter().enumerate() {
            let record = step(json!({ "score": float, "nested": [float, { "x": float }] }));
            fixture.finish("R00000001", index as u32, &record);
            let stored = fixture
                .run_steps
                .get(step_key("R00000001", index))
                .unwrap()
                .unwrap();
            let decoded: StepRecord = serde_json::from_slice(&stored).unwrap();
            assert_eq!(
                step_record_sha256(&decoded),
                step_record_sha256(&record),
                "float {float:e}"
            );
        }
        assert!(matches!(fixture.verify(), AuditVerdict::Intact { .. }));
    }

    #[test]
    fn only_the_last_digest_of_a_step_counts() {
        let fixture = Fixture::new();
        fixture.finish("R00000001", 0, &step(json!({ "approved": null })));
        let mut decided = step(json!({ "approved": true }));
        decided.attempt = 2;
        let seq = fixture.finish("R00000001", 0, &decided);
        assert!(matches!(fixture.verify(), AuditVerdict::Intact { .. }));

        // Putting the first version back no longer matches.
        let first = step(json!({ "approved": null }));
        fixture
            .run_steps
            .insert(
                step_key("R00000001", 0),
                serde_json::to_vec(&first).unwrap(),
            )
            .unwrap();
        let (broken_seq, reason) = broken(fixture.verify());
        assert_eq!(broken_seq, seq);
        assert!(reason.contains("step 0 of run R00000001"), "{reason}");
    }

    #[test]
    fn missing_journal_record_is_reported() {
        let fixture = Fixture::new();
        let seq = fixture.finish("R00000001", 0, &step(json!({})));
        fixture.run_steps.remove(step_key("R00000001", 0)).unwrap();
        let (broken_seq, reason) = broken(fixture.verify());
        assert_eq!(broken_seq, seq);
        assert!(
            reason.ends_with("the journal has no record at that index"),
            "{reason}"
        );
    }

    #[test]
    fn invalid_journal_record_is_reported() {
        let fixture = Fixture::new();
        let seq = fixture.finish("R00000001", 0, &step(json!({})));
        fixture
            .run_steps
            .insert(step_key("R00000001", 0), &b"{\"id\":1}"[..])
            .unwrap();
        let (broken_seq, reason) = broken(fixture.verify());
        assert_eq!(broken_seq, seq);
        assert!(reason.contains("is not a valid step record"), "{reason}");
    }

    #[test]
    fn records_without_digest_and_unaudited_steps_pass() {
        let fixture = Fixture::new();
        // An older engine's record, with no digest.
        fixture.step_finished("R00000001", json!({ "index": 0, "step": "lookup" }));
        fixture
            .run_steps
            .insert(step_key("R00000001", 0), &b"not even json"[..])
            .unwrap();
        // A step journaled as started, with no audit record yet.
        let mut started = step(Value::Null);
        started.status = StepStatus::Started;
        fixture
            .run_steps
            .insert(
                step_key("R00000001", 1),
                serde_json::to_vec(&started).unwrap(),
            )
            .unwrap();
        assert!(matches!(
            fixture.verify(),
            AuditVerdict::Intact { records: 1, .. }
        ));
    }

    #[test]
    fn digest_without_index_is_reported() {
        let details = [
            json!({ "record_sha256": "ab" }),
            json!({ "index": -1, "record_sha256": "ab" }),
            json!({ "index": 1, "record_sha256": 5 }),
        ];
        for detail in details {
            let fixture = Fixture::new();
            let seq = fixture.step_finished("R00000001", detail.clone());
            let (broken_seq, reason) = broken(fixture.verify());
            assert_eq!(broken_seq, seq, "{detail}");
            assert!(reason.contains("pins a step record"), "{detail}: {reason}");
        }
    }

    #[test]
    fn earliest_mismatch_is_named_with_a_count() {
        let fixture = Fixture::new();
        let first = fixture.finish("R00000002", 0, &step(json!(1)));
        fixture.finish("R00000001", 0, &step(json!(2)));
        fixture.finish("R00000001", 1, &step(json!(3)));
        for (run_id, index) in [("R00000002", 0), ("R00000001", 0), ("R00000001", 1)] {
            fixture.edit_output(run_id, index, json!("forged"));
        }
        let (seq, reason) = broken(fixture.verify());
        assert_eq!(seq, first);
        assert!(reason.starts_with("step 0 of run R00000002"), "{reason}");
        assert!(
            reason.ends_with("; 2 more step records do not match their audit records"),
            "{reason}"
        );
    }

    #[test]
    fn chain_break_wins_over_journal_mismatch() {
        let fixture = Fixture::new();
        fixture.finish("R00000001", 0, &step(json!(1)));
        fixture.edit_output("R00000001", 0, json!("forged"));
        let second = fixture.log.append(AuditEvent {
            actor: "cli".into(),
            action: "case_updated".into(),
            subject: "C00000001".into(),
            detail: json!({}),
        });
        let mut changed = second.unwrap();
        changed.subject = "C00000002".into();
        let tree = fixture.db.open_tree(AUDIT_TREE).unwrap();
        tree.insert(2u64.to_be_bytes(), serde_json::to_vec(&changed).unwrap())
            .unwrap();
        let (seq, reason) = broken(fixture.verify());
        assert_eq!(seq, 2);
        assert!(reason.starts_with("hash mismatch"), "{reason}");
    }
}
