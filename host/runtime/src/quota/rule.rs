//! Quota rules as the operator writes them in `[[plugins.NAME.quotas]]`, and
//! their validation.
//!
//! A rule with no `origin` covers every request of the plugin. A rule with
//! an `origin` covers the requests whose origin that pattern permits, in the
//! syntax of `http_origins`, so one plugin can hold a separate budget per
//! upstream service.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::policy::{InvalidOrigin, OriginPattern};

/// One quota rule of a plugin. Every rule whose origin matches a request
/// must admit it before the host sends it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    /// Origin pattern the rule covers, such as `https://www.virustotal.com`.
    /// Absent, the rule covers every request of the plugin.
    pub origin: Option<String>,
    /// Token bucket: at most `requests` in a burst, refilled evenly over
    /// `per_seconds`.
    pub rate: Option<RateRule>,
    /// Requests per UTC calendar day.
    pub daily: Option<u64>,
    /// Requests per UTC calendar month.
    pub monthly: Option<u64>,
    /// Requests in flight at once, from sending until the response body is
    /// read.
    pub concurrency: Option<u32>,
    /// Behaviour of a request over this rule. Defaults to `fail`.
    #[serde(default)]
    pub on_exceed: OnExceed,
    /// Maximum wait for admission, in milliseconds. Required with
    /// `on_exceed = "wait"` and rejected with `fail`.
    pub max_wait_ms: Option<u64>,
}

/// Token-bucket rate: `requests` per `per_seconds` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    pub requests: u32,
    pub per_seconds: u64,
}

impl RateRule {
    /// Tokens added per second.
    pub(crate) fn tokens_per_second(&self) -> f64 {
        f64::from(self.requests) / self.per_seconds as f64
    }
}

/// Behaviour of a request that a rule does not admit at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// The request fails at once with `rate-limited`.
    #[default]
    Fail,
    /// The request waits for admission up to `max_wait_ms`, then fails with
    /// `rate-limited`.
    Wait,
}

/// A quota rule that cannot be enforced as written. `field` is the path of
/// the offending setting inside the plugin's grant, such as
/// `quotas[0].rate.requests`.
#[derive(Debug, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct InvalidQuota {
    pub field: String,
    pub reason: String,
}

/// A validated rule with its origin pattern parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckedRule {
    pub rule: QuotaRule,
    pub origin: Option<OriginPattern>,
}

impl CheckedRule {
    /// Returns whether the rule covers a request to `url`.
    pub fn covers(&self, url: &Url) -> bool {
        self.origin
            .as_ref()
            .is_none_or(|pattern| pattern.permits(url))
    }

    /// Returns the maximum wait of a `wait` rule, or `None` for a `fail`
    /// rule.
    pub fn max_wait(&self) -> Option<Duration> {
        match self.rule.on_exceed {
            OnExceed::Fail => None,
            OnExceed::Wait => Some(Duration::from_millis(self.rule.max_wait_ms.unwrap_or(0))),
        }
    }

    /// Returns the scope of the rule's persisted counts: its origin pattern
    /// in normal form, or `*` for a plugin-wide rule.
    pub fn scope(&self) -> String {
        self.origin
            .as_ref()
            .map_or_else(|| "*".to_string(), ToString::to_string)
    }
}

/// Validates the rules at `quotas[index]` of a grant whose granted origins
/// are `granted`.
///
/// # Errors
///
/// Returns the first invalid setting: a zero count, rate or wait, a rule
/// that sets no limit, `max_wait_ms` missing with `wait` or present with
/// `fail`, or an origin that is malformed or overlaps no granted origin.
pub(crate) fn check_rules(
    rules: &[QuotaRule],
    granted: &[OriginPattern],
) -> Result<Vec<CheckedRule>, InvalidQuota> {
    rules
        .iter()
        .enumerate()
        .map(|(index, rule)| check_rule(index, rule, granted))
        .collect()
}

