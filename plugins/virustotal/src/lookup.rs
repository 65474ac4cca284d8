//! The `lookup` action: reports for a list of observables, within a budget.
//!
//! Observables are taken by rank, and in input order within a rank: SHA-256
//! hashes first (the strongest file identity), then IP addresses, domains,
//! URLs, SHA-1 and MD5 hashes. A file usually comes with all three hashes,
//! so a small budget goes to its SHA-256 and to the network observables
//! rather than to three names of one file. Internal ones, types VirusTotal has no
//! report for (such as `email`), invalid values and repeats are skipped
//! without a request. At most `max_lookups` requests are made, counting
//! failed ones.
//!
//! A rate-limited request ends the loop. If it was the first request, the
//! action fails with `rate-limited`, so the step can be retried later.
//! Otherwise the reports gathered so far are returned, and the refused
//! observable and every later one are listed in `skipped`. Credential and
//! permission failures (`denied`, HTTP 401 and 403) fail the action,
//! because every other request would fail the same way. Any other upstream
//! failure skips just that observable.

use palisade_sdk::{PluginError, Value, json};

use crate::target::Target;

/// Requests made when the input does not set `max_lookups`.
pub const DEFAULT_MAX_LOOKUPS: u64 = 4;

/// Reason given for observables after a rate-limit refusal.
const AFTER_RATE_LIMIT: &str = "not looked up: an earlier lookup was rate limited";

/// Runs `report` for each eligible observable in `input` and returns
/// `{"results": [...], "skipped": [...]}`.
///
/// # Errors
///
/// Returns `bad-input` for a malformed input, and the failures described in
/// the module documentation.
pub fn lookup(
    input: &Value,
    mut report: impl FnMut(&Target) -> Result<Value, PluginError>,
) -> Result<Value, PluginError> {
    let observables = input
        .get("observables")
        .and_then(Value::as_array)
        .ok_or_else(|| PluginError::BadInput("missing array field `observables`".to_string()))?;
    let max_lookups = match input.get("max_lookups") {
        None | Some(Value::Null) => DEFAULT_MAX_LOOKUPS,
        Some(value) => value.as_u64().ok_or_else(|| {
            PluginError::BadInput("`max_lookups` must be a non-negative integer".to_string())
        })?,
    };

    let mut results = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: Vec<Target> = Vec::new();
    let mut attempts = 0;
    let mut rate_limited = false;

    let mut ordered: Vec<(usize, &Value)> = observables.iter().enumerate().collect();
    ordered.sort_by_key(|(_, observable)| rank(observable));
    for (index, observable) in ordered {
        let (kind, value) = observable_fields(observable, index)?;
        let mut skip = |reason: &str| {
            skipped.push(json!({"type": kind, "value": value, "reason": reason}));
        };

        if observable.get("internal").and_then(Value::as_bool) == Some(true) {
            skip("internal");
            continue;
        }
        let target = match parse_target(kind, value) {
            None => {
                skip("unsupported type");
                continue;
            }
            Some(Err(error)) => {
                skip(&format!("invalid value: {error}"));
                continue;
            }
            Some(Ok(target)) => target,
        };
        if seen.contains(&target) {
            skip("duplicate");
            continue;
        }
        seen.push(target.clone());
        if rate_limited {
            skip(AFTER_RATE_LIMIT);
            continue;
        }
        if attempts >= max_lookups {
            skip(&format!("lookup limit reached (max_lookups {max_lookups})"));
            continue;
        }

        attempts += 1;
        match report(&target) {
            Ok(output) => results.push(output),
            Err(PluginError::RateLimited(limit)) if attempts == 1 => {
                return Err(PluginError::RateLimited(limit));
            }
            Err(PluginError::RateLimited(_)) => {
                rate_limited = true;
                skip("rate limited");
            }
            Err(PluginError::Upstream(failure))
                if !matches!(failure.status, Some(401) | Some(403)) =>
            {
                skip(&format!("upstream error: {}", failure.message));
            }
            Err(other) => return Err(other),
        }
    }
    Ok(json!({"results": results, "skipped": skipped}))
}

/// Lookup order of an observable's type; lower goes first.
fn rank(observable: &Value) -> u8 {
    match observable.get("type").and_then(Value::as_str) {
        Some("sha256") => 0,
        Some("ipv4" | "ipv6") => 1,
        Some("domain") => 2,
        Some("url") => 3,
        Some("sha1") => 4,
        Some("md5") => 5,
        _ => 6,
    }
}

