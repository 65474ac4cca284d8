//! The normalised alert record and the per-product rules that build it.

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::observable::{Observable, ObservableKind};

/// Alert severity on one scale for every source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Informational => "informational",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// Parses a severity name as [`Severity::as_str`] writes it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "informational" => Some(Self::Informational),
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }

    /// Maps a Wazuh rule level (0 to 15). Wazuh documents 12 and above as
    /// high-importance events and 15 as a severe attack.
    fn from_wazuh_level(level: u64) -> Self {
        match level {
            0..=2 => Self::Informational,
            3..=6 => Self::Low,
            7..=11 => Self::Medium,
            12..=14 => Self::High,
            _ => Self::Critical,
        }
    }

    /// Maps a Suricata alert severity, where 1 is the most severe.
    fn from_suricata(severity: u64) -> Self {
        match severity {
            1 => Self::High,
            2 => Self::Medium,
            3 => Self::Low,
            _ => Self::Informational,
        }
    }
}

/// The detection rule that raised an alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub name: String,
}

/// One alert, normalised from its source's format. The raw document is kept
/// unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// SHA-256 of the raw document in canonical JSON (sorted keys), so the
    /// same alert sent twice has the same id.
    pub id: String,
    /// Product that raised it: `wazuh` or `suricata`.
    pub source: String,
    /// Event time as the source reported it.
    pub time: DateTime<FixedOffset>,
    pub rule: Rule,
    pub severity: Severity,
    /// Host the alert is about (agent or sensor), when the source names one.
    pub host: Option<String>,
    /// The observable that identifies what the alert is about, used with the
    /// rule to group alerts into one case.
    pub key_observable: Option<Observable>,
    /// Grouping key: alerts with the same fingerprint join the same open case.
    pub fingerprint: String,
    pub raw: Value,
}

/// Failure to normalise a JSON document into an alert.
#[derive(Debug, thiserror::Error)]
pub enum NormaliseError {
    #[error(
        "not a recognised alert: expected a Wazuh alert (with `rule.level`) or a Suricata EVE event (with `event_type`)"
    )]
    UnknownFormat,
    #[error("{source_name} alert has no valid `{field}`: {problem}")]
    Field {
        source_name: &'static str,
        field: &'static str,
        problem: String,
    },
}

impl Alert {
    /// Normalises a raw alert document.
    pub fn from_raw(raw: Value) -> Result<Self, NormaliseError> {
        if raw.pointer("/rule/level").is_some() {
            wazuh(raw)
        } else if raw.get("event_type").is_some_and(Value::is_string) {
            suricata(raw)
        } else {
            Err(NormaliseError::UnknownFormat)
        }
    }
}

fn canonical_id(raw: &Value) -> String {
    // `serde_json::Value` keeps object keys sorted, so this is canonical.
    hex::encode(Sha256::digest(raw.to_string().as_bytes()))
}

/// Digests of empty content (MD5, SHA-1, SHA-256). Every empty file has
/// them, so two alerts that share one need not have a shared cause.
pub(crate) const EMPTY_DIGESTS: [&str; 3] = [
    "d41d8cd98f00b204e9800998ecf8427e",
    "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

/// Grouping key of an alert: source, rule and key observable. An internal
/// address or the digest of an empty file is shared by unrelated machines,
/// so such a key observable is scoped to the alert's host.
fn fingerprint(source: &str, rule: &Rule, key: Option<&Observable>, host: Option<&str>) -> String {
    let host = host.unwrap_or("");
    let subject = match key {
        Some(observable)
            if observable.internal || EMPTY_DIGESTS.contains(&observable.value.as_str()) =>
        {
            format!("{}:{}@{host}", observable.kind, observable.value)
        }
        Some(observable) => format!("{}:{}", observable.kind, observable.value),
        None => format!("host:{host}"),
    };
    let digest = Sha256::digest(format!("{source}\n{}\n{subject}", rule.id).as_bytes());
    hex::encode(&digest[..16])
}

fn parse_time(
    source_name: &'static str,
    raw: &Value,
    field: &'static str,
) -> Result<DateTime<FixedOffset>, NormaliseError> {
    let text = raw
        .get(field)
        .and_then(Value::as_str)
        .ok_or(NormaliseError::Field {
            source_name,
            field,
            problem: "missing".into(),
        })?;
    // Wazuh and Suricata write offsets without a colon (`+0200`), which is
    // not RFC 3339, so both forms are accepted.
    DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(text))
        .map_err(|error| NormaliseError::Field {
            source_name,
            field,
            problem: format!("{text:?} is not a timestamp: {error}"),
        })
}

