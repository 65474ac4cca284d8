//! Per-plugin API quotas, enforced where a plugin's request leaves the host.
//!
//! Third-party APIs bound their clients: VirusTotal's public API allows 4
//! requests a minute and a daily and monthly total, and a key that goes over
//! is refused or suspended for every playbook that shares it. A plugin
//! cannot keep that budget itself, because the host runs each call in a
//! fresh instance and many calls at once. So the host keeps one [`Quotas`]
//! registry per runtime and checks it before every outbound request, after
//! the request has passed the origin and secret checks.
//!
//! A request is sent only when every rule that covers it admits it, all at
//! once under one lock per plugin, so concurrent calls can never send more
//! than a rule allows. Admission takes a token from each rate bucket, adds
//! one to each daily and monthly count, and takes a concurrency slot that
//! stays taken until the response body is read. Counts are written to the key-value store in
//! [`QUOTA_NAMESPACE`] before the request is sent, so a restart resumes from
//! them. A request that is refused fails with `rate-limited`, or waits for
//! admission when every refusing rule is set to `wait`. A waiting request
//! sleeps on a timer or on the release of a slot and blocks no thread. The
//! call's wall-clock limit still applies to it. Waiting requests are not
//! admitted in arrival order: whichever checks first after a release wins.
//!
//! A 429 response with `Retry-After` pauses the plugin's requests to that
//! origin, across all its calls, until the time passes. Requests in the
//! pause wait or fail as the rules that cover them specify, and fail when no
//! rule covers them.
//!
//! Each plugin's registry also counts the requests that waited for
//! admission and the time they waited, for metrics ([`Quotas::wait_totals`]).
//! These totals live in memory and start from zero at each start.
//!
//! NOTE: token buckets, in-flight counts and pauses live in memory. After a
//! restart every bucket is full, so a restart within a rate window can let
//! one more burst through.

mod counts;
mod rule;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use url::Url;

use crate::bindings::palisade::plugin::http::HttpError;
use crate::host::KeyValueStore;
use crate::policy::Policy;

pub use self::counts::QUOTA_NAMESPACE;
use self::counts::{Calendar, CountStore, PeriodCount};
pub(crate) use self::rule::{CheckedRule, check_rules};
pub use self::rule::{InvalidQuota, OnExceed, QuotaRule, RateRule};

/// Maximum number of requests of one plugin waiting for admission at once.
/// A request that finds the queue full fails at once.
const MAX_WAITING: usize = 256;

/// Maximum pause a `Retry-After` header can set. A longer value is cut to
/// this, so a broken or hostile upstream cannot stop a plugin for good.
const MAX_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

/// The quotas of every plugin of one runtime.
pub struct Quotas {
    counts: CountStore,
    plugins: RwLock<BTreeMap<String, Arc<PluginQuotas>>>,
}

/// A quota count that could not be loaded when a plugin was registered.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the quota counts of plugin {plugin:?}: {message}")]
pub struct QuotaStoreError {
    pub plugin: String,
    pub message: String,
}

/// Held while an admitted request is in flight. Dropping it frees the
/// request's concurrency slots and wakes waiting requests.
pub(crate) struct Permit {
    quotas: Option<Arc<PluginQuotas>>,
    rules: Vec<usize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(quotas) = self.quotas.take() else {
            return;
        };
        if self.rules.is_empty() {
            return;
        }
        {
            let mut state = quotas.lock();
            for &index in &self.rules {
                let rule = &mut state.rules[index];
                rule.in_flight = rule.in_flight.saturating_sub(1);
            }
        }
        quotas.changed.notify_waiters();
    }
}

impl Quotas {
    /// Creates an empty registry. Without `kv`, daily and monthly counts
    /// live in memory only and start from zero at each start.
    pub fn new(kv: Option<Arc<dyn KeyValueStore>>) -> Self {
        Self {
            counts: CountStore::new(kv),
            plugins: RwLock::new(BTreeMap::new()),
        }
    }

    /// Sets the rules of `plugin` from its policy and loads its stored
    /// counts. Registering the same rules again keeps the live state;
    /// other rules replace it, and pauses carry over.
    ///
    /// # Errors
    ///
    /// Returns an error when a stored count cannot be read.
    pub fn register(&self, plugin: &str, policy: &Policy) -> Result<(), QuotaStoreError> {
        let rules = policy.quota_rules();
        let existing = self.read_plugins().get(plugin).cloned();
        if existing
            .as_ref()
            .is_some_and(|quotas| quotas.rules == rules)
        {
            return Ok(());
        }

        let now = Utc::now();
        let mut states = Vec::new();
        for rule in rules {
            let state = RuleState::load(&self.counts, plugin, rule, now).map_err(|message| {
                QuotaStoreError {
                    plugin: plugin.to_string(),
                    message,
                }
            })?;
            states.push(state);
        }

        let pauses = existing.as_ref().map(|quotas| quotas.lock().pauses.clone());
        let mut quotas =
            PluginQuotas::new(plugin, rules.to_vec(), states, pauses.unwrap_or_default());
        if let Some(existing) = existing {
            // New rules keep the totals, so the counters never go back.
            quotas.waits = existing.waits.clone();
        }
        if !self.counts.is_persistent() && rules.iter().any(RuleState::counts_calendar) {
            // Commands that only inspect plugins run without a store and
            // send nothing, so this is no cause for a warning.
            tracing::debug!(
                plugin.name = %plugin,
                "no key-value store: daily and monthly quota counts start from zero at each start"
            );
        }
        self.write_plugins()
            .insert(plugin.to_string(), Arc::new(quotas));
        Ok(())
    }

