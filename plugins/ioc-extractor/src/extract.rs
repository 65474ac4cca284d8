//! Runs the scanners over text and JSON documents and tallies what they find.

use std::collections::BTreeMap;
use std::net::IpAddr;

use palisade_sdk::{Value, json};

use crate::internal::InternalScope;
use crate::source::{Field, Source};
use crate::{domain, email, hash, ip, url};

/// Observable type. The declaration order is the alphabetical order of the
/// names, so sorting by `Kind` sorts by type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Domain,
    Email,
    Ipv4,
    Ipv6,
    Md5,
    Sha1,
    Sha256,
    Url,
}

impl Kind {
    #[cfg(test)]
    const ALL: [Kind; 8] = [
        Kind::Domain,
        Kind::Email,
        Kind::Ipv4,
        Kind::Ipv6,
        Kind::Md5,
        Kind::Sha1,
        Kind::Sha256,
        Kind::Url,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Domain => "domain",
            Kind::Email => "email",
            Kind::Ipv4 => "ipv4",
            Kind::Ipv6 => "ipv6",
            Kind::Md5 => "md5",
            Kind::Sha1 => "sha1",
            Kind::Sha256 => "sha256",
            Kind::Url => "url",
        }
    }
}

/// One place where a scanner found an observable.
#[derive(Debug)]
pub struct Sighting {
    pub kind: Kind,
    /// Normalised value.
    pub value: String,
    /// Host of a URL or domain of an email, which decides `internal`.
    pub host: Option<String>,
    /// True when a refang rewrite produced part of the value.
    pub defanged: bool,
}

/// An observable with all its sightings merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observable {
    pub kind: Kind,
    pub value: String,
    pub internal: bool,
    pub defanged: bool,
    pub count: u64,
}

impl Observable {
    pub fn to_json(&self) -> Value {
        json!({
            "type": self.kind.name(),
            "value": self.value,
            "internal": self.internal,
            "defanged": self.defanged,
            "count": self.count,
        })
    }
}

/// Collects sightings from any number of strings.
pub struct Extractor<'a> {
    scope: &'a InternalScope,
    tally: BTreeMap<(Kind, String), Observable>,
}

