//! Reading STIX 2.1 bundles into indicator records.
//!
//! Only `indicator` objects with `pattern_type` `stix` are read. Each
//! equality comparison (`=`) on a supported object path becomes one value of
//! the indicator. Every other comparison is reported as skipped, with the
//! indicator's id, so the caller can see what was not loaded.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::observable::{IndicatorValue, ObservableType, normalize};
use crate::pattern::{self, Comparison, Literal};
use crate::store::{IndicatorRecord, ParsedIndicator, Skipped};
use crate::time::parse_rfc3339_ms;

/// Indicators read from a bundle, and what was left out.
#[derive(Debug, Default)]
pub struct BundleContents {
    pub indicators: Vec<ParsedIndicator>,
    pub skipped: Vec<Skipped>,
}

/// Reads the indicators of `bundle`, tagging each with `source`.
///
/// # Errors
///
/// Returns a message when `bundle` is not a STIX bundle with an `objects`
/// list. Problems with single objects are reported in `skipped` instead.
pub fn read_bundle(bundle: &Value, source: &str) -> Result<BundleContents, String> {
    if bundle.get("type").and_then(Value::as_str) != Some("bundle") {
        return Err("`bundle` is not a STIX bundle: its `type` is not \"bundle\"".to_string());
    }
    let objects = bundle
        .get("objects")
        .and_then(Value::as_array)
        .ok_or("`bundle` has no `objects` list")?;

    let malware_by_indicator = malware_names_by_indicator(objects);
    let mut contents = BundleContents::default();
    for object in objects {
        if object.get("type").and_then(Value::as_str) != Some("indicator") {
            continue;
        }
        let malware = object
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| malware_by_indicator.get(id))
            .cloned()
            .unwrap_or_default();
        read_indicator(object, source, malware, &mut contents);
    }
    Ok(contents)
}

/// Maps indicator ids to the names of the malware they indicate, following
/// `indicates` relationships whose target is a `malware` object in the same
/// bundle.
fn malware_names_by_indicator(objects: &[Value]) -> HashMap<String, Vec<String>> {
    let malware_names: HashMap<&str, &str> = objects
        .iter()
        .filter(|object| object.get("type").and_then(Value::as_str) == Some("malware"))
        .filter_map(|object| {
            let id = object.get("id")?.as_str()?;
            let name = object.get("name")?.as_str()?;
            Some((id, name))
        })
        .collect();

    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    for object in objects {
        let is_indicates = object.get("type").and_then(Value::as_str) == Some("relationship")
            && object.get("relationship_type").and_then(Value::as_str) == Some("indicates");
        if !is_indicates {
            continue;
        }
        let source_ref = object.get("source_ref").and_then(Value::as_str);
        let target_ref = object.get("target_ref").and_then(Value::as_str);
        if let (Some(indicator), Some(name)) =
            (source_ref, target_ref.and_then(|id| malware_names.get(id)))
        {
            let entry = names.entry(indicator.to_string()).or_default();
            if !entry.iter().any(|known| known == name) {
                entry.push((*name).to_string());
            }
        }
    }
    names
}

fn read_indicator(
    object: &Value,
    source: &str,
    malware: Vec<String>,
    contents: &mut BundleContents,
) {
    let id = string_field(object, "id").unwrap_or_default();
    if id.is_empty() {
        contents
            .skipped
            .push(Skipped::new("(no id)", "indicator has no `id`"));
        return;
    }
    let mut skip = |reason: String| contents.skipped.push(Skipped::new(&id, &reason));

    if object.get("revoked").and_then(Value::as_bool) == Some(true) {
        skip("indicator is revoked".to_string());
        return;
    }
    let pattern_type = string_field(object, "pattern_type");
    if pattern_type.as_deref() != Some("stix") {
        skip(format!(
            "pattern_type is {}, not \"stix\"",
            pattern_type.map_or("missing".to_string(), |kind| format!("{kind:?}"))
        ));
        return;
    }
    let Some(pattern_text) = string_field(object, "pattern") else {
        skip("indicator has no `pattern`".to_string());
        return;
    };
    let valid_until = string_field(object, "valid_until");
    let valid_until_ms = match valid_until.as_deref().map(parse_rfc3339_ms) {
        None => None,
        Some(Ok(ms)) => Some(ms),
        Some(Err(error)) => {
            skip(format!("invalid valid_until: {error}"));
            return;
        }
    };
    let comparisons = match pattern::parse(&pattern_text) {
        Ok(comparisons) => comparisons,
        Err(error) => {
            skip(format!("invalid STIX pattern: {error}"));
            return;
        }
    };

    let mut values: Vec<IndicatorValue> = Vec::new();
    for comparison in &comparisons {
        match comparison_value(comparison) {
            Ok(value) if !values.contains(&value) => values.push(value),
            Ok(_) => {}
            Err(reason) => skip(format!("comparison `{comparison}` skipped: {reason}")),
        }
    }

    let record = IndicatorRecord {
        id: id.clone(),
        name: string_field(object, "name"),
        description: string_field(object, "description"),
        indicator_types: string_list(object, "indicator_types"),
        valid_from: string_field(object, "valid_from"),
        valid_until,
        valid_until_ms,
        source: source.to_string(),
        malware,
        pattern: Some(pattern_text),
        attributes: BTreeMap::new(),
    };
    contents.indicators.push(ParsedIndicator { record, values });
}