fn observable_fields(observable: &Value, index: usize) -> Result<(&str, &str), PluginError> {
    let field = |name: &str| {
        observable.get(name).and_then(Value::as_str).ok_or_else(|| {
            PluginError::BadInput(format!("`observables[{index}].{name}` is not a string"))
        })
    };
    Ok((field("type")?, field("value")?))
}

/// Validates `value` for observable type `kind`. Returns `None` for types
/// VirusTotal keeps no report on.
fn parse_target(kind: &str, value: &str) -> Option<Result<Target, String>> {
    let target = match kind {
        "md5" | "sha1" | "sha256" => Target::file(value).and_then(|target| {
            if target.kind() == kind {
                Ok(target)
            } else {
                Err(format!("{value:?} is not of type {kind}"))
            }
        }),
        "ipv4" | "ipv6" => Target::ip(value).and_then(|target| {
            if target.kind() == kind {
                Ok(target)
            } else {
                Err(format!("{value:?} is not of type {kind}"))
            }
        }),
        "domain" => Target::domain(value),
        "url" => Target::url(value),
        _ => return None,
    };
    Some(target)
}

#[cfg(test)]
mod tests {
    use palisade_sdk::{RateLimit, UpstreamFailure};

    use super::*;

    const EICAR_SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";

    fn fake_report(target: &Target) -> Value {
        json!({"type": target.kind(), "value": target.value(), "found": true})
    }

    fn rate_limit() -> PluginError {
        PluginError::RateLimited(RateLimit {
            retry_after_ms: Some(60_000),
            message: "quota".to_string(),
        })
    }

    fn upstream(status: u16) -> PluginError {
        PluginError::Upstream(UpstreamFailure {
            status: Some(status),
            message: format!("virustotal returned HTTP {status}"),
        })
    }

