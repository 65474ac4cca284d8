//! `palisade playbook test`: runs a playbook on an alert with the real
//! plugins, in a scratch database, with every HTTP request answered from
//! recorded responses, and reports what the run did and did not exercise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use palisade_engine::{Answer, OnError, Playbook};
use palisade_model::{RunRecord, RunStatus, StepStatus, parse_alert_bytes};
use palisade_runtime::{Fixtures, QuotaRule};
use palisade_store::Store;
use serde_json::{Value, json};

use crate::config::Config;
use crate::host;
use crate::output::printable_lines;

/// Maximum wait for a step's stored retry delay in a test.
const MAX_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `playbook` on every alert of `alert_file` and prints the report.
/// `approve` answers every approval question. Exits 1 when a run fails.
pub async fn run(
    config: &Config,
    playbook: &Path,
    alert_file: &Path,
    fixtures: &Path,
    approve: bool,
    response: Option<Value>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let fixtures = Fixtures::load_dir(fixtures).map_err(anyhow::Error::msg)?;
    let bytes = std::fs::read(alert_file)
        .with_context(|| format!("cannot read alert file {}", alert_file.display()))?;
    let mut alerts = Vec::new();
    for parsed in parse_alert_bytes(&bytes) {
        alerts
            .push(parsed.map_err(|error| {
                anyhow::anyhow!("alert file {}: {error}", alert_file.display())
            })?);
    }
    if alerts.is_empty() {
        anyhow::bail!("alert file {} contains no alert", alert_file.display());
    }

    // A scratch database, so a test leaves nothing behind; the compiled
    // plugins are shared with the configured cache.
    let scratch = tempfile::tempdir()?;
    let mut test_config = config.clone();
    test_config.cache_dir = Some(config.cache_dir());
    test_config.data_dir = scratch.path().join("data");
    let host = host::build(&test_config, Some(playbook)).await?;
    host.caller
        .runtime
        .use_fixtures(fixtures)
        .map_err(anyhow::Error::msg)?;

    let mut runs = Vec::new();
    for alert in &alerts {
        let report = host.engine.ingest(alert).await?;
        for (run_id, _) in report.runs {
            runs.push(finish(&host, &run_id, approve, &response).await?);
        }
    }
    if runs.is_empty() {
        anyhow::bail!(
            "no playbook's trigger matches the alerts in {}; check `trigger` in {}",
            alert_file.display(),
            playbook.display()
        );
    }
    let mut all = Vec::new();
    for run in &runs {
        collect_runs(host.store.as_ref(), run, &mut all)?;
    }
    let failed = runs.iter().any(|run| run.status != RunStatus::Succeeded);
    let report = Report {
        runs: &all,
        playbooks: host.engine.playbooks(),
        quotas: config,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", printable_lines(&report.to_text()));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Drives run `run_id` until it ends: answers its approvals, and waits for
/// its stored retry delays up to [`MAX_RETRY_WAIT`].
async fn finish(
    host: &host::Host,
    run_id: &str,
    approve: bool,
    response: &Option<Value>,
) -> anyhow::Result<RunRecord> {
    loop {
        let run = host
            .store
            .run(run_id)?
            .with_context(|| format!("run {run_id} disappeared"))?;
        if run.status != RunStatus::Waiting {
            return Ok(run);
        }
        let questions: Vec<_> = host
            .engine
            .pending_approvals()?
            .into_iter()
            .filter(|question| question.root_run_id == run.id)
            .collect();
        if let Some(question) = questions.first() {
            let verdict = if approve { "approving" } else { "rejecting" };
            eprintln!("{verdict} {:?}: {}", question.step_id, question.question);
            // The first listed approver answers, with the given response or
            // an empty one, which fits a form whose fields are optional.
            let answer = Answer {
                approve,
                response: response.clone().unwrap_or_else(|| json!({})),
                actor: question
                    .approvers
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "playbook-test".into()),
            };
            host.engine
                .answer_approval(&question.run_id, &question.step_id, question.item, answer)
                .await?;
            continue;
        }
        let wait = run
            .wake_at
            .map(|at| (at - chrono::Utc::now()).to_std().unwrap_or_default())
            .unwrap_or_default();
        if wait > MAX_RETRY_WAIT {
            eprintln!(
                "run {} waits {} for a retry, longer than a test waits; it is reported as it stands",
                run.id,
                palisade_model::format_duration(wait)
            );
            return Ok(run);
        }
        if !wait.is_zero() {
            eprintln!(
                "waiting {} for a retry of run {}",
                palisade_model::format_duration(std::time::Duration::from_millis(
                    wait.as_millis().max(1) as u64
                )),
                run.id
            );
            tokio::time::sleep(wait).await;
        }
        host.engine.resume_run(&run.id).await?;
    }
}

fn collect_runs(
    store: &dyn Store,
    run: &RunRecord,
    all: &mut Vec<RunRecord>,
) -> anyhow::Result<()> {
    all.push(run.clone());
    for child in run.steps.iter().filter_map(|step| step.child_run.as_ref()) {
        if let Some(child) = store.run(child)? {
            collect_runs(store, &child, all)?;
        }
    }
    Ok(())
}

struct Report<'a> {
    /// Top-level runs, each followed by its sub-playbook runs.
    runs: &'a [RunRecord],
    playbooks: &'a [Playbook],
    quotas: &'a Config,
}

