//! Observability of a real daemon on 127.0.0.1. `GET /metrics` parses as
//! the Prometheus text format, and its counters move by what the run
//! records and the API show: runs, plugin calls by version and outcome,
//! error kinds, quota waits, accepted alerts, active versions and swaps.
//! Only tokens with `read` may scrape it. With `--log-format json` every
//! line on standard error is a JSON object, and events inside a run carry
//! the run's and the step's span fields.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::daemon::{Daemon, client_with_token};
use support::{repo_root, start_virustotal_replay, write_config};

/// One sample line of a scrape.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: the samples, and the families with their `# TYPE`.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    families: BTreeMap<String, String>,
}

impl Scrape {
    /// Sum of the samples named `name` whose labels include `filter`.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                filter.iter().all(|(label, value)| {
                    sample.labels.get(*label).map(String::as_str) == Some(value)
                })
            })
            .map(|sample| sample.value)
            .sum()
    }

    /// Values of the samples named `name`, by the values of `keys`.
    fn by_labels(&self, name: &str, keys: &[&str]) -> BTreeMap<Vec<String>, f64> {
        let mut values = BTreeMap::new();
        for sample in self.samples.iter().filter(|sample| sample.name == name) {
            let key = keys
                .iter()
                .map(|key| sample.labels.get(*key).cloned().unwrap_or_default())
                .collect();
            *values.entry(key).or_insert(0.0) += sample.value;
        }
        values
    }
}

/// Parses a page of the text exposition format 0.0.4, failing on the first
/// line that does not fit it: every sample line is `name{labels} value`,
/// and every family has `# HELP` and then `# TYPE` before its samples.
fn parse_exposition(text: &str) -> Scrape {
    let mut helped = BTreeSet::new();
    let mut families = BTreeMap::new();
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(is_metric_name(name), "line {number}: bad name in {line:?}");
            assert!(!help.is_empty(), "line {number}: empty HELP");
            assert!(
                helped.insert(name.to_string()),
                "line {number}: second HELP for {name}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("line {number}: {line:?}"));
            assert!(
                helped.contains(name),
                "line {number}: TYPE before HELP for {name}"
            );
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "line {number}: unknown type {kind:?}"
            );
            let previous = families.insert(name.to_string(), kind.to_string());
            assert!(previous.is_none(), "line {number}: second TYPE for {name}");
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "line {number}: unexpected comment {line:?}"
        );
        assert!(!line.trim().is_empty(), "line {number}: empty line");
        let sample = parse_sample(line)
            .unwrap_or_else(|problem| panic!("line {number}: {problem}: {line:?}"));
        let family = family_of(&sample.name, &families).unwrap_or_else(|| {
            panic!(
                "line {number}: sample {} of no declared family",
                sample.name
            )
        });
        if families[&family] == "counter" {
            assert!(sample.value >= 0.0, "line {number}: negative counter");
        }
        samples.push(sample);
    }
    Scrape { samples, families }
}

/// Name of the declared family a sample belongs to: its own name, or for a
/// histogram's `_bucket`, `_sum` and `_count` the name without the suffix.
fn family_of(name: &str, families: &BTreeMap<String, String>) -> Option<String> {
    if families.contains_key(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (families.get(base)? == "histogram").then(|| base.to_string())
    })
}