    /// Waits until every rule of `plugin` that covers `url` admits one
    /// request, and returns the permit to hold while it is in flight.
    /// `call_deadline` is when the calling plugin's wall-clock limit ends.
    ///
    /// # Errors
    ///
    /// Returns `rate-limited` when a rule or a pause refuses the request and
    /// it may not wait, or may not wait long enough, and `transport` when
    /// the count cannot be stored.
    pub(crate) async fn admit(
        &self,
        plugin: &str,
        url: &Url,
        call_deadline: Option<Instant>,
    ) -> Result<Permit, HttpError> {
        let quotas = self.plugin(plugin);
        let origin = url.origin().ascii_serialization();
        let started = Instant::now();
        let mut queued: Option<QueueSlot> = None;
        // Counts the wait when the request is admitted, refused after
        // waiting, or dropped because its call ended.
        let mut wait = WaitTimer::new(&quotas.waits);
        loop {
            // Register for wake-ups before checking, so a slot freed between
            // the check and the wait is not missed.
            let released = quotas.changed.notified();
            tokio::pin!(released);
            released.as_mut().enable();

            let refusal = match quotas.try_admit(&self.counts, url, &origin) {
                Ok(permit) => return Ok(permit),
                Err(Attempt::Failed(error)) => return Err(error),
                Err(Attempt::Refused(refusal)) => refusal,
            };
            let now = Instant::now();
            let Some(deadline) = refusal.wait_deadline(started, call_deadline) else {
                return Err(refusal.into_error(plugin, &origin));
            };
            let ready_at = refusal.retry_after.map(|after| now + after);
            if now >= deadline || ready_at.is_some_and(|ready| ready > deadline) {
                return Err(refusal.into_error(plugin, &origin));
            }
            if queued.is_none() {
                match QueueSlot::take(&quotas) {
                    Some(slot) => queued = Some(slot),
                    None => return Err(refusal.into_error(plugin, &origin)),
                }
            }
            let wake_at = ready_at.unwrap_or(deadline).min(deadline);
            wait.start(now);
            tokio::select! {
                () = &mut released => {}
                () = tokio::time::sleep_until(wake_at.into()) => {}
            }
        }
    }

    /// Pauses `plugin`'s requests to the origin of `url` when `status` is
    /// 429 and `retry_after`, the response's `Retry-After` value, gives the
    /// length of the pause.
    pub(crate) fn note_response(
        &self,
        plugin: &str,
        url: &Url,
        status: u16,
        retry_after: Option<&str>,
    ) {
        if status != 429 {
            return;
        }
        let Some(wait) = retry_after.and_then(|value| parse_retry_after(value, SystemTime::now()))
        else {
            return;
        };
        let wait = wait.min(MAX_PAUSE);
        if wait.is_zero() {
            return;
        }
        let origin = url.origin().ascii_serialization();
        let Ok(origin_url) = Url::parse(&origin) else {
            return;
        };
        let pause = Pause {
            until: Instant::now() + wait,
            until_utc: Utc::now() + wait,
            origin_url,
        };
        let quotas = self.plugin(plugin);
        let mut state = quotas.lock();
        let longer = state
            .pauses
            .get(&origin)
            .is_none_or(|current| current.until < pause.until);
        if longer {
            tracing::warn!(
                plugin.name = %plugin,
                origin = %origin,
                pause_ms = wait.as_millis() as u64,
                "upstream returned 429; pausing requests to the origin"
            );
            state.pauses.insert(origin, pause);
        }
    }

    /// Returns the state of every plugin that has quota rules or a pause,
    /// in plugin name order.
    pub fn status(&self) -> Vec<PluginQuotaStatus> {
        let plugins: Vec<Arc<PluginQuotas>> = self.read_plugins().values().cloned().collect();
        plugins
            .iter()
            .map(|quotas| quotas.status(Instant::now(), Utc::now()))
            .filter(|status| !status.rules.is_empty() || !status.pauses.is_empty())
            .collect()
    }

    /// Returns, for every plugin in the registry, how many requests
    /// waited for admission and how long they waited in all, in plugin
    /// name order. The totals count from the creation of this registry.
    pub fn wait_totals(&self) -> Vec<QuotaWaitTotals> {
        self.read_plugins()
            .values()
            .map(|quotas| QuotaWaitTotals {
                plugin: quotas.name.clone(),
                waits: quotas.waits.count.load(Ordering::Relaxed),
                wait_seconds: Duration::from_nanos(quotas.waits.nanos.load(Ordering::Relaxed))
                    .as_secs_f64(),
            })
            .collect()
    }