fn text_at<'a>(raw: &'a Value, pointer: &str) -> Option<&'a str> {
    raw.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

fn wazuh(raw: Value) -> Result<Alert, NormaliseError> {
    let level = raw
        .pointer("/rule/level")
        .and_then(Value::as_u64)
        .filter(|level| *level <= 15)
        .ok_or(NormaliseError::Field {
            source_name: "Wazuh",
            field: "rule.level",
            problem: "not a number from 0 to 15".into(),
        })?;
    let rule = Rule {
        id: text_at(&raw, "/rule/id").unwrap_or("unknown").to_string(),
        name: text_at(&raw, "/rule/description")
            .unwrap_or("")
            .trim()
            .to_string(),
    };
    let time = parse_time("Wazuh", &raw, "timestamp")?;
    let host = text_at(&raw, "/agent/name").map(str::to_string);
    let key_observable = wazuh_key_observable(&raw);
    let fingerprint = fingerprint("wazuh", &rule, key_observable.as_ref(), host.as_deref());
    Ok(Alert {
        id: canonical_id(&raw),
        source: "wazuh".into(),
        time,
        rule,
        severity: Severity::from_wazuh_level(level),
        host,
        key_observable,
        fingerprint,
        raw,
    })
}

/// Returns the file a Wazuh alert is about (by its strongest hash), else the agent's
/// address.
fn wazuh_key_observable(raw: &Value) -> Option<Observable> {
    let hash_fields = [
        "/syscheck/sha256_after",
        "/syscheck/sha1_after",
        "/syscheck/md5_after",
        "/data/virustotal/source/sha256",
        "/data/virustotal/sha1",
        "/data/virustotal/source/sha1",
        "/data/virustotal/source/md5",
    ];
    hash_fields
        .iter()
        .find_map(|pointer| text_at(raw, pointer).and_then(Observable::hash))
        // The source address of a network event (an SSH or web attack)
        // tells more about the alert than the agent's own address.
        .or_else(|| text_at(raw, "/data/srcip").and_then(Observable::ip))
        .or_else(|| text_at(raw, "/agent/ip").and_then(Observable::ip))
}

fn suricata(raw: Value) -> Result<Alert, NormaliseError> {
    let event_type = text_at(&raw, "/event_type").unwrap_or("event").to_string();
    let (rule, severity) = if event_type == "alert" {
        let id = raw
            .pointer("/alert/signature_id")
            .and_then(Value::as_u64)
            .ok_or(NormaliseError::Field {
                source_name: "Suricata",
                field: "alert.signature_id",
                problem: "missing or not a number".into(),
            })?;
        let severity = raw
            .pointer("/alert/severity")
            .and_then(Value::as_u64)
            .unwrap_or(3);
        let rule = Rule {
            id: id.to_string(),
            name: text_at(&raw, "/alert/signature").unwrap_or("").to_string(),
        };
        (rule, Severity::from_suricata(severity))
    } else {
        let rule = Rule {
            id: format!("eve.{event_type}"),
            name: format!("Suricata {event_type} event"),
        };
        (rule, Severity::Informational)
    };
    let time = parse_time("Suricata", &raw, "timestamp")?;
    let host = text_at(&raw, "/host").map(str::to_string);
    let key_observable = suricata_key_observable(&raw);
    let fingerprint = fingerprint("suricata", &rule, key_observable.as_ref(), host.as_deref());
    Ok(Alert {
        id: canonical_id(&raw),
        source: "suricata".into(),
        time,
        rule,
        severity,
        host,
        key_observable,
        fingerprint,
        raw,
    })
}

/// Returns the remote end of a Suricata flow: the first external address among
/// source and destination, else the source address.
fn suricata_key_observable(raw: &Value) -> Option<Observable> {
    let source = text_at(raw, "/src_ip").and_then(Observable::ip);
    let destination = text_at(raw, "/dest_ip").and_then(Observable::ip);
    [source.clone(), destination]
        .into_iter()
        .flatten()
        .find(|observable| !observable.internal)
        .or(source)
}

