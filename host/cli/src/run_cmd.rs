//! Decisions people take on runs: `palisade resume` for a parked run, and
//! `palisade approvals` and `palisade approve` for approval steps.

use std::process::ExitCode;

use anyhow::Context;
use palisade_engine::{Answer, ParkedDecision};
use palisade_model::RunRecord;
use palisade_store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api_client::ApiClient;
use crate::config::Config;
use crate::host;
use crate::output::{printable_lines, run_detail};

/// Who decides when `--as` is not given and the database is opened
/// directly. Through a daemon, the actor is the name of the API token.
pub const LOCAL_ACTOR: &str = "cli";

/// Applies `decision` to parked run `run_id`, on the database or through
/// the daemon at `server`, and prints the run as it is afterwards. `actor`
/// is who decides; through a daemon it must be the token's name.
pub async fn resume(
    config: &Config,
    run_id: &str,
    decision: ParkedDecision,
    actor: Option<&str>,
    server: Option<&ApiClient>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let run: RunRecord = match server {
        Some(server) => {
            let path = format!("/v1/runs/{run_id}/resume");
            let mut body = json!({ "decision": decision.as_str() });
            if let Some(actor) = actor {
                body["actor"] = json!(actor);
            }
            serde_json::from_value(server.send(Method::POST, &path, &[], Some(body)).await?)?
        }
        None => {
            let actor = actor.unwrap_or(LOCAL_ACTOR);
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
    server: Option<&ApiClient>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let pending: Vec<Value> = match server {
        Some(server) => serde_json::from_value(server.get("/v1/approvals").await?)?,
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

/// An answer to an approval, as `palisade approve` takes it.
pub struct ApprovalAnswer {
    pub run_id: String,
    pub step_id: String,
    /// Item position, for an approval inside a `for_each` step.
    pub item: Option<u32>,
    pub approve: bool,
    pub response: Value,
    /// Who answers, from `--as`. Through a daemon it must be the token's
    /// name, which is the default there; on the database the default is
    /// [`LOCAL_ACTOR`].
    pub actor: Option<String>,
}

/// Answers an approval and prints the run after.
pub async fn approve(
    config: &Config,
    answer: ApprovalAnswer,
    server: Option<&ApiClient>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ApprovalAnswer {
        run_id,
        step_id,
        item,
        approve,
        response,
        actor,
    } = answer;
    let run: RunRecord = match server {
        Some(server) => {
            let path = format!("/v1/approvals/{run_id}/{step_id}");
            let mut body = json!({
                "decision": if approve { "approve" } else { "reject" },
                "response": response,
                "item": item,
            });
            if let Some(actor) = actor {
                body["actor"] = json!(actor);
            }
            serde_json::from_value(server.send(Method::POST, &path, &[], Some(body)).await?)?
        }
        None => {
            let host = host::build(config, None).await?;
            let answer = Answer {
                approve,
                response,
                actor: actor.unwrap_or_else(|| LOCAL_ACTOR.to_string()),
            };
            let run = host
                .engine
                .answer_approval(&run_id, &step_id, item, answer)
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

/// Prints the timeline of run `id` with the runs of its sub-playbooks.
pub async fn show(
    config: &Config,
    id: &str,
    server: Option<&ApiClient>,
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
                serde_json::from_value(server.get(&format!("/v1/runs/{next}")).await?)?
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
