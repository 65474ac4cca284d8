//! The `correlation` tree: each correlation key (see
//! [`palisade_model::Alert::correlation_keys`]) to the case that last took
//! an alert with that key, and the latest event time of such an alert.
//!
//! [`crate::Store::ingest_alert`] reads and writes this tree in the same
//! transaction as the alert and its case. An alert whose fingerprint
//! matches no open case joins the open case that one of its keys names, if
//! that key was last seen within the correlation window of the alert's
//! event time.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use palisade_model::{Alert, CaseStatus};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::StoreError;

/// Name of the tree.
pub(crate) const CORRELATION_TREE: &str = "correlation";

/// Value of a key in the tree.
#[derive(Serialize, Deserialize)]
struct Entry {
    case_id: String,
    last_seen: DateTime<Utc>,
}

/// Only the status of a stored case, to check that it is open.
#[derive(Deserialize)]
struct CaseState {
    status: CaseStatus,
}

type TransactionResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn corrupt(tree: &'static str, key: &[u8], error: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        message: error.to_string(),
    }
}

fn read_entry(correlation: &TransactionalTree, key: &str) -> TransactionResult<Option<Entry>> {
    let Some(bytes) = correlation.get(key.as_bytes())? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|error| {
        ConflictableTransactionError::Abort(corrupt(CORRELATION_TREE, key.as_bytes(), error))
    })
}

/// Returns the id of the open case that one of `keys` ties to an event at
/// `time`, with that key. A key qualifies when its case is open and it was
/// last seen no more than `window` before or after `time`. When several
/// qualify, the key seen most recently wins, then the earlier key in
/// `keys`.
pub(crate) fn find_case(
    correlation: &TransactionalTree,
    cases: &TransactionalTree,
    keys: &[String],
    time: DateTime<Utc>,
    window: Duration,
) -> TransactionResult<Option<(String, String)>> {
    let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
    let mut best: Option<(DateTime<Utc>, String, String)> = None;
    for key in keys {
        let Some(entry) = read_entry(correlation, key)? else {
            continue;
        };
        if (time - entry.last_seen).abs() > window {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|(seen, _, _)| *seen >= entry.last_seen)
        {
            continue;
        }
        let Some(bytes) = cases.get(entry.case_id.as_bytes())? else {
            continue;
        };
        let state: CaseState = serde_json::from_slice(&bytes).map_err(|error| {
            ConflictableTransactionError::Abort(corrupt("cases", entry.case_id.as_bytes(), error))
        })?;
        if state.status.is_open() {
            best = Some((entry.last_seen, entry.case_id, key.clone()));
        }
    }
    Ok(best.map(|(_, case_id, key)| (case_id, key)))
}

/// Points every key in `keys` at case `case_id`, seen at `time`. A key
/// that already pointed at this case keeps the later of its two times.
pub(crate) fn record_keys(
    correlation: &TransactionalTree,
    keys: &[String],
    case_id: &str,
    time: DateTime<Utc>,
) -> TransactionResult<()> {
    for key in keys {
        let last_seen = match read_entry(correlation, key)? {
            Some(entry) if entry.case_id == case_id => entry.last_seen.max(time),
            _ => time,
        };
        let entry = Entry {
            case_id: case_id.to_string(),
            last_seen,
        };
        // An entry holds only strings and a time, which always serialise.
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        correlation.insert(key.as_bytes(), bytes)?;
    }
    Ok(())
}