impl Alert {
    /// Seconds since the Unix epoch of the alert's time, for sorting.
    pub fn epoch_seconds(&self) -> i64 {
        self.time.with_timezone(&Utc).timestamp()
    }

    /// Returns whether the key observable is a file hash.
    pub fn is_about_file(&self) -> bool {
        self.key_observable.as_ref().is_some_and(|observable| {
            matches!(
                observable.kind,
                ObservableKind::Md5 | ObservableKind::Sha1 | ObservableKind::Sha256
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wazuh_fim() -> Value {
        json!({
            "timestamp": "2022-11-17T19:17:42.694+0200",
            "rule": {"level": 5, "description": "File added to the system.", "id": "554"},
            "agent": {"id": "010", "name": "Ubuntu", "ip": "10.0.2.15"},
            "syscheck": {
                "path": "/media/user/software/suspicious-file.exe",
                "md5_after": "d41d8cd98f00b204e9800998ecf8427e",
                "sha256_after": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            }
        })
    }

    #[test]
    fn wazuh_alert_is_normalised() {
        let alert = Alert::from_raw(wazuh_fim()).unwrap();
        assert_eq!(alert.source, "wazuh");
        assert_eq!(alert.rule.id, "554");
        assert_eq!(alert.severity, Severity::Low);
        assert_eq!(alert.host.as_deref(), Some("Ubuntu"));
        let key = alert.key_observable.unwrap();
        assert_eq!(key.kind, ObservableKind::Sha256);
        assert!(key.value.starts_with("e3b0c442"));
        assert_eq!(alert.time.offset().local_minus_utc(), 7200);
    }

    #[test]
    fn same_document_same_id() {
        let first = Alert::from_raw(wazuh_fim()).unwrap();
        let second = Alert::from_raw(wazuh_fim()).unwrap();
        assert_eq!(first.id, second.id);
        assert_eq!(first.fingerprint, second.fingerprint);
    }

    #[test]
    fn suricata_alert_keys_on_external_address() {
        let raw = json!({
            "timestamp": "2021-01-27T01:28:11.488362+0100",
            "event_type": "alert",
            "src_ip": "175.16.199.1",
            "dest_ip": "10.31.64.240",
            "alert": {"signature_id": 2100498, "signature": "GPL ATTACK_RESPONSE id check returned root", "severity": 2}
        });
        let alert = Alert::from_raw(raw).unwrap();
        assert_eq!(alert.rule.id, "2100498");
        assert_eq!(alert.severity, Severity::Medium);
        assert_eq!(alert.key_observable.unwrap().value, "175.16.199.1");
    }

    #[test]
    fn unknown_document_is_rejected() {
        let error = Alert::from_raw(json!({"hello": "world"})).unwrap_err();
        assert!(error.to_string().contains("event_type"), "{error}");
    }

    #[test]
    fn bad_timestamp_names_the_value() {
        let mut raw = wazuh_fim();
        raw["timestamp"] = json!("yesterday");
        let error = Alert::from_raw(raw).unwrap_err().to_string();
        assert!(error.contains("\"yesterday\""), "{error}");
    }

    #[test]
    fn shared_values_are_scoped_to_the_host() {
        let fim = |agent: &str, sha256: &str| {
            Alert::from_raw(serde_json::json!({
                "timestamp": "2022-11-17T19:17:42.694+0200",
                "rule": {"level": 5, "id": "554", "description": "File added to the system."},
                "agent": {"id": agent, "name": format!("host-{agent}"), "ip": "10.0.2.15"},
                "syscheck": {"path": "/tmp/x", "sha256_after": sha256}
            }))
            .unwrap()
        };
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let eicar = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";
        assert_ne!(fim("010", empty).fingerprint, fim("012", empty).fingerprint);
        assert_eq!(fim("010", empty).fingerprint, fim("010", empty).fingerprint);
        // A real file hash is one story on every host.
        assert_eq!(fim("010", eicar).fingerprint, fim("012", eicar).fingerprint);
    }
}
