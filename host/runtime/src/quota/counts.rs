//! Daily and monthly request counts, and where they are persisted.
//!
//! Each count lives under one key of the runtime's [`KeyValueStore`] in the
//! namespace [`QUOTA_NAMESPACE`], as JSON `{"period": ..., "used": ...}`.
//! One key per plugin, rule scope and calendar unit is overwritten in place,
//! so old periods leave nothing behind. Periods are UTC calendar days
//! (`2026-05-04`) and months (`2026-05`).

use std::sync::Arc;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::host::KeyValueStore;

/// Namespace of the quota counts in the [`KeyValueStore`]. Plugin names are
/// kebab-case (lowercase letters, digits and hyphens) and a plugin can
/// address only the namespace of its own name, so no plugin can read or
/// change an entry here: the colon never appears in a plugin name.
pub const QUOTA_NAMESPACE: &str = "palisade:quota";

/// A calendar unit of a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Calendar {
    Day,
    Month,
}

impl Calendar {
    fn key_word(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// Returns the period that contains `now`, such as `2026-05-04` or
    /// `2026-05`.
    pub fn period(self, now: DateTime<Utc>) -> String {
        match self {
            Self::Day => now.format("%Y-%m-%d").to_string(),
            Self::Month => now.format("%Y-%m").to_string(),
        }
    }

    /// Returns the start of the period after the one that contains `now`.
    pub fn next_start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let today = now.date_naive();
        let next = match self {
            Self::Day => today.succ_opt(),
            Self::Month => NaiveDate::from_ymd_opt(today.year(), today.month(), 1)
                .and_then(|first| first.checked_add_months(Months::new(1))),
        };
        // `succ_opt` and `checked_add_months` fail only at the end of
        // chrono's date range, hundreds of thousands of years away.
        next.and_then(|date| date.and_hms_opt(0, 0, 0))
            .map_or(DateTime::<Utc>::MAX_UTC, |start| start.and_utc())
    }
}

/// Requests counted in one period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeriodCount {
    pub period: String,
    pub used: u64,
}

impl PeriodCount {
    /// Returns the requests used in the period that contains `now`, which
    /// is zero when the stored period is an earlier one.
    pub fn used_in(&self, calendar: Calendar, now: DateTime<Utc>) -> u64 {
        if self.period == calendar.period(now) {
            self.used
        } else {
            0
        }
    }
}

/// Reads and writes counts. Without a key-value store, counts live in
/// memory only and start from zero at each start of the runtime.
pub(crate) struct CountStore {
    kv: Option<Arc<dyn KeyValueStore>>,
}

impl CountStore {
    pub fn new(kv: Option<Arc<dyn KeyValueStore>>) -> Self {
        Self { kv }
    }

    pub fn is_persistent(&self) -> bool {
        self.kv.is_some()
    }

    /// Returns the key of a count: plugin name, rule scope and calendar
    /// unit, separated by spaces, which appear in none of them.
    pub fn key(plugin: &str, scope: &str, calendar: Calendar) -> String {
        format!("{plugin} {scope} {}", calendar.key_word())
    }

    /// Loads a stored count.
    ///
    /// # Errors
    ///
    /// Returns a message naming the key when the store fails or the entry
    /// is not a count.
    pub fn load(
        &self,
        plugin: &str,
        scope: &str,
        calendar: Calendar,
    ) -> Result<Option<PeriodCount>, String> {
        let Some(kv) = &self.kv else {
            return Ok(None);
        };
        let key = Self::key(plugin, scope, calendar);
        let Some(bytes) = kv.get(QUOTA_NAMESPACE, &key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|error| {
            format!(
                "entry {key:?} in namespace {QUOTA_NAMESPACE:?} is not a quota count ({error}); delete it to start the count from zero"
            )
        })
    }

    /// Stores a count, replacing the earlier one.
    ///
    /// # Errors
    ///
    /// Returns the store's message.
    pub fn save(
        &self,
        plugin: &str,
        scope: &str,
        calendar: Calendar,
        count: &PeriodCount,
    ) -> Result<(), String> {
        let Some(kv) = &self.kv else {
            return Ok(());
        };
        let key = Self::key(plugin, scope, calendar);
        let bytes = serde_json::to_vec(count).map_err(|error| error.to_string())?;
        kv.set(QUOTA_NAMESPACE, &key, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn periods_follow_the_utc_calendar() {
        let now = at("2026-12-31T23:59:59Z");
        assert_eq!(Calendar::Day.period(now), "2026-12-31");
        assert_eq!(Calendar::Month.period(now), "2026-12");
        assert_eq!(Calendar::Day.next_start(now), at("2027-01-01T00:00:00Z"));
        assert_eq!(Calendar::Month.next_start(now), at("2027-01-01T00:00:00Z"));

        // Another time zone's local date does not matter.
        let now = at("2026-02-28T23:30:00-05:00");
        assert_eq!(Calendar::Day.period(now), "2026-03-01");
        assert_eq!(Calendar::Month.next_start(now), at("2026-04-01T00:00:00Z"));
    }

    #[test]
    fn count_of_an_earlier_period_is_zero() {
        let count = PeriodCount {
            period: "2026-05-03".into(),
            used: 7,
        };
        assert_eq!(count.used_in(Calendar::Day, at("2026-05-03T12:00:00Z")), 7);
        assert_eq!(count.used_in(Calendar::Day, at("2026-05-04T00:00:00Z")), 0);
    }
}