fn is_metric_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && characters.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `name{label="value",...} value`, undoing the escapes of label
/// values (`\\`, `\"`, `\n`).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut characters = inner.char_indices().peekable();
        loop {
            let label_start = characters
                .peek()
                .map(|(index, _)| *index)
                .ok_or("unclosed labels")?;
            if inner[label_start..].starts_with('}') {
                rest = &inner[label_start + 1..];
                break;
            }
            let equals = inner[label_start..].find('=').ok_or("label without `=`")? + label_start;
            let label = &inner[label_start..equals];
            if !is_metric_name(label) || label.contains(':') {
                return Err(format!("bad label name {label:?}"));
            }
            while characters.peek().is_some_and(|(index, _)| *index <= equals) {
                characters.next();
            }
            if characters.next().map(|(_, c)| c) != Some('"') {
                return Err("label value without quotes".into());
            }
            let mut value = String::new();
            loop {
                match characters.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match characters.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("unknown escape \\{other}")),
                    },
                    '\n' => return Err("raw line feed in a label value".into()),
                    other => value.push(other),
                }
            }
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("label {label} given twice"));
            }
            match characters.peek().map(|(_, c)| *c) {
                Some(',') => {
                    characters.next();
                }
                Some('}') => {}
                _ => return Err("expected `,` or `}` after a label".into()),
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    if value.contains(' ') {
        return Err("more than one value (timestamps are not written)".into());
    }
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .map_err(|_| format!("bad value {number:?}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[test]
fn parser_rejects_malformed_lines() {
    let bad = [
        "# HELP m_total Help.\n# TYPE m_total counter\nm_total{a=\"x\"}\n",
        "# HELP m_total Help.\n# TYPE m_total counter\nm_total{a=x} 1\n",
        "# HELP m_total Help.\n# TYPE m_total counter\nm_total{a=\"\\q\"} 1\n",
        "# TYPE m_total counter\nm_total 1\n",
        "other_total 1\n",
    ];
    for page in bad {
        let parsed = std::panic::catch_unwind(|| parse_exposition(page));
        assert!(parsed.is_err(), "accepted {page:?}");
    }
    let good =
        "# HELP m_total Help.\n# TYPE m_total counter\nm_total{a=\"x\\\"y\\\\z\\n\",b=\"\"} 2\n";
    let scrape = parse_exposition(good);
    assert_eq!(scrape.samples[0].labels["a"], "x\"y\\z\n");
    assert_eq!(scrape.samples[0].value, 2.0);
}

/// Fetches `/metrics` as the holder of `token`, checks the content type
/// and parses the page.
async fn scrape(daemon: &Daemon, token: &str) -> Scrape {
    let response = client_with_token(token)
        .get(format!("{}/metrics", daemon.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse_exposition(&response.text().await.unwrap())
}

/// Waits until `expected` runs on alerts exist and no run, sub-playbook
/// runs included, is running or waiting; returns every run.
async fn wait_for_runs(daemon: &Daemon, expected: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let runs = daemon.get("/v1/runs").await.as_array().unwrap().clone();
        let top_level = runs
            .iter()
            .filter(|run| run.get("parent").is_none())
            .count();
        let settled = runs
            .iter()
            .all(|run| run["status"] == "succeeded" || run["status"] == "failed");
        if top_level >= expected && settled {
            return runs;
        }
        assert!(Instant::now() < deadline, "runs did not finish: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wazuh_samples() -> String {
    std::fs::read_to_string(repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl")).unwrap()
}

/// Counts the step records that called a plugin (those with the version
/// that ran), by the labels `key` gives each.
fn plugin_steps(runs: &[Value], key: impl Fn(&Value) -> Vec<String>) -> BTreeMap<Vec<String>, f64> {
    let mut counts = BTreeMap::new();
    for run in runs {
        for step in run["steps"].as_array().unwrap() {
            if step["plugin_version"].is_string() {
                *counts.entry(key(step)).or_insert(0.0) += 1.0;
            }
        }
    }
    counts
}

fn plugin_and_action(step: &Value) -> (String, String) {
    let uses = step["uses"].as_str().unwrap();
    let (plugin, action) = uses.split_once('.').unwrap();
    (plugin.to_string(), action.to_string())
}

/// `before` subtracted from `after`, key by key, leaving out zeros.
fn delta(
    after: BTreeMap<Vec<String>, f64>,
    before: &BTreeMap<Vec<String>, f64>,
) -> BTreeMap<Vec<String>, f64> {
    after
        .into_iter()
        .map(|(key, value)| {
            let old = before.get(&key).copied().unwrap_or(0.0);
            (key, value - old)
        })
        .filter(|(_, value)| *value != 0.0)
        .collect()
}

/// Writes the test configuration with a VirusTotal quota that lets one
/// request through per second and makes the others wait, so lookups that
/// follow each other closely wait for a permit.
fn write_quota_config(dir: &std::path::Path, origin: &str) -> std::path::PathBuf {
    let config = write_config(dir, Some(origin));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[plugins.virustotal.quotas]]\nrate = { requests = 1, per_seconds = 1 }\non_exceed = \"wait\"\nmax_wait_ms = 9000\n",
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test]
async fn metrics_count_what_the_runs_record() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let config = write_quota_config(dir.path(), &replay.origin());
    let daemon = Daemon::start(&config);
    let reader = daemon.create_token("prometheus", "read-only").await;
    let shipper = daemon.create_token("shipper", "ingest-only").await;

    // Scraping needs `read`: an ingest-only token is forbidden, and a
    // request without a token is unauthenticated.
    let (status, reply) = daemon
        .call_as(Some(&shipper), "GET", "/metrics", None)
        .await;
    assert_eq!(status, 403, "{reply}");
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    let (status, reply) = daemon.call_as(None, "GET", "/metrics", None).await;
    assert_eq!(status, 401, "{reply}");

    let before = scrape(&daemon, &reader).await;
    for family in [
        "palisade_runs_started_total",
        "palisade_runs_finished_total",
        "palisade_step_duration_seconds",
        "palisade_plugin_calls_total",
        "palisade_plugin_errors_total",
        "palisade_quota_waits_total",
        "palisade_quota_wait_seconds_total",
        "palisade_queue_depth",
        "palisade_alerts_ingested_total",
        "palisade_plugin_active_info",
        "palisade_plugin_swaps_total",
    ] {
        assert!(
            before.families.contains_key(family),
            "{family} is not declared"
        );
    }

    let (status, body) = daemon.post_alerts(wazuh_samples()).await;
    assert_eq!(status, 202, "{body}");
    let accepted = body["accepted"].as_array().unwrap().len();
    assert_eq!(accepted, 5, "{body}");
    let runs = wait_for_runs(&daemon, accepted).await;
    let after = scrape(&daemon, &reader).await;

    let ingested = after.sum("palisade_alerts_ingested_total", &[])
        - before.sum("palisade_alerts_ingested_total", &[]);
    assert_eq!(ingested, accepted as f64);

    // Runs started, sub-playbook runs included, match the runs listed, by
    // playbook; each ended once, in the status it is listed with.
    let mut listed: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut ended: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    for run in &runs {
        let playbook = run["playbook"].as_str().unwrap().to_string();
        let status = run["status"].as_str().unwrap().to_string();
        *listed.entry(vec![playbook.clone()]).or_insert(0.0) += 1.0;
        *ended.entry(vec![playbook, status]).or_insert(0.0) += 1.0;
    }
    let started = delta(
        after.by_labels("palisade_runs_started_total", &["playbook"]),
        &before.by_labels("palisade_runs_started_total", &["playbook"]),
    );
    assert_eq!(started, listed, "runs started against /v1/runs");
    assert!(
        listed.contains_key(&vec!["enrich-observable".to_string()]),
        "the samples call no sub-playbook: {listed:?}"
    );
    let finished = delta(
        after.by_labels("palisade_runs_finished_total", &["playbook", "status"]),
        &before.by_labels("palisade_runs_finished_total", &["playbook", "status"]),
    );
    assert_eq!(finished, ended, "runs finished against /v1/runs");

    // One histogram observation and one call count per journaled plugin
    // call, by plugin and action, and by plugin, version and outcome.
    let journaled = plugin_steps(&runs, |step| {
        let (plugin, action) = plugin_and_action(step);
        vec![plugin, action]
    });
    assert!(!journaled.is_empty(), "no plugin was called");
    let observed = delta(
        after.by_labels(
            "palisade_step_duration_seconds_count",
            &["plugin", "action"],
        ),
        &before.by_labels(
            "palisade_step_duration_seconds_count",
            &["plugin", "action"],
        ),
    );
    assert_eq!(observed, journaled, "step durations against the journal");
    let journaled_calls = plugin_steps(&runs, |step| {
        let outcome = if step["status"] == "succeeded" {
            "ok"
        } else {
            "error"
        };
        vec![
            plugin_and_action(step).0,
            step["plugin_version"].as_str().unwrap().to_string(),
            outcome.to_string(),
        ]
    });
    let calls = delta(
        after.by_labels(
            "palisade_plugin_calls_total",
            &["plugin", "version", "outcome"],
        ),
        &before.by_labels(
            "palisade_plugin_calls_total",
            &["plugin", "version", "outcome"],
        ),
    );
    assert_eq!(calls, journaled_calls, "plugin calls against the journal");
    let mut journaled_errors = plugin_steps(&runs, |step| match step["error"]["kind"].as_str() {
        Some(kind) => vec![plugin_and_action(step).0, kind.to_string()],
        None => Vec::new(),
    });
    journaled_errors.remove(&Vec::new());
    let errors = delta(
        after.by_labels("palisade_plugin_errors_total", &["plugin", "kind"]),
        &before.by_labels("palisade_plugin_errors_total", &["plugin", "kind"]),
    );
    assert_eq!(
        errors, journaled_errors,
        "plugin errors against the journal"
    );

    // Each histogram is cumulative and ends in `+Inf` with its count.
    for (key, count) in after.by_labels(
        "palisade_step_duration_seconds_count",
        &["plugin", "action"],
    ) {
        let filter = [("plugin", key[0].as_str()), ("action", key[1].as_str())];
        let mut buckets: Vec<(f64, f64)> = after
            .samples
            .iter()
            .filter(|sample| sample.name == "palisade_step_duration_seconds_bucket")
            .filter(|sample| {
                filter
                    .iter()
                    .all(|(label, value)| sample.labels[*label] == *value)
            })
            .map(|sample| {
                (
                    sample.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY),
                    sample.value,
                )
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(buckets.first().unwrap().0, 0.000_05, "{key:?}");
        assert_eq!(buckets[buckets.len() - 2].0, 30.0, "{key:?}");
        assert!(
            buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "{key:?}: {buckets:?}"
        );
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{key:?}");
        let sum = after.sum("palisade_step_duration_seconds_sum", &filter);
        assert!(sum > 0.0, "{key:?} took no time");
    }

    // Lookups a second apart or closer waited for the VirusTotal quota;
    // no other plugin has a quota.
    let lookups = journaled
        .get(&vec!["virustotal".to_string(), "lookup".to_string()])
        .copied()
        .unwrap_or(0.0);
    assert!(lookups >= 2.0, "{lookups} lookups, too few to wait");
    let waits = after.sum("palisade_quota_waits_total", &[("plugin", "virustotal")]);
    let waited = after.sum(
        "palisade_quota_wait_seconds_total",
        &[("plugin", "virustotal")],
    );
    assert!(waits >= 1.0, "no lookup waited for the quota");
    assert!(
        waits < lookups,
        "the first lookup waited: {waits} of {lookups}"
    );
    assert!(waited > 0.0, "{waits} waits took no time");
    assert_eq!(after.sum("palisade_quota_waits_total", &[]), waits);

    // The queue is drained once every run has ended.
    assert_eq!(after.sum("palisade_queue_depth", &[]), 0.0);

    // One info sample per plugin, with the active version of /v1/plugins.
    let plugins = daemon.get("/v1/plugins").await;
    let active: BTreeMap<Vec<String>, f64> = plugins["plugins"]
        .as_array()
        .unwrap_or_else(|| panic!("{plugins}"))
        .iter()
        .map(|plugin| {
            let name = plugin["name"].as_str().unwrap().to_string();
            let version = plugin["active_version"].as_str().unwrap().to_string();
            (vec![name, version], 1.0)
        })
        .collect();
    assert_eq!(
        after.by_labels("palisade_plugin_active_info", &["plugin", "version"]),
        active
    );

    // Activating the version already active records nothing, so it is
    // no swap.
    let noop_version = active
        .keys()
        .find(|key| key[0] == "noop")
        .map(|key| key[1].clone())
        .unwrap();
    let body = json!({ "version": noop_version });
    let (status, reply) = daemon
        .call_as(
            Some(support::TEST_ADMIN_TOKEN),
            "POST",
            "/v1/plugins/noop/activate",
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let swapped = scrape(&daemon, &reader).await;
    let swaps = delta(
        swapped.by_labels("palisade_plugin_swaps_total", &["plugin"]),
        &before.by_labels("palisade_plugin_swaps_total", &["plugin"]),
    );
    assert_eq!(reply["replaced"], Value::Null, "{reply}");
    assert!(
        swaps.values().all(|count| *count == 0.0),
        "activating the active version swapped nothing, yet: {swaps:?}"
    );
    daemon.stop();
}

#[tokio::test]
async fn json_logs_carry_the_run_span() {
    let dir = tempfile::tempdir().unwrap();
    let replay = start_virustotal_replay().await;
    let config = write_config(dir.path(), Some(&replay.origin()));
    // Kept in the target directory, so a failure can be read afterwards.
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("daemon-json.log");
    let daemon = Daemon::start_with(
        &config,
        &log,
        &["--log-format", "json"],
        &[("RUST_LOG", "debug")],
    );

    let alert = wazuh_samples().lines().next().unwrap().to_string();
    let (status, body) = daemon.post_alerts(alert).await;
    assert_eq!(status, 202, "{body}");
    let runs = wait_for_runs(&daemon, 1).await;
    daemon.stop();

    let text = std::fs::read_to_string(&log).unwrap();
    let mut events = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("line {} is not JSON ({error}): {line:?}", number + 1));
        assert!(
            event.is_object(),
            "line {} is not an object: {line}",
            number + 1
        );
        events.push(event);
    }
    assert!(
        events.len() > 10,
        "debug logging was on: {} lines",
        events.len()
    );
    assert!(
        !text.contains(support::TEST_API_KEY),
        "secret in the JSON log"
    );

    // Each plugin call of a step logs a debug event inside the run's and
    // the step's spans, whose fields name the run, the step and the plugin.
    let spans_of = |event: &Value| event["spans"].as_array().cloned().unwrap_or_default();
    let calls: Vec<&Value> = events
        .iter()
        .filter(|event| event["fields"]["message"] == "plugin call succeeded")
        .collect();
    for run in &runs {
        let run_id = run["id"].as_str().unwrap();
        let playbook = &run["playbook"];
        let journaled: BTreeSet<(String, String)> = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|step| step["status"] == "succeeded" && step["plugin_version"].is_string())
            .map(|step| {
                (
                    step["id"].as_str().unwrap().to_string(),
                    plugin_and_action(step).0,
                )
            })
            .collect();
        assert!(!journaled.is_empty(), "run {run_id} called no plugin");
        let mut logged = BTreeSet::new();
        for event in &calls {
            let spans = spans_of(event);
            // The innermost run span is the run that drives the step.
            let Some(run_span) = spans.iter().rev().find(|span| span["name"] == "run") else {
                panic!("a plugin call outside a run span: {event}");
            };
            if run_span["run.id"] != run_id {
                continue;
            }
            assert_eq!(run_span["playbook"], *playbook, "{event}");
            let step_span = spans.last().unwrap();
            assert_eq!(step_span["name"], "step", "{event}");
            assert_eq!(
                step_span["plugin.name"], event["fields"]["plugin.name"],
                "{event}"
            );
            assert_eq!(
                event["span"], *step_span,
                "the current span is not the step: {event}"
            );
            logged.insert((
                step_span["step.id"].as_str().unwrap().to_string(),
                step_span["plugin.name"].as_str().unwrap().to_string(),
            ));
        }
        assert_eq!(logged, journaled, "plugin calls logged in run {run_id}");
    }
}