    fn plugin(&self, name: &str) -> Arc<PluginQuotas> {
        if let Some(quotas) = self.read_plugins().get(name) {
            return quotas.clone();
        }
        self.write_plugins()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(PluginQuotas::new(
                    name,
                    Vec::new(),
                    Vec::new(),
                    BTreeMap::new(),
                ))
            })
            .clone()
    }

    fn read_plugins(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<PluginQuotas>>> {
        self.plugins.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_plugins(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<PluginQuotas>>> {
        self.plugins.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// One plugin's rules and their live state.
struct PluginQuotas {
    name: String,
    rules: Vec<CheckedRule>,
    state: Mutex<PluginState>,
    /// Signalled when a request in flight finishes.
    changed: Notify,
    /// Shared with the registration this one replaced, if any.
    waits: Arc<WaitCounters>,
}

/// Requests that waited for admission, and their waits in nanoseconds.
#[derive(Default)]
struct WaitCounters {
    count: AtomicU64,
    nanos: AtomicU64,
}

/// Adds one request's wait to [`WaitCounters`] when dropped, if the
/// request waited at all.
struct WaitTimer<'a> {
    counters: &'a WaitCounters,
    since: Option<Instant>,
}

impl<'a> WaitTimer<'a> {
    fn new(counters: &'a WaitCounters) -> Self {
        Self {
            counters,
            since: None,
        }
    }

    /// Marks the request as waiting from `now`, unless it already is.
    fn start(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }
}

impl Drop for WaitTimer<'_> {
    fn drop(&mut self) {
        let Some(since) = self.since else {
            return;
        };
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters.count.fetch_add(1, Ordering::Relaxed);
        self.counters.nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

struct PluginState {
    /// Parallel to [`PluginQuotas::rules`].
    rules: Vec<RuleState>,
    /// Pauses set by 429 responses, by origin (`scheme://host[:port]`).
    pauses: BTreeMap<String, Pause>,
    /// Requests waiting for admission.
    waiting: usize,
}

#[derive(Clone)]
struct Pause {
    until: Instant,
    until_utc: DateTime<Utc>,
    /// The origin as a URL, to match it against rule origins.
    origin_url: Url,
}

/// Live state of one rule.
struct RuleState {
    /// Tokens left and when they were last topped up.
    bucket: Option<(f64, Instant)>,
    daily: Option<PeriodCount>,
    monthly: Option<PeriodCount>,
    in_flight: u32,
}

/// The outcome of one admission attempt that did not admit.
enum Attempt {
    Refused(Refusal),
    Failed(HttpError),
}

/// A refused admission: the limits that refused, and how long the request
/// may wait.
struct Refusal {
    /// How long until every refusing limit with a known end admits.
    retry_after: Option<Duration>,
    /// Maximum wait the refusing limits allow, or `None` when one of them
    /// is set to `fail`.
    max_wait: Option<Duration>,
    reasons: Vec<String>,
}

impl Refusal {
    fn new() -> Self {
        Self {
            retry_after: None,
            max_wait: Some(Duration::MAX),
            reasons: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }

    /// Adds a refusing limit that ends after `retry_after` (when known)
    /// and allows waiting up to `max_wait` (`None` for `fail`).
    fn add(&mut self, reason: String, retry_after: Option<Duration>, max_wait: Option<Duration>) {
        self.reasons.push(reason);
        if let Some(after) = retry_after {
            self.retry_after = Some(self.retry_after.map_or(after, |known| known.max(after)));
        }
        self.max_wait = match (self.max_wait, max_wait) {
            (Some(current), Some(wait)) => Some(current.min(wait)),
            _ => None,
        };
    }

    /// When waiting must end, or `None` when the request may not wait.
    fn wait_deadline(&self, started: Instant, call_deadline: Option<Instant>) -> Option<Instant> {
        // Every `wait` rule sets a finite `max_wait_ms`, so the cap only
        // keeps the addition from overflowing.
        let own = started + self.max_wait?.min(MAX_PAUSE);
        Some(call_deadline.map_or(own, |call| call.min(own)))
    }

    fn into_error(self, plugin: &str, origin: &str) -> HttpError {
        tracing::debug!(
            plugin.name = %plugin,
            origin = %origin,
            reasons = %self.reasons.join("; "),
            "request refused by quota"
        );
        let retry_after_ms = self
            .retry_after
            .map(|after| after.as_millis().max(1) as u64);
        HttpError::RateLimited(retry_after_ms)
    }
}

/// A place in a plugin's wait queue, given back when dropped.
struct QueueSlot(Arc<PluginQuotas>);

impl QueueSlot {
    fn take(quotas: &Arc<PluginQuotas>) -> Option<Self> {
        let mut state = quotas.lock();
        if state.waiting >= MAX_WAITING {
            return None;
        }
        state.waiting += 1;
        Some(Self(quotas.clone()))
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.waiting = state.waiting.saturating_sub(1);
    }
}

impl PluginQuotas {
    fn new(
        name: &str,
        rules: Vec<CheckedRule>,
        states: Vec<RuleState>,
        pauses: BTreeMap<String, Pause>,
    ) -> Self {
        Self {
            name: name.to_string(),
            rules,
            state: Mutex::new(PluginState {
                rules: states,
                pauses,
                waiting: 0,
            }),
            changed: Notify::new(),
            waits: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PluginState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits the request now, or returns the refusal. Counts are stored
    /// before the request is admitted.
    fn try_admit(
        self: &Arc<Self>,
        counts: &CountStore,
        url: &Url,
        origin: &str,
    ) -> Result<Permit, Attempt> {
        self.try_admit_at(counts, url, origin, Instant::now(), Utc::now())
    }

    fn try_admit_at(
        self: &Arc<Self>,
        counts: &CountStore,
        url: &Url,
        origin: &str,
        now: Instant,
        utc: DateTime<Utc>,
    ) -> Result<Permit, Attempt> {
        let covering: Vec<usize> = (0..self.rules.len())
            .filter(|&index| self.rules[index].covers(url))
            .collect();
        let mut state = self.lock();

        let mut refusal = Refusal::new();
        self.check_pause(&mut state, &covering, origin, now, &mut refusal);
        for &index in &covering {
            let rule = &self.rules[index];
            state.rules[index].refill(rule, now);
            state.rules[index].check(rule, utc, &mut refusal);
        }
        if !refusal.is_empty() {
            return Err(Attempt::Refused(refusal));
        }

        self.store_counts(counts, &state, &covering, utc)?;
        for &index in &covering {
            state.rules[index].take(utc);
        }
        Ok(Permit {
            quotas: Some(self.clone()),
            rules: covering,
        })
    }

    /// Adds a refusal when `origin` is paused. The pause waits only when
    /// rules cover the request and all of them specify `wait`.
    fn check_pause(
        &self,
        state: &mut PluginState,
        covering: &[usize],
        origin: &str,
        now: Instant,
        refusal: &mut Refusal,
    ) {
        let Some(pause) = state.pauses.get(origin) else {
            return;
        };
        if pause.until <= now {
            state.pauses.remove(origin);
            return;
        }
        let mut max_wait = (!covering.is_empty()).then_some(Duration::MAX);
        for &index in covering {
            max_wait = max_wait
                .zip(self.rules[index].max_wait())
                .map(|(current, wait)| current.min(wait));
        }
        let reason = format!("{origin} is paused after a 429 response");
        refusal.add(reason, Some(pause.until - now), max_wait);
    }

    /// Stores the daily and monthly counts the request would reach.
    fn store_counts(
        &self,
        counts: &CountStore,
        state: &PluginState,
        covering: &[usize],
        utc: DateTime<Utc>,
    ) -> Result<(), Attempt> {
        for &index in covering {
            let rule = &self.rules[index];
            let live = &state.rules[index];
            let calendars = [
                (Calendar::Day, live.daily.as_ref()),
                (Calendar::Month, live.monthly.as_ref()),
            ];
            for (calendar, count) in calendars {
                let Some(count) = count else { continue };
                let next = PeriodCount {
                    period: calendar.period(utc),
                    used: count.used_in(calendar, utc) + 1,
                };
                counts
                    .save(&self.name, &rule.scope(), calendar, &next)
                    .map_err(|error| {
                        tracing::error!(
                            plugin.name = %self.name,
                            %error,
                            "cannot store a quota count; the request is not sent"
                        );
                        Attempt::Failed(HttpError::Transport(format!(
                            "the host could not record the request against its quota: {error}"
                        )))
                    })?;
            }
        }
        Ok(())
    }

    fn status(&self, now: Instant, utc: DateTime<Utc>) -> PluginQuotaStatus {
        let mut state = self.lock();
        state.pauses.retain(|_, pause| pause.until > now);
        let mut rules = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            state.rules[index].refill(rule, now);
            let paused_until = state
                .pauses
                .values()
                .filter(|pause| rule.covers(&pause.origin_url))
                .map(|pause| pause.until_utc)
                .max();
            rules.push(state.rules[index].status(rule, utc, paused_until));
        }
        let pauses = state
            .pauses
            .iter()
            .map(|(origin, pause)| PauseStatus {
                origin: origin.clone(),
                until: pause.until_utc,
            })
            .collect();
        PluginQuotaStatus {
            plugin: self.name.clone(),
            rules,
            pauses,
        }
    }
}

impl RuleState {
    /// Creates the state of `rule` with a full bucket and the stored counts
    /// of the current periods.
    fn load(
        counts: &CountStore,
        plugin: &str,
        rule: &CheckedRule,
        now: DateTime<Utc>,
    ) -> Result<Self, String> {
        let scope = rule.scope();
        let load = |enabled: bool, calendar: Calendar| -> Result<Option<PeriodCount>, String> {
            if !enabled {
                return Ok(None);
            }
            let stored = counts.load(plugin, &scope, calendar)?;
            Ok(Some(stored.unwrap_or_else(|| PeriodCount {
                period: calendar.period(now),
                used: 0,
            })))
        };
        Ok(Self {
            bucket: rule
                .rule
                .rate
                .map(|rate| (f64::from(rate.requests), Instant::now())),
            daily: load(rule.rule.daily.is_some(), Calendar::Day)?,
            monthly: load(rule.rule.monthly.is_some(), Calendar::Month)?,
            in_flight: 0,
        })
    }

    fn counts_calendar(rule: &CheckedRule) -> bool {
        rule.rule.daily.is_some() || rule.rule.monthly.is_some()
    }

    /// Adds the tokens earned since the last top-up, up to the bucket size.
    fn refill(&mut self, rule: &CheckedRule, now: Instant) {
        let (Some((tokens, refilled)), Some(rate)) = (&mut self.bucket, rule.rule.rate) else {
            return;
        };
        // A caller may have read the clock before another took the lock and
        // refilled at a later instant. Moving `refilled` back would credit
        // that interval twice.
        if now <= *refilled {
            return;
        }
        let earned =
            now.saturating_duration_since(*refilled).as_secs_f64() * rate.tokens_per_second();
        *tokens = (*tokens + earned).min(f64::from(rate.requests));
        *refilled = now;
    }

    /// Adds a refusal for each limit of `rule` that is used up.
    fn check(&self, rule: &CheckedRule, utc: DateTime<Utc>, refusal: &mut Refusal) {
        let max_wait = rule.max_wait();
        let scope = rule.scope();
        if let (Some((tokens, _)), Some(rate)) = (self.bucket, rule.rule.rate)
            && tokens < 1.0
        {
            let wait = Duration::from_secs_f64((1.0 - tokens) / rate.tokens_per_second());
            let reason = format!(
                "rate of {} per {} s for {scope}",
                rate.requests, rate.per_seconds
            );
            refusal.add(reason, Some(wait), max_wait);
        }
        let calendars = [
            (Calendar::Day, &self.daily, rule.rule.daily),
            (Calendar::Month, &self.monthly, rule.rule.monthly),
        ];
        for (calendar, count, allowed) in calendars {
            let (Some(count), Some(allowed)) = (count, allowed) else {
                continue;
            };
            if count.used_in(calendar, utc) >= allowed {
                let wait = (calendar.next_start(utc) - utc)
                    .to_std()
                    .unwrap_or_default();
                let reason = format!("{allowed} requests per {calendar:?} for {scope}");
                refusal.add(reason, Some(wait), max_wait);
            }
        }
        if let Some(allowed) = rule.rule.concurrency
            && self.in_flight >= allowed
        {
            let reason = format!("{allowed} requests in flight for {scope}");
            refusal.add(reason, None, max_wait);
        }
    }

    /// Takes what one admitted request uses.
    fn take(&mut self, utc: DateTime<Utc>) {
        if let Some((tokens, _)) = &mut self.bucket {
            *tokens -= 1.0;
        }
        for (calendar, count) in [
            (Calendar::Day, &mut self.daily),
            (Calendar::Month, &mut self.monthly),
        ] {
            if let Some(count) = count {
                *count = PeriodCount {
                    period: calendar.period(utc),
                    used: count.used_in(calendar, utc) + 1,
                };
            }
        }
        self.in_flight += 1;
    }

    fn status(
        &self,
        rule: &CheckedRule,
        utc: DateTime<Utc>,
        paused_until: Option<DateTime<Utc>>,
    ) -> RuleStatus {
        let count = |calendar: Calendar, count: &Option<PeriodCount>, allowed: Option<u64>| {
            Some(CountStatus {
                period: calendar.period(utc),
                used: count.as_ref()?.used_in(calendar, utc),
                allowed: allowed?,
            })
        };
        RuleStatus {
            origin: rule.origin.as_ref().map(ToString::to_string),
            on_exceed: rule.rule.on_exceed,
            max_wait_ms: rule.rule.max_wait_ms,
            rate: rule.rule.rate.map(|rate| RateStatus {
                requests: rate.requests,
                per_seconds: rate.per_seconds,
                tokens: self.bucket.map_or(0.0, |(tokens, _)| tokens),
            }),
            daily: count(Calendar::Day, &self.daily, rule.rule.daily),
            monthly: count(Calendar::Month, &self.monthly, rule.rule.monthly),
            concurrency: rule.rule.concurrency,
            in_flight: self.in_flight,
            paused_until,
        }
    }
}

/// Parses a `Retry-After` value: whole seconds, or an HTTP date, which
/// counts from `now`. A date in the past gives zero.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

/// Quota state of one plugin, as `palisade quota` and `GET /v1/quotas`
/// show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginQuotaStatus {
    pub plugin: String,
    pub rules: Vec<RuleStatus>,
    /// Origins paused by a 429 response, whether or not a rule covers them.
    pub pauses: Vec<PauseStatus>,
}

/// State of one rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleStatus {
    /// Origin pattern in normal form; `None` for a plugin-wide rule.
    pub origin: Option<String>,
    pub on_exceed: OnExceed,
    pub max_wait_ms: Option<u64>,
    pub rate: Option<RateStatus>,
    pub daily: Option<CountStatus>,
    pub monthly: Option<CountStatus>,
    /// Allowed requests in flight, when the rule limits them.
    pub concurrency: Option<u32>,
    /// Requests the rule covers that are in flight now.
    pub in_flight: u32,
    /// End of the latest pause of an origin the rule covers.
    pub paused_until: Option<DateTime<Utc>>,
}

/// A token bucket and the tokens in it now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateStatus {
    pub requests: u32,
    pub per_seconds: u64,
    pub tokens: f64,
}

/// A daily or monthly count in the current period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountStatus {
    /// The UTC day (`2026-05-04`) or month (`2026-05`).
    pub period: String,
    pub used: u64,
    pub allowed: u64,
}

/// Requests of one plugin that waited for quota admission, whatever the
/// outcome: admitted, refused when the wait ran out, or ended with their
/// call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuotaWaitTotals {
    pub plugin: String,
    /// Requests that waited.
    pub waits: u64,
    /// Time those requests waited, in all.
    pub wait_seconds: f64,
}

/// A pause of one origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseStatus {
    /// `scheme://host[:port]`.
    pub origin: String,
    pub until: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap as Map;

    use super::*;
    use crate::policy::Grant;

    const ORIGIN: &str = "https://api.example.com";

    /// Key-value store in memory, for counts that outlive one registry.
    #[derive(Default)]
    struct MemoryKv(Mutex<Map<(String, String), Vec<u8>>>);

    impl KeyValueStore for MemoryKv {
        fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
            let entries = self.0.lock().unwrap();
            Ok(entries.get(&(namespace.into(), key.into())).cloned())
        }

        fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), String> {
            let mut entries = self.0.lock().unwrap();
            entries.insert((namespace.into(), key.into()), value.to_vec());
            Ok(())
        }

        fn delete(&self, namespace: &str, key: &str) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .remove(&(namespace.into(), key.into()));
            Ok(())
        }

        fn list_keys(
            &self,
            namespace: &str,
            prefix: &str,
            limit: usize,
        ) -> Result<Vec<String>, String> {
            let entries = self.0.lock().unwrap();
            let keys = entries
                .keys()
                .filter(|(space, key)| space == namespace && key.starts_with(prefix))
                .map(|(_, key)| key.clone())
                .take(limit)
                .collect();
            Ok(keys)
        }
    }

    /// Key-value store whose writes fail.
    struct BrokenKv;

    impl KeyValueStore for BrokenKv {
        fn get(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(None)
        }

        fn set(&self, _: &str, _: &str, _: &[u8]) -> Result<(), String> {
            Err("disk full".into())
        }

        fn delete(&self, _: &str, _: &str) -> Result<(), String> {
            Err("disk full".into())
        }

        fn list_keys(&self, _: &str, _: &str, _: usize) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
    }

    fn policy(rules: &str) -> Policy {
        #[derive(Deserialize)]
        struct Rules {
            quotas: Vec<QuotaRule>,
        }
        let rules: Rules = toml::from_str(rules).unwrap();
        Policy::new(Grant {
            http_origins: vec![ORIGIN.into(), "https://other.example.com".into()],
            quotas: rules.quotas,
            ..Grant::default()
        })
        .unwrap()
    }

    fn registry(kv: Option<Arc<dyn KeyValueStore>>, rules: &str) -> Quotas {
        let quotas = Quotas::new(kv);
        quotas.register("plugin", &policy(rules)).unwrap();
        quotas
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    /// Tries to admit a request to `target` at the given times.
    fn attempt(
        quotas: &Quotas,
        target: &str,
        now: Instant,
        utc: DateTime<Utc>,
    ) -> Result<Permit, Attempt> {
        let plugin = quotas.plugin("plugin");
        let target = url(target);
        let origin = target.origin().ascii_serialization();
        plugin.try_admit_at(&quotas.counts, &target, &origin, now, utc)
    }

    fn refusal(result: Result<Permit, Attempt>) -> Refusal {
        match result {
            Ok(_) => panic!("the request was admitted"),
            Err(Attempt::Failed(error)) => panic!("the attempt failed: {error:?}"),
            Err(Attempt::Refused(refusal)) => refusal,
        }
    }

    #[test]
    fn bucket_refills_over_its_window() {
        let quotas = registry(
            None,
            "[[quotas]]\nrate = { requests = 2, per_seconds = 10 }",
        );
        let start = Instant::now();
        let utc = Utc::now();
        let target = "https://api.example.com/x";

        assert!(attempt(&quotas, target, start, utc).is_ok());
        assert!(attempt(&quotas, target, start, utc).is_ok());
        let refused = refusal(attempt(&quotas, target, start, utc));
        assert_eq!(refused.retry_after, Some(Duration::from_secs(5)));
        assert_eq!(refused.max_wait, None, "a `fail` rule allowed a wait");

        let later = start + Duration::from_secs(5);
        assert!(attempt(&quotas, target, later, utc).is_ok());
        assert!(attempt(&quotas, target, later, utc).is_err());
    }

    #[test]
    fn refused_request_takes_nothing_from_other_rules() {
        let rules = "[[quotas]]\nrate = { requests = 5, per_seconds = 60 }\n\
                     [[quotas]]\norigin = \"https://api.example.com\"\ndaily = 1";
        let quotas = registry(None, rules);
        let now = Instant::now();
        let utc = at("2026-05-04T12:00:00Z");

        assert!(attempt(&quotas, "https://api.example.com/a", now, utc).is_ok());
        for _ in 0..3 {
            let refused = refusal(attempt(&quotas, "https://api.example.com/b", now, utc));
            assert_eq!(refused.retry_after, Some(Duration::from_secs(12 * 3600)));
        }
        // The plugin-wide bucket gave one token, to the admitted request.
        let status = quotas.status();
        let tokens = status[0].rules[0].rate.as_ref().unwrap().tokens;
        assert!((3.9..4.1).contains(&tokens), "{tokens} tokens left");

        // The other origin has no daily rule.
        assert!(attempt(&quotas, "https://other.example.com/", now, utc).is_ok());
    }

    #[test]
    fn daily_count_restarts_each_utc_day() {
        let quotas = registry(None, "[[quotas]]\ndaily = 2\nmonthly = 3");
        let now = Instant::now();
        let target = "https://api.example.com/";
        let day_one = at("2026-05-04T23:59:00Z");
        let day_two = at("2026-05-05T00:00:01Z");

        assert!(attempt(&quotas, target, now, day_one).is_ok());
        assert!(attempt(&quotas, target, now, day_one).is_ok());
        let refused = refusal(attempt(&quotas, target, now, day_one));
        assert_eq!(refused.retry_after, Some(Duration::from_secs(60)));

        assert!(attempt(&quotas, target, now, day_two).is_ok());
        // The month allows 3, so the fourth request of May waits for June.
        let refused = refusal(attempt(&quotas, target, now, day_two));
        let june = (at("2026-06-01T00:00:00Z") - day_two).to_std().unwrap();
        assert_eq!(refused.retry_after, Some(june));
    }

    #[test]
    fn counts_survive_a_new_registry() {
        let kv: Arc<dyn KeyValueStore> = Arc::new(MemoryKv::default());
        let rules = "[[quotas]]\norigin = \"https://api.example.com\"\ndaily = 2";
        let utc = Utc::now();
        let now = Instant::now();
        let first = registry(Some(kv.clone()), rules);
        assert!(attempt(&first, "https://api.example.com/", now, utc).is_ok());
        assert!(attempt(&first, "https://api.example.com/", now, utc).is_ok());

        let second = registry(Some(kv.clone()), rules);
        assert!(attempt(&second, "https://api.example.com/", now, utc).is_err());
        let keys = kv.list_keys(QUOTA_NAMESPACE, "", 10).unwrap();
        assert_eq!(keys, ["plugin https://api.example.com:443 day"]);
    }

    #[test]
    fn unstorable_count_fails_the_request() {
        let kv: Arc<dyn KeyValueStore> = Arc::new(BrokenKv);
        let quotas = registry(Some(kv), "[[quotas]]\ndaily = 2");
        let result = attempt(
            &quotas,
            "https://api.example.com/",
            Instant::now(),
            Utc::now(),
        );
        match result {
            Err(Attempt::Failed(HttpError::Transport(message))) => {
                assert!(message.contains("disk full"), "{message}");
            }
            Err(Attempt::Failed(other)) => panic!("failed with {other:?}"),
            Err(Attempt::Refused(_)) => panic!("the request was refused"),
            Ok(_) => panic!("the request was admitted"),
        }
        let status = quotas.status();
        let daily = status[0].rules[0].daily.as_ref().unwrap();
        assert_eq!(daily.used, 0, "a request that was not sent was counted");
    }

    #[test]
    fn permit_holds_a_concurrency_slot() {
        let rules = "[[quotas]]\nconcurrency = 1\non_exceed = \"wait\"\nmax_wait_ms = 100";
        let quotas = registry(None, rules);
        let now = Instant::now();
        let utc = Utc::now();
        let target = "https://api.example.com/";

        let Ok(permit) = attempt(&quotas, target, now, utc) else {
            panic!("the first request was not admitted");
        };
        let refused = refusal(attempt(&quotas, target, now, utc));
        assert_eq!(refused.retry_after, None);
        assert_eq!(refused.max_wait, Some(Duration::from_millis(100)));
        assert_eq!(quotas.status()[0].rules[0].in_flight, 1);

        drop(permit);
        assert_eq!(quotas.status()[0].rules[0].in_flight, 0);
        assert!(attempt(&quotas, target, now, utc).is_ok());
    }

    #[test]
    fn pause_covers_one_origin_and_follows_the_rules() {
        let rules = "[[quotas]]\norigin = \"https://api.example.com\"\nconcurrency = 5\n\
                     on_exceed = \"wait\"\nmax_wait_ms = 3000";
        let quotas = registry(None, rules);
        let paused = url("https://api.example.com/a");
        quotas.note_response("plugin", &paused, 429, Some("2"));
        let now = Instant::now();
        let utc = Utc::now();

        let refused = refusal(attempt(&quotas, "https://api.example.com/b", now, utc));
        let retry_after = refused.retry_after.unwrap();
        assert!(retry_after <= Duration::from_secs(2), "{retry_after:?}");
        assert!(retry_after > Duration::from_secs(1), "{retry_after:?}");
        assert_eq!(refused.max_wait, Some(Duration::from_secs(3)));

        // Another origin, covered by no rule, is not paused.
        assert!(attempt(&quotas, "https://other.example.com/", now, utc).is_ok());
        // After the pause, the origin is admitted again.
        let after = now + Duration::from_secs(3);
        assert!(attempt(&quotas, "https://api.example.com/c", after, utc).is_ok());
    }

    #[test]
    fn pause_without_a_rule_fails() {
        let quotas = Quotas::new(None);
        let target = url("https://api.example.com/");
        quotas.note_response("plugin", &target, 429, Some("1"));
        let refused = refusal(attempt(
            &quotas,
            "https://api.example.com/",
            Instant::now(),
            Utc::now(),
        ));
        assert_eq!(refused.max_wait, None);

        let status = quotas.status();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].pauses[0].origin, "https://api.example.com");
    }

    #[test]
    fn responses_other_than_429_set_no_pause() {
        let quotas = Quotas::new(None);
        let target = url("https://api.example.com/");
        quotas.note_response("plugin", &target, 503, Some("30"));
        quotas.note_response("plugin", &target, 429, None);
        quotas.note_response("plugin", &target, 429, Some("soon"));
        quotas.note_response("plugin", &target, 429, Some("0"));
        assert!(
            attempt(
                &quotas,
                "https://api.example.com/",
                Instant::now(),
                Utc::now()
            )
            .is_ok()
        );
        assert!(quotas.status().is_empty());
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        let cases = [
            ("120", Some(Duration::from_secs(120))),
            (" 1 ", Some(Duration::from_secs(1))),
            (
                "Wed, 21 Oct 2026 07:28:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Wed, 21 Oct 2026 07:00:00 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("1.5", None),
            ("tomorrow", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        }
    }

    #[test]
    fn long_retry_after_is_capped() {
        let quotas = Quotas::new(None);
        let target = url("https://api.example.com/");
        quotas.note_response("plugin", &target, 429, Some("999999999"));
        let refused = refusal(attempt(
            &quotas,
            "https://api.example.com/",
            Instant::now(),
            Utc::now(),
        ));
        assert!(refused.retry_after.unwrap() <= MAX_PAUSE);
    }

    #[tokio::test]
    async fn waiting_request_is_admitted_when_a_slot_frees() {
        let rules = "[[quotas]]\nconcurrency = 1\non_exceed = \"wait\"\nmax_wait_ms = 5000";
        let quotas = Arc::new(registry(None, rules));
        let target = url("https://api.example.com/");
        let first = quotas.admit("plugin", &target, None).await.unwrap();

        let waiter = {
            let quotas = quotas.clone();
            let target = target.clone();
            tokio::spawn(async move { quotas.admit("plugin", &target, None).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the second request did not wait");
        drop(first);
        let admitted = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        assert!(
            matches!(admitted, Ok(Ok(Ok(())))),
            "the waiting request was not admitted after the slot freed"
        );
        let totals = quotas.wait_totals();
        assert_eq!(totals.len(), 1, "{totals:?}");
        assert_eq!(totals[0].plugin, "plugin");
        assert_eq!(totals[0].waits, 1, "only the second request waited");
        assert!(totals[0].wait_seconds > 0.0, "{totals:?}");

        // New rules for the plugin keep its totals.
        quotas
            .register("plugin", &policy("[[quotas]]\nconcurrency = 2"))
            .unwrap();
        assert_eq!(quotas.wait_totals()[0].waits, 1);
    }

    #[tokio::test]
    async fn wait_ends_at_the_call_deadline() {
        let rules = "[[quotas]]\nconcurrency = 1\non_exceed = \"wait\"\nmax_wait_ms = 60000";
        let quotas = registry(None, rules);
        let target = url("https://api.example.com/");
        let _permit = quotas.admit("plugin", &target, None).await.unwrap();

        let started = Instant::now();
        let deadline = started + Duration::from_millis(200);
        let result = quotas.admit("plugin", &target, Some(deadline)).await;
        assert!(matches!(result, Err(HttpError::RateLimited(None))));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(
            quotas.wait_totals()[0].waits,
            1,
            "a refused request that waited is counted"
        );
    }

    #[tokio::test]
    async fn wait_of_a_cancelled_request_is_counted() {
        let rules = "[[quotas]]\nconcurrency = 1\non_exceed = \"wait\"\nmax_wait_ms = 60000";
        let quotas = registry(None, rules);
        let target = url("https://api.example.com/");
        let _permit = quotas.admit("plugin", &target, None).await.unwrap();

        let second = quotas.admit("plugin", &target, None);
        let cancelled = tokio::time::timeout(Duration::from_millis(50), second).await;
        assert!(cancelled.is_err(), "the second request did not wait");
        assert_eq!(quotas.wait_totals()[0].waits, 1);
    }

    #[tokio::test]
    async fn known_wait_past_the_limit_fails_at_once() {
        let rules = "[[quotas]]\nrate = { requests = 1, per_seconds = 60 }\n\
                     on_exceed = \"wait\"\nmax_wait_ms = 1000";
        let quotas = registry(None, rules);
        let target = url("https://api.example.com/");
        drop(quotas.admit("plugin", &target, None).await.unwrap());

        let started = Instant::now();
        let result = quotas.admit("plugin", &target, None).await;
        let Err(HttpError::RateLimited(Some(retry_after_ms))) = result else {
            panic!("the second request was not rate limited");
        };
        assert!(
            (59_000..=60_000).contains(&retry_after_ms),
            "{retry_after_ms}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the request waited"
        );
        let totals = quotas.wait_totals();
        assert_eq!(totals[0].waits, 0, "{totals:?}");
        assert_eq!(totals[0].wait_seconds, 0.0, "{totals:?}");
    }
}