impl<'a> Extractor<'a> {
    pub fn new(scope: &'a InternalScope) -> Extractor<'a> {
        Extractor {
            scope,
            tally: BTreeMap::new(),
        }
    }

    /// Scans one string. `field` is its context, `Field::Plain` when unknown.
    pub fn scan_text(&mut self, text: &str, field: Field) {
        let mut source = Source::new(text, field);
        let mut sightings = Vec::new();
        url::scan(&mut source, self.scope, &mut sightings);
        email::scan(&mut source, self.scope, &mut sightings);
        ip::scan_ipv6(&mut source, &mut sightings);
        ip::scan_ipv4(&mut source, &mut sightings);
        domain::scan(&mut source, self.scope, &mut sightings);
        hash::scan(&source, &mut sightings);
        for sighting in sightings {
            self.record(sighting);
        }
    }

    /// Scans every string value in `document`, at any depth. Object keys
    /// are not scanned, but they tell what their value holds.
    pub fn scan_document(&mut self, document: &Value) {
        let mut pending = vec![(document, Field::Plain)];
        while let Some((value, field)) = pending.pop() {
            match value {
                Value::String(text) => self.scan_text(text, field),
                Value::Array(items) => pending.extend(items.iter().map(|item| (item, field))),
                Value::Object(members) => pending.extend(
                    members
                        .iter()
                        .map(|(key, member)| (member, Field::from_key(key))),
                ),
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
    }

    /// Returns the observables sorted by type name, then value.
    pub fn into_observables(self) -> Vec<Observable> {
        self.tally.into_values().collect()
    }

    fn record(&mut self, sighting: Sighting) {
        let key = (sighting.kind, sighting.value);
        if let Some(existing) = self.tally.get_mut(&key) {
            existing.count += 1;
            existing.defanged |= sighting.defanged;
            return;
        }
        let internal = self.is_internal(key.0, &key.1, sighting.host.as_deref());
        let observable = Observable {
            kind: key.0,
            value: key.1.clone(),
            internal,
            defanged: sighting.defanged,
            count: 1,
        };
        self.tally.insert(key, observable);
    }

    fn is_internal(&self, kind: Kind, value: &str, host: Option<&str>) -> bool {
        match kind {
            Kind::Ipv4 | Kind::Ipv6 => value
                .parse::<IpAddr>()
                .is_ok_and(|address| self.scope.is_internal_ip(address)),
            Kind::Domain | Kind::Url | Kind::Email => {
                host.is_some_and(|host| self.scope.is_internal_host(host))
            }
            Kind::Md5 | Kind::Sha1 | Kind::Sha256 => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(text: &str) -> Vec<Observable> {
        let scope = InternalScope::default();
        let mut extractor = Extractor::new(&scope);
        extractor.scan_text(text, Field::Plain);
        extractor.into_observables()
    }

    #[test]
    fn kind_order_matches_name_order() {
        let names: Vec<&str> = Kind::ALL.iter().map(|kind| kind.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn sightings_are_counted_and_flags_merged() {
        let found = extract("evil[.]com and evil.com and EVIL.COM");
        assert_eq!(
            found,
            vec![Observable {
                kind: Kind::Domain,
                value: "evil.com".to_string(),
                internal: false,
                defanged: true,
                count: 3,
            }]
        );
    }

    #[test]
    fn url_and_email_hosts_not_repeated() {
        let found = extract("https://evil.example.com/a mail bob@phish.example.net");
        let kinds: Vec<Kind> = found.iter().map(|observable| observable.kind).collect();
        assert_eq!(kinds, vec![Kind::Email, Kind::Url]);
    }

    #[test]
    fn output_is_sorted_by_type_then_value() {
        let found = extract("b.example.com 9.9.9.9 a.example.com 10.0.0.1");
        let pairs: Vec<(&str, &str)> = found
            .iter()
            .map(|observable| (observable.kind.name(), observable.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("domain", "a.example.com"),
                ("domain", "b.example.com"),
                ("ipv4", "10.0.0.1"),
                ("ipv4", "9.9.9.9"),
            ]
        );
    }

    #[test]
    fn internal_flags_follow_the_host() {
        let found = extract("http://10.1.2.3/x http://db.internal/y ops@corp.lan 8.8.8.8");
        let flags: Vec<(&str, bool)> = found
            .iter()
            .map(|observable| (observable.value.as_str(), observable.internal))
            .collect();
        assert_eq!(
            flags,
            vec![
                ("ops@corp.lan", true),
                ("8.8.8.8", false),
                ("http://10.1.2.3/x", true),
                ("http://db.internal/y", true),
            ]
        );
    }

    #[test]
    fn arbitrary_token_soup_does_not_panic() {
        const TOKENS: &[&str] = &[
            "http",
            "hxxp",
            "://",
            "[.]",
            "(dot)",
            "[at]",
            "@",
            ".",
            ":",
            "::",
            "/",
            "\\",
            "\\n",
            "=3D",
            "=\n",
            "com",
            "io",
            "arn:aws",
            "10",
            "255",
            "0",
            "fe80",
            "d41d8cd98f00b204",
            "é",
            "…",
            "日本",
            "&amp;",
            "&quot;",
            "(",
            ")",
            "[",
            "]",
            "=",
            " ",
            "\n",
            "Message-ID:",
            "x",
            "_",
            "-",
            "*",
            "...",
        ];
        let scope = InternalScope::default();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..24 {
                // xorshift64: a fixed sequence, so a failure reproduces.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(TOKENS[(state % TOKENS.len() as u64) as usize]);
            }
            let mut extractor = Extractor::new(&scope);
            extractor.scan_text(&text, Field::Plain);
            extractor.scan_text(&text, Field::File);
            for observable in extractor.into_observables() {
                assert!(!observable.value.is_empty(), "text {text:?}");
            }
        }
    }

    #[test]
    fn document_strings_are_walked_and_numbers_skipped() {
        let scope = InternalScope::default();
        let mut extractor = Extractor::new(&scope);
        let document = json!({
            "a": {"b": ["10.0.0.1", {"c": "evil.com"}]},
            "n": 1668705462.50453,
            "10.0.0.9": true,
        });
        extractor.scan_document(&document);
        let values: Vec<String> = extractor
            .into_observables()
            .into_iter()
            .map(|observable| observable.value)
            .collect();
        assert_eq!(values, vec!["evil.com", "10.0.0.1"]);
    }
}
