//! Prometheus metrics of the daemon, served at `GET /metrics` in the text
//! exposition format, version 0.0.4.
//!
//! One process-wide [`Metrics`] registry, [`global`], counts runs, plugin
//! calls, accepted alerts and plugin swaps as they happen. Recording a
//! step takes one short mutex critical section, and counting alerts one
//! atomic add. Values that other parts own (the run queue, the active
//! plugin versions and the runtime's quota waits) are read into a
//! [`LiveState`] when the page is rendered.
//!
//! Label values are plugin, action and playbook names, versions, error
//! kinds and run statuses, so the number of series is bounded by what is
//! installed and configured. A series is found by a linear scan, which
//! stays cheap at that size.

use std::fmt::{Display, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_engine::RunObserver;
use palisade_model::RunRecord;
use palisade_runtime::{QuotaWaitTotals, Runtime};

/// `Content-Type` of the rendered page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the buckets of `palisade_step_duration_seconds`, in
/// seconds, from 50 µs to 30 s. Longer calls count only in `+Inf`.
pub const STEP_DURATION_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

static GLOBAL: Metrics = Metrics::new();

/// Returns the registry of this process.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Counters and histograms recorded as the daemon works.
pub struct Metrics {
    alerts_ingested: AtomicU64,
    series: Mutex<Series>,
}

/// Every labelled series, behind one lock.
#[derive(Clone)]
struct Series {
    /// By playbook.
    runs_started: Labelled<1, u64>,
    /// By playbook and status.
    runs_finished: Labelled<2, u64>,
    /// By plugin and action.
    step_durations: Labelled<2, Histogram>,
    /// By plugin, version and outcome.
    plugin_calls: Labelled<3, u64>,
    /// By plugin and error kind.
    plugin_errors: Labelled<2, u64>,
    /// By plugin.
    plugin_swaps: Labelled<1, u64>,
}

/// Values by their `N` label values, in the order first recorded.
#[derive(Clone)]
struct Labelled<const N: usize, V> {
    entries: Vec<([String; N], V)>,
}

impl<const N: usize, V: Default> Labelled<N, V> {
    const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Returns the value of `labels`, created at its default when new.
    fn entry(&mut self, labels: [&str; N]) -> &mut V {
        let position = self
            .entries
            .iter()
            .position(|(known, _)| known.iter().zip(labels).all(|(a, b)| a == b));
        let index = match position {
            Some(index) => index,
            None => {
                self.entries
                    .push((labels.map(str::to_string), V::default()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[index].1
    }

    /// Returns the label values and values sorted by label values, for
    /// output that does not depend on the order things happened in.
    fn sorted(&self) -> Vec<([&str; N], &V)> {
        let mut entries: Vec<([&str; N], &V)> = self
            .entries
            .iter()
            .map(|(labels, value)| (labels.each_ref().map(String::as_str), value))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }
}

/// Observations counted by [`STEP_DURATION_BUCKETS`]. `buckets[i]` counts
/// the observations in bucket `i` alone; the output adds them up.
#[derive(Clone, Default)]
struct Histogram {
    buckets: [u64; STEP_DURATION_BUCKETS.len()],
    count: u64,
    /// In nanoseconds, so sums of whole microseconds print exactly.
    sum_nanos: u64,
}

impl Histogram {
    fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        // A bucket's bound is inclusive (`le`), as the format defines it.
        if let Some(index) = STEP_DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
        {
            self.buckets[index] += 1;
        }
        self.count += 1;
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }
}

/// One plugin call of a playbook step, as [`Metrics::record_plugin_call`]
/// takes it.
#[derive(Clone, Copy, Debug)]
pub struct PluginCall<'a> {
    pub plugin: &'a str,
    pub action: &'a str,
    /// Version that ran; empty when no version was found.
    pub version: &'a str,
    /// Time of the call, the wait for a concurrent-call slot included.
    pub duration: Duration,
    /// `CallError::kind()` of a failed call.
    pub error_kind: Option<&'a str>,
}

/// Values read from the running daemon when the page is rendered.
#[derive(Clone, Debug, Default)]
pub struct LiveState {
    /// Work items queued for the run workers.
    pub queue_depth: usize,
    /// Name and active version of every loaded plugin.
    pub active_plugins: Vec<(String, String)>,
    pub quota_waits: Vec<QuotaWaitTotals>,
}

impl LiveState {
    /// Reads the active plugin versions and quota waits of `runtime`.
    pub fn read(runtime: &Runtime, queue_depth: usize) -> Self {
        let active_plugins = runtime
            .plugins()
            .iter()
            .map(|plugin| (plugin.info.name.clone(), plugin.info.version.clone()))
            .collect();
        Self {
            queue_depth,
            active_plugins,
            quota_waits: runtime.quotas().wait_totals(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates an empty registry. The daemon uses [`global`]; tests create
    /// their own.
    pub const fn new() -> Self {
        Self {
            alerts_ingested: AtomicU64::new(0),
            series: Mutex::new(Series {
                runs_started: Labelled::new(),
                runs_finished: Labelled::new(),
                step_durations: Labelled::new(),
                plugin_calls: Labelled::new(),
                plugin_errors: Labelled::new(),
                plugin_swaps: Labelled::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        // Every update leaves the series consistent, so a panic elsewhere
        // while the lock was held leaves nothing half-written.
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record_run_started(&self, playbook: &str) {
        *self.lock().runs_started.entry([playbook]) += 1;
    }

    /// Counts a drive of a run of `playbook` that stopped in `status`.
    pub fn record_run_stopped(&self, playbook: &str, status: &str) {
        *self.lock().runs_finished.entry([playbook, status]) += 1;
    }

    /// Counts a plugin call and its duration, and its error kind when it
    /// failed.
    pub fn record_plugin_call(&self, call: &PluginCall<'_>) {
        let outcome = if call.error_kind.is_some() {
            "error"
        } else {
            "ok"
        };
        let mut series = self.lock();
        series
            .step_durations
            .entry([call.plugin, call.action])
            .observe(call.duration);
        *series
            .plugin_calls
            .entry([call.plugin, call.version, outcome]) += 1;
        if let Some(kind) = call.error_kind {
            *series.plugin_errors.entry([call.plugin, kind]) += 1;
        }
    }

    pub fn record_alerts_ingested(&self, count: usize) {
        self.alerts_ingested
            .fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Counts a version of `plugin` made active by an install, activation
    /// or rollback.
    pub fn record_plugin_swap(&self, plugin: &str) {
        *self.lock().plugin_swaps.entry([plugin]) += 1;
    }

    /// Renders every metric family in the text exposition format, with
    /// `live` for the values read at scrape time.
    pub fn render(&self, live: &LiveState) -> String {
        // The lock is held only to copy the series, not while formatting.
        let series = self.lock().clone();
        let mut page = Exposition::default();

        page.family(
            "palisade_runs_started_total",
            "counter",
            "Runs started, sub-playbook runs included, by playbook.",
        );
        for ([playbook], count) in series.runs_started.sorted() {
            page.sample(
                "palisade_runs_started_total",
                &[("playbook", playbook)],
                count,
            );
        }

        page.family(
            "palisade_runs_finished_total",
            "counter",
            "Drives of a run that stopped, by playbook and the status the run reached: succeeded or failed when it ended, waiting or parked when it continues later.",
        );
        for ([playbook, status], count) in series.runs_finished.sorted() {
            page.sample(
                "palisade_runs_finished_total",
                &[("playbook", playbook), ("status", status)],
                count,
            );
        }

        render_step_durations(&mut page, &series.step_durations);

        page.family(
            "palisade_plugin_calls_total",
            "counter",
            "Plugin calls of playbook steps, by plugin, version and outcome (ok or error).",
        );
        for ([plugin, version, outcome], count) in series.plugin_calls.sorted() {
            let labels = [
                ("plugin", plugin),
                ("version", version),
                ("outcome", outcome),
            ];
            page.sample("palisade_plugin_calls_total", &labels, count);
        }

        page.family(
            "palisade_plugin_errors_total",
            "counter",
            "Failed plugin calls of playbook steps, by plugin and error kind, such as timeout or rate_limited.",
        );
        for ([plugin, kind], count) in series.plugin_errors.sorted() {
            let labels = [("plugin", plugin), ("kind", kind)];
            page.sample("palisade_plugin_errors_total", &labels, count);
        }

        render_quota_waits(&mut page, &live.quota_waits);

        page.family(
            "palisade_queue_depth",
            "gauge",
            "Work items queued for the run workers: new alerts and runs to continue.",
        );
        page.sample("palisade_queue_depth", &[], live.queue_depth);

        page.family(
            "palisade_alerts_ingested_total",
            "counter",
            "Alert records accepted over HTTP, duplicates included.",
        );
        let ingested = self.alerts_ingested.load(Ordering::Relaxed);
        page.sample("palisade_alerts_ingested_total", &[], ingested);

        page.family(
            "palisade_plugin_active_info",
            "gauge",
            "Active version of each loaded plugin; the value is always 1.",
        );
        let mut active: Vec<&(String, String)> = live.active_plugins.iter().collect();
        active.sort();
        for (plugin, version) in active {
            let labels = [("plugin", plugin.as_str()), ("version", version.as_str())];
            page.sample("palisade_plugin_active_info", &labels, 1);
        }

        page.family(
            "palisade_plugin_swaps_total",
            "counter",
            "Times a version of the plugin was made active by an install, activation or rollback.",
        );
        for ([plugin], count) in series.plugin_swaps.sorted() {
            page.sample("palisade_plugin_swaps_total", &[("plugin", plugin)], count);
        }
        page.text
    }
}

fn render_step_durations(page: &mut Exposition, durations: &Labelled<2, Histogram>) {
    const NAME: &str = "palisade_step_duration_seconds";
    page.family(
        NAME,
        "histogram",
        "Duration of the plugin calls of playbook steps, waits for a concurrent-call slot included, by plugin and action.",
    );
    for ([plugin, action], histogram) in durations.sorted() {
        let mut cumulative = 0;
        for (bound, count) in STEP_DURATION_BUCKETS.iter().zip(histogram.buckets) {
            cumulative += count;
            let bound = format_float(*bound);
            let labels = [("plugin", plugin), ("action", action), ("le", &bound)];
            page.sample(&format!("{NAME}_bucket"), &labels, cumulative);
        }
        let labels = [("plugin", plugin), ("action", action), ("le", "+Inf")];
        page.sample(&format!("{NAME}_bucket"), &labels, histogram.count);
        let labels = [("plugin", plugin), ("action", action)];
        page.sample(
            &format!("{NAME}_sum"),
            &labels,
            format_float(histogram.sum_nanos as f64 / 1e9),
        );
        page.sample(&format!("{NAME}_count"), &labels, histogram.count);
    }
}

fn render_quota_waits(page: &mut Exposition, totals: &[QuotaWaitTotals]) {
    page.family(
        "palisade_quota_waits_total",
        "counter",
        "Outbound requests of a plugin that waited for a quota permit (rate, count, concurrency or a 429 pause).",
    );
    for total in totals {
        let labels = [("plugin", total.plugin.as_str())];
        page.sample("palisade_quota_waits_total", &labels, total.waits);
    }
    page.family(
        "palisade_quota_wait_seconds_total",
        "counter",
        "Time outbound requests of a plugin waited for a quota permit, in all.",
    );
    for total in totals {
        let labels = [("plugin", total.plugin.as_str())];
        let seconds = format_float(total.wait_seconds);
        page.sample("palisade_quota_wait_seconds_total", &labels, seconds);
    }
}

/// Counts the runs the engine starts and the drives that stop, in
/// [`global`].
pub struct RunCounter;

impl RunObserver for RunCounter {
    fn run_started(&self, run: &RunRecord) {
        global().record_run_started(&run.playbook);
    }

    fn run_stopped(&self, run: &RunRecord) {
        global().record_run_stopped(&run.playbook, run.status.as_str());
    }
}

/// A page of the text exposition format being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// Writes the `# HELP` and `# TYPE` lines of family `name`.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = escape_help(help);
        // Writing to a `String` cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// Writes one sample line: `name{label="value",...} value`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label_value(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Escapes a label value as the format requires: `\` as `\\`, `"` as
/// `\"` and a line feed as `\n`.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Escapes `# HELP` text: `\` as `\\` and a line feed as `\n`.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Formats a sample value or bucket bound as the format reads it:
/// `+Inf`, `-Inf`, `NaN`, or a decimal number.
fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn call<'a>(
        plugin: &'a str,
        action: &'a str,
        micros: u64,
        error_kind: Option<&'a str>,
    ) -> PluginCall<'a> {
        PluginCall {
            plugin,
            action,
            version: "1.0.0",
            duration: Duration::from_micros(micros),
            error_kind,
        }
    }

    /// Returns the sample lines of `page` that start with `prefix`.
    fn lines_starting<'a>(page: &'a str, prefix: &str) -> Vec<&'a str> {
        page.lines()
            .filter(|line| line.starts_with(prefix))
            .collect()
    }

    #[test]
    fn label_values_are_escaped() {
        let cases = [
            ("plain", "plain"),
            ("back\\slash", "back\\\\slash"),
            ("a \"quote\"", "a \\\"quote\\\""),
            ("two\nlines", "two\\nlines"),
            ("\\\"\n", "\\\\\\\"\\n"),
            ("ünïcode", "ünïcode"),
        ];
        for (value, expected) in cases {
            assert_eq!(escape_label_value(value), expected, "value {value:?}");
        }
    }

    #[test]
    fn help_text_is_escaped() {
        assert_eq!(escape_help("a\\b\nc \"d\""), "a\\\\b\\nc \"d\"");
    }

    #[test]
    fn floats_use_the_format_spelling() {
        let cases = [
            (0.000_05, "0.00005"),
            (30.0, "30"),
            (1.5, "1.5"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for (value, expected) in cases {
            assert_eq!(format_float(value), expected, "value {value}");
        }
    }

    #[test]
    fn sample_line_escapes_its_labels() {
        let mut page = Exposition::default();
        page.sample("m_total", &[("plugin", "a\"b"), ("kind", "x\\y")], 3);
        page.sample("m_gauge", &[], 0);
        assert_eq!(
            page.text,
            "m_total{plugin=\"a\\\"b\",kind=\"x\\\\y\"} 3\nm_gauge 0\n"
        );
    }

    #[test]
    fn counters_render_by_label_order() {
        let metrics = Metrics::new();
        metrics.record_run_started("wazuh-triage");
        metrics.record_run_started("enrich-observable");
        metrics.record_run_started("wazuh-triage");
        metrics.record_run_stopped("wazuh-triage", "succeeded");
        metrics.record_alerts_ingested(5);
        metrics.record_plugin_swap("virustotal");
        let page = metrics.render(&LiveState {
            queue_depth: 7,
            active_plugins: vec![("noop".into(), "0.2.0".into())],
            quota_waits: Vec::new(),
        });

        assert_eq!(
            lines_starting(&page, "palisade_runs_started_total"),
            [
                "palisade_runs_started_total{playbook=\"enrich-observable\"} 1",
                "palisade_runs_started_total{playbook=\"wazuh-triage\"} 2",
            ]
        );
        assert_eq!(
            lines_starting(&page, "palisade_runs_finished_total"),
            ["palisade_runs_finished_total{playbook=\"wazuh-triage\",status=\"succeeded\"} 1"]
        );

        assert_eq!(
            lines_starting(&page, "palisade_alerts_ingested_total"),
            ["palisade_alerts_ingested_total 5"]
        );
        assert_eq!(
            lines_starting(&page, "palisade_queue_depth"),
            ["palisade_queue_depth 7"]
        );
        assert_eq!(
            lines_starting(&page, "palisade_plugin_active_info"),
            ["palisade_plugin_active_info{plugin=\"noop\",version=\"0.2.0\"} 1"]
        );
        assert_eq!(
            lines_starting(&page, "palisade_plugin_swaps_total"),
            ["palisade_plugin_swaps_total{plugin=\"virustotal\"} 1"]
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::new();
        // On a bound, inside a middle bucket, and past the last bound.
        metrics.record_plugin_call(&call("noop", "echo", 50, None));
        metrics.record_plugin_call(&call("noop", "echo", 700, Some("timeout")));
        metrics.record_plugin_call(&call("noop", "echo", 31_000_000, Some("timeout")));
        let page = metrics.render(&LiveState::default());

        let buckets: BTreeMap<String, u64> =
            lines_starting(&page, "palisade_step_duration_seconds_bucket")
                .into_iter()
                .map(|line| {
                    let (series, value) = line.rsplit_once(' ').unwrap();
                    let bound = series
                        .split("le=\"")
                        .nth(1)
                        .unwrap()
                        .trim_end_matches("\"}");
                    (bound.to_string(), value.parse().unwrap())
                })
                .collect();
        assert_eq!(buckets.len(), STEP_DURATION_BUCKETS.len() + 1, "{page}");
        assert_eq!(buckets["0.00005"], 1, "a call on a bound counts in it");
        assert_eq!(buckets["0.0005"], 1);
        assert_eq!(buckets["0.001"], 2);
        assert_eq!(buckets["30"], 2, "a call over 30 s counts only in +Inf");
        assert_eq!(buckets["+Inf"], 3);
        assert_eq!(
            lines_starting(&page, "palisade_step_duration_seconds_count"),
            ["palisade_step_duration_seconds_count{plugin=\"noop\",action=\"echo\"} 3"]
        );
        assert_eq!(
            lines_starting(&page, "palisade_step_duration_seconds_sum"),
            ["palisade_step_duration_seconds_sum{plugin=\"noop\",action=\"echo\"} 31.00075"]
        );
        assert_eq!(
            lines_starting(&page, "palisade_plugin_calls_total"),
            [
                "palisade_plugin_calls_total{plugin=\"noop\",version=\"1.0.0\",outcome=\"error\"} 2",
                "palisade_plugin_calls_total{plugin=\"noop\",version=\"1.0.0\",outcome=\"ok\"} 1",
            ]
        );
        assert_eq!(
            lines_starting(&page, "palisade_plugin_errors_total"),
            ["palisade_plugin_errors_total{plugin=\"noop\",kind=\"timeout\"} 2"]
        );
    }

    #[test]
    fn quota_waits_render_per_plugin() {
        let page = Metrics::new().render(&LiveState {
            queue_depth: 0,
            active_plugins: Vec::new(),
            quota_waits: vec![QuotaWaitTotals {
                plugin: "virustotal".into(),
                waits: 2,
                wait_seconds: 1.25,
            }],
        });
        assert_eq!(
            lines_starting(&page, "palisade_quota_wait"),
            [
                "palisade_quota_waits_total{plugin=\"virustotal\"} 2",
                "palisade_quota_wait_seconds_total{plugin=\"virustotal\"} 1.25",
            ]
        );
    }

    /// Every family is declared once with HELP and then TYPE, and every
    /// sample belongs to the family declared last.
    #[test]
    fn every_sample_follows_its_family_declaration() {
        let metrics = Metrics::new();
        metrics.record_run_started("p");
        metrics.record_plugin_call(&call("noop", "echo", 10, Some("trap")));
        let page = metrics.render(&LiveState {
            queue_depth: 1,
            active_plugins: vec![("noop".into(), "1.0.0".into())],
            quota_waits: vec![QuotaWaitTotals {
                plugin: "noop".into(),
                waits: 0,
                wait_seconds: 0.0,
            }],
        });
        let mut declared: Vec<(String, String)> = Vec::new();
        let mut help_of: Option<String> = None;
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').unwrap();
                assert!(
                    declared.iter().all(|(known, _)| known != name),
                    "{name} is declared twice"
                );
                help_of = Some(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(help_of.as_deref(), Some(name), "TYPE without HELP: {line}");
                declared.push((name.to_string(), kind.to_string()));
            } else {
                let (family, kind) = declared.last().expect("a sample before any TYPE");
                let name = line.split(['{', ' ']).next().unwrap();
                let belongs = match kind.as_str() {
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name == format!("{family}{suffix}")),
                    _ => name == family,
                };
                assert!(belongs, "sample {line:?} is not of family {family}");
            }
        }
        assert_eq!(declared.len(), 11, "{page}");
    }
}
