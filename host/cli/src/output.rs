//! Human-readable output of cases, runs, plugins and quotas.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use palisade_model::{Case, RunRecord, RunStatus, StepStatus};
use palisade_runtime::{CountStatus, LoadedPlugin, PluginQuotaStatus, RuleStatus};
use palisade_store::Store;
use serde_json::Value;

use crate::api_client::ApiClient;
use crate::config::Config;

/// Replaces control characters, which an alert can carry to a terminal as
/// escape sequences, with U+FFFD.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Formats cases as a table, each followed by its observables, threat-intel
/// hits and verdicts. Text taken from alerts is stripped of control
/// characters.
pub fn case_table(cases: &[Case]) -> String {
    let mut out = String::new();
    write_case_table(&mut out, cases);
    printable_lines(&out)
}

/// Applies [`printable`] to every line of `text`, keeping the line breaks.
pub fn printable_lines(text: &str) -> String {
    text.lines().map(|line| printable(line) + "\n").collect()
}

fn write_case_table(out: &mut String, cases: &[Case]) {
    let _ = writeln!(
        out,
        "{:<10} {:<9} {:<13} {:<4} {:>5} {:>6}  TITLE",
        "CASE", "SOURCE", "SEVERITY", "PRIO", "SCORE", "ALERTS"
    );
    for case in cases {
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:<13} {:<4} {:>5} {:>6}  {}",
            case.id,
            case.source,
            case.severity.as_str(),
            case.priority.as_deref().unwrap_or("-"),
            case.score
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            case.alert_ids.len(),
            printable(&case.title),
        );
        for observable in &case.observables {
            let scope = if observable.internal {
                " (internal)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:>12} {:<7} {}{scope}",
                "",
                observable.kind,
                printable(&observable.value)
            );
        }
        for hit in &case.intel_hits {
            let _ = writeln!(out, "{:>12} intel   {}", "", printable(&describe_hit(hit)));
        }
        for verdict in &case.verdicts {
            let _ = writeln!(
                out,
                "{:>12} verdict {}",
                "",
                printable(&describe_verdict(verdict))
            );
        }
    }
}

