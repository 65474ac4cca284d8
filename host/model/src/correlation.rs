//! Correlation keys: values that tie alerts with different fingerprints to
//! one case when they arrive close together in time.

use serde_json::Value;

use crate::alert::{Alert, EMPTY_DIGESTS};
use crate::observable::ObservableKind;

/// Id of the agent that a Wazuh manager uses for itself.
const WAZUH_MANAGER_AGENT: &str = "000";

impl Alert {
    /// Returns the keys that tie this alert to other alerts about the same
    /// activity, each at most once:
    ///
    /// - `observable:KIND:VALUE` for the key observable, unless it is an
    ///   internal address or the digest of empty content. Internal
    ///   addresses are left out because unrelated activity often shares
    ///   one. In the bundled Wazuh samples, agents 010 and 012 are two
    ///   machines that both report 10.0.2.15. In the Suricata samples, one
    ///   busy internal host is an end of most flows. A public address, a
    ///   domain or a file hash seen twice within the window is more likely
    ///   one story.
    /// - `suricata:flow:ID` for a Suricata event with a `flow_id`. Suricata
    ///   writes the same `flow_id` in the alert, protocol (http, dns,
    ///   tls), fileinfo, anomaly and flow events of one flow, as the EVE
    ///   JSON format page of the Suricata 7.0 manual documents.
    /// - `wazuh:agent:SCOPE/ID` for a Wazuh alert from an agent, where
    ///   SCOPE is the cluster name, else the manager name, because agent
    ///   ids are unique only within one manager or cluster. The agent name
    ///   stands in for a missing id. The manager's own agent, `000`, gets
    ///   no key, because its alerts cover the manager's integrations and
    ///   the logs it receives from other devices, not one host.
    pub fn correlation_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(observable) = &self.key_observable {
            let is_empty_digest = matches!(
                observable.kind,
                ObservableKind::Md5 | ObservableKind::Sha1 | ObservableKind::Sha256
            ) && EMPTY_DIGESTS.contains(&observable.value.as_str());
            if !observable.internal && !is_empty_digest {
                keys.push(format!(
                    "observable:{}:{}",
                    observable.kind, observable.value
                ));
            }
        }
        match self.source.as_str() {
            "suricata" => keys.extend(suricata_flow_key(&self.raw)),
            "wazuh" => keys.extend(wazuh_agent_key(&self.raw)),
            _ => {}
        }
        keys
    }
}

fn suricata_flow_key(raw: &Value) -> Option<String> {
    let flow_id = match raw.get("flow_id")? {
        Value::Number(number) => number.as_u64()?.to_string(),
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.clone()
        }
        _ => return None,
    };
    Some(format!("suricata:flow:{flow_id}"))
}

fn wazuh_agent_key(raw: &Value) -> Option<String> {
    let text = |pointer: &str| {
        raw.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|text| !text.is_empty())
    };
    let agent = match text("/agent/id") {
        Some(WAZUH_MANAGER_AGENT) => return None,
        Some(id) => id,
        None => text("/agent/name")?,
    };
    let scope = text("/cluster/name").or_else(|| text("/manager/name"));
    Some(match scope {
        Some(scope) => format!("wazuh:agent:{scope}/{agent}"),
        None => format!("wazuh:agent:{agent}"),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::alert::Alert;

    fn keys(raw: serde_json::Value) -> Vec<String> {
        Alert::from_raw(raw).unwrap().correlation_keys()
    }

    #[test]
    fn suricata_event_keys_on_flow_and_public_address() {
        let keys = keys(json!({
            "timestamp": "2021-01-27T01:28:11.488362+0100", "event_type": "alert",
            "flow_id": 1805461738637437u64, "src_ip": "175.16.199.1", "dest_ip": "10.31.64.240",
            "alert": {"signature_id": 2100498, "severity": 2}
        }));
        assert_eq!(
            keys,
            [
                "observable:ipv4:175.16.199.1",
                "suricata:flow:1805461738637437"
            ]
        );
    }

    #[test]
    fn internal_address_is_no_key() {
        let keys = keys(json!({
            "timestamp": "2018-07-05T15:01:09.820360-0400", "event_type": "ssh",
            "flow_id": 298824096901438u64, "src_ip": "192.168.86.85", "dest_ip": "192.168.253.112"
        }));
        assert_eq!(keys, ["suricata:flow:298824096901438"]);
    }

    #[test]
    fn flow_id_as_digit_string_is_accepted() {
        let keys = keys(json!({
            "timestamp": "2018-07-05T15:01:09.820360-0400", "event_type": "flow",
            "flow_id": "42", "src_ip": "192.168.86.85", "dest_ip": "192.168.86.1"
        }));
        assert_eq!(keys, ["suricata:flow:42"]);
        let none = super::suricata_flow_key(&json!({"flow_id": "4x2"}));
        assert_eq!(none, None);
    }

    #[test]
    fn wazuh_agent_key_is_scoped_by_manager() {
        let keys = keys(json!({
            "timestamp": "2022-11-17T19:30:25.085+0200",
            "rule": {"level": 12, "id": "87105"},
            "agent": {"id": "010", "name": "Ubuntu", "ip": "10.0.2.15"},
            "manager": {"name": "localhost.localdomain"},
            "data": {"virustotal": {"source": {"sha1": "3395856ce81f2b7382dee72602f798b642f14140"}}}
        }));
        assert_eq!(
            keys,
            [
                "observable:sha1:3395856ce81f2b7382dee72602f798b642f14140",
                "wazuh:agent:localhost.localdomain/010"
            ]
        );
    }

    #[test]
    fn wazuh_cluster_name_wins_over_manager() {
        let keys = keys(json!({
            "timestamp": "2022-11-17T19:30:25.085+0200", "rule": {"level": 3, "id": "5501"},
            "agent": {"id": "004", "name": "web-1"},
            "manager": {"name": "worker-2"}, "cluster": {"name": "wazuh", "node": "worker-2"}
        }));
        assert_eq!(keys, ["wazuh:agent:wazuh/004"]);
    }

    #[test]
    fn wazuh_agent_name_stands_in_for_missing_id() {
        let keys = keys(json!({
            "timestamp": "2022-11-17T19:30:25.085+0200", "rule": {"level": 3, "id": "5501"},
            "agent": {"name": "web-1"}
        }));
        assert_eq!(keys, ["wazuh:agent:web-1"]);
    }

    #[test]
    fn manager_agent_and_empty_file_unkeyed() {
        let manager = keys(json!({
            "timestamp": "2022-11-17T19:17:43.637+0200", "rule": {"level": 3, "id": "87102"},
            "agent": {"id": "000", "name": "localhost.localdomain"},
            "manager": {"name": "localhost.localdomain"}
        }));
        assert!(manager.is_empty(), "{manager:?}");
        let empty_file = keys(json!({
            "timestamp": "2022-11-17T19:17:42.694+0200", "rule": {"level": 5, "id": "554"},
            "syscheck": {"sha256_after": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}
        }));
        assert!(empty_file.is_empty(), "{empty_file:?}");
    }
}
