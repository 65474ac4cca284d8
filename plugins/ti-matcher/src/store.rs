//! Storing indicators in the key-value namespace and matching observables
//! against them.
//!
//! The code here reaches storage only through the [`Store`] trait, so tests
//! run it against [`MemoryStore`] and the plugin against [`HostStore`]. The
//! key layout is described in the crate documentation.

use std::collections::{BTreeMap, HashMap};

use palisade_sdk::PluginError;
use palisade_sdk::kv::KvError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::observable::{
    IndicatorValue, Network, ObservableType, normalize, parse_ip, parse_network,
};

/// Maximum number of network keys read per address family and `match`
/// call. Networks past this many, in key order, are not matched, and the
/// call logs a warning.
///
/// NOTE: `list-keys` has no cursor, so networks past this limit are never
/// matched. A host that caps `list-keys` below this limit returns fewer keys
/// and no warning is logged.
pub const NETWORK_KEY_LIMIT: u32 = 10_000;

/// Key-value storage as the indicator code uses it.
pub trait Store {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError>;
    fn list_keys(&self, prefix: &str, limit: u32) -> Result<Vec<String>, KvError>;
}

/// The plugin's key-value namespace on the host.
pub struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        palisade_sdk::kv::get(key)
    }

    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        palisade_sdk::kv::set(key, value)
    }

    fn list_keys(&self, prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
        palisade_sdk::kv::list_keys(prefix, limit)
    }
}

/// An in-memory store for tests, with optional caps on key and value size
/// that fail like the host's.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryStore {
    pub entries: BTreeMap<String, Vec<u8>>,
    pub max_key_bytes: Option<usize>,
    pub max_value_bytes: Option<usize>,
}

#[cfg(test)]
impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        if self.max_key_bytes.is_some_and(|max| key.len() > max) {
            return Err(KvError::TooLarge);
        }
        Ok(self.entries.get(key).cloned())
    }

    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        let key_too_large = self.max_key_bytes.is_some_and(|max| key.len() > max);
        if key_too_large || self.max_value_bytes.is_some_and(|max| value.len() > max) {
            return Err(KvError::TooLarge);
        }
        self.entries.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn list_keys(&self, prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
        Ok(self
            .entries
            .keys()
            .filter(|key| key.starts_with(prefix))
            .take(limit as usize)
            .cloned()
            .collect())
    }
}

/// Metadata of one indicator, stored as JSON under `meta:<id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndicatorRecord {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub indicator_types: Vec<String>,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
    /// `valid_until` in Unix milliseconds, parsed once at load time.
    pub valid_until_ms: Option<u64>,
    pub source: String,
    /// Names of the malware the indicator points to.
    pub malware: Vec<String>,
    /// The STIX pattern, for indicators read from a bundle.
    pub pattern: Option<String>,
    /// Other columns of a CSV row, by header name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// An indicator ready to store: its metadata and its values.
#[derive(Clone, Debug)]
pub struct ParsedIndicator {
    pub record: IndicatorRecord,
    pub values: Vec<IndicatorValue>,
}

/// Something left out of a load, with the reason.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