/// Converts one comparison into an indicator value. The error gives the
/// reason it cannot become one.
fn comparison_value(comparison: &Comparison) -> Result<IndicatorValue, String> {
    if comparison.negated || comparison.operator != "=" {
        let not = if comparison.negated { "NOT " } else { "" };
        return Err(format!(
            "operator `{not}{}` is not supported, only `=`",
            comparison.operator
        ));
    }
    let kind = observable_type(comparison)
        .ok_or_else(|| format!("object path `{}` is not supported", comparison.path()))?;
    let Literal::String(text) = &comparison.value else {
        return Err("the value is not a string".to_string());
    };
    normalize(kind, text)
}

/// Maps a STIX object path to the observable type of its value.
fn observable_type(comparison: &Comparison) -> Option<ObservableType> {
    let property: Vec<&str> = comparison.property.iter().map(String::as_str).collect();
    match (comparison.object_type.as_str(), property.as_slice()) {
        ("ipv4-addr", ["value"]) => Some(ObservableType::Ipv4),
        ("ipv6-addr", ["value"]) => Some(ObservableType::Ipv6),
        ("domain-name", ["value"]) => Some(ObservableType::Domain),
        ("url", ["value"]) => Some(ObservableType::Url),
        ("email-addr", ["value"]) => Some(ObservableType::Email),
        ("file", ["hashes", algorithm]) => hash_type(algorithm),
        _ => None,
    }
}

/// Maps a STIX hash algorithm name to a hash type. The STIX vocabulary
/// spells them `MD5`, `SHA-1` and `SHA-256`, and producers also write
/// `SHA1` and `SHA256`.
fn hash_type(algorithm: &str) -> Option<ObservableType> {
    let compact: String = algorithm
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_uppercase();
    match compact.as_str() {
        "MD5" => Some(ObservableType::Md5),
        "SHA1" => Some(ObservableType::Sha1),
        "SHA256" => Some(ObservableType::Sha256),
        _ => None,
    }
}

fn string_field(object: &Value, name: &str) -> Option<String> {
    object.get(name).and_then(Value::as_str).map(str::to_string)
}