fn check_rule(
    index: usize,
    rule: &QuotaRule,
    granted: &[OriginPattern],
) -> Result<CheckedRule, InvalidQuota> {
    let invalid = |field: &str, reason: String| InvalidQuota {
        field: format!("quotas[{index}]{field}"),
        reason,
    };
    let at_least_one = |field: &str, value: u64| {
        if value == 0 {
            Err(invalid(field, "is 0; it must be at least 1".into()))
        } else {
            Ok(())
        }
    };

    if let Some(rate) = &rule.rate {
        at_least_one(".rate.requests", rate.requests.into())?;
        at_least_one(".rate.per_seconds", rate.per_seconds)?;
    }
    if let Some(daily) = rule.daily {
        at_least_one(".daily", daily)?;
    }
    if let Some(monthly) = rule.monthly {
        at_least_one(".monthly", monthly)?;
    }
    if let Some(concurrency) = rule.concurrency {
        at_least_one(".concurrency", concurrency.into())?;
    }
    let sets_a_limit = rule.rate.is_some()
        || rule.daily.is_some()
        || rule.monthly.is_some()
        || rule.concurrency.is_some();
    if !sets_a_limit {
        return Err(invalid(
            "",
            "sets no limit; set at least one of `rate`, `daily`, `monthly` or `concurrency`".into(),
        ));
    }

    match (rule.on_exceed, rule.max_wait_ms) {
        (OnExceed::Wait, None) => {
            return Err(invalid(
                ".max_wait_ms",
                "is missing; `on_exceed = \"wait\"` needs the longest wait in milliseconds".into(),
            ));
        }
        (OnExceed::Wait, Some(wait)) => at_least_one(".max_wait_ms", wait)?,
        (OnExceed::Fail, Some(_)) => {
            return Err(invalid(
                ".max_wait_ms",
                "applies only with `on_exceed = \"wait\"`; remove it or change `on_exceed`".into(),
            ));
        }
        (OnExceed::Fail, None) => {}
    }

    let origin = match &rule.origin {
        None => None,
        Some(text) => {
            let pattern = OriginPattern::parse(text)
                .map_err(|error: InvalidOrigin| invalid(".origin", error.to_string()))?;
            if !granted.iter().any(|granted| granted.overlaps(&pattern)) {
                return Err(invalid(
                    ".origin",
                    format!(
                        "{text:?} overlaps none of the granted `http_origins`, so the rule would never apply"
                    ),
                ));
            }
            Some(pattern)
        }
    };
    Ok(CheckedRule {
        rule: rule.clone(),
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted() -> Vec<OriginPattern> {
        vec![OriginPattern::parse("https://*.example.com").unwrap()]
    }

    fn rule(text: &str) -> QuotaRule {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn valid_rules_pass() {
        let rules = [
            rule("rate = { requests = 4, per_seconds = 60 }"),
            rule("origin = \"https://api.example.com\"\ndaily = 500\nmonthly = 15500"),
            rule("concurrency = 2\non_exceed = \"wait\"\nmax_wait_ms = 30000"),
        ];
        let checked = check_rules(&rules, &granted()).unwrap();
        assert_eq!(checked.len(), 3);
        assert_eq!(checked[0].scope(), "*");
        assert_eq!(checked[1].scope(), "https://api.example.com:443");
        assert_eq!(checked[2].max_wait(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn invalid_rules_name_their_field() {
        let cases = [
            (
                "rate = { requests = 0, per_seconds = 60 }",
                "quotas[0].rate.requests",
            ),
            (
                "rate = { requests = 4, per_seconds = 0 }",
                "quotas[0].rate.per_seconds",
            ),
            ("daily = 0", "quotas[0].daily"),
            ("monthly = 0", "quotas[0].monthly"),
            ("concurrency = 0", "quotas[0].concurrency"),
            ("on_exceed = \"fail\"", "quotas[0]`"),
            ("daily = 1\non_exceed = \"wait\"", "quotas[0].max_wait_ms"),
            (
                "daily = 1\non_exceed = \"wait\"\nmax_wait_ms = 0",
                "quotas[0].max_wait_ms",
            ),
            ("daily = 1\nmax_wait_ms = 10", "quotas[0].max_wait_ms"),
            (
                "daily = 1\norigin = \"api.example.com\"",
                "quotas[0].origin",
            ),
            (
                "daily = 1\norigin = \"https://other.test\"",
                "quotas[0].origin",
            ),
        ];
        for (text, field) in cases {
            let error = check_rules(&[rule(text)], &granted()).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(field), "{text:?} gave {message:?}");
        }
    }

    #[test]
    fn unknown_settings_are_rejected() {
        let error = toml::from_str::<QuotaRule>("burst = 3").unwrap_err();
        assert!(error.to_string().contains("burst"), "{error}");
        let error = toml::from_str::<QuotaRule>("daily = 1\non_exceed = \"queue\"").unwrap_err();
        assert!(error.to_string().contains("queue"), "{error}");
    }
}