impl Skipped {
    pub fn new(id: &str, reason: &str) -> Self {
        Self {
            id: id.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Output of `load-stix` and `load-csv`.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    /// Indicators with at least one value stored.
    pub loaded: usize,
    /// Indicator values stored, counting each value of each indicator.
    pub values: usize,
    pub skipped: Vec<Skipped>,
}

/// Returns the key that lists the indicators with `value`.
pub fn value_key(value: &IndicatorValue) -> String {
    match value {
        IndicatorValue::Exact(kind, text) => format!("ind:{kind}:{text}"),
        IndicatorValue::Network(network) => format!("net:{}:{network}", network.family),
    }
}

fn meta_key(id: &str) -> String {
    format!("meta:{id}")
}

fn store_failure(error: KvError) -> PluginError {
    match error {
        KvError::Denied => PluginError::Denied(
            "key-value access is not granted to ti-matcher, so indicators cannot be stored or read"
                .to_string(),
        ),
        KvError::TooLarge => {
            PluginError::Internal("key or value is over the key-value size limit".to_string())
        }
        KvError::Store(message) => {
            PluginError::Internal(format!("key-value store failed: {message}"))
        }
    }
}

/// Stores `indicators` and returns what was loaded. `skipped` contains the
/// entries reported while parsing and is extended with storage problems.
///
/// An indicator whose metadata or value is over the host's size limit is
/// reported in `skipped`, and loading goes on with the next one.
///
/// NOTE: loading an indicator id again adds its new values but leaves its
/// old values listed, so a value removed from a pattern keeps matching.
///
/// # Errors
///
/// Fails when key-value access is denied or the host's store fails.
pub fn load(
    store: &mut impl Store,
    indicators: &[ParsedIndicator],
    mut skipped: Vec<Skipped>,
) -> Result<LoadReport, PluginError> {
    let mut report = LoadReport {
        loaded: 0,
        values: 0,
        skipped: Vec::new(),
    };
    for indicator in indicators {
        let id = &indicator.record.id;
        if indicator.values.is_empty() {
            skipped.push(Skipped::new(id, "no comparison gave an indicator value"));
            continue;
        }

        let metadata = serde_json::to_vec(&indicator.record)
            .map_err(|error| PluginError::Internal(format!("cannot encode {id}: {error}")))?;
        match store.set(&meta_key(id), &metadata) {
            Ok(()) => {}
            Err(KvError::TooLarge) => {
                skipped.push(Skipped::new(
                    id,
                    "metadata is over the key-value size limit",
                ));
                continue;
            }
            Err(error) => return Err(store_failure(error)),
        }

        let mut stored = 0;
        for value in &indicator.values {
            match add_id_to_list(store, &value_key(value), id) {
                Ok(()) => stored += 1,
                Err(KvError::TooLarge) => skipped.push(Skipped::new(
                    id,
                    &format!("{value} is over the key-value size limit"),
                )),
                Err(error) => return Err(store_failure(error)),
            }
        }
        if stored > 0 {
            report.loaded += 1;
            report.values += stored;
        }
    }
    report.skipped = skipped;
    Ok(report)
}

/// Adds `id` to the JSON list of indicator ids under `key`.
fn add_id_to_list(store: &mut impl Store, key: &str, id: &str) -> Result<(), KvError> {
    let mut ids = match store.get(key)? {
        Some(bytes) => serde_json::from_slice::<Vec<String>>(&bytes).unwrap_or_default(),
        None => Vec::new(),
    };
    if ids.iter().any(|known| known == id) {
        return Ok(());
    }
    ids.push(id.to_string());
    let bytes = serde_json::to_vec(&ids).map_err(|error| KvError::Store(error.to_string()))?;
    store.set(key, &bytes)
}

/// An observable from a `match` request.
#[derive(Clone, Debug, PartialEq)]
pub struct Observable {
    pub kind: ObservableType,
    pub value: String,
}

/// Reads the `observables` list of a `match` input. Entries of a type this
/// plugin does not know are ignored.
///
/// # Errors
///
/// Returns `bad-input` naming the entry when it is not an object with
/// string `type` and `value` fields.
pub fn parse_observables(input: &Value) -> Result<Vec<Observable>, PluginError> {
    let items = input
        .get("observables")
        .and_then(Value::as_array)
        .ok_or_else(|| PluginError::BadInput("missing array field `observables`".to_string()))?;
    let mut observables = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let field = |name: &str| {
            item.get(name).and_then(Value::as_str).ok_or_else(|| {
                PluginError::BadInput(format!("`observables[{index}].{name}` is not a string"))
            })
        };
        let type_name = field("type")?;
        let value = field("value")?;
        if let Some(kind) = ObservableType::parse(type_name) {
            observables.push(Observable {
                kind,
                value: value.to_string(),
            });
        }
    }
    Ok(observables)
}

/// Kind of match between an observable and an indicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    Exact,
    Network,
}

/// One indicator that an observable matched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatchedIndicator {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub source: String,
    pub indicator_types: Vec<String>,
    pub malware: Vec<String>,
    pub valid_until: Option<String>,
    #[serde(rename = "match")]
    pub match_kind: MatchKind,
    /// The network that matched, for `network` matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// An observable with the indicators it matched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub indicators: Vec<MatchedIndicator>,
}

/// Output of `match`, with warnings for the plugin to log.
#[derive(Debug, Default)]
pub struct MatchOutcome {
    pub hits: Vec<Hit>,
    pub warnings: Vec<String>,
}

