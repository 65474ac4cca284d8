//! The scoring rules. Every contribution to the score adds one reason that
//! names its evidence and its points.
//!
//! 1. The alert's severity sets the base: informational 5, low 20, medium
//!    40, high 65, critical 85. Each base lies inside its own severity band.
//! 2. Each distinct threat-intel indicator (by id) adds 15 for an exact
//!    match or 10 for a network match, because a network covers hosts that
//!    may be unrelated. Intel adds at most 45 in total.
//! 3. Each distinct VirusTotal report (by type and value) with verdict
//!    `malicious` adds 25, and with verdict `suspicious` adds 10. Other
//!    verdicts and reports with `found: false` add nothing. VirusTotal adds
//!    at most 50 in total.
//! 4. When there is at least one observable, every observable is internal,
//!    and no intel hit or malicious or suspicious verdict was found, the
//!    score drops by 15.
//! 5. The score is clamped to 0–100.
//!
//! The score band gives the severity: 0–14 informational, 15–34 low, 35–59
//! medium, 60–79 high, 80–100 critical. The result is never below the
//! alert's own severity. The priority also comes from the score: 80–100
//! P1, 60–79 P2, 35–59 P3, 0–34 P4. A score lowered by rule 4 can
//! therefore give a lower priority than the kept severity suggests.

use crate::input::{Evidence, IntelMatch, Severity, Verdict};

pub const EXACT_INTEL_POINTS: i64 = 15;
pub const NETWORK_INTEL_POINTS: i64 = 10;
pub const MAX_INTEL_POINTS: i64 = 45;
pub const MALICIOUS_VERDICT_POINTS: i64 = 25;
pub const SUSPICIOUS_VERDICT_POINTS: i64 = 10;
pub const MAX_VERDICT_POINTS: i64 = 50;
pub const INTERNAL_ONLY_POINTS: i64 = -15;

/// Maximum characters of a non-hash value quoted in a reason.
const MAX_QUOTED_VALUE_CHARS: usize = 64;

/// The outcome of scoring one alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub score: u8,
    pub severity: Severity,
    pub priority: &'static str,
    pub reasons: Vec<String>,
}

/// Returns the base score of an alert severity.
pub fn base_points(severity: Severity) -> i64 {
    match severity {
        Severity::Informational => 5,
        Severity::Low => 20,
        Severity::Medium => 40,
        Severity::High => 65,
        Severity::Critical => 85,
    }
}

/// Returns the severity band a score falls in.
pub fn severity_band(score: u8) -> Severity {
    match score {
        0..=14 => Severity::Informational,
        15..=34 => Severity::Low,
        35..=59 => Severity::Medium,
        60..=79 => Severity::High,
        _ => Severity::Critical,
    }
}

/// Returns the priority of a score.
pub fn priority(score: u8) -> &'static str {
    match score {
        80.. => "P1",
        60..=79 => "P2",
        35..=59 => "P3",
        _ => "P4",
    }
}

/// Scores `evidence` by the rules in the module documentation.
pub fn assess(evidence: &Evidence) -> Assessment {
    let mut reasons = Vec::new();
    let alert_severity = evidence.alert.severity;
    let base = base_points(alert_severity);
    reasons.push(format!("{}: base {base}", describe_alert(evidence)));

    let intel_points = add_intel(&evidence.intel, &mut reasons);
    let verdict_points = add_verdicts(&evidence.verdicts, &mut reasons);

    let mut total = base + intel_points + verdict_points;
    let internal_count = evidence.observables.iter().filter(|o| o.internal).count();
    let all_internal =
        !evidence.observables.is_empty() && internal_count == evidence.observables.len();
    if all_internal && evidence.intel.is_empty() && verdict_points == 0 {
        total += INTERNAL_ONLY_POINTS;
        let which = if internal_count == 1 {
            "the only observable is".to_string()
        } else {
            format!("all {internal_count} observables are")
        };
        reasons.push(format!(
            "observables: {which} internal and nothing matched: {INTERNAL_ONLY_POINTS}"
        ));
    }

    // The clamp keeps the value in 0..=100, so the conversion cannot fail.
    let score = u8::try_from(total.clamp(0, 100)).unwrap_or(100);
    let band = severity_band(score);
    let severity = band.max(alert_severity);
    if severity != band {
        reasons.push(format!(
            "severity: kept at the alert's own {} above the score band {}",
            severity.as_str(),
            band.as_str()
        ));
    }
    Assessment {
        score,
        severity,
        priority: priority(score),
        reasons,
    }
}