fn describe_hit(hit: &Value) -> String {
    let names: Vec<String> = hit
        .get("indicators")
        .and_then(Value::as_array)
        .map(|indicators| {
            indicators
                .iter()
                .map(|indicator| {
                    let name = indicator.get("name").and_then(Value::as_str).unwrap_or("");
                    let source = indicator
                        .get("source")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    format!("{name} [{source}]")
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} {} matches {}",
        str_field(hit, "type"),
        str_field(hit, "value"),
        names.join("; ")
    )
}

fn describe_verdict(verdict: &Value) -> String {
    if verdict.get("found") == Some(&Value::Bool(false)) {
        return format!(
            "{} {}: not found",
            str_field(verdict, "type"),
            str_field(verdict, "value")
        );
    }
    let stats = verdict.get("stats");
    let count = |name| {
        stats
            .and_then(|s| s.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    format!(
        "{} {}: {} ({} malicious, {} suspicious, {} harmless, {} undetected)",
        str_field(verdict, "type"),
        str_field(verdict, "value"),
        str_field(verdict, "verdict"),
        count("malicious"),
        count("suspicious"),
        count("harmless"),
        count("undetected"),
    )
}

fn str_field<'a>(value: &'a Value, name: &str) -> &'a str {
    value.get(name).and_then(Value::as_str).unwrap_or("?")
}

/// Formats one run: each step with status, duration and error.
pub fn run_detail(run: &RunRecord) -> String {
    let mut out = String::new();
    let status = serde_json::to_value(run.status).unwrap_or_default();
    let _ = writeln!(
        out,
        "run {} of {} on alert {} (case {}): {}",
        run.id,
        run.playbook,
        run.alert_id,
        run.case_id,
        status.as_str().unwrap_or("?")
    );
    for step in &run.steps {
        let status = match step.status {
            StepStatus::Started => "started",
            StepStatus::Succeeded => "ok",
            StepStatus::Failed => "FAILED",
            StepStatus::Skipped => "skipped",
        };
        let _ = writeln!(
            out,
            "  {:<12} {:<28} {:<8} {:>9} us  {}",
            step.id,
            step.uses,
            status,
            step.duration_us,
            step.plugin_version.as_deref().unwrap_or("")
        );
        if let Some(error) = &step.error {
            let _ = writeln!(out, "  {:>12} {}: {}", "", error.kind, error.message);
        }
        if let Some(at) = step.retry_at {
            let _ = writeln!(out, "  {:>12} attempt {} retries at {at}", "", step.attempt);
        }
    }
    if let Some(error) = &run.error {
        let label = if run.status == RunStatus::Parked {
            "run parked"
        } else {
            "run failed"
        };
        let _ = writeln!(out, "  {label}: {}", error.message);
    }
    if let Some(at) = run.wake_at.filter(|_| run.status == RunStatus::Waiting) {
        let _ = writeln!(out, "  run waits until {at}");
    }
    out
}

/// Formats the timeline of `runs[0]`: every journal entry with its start
/// (milliseconds after the run started), duration, status, attempt,
/// input, output and error, and under a sub-playbook step the timeline of
/// the run it called, indented.
pub fn run_timeline(runs: &[RunRecord]) -> String {
    let mut out = String::new();
    if let Some(run) = runs.first() {
        write_timeline(&mut out, run, runs, 0);
    }
    out
}

fn write_timeline(out: &mut String, run: &RunRecord, runs: &[RunRecord], depth: usize) {
    let pad = "    ".repeat(depth);
    let took = run
        .finished_at
        .map(|end| format!(" in {} ms", (end - run.started_at).num_milliseconds()))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{pad}run {} of {} on alert {} (case {}): {}{took}",
        run.id,
        run.playbook,
        run.alert_id,
        run.case_id,
        run.status.as_str()
    );
    if !run.inputs.is_null() && run.inputs != serde_json::json!({}) {
        let _ = writeln!(out, "{pad}  inputs  {}", compact(&run.inputs));
    }
    for step in &run.steps {
        let offset = (step.started_at - run.started_at).num_milliseconds();
        let status = match step.status {
            StepStatus::Started => "started",
            StepStatus::Succeeded => "ok",
            StepStatus::Failed => "FAILED",
            StepStatus::Skipped => "skipped",
        };
        let mut label = step.id.clone();
        if let Some(item) = step.item {
            label.push_str(&format!("[{item}]"));
        }
        if let Some(failed) = &step.handles {
            label.push_str(&format!(" (handles {failed})"));
        }
        let _ = writeln!(
            out,
            "{pad}  +{offset:>6} ms  {label:<24} {:<28} {status:<8} {:>8.1} ms  attempt {}",
            step.uses,
            step.duration_us as f64 / 1000.0,
            step.attempt
        );
        if !step.input.is_null() {
            let _ = writeln!(out, "{pad}      input   {}", compact(&step.input));
        }
        if let Some(output) = &step.output {
            let _ = writeln!(out, "{pad}      output  {}", compact(output));
        }
        if let Some(error) = &step.error {
            let _ = writeln!(out, "{pad}      error   {}: {}", error.kind, error.message);
        }
        if let Some(at) = step.retry_at {
            let _ = writeln!(out, "{pad}      retry   at {at}");
        }
        if let Some(child) = step
            .child_run
            .as_ref()
            .and_then(|id| runs.iter().find(|run| &run.id == id))
        {
            write_timeline(out, child, runs, depth + 2);
        }
    }
    if let Some(outputs) = &run.outputs {
        let _ = writeln!(out, "{pad}  outputs {}", compact(outputs));
    }
    if let Some(error) = &run.error {
        let _ = writeln!(out, "{pad}  error   {}: {}", error.kind, error.message);
    }
    if let Some(at) = run.wake_at.filter(|_| run.status == RunStatus::Waiting) {
        let _ = writeln!(out, "{pad}  waits until {at}");
    }
}

/// One-line JSON, cut at 300 characters.
fn compact(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 300 {
        return text;
    }
    let cut: String = text.chars().take(300).collect();
    format!("{cut}...")
}

/// Formats a plugin's actions, its requested versus granted capabilities,
/// and the grant entries the runtime ignores because the plugin did not
/// request them. A capability is usable only where both columns name it.
pub fn plugin_detail(plugin: &LoadedPlugin) -> String {
    let info = &plugin.info;
    let grant = &plugin.policy.grant;
    let mut out = String::new();
    let _ = writeln!(out, "{} {}: {}", info.name, info.version, info.description);
    let _ = writeln!(
        out,
        "file    {} (sha256 {})",
        plugin.path.display(),
        plugin.digest
    );
    let _ = writeln!(out, "actions");
    for action in &info.actions {
        let effects = if action.side_effects {
            " [side effects]"
        } else {
            ""
        };
        let _ = writeln!(out, "  {:<16} {}{effects}", action.name, action.description);
    }
    let requested = &info.capabilities;
    let granted_secrets: Vec<&str> = grant.secrets.iter().map(|s| s.name.as_str()).collect();
    let granted_config: Vec<&str> = grant.config.keys().map(String::as_str).collect();
    let _ = writeln!(out, "capability    requested / granted");
    let _ = writeln!(
        out,
        "  http        {} / {}",
        list(&requested.http_origins),
        list(&grant.http_origins)
    );
    let _ = writeln!(
        out,
        "  secrets     {} / {}",
        list(&requested.secrets),
        granted_secrets.join(", ")
    );
    let _ = writeln!(
        out,
        "  key-value   {} / {}",
        requested.key_value, grant.key_value
    );
    let _ = writeln!(
        out,
        "  config      {} / {}",
        list(&requested.config),
        granted_config.join(", ")
    );

    let ignored = plugin.policy.ignored();
    if !ignored.is_empty() {
        let entries: Vec<String> = ignored.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "ignored (not requested): {}",
            printable(&entries.join(", "))
        );
    }
    for entry in plugin.policy.invalid_requested_origins() {
        let _ = writeln!(out, "invalid request: {}", printable(entry));
    }

    let limits = &grant.limits;
    let _ = writeln!(
        out,
        "limits        memory {} MiB, cpu {} ms, wall {} ms, output {} KiB",
        limits.memory_bytes >> 20,
        limits.cpu_ms,
        limits.wall_ms,
        limits.output_bytes >> 10
    );
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// `palisade runs`: from the database, or from a daemon with `server`.
pub async fn runs(
    config: &Config,
    id: Option<&str>,
    server: Option<&ApiClient>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let runs: Vec<RunRecord> = match server {
        Some(server) => fetch_records(server, "runs", id).await?,
        None => {
            let store = crate::host::open_store(config)?;
            match id {
                Some(id) => vec![store.run(id)?.with_context(|| not_found("run", id))?],
                None => store.runs()?,
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else {
        for run in &runs {
            print!("{}", printable_lines(&run_detail(run)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn not_found(what: &str, id: &str) -> String {
    format!("{what} {id:?} not found; `palisade {what}s` lists them")
}

/// Reads `/v1/{collection}` from a daemon, or one record of it when `id` is
/// given.
async fn fetch_records<T: serde::de::DeserializeOwned>(
    server: &ApiClient,
    collection: &str,
    id: Option<&str>,
) -> anyhow::Result<Vec<T>> {
    match id {
        Some(id) => {
            let body = server.get(&format!("/v1/{collection}/{id}")).await?;
            Ok(vec![serde_json::from_value(body)?])
        }
        None => {
            let body = server.get(&format!("/v1/{collection}")).await?;
            Ok(serde_json::from_value(body)?)
        }
    }
}

/// Formats quota state: one line per rule, then one per paused origin.
pub fn quota_table(plugins: &[PluginQuotaStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<32} {:<10} {:>7} {:>13} {:>15} {:>9}  PAUSED UNTIL",
        "PLUGIN", "ORIGIN", "RATE", "TOKENS", "DAY", "MONTH", "IN FLIGHT"
    );
    for plugin in plugins {
        for rule in &plugin.rules {
            let _ = writeln!(out, "{}", quota_row(&plugin.plugin, rule));
        }
        for pause in &plugin.pauses {
            let _ = writeln!(
                out,
                "{:<16} {:<32} paused after HTTP 429 until {}",
                plugin.plugin,
                pause.origin,
                pause
                    .until
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
    }
    out
}

fn quota_row(plugin: &str, rule: &RuleStatus) -> String {
    let (rate, tokens) = match &rule.rate {
        Some(rate) => (
            format!("{}/{}s", rate.requests, rate.per_seconds),
            format!("{:.1}", rate.tokens),
        ),
        None => ("-".into(), "-".into()),
    };
    let count = |count: &Option<CountStatus>| match count {
        Some(count) => format!("{}/{}", count.used, count.allowed),
        None => "-".into(),
    };
    let in_flight = match rule.concurrency {
        Some(allowed) => format!("{}/{allowed}", rule.in_flight),
        None => rule.in_flight.to_string(),
    };
    let paused = rule
        .paused_until
        .map(|until| until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into());
    format!(
        "{plugin:<16} {:<32} {rate:<10} {tokens:>7} {:>13} {:>15} {in_flight:>9}  {paused}",
        rule.origin.as_deref().unwrap_or("(all origins)"),
        count(&rule.daily),
        count(&rule.monthly),
    )
}

/// `palisade quota`: the live state from a daemon with `server`, or else
/// the counts stored in the database.
pub async fn quotas(
    config: &Config,
    server: Option<&ApiClient>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let quotas: Vec<PluginQuotaStatus> = match server {
        Some(server) => serde_json::from_value(server.get("/v1/quotas").await?)?,
        None => {
            let host = crate::host::build(config, None).await?;
            host.caller.runtime.quotas().status()
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&quotas)?);
    } else {
        print!("{}", quota_table(&quotas));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_text_cannot_add_table_lines() {
        let mut case: Case = serde_json::from_value(serde_json::json!({
            "id": "C00000001", "fingerprint": "f", "title": "real\nC00000002  forged",
            "status": "new", "source": "wazuh", "rule": {"id": "1", "name": "r"},
            "severity": "low", "priority": null, "score": null,
            "created_at": "2026-12-04T00:00:00Z", "updated_at": "2026-12-04T00:00:00Z",
            "alert_ids": [], "observables": [], "intel_hits": [], "verdicts": [],
            "run_ids": [], "timeline": []
        }))
        .unwrap();
        case.title.push('\u{1b}');
        let table = case_table(&[case]);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(!table.contains('\u{1b}'));
    }

    #[test]
    fn control_characters_are_replaced() {
        let text = "title \u{1b}]0;owned\u{7}\u{1b}[31mred\r\nforged line\n";
        let cleaned = printable_lines(text);
        assert!(!cleaned.contains('\u{1b}'), "{cleaned:?}");
        assert!(!cleaned.contains('\r'), "{cleaned:?}");
        assert_eq!(cleaned.lines().count(), 2);
    }
}