/// State of one `match` call. Indicator metadata and the network list are
/// cached, so each is read at most once per call.
struct Matcher<'a, S: Store> {
    store: &'a S,
    now_ms: u64,
    records: HashMap<String, Option<IndicatorRecord>>,
    networks: HashMap<ObservableType, Vec<(Network, String)>>,
    warnings: Vec<String>,
}

/// Matches `observables` against the stored indicators. Indicators whose
/// `valid_until` is at or before `now_ms` are left out.
///
/// # Errors
///
/// Fails when key-value access is denied or the host's store fails.
pub fn match_observables(
    store: &impl Store,
    observables: &[Observable],
    now_ms: u64,
) -> Result<MatchOutcome, PluginError> {
    let mut matcher = Matcher {
        store,
        now_ms,
        records: HashMap::new(),
        networks: HashMap::new(),
        warnings: Vec::new(),
    };
    let mut hits: Vec<Hit> = Vec::new();
    for observable in observables {
        // Observables that do not normalise (or are networks) cannot match.
        let Ok(IndicatorValue::Exact(kind, value)) = normalize(observable.kind, &observable.value)
        else {
            continue;
        };
        if hits
            .iter()
            .any(|hit| hit.kind == kind.as_str() && hit.value == value)
        {
            continue;
        }
        let indicators = matcher.indicators_for(kind, &value)?;
        if !indicators.is_empty() {
            hits.push(Hit {
                kind: kind.as_str().to_string(),
                value,
                indicators,
            });
        }
    }
    Ok(MatchOutcome {
        hits,
        warnings: matcher.warnings,
    })
}

