//! Service-level targets: how soon a case must be acknowledged and
//! resolved, by severity, and whether a case met them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alert::Severity;
use crate::case::Case;

/// Deadlines of one severity. `None` sets no deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlaTarget {
    pub acknowledge: Option<Duration>,
    pub resolve: Option<Duration>,
}

/// Targets for every severity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlaPolicy {
    /// Indexed by severity, from informational to critical.
    targets: [SlaTarget; 5],
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

fn target(acknowledge_secs: u64, resolve_secs: u64) -> SlaTarget {
    SlaTarget {
        acknowledge: Some(Duration::from_secs(acknowledge_secs)),
        resolve: Some(Duration::from_secs(resolve_secs)),
    }
}

impl Default for SlaPolicy {
    /// Critical 15m and 4h, high 1h and 24h, medium 4h and 3d, low 24h and
    /// 7d (acknowledge and resolve). Informational cases have no deadline.
    fn default() -> Self {
        let mut policy = Self {
            targets: [SlaTarget::default(); 5],
        };
        policy.set(Severity::Critical, target(15 * MINUTE, 4 * HOUR));
        policy.set(Severity::High, target(HOUR, DAY));
        policy.set(Severity::Medium, target(4 * HOUR, 3 * DAY));
        policy.set(Severity::Low, target(DAY, 7 * DAY));
        policy
    }
}

impl SlaPolicy {
    // `Severity` has five variants numbered from 0, so `severity as usize`
    // is always a valid index of `targets`.
    pub fn target(&self, severity: Severity) -> SlaTarget {
        self.targets[severity as usize]
    }

    pub fn set(&mut self, severity: Severity, target: SlaTarget) {
        self.targets[severity as usize] = target;
    }

    /// Computes the deadlines of `case` from its creation time and current
    /// severity, and its breaches as of `now`. A deadline missed stays
    /// breached after the case is acknowledged or resolved.
    pub fn evaluate(&self, case: &Case, now: DateTime<Utc>) -> CaseSla {
        let target = self.target(case.severity);
        let acknowledge_by = deadline(case.created_at, target.acknowledge);
        let resolve_by = deadline(case.created_at, target.resolve);
        CaseSla {
            acknowledge_by,
            acknowledge_breached: is_late(acknowledge_by, case.acknowledged_at, now),
            resolve_by,
            resolve_breached: is_late(resolve_by, case.resolved_at, now),
        }
    }
}

fn deadline(start: DateTime<Utc>, target: Option<Duration>) -> Option<DateTime<Utc>> {
    let span = chrono::Duration::from_std(target?).ok()?;
    start.checked_add_signed(span)
}

/// Returns whether something due at `deadline` and done at `done` (or not
/// yet, at `now`) was late.
fn is_late(
    deadline: Option<DateTime<Utc>>,
    done: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    deadline.is_some_and(|deadline| done.unwrap_or(now) > deadline)
}

/// A case's SLA deadlines and whether it missed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseSla {
    pub acknowledge_by: Option<DateTime<Utc>>,
    pub acknowledge_breached: bool,
    pub resolve_by: Option<DateTime<Utc>>,
    pub resolve_breached: bool,
}

impl CaseSla {
    /// Returns whether either deadline was missed.
    pub fn is_breached(&self) -> bool {
        self.acknowledge_breached || self.resolve_breached
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::CaseStatus;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn case(severity: Severity) -> Case {
        serde_json::from_value(serde_json::json!({
            "id": "C00000001", "fingerprint": "f", "title": "t", "status": "new",
            "source": "wazuh", "rule": {"id": "1", "name": "r"},
            "severity": severity, "priority": null, "score": null,
            "created_at": "2026-01-05T10:00:00Z", "updated_at": "2026-01-05T10:00:00Z",
            "alert_ids": [], "observables": [], "intel_hits": [], "verdicts": [],
            "run_ids": [], "timeline": []
        }))
        .unwrap()
    }

    #[test]
    fn defaults_follow_severity() {
        let policy = SlaPolicy::default();
        let critical = policy.target(Severity::Critical);
        assert_eq!(critical.acknowledge, Some(Duration::from_secs(15 * 60)));
        assert_eq!(critical.resolve, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(
            policy.target(Severity::Medium).resolve,
            Some(Duration::from_secs(3 * 86_400))
        );
        assert_eq!(policy.target(Severity::Informational), SlaTarget::default());
    }

    #[test]
    fn deadlines_count_from_creation() {
        let sla = SlaPolicy::default().evaluate(&case(Severity::High), at("2026-01-05T10:30:00Z"));
        assert_eq!(sla.acknowledge_by, Some(at("2026-01-05T11:00:00Z")));
        assert_eq!(sla.resolve_by, Some(at("2026-01-06T10:00:00Z")));
        assert!(!sla.acknowledge_breached);
        assert!(!sla.resolve_breached);
        assert!(!sla.is_breached());
    }

    #[test]
    fn unacknowledged_case_breaches_after_deadline() {
        let policy = SlaPolicy::default();
        let case = case(Severity::Critical);
        let on_time = policy.evaluate(&case, at("2026-01-05T10:15:00Z"));
        assert!(!on_time.acknowledge_breached, "exactly at the deadline");
        let late = policy.evaluate(&case, at("2026-01-05T10:15:01Z"));
        assert!(late.acknowledge_breached);
        assert!(!late.resolve_breached);
        assert!(late.is_breached());
    }

    #[test]
    fn late_resolution_stays_breached() {
        let policy = SlaPolicy::default();
        let mut case = case(Severity::Critical);
        case.set_status(CaseStatus::Resolved, "ana", at("2026-01-05T15:00:00Z"));
        let sla = policy.evaluate(&case, at("2026-02-01T00:00:00Z"));
        assert!(sla.acknowledge_breached, "acknowledged after 5 hours");
        assert!(sla.resolve_breached, "resolved after 5 hours");
    }

    #[test]
    fn timely_resolution_never_breaches() {
        let policy = SlaPolicy::default();
        let mut case = case(Severity::Critical);
        case.set_status(CaseStatus::InProgress, "ana", at("2026-01-05T10:05:00Z"));
        case.set_status(CaseStatus::Resolved, "ana", at("2026-01-05T12:00:00Z"));
        let sla = policy.evaluate(&case, at("2026-03-01T00:00:00Z"));
        assert!(!sla.acknowledge_breached);
        assert!(!sla.resolve_breached);
    }

    #[test]
    fn reopened_case_is_measured_against_now() {
        let policy = SlaPolicy::default();
        let mut case = case(Severity::Critical);
        case.set_status(CaseStatus::Resolved, "ana", at("2026-01-05T10:10:00Z"));
        case.set_status(CaseStatus::InProgress, "ana", at("2026-01-05T11:00:00Z"));
        assert_eq!(case.resolved_at, None);
        let before = policy.evaluate(&case, at("2026-01-05T13:00:00Z"));
        assert!(!before.resolve_breached);
        let after = policy.evaluate(&case, at("2026-01-05T14:00:01Z"));
        assert!(after.resolve_breached);
    }

    #[test]
    fn informational_case_has_no_deadlines() {
        let sla = SlaPolicy::default()
            .evaluate(&case(Severity::Informational), at("2027-01-01T00:00:00Z"));
        assert_eq!(sla.acknowledge_by, None);
        assert_eq!(sla.resolve_by, None);
        assert!(!sla.is_breached());
    }
}
