//! Triage scorer: turns an alert and the evidence gathered about it into a
//! score from 0 to 100, a severity, a priority and the reasons behind them.
//!
//! The plugin calls no host import and requests no capability. The scoring
//! rules are in [`score`], and the accepted input shapes in [`input`].

mod input;
mod score;

use palisade_sdk::{Capabilities, Plugin, PluginError, PluginInfo, Value, action, json};

use crate::input::parse_evidence;
use crate::score::assess;

struct TriageScorer;

impl Plugin for TriageScorer {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "triage-scorer".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description:
                "Scores an alert from its severity, threat-intel hits and VirusTotal verdicts."
                    .to_string(),
            actions: vec![action(
                "score",
                "Returns a 0-100 score, a severity, a priority and one reason per contribution.",
                score_input_schema(),
                score_output_schema(),
                false,
            )],
            capabilities: Capabilities {
                http_origins: Vec::new(),
                secrets: Vec::new(),
                key_value: false,
                config: Vec::new(),
            },
        }
    }

    fn invoke(action: &str, input: Value) -> Result<Value, PluginError> {
        match action {
            "score" => score_action(&input),
            other => Err(PluginError::UnknownAction(other.to_string())),
        }
    }
}

palisade_sdk::export_plugin!(TriageScorer);

fn score_action(input: &Value) -> Result<Value, PluginError> {
    let assessment = assess(&parse_evidence(input)?);
    Ok(json!({
        "score": assessment.score,
        "severity": assessment.severity.as_str(),
        "priority": assessment.priority,
        "reasons": assessment.reasons,
    }))
}

fn score_input_schema() -> Value {
    let severities = json!(["informational", "low", "medium", "high", "critical"]);
    json!({
        "type": "object",
        "required": ["alert"],
        "properties": {
            "alert": {
                "type": "object",
                "required": ["severity"],
                "properties": {
                    "source": {"type": "string", "description": "Detection source, such as wazuh or suricata."},
                    "severity": {"enum": severities},
                    "rule": {
                        "type": "object",
                        "properties": {
                            "id": {"type": ["string", "integer"]},
                            "name": {"type": "string"}
                        }
                    }
                }
            },
            "observables": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "value"],
                    "properties": {
                        "type": {"type": "string"},
                        "value": {"type": "string"},
                        "internal": {"type": "boolean"}
                    }
                }
            },
            "intel_hits": {
                "description": "The `hits` of a ti-matcher `match` output, or that whole output.",
                "type": ["array", "object"]
            },
            "verdicts": {
                "description": "virustotal report outputs, or a whole `lookup` output.",
                "type": ["array", "object"]
            }
        }
    })
}

fn score_output_schema() -> Value {
    json!({
        "type": "object",
        "required": ["score", "severity", "priority", "reasons"],
        "properties": {
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "severity": {"enum": ["informational", "low", "medium", "high", "critical"]},
            "priority": {"enum": ["P1", "P2", "P3", "P4"]},
            "reasons": {"type": "array", "items": {"type": "string"}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_requests_no_capability() {
        let info = TriageScorer::describe();
        assert_eq!(info.name, "triage-scorer");
        assert_eq!(info.actions.len(), 1);
        assert_eq!(info.actions[0].name, "score");
        assert!(info.capabilities.http_origins.is_empty());
        assert!(info.capabilities.secrets.is_empty());
        assert!(info.capabilities.config.is_empty());
        assert!(!info.capabilities.key_value);
    }

    #[test]
    fn score_of_feodo_hit_and_eicar_verdict() {
        let input = json!({
            "alert": {"source": "suricata", "severity": "medium", "rule": {"id": "2024792", "name": "ET TROJAN Dridex C2"}},
            "observables": [
                {"type": "ipv4", "value": "10.1.1.20", "internal": true},
                {"type": "ipv4", "value": "192.0.2.10", "internal": false},
                {"type": "sha256", "value": "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f", "internal": false}
            ],
            "intel_hits": [{"type": "ipv4", "value": "192.0.2.10", "indicators": [{
                "id": "c2-test:ipv4:192.0.2.10", "name": null, "source": "c2-test",
                "indicator_types": ["malicious-activity"], "malware": ["Dridex"], "match": "exact"
            }]}],
            "verdicts": {"results": [{
                "type": "sha256", "value": "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
                "found": true, "verdict": "malicious",
                "stats": {"harmless": 0, "type-unsupported": 9, "suspicious": 0, "confirmed-timeout": 0, "timeout": 2, "failure": 0, "malicious": 59, "undetected": 5},
                "reputation": 3457, "permalink": "https://www.virustotal.com/gui/file/275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
            }], "skipped": []}
        });
        let output = TriageScorer::invoke("score", input).unwrap();
        assert_eq!(
            output,
            json!({
                "score": 80,
                "severity": "critical",
                "priority": "P1",
                "reasons": [
                    "alert: medium from suricata rule 2024792 \"ET TROJAN Dridex C2\": base 40",
                    "intel: ipv4 192.0.2.10 matches c2-test:ipv4:192.0.2.10 (source c2-test, exact match, malware Dridex): +15",
                    "virustotal: sha256 275a02… malicious (59/64 engines): +25"
                ]
            })
        );
    }

    #[test]
    fn bad_input_and_unknown_action() {
        assert!(matches!(
            TriageScorer::invoke("score", json!({"alert": {"severity": "severe"}})),
            Err(PluginError::BadInput(_))
        ));
        assert!(matches!(
            TriageScorer::invoke("rank", json!({})),
            Err(PluginError::UnknownAction(name)) if name == "rank"
        ));
    }
}