/// Builds the tree from the alerts of every open case, for a database
/// written before the tree existed. Running it again writes the same
/// entries, so it is safe to repeat after a crash.
pub(crate) fn rebuild(db: &sled::Db) -> Result<(), StoreError> {
    let database = |error: sled::Error| StoreError::Database(error.to_string());
    let cases = db.open_tree("cases").map_err(database)?;
    let case_items = db.open_tree("case_items").map_err(database)?;
    let alerts = db.open_tree("alerts").map_err(database)?;
    let correlation = db.open_tree(CORRELATION_TREE).map_err(database)?;
    for entry in cases.iter() {
        let (case_key, bytes) = entry.map_err(database)?;
        if case_key.as_ref() == crate::sled_store::CASE_COUNTER {
            continue;
        }
        let state: CaseState =
            serde_json::from_slice(&bytes).map_err(|error| corrupt("cases", &case_key, error))?;
        if !state.status.is_open() {
            continue;
        }
        let case_id = String::from_utf8_lossy(&case_key).into_owned();
        let mut prefix = case_key.to_vec();
        prefix.push(0);
        prefix.push(crate::sled_store::ALERT_IDS);
        for item in case_items.scan_prefix(&prefix).values() {
            let alert_id = item.map_err(database)?;
            let Some(alert_bytes) = alerts.get(&alert_id).map_err(database)? else {
                continue;
            };
            let alert: Alert = serde_json::from_slice(&alert_bytes)
                .map_err(|error| corrupt("alerts", &alert_id, error))?;
            let time = alert.time.to_utc();
            for key in alert.correlation_keys() {
                let old = correlation
                    .get(key.as_bytes())
                    .map_err(database)?
                    .and_then(|old| serde_json::from_slice::<Entry>(&old).ok());
                // When two open cases share a key, the key stays with the
                // case that saw it last, as it would have after ingesting.
                let last_seen = match old {
                    Some(old) if old.case_id == case_id => old.last_seen.max(time),
                    Some(old) if old.last_seen > time => continue,
                    _ => time,
                };
                let entry = Entry {
                    case_id: case_id.clone(),
                    last_seen,
                };
                let bytes = serde_json::to_vec(&entry).unwrap_or_default();
                correlation
                    .insert(key.as_bytes(), bytes)
                    .map_err(database)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use palisade_model::{Alert, CaseStatus, Severity, parse_alerts};

    use crate::{SledStore, Store};

    const HOUR: Duration = Duration::from_secs(3600);

    /// Builds a Suricata event of flow `flow_id` between two private
    /// addresses, so its only correlation key is the flow.
    fn eve(event_type: &str, flow_id: u64, time: &str) -> Alert {
        let alert = if event_type == "alert" {
            r#","alert":{"signature_id":2024833,"signature":"ET POLICY probe","severity":1}"#
        } else {
            ""
        };
        let line = format!(
            r#"{{"timestamp":"{time}","event_type":"{event_type}","flow_id":{flow_id},"src_ip":"192.168.86.85","dest_ip":"192.168.86.28"{alert}}}"#
        );
        parse_alerts(&line).pop().unwrap().unwrap()
    }

    fn index_len(store: &SledStore) -> usize {
        store.db().open_tree(super::CORRELATION_TREE).unwrap().len()
    }

    fn store(window: Duration) -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path())
            .unwrap()
            .with_correlation_window(window);
        (dir, store)
    }

    #[test]
    fn shared_key_within_window_joins() {
        let (_dir, store) = store(HOUR);
        let flow = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
            .unwrap();
        let http = store
            .ingest_alert(&eve("http", 7, "2024-03-02T10:59:00Z"), Utc::now())
            .unwrap();
        assert!(!http.case_is_new);
        assert_eq!(http.case_id, flow.case_id);
        let case = store.case(&flow.case_id).unwrap().unwrap();
        assert_eq!(case.alert_ids.len(), 2);
        let joined = case.timeline.last().unwrap();
        assert!(
            joined
                .detail
                .ends_with("joined by correlation key suricata:flow:7"),
            "{}",
            joined.detail
        );
    }

    #[test]
    fn window_slides_with_each_alert() {
        let (_dir, store) = store(HOUR);
        let first = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
            .unwrap();
        for (event_type, time) in [
            ("http", "2024-03-02T10:50:00Z"),
            ("dns", "2024-03-02T11:40:00Z"),
        ] {
            let outcome = store
                .ingest_alert(&eve(event_type, 7, time), Utc::now())
                .unwrap();
            assert_eq!(outcome.case_id, first.case_id, "{event_type} at {time}");
        }
    }

    #[test]
    fn alert_outside_window_opens_a_case() {
        let (_dir, store) = store(HOUR);
        let first = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
            .unwrap();
        // An event that arrives late but happened before the first one
        // counts too, within the window.
        let early = store
            .ingest_alert(&eve("dns", 7, "2024-03-02T09:30:00Z"), Utc::now())
            .unwrap();
        assert_eq!(early.case_id, first.case_id);
        // The window counts from the latest event time, 10:00, not from
        // the latest arrival.
        let late = store
            .ingest_alert(&eve("http", 7, "2024-03-02T11:00:01Z"), Utc::now())
            .unwrap();
        assert!(late.case_is_new);
        assert_ne!(late.case_id, first.case_id);
    }

    #[test]
    fn zero_window_groups_by_fingerprint_only() {
        let (_dir, store) = store(Duration::ZERO);
        let flow = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
            .unwrap();
        let http = store
            .ingest_alert(&eve("http", 7, "2024-03-02T10:00:01Z"), Utc::now())
            .unwrap();
        assert_ne!(http.case_id, flow.case_id);
        assert!(index_len(&store) == 0, "no index is kept");
    }

    #[test]
    fn closed_case_takes_no_alert_by_key() {
        let (_dir, store) = store(HOUR);
        let flow = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
            .unwrap();
        store
            .update_case(&flow.case_id, &mut |case| {
                case.set_status(CaseStatus::Resolved, "ana", Utc::now());
            })
            .unwrap();
        let http = store
            .ingest_alert(&eve("http", 7, "2024-03-02T10:01:00Z"), Utc::now())
            .unwrap();
        assert!(http.case_is_new);
        // The key now names the new case.
        let dns = store
            .ingest_alert(&eve("dns", 7, "2024-03-02T10:02:00Z"), Utc::now())
            .unwrap();
        assert_eq!(dns.case_id, http.case_id);
    }

    #[test]
    fn joined_fingerprint_skips_closed_case() {
        let (_dir, store) = store(HOUR);
        let flow = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
            .unwrap();
        let http = store
            .ingest_alert(&eve("http", 7, "2024-03-02T10:01:00Z"), Utc::now())
            .unwrap();
        assert_eq!(http.case_id, flow.case_id);
        store
            .update_case(&flow.case_id, &mut |case| {
                case.set_status(CaseStatus::FalsePositive, "ana", Utc::now());
            })
            .unwrap();
        // Same fingerprint as the joined http event, another flow and a
        // time far outside the window.
        let again = store
            .ingest_alert(&eve("http", 8, "2024-03-05T10:00:00Z"), Utc::now())
            .unwrap();
        assert!(again.case_is_new);
    }

    #[test]
    fn more_severe_alert_names_a_context_case() {
        let (_dir, store) = store(HOUR);
        let flow = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
            .unwrap();
        store
            .ingest_alert(&eve("alert", 7, "2024-03-02T10:00:05Z"), Utc::now())
            .unwrap();
        let case = store.case(&flow.case_id).unwrap().unwrap();
        assert_eq!(case.title, "ET POLICY probe");
        assert_eq!(case.rule.id, "2024833");
        assert_eq!(case.severity, Severity::High);
        assert!(case.timeline.iter().any(|event| event.kind == "retitled"));
    }

    #[test]
    fn reopened_case_takes_its_fingerprint_back() {
        let (_dir, store) = store(Duration::ZERO);
        let first = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
            .unwrap();
        for status in [CaseStatus::Resolved, CaseStatus::InProgress] {
            store
                .update_case(&first.case_id, &mut |case| {
                    case.set_status(status, "ana", Utc::now());
                })
                .unwrap();
        }
        let again = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T12:00:00Z"), Utc::now())
            .unwrap();
        assert_eq!(again.case_id, first.case_id);
    }

    #[test]
    fn rebuild_indexes_open_cases_of_an_older_database() {
        let dir = tempfile::tempdir().unwrap();
        let (open_id, closed_id) = {
            // Written without an index, as before the index existed.
            let store = SledStore::open(dir.path()).unwrap();
            let open = store
                .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
                .unwrap();
            let closed = store
                .ingest_alert(&eve("dns", 9, "2024-03-02T10:00:00Z"), Utc::now())
                .unwrap();
            assert_ne!(closed.case_id, open.case_id);
            store
                .update_case(&closed.case_id, &mut |case| {
                    case.set_status(CaseStatus::Resolved, "ana", Utc::now());
                })
                .unwrap();
            assert!(index_len(&store) == 0);
            super::rebuild(store.db()).unwrap();
            super::rebuild(store.db()).unwrap();
            store.flush().unwrap();
            (open.case_id, closed.case_id)
        };
        let store = SledStore::open(dir.path())
            .unwrap()
            .with_correlation_window(HOUR);
        assert_eq!(index_len(&store), 1, "closed cases are not indexed");
        let http = store
            .ingest_alert(&eve("http", 7, "2024-03-02T10:30:00Z"), Utc::now())
            .unwrap();
        assert_eq!(http.case_id, open_id);
        let other = store
            .ingest_alert(&eve("http", 9, "2024-03-02T10:30:00Z"), Utc::now())
            .unwrap();
        assert_ne!(other.case_id, closed_id);
    }

    #[test]
    fn notes_are_stored_as_list_items() {
        let (_dir, store) = store(Duration::ZERO);
        let outcome = store
            .ingest_alert(&eve("flow", 7, "2024-03-02T10:00:00Z"), Utc::now())
            .unwrap();
        for text in ["first", "second"] {
            store
                .update_case(&outcome.case_id, &mut |case| {
                    assert!(case.notes.is_empty(), "the change sees no earlier notes");
                    case.add_note("ana", text, Utc::now());
                })
                .unwrap();
        }
        let case = store.case(&outcome.case_id).unwrap().unwrap();
        let texts: Vec<&str> = case.notes.iter().map(|note| note.text.as_str()).collect();
        assert_eq!(texts, ["first", "second"]);
        let record = store
            .db()
            .open_tree("cases")
            .unwrap()
            .get(outcome.case_id.as_bytes())
            .unwrap()
            .unwrap();
        let record = String::from_utf8_lossy(&record);
        assert!(!record.contains("first"), "{record}");
    }
}
