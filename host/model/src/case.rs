//! Cases: alerts grouped by fingerprint, with what playbooks learned.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alert::{Rule, Severity};
use crate::observable::{Observable, ObservableKind};

/// Stage of a case in the analyst's workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    New,
    InProgress,
    Resolved,
    FalsePositive,
}

impl CaseStatus {
    /// Returns whether new alerts may still join the case.
    pub fn is_open(self) -> bool {
        matches!(self, Self::New | Self::InProgress)
    }
}

/// An observable seen in a case, deduplicated by kind and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseObservable {
    #[serde(rename = "type")]
    pub kind: ObservableKind,
    pub value: String,
    pub internal: bool,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Number of runs that reported it.
    pub sightings: u64,
}

/// One entry in a case's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub time: DateTime<Utc>,
    /// `alert_added`, `run_finished`, `status_changed` and so on.
    pub kind: String,
    pub detail: String,
}

/// A case: one or more alerts about the same thing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub id: String,
    pub fingerprint: String,
    pub title: String,
    pub status: CaseStatus,
    pub source: String,
    pub rule: Rule,
    /// Highest of the alerts' severities and the playbooks' assessments.
    pub severity: Severity,
    /// Priority set by a playbook, such as `P2`.
    pub priority: Option<String>,
    /// Score from 0 to 100 set by a playbook.
    pub score: Option<u8>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub alert_ids: Vec<String>,
    pub observables: Vec<CaseObservable>,
    /// Threat-intelligence matches reported by playbooks, one per observable.
    pub intel_hits: Vec<Value>,
    /// Enrichment verdicts reported by playbooks, one per observable.
    pub verdicts: Vec<Value>,
    pub run_ids: Vec<String>,
    pub timeline: Vec<TimelineEvent>,
}

impl Case {
    /// Adds observables, counting a sighting for those already present.
    pub fn merge_observables(&mut self, observables: &[Observable], now: DateTime<Utc>) {
        for observable in observables {
            let existing = self
                .observables
                .iter_mut()
                .find(|o| o.kind == observable.kind && o.value == observable.value);
            match existing {
                Some(seen) => {
                    seen.last_seen = now;
                    seen.sightings += 1;
                    seen.internal |= observable.internal;
                }
                None => self.observables.push(CaseObservable {
                    kind: observable.kind,
                    value: observable.value.clone(),
                    internal: observable.internal,
                    first_seen: now,
                    last_seen: now,
                    sightings: 1,
                }),
            }
        }
        self.observables
            .sort_by(|a, b| (a.kind, &a.value).cmp(&(b.kind, &b.value)));
    }

    /// Adds or replaces per-observable entries (intel hits or verdicts),
    /// keyed by their `type` and `value` fields.
    pub fn merge_keyed(entries: &mut Vec<Value>, new: &[Value]) {
        for entry in new {
            let key = (entry.get("type"), entry.get("value"));
            match entries
                .iter_mut()
                .find(|e| (e.get("type"), e.get("value")) == key)
            {
                Some(existing) => *existing = entry.clone(),
                None => entries.push(entry.clone()),
            }
        }
    }

    pub fn record(&mut self, kind: &str, detail: String, now: DateTime<Utc>) {
        self.timeline.push(TimelineEvent {
            time: now,
            kind: kind.to_string(),
            detail,
        });
        self.updated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case() -> Case {
        let now = Utc::now();
        Case {
            id: "c1".into(),
            fingerprint: "f".into(),
            title: "t".into(),
            status: CaseStatus::New,
            source: "wazuh".into(),
            rule: Rule {
                id: "1".into(),
                name: "r".into(),
            },
            severity: Severity::Low,
            priority: None,
            score: None,
            created_at: now,
            updated_at: now,
            alert_ids: vec![],
            observables: vec![],
            intel_hits: vec![],
            verdicts: vec![],
            run_ids: vec![],
            timeline: vec![],
        }
    }

    #[test]
    fn observables_are_deduplicated_with_sightings() {
        let mut case = case();
        let ip = Observable::ip("10.0.2.15").unwrap();
        let hash = Observable::hash("d41d8cd98f00b204e9800998ecf8427e").unwrap();
        case.merge_observables(&[ip.clone(), hash], Utc::now());
        case.merge_observables(&[ip], Utc::now());
        assert_eq!(case.observables.len(), 2);
        let seen = case
            .observables
            .iter()
            .find(|o| o.value == "10.0.2.15")
            .unwrap();
        assert_eq!(seen.sightings, 2);
        assert!(seen.internal);
    }

    #[test]
    fn keyed_entries_are_replaced() {
        let mut entries = vec![];
        let first = serde_json::json!({"type": "sha256", "value": "a", "verdict": "unknown"});
        let second = serde_json::json!({"type": "sha256", "value": "a", "verdict": "malicious"});
        Case::merge_keyed(&mut entries, &[first]);
        Case::merge_keyed(&mut entries, &[second]);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["verdict"], "malicious");
    }
}
