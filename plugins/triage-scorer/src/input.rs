//! Reading the `score` input into typed evidence.
//!
//! `intel_hits` takes the `hits` list of a ti-matcher `match` output, and
//! `verdicts` takes the reports of virustotal (the `results` list of
//! `lookup`, or single report outputs). Either may also be given as the
//! whole action output object, and its list is taken from it.

use palisade_sdk::{PluginError, Value};

/// Alert severities, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Informational,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "informational",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses a severity name, ignoring case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|severity| severity.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub source: Option<String>,
    pub severity: Severity,
    pub rule_id: Option<String>,
    pub rule_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Observable {
    pub kind: String,
    pub value: String,
    pub internal: bool,
}

/// One indicator matched by one observable.
#[derive(Clone, Debug, PartialEq)]
pub struct IntelMatch {
    pub kind: String,
    pub value: String,
    pub indicator_id: String,
    pub name: Option<String>,
    pub source: Option<String>,
    /// `exact` or `network`.
    pub match_kind: String,
    pub malware: Vec<String>,
}

/// Engine counts from `last_analysis_stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub malicious: u64,
    pub suspicious: u64,
    pub harmless: u64,
    pub undetected: u64,
}

impl EngineStats {
    /// Engines that gave one of the four results, the denominator of a
    /// detection ratio. Timeouts, failures and unsupported types are left
    /// out.
    pub fn total(&self) -> u64 {
        self.malicious + self.suspicious + self.harmless + self.undetected
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub kind: String,
    pub value: String,
    pub found: bool,
    pub verdict: String,
    pub stats: Option<EngineStats>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub alert: Alert,
    pub observables: Vec<Observable>,
    pub intel: Vec<IntelMatch>,
    pub verdicts: Vec<Verdict>,
}

/// Reads the `score` input.
///
/// # Errors
///
/// Returns `bad-input` naming the field that is missing or of the wrong
/// type, or the unknown severity.
pub fn parse_evidence(input: &Value) -> Result<Evidence, PluginError> {
    let alert = parse_alert(input.get("alert"))?;
    let observables = list(input, "observables", None)?
        .iter()
        .enumerate()
        .map(|(index, item)| parse_observable(item, &format!("observables[{index}]")))
        .collect::<Result<Vec<_>, _>>()?;

    let mut intel = Vec::new();
    for (index, hit) in list(input, "intel_hits", Some("hits"))?.iter().enumerate() {
        parse_hit(hit, &format!("intel_hits[{index}]"), &mut intel)?;
    }
    let verdicts = list(input, "verdicts", Some("results"))?
        .iter()
        .enumerate()
        .map(|(index, item)| parse_verdict(item, &format!("verdicts[{index}]")))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Evidence {
        alert,
        observables,
        intel,
        verdicts,
    })
}

fn bad_input(message: String) -> PluginError {
    PluginError::BadInput(message)
}

/// Returns the list under `name`. A missing or null field is an empty list,
/// and an object is accepted when it carries the list under `inner`.
fn list<'a>(input: &'a Value, name: &str, inner: Option<&str>) -> Result<&'a [Value], PluginError> {
    let field = match input.get(name) {
        None | Some(Value::Null) => return Ok(&[]),
        Some(Value::Object(object)) => inner.and_then(|inner| object.get(inner)),
        Some(other) => Some(other),
    };
    field
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| bad_input(format!("`{name}` must be a list")))
}

fn required_str<'a>(item: &'a Value, path: &str, name: &str) -> Result<&'a str, PluginError> {
    item.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| bad_input(format!("`{path}.{name}` must be a string")))
}

fn optional_str(item: &Value, name: &str) -> Option<String> {
    item.get(name)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_string)
}

fn parse_alert(alert: Option<&Value>) -> Result<Alert, PluginError> {
    let alert = alert
        .filter(|alert| alert.is_object())
        .ok_or_else(|| bad_input("missing object field `alert`".to_string()))?;
    let name = required_str(alert, "alert", "severity")?;
    let severity = Severity::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Severity::ALL
            .iter()
            .map(|severity| severity.as_str())
            .collect();
        bad_input(format!(
            "`alert.severity` {name:?} is not one of {}",
            known.join(", ")
        ))
    })?;
    let rule = alert.get("rule").unwrap_or(&Value::Null);
    // Rule ids are strings in some sources and numbers in others.
    let rule_id = match rule.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        Some(Value::Number(id)) => Some(id.to_string()),
        _ => None,
    };
    Ok(Alert {
        source: optional_str(alert, "source"),
        severity,
        rule_id,
        rule_name: optional_str(rule, "name"),
    })
}

