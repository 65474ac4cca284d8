//! Decisions people take on runs: `palisade resume` for a parked run, and
//! `palisade approvals` and `palisade approve` for approval steps.

use std::process::ExitCode;

use anyhow::Context;
use palisade_engine::{Answer, ParkedDecision};
use palisade_model::RunRecord;
use palisade_store::Store;
use serde_json::{Value, json};

use crate::config::Config;
use crate::host;
use crate::output::{printable_lines, run_detail};

/// Applies `decision` to parked run `run_id`, on the database or through
/// the daemon at `server`, and prints the run as it is afterwards.
pub async fn resume(
    config: &Config,
    run_id: &str,
    decision: ParkedDecision,
    actor: &str,
    server: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let run: RunRecord = match server {
        Some(server) => {
            let url = format!("{}/v1/runs/{run_id}/resume", server.trim_end_matches('/'));
            let request = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/json")
                .body(json!({ "decision": decision.as_str(), "actor": actor }).to_string());
            serde_json::from_value(send(request, &url, server).await?)?
        }
        None => {
            let host = host::build(config, None).await?;
            if host.store.run(run_id)?.is_none() {
                anyhow::bail!("run {run_id:?} not found; `palisade runs` lists them");
            }
            let run = host.engine.resume_parked(run_id, decision, actor).await?;
            host.store.flush()?;
            run
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print!("{}", printable_lines(&run_detail(&run)));
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists the open approvals, from the database or the daemon at `server`.
pub async fn approvals(
    config: &Config,
    server: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let pending: Vec<Value> = match server {
        Some(server) => {
            let url = format!("{}/v1/approvals", server.trim_end_matches('/'));
            serde_json::from_value(send(reqwest::Client::new().get(&url), &url, server).await?)?
        }
        None => {
            let host = host::build(config, None).await?;
            serde_json::from_value(serde_json::to_value(host.engine.pending_approvals()?)?)?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&pending)?);
        return Ok(ExitCode::SUCCESS);
    }
    if pending.is_empty() {
        println!("no open approvals");
    }
    let mut out = String::new();
    for approval in &pending {
        let text = |name: &str| approval[name].as_str().unwrap_or("").to_string();
        let item = approval["item"]
            .as_u64()
            .map(|item| format!(" item {item}"))
            .unwrap_or_default();
        let approvers: Vec<String> =
            serde_json::from_value(approval["approvers"].clone()).unwrap_or_default();
        out.push_str(&format!(
            "{} {}{item} (case {}, playbook {}) until {}\n  {}\n  may answer: {}\n",
            text("run_id"),
            text("step_id"),
            text("case_id"),
            text("playbook"),
            text("deadline"),
            text("question"),
            if approvers.is_empty() {
                "anyone".to_string()
            } else {
                approvers.join(", ")
            },
        ));
    }
    print!("{}", printable_lines(&out));
    Ok(ExitCode::SUCCESS)
}

/// Answers approval `step_id` of run `run_id` and prints the run after.
pub async fn approve(
    config: &Config,
    run_id: &str,
    step_id: &str,
    item: Option<u32>,
    answer: Answer,
    server: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let run: RunRecord = match server {
        Some(server) => {
            let url = format!(
                "{}/v1/approvals/{run_id}/{step_id}",
                server.trim_end_matches('/')
            );
            let body = json!({
                "decision": if answer.approve { "approve" } else { "reject" },
                "response": answer.response,
                "actor": answer.actor,
                "item": item,
            });
            let request = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string());
            serde_json::from_value(send(request, &url, server).await?)?
        }
        None => {
            let host = host::build(config, None).await?;
            let run = host
                .engine
                .answer_approval(run_id, step_id, item, answer)
                .await?;
            host.store.flush()?;
            run
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print!("{}", printable_lines(&run_detail(&run)));
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `request` to the daemon and returns the JSON body of a success.
async fn send(request: reqwest::RequestBuilder, url: &str, server: &str) -> anyhow::Result<Value> {
    let response = request.send().await.with_context(|| {
        format!("cannot reach the daemon at {server}; is `palisade serve` running?")
    })?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        anyhow::bail!("{url} returned {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{url} returned invalid JSON"))
}

/// Prints the timeline of run `id` with the runs of its sub-playbooks.
pub async fn show(
    config: &Config,
    id: &str,
    server: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut pending = vec![id.to_string()];
    let store = match server {
        Some(_) => None,
        None => Some(host::open_store(config)?),
    };
    while let Some(next) = pending.pop() {
        let run: RunRecord = match (server, &store) {
            (Some(server), _) => {
                let url = format!("{}/v1/runs/{next}", server.trim_end_matches('/'));
                serde_json::from_value(send(reqwest::Client::new().get(&url), &url, server).await?)?
            }
            (None, Some(store)) => store
                .run(&next)?
                .with_context(|| format!("run {next:?} not found; `palisade runs` lists them"))?,
            (None, None) => unreachable!("a store is opened when no server is given"),
        };
        pending.extend(run.steps.iter().filter_map(|step| step.child_run.clone()));
        runs.push(run);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else {
        print!("{}", printable_lines(&crate::output::run_timeline(&runs)));
    }
    Ok(ExitCode::SUCCESS)
}
