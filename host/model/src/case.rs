//! Cases: alerts grouped by fingerprint or correlation key, with what
//! playbooks learned and what analysts did.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alert::{Rule, Severity};
use crate::observable::{Observable, ObservableKind};
use crate::sla::CaseSla;

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
    /// Every status, in workflow order.
    pub const ALL: [Self; 4] = [
        Self::New,
        Self::InProgress,
        Self::Resolved,
        Self::FalsePositive,
    ];

    /// Returns whether new alerts may still join the case.
    pub fn is_open(self) -> bool {
        matches!(self, Self::New | Self::InProgress)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::InProgress => "in_progress",
            Self::Resolved => "resolved",
            Self::FalsePositive => "false_positive",
        }
    }

    /// Parses a status name as [`CaseStatus::as_str`] writes it.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
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
    /// Person or client that made the change; `None` for the host's own
    /// events, such as an alert joining or a run finishing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// An analyst's comment on a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseNote {
    pub author: String,
    pub time: DateTime<Utc>,
    pub text: String,
}

/// A to-do item on a case, such as "reimage the host".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseTask {
    /// `T` and a number counting up from 1 within the case.
    pub id: String,
    pub title: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub done: bool,
    pub done_by: Option<String>,
    pub done_at: Option<DateTime<Utc>>,
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
    /// Analyst the case is assigned to.
    #[serde(default)]
    pub assignee: Option<String>,
    /// Labels, sorted and without duplicates.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Comments, oldest first.
    #[serde(default)]
    pub notes: Vec<CaseNote>,
    #[serde(default)]
    pub tasks: Vec<CaseTask>,
    /// When the case first left `new` or was first assigned.
    #[serde(default)]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When the case last moved to `resolved` or `false_positive`; cleared
    /// when it is reopened.
    #[serde(default)]
    pub resolved_at: Option<DateTime<Utc>>,
    /// Deadlines and breaches, computed against the SLA policy when the
    /// case is read through the case service. Never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<CaseSla>,
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

    /// Adds a host event, one with no actor, to the timeline.
    pub fn record(&mut self, kind: &str, detail: String, now: DateTime<Utc>) {
        self.push_event(kind, None, detail, now);
    }

    /// Adds an event that `actor` caused to the timeline.
    pub fn record_by(&mut self, kind: &str, actor: &str, detail: String, now: DateTime<Utc>) {
        self.push_event(kind, Some(actor.to_string()), detail, now);
    }

    fn push_event(
        &mut self,
        kind: &str,
        actor: Option<String>,
        detail: String,
        now: DateTime<Utc>,
    ) {
        self.timeline.push(TimelineEvent {
            time: now,
            kind: kind.to_string(),
            detail,
            actor,
        });
        self.updated_at = now;
    }

    /// Moves the case to `status`. The first move out of `new`
    /// acknowledges the case. A move to `resolved` or `false_positive` from
    /// an open status sets `resolved_at`, and a move back to an open status
    /// clears it. Returns whether the status changed.
    pub fn set_status(&mut self, status: CaseStatus, actor: &str, now: DateTime<Utc>) -> bool {
        let previous = self.status;
        if previous == status {
            return false;
        }
        self.status = status;
        if previous == CaseStatus::New {
            self.acknowledge(now);
        }
        if previous.is_open() && !status.is_open() {
            self.resolved_at = Some(now);
        } else if !previous.is_open() && status.is_open() {
            self.resolved_at = None;
        }
        let detail = format!("{} -> {}", previous.as_str(), status.as_str());
        self.record_by("status_changed", actor, detail, now);
        true
    }

    /// Assigns the case to `assignee`, or unassigns it with `None`. The
    /// first assignment acknowledges the case. Returns whether the assignee
    /// changed.
    pub fn assign(&mut self, assignee: Option<&str>, actor: &str, now: DateTime<Utc>) -> bool {
        if self.assignee.as_deref() == assignee {
            return false;
        }
        self.assignee = assignee.map(str::to_string);
        match assignee {
            Some(name) => {
                self.acknowledge(now);
                self.record_by("assigned", actor, format!("assigned to {name}"), now);
            }
            None => self.record_by("unassigned", actor, "unassigned".into(), now),
        }
        true
    }

    fn acknowledge(&mut self, now: DateTime<Utc>) {
        self.acknowledged_at.get_or_insert(now);
    }

    /// Adds `tag`, keeping the tags sorted. Returns whether it was new.
    pub fn add_tag(&mut self, tag: &str, actor: &str, now: DateTime<Utc>) -> bool {
        let Err(index) = self.tags.binary_search_by(|t| t.as_str().cmp(tag)) else {
            return false;
        };
        self.tags.insert(index, tag.to_string());
        self.record_by("tag_added", actor, tag.to_string(), now);
        true
    }

    /// Removes `tag`. Returns whether the case had it.
    pub fn remove_tag(&mut self, tag: &str, actor: &str, now: DateTime<Utc>) -> bool {
        let before = self.tags.len();
        self.tags.retain(|t| t != tag);
        if self.tags.len() == before {
            return false;
        }
        self.record_by("tag_removed", actor, tag.to_string(), now);
        true
    }

    /// Sets the priority. Returns whether it changed.
    pub fn set_priority(&mut self, priority: &str, actor: &str, now: DateTime<Utc>) -> bool {
        if self.priority.as_deref() == Some(priority) {
            return false;
        }
        let previous = self.priority.replace(priority.to_string());
        let detail = format!("{} -> {priority}", previous.as_deref().unwrap_or("none"));
        self.record_by("priority_changed", actor, detail, now);
        true
    }

    /// Sets the severity, lower or higher. Later alerts and playbooks can
    /// still raise it. Returns whether it changed.
    pub fn set_severity(&mut self, severity: Severity, actor: &str, now: DateTime<Utc>) -> bool {
        if self.severity == severity {
            return false;
        }
        let detail = format!("{} -> {}", self.severity.as_str(), severity.as_str());
        self.severity = severity;
        self.record_by("severity_changed", actor, detail, now);
        true
    }

    /// Adds a comment by `author`.
    pub fn add_note(&mut self, author: &str, text: &str, now: DateTime<Utc>) {
        self.notes.push(CaseNote {
            author: author.to_string(),
            time: now,
            text: text.to_string(),
        });
        self.record_by("comment", author, excerpt(text), now);
    }

    /// Adds an open task and returns its id.
    pub fn add_task(&mut self, title: &str, actor: &str, now: DateTime<Utc>) -> String {
        // Tasks are never removed, so the count gives a fresh number.
        let id = format!("T{}", self.tasks.len() + 1);
        self.tasks.push(CaseTask {
            id: id.clone(),
            title: title.to_string(),
            created_by: actor.to_string(),
            created_at: now,
            done: false,
            done_by: None,
            done_at: None,
        });
        self.record_by("task_added", actor, format!("{id}: {title}"), now);
        id
    }

    /// Marks task `id` done. Returns `None` when the case has no such task,
    /// and `Some(false)` when the task was already done, which changes
    /// nothing.
    pub fn complete_task(&mut self, id: &str, actor: &str, now: DateTime<Utc>) -> Option<bool> {
        let task = self.tasks.iter_mut().find(|task| task.id == id)?;
        if task.done {
            return Some(false);
        }
        task.done = true;
        task.done_by = Some(actor.to_string());
        task.done_at = Some(now);
        let detail = format!("{}: {}", task.id, task.title);
        self.record_by("task_done", actor, detail, now);
        Some(true)
    }
}