/// Describes the alert, such as `alert: high from wazuh rule 5710 "sshd: …"`.
fn describe_alert(evidence: &Evidence) -> String {
    let alert = &evidence.alert;
    let mut text = format!("alert: {}", alert.severity.as_str());
    if let Some(source) = &alert.source {
        text.push_str(&format!(" from {source}"));
    }
    match (&alert.rule_id, &alert.rule_name) {
        (Some(id), Some(name)) => text.push_str(&format!(" rule {id} {name:?}")),
        (Some(id), None) => text.push_str(&format!(" rule {id}")),
        (None, Some(name)) => text.push_str(&format!(" rule {name:?}")),
        (None, None) => {}
    }
    text
}

/// Adds the points for distinct intel indicators, with one reason each.
fn add_intel(intel: &[IntelMatch], reasons: &mut Vec<String>) -> i64 {
    let mut seen: Vec<&str> = Vec::new();
    let mut total = 0;
    for hit in intel {
        if seen.contains(&hit.indicator_id.as_str()) {
            continue;
        }
        seen.push(&hit.indicator_id);

        let points = if hit.match_kind == "network" {
            NETWORK_INTEL_POINTS
        } else {
            EXACT_INTEL_POINTS
        };
        let granted = points.min(MAX_INTEL_POINTS - total);
        total += granted;
        reasons.push(format!(
            "intel: {} {} matches {}: +{granted}{}",
            hit.kind,
            quote_value(&hit.kind, &hit.value),
            describe_indicator(hit),
            cap_note(granted, points, "intel", MAX_INTEL_POINTS)
        ));
    }
    total
}

/// Describes an indicator, such as
/// `"C2 address" (indicator--1, source feed, exact match, malware Dridex)`.
fn describe_indicator(hit: &IntelMatch) -> String {
    let mut details = Vec::new();
    let label = match &hit.name {
        Some(name) => {
            details.push(hit.indicator_id.clone());
            format!("{name:?}")
        }
        None => hit.indicator_id.clone(),
    };
    if let Some(source) = &hit.source {
        details.push(format!("source {source}"));
    }
    details.push(format!("{} match", hit.match_kind));
    if !hit.malware.is_empty() {
        details.push(format!("malware {}", hit.malware.join(", ")));
    }
    format!("{label} ({})", details.join(", "))
}

/// Adds the points for malicious and suspicious reports, with one reason
/// each.
fn add_verdicts(verdicts: &[Verdict], reasons: &mut Vec<String>) -> i64 {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    let mut total = 0;
    for verdict in verdicts {
        let key = (verdict.kind.as_str(), verdict.value.as_str());
        if !verdict.found || seen.contains(&key) {
            continue;
        }
        let points = match verdict.verdict.as_str() {
            "malicious" => MALICIOUS_VERDICT_POINTS,
            "suspicious" => SUSPICIOUS_VERDICT_POINTS,
            _ => continue,
        };
        seen.push(key);

        let granted = points.min(MAX_VERDICT_POINTS - total);
        total += granted;
        reasons.push(format!(
            "virustotal: {} {} {}{}: +{granted}{}",
            verdict.kind,
            quote_value(&verdict.kind, &verdict.value),
            verdict.verdict,
            describe_engines(verdict),
            cap_note(granted, points, "virustotal", MAX_VERDICT_POINTS)
        ));
    }
    total
}

