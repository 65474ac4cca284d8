//! `palisade bench`: per-step overhead of the host next to a bare wasmtime
//! instantiate and call of the same trivial component.
//!
//! Both sides use the same engine and the same precompiled `noop` plugin.
//! The bare side creates a `Store`, instantiates and calls `invoke`. The
//! Palisade side does what a playbook step does: a fresh sandbox under the
//! plugin's limits (resource limiter, epoch deadline, wall-clock timeout),
//! the call, JSON parsing of the output, and a journal write of the step to
//! sled. The two alternate in blocks so machine noise hits both alike.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;
use palisade_model::{RunRecord, RunStatus, StepRecord, StepStatus};
use palisade_runtime::{Runtime, RuntimeConfig};
use palisade_store::{SledStore, Store};
use serde_json::json;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Calls measured on each side.
    #[arg(long, default_value_t = 5_000)]
    pub iterations: usize,
    /// Calls per block; the sides alternate block by block.
    #[arg(long, default_value_t = 250)]
    pub block: usize,
}

struct Summary {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn summarise(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
    let total: Duration = samples.iter().sum();
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        mean: total / samples.len() as u32,
    }
}

pub async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.iterations == 0 || args.block == 0 {
        anyhow::bail!("--iterations and --block must be at least 1");
    }
    let plugin_path = config.plugins_dir.join("noop.wasm");
    let scratch = tempfile::tempdir()?;
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: Some(scratch.path().join("cache")),
        },
        None,
        None,
    )?;
    let loaded = runtime
        .load(&plugin_path, |name| config.grant(name))
        .await
        .map_err(|error| {
            anyhow::anyhow!("{error}; build the plugins with `cargo xtask build-plugins`")
        })?;
    let store = SledStore::open(&scratch.path().join("db"))?;

    let input = json!({ "alert": "benchmark" });
    let input_text = input.to_string();
    let mut run = RunRecord {
        id: "R-bench".into(),
        playbook: "bench".into(),
        alert_id: "bench".into(),
        case_id: "bench".into(),
        status: RunStatus::Running,
        started_at: Utc::now(),
        finished_at: None,
        steps: Vec::new(),
        error: None,
    };

    // Warm up both paths so first-call costs do not count.
    for _ in 0..args.block {
        runtime
            .invoke_unguarded(&loaded, "echo", &input_text)
            .await
            .map_err(anyhow::Error::msg)?;
        runtime
            .invoke_loaded(&loaded, "echo", &input)
            .await
            .map_err(|f| anyhow::anyhow!(f.error))?;
    }

    let mut bare = Vec::with_capacity(args.iterations);
    let mut palisade = Vec::with_capacity(args.iterations);
    while bare.len() < args.iterations {
        for _ in 0..args.block.min(args.iterations - bare.len()) {
            let started = Instant::now();
            runtime
                .invoke_unguarded(&loaded, "echo", &input_text)
                .await
                .map_err(anyhow::Error::msg)?;
            bare.push(started.elapsed());
        }
        for _ in 0..args.block.min(args.iterations - palisade.len()) {
            let started = Instant::now();
            let started_at = Utc::now();
            let call = runtime
                .invoke_loaded(&loaded, "echo", &input)
                .await
                .map_err(|failure| anyhow::anyhow!(failure.error))?;
            run.steps.clear();
            run.steps.push(StepRecord {
                id: "echo".into(),
                uses: "noop.echo".into(),
                status: StepStatus::Succeeded,
                started_at,
                duration_us: call.report.duration_us,
                plugin_version: Some(call.report.plugin_version),
                input: input.clone(),
                output: Some(call.output),
                error: None,
                logs: json!([]),
                http_calls: json!([]),
            });
            store.put_run(&run)?;
            palisade.push(started.elapsed());
        }
    }

    let bare = summarise(bare);
    let palisade = summarise(palisade);
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "per-step overhead, {} calls each, noop.echo",
        args.iterations
    );
    println!(
        "{:<36} {:>9} {:>9} {:>9}",
        "", "p50 us", "p99 us", "mean us"
    );
    for (name, summary) in [
        ("bare wasmtime instantiate + call", &bare),
        ("palisade step (sandbox+call+journal)", &palisade),
    ] {
        println!(
            "{name:<36} {:>9.1} {:>9.1} {:>9.1}",
            micros(summary.p50),
            micros(summary.p99),
            micros(summary.mean)
        );
    }
    println!(
        "ratio palisade/bare at p50: {:.2}",
        micros(palisade.p50) / micros(bare.p50)
    );
    if cfg!(debug_assertions) {
        println!("note: this is a debug build; measure with `cargo run --release -- bench`");
    }
    Ok(ExitCode::SUCCESS)
}