impl<S: Store> Matcher<'_, S> {
    fn indicators_for(
        &mut self,
        kind: ObservableType,
        value: &str,
    ) -> Result<Vec<MatchedIndicator>, PluginError> {
        let mut found = Vec::new();
        let exact_key = value_key(&IndicatorValue::Exact(kind, value.to_string()));
        for id in self.read_ids(&exact_key)? {
            self.push_match(&mut found, &id, MatchKind::Exact, None)?;
        }

        let Some(address) = parse_ip(kind, value) else {
            return Ok(found);
        };
        let containing: Vec<(String, String)> = self
            .networks(kind)?
            .iter()
            .filter(|(network, _)| network.contains(kind, address))
            .map(|(network, key)| (network.to_string(), key.clone()))
            .collect();
        for (network, key) in containing {
            for id in self.read_ids(&key)? {
                self.push_match(&mut found, &id, MatchKind::Network, Some(&network))?;
            }
        }
        Ok(found)
    }

    fn push_match(
        &mut self,
        found: &mut Vec<MatchedIndicator>,
        id: &str,
        match_kind: MatchKind,
        network: Option<&str>,
    ) -> Result<(), PluginError> {
        if found.iter().any(|known| known.id == id) {
            return Ok(());
        }
        let Some(record) = self.record(id)? else {
            return Ok(());
        };
        if record
            .valid_until_ms
            .is_some_and(|until| until <= self.now_ms)
        {
            return Ok(());
        }
        found.push(MatchedIndicator {
            id: record.id,
            name: record.name,
            description: record.description,
            source: record.source,
            indicator_types: record.indicator_types,
            malware: record.malware,
            valid_until: record.valid_until,
            match_kind,
            network: network.map(str::to_string),
            attributes: record.attributes,
        });
        Ok(())
    }

    fn read_ids(&mut self, key: &str) -> Result<Vec<String>, PluginError> {
        // A key over the size limit cannot have been stored, so a long URL
        // observable simply has no indicators.
        let bytes = match self.store.get(key) {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(KvError::TooLarge) => return Ok(Vec::new()),
            Err(error) => return Err(store_failure(error)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(ids) => Ok(ids),
            Err(error) => {
                self.warnings.push(format!(
                    "ignored key `{key}`: it is not a list of ids: {error}"
                ));
                Ok(Vec::new())
            }
        }
    }

    fn record(&mut self, id: &str) -> Result<Option<IndicatorRecord>, PluginError> {
        if let Some(cached) = self.records.get(id) {
            return Ok(cached.clone());
        }
        let key = meta_key(id);
        let record = match self.store.get(&key).map_err(store_failure)? {
            None => {
                self.warnings
                    .push(format!("indicator `{id}` is listed but `{key}` is missing"));
                None
            }
            Some(bytes) => match serde_json::from_slice::<IndicatorRecord>(&bytes) {
                Ok(record) => Some(record),
                Err(error) => {
                    self.warnings
                        .push(format!("ignored key `{key}`: invalid metadata: {error}"));
                    None
                }
            },
        };
        self.records.insert(id.to_string(), record.clone());
        Ok(record)
    }

    /// Returns the stored networks of `family`, reading them on first use.
    fn networks(&mut self, family: ObservableType) -> Result<&[(Network, String)], PluginError> {
        if !self.networks.contains_key(&family) {
            let prefix = format!("net:{family}:");
            let keys = self
                .store
                .list_keys(&prefix, NETWORK_KEY_LIMIT)
                .map_err(store_failure)?;
            if keys.len() >= NETWORK_KEY_LIMIT as usize {
                self.warnings.push(format!(
                    "only the first {NETWORK_KEY_LIMIT} {family} networks were checked"
                ));
            }
            let networks = keys
                .into_iter()
                .filter_map(|key| {
                    let network = parse_network(family, &key[prefix.len()..])?;
                    Some((network, key))
                })
                .collect();
            self.networks.insert(family, networks);
        }
        Ok(self.networks.get(&family).map_or(&[], Vec::as_slice))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::csv::{FeedOptions, read_feed};
    use crate::stix::read_bundle;

    const C2_IP: &str = include_str!("../testdata/indicator-for-c2-ip-address.json");
    const C2_WITH_COA: &str = include_str!("../testdata/indicators-for-C2-with-COA.json");
    const FEODO_LAYOUT: &str = include_str!("../testdata/c2-blocklist.csv");
    const POISON_IVY_SHA256: &str =
        "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c";
    /// 2024-01-01T00:00:00Z in Unix milliseconds.
    const NOW_MS: u64 = 1_704_067_200_000;

    fn load_bundle(store: &mut MemoryStore, text: &str, source: &str) -> LoadReport {
        let bundle: Value = serde_json::from_str(text).unwrap();
        let contents = read_bundle(&bundle, source).unwrap();
        load(store, &contents.indicators, contents.skipped).unwrap()
    }

    fn load_feed(store: &mut MemoryStore, text: &str, source: &str) -> LoadReport {
        let options = FeedOptions {
            source,
            column: None,
            kind: None,
            indicator_types: vec!["malicious-activity".to_string()],
        };
        let contents = read_feed(text, &options).unwrap();
        load(store, &contents.indicators, contents.skipped).unwrap()
    }

    fn observable(kind: ObservableType, value: &str) -> Observable {
        Observable {
            kind,
            value: value.to_string(),
        }
    }

    fn matched_ids(hit: &Hit) -> Vec<&str> {
        hit.indicators
            .iter()
            .map(|indicator| indicator.id.as_str())
            .collect()
    }

    fn stix_indicator(id: &str, pattern: &str, valid_until: Option<&str>) -> Value {
        let mut indicator = json!({
            "type": "indicator",
            "spec_version": "2.1",
            "id": id,
            "name": id,
            "pattern_type": "stix",
            "pattern": pattern,
            "valid_from": "2020-01-01T00:00:00Z"
        });
        if let Some(until) = valid_until {
            indicator["valid_until"] = json!(until);
        }
        indicator
    }

    #[test]
    fn key_layout() {
        let exact = IndicatorValue::Exact(ObservableType::Sha256, "ab".to_string());
        assert_eq!(value_key(&exact), "ind:sha256:ab");
        let network = parse_network(ObservableType::Ipv4, "10.0.0.0/8").unwrap();
        assert_eq!(
            value_key(&IndicatorValue::Network(network)),
            "net:ipv4:10.0.0.0/8"
        );
        assert_eq!(meta_key("indicator--1"), "meta:indicator--1");
    }

    #[test]
    fn oasis_bundles_load_and_match_with_malware() {
        let mut store = MemoryStore::default();
        let first = load_bundle(&mut store, C2_IP, "oasis");
        assert_eq!((first.loaded, first.values), (1, 1));
        let second = load_bundle(&mut store, C2_WITH_COA, "oasis");
        assert_eq!((second.loaded, second.values), (2, 2));
        assert!(second.skipped.is_empty(), "{:?}", second.skipped);
        assert_eq!(
            store.get("ind:ipv4:10.0.0.0").unwrap().unwrap(),
            br#"["indicator--33fe3b22-0201-47cf-85d0-97c02164528d","indicator--53fe3b22-0201-47cf-85d0-97c02164528d"]"#
        );

        let observables = [
            observable(ObservableType::Ipv4, "10.0.0.0"),
            observable(ObservableType::Sha256, POISON_IVY_SHA256),
            observable(ObservableType::Ipv4, "10.0.0.1"),
            observable(ObservableType::Domain, "example.org"),
        ];
        let outcome = match_observables(&store, &observables, NOW_MS).unwrap();
        assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
        assert_eq!(
            outcome.hits.len(),
            2,
            "only the C2 address and the hash hit"
        );

        let ip_hit = &outcome.hits[0];
        assert_eq!(
            (ip_hit.kind.as_str(), ip_hit.value.as_str()),
            ("ipv4", "10.0.0.0")
        );
        assert_eq!(
            matched_ids(ip_hit),
            vec![
                "indicator--33fe3b22-0201-47cf-85d0-97c02164528d",
                "indicator--53fe3b22-0201-47cf-85d0-97c02164528d"
            ]
        );
        assert!(ip_hit.indicators[0].malware.is_empty());
        assert_eq!(ip_hit.indicators[1].malware, vec!["Poison Ivy"]);
        assert_eq!(ip_hit.indicators[1].match_kind, MatchKind::Exact);

        let hash_hit = &outcome.hits[1];
        assert_eq!(hash_hit.value, POISON_IVY_SHA256);
        assert_eq!(
            hash_hit.indicators[0].name.as_deref(),
            Some("File hash for Poison Ivy variant")
        );
        assert_eq!(hash_hit.indicators[0].source, "oasis");
        assert_eq!(
            hash_hit.indicators[0].indicator_types,
            vec!["malicious-activity"]
        );
    }

    #[test]
    fn hit_serialises_in_output_shape() {
        let mut store = MemoryStore::default();
        load_bundle(&mut store, C2_WITH_COA, "oasis");
        let observables = [observable(ObservableType::Sha256, POISON_IVY_SHA256)];
        let outcome = match_observables(&store, &observables, NOW_MS).unwrap();
        assert_eq!(
            serde_json::to_value(&outcome.hits).unwrap(),
            json!([{
                "type": "sha256",
                "value": POISON_IVY_SHA256,
                "indicators": [{
                    "id": "indicator--a932fcc6-e032-476c-826f-cb970a5a1ade",
                    "name": "File hash for Poison Ivy variant",
                    "description": "Test description.",
                    "source": "oasis",
                    "indicator_types": ["malicious-activity"],
                    "malware": ["Poison Ivy"],
                    "valid_until": null,
                    "match": "exact"
                }]
            }])
        );
    }

    #[test]
    fn network_indicator_matches_addresses_inside() {
        let bundle = json!({
            "type": "bundle",
            "id": "bundle--1",
            "objects": [
                stix_indicator("indicator--net", "[ipv4-addr:value = '10.0.0.0/8']", None),
                stix_indicator("indicator--host", "[ipv4-addr:value = '10.1.2.3']", None),
                stix_indicator("indicator--v6", "[ipv6-addr:value = '2001:db8::/32']", None),
            ]
        });
        let mut store = MemoryStore::default();
        load_bundle(&mut store, &bundle.to_string(), "nets");
        assert!(store.entries.contains_key("net:ipv4:10.0.0.0/8"));
        assert!(store.entries.contains_key("net:ipv6:2001:db8::/32"));

        let observables = [
            observable(ObservableType::Ipv4, "10.1.2.3"),
            observable(ObservableType::Ipv4, "10.250.0.1"),
            observable(ObservableType::Ipv4, "11.0.0.1"),
            observable(ObservableType::Ipv6, "2001:db8:1::5"),
        ];
        let outcome = match_observables(&store, &observables, NOW_MS).unwrap();
        assert_eq!(outcome.hits.len(), 3);

        let host = &outcome.hits[0];
        assert_eq!(matched_ids(host), vec!["indicator--host", "indicator--net"]);
        assert_eq!(host.indicators[0].match_kind, MatchKind::Exact);
        assert_eq!(host.indicators[1].match_kind, MatchKind::Network);
        assert_eq!(host.indicators[1].network.as_deref(), Some("10.0.0.0/8"));

        assert_eq!(outcome.hits[1].value, "10.250.0.1");
        assert_eq!(matched_ids(&outcome.hits[1]), vec!["indicator--net"]);
        assert_eq!(outcome.hits[2].kind, "ipv6");
        assert_eq!(matched_ids(&outcome.hits[2]), vec!["indicator--v6"]);
    }

    #[test]
    fn expired_indicator_does_not_match() {
        let bundle = json!({
            "type": "bundle",
            "id": "bundle--1",
            "objects": [
                stix_indicator("indicator--old", "[domain-name:value = 'evil.example']", Some("2023-12-31T23:59:59Z")),
                stix_indicator("indicator--edge", "[domain-name:value = 'evil.example']", Some("2024-01-01T00:00:00Z")),
                stix_indicator("indicator--new", "[domain-name:value = 'evil.example']", Some("2024-01-01T00:00:01Z")),
            ]
        });
        let mut store = MemoryStore::default();
        let report = load_bundle(&mut store, &bundle.to_string(), "dated");
        assert_eq!(
            report.loaded, 3,
            "expiry is checked at match time, not load time"
        );

        let observables = [observable(ObservableType::Domain, "evil.example")];
        let outcome = match_observables(&store, &observables, NOW_MS).unwrap();
        assert_eq!(matched_ids(&outcome.hits[0]), vec!["indicator--new"]);

        let later = match_observables(&store, &observables, NOW_MS + 1_000).unwrap();
        assert!(later.hits.is_empty(), "every indicator has expired");
    }

    #[test]
    fn csv_rows_match_with_metadata() {
        let mut store = MemoryStore::default();
        let report = load_feed(&mut store, FEODO_LAYOUT, "c2-test");
        assert_eq!(report.loaded, 3);
        assert_eq!(report.skipped.len(), 2);

        let observables = [
            observable(ObservableType::Ipv4, "198.51.100.23"),
            observable(ObservableType::Ipv4, "192.0.2.11"),
        ];
        let outcome = match_observables(&store, &observables, NOW_MS).unwrap();
        assert_eq!(outcome.hits.len(), 1);
        let indicator = &outcome.hits[0].indicators[0];
        assert_eq!(indicator.id, "c2-test:ipv4:198.51.100.23");
        assert_eq!(indicator.source, "c2-test");
        assert_eq!(indicator.malware, vec!["Emotet"]);
        assert_eq!(indicator.attributes["dst_port"], "8080");
        assert_eq!(indicator.name, None);
    }

    #[test]
    fn reloading_a_feed_does_not_duplicate() {
        let mut store = MemoryStore::default();
        load_feed(&mut store, FEODO_LAYOUT, "c2-test");
        let entries_after_first = store.entries.clone();
        load_feed(&mut store, FEODO_LAYOUT, "c2-test");
        assert_eq!(store.entries, entries_after_first);
    }

    #[test]
    fn same_value_from_two_sources_lists_both() {
        let mut store = MemoryStore::default();
        load_feed(&mut store, FEODO_LAYOUT, "feed-a");
        load_feed(&mut store, FEODO_LAYOUT, "feed-b");
        let observables = [observable(ObservableType::Ipv4, "192.0.2.10")];
        let outcome = match_observables(&store, &observables, NOW_MS).unwrap();
        assert_eq!(
            matched_ids(&outcome.hits[0]),
            vec!["feed-a:ipv4:192.0.2.10", "feed-b:ipv4:192.0.2.10"]
        );
    }

    #[test]
    fn observables_are_normalised_and_deduplicated() {
        let mut store = MemoryStore::default();
        load_bundle(&mut store, C2_WITH_COA, "oasis");
        let upper = POISON_IVY_SHA256.to_uppercase();
        let observables = [
            observable(ObservableType::Sha256, &upper),
            observable(ObservableType::Sha256, POISON_IVY_SHA256),
        ];
        let outcome = match_observables(&store, &observables, NOW_MS).unwrap();
        assert_eq!(outcome.hits.len(), 1);
        assert_eq!(outcome.hits[0].value, POISON_IVY_SHA256);
    }

    #[test]
    fn oversized_metadata_skips_the_indicator() {
        let mut store = MemoryStore {
            max_value_bytes: Some(400),
            ..MemoryStore::default()
        };
        let mut big = stix_indicator(
            "indicator--big",
            "[domain-name:value = 'big.example']",
            None,
        );
        big["description"] = json!("d".repeat(500));
        let bundle = json!({
            "type": "bundle",
            "id": "bundle--1",
            "objects": [
                big,
                stix_indicator("indicator--ok", "[domain-name:value = 'evil.example']", None),
            ]
        });
        let report = load_bundle(&mut store, &bundle.to_string(), "sized");
        assert_eq!(report.loaded, 1);
        assert_eq!(
            report.skipped,
            vec![Skipped::new(
                "indicator--big",
                "metadata is over the key-value size limit"
            )]
        );
        assert!(!store.entries.contains_key("ind:domain:big.example"));
    }

    #[test]
    fn oversized_value_key_skips_that_value() {
        let mut store = MemoryStore {
            max_key_bytes: Some(100),
            ..MemoryStore::default()
        };
        let long_url = format!("http://evil.example/{}", "a".repeat(200));
        let pattern = format!("[url:value = '{long_url}' OR domain-name:value = 'evil.example']");
        let bundle = json!({
            "type": "bundle",
            "id": "bundle--1",
            "objects": [stix_indicator("indicator--two", &pattern, None)]
        });
        let report = load_bundle(&mut store, &bundle.to_string(), "sized");
        assert_eq!((report.loaded, report.values), (1, 1));
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(
            report.skipped[0].reason,
            format!("url {long_url} is over the key-value size limit")
        );

        let observables = [
            observable(ObservableType::Url, &long_url),
            observable(ObservableType::Domain, "evil.example"),
        ];
        let outcome = match_observables(&store, &observables, NOW_MS).unwrap();
        assert_eq!(
            outcome.hits.len(),
            1,
            "the long URL matches nothing and fails nothing"
        );
        assert_eq!(outcome.hits[0].value, "evil.example");
    }

    #[test]
    fn indicator_without_values_is_reported() {
        let bundle = json!({
            "type": "bundle",
            "id": "bundle--1",
            "objects": [stix_indicator("indicator--name", "[file:name = 'a.exe']", None)]
        });
        let mut store = MemoryStore::default();
        let report = load_bundle(&mut store, &bundle.to_string(), "x");
        assert_eq!(report.loaded, 0);
        let reasons: Vec<&str> = report
            .skipped
            .iter()
            .map(|skipped| skipped.reason.as_str())
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(reasons[1], "no comparison gave an indicator value");
        assert!(store.entries.is_empty());
    }

    #[test]
    fn corrupt_entries_give_warnings() {
        let mut store = MemoryStore::default();
        store.set("ind:domain:a.example", b"not json").unwrap();
        store
            .set("ind:domain:b.example", br#"["indicator--gone"]"#)
            .unwrap();
        let observables = [
            observable(ObservableType::Domain, "a.example"),
            observable(ObservableType::Domain, "b.example"),
        ];
        let outcome = match_observables(&store, &observables, NOW_MS).unwrap();
        assert!(outcome.hits.is_empty());
        assert_eq!(outcome.warnings.len(), 2, "{:?}", outcome.warnings);
        assert!(outcome.warnings[0].contains("ind:domain:a.example"));
        assert!(outcome.warnings[1].contains("meta:indicator--gone"));
    }

    #[test]
    fn observable_input_is_checked() {
        let input = json!({"observables": [
            {"type": "ipv4", "value": "10.0.0.1", "internal": true},
            {"type": "filename", "value": "a.exe", "internal": false}
        ]});
        assert_eq!(
            parse_observables(&input).unwrap(),
            vec![observable(ObservableType::Ipv4, "10.0.0.1")]
        );

        let missing = parse_observables(&json!({})).unwrap_err();
        assert!(
            matches!(missing, PluginError::BadInput(message) if message.contains("observables"))
        );
        let bad =
            parse_observables(&json!({"observables": [{"type": "ipv4", "value": 1}]})).unwrap_err();
        assert!(
            matches!(&bad, PluginError::BadInput(message) if message == "`observables[0].value` is not a string"),
            "{bad:?}"
        );
    }
}