fn parse_observable(item: &Value, path: &str) -> Result<Observable, PluginError> {
    Ok(Observable {
        kind: required_str(item, path, "type")?.to_string(),
        value: required_str(item, path, "value")?.to_string(),
        internal: item
            .get("internal")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

fn parse_hit(hit: &Value, path: &str, intel: &mut Vec<IntelMatch>) -> Result<(), PluginError> {
    let kind = required_str(hit, path, "type")?;
    let value = required_str(hit, path, "value")?;
    let indicators = hit
        .get("indicators")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_input(format!("`{path}.indicators` must be a list")))?;
    for (index, indicator) in indicators.iter().enumerate() {
        let indicator_path = format!("{path}.indicators[{index}]");
        let malware = indicator
            .get("malware")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        intel.push(IntelMatch {
            kind: kind.to_string(),
            value: value.to_string(),
            indicator_id: required_str(indicator, &indicator_path, "id")?.to_string(),
            name: optional_str(indicator, "name"),
            source: optional_str(indicator, "source"),
            match_kind: optional_str(indicator, "match").unwrap_or_else(|| "exact".to_string()),
            malware,
        });
    }
    Ok(())
}

fn parse_verdict(item: &Value, path: &str) -> Result<Verdict, PluginError> {
    let stats = item
        .get("stats")
        .filter(|stats| stats.is_object())
        .map(|stats| {
            let count = |name: &str| stats.get(name).and_then(Value::as_u64).unwrap_or(0);
            EngineStats {
                malicious: count("malicious"),
                suspicious: count("suspicious"),
                harmless: count("harmless"),
                undetected: count("undetected"),
            }
        });
    Ok(Verdict {
        kind: required_str(item, path, "type")?.to_string(),
        value: required_str(item, path, "value")?.to_string(),
        found: item.get("found").and_then(Value::as_bool).unwrap_or(true),
        verdict: required_str(item, path, "verdict")?.to_string(),
        stats,
    })
}

#[cfg(test)]
mod tests {
    use palisade_sdk::json;

    use super::*;

    fn bad_input_message(input: Value) -> String {
        match parse_evidence(&input) {
            Err(PluginError::BadInput(message)) => message,
            other => panic!("{input}: expected bad-input, got {other:?}"),
        }
    }

    #[test]
    fn alert_only_input() {
        let evidence = parse_evidence(&json!({
            "alert": {"source": "wazuh", "severity": "High", "rule": {"id": 5710, "name": "sshd: attempt to login using a non-existent user"}}
        }))
        .unwrap();
        assert_eq!(
            evidence.alert,
            Alert {
                source: Some("wazuh".to_string()),
                severity: Severity::High,
                rule_id: Some("5710".to_string()),
                rule_name: Some("sshd: attempt to login using a non-existent user".to_string()),
            }
        );
        assert!(evidence.observables.is_empty());
        assert!(evidence.intel.is_empty());
        assert!(evidence.verdicts.is_empty());
    }

    #[test]
    fn whole_action_outputs_are_accepted() {
        let evidence = parse_evidence(&json!({
            "alert": {"severity": "low"},
            "intel_hits": {"hits": [{"type": "ipv4", "value": "192.0.2.10", "indicators": [
                {"id": "feodo:ipv4:192.0.2.10", "name": null, "source": "feodo", "malware": ["Dridex"], "match": "exact", "indicator_types": []}
            ]}]},
            "verdicts": {"results": [{"type": "domain", "value": "example.com", "found": true, "verdict": "harmless", "stats": {"harmless": 60, "undetected": 20, "timeout": 1}}], "skipped": []}
        }))
        .unwrap();
        assert_eq!(
            evidence.intel,
            vec![IntelMatch {
                kind: "ipv4".to_string(),
                value: "192.0.2.10".to_string(),
                indicator_id: "feodo:ipv4:192.0.2.10".to_string(),
                name: None,
                source: Some("feodo".to_string()),
                match_kind: "exact".to_string(),
                malware: vec!["Dridex".to_string()],
            }]
        );
        let stats = evidence.verdicts[0].stats.unwrap();
        assert_eq!(stats.total(), 80, "timeouts are not counted");
    }

    #[test]
    fn malformed_input_names_the_field() {
        let cases = [
            (json!({}), "`alert`"),
            (json!({"alert": {}}), "`alert.severity`"),
            (
                json!({"alert": {"severity": "urgent"}}),
                "\"urgent\" is not one of informational, low, medium, high, critical",
            ),
            (
                json!({"alert": {"severity": "low"}, "observables": "1.2.3.4"}),
                "`observables` must be a list",
            ),
            (
                json!({"alert": {"severity": "low"}, "observables": [{"type": "ipv4"}]}),
                "`observables[0].value`",
            ),
            (
                json!({"alert": {"severity": "low"}, "intel_hits": [{"type": "ipv4", "value": "x"}]}),
                "`intel_hits[0].indicators`",
            ),
            (
                json!({"alert": {"severity": "low"}, "intel_hits": [{"type": "ipv4", "value": "x", "indicators": [{}]}]}),
                "`intel_hits[0].indicators[0].id`",
            ),
            (
                json!({"alert": {"severity": "low"}, "verdicts": [{"type": "url", "value": "x"}]}),
                "`verdicts[0].verdict`",
            ),
            (
                json!({"alert": {"severity": "low"}, "verdicts": {"skipped": []}}),
                "`verdicts` must be a list",
            ),
        ];
        for (input, expected) in cases {
            let message = bad_input_message(input.clone());
            assert!(
                message.contains(expected),
                "{input}: {message:?} lacks {expected:?}"
            );
        }
    }
}
