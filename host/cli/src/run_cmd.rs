//! `palisade resume`: a person's decision on a parked run.

use std::process::ExitCode;

use anyhow::Context;
use palisade_engine::ParkedDecision;
use palisade_model::RunRecord;
use palisade_store::Store;
use serde_json::json;

use crate::config::Config;
use crate::host;
use crate::output::{printable_lines, run_detail};

/// Applies `decision` to parked run `run_id`, on the database or through
/// the daemon at `server`, and prints the run as it stands afterwards.
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
            let response = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/json")
                .body(json!({ "decision": decision.as_str(), "actor": actor }).to_string())
                .send()
                .await
                .with_context(|| {
                    format!("cannot reach the daemon at {server}; is `palisade serve` running?")
                })?;
            let status = response.status();
            let text = response.text().await?;
            if !status.is_success() {
                anyhow::bail!("{url} returned {status}: {text}");
            }
            serde_json::from_str(&text).with_context(|| format!("{url} returned invalid JSON"))?
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