/// Maximum length of a comment excerpt in a timeline event, in characters.
const EXCERPT_CHARS: usize = 80;

/// Returns the first line of `text`, cut to [`EXCERPT_CHARS`] characters
/// with an ellipsis when anything was left out.
fn excerpt(text: &str) -> String {
    let first_line = text.lines().next().unwrap_or("");
    let mut cut: String = first_line.chars().take(EXCERPT_CHARS).collect();
    if cut.len() < text.trim_end().len() {
        cut.push('…');
    }
    cut
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
            assignee: None,
            tags: vec![],
            notes: vec![],
            tasks: vec![],
            acknowledged_at: None,
            resolved_at: None,
            sla: None,
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

    fn at(minute: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-01-05T10:{minute:02}:00Z"))
            .unwrap()
            .to_utc()
    }

    fn kinds(case: &Case) -> Vec<(&str, Option<&str>)> {
        case.timeline
            .iter()
            .map(|event| (event.kind.as_str(), event.actor.as_deref()))
            .collect()
    }

    #[test]
    fn first_move_out_of_new_acknowledges() {
        let mut case = case();
        assert!(case.set_status(CaseStatus::InProgress, "ana", at(5)));
        assert_eq!(case.acknowledged_at, Some(at(5)));
        case.set_status(CaseStatus::New, "ana", at(6));
        case.set_status(CaseStatus::InProgress, "ana", at(7));
        assert_eq!(
            case.acknowledged_at,
            Some(at(5)),
            "only the first move counts"
        );
        assert!(!case.set_status(CaseStatus::InProgress, "ana", at(8)));
        assert_eq!(case.timeline.len(), 3, "an unchanged status adds no event");
        assert_eq!(case.timeline[0].detail, "new -> in_progress");
    }

    #[test]
    fn first_assignment_acknowledges() {
        let mut case = case();
        assert!(case.assign(Some("ana"), "lead", at(3)));
        assert_eq!(case.acknowledged_at, Some(at(3)));
        assert_eq!(case.status, CaseStatus::New, "assigning keeps the status");
        assert!(!case.assign(Some("ana"), "lead", at(4)));
        assert!(case.assign(None, "lead", at(5)));
        assert_eq!(case.assignee, None);
        assert_eq!(
            kinds(&case),
            [("assigned", Some("lead")), ("unassigned", Some("lead"))]
        );
    }

    #[test]
    fn resolving_and_reopening_track_resolved_at() {
        let mut case = case();
        case.set_status(CaseStatus::Resolved, "ana", at(10));
        assert_eq!(case.resolved_at, Some(at(10)));
        assert_eq!(case.acknowledged_at, Some(at(10)), "resolving acknowledges");
        case.set_status(CaseStatus::FalsePositive, "ana", at(11));
        assert_eq!(case.resolved_at, Some(at(10)), "still closed since 10:10");
        case.set_status(CaseStatus::InProgress, "ana", at(12));
        assert_eq!(case.resolved_at, None, "reopening clears it");
        case.set_status(CaseStatus::FalsePositive, "ana", at(13));
        assert_eq!(case.resolved_at, Some(at(13)));
    }

    #[test]
    fn tags_stay_sorted_and_unique() {
        let mut case = case();
        for tag in ["phishing", "apt", "phishing", "c2"] {
            case.add_tag(tag, "ana", at(1));
        }
        assert_eq!(case.tags, ["apt", "c2", "phishing"]);
        assert!(case.remove_tag("c2", "ana", at(2)));
        assert!(!case.remove_tag("c2", "ana", at(2)));
        assert_eq!(case.tags, ["apt", "phishing"]);
        let added = case
            .timeline
            .iter()
            .filter(|e| e.kind == "tag_added")
            .count();
        assert_eq!(added, 3, "a duplicate tag adds no event");
    }

    #[test]
    fn priority_and_severity_changes_are_recorded() {
        let mut case = case();
        assert!(case.set_priority("P2", "ana", at(1)));
        assert!(!case.set_priority("P2", "ana", at(1)));
        assert!(case.set_severity(Severity::Critical, "ana", at(2)));
        assert!(case.set_severity(Severity::Informational, "ana", at(3)));
        assert_eq!(
            case.severity,
            Severity::Informational,
            "an analyst may lower it"
        );
        let details: Vec<&str> = case.timeline.iter().map(|e| e.detail.as_str()).collect();
        assert_eq!(
            details,
            ["none -> P2", "low -> critical", "critical -> informational"]
        );
    }

    #[test]
    fn tasks_count_up_and_complete_once() {
        let mut case = case();
        assert_eq!(case.add_task("isolate host", "ana", at(1)), "T1");
        assert_eq!(case.add_task("reset password", "ana", at(2)), "T2");
        assert_eq!(case.complete_task("T2", "bo", at(3)), Some(true));
        assert_eq!(case.complete_task("T2", "ana", at(4)), Some(false));
        assert_eq!(case.complete_task("T9", "ana", at(4)), None);
        let task = &case.tasks[1];
        assert!(task.done);
        assert_eq!(task.done_by.as_deref(), Some("bo"));
        assert_eq!(task.done_at, Some(at(3)));
        assert!(!case.tasks[0].done);
        assert_eq!(
            kinds(&case),
            [
                ("task_added", Some("ana")),
                ("task_added", Some("ana")),
                ("task_done", Some("bo"))
            ]
        );
    }

    #[test]
    fn comment_keeps_text_and_logs_excerpt() {
        let mut case = case();
        let long = format!("{}\nsecond line", "x".repeat(100));
        case.add_note("ana", "looks benign", at(1));
        case.add_note("bo", &long, at(2));
        assert_eq!(case.notes[1].text, long);
        assert_eq!(case.notes[1].author, "bo");
        assert_eq!(case.timeline[0].detail, "looks benign");
        assert_eq!(case.timeline[1].detail, format!("{}…", "x".repeat(80)));
        assert_eq!(case.timeline[1].actor.as_deref(), Some("bo"));
    }

    #[test]
    fn case_stored_before_the_workflow_fields_still_reads() {
        let stored = serde_json::json!({
            "id": "C00000001", "fingerprint": "f", "title": "t", "status": "in_progress",
            "source": "wazuh", "rule": {"id": "1", "name": "r"}, "severity": "low",
            "priority": null, "score": null,
            "created_at": "2026-01-05T10:00:00Z", "updated_at": "2026-01-05T10:00:00Z",
            "alert_ids": [], "observables": [], "intel_hits": [], "verdicts": [], "run_ids": [],
            "timeline": [{"time": "2026-01-05T10:00:00Z", "kind": "case_opened", "detail": "d"}]
        });
        let case: Case = serde_json::from_value(stored).unwrap();
        assert_eq!(case.status, CaseStatus::InProgress);
        assert!(case.tags.is_empty());
        assert_eq!(case.assignee, None);
        assert_eq!(case.acknowledged_at, None);
        assert_eq!(case.timeline[0].actor, None);
        let written = serde_json::to_value(&case).unwrap();
        assert!(
            written.get("sla").is_none(),
            "an absent SLA view is not written"
        );
    }

    #[test]
    fn status_names_round_trip() {
        for status in CaseStatus::ALL {
            assert_eq!(CaseStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
        }
        assert_eq!(CaseStatus::parse("closed"), None);
    }
}