/// Describes the engine counts behind a verdict, such as ` (59/64 engines)`.
fn describe_engines(verdict: &Verdict) -> String {
    let Some(stats) = verdict.stats else {
        return String::new();
    };
    if verdict.verdict == "malicious" || stats.suspicious == 0 {
        format!(" ({}/{} engines)", stats.malicious, stats.total())
    } else {
        format!(
            " ({} malicious and {} suspicious of {} engines)",
            stats.malicious,
            stats.suspicious,
            stats.total()
        )
    }
}

fn cap_note(granted: i64, points: i64, category: &str, cap: i64) -> String {
    if granted < points {
        format!(" ({category} total capped at {cap})")
    } else {
        String::new()
    }
}

/// Shortens hashes to their first six digits and long values to
/// [`MAX_QUOTED_VALUE_CHARS`] characters, marking the cut with `…`.
fn quote_value(kind: &str, value: &str) -> String {
    let keep = match kind {
        "md5" | "sha1" | "sha256" => 6,
        _ => MAX_QUOTED_VALUE_CHARS,
    };
    if value.chars().count() <= keep {
        value.to_string()
    } else {
        let kept: String = value.chars().take(keep).collect();
        format!("{kept}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{Alert, EngineStats, Observable};

    const EICAR_SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";

    fn evidence(severity: Severity) -> Evidence {
        Evidence {
            alert: Alert {
                source: None,
                severity,
                rule_id: None,
                rule_name: None,
            },
            observables: Vec::new(),
            intel: Vec::new(),
            verdicts: Vec::new(),
        }
    }

    fn intel(id: &str, value: &str, match_kind: &str) -> IntelMatch {
        IntelMatch {
            kind: "ipv4".to_string(),
            value: value.to_string(),
            indicator_id: id.to_string(),
            name: None,
            source: Some("feodo".to_string()),
            match_kind: match_kind.to_string(),
            malware: Vec::new(),
        }
    }

    fn verdict(kind: &str, value: &str, verdict: &str, malicious: u64, suspicious: u64) -> Verdict {
        Verdict {
            kind: kind.to_string(),
            value: value.to_string(),
            found: true,
            verdict: verdict.to_string(),
            stats: Some(EngineStats {
                malicious,
                suspicious,
                harmless: 0,
                undetected: 60 - malicious - suspicious,
            }),
        }
    }

    fn observable(value: &str, internal: bool) -> Observable {
        Observable {
            kind: "ipv4".to_string(),
            value: value.to_string(),
            internal,
        }
    }

    #[test]
    fn base_scores_per_severity() {
        let cases = [
            (Severity::Informational, 5, "P4"),
            (Severity::Low, 20, "P4"),
            (Severity::Medium, 40, "P3"),
            (Severity::High, 65, "P2"),
            (Severity::Critical, 85, "P1"),
        ];
        for (severity, score, expected_priority) in cases {
            let assessment = assess(&evidence(severity));
            assert_eq!(assessment.score, score, "score of {severity:?}");
            assert_eq!(assessment.severity, severity, "severity of {severity:?}");
            assert_eq!(
                assessment.priority, expected_priority,
                "priority of {severity:?}"
            );
            assert_eq!(
                assessment.reasons,
                vec![format!("alert: {}: base {score}", severity.as_str())]
            );
        }
    }

    #[test]
    fn severity_band_edges() {
        let cases = [
            (0, Severity::Informational),
            (14, Severity::Informational),
            (15, Severity::Low),
            (34, Severity::Low),
            (35, Severity::Medium),
            (59, Severity::Medium),
            (60, Severity::High),
            (79, Severity::High),
            (80, Severity::Critical),
            (100, Severity::Critical),
        ];
        for (score, expected) in cases {
            assert_eq!(severity_band(score), expected, "band of {score}");
        }
    }

    #[test]
    fn priority_band_edges() {
        let cases = [
            (0, "P4"),
            (34, "P4"),
            (35, "P3"),
            (59, "P3"),
            (60, "P2"),
            (79, "P2"),
            (80, "P1"),
            (100, "P1"),
        ];
        for (score, expected) in cases {
            assert_eq!(priority(score), expected, "priority of {score}");
        }
    }

    #[test]
    fn alert_reason_names_source_and_rule() {
        let mut input = evidence(Severity::High);
        input.alert.source = Some("wazuh".to_string());
        input.alert.rule_id = Some("5710".to_string());
        input.alert.rule_name =
            Some("sshd: attempt to login using a non-existent user".to_string());
        assert_eq!(
            assess(&input).reasons[0],
            "alert: high from wazuh rule 5710 \"sshd: attempt to login using a non-existent user\": base 65"
        );
        input.alert.rule_name = None;
        assert_eq!(
            assess(&input).reasons[0],
            "alert: high from wazuh rule 5710: base 65"
        );
    }

    #[test]
    fn distinct_indicators_add_points() {
        let mut input = evidence(Severity::Low);
        input.intel = vec![
            intel("feodo:ipv4:192.0.2.10", "192.0.2.10", "exact"),
            intel("feodo:ipv4:192.0.2.10", "192.0.2.10", "exact"),
            intel("net:192.0.2.0/24", "192.0.2.11", "network"),
        ];
        let assessment = assess(&input);
        assert_eq!(assessment.score, 20 + 15 + 10);
        assert_eq!(assessment.severity, Severity::Medium);
        assert_eq!(assessment.priority, "P3");
        assert_eq!(
            assessment.reasons[1..],
            [
                "intel: ipv4 192.0.2.10 matches feodo:ipv4:192.0.2.10 (source feodo, exact match): +15",
                "intel: ipv4 192.0.2.11 matches net:192.0.2.0/24 (source feodo, network match): +10",
            ]
        );
    }

    #[test]
    fn named_indicator_reason_lists_malware() {
        let mut input = evidence(Severity::Medium);
        input.intel = vec![IntelMatch {
            kind: "sha256".to_string(),
            value: "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c".to_string(),
            indicator_id: "indicator--a932fcc6".to_string(),
            name: Some("File hash for Poison Ivy variant".to_string()),
            source: Some("oasis".to_string()),
            match_kind: "exact".to_string(),
            malware: vec!["Poison Ivy".to_string()],
        }];
        assert_eq!(
            assess(&input).reasons[1],
            "intel: sha256 ef537f… matches \"File hash for Poison Ivy variant\" (indicator--a932fcc6, source oasis, exact match, malware Poison Ivy): +15"
        );
    }

    #[test]
    fn intel_points_are_capped() {
        let mut input = evidence(Severity::Informational);
        input.intel = (1..=4)
            .map(|host| intel(&format!("id-{host}"), &format!("192.0.2.{host}"), "exact"))
            .collect();
        let assessment = assess(&input);
        assert_eq!(assessment.score, 5 + MAX_INTEL_POINTS as u8);
        assert_eq!(
            assessment.reasons[4],
            "intel: ipv4 192.0.2.4 matches id-4 (source feodo, exact match): +0 (intel total capped at 45)"
        );
    }

    #[test]
    fn virustotal_verdict_reasons() {
        let mut input = evidence(Severity::Medium);
        input.verdicts = vec![
            verdict("sha256", EICAR_SHA256, "malicious", 59, 0),
            verdict("domain", "evil.example", "suspicious", 1, 2),
            verdict("ipv4", "192.0.2.1", "suspicious", 2, 0),
            verdict("sha256", EICAR_SHA256, "malicious", 59, 0),
            verdict("domain", "example.com", "undetected", 0, 0),
        ];
        let assessment = assess(&input);
        assert_eq!(assessment.score, 40 + 25 + 10 + 10);
        assert_eq!(assessment.severity, Severity::Critical);
        assert_eq!(assessment.priority, "P1");
        assert_eq!(
            assessment.reasons[1..],
            [
                "virustotal: sha256 275a02… malicious (59/60 engines): +25",
                "virustotal: domain evil.example suspicious (1 malicious and 2 suspicious of 60 engines): +10",
                "virustotal: ipv4 192.0.2.1 suspicious (2/60 engines): +10",
            ]
        );
    }

    #[test]
    fn unknown_reports_add_nothing() {
        let mut input = evidence(Severity::Low);
        let mut missing = verdict("url", "http://x/", "malicious", 5, 0);
        missing.found = false;
        let mut no_stats = verdict("domain", "evil.example", "malicious", 0, 0);
        no_stats.stats = None;
        input.verdicts = vec![missing, no_stats];
        let assessment = assess(&input);
        assert_eq!(assessment.score, 45);
        assert_eq!(
            assessment.reasons[1..],
            ["virustotal: domain evil.example malicious: +25"]
        );
    }

    #[test]
    fn verdict_points_are_capped() {
        let mut input = evidence(Severity::Critical);
        input.verdicts = (1..=3)
            .map(|host| verdict("ipv4", &format!("192.0.2.{host}"), "malicious", 10, 0))
            .collect();
        let assessment = assess(&input);
        assert_eq!(assessment.score, 100, "85 + 50 is clamped");
        assert_eq!(
            assessment.reasons[3],
            "virustotal: ipv4 192.0.2.3 malicious (10/60 engines): +0 (virustotal total capped at 50)"
        );
    }

    #[test]
    fn internal_only_lowers_score_not_severity() {
        let mut input = evidence(Severity::High);
        input.observables = vec![observable("10.0.0.5", true), observable("10.0.0.6", true)];
        let assessment = assess(&input);
        assert_eq!(assessment.score, 50);
        assert_eq!(assessment.severity, Severity::High);
        assert_eq!(assessment.priority, "P3");
        assert_eq!(
            assessment.reasons[1..],
            [
                "observables: all 2 observables are internal and nothing matched: -15",
                "severity: kept at the alert's own high above the score band medium",
            ]
        );
    }

    #[test]
    fn internal_only_floor_is_zero() {
        let mut input = evidence(Severity::Informational);
        input.observables = vec![observable("10.0.0.5", true)];
        let assessment = assess(&input);
        assert_eq!(assessment.score, 0);
        assert_eq!(assessment.severity, Severity::Informational);
        assert_eq!(assessment.priority, "P4");
        assert_eq!(
            assessment.reasons[1],
            "observables: the only observable is internal and nothing matched: -15"
        );
    }

    #[test]
    fn internal_reduction_needs_every_observable_internal() {
        let mut input = evidence(Severity::Medium);
        input.observables = vec![observable("10.0.0.5", true), observable("192.0.2.1", false)];
        assert_eq!(assess(&input).score, 40);

        let mut matched = evidence(Severity::Medium);
        matched.observables = vec![observable("10.0.0.5", true)];
        matched.intel = vec![intel("internal-watchlist", "10.0.0.5", "exact")];
        assert_eq!(
            assess(&matched).score,
            55,
            "an intel hit cancels the reduction"
        );

        let mut clean = evidence(Severity::Medium);
        clean.observables = vec![observable("10.0.0.5", true)];
        clean.verdicts = vec![verdict("domain", "example.com", "harmless", 0, 0)];
        assert_eq!(
            assess(&clean).score,
            25,
            "a clean verdict does not cancel it"
        );
    }

    #[test]
    fn long_values_are_shortened() {
        let long_url = format!("http://evil.example/{}", "a".repeat(100));
        let quoted = quote_value("url", &long_url);
        assert_eq!(quoted.chars().count(), MAX_QUOTED_VALUE_CHARS + 1);
        assert!(quoted.ends_with('…'));
        assert_eq!(
            quote_value("md5", "44d88612fea8a8f36de82e1278abb02f"),
            "44d886…"
        );
        assert_eq!(quote_value("domain", "evil.example"), "evil.example");
    }
}