fn string_list(object: &Value, name: &str) -> Vec<String> {
    object
        .get(name)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const C2_IP: &str = include_str!("../testdata/indicator-for-c2-ip-address.json");
    const C2_WITH_COA: &str = include_str!("../testdata/indicators-for-C2-with-COA.json");

    fn read(text: &str) -> BundleContents {
        let bundle: Value = serde_json::from_str(text).expect("fixture is JSON");
        read_bundle(&bundle, "oasis-examples").expect("fixture is a bundle")
    }

    fn bundle_with(pattern: &str) -> Value {
        json!({
            "type": "bundle",
            "id": "bundle--00000000-0000-4000-8000-000000000000",
            "objects": [{
                "type": "indicator",
                "spec_version": "2.1",
                "id": "indicator--00000000-0000-4000-8000-000000000001",
                "pattern_type": "stix",
                "pattern": pattern,
                "valid_from": "2020-01-01T00:00:00Z"
            }]
        })
    }

    #[test]
    fn single_ip_fixture_gives_one_exact_value() {
        let contents = read(C2_IP);
        assert!(contents.skipped.is_empty(), "{:?}", contents.skipped);
        assert_eq!(contents.indicators.len(), 1);
        let indicator = &contents.indicators[0];
        assert_eq!(
            indicator.record.id,
            "indicator--33fe3b22-0201-47cf-85d0-97c02164528d"
        );
        assert_eq!(
            indicator.record.name.as_deref(),
            Some("IP Address for known C2 channel")
        );
        assert_eq!(indicator.record.indicator_types, vec!["malicious-activity"]);
        assert_eq!(indicator.record.source, "oasis-examples");
        assert!(indicator.record.malware.is_empty());
        assert_eq!(
            indicator.values,
            vec![IndicatorValue::Exact(
                ObservableType::Ipv4,
                "10.0.0.0".to_string()
            )]
        );
    }

    #[test]
    fn indicates_relationships_give_malware_names() {
        let contents = read(C2_WITH_COA);
        assert_eq!(contents.indicators.len(), 2);
        for indicator in &contents.indicators {
            assert_eq!(
                indicator.record.malware,
                vec!["Poison Ivy"],
                "malware of {}",
                indicator.record.id
            );
        }
        let hash = &contents.indicators[1];
        assert_eq!(
            hash.values,
            vec![IndicatorValue::Exact(
                ObservableType::Sha256,
                "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c".to_string()
            )]
        );
    }

    #[test]
    fn hash_spellings_map_to_types() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        let sha1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
        let sha256 = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        let pattern = format!(
            "[file:hashes.MD5 = '{md5}' OR file:hashes.'SHA-1' = '{sha1}'] OR \
             [file:hashes.SHA256 = '{sha256}' OR file:hashes.'SHA1' = '{sha1}']"
        );
        let contents = read_bundle(&bundle_with(&pattern), "test").unwrap();
        assert!(contents.skipped.is_empty(), "{:?}", contents.skipped);
        assert_eq!(
            contents.indicators[0].values,
            vec![
                IndicatorValue::Exact(ObservableType::Md5, md5.to_string()),
                IndicatorValue::Exact(ObservableType::Sha1, sha1.to_string()),
                IndicatorValue::Exact(ObservableType::Sha256, sha256.to_lowercase()),
            ],
            "the repeated SHA-1 is stored once"
        );
    }

    #[test]
    fn cidr_value_becomes_network() {
        let contents = read_bundle(
            &bundle_with("[ipv4-addr:value = '198.51.100.0/24']"),
            "test",
        )
        .unwrap();
        let values = &contents.indicators[0].values;
        assert_eq!(values.len(), 1);
        assert!(
            matches!(&values[0], IndicatorValue::Network(network) if network.to_string() == "198.51.100.0/24"),
            "{values:?}"
        );
    }

    #[test]
    fn non_equality_comparisons_are_reported() {
        let pattern = "[domain-name:value = 'evil.example' AND domain-name:value != 'good.example'] \
                       AND [file:name = 'x.exe'] AND [url:value LIKE 'http://%']";
        let contents = read_bundle(&bundle_with(pattern), "test").unwrap();
        assert_eq!(contents.indicators[0].values.len(), 1);
        let reasons: Vec<&str> = contents
            .skipped
            .iter()
            .map(|skipped| skipped.reason.as_str())
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[0].contains("operator `!=` is not supported"),
            "{}",
            reasons[0]
        );
        assert!(
            reasons[1].contains("object path `file:name` is not supported"),
            "{}",
            reasons[1]
        );
        assert!(reasons[2].contains("operator `LIKE`"), "{}", reasons[2]);
        assert!(
            contents
                .skipped
                .iter()
                .all(|skipped| skipped.id == "indicator--00000000-0000-4000-8000-000000000001")
        );
    }

    #[test]
    fn invalid_value_is_reported() {
        let contents =
            read_bundle(&bundle_with("[ipv4-addr:value = '300.1.1.1']"), "test").unwrap();
        assert!(contents.indicators[0].values.is_empty());
        assert!(contents.skipped[0].reason.contains("invalid ipv4 address"));
    }

    #[test]
    fn whole_indicator_skips() {
        let mut not_stix = bundle_with("[ipv4-addr:value = '10.0.0.1']");
        not_stix["objects"][0]["pattern_type"] = json!("sigma");
        let mut revoked = bundle_with("[ipv4-addr:value = '10.0.0.1']");
        revoked["objects"][0]["revoked"] = json!(true);
        let mut bad_date = bundle_with("[ipv4-addr:value = '10.0.0.1']");
        bad_date["objects"][0]["valid_until"] = json!("next tuesday");
        let broken = bundle_with("[ipv4-addr:value = '10.0.0.1'");

        let cases = [
            (not_stix, "pattern_type is \"sigma\""),
            (revoked, "revoked"),
            (bad_date, "invalid valid_until"),
            (broken, "invalid STIX pattern"),
        ];
        for (bundle, expected) in cases {
            let contents = read_bundle(&bundle, "test").unwrap();
            assert!(contents.indicators.is_empty(), "{expected}");
            assert_eq!(contents.skipped.len(), 1, "{expected}");
            assert!(
                contents.skipped[0].reason.contains(expected),
                "{:?} does not contain {expected:?}",
                contents.skipped[0].reason
            );
        }
    }

    #[test]
    fn valid_until_is_kept_in_milliseconds() {
        let mut bundle = bundle_with("[url:value = 'http://evil.example/a']");
        bundle["objects"][0]["valid_until"] = json!("2021-01-01T00:00:00Z");
        let contents = read_bundle(&bundle, "test").unwrap();
        assert_eq!(
            contents.indicators[0].record.valid_until_ms,
            Some(1_609_459_200_000)
        );
    }

    #[test]
    fn non_bundle_is_rejected() {
        assert!(read_bundle(&json!({"type": "indicator"}), "test").is_err());
        assert!(read_bundle(&json!({"type": "bundle"}), "test").is_err());
    }
}