    fn reasons(output: &Value) -> Vec<(String, String)> {
        output["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                (
                    entry["value"].as_str().unwrap().to_string(),
                    entry["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn pairs(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|(value, reason)| (value.to_string(), reason.to_string()))
            .collect()
    }

    #[test]
    fn eligible_observables_are_looked_up_by_rank() {
        let input = json!({"observables": [
            {"type": "sha256", "value": EICAR_SHA256, "internal": false},
            {"type": "ipv4", "value": "10.0.0.5", "internal": true},
            {"type": "email", "value": "a@example.com", "internal": false},
            {"type": "domain", "value": "Example.COM", "internal": false},
            {"type": "sha256", "value": EICAR_SHA256.to_uppercase(), "internal": false},
            {"type": "md5", "value": EICAR_SHA256, "internal": false},
            {"type": "url", "value": "http://example.com/x", "internal": false},
        ]});
        let mut requested = Vec::new();
        let output = lookup(&input, |target| {
            requested.push(target.value().to_string());
            Ok(fake_report(target))
        })
        .unwrap();

        assert_eq!(
            requested,
            vec![EICAR_SHA256, "example.com", "http://example.com/x"]
        );
        assert_eq!(output["results"].as_array().unwrap().len(), 3);
        assert_eq!(output["results"][1]["value"], "example.com");
        let upper = EICAR_SHA256.to_uppercase();
        let md5_reason = format!("invalid value: {EICAR_SHA256:?} is not of type md5");
        assert_eq!(
            reasons(&output),
            pairs(&[
                (&upper, "duplicate"),
                ("10.0.0.5", "internal"),
                (EICAR_SHA256, &md5_reason),
                ("a@example.com", "unsupported type"),
            ])
        );
    }

    #[test]
    fn small_budget_goes_to_sha256_and_addresses() {
        let input = json!({"max_lookups": 2, "observables": [
            {"type": "md5", "value": "44d88612fea8a8f36de82e1278abb02f", "internal": false},
            {"type": "sha1", "value": "3395856ce81f2b7382dee72602f798b642f14140", "internal": false},
            {"type": "url", "value": "http://example.com/x", "internal": false},
            {"type": "ipv4", "value": "198.51.100.7", "internal": false},
            {"type": "sha256", "value": EICAR_SHA256, "internal": false},
        ]});
        let mut requested = Vec::new();
        lookup(&input, |target| {
            requested.push(target.value().to_string());
            Ok(fake_report(target))
        })
        .unwrap();
        assert_eq!(requested, vec![EICAR_SHA256, "198.51.100.7"]);
    }

    #[test]
    fn default_budget_is_four_lookups() {
        let observables: Vec<Value> = (1..=6)
            .map(|host| json!({"type": "ipv4", "value": format!("192.0.2.{host}"), "internal": false}))
            .collect();
        let mut calls = 0;
        let output = lookup(&json!({"observables": observables}), |target| {
            calls += 1;
            Ok(fake_report(target))
        })
        .unwrap();
        assert_eq!(calls, 4);
        assert_eq!(
            reasons(&output),
            pairs(&[
                ("192.0.2.5", "lookup limit reached (max_lookups 4)"),
                ("192.0.2.6", "lookup limit reached (max_lookups 4)"),
            ])
        );
    }

    #[test]
    fn zero_budget_makes_no_request() {
        let input = json!({"max_lookups": 0, "observables": [
            {"type": "domain", "value": "example.com", "internal": false}
        ]});
        let output = lookup(&input, |_| panic!("no request expected")).unwrap();
        assert_eq!(output["results"], json!([]));
        assert_eq!(
            reasons(&output),
            pairs(&[("example.com", "lookup limit reached (max_lookups 0)")])
        );
    }

    #[test]
    fn rate_limit_after_first_lookup_stops_loop() {
        let input = json!({"observables": [
            {"type": "domain", "value": "a.example", "internal": false},
            {"type": "domain", "value": "b.example", "internal": false},
            {"type": "domain", "value": "c.example", "internal": false},
            {"type": "email", "value": "x@c.example", "internal": false},
        ]});
        let mut calls = 0;
        let output = lookup(&input, |target| {
            calls += 1;
            if calls == 1 {
                Ok(fake_report(target))
            } else {
                Err(rate_limit())
            }
        })
        .unwrap();
        assert_eq!(calls, 2);
        assert_eq!(output["results"].as_array().unwrap().len(), 1);
        assert_eq!(
            reasons(&output),
            pairs(&[
                ("b.example", "rate limited"),
                ("c.example", AFTER_RATE_LIMIT),
                ("x@c.example", "unsupported type"),
            ])
        );
    }

    #[test]
    fn rate_limit_on_first_lookup_fails() {
        let input = json!({"observables": [
            {"type": "ipv4", "value": "10.0.0.1", "internal": true},
            {"type": "domain", "value": "a.example", "internal": false},
            {"type": "domain", "value": "b.example", "internal": false},
        ]});
        let error = lookup(&input, |_| Err(rate_limit())).unwrap_err();
        assert!(
            matches!(&error, PluginError::RateLimited(limit) if limit.retry_after_ms == Some(60_000)),
            "{error:?}"
        );
    }

    #[test]
    fn credential_failures_fail_the_action() {
        for status in [401, 403] {
            let input = json!({"observables": [
                {"type": "domain", "value": "a.example", "internal": false},
            ]});
            let error = lookup(&input, |_| Err(upstream(status))).unwrap_err();
            assert!(
                matches!(&error, PluginError::Upstream(failure) if failure.status == Some(status)),
                "{status}: {error:?}"
            );
        }
        let input = json!({"observables": [{"type": "domain", "value": "a.example"}]});
        let error = lookup(&input, |_| Err(PluginError::Denied("no".to_string()))).unwrap_err();
        assert!(matches!(error, PluginError::Denied(_)));
    }

    #[test]
    fn other_upstream_failures_skip_one_observable() {
        let input = json!({"observables": [
            {"type": "domain", "value": "a.example", "internal": false},
            {"type": "domain", "value": "b.example", "internal": false},
        ]});
        let output = lookup(&input, |target| {
            if target.value() == "a.example" {
                Err(upstream(503))
            } else {
                Ok(fake_report(target))
            }
        })
        .unwrap();
        assert_eq!(output["results"][0]["value"], "b.example");
        assert_eq!(
            reasons(&output),
            pairs(&[("a.example", "upstream error: virustotal returned HTTP 503")])
        );
    }

    #[test]
    fn malformed_input_is_bad_input() {
        let cases = [
            (json!({}), "`observables`"),
            (
                json!({"observables": [], "max_lookups": -1}),
                "`max_lookups`",
            ),
            (
                json!({"observables": [], "max_lookups": "4"}),
                "`max_lookups`",
            ),
            (
                json!({"observables": [{"type": "domain"}]}),
                "`observables[0].value`",
            ),
        ];
        for (input, expected) in cases {
            match lookup(&input, |_| panic!("no request expected")) {
                Err(PluginError::BadInput(message)) => {
                    assert!(message.contains(expected), "{input}: {message}")
                }
                other => panic!("{input}: expected bad-input, got {other:?}"),
            }
        }
    }
}