impl Report<'_> {
    fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "path taken");
        out.push_str(&crate::output::run_timeline(self.runs));
        let untested = self.untested();
        let _ = writeln!(out, "\nnot exercised");
        if untested.is_empty() {
            let _ = writeln!(out, "  every error path and branch ran");
        }
        for line in &untested {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "\nAPI calls against quotas");
        let calls = self.calls();
        if calls.is_empty() {
            let _ = writeln!(out, "  no HTTP requests");
        }
        for (plugin, count) in &calls {
            let _ = writeln!(out, "  {}", self.quota_line(plugin, *count));
        }
        out
    }

    fn to_json(&self) -> Value {
        let calls: BTreeMap<String, Value> = self
            .calls()
            .into_iter()
            .map(|(plugin, count)| {
                let summary = self.quota_line(&plugin, count);
                (plugin, json!({ "calls": count, "summary": summary }))
            })
            .collect();
        json!({ "runs": self.runs, "not_exercised": self.untested(), "api_calls": calls })
    }

    /// HTTP requests per plugin, from every step record of every run.
    fn calls(&self) -> BTreeMap<String, usize> {
        let mut calls: BTreeMap<String, usize> = BTreeMap::new();
        for step in self.runs.iter().flat_map(|run| &run.steps) {
            let count = step.http_calls.as_array().map_or(0, Vec::len);
            if count > 0 {
                let plugin = step.uses.split('.').next().unwrap_or_default();
                *calls.entry(plugin.to_string()).or_default() += count;
            }
        }
        calls
    }

    /// Describes `count` calls of plugin `plugin` against its rate and
    /// count quotas, in one line.
    fn quota_line(&self, plugin: &str, count: usize) -> String {
        let rules: Vec<QuotaRule> = self.quotas.grant(plugin).quotas;
        let mut line = format!("{plugin}: {count} requests");
        if rules.is_empty() {
            line.push_str(", no quota configured");
        }
        for rule in &rules {
            if let Some(rate) = rule.rate {
                let requests = rate.requests.max(1) as usize;
                let _ = write!(line, "; rate {} per {}s", rate.requests, rate.per_seconds);
                if count > requests {
                    let windows = count.div_ceil(requests) - 1;
                    let wait = rate.per_seconds * windows as u64;
                    let _ = write!(
                        line,
                        ": over the burst by {}, so one alert waits about {}s or fails, as `on_exceed` says",
                        count - requests,
                        wait
                    );
                }
            }
            if let Some(daily) = rule.daily {
                let per_day = daily / count.max(1) as u64;
                let _ = write!(line, "; daily {daily}: about {per_day} such alerts a day");
            }
            if let Some(monthly) = rule.monthly {
                let _ = write!(line, "; monthly {monthly}");
            }
        }
        line
    }

    /// Error paths and branches the runs did not take.
    fn untested(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for playbook in self.playbooks {
            let records: Vec<_> = self
                .runs
                .iter()
                .filter(|run| run.playbook == playbook.name)
                .flat_map(|run| &run.steps)
                .collect();
            if records.is_empty() {
                continue;
            }
            for step in &playbook.steps {
                let mine: Vec<_> = records
                    .iter()
                    .filter(|record| record.id == step.id && record.handles.is_none())
                    .collect();
                let failed = mine.iter().any(|r| r.status == StepStatus::Failed);
                let ran = mine
                    .iter()
                    .any(|r| matches!(r.status, StepStatus::Succeeded | StepStatus::Failed));
                let skipped = mine.iter().any(|r| r.status == StepStatus::Skipped);
                let name = format!("{}.{}", playbook.name, step.id);
                if mine.is_empty() {
                    lines.push(format!("{name}: never reached"));
                    continue;
                }
                if step.condition.is_some() && !(ran && skipped) {
                    let taken = if ran { "true" } else { "false" };
                    lines.push(format!(
                        "{name}: its `if` was only {taken}; the other branch did not run"
                    ));
                }
                if let Some(handler) = &step.handler
                    && !records
                        .iter()
                        .any(|r| r.handles.as_deref() == Some(&step.id))
                {
                    lines.push(format!("{name}: handler {handler:?} never ran"));
                }
                if step.on_error == OnError::Continue && !failed {
                    lines.push(format!(
                        "{name}: `on_error: continue` unused, the step did not fail"
                    ));
                }
                if step.retry.is_some() && !mine.iter().any(|r| r.status == StepStatus::Failed) {
                    lines.push(format!("{name}: `retry` unused, no attempt failed"));
                }
            }
        }
        lines
    }
}
