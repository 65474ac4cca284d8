//! `palisade bench`: per-step overhead of the host next to a bare wasmtime
//! instantiate and call of the same trivial component.
//!
//! Both sides use the same engine and the same precompiled `noop` plugin.
//! The bare side creates a `Store`, instantiates and calls `invoke`. The
//! Palisade side does what a playbook step does: a fresh sandbox under the
//! plugin's limits (resource limiter, epoch deadline, wall-clock timeout),
//! the call, JSON parsing of the output, and a journal write of the step to
//! sled. The two alternate in blocks so machine noise hits both alike.
//!
//! The quota part times `virustotal.file-report` against a stand-in on
//! 127.0.0.1, once under a grant without quota rules and once under a rule
//! with every kind of limit. That rule checks a rate, a daily and a monthly
//! count (stored in sled) and a concurrency limit, and none of them is ever
//! reached. The difference is the cost of the quota checks on a real
//! outbound request.
//!
//! The zoo part (`--zoo DIR`) times `noop.echo` alone and then while one
//! task per hostile action (spin, allocate, recurse, huge-output and
//! log-flood) calls that action again and again in the same runtime, under
//! small limits. Every call, measured or hostile, runs in a tokio task on
//! the worker threads, as calls of the daemon do.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;
use palisade_model::{RunRecord, RunStatus, StepRecord, StepStatus};
use palisade_runtime::{
    CallContext, CallFailure, CallOutput, Grant, Limits, LoadedPlugin, QuotaRule, RateRule,
    Runtime, RuntimeConfig,
};
use palisade_store::{SledStore, Store};
use serde_json::json;

use crate::config::{Config, SecretConfig};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Alerts pushed through the three-step throughput playbook; 0 skips
    /// that part.
    #[arg(long, default_value_t = 20_000)]
    pub alerts: usize,
    /// Alerts accepted (stored and joined to a case, no playbook) per
    /// ingest measurement, with and without a flush before each
    /// acknowledgement; 0 skips that part.
    #[arg(long, default_value_t = 20_000)]
    pub ingest: usize,
    /// Runs of a ten-step playbook for the engine-overhead part; 0 skips it.
    #[arg(long, default_value_t = 500)]
    pub engine_runs: usize,
    /// Concurrent ingest tasks in the throughput part.
    #[arg(long, default_value_t = 4)]
    pub tasks: usize,
    /// Calls measured on each side.
    #[arg(long, default_value_t = 5_000)]
    pub iterations: usize,
    /// Calls per block; the sides alternate block by block.
    #[arg(long, default_value_t = 250)]
    pub block: usize,
    /// VirusTotal lookups to a loopback server measured with and without a
    /// quota rule; 0 skips that part.
    #[arg(long, default_value_t = 1_000)]
    pub quota_iterations: usize,
    /// Directory containing `hostile.wasm`, directly or under
    /// `wasm32-wasip2/release/`, such as `target/tmp/sandbox-plugins` after
    /// `cargo test --test sandbox`. Adds the zoo part: `--iterations`
    /// `noop.echo` calls timed alone and beside hostile calls.
    #[arg(long, value_name = "DIR")]
    pub zoo: Option<std::path::PathBuf>,
    /// Directory of two or more signed builds of the `versioned` fixture
    /// (`benches/swap.sh` makes them). Runs only the swap benchmark:
    /// `--engine-runs` runs per phase on `--tasks` tasks.
    #[arg(long, value_name = "DIR")]
    pub swap: Option<std::path::PathBuf>,
    /// Swaps during the swap benchmark.
    #[arg(long, default_value_t = 100)]
    pub swaps: usize,
    /// Time between swaps, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub swap_interval_ms: u64,
}

pub(crate) struct Summary {
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
    pub max: Duration,
}

pub(crate) fn summarise(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
    let total: Duration = samples.iter().sum();
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        mean: total / samples.len() as u32,
        max: samples[samples.len() - 1],
    }
}

pub async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.swap {
        crate::bench_swap::run(
            config,
            crate::bench_swap::SwapBench {
                dir,
                runs: args.engine_runs.max(1),
                tasks: args.tasks,
                swaps: args.swaps,
                interval: Duration::from_millis(args.swap_interval_ms),
            },
        )
        .await?;
        return Ok(ExitCode::SUCCESS);
    }
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
    let run = RunRecord {
        id: "R-bench".into(),
        playbook: "bench".into(),
        alert_id: "bench".into(),
        case_id: "bench".into(),
        status: RunStatus::Running,
        started_at: Utc::now(),
        finished_at: None,
        steps: Vec::new(),
        error: None,
        wake_at: None,
        parent: None,
        inputs: serde_json::Value::Null,
        outputs: None,
        plugin_versions: Default::default(),
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
            // The engine journals a step twice: started, then finished.
            let mut step = StepRecord {
                id: "echo".into(),
                uses: "noop.echo".into(),
                status: StepStatus::Started,
                item: None,
                handles: None,
                child_run: None,
                attempt: 1,
                idempotency_key: None,
                retry_at: None,
                started_at: Utc::now(),
                duration_us: 0,
                plugin_version: None,
                input: input.clone(),
                output: None,
                error: None,
                logs: json!([]),
                http_calls: json!([]),
            };
            store.put_step(&run.id, 0, &step)?;
            let call = runtime
                .invoke_loaded(&loaded, "echo", &step.input)
                .await
                .map_err(|failure| anyhow::anyhow!(failure.error))?;
            step.status = StepStatus::Succeeded;
            step.duration_us = call.report.duration_us;
            step.plugin_version = Some(call.report.plugin_version);
            step.output = Some(call.output);
            store.put_step(&run.id, 0, &step)?;
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
    if let Some(zoo_dir) = &args.zoo {
        zoo_latency(config, zoo_dir, args.iterations).await?;
    }
    if args.quota_iterations > 0 {
        quota_overhead(config, args.quota_iterations, args.block).await?;
    }
    if args.ingest > 0 {
        ingest_throughput(args.ingest)?;
    }
    if args.engine_runs > 0 {
        engine_overhead(config, args.engine_runs).await?;
    }
    if args.alerts > 0 {
        throughput(config, args.alerts, args.tasks).await?;
    }
    if cfg!(debug_assertions) {
        println!("note: this is a debug build; measure with `cargo run --release -- bench`");
    }
    Ok(ExitCode::SUCCESS)
}

/// A three-step playbook of `noop.echo` calls, each templated from the alert
/// or the step before, so the engine, the sandbox and the journal all work
/// and plugin time is near zero.
const THROUGHPUT_PLAYBOOK: &str = r#"
name: bench-three-steps
trigger: { source: wazuh }
steps:
  - id: first
    uses: noop.echo
    with: { rule: "{{ alert.rule.id }}", agent: "{{ alert.host }}" }
  - id: second
    uses: noop.echo
    with: { previous: "{{ steps.first }}" }
  - id: third
    uses: noop.echo
    with: { previous: "{{ steps.second }}" }
"#;

/// Builds alert number `index`: a Wazuh file-integrity alert from its own
/// agent with its own file hash, so every alert is new and opens its own
/// case rather than joining one by correlation.
pub(crate) fn synthetic_alert(index: usize) -> palisade_model::Alert {
    let raw = json!({
        "timestamp": "2026-12-04T10:00:00.000+0000",
        "rule": { "level": 7, "id": "554", "description": "File added to the system." },
        "agent": { "id": format!("{index:06}"), "name": format!("bench-{index}"), "ip": "10.0.2.15" },
        "syscheck": {
            "path": format!("/srv/bench/file-{index}"),
            "sha256_after": format!("{index:064x}"),
        },
    });
    // The document is built above with every field the normaliser needs.
    palisade_model::Alert::from_raw(raw).unwrap_or_else(|_| unreachable!())
}

/// Pushes `count` alerts through the engine with `tasks` concurrent ingest
/// tasks: each alert is stored, joins a case, runs three sandboxed steps
/// with a journal write after each, and updates its case. The database is
/// flushed at the end and counted in the time.
async fn throughput(config: &Config, count: usize, tasks: usize) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let playbook_path = scratch.path().join("bench.yaml");
    std::fs::write(&playbook_path, THROUGHPUT_PLAYBOOK)?;
    let mut bench_config = config.clone();
    bench_config.data_dir = scratch.path().join("data");
    let host = crate::host::build(&bench_config, Some(&playbook_path)).await?;
    let engine = std::sync::Arc::new(host.engine);

    let alerts: Vec<_> = (0..count).map(synthetic_alert).collect();
    let chunks: Vec<Vec<_>> = alerts
        .chunks(count.div_ceil(tasks.max(1)))
        .map(<[_]>::to_vec)
        .collect();
    let started = Instant::now();
    let mut handles = Vec::new();
    for chunk in chunks {
        let engine = engine.clone();
        handles.push(tokio::spawn(async move {
            for alert in &chunk {
                engine.ingest(alert).await?;
            }
            Ok::<_, palisade_engine::EngineError>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    host.store.flush()?;
    let elapsed = started.elapsed();

    let runs = host.store.runs()?;
    let succeeded = runs
        .iter()
        .filter(|run| run.status == RunStatus::Succeeded && run.steps.len() == 3)
        .count();
    if succeeded != count {
        anyhow::bail!("only {succeeded} of {count} runs finished all three steps");
    }
    println!();
    println!(
        "throughput: {count} alerts through a three-step durable playbook, {tasks} tasks, {} worker threads",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:.0} alerts/s ({:.2} s, {:.1} us per alert)",
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / count as f64
    );
    Ok(())
}

/// Times accepting `count` alerts (parsing excluded) in batches of 1, 10
/// and 100, as `POST /v1/alerts` does: each alert is stored and joins a
/// case in one transaction, and with durable acknowledgement the database
/// is flushed to disk before each batch is acknowledged. Without it the
/// acknowledgement waits for nothing and sled writes in the background.
/// Every measurement uses a fresh database.
fn ingest_throughput(count: usize) -> anyhow::Result<()> {
    let alerts: Vec<_> = (0..count).map(synthetic_alert).collect();
    println!();
    println!("ingest: {count} alerts accepted, without playbook runs");
    println!(
        "{:<6} {:>16} {:>16} {:>7}",
        "batch", "durable ack/s", "no flush ack/s", "ratio"
    );
    for batch in [1, 10, 100] {
        let mut rates = [0.0; 2];
        for (slot, durable) in [(0, true), (1, false)] {
            let scratch = tempfile::tempdir()?;
            let store = SledStore::open(&scratch.path().join("db"))?;
            let started = Instant::now();
            for chunk in alerts.chunks(batch) {
                let now = Utc::now();
                for alert in chunk {
                    store.ingest_alert(alert, now)?;
                }
                if durable {
                    store.flush()?;
                }
            }
            rates[slot] = count as f64 / started.elapsed().as_secs_f64();
        }
        println!(
            "{batch:<6} {:>16.0} {:>16.0} {:>7.2}",
            rates[0],
            rates[1],
            rates[0] / rates[1]
        );
    }
    Ok(())
}

/// Ten `noop.echo` steps: a sequence of four, then a join of two parallel
/// branches, then a `for_each` over three items, then a final step, so
/// scheduling, joins and items all take part.
const ENGINE_PLAYBOOK: &str = r#"
name: bench-engine
trigger: { source: wazuh }
steps:
  - { id: s1, uses: noop.echo, with: { rule: "{{ alert.rule.id }}" } }
  - { id: s2, uses: noop.echo, with: { previous: "{{ steps.s1.rule }}" } }
  - { id: s3, uses: noop.echo, with: { previous: "{{ steps.s2.previous }}" } }
  - { id: s4, uses: noop.echo, with: { items: [a, b, c] } }
  - { id: left, needs: [s4], uses: noop.echo, with: { side: left } }
  - { id: right, needs: [s4], uses: noop.echo, with: { side: right } }
  - id: each
    needs: [left, right]
    for_each: "steps.s4['items']"
    concurrency: 3
    uses: noop.echo
    with: { item: "{{ item }}" }
  - { id: last, uses: noop.echo, with: { all: "{{ steps.each }}" } }
"#;

/// Times the engine's own work per step, plugin time excluded: each run's
/// wall time minus the time its plugin calls took (sandbox, call and
/// output parsing, as the runtime measures them), divided by its ten
/// journaled steps. What remains is scheduling, expressions, the journal
/// (a `started` and a finished record per step), the audit records and
/// the case update at the end. Runs go one at a time.
async fn engine_overhead(config: &Config, runs: usize) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let playbook_path = scratch.path().join("bench-engine.yaml");
    std::fs::write(&playbook_path, ENGINE_PLAYBOOK)?;
    let mut bench_config = config.clone();
    bench_config.data_dir = scratch.path().join("data");
    bench_config.cache_dir = Some(config.cache_dir());
    let host = crate::host::build(&bench_config, Some(&playbook_path)).await?;
    let mut per_step = Vec::with_capacity(runs);
    let mut plugin_share = 0.0;
    for index in 0..runs {
        let alert = synthetic_alert(1_000_000 + index);
        let started = Instant::now();
        let report = host.engine.ingest(&alert).await?;
        let wall = started.elapsed();
        let Some((run_id, RunStatus::Succeeded)) = report.runs.first().cloned() else {
            anyhow::bail!(
                "the engine benchmark run did not succeed: {:?}",
                report.runs
            );
        };
        let run = host
            .store
            .run(&run_id)?
            .ok_or_else(|| anyhow::anyhow!("run {run_id} was not stored"))?;
        let plugin_us: u64 = run.steps.iter().map(|step| step.duration_us).sum();
        let steps = run.steps.len().max(1) as u32;
        let engine = wall.saturating_sub(Duration::from_micros(plugin_us));
        plugin_share += plugin_us as f64 / wall.as_micros().max(1) as f64;
        per_step.push(engine / steps);
    }
    let summary = summarise(per_step);
    println!();
    println!(
        "engine overhead per step, plugin time excluded: {runs} runs of 10 steps (sequence, join, for_each)"
    );
    println!(
        "p50 {:.1} us, p99 {:.1} us, mean {:.1} us; plugin calls were {:.0}% of run time",
        summary.p50.as_secs_f64() * 1e6,
        summary.p99.as_secs_f64() * 1e6,
        summary.mean.as_secs_f64() * 1e6,
        plugin_share * 100.0 / runs as f64
    );
    Ok(())
}

/// Name of the secret the VirusTotal plugin requests.
const VIRUSTOTAL_SECRET: &str = "virustotal-api-key";

/// Starts a VirusTotal stand-in on 127.0.0.1 that responds to every file
/// lookup with the API's `NotFoundError`, and returns its origin.
async fn start_virustotal_stub() -> anyhow::Result<String> {
    async fn not_found() -> impl axum::response::IntoResponse {
        let body = json!({ "error": { "code": "NotFoundError", "message": "not found" } });
        (axum::http::StatusCode::NOT_FOUND, axum::Json(body))
    }
    let app = axum::Router::new().route("/api/v3/files/{id}", axum::routing::get(not_found));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "benchmark stub server stopped");
        }
    });
    Ok(format!("http://{address}"))
}

/// Returns the VirusTotal grant for the stand-in at `origin`, with `quotas`.
fn virustotal_grant(origin: &str, quotas: Vec<QuotaRule>) -> Grant {
    let mut grant = Grant {
        http_origins: vec![origin.to_string()],
        quotas,
        ..Grant::default()
    };
    grant.config.insert("base_url".into(), origin.to_string());
    grant.secrets = vec![palisade_runtime::SecretGrant {
        name: VIRUSTOTAL_SECRET.into(),
        origins: vec![origin.to_string()],
    }];
    grant
}

/// Returns a quota rule with every kind of limit, set far above what the
/// benchmark sends, so each request runs all checks and is always admitted.
fn unreachable_quota() -> QuotaRule {
    QuotaRule {
        origin: None,
        rate: Some(RateRule {
            requests: u32::MAX,
            per_seconds: 1,
        }),
        daily: Some(u64::MAX),
        monthly: Some(u64::MAX),
        concurrency: Some(u32::MAX),
        on_exceed: palisade_runtime::OnExceed::Fail,
        max_wait_ms: None,
    }
}

/// Builds a host in `dir` whose VirusTotal plugin has `grant`.
async fn quota_bench_host(
    config: &Config,
    dir: &std::path::Path,
    grant: Grant,
) -> anyhow::Result<crate::host::Host> {
    std::fs::create_dir_all(dir)?;
    let key_file = dir.join("vt-key");
    std::fs::write(&key_file, "benchmark-key")?;
    let playbook = dir.join("bench.yaml");
    std::fs::write(&playbook, THROUGHPUT_PLAYBOOK)?;
    let mut bench_config = config.clone();
    bench_config.data_dir = dir.join("data");
    bench_config.secrets.insert(
        VIRUSTOTAL_SECRET.into(),
        SecretConfig {
            env: None,
            file: Some(key_file),
            stored: false,
        },
    );
    bench_config.plugins.insert("virustotal".into(), grant);
    crate::host::build(&bench_config, Some(&playbook)).await
}

/// Times one `virustotal.file-report` call, which must find nothing.
async fn time_lookup(
    runtime: &Runtime,
    input: &serde_json::Value,
    context: &CallContext,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let call = runtime
        .invoke("virustotal", "file-report", input, context)
        .await
        .map_err(|failure| anyhow::anyhow!(failure.error))?;
    if call.output.get("found") != Some(&serde_json::Value::Bool(false)) {
        anyhow::bail!("unexpected lookup output {}", call.output);
    }
    Ok(started.elapsed())
}

/// Times `iterations` VirusTotal lookups on each side, alternating in
/// blocks of `block`, and prints the per-call figures.
async fn quota_overhead(config: &Config, iterations: usize, block: usize) -> anyhow::Result<()> {
    let origin = start_virustotal_stub().await?;
    let scratch = tempfile::tempdir()?;
    let plain_grant = virustotal_grant(&origin, Vec::new());
    let quota_grant = virustotal_grant(&origin, vec![unreachable_quota()]);
    let plain = quota_bench_host(config, &scratch.path().join("plain"), plain_grant).await?;
    let quota = quota_bench_host(config, &scratch.path().join("quota"), quota_grant).await?;
    let hosts = [&plain.caller.runtime, &quota.caller.runtime];

    let input = json!({ "hash": format!("{:064x}", 1) });
    let context = CallContext::default();
    for runtime in hosts {
        for _ in 0..block.min(iterations) {
            time_lookup(runtime, &input, &context).await?;
        }
    }
    let mut samples = [
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    ];
    while samples[1].len() < iterations {
        for (runtime, side) in hosts.iter().zip(samples.iter_mut()) {
            for _ in 0..block.min(iterations - side.len()) {
                side.push(time_lookup(runtime, &input, &context).await?);
            }
        }
    }

    let [plain_samples, quota_samples] = samples;
    let plain = summarise(plain_samples);
    let quota = summarise(quota_samples);
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    println!(
        "quota overhead, {iterations} calls each, virustotal.file-report to a loopback server"
    );
    println!(
        "{:<36} {:>9} {:>9} {:>9}",
        "", "p50 us", "p99 us", "mean us"
    );
    for (name, summary) in [
        ("origin and secret checks only", &plain),
        ("plus quota (rate, day, month, conc.)", &quota),
    ] {
        println!(
            "{name:<36} {:>9.1} {:>9.1} {:>9.1}",
            micros(summary.p50),
            micros(summary.p99),
            micros(summary.mean)
        );
    }
    println!(
        "quota cost per call at p50: {:.1} us",
        micros(quota.p50) - micros(plain.p50)
    );
    Ok(())
}

/// Output limit of the hostile plugin in the zoo part, in bytes.
const ZOO_OUTPUT_BYTES: usize = 64 << 10;
/// Log limit of the hostile plugin in the zoo part, in bytes.
const ZOO_LOG_BYTES: usize = 4 << 10;
/// Lines each `log-flood` call writes: 100 KB, far over [`ZOO_LOG_BYTES`].
const ZOO_LOG_LINES: u64 = 1_000;
/// Upper bound on the calls of one zoo task, so a task ends even if the
/// stop flag is never set.
const ZOO_MAX_CALLS_PER_TASK: usize = 1_000_000;
/// How long the zoo tasks may take to finish their first calls.
const ZOO_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Outcome a zoo call ends with when the host works: an error kind, or
/// [`LOGS_CAPPED`] for a successful call whose logs were cut at the limit.
const LOGS_CAPPED: &str = "ok with logs capped";

/// A hostile action the zoo calls, with its input and expected outcome.
struct ZooAction {
    action: &'static str,
    input: serde_json::Value,
    expected: &'static str,
}

fn zoo_actions() -> Vec<ZooAction> {
    let action = |action, input, expected| ZooAction {
        action,
        input,
        expected,
    };
    vec![
        action("spin", json!({}), "cpu_time_limit"),
        action("allocate", json!({}), "memory_limit"),
        action("recurse", json!({}), "stack_overflow"),
        action(
            "huge-output",
            json!({ "bytes": 4 * ZOO_OUTPUT_BYTES }),
            "output_too_large",
        ),
        action("log-flood", json!({ "lines": ZOO_LOG_LINES }), LOGS_CAPPED),
    ]
}

/// Returns the grant of the hostile plugin in the zoo part: nothing but
/// small limits.
fn zoo_grant() -> Grant {
    Grant {
        limits: Limits {
            cpu_ms: 100,
            wall_ms: 2_000,
            memory_bytes: 16 << 20,
            output_bytes: ZOO_OUTPUT_BYTES,
            log_bytes: ZOO_LOG_BYTES,
            ..Limits::default()
        },
        ..Grant::default()
    }
}

/// Returns the outcome of a zoo call in the terms of [`ZooAction::expected`].
fn zoo_outcome(result: &Result<CallOutput, CallFailure>) -> String {
    match result {
        Err(failure) => failure.error.kind().to_string(),
        Ok(output) if output.report.logs_dropped > 0 => LOGS_CAPPED.to_string(),
        Ok(_) => "ok".to_string(),
    }
}

/// Calls and unexpected outcomes of one zoo task.
struct ZooTally {
    action: &'static str,
    calls: usize,
    /// Calls that ended other than expected.
    unexpected: usize,
    /// Outcome of the first such call.
    first_unexpected: Option<String>,
}

/// Calls `zoo.action` again and again until `stop` is set, and counts
/// `ready` up after the first call.
async fn run_zoo_task(
    runtime: Arc<Runtime>,
    hostile: Arc<LoadedPlugin>,
    zoo: ZooAction,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicUsize>,
) -> ZooTally {
    let mut tally = ZooTally {
        action: zoo.action,
        calls: 0,
        unexpected: 0,
        first_unexpected: None,
    };
    while !stop.load(Ordering::Relaxed) && tally.calls < ZOO_MAX_CALLS_PER_TASK {
        let result = runtime
            .invoke_loaded(&hostile, zoo.action, &zoo.input)
            .await;
        let outcome = zoo_outcome(&result);
        if outcome != zoo.expected {
            tally.unexpected += 1;
            tally.first_unexpected.get_or_insert(outcome);
        }
        tally.calls += 1;
        if tally.calls == 1 {
            ready.fetch_add(1, Ordering::Relaxed);
        }
    }
    tally
}

/// Times `iterations` sequential `noop.echo` calls in a task of their own.
async fn time_echoes(
    runtime: &Arc<Runtime>,
    noop: &Arc<LoadedPlugin>,
    iterations: usize,
) -> anyhow::Result<Vec<Duration>> {
    let runtime = runtime.clone();
    let noop = noop.clone();
    let task = tokio::spawn(async move {
        let input = json!({ "alert": "benchmark" });
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            let call = runtime
                .invoke_loaded(&noop, "echo", &input)
                .await
                .map_err(|failure| anyhow::anyhow!("noop.echo failed: {}", failure.error))?;
            samples.push(started.elapsed());
            if call.output != input {
                anyhow::bail!("noop.echo returned {} for {input}", call.output);
            }
        }
        Ok(samples)
    });
    task.await?
}

/// Returns the path of `hostile.wasm` in `dir` or in the Cargo output
/// directory under it.
fn find_hostile(dir: &Path) -> anyhow::Result<PathBuf> {
    let candidates = [
        dir.join("hostile.wasm"),
        dir.join("wasm32-wasip2/release/hostile.wasm"),
    ];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no hostile.wasm in {} or its wasm32-wasip2/release directory; \
                 build it with `cargo test --test sandbox`, which writes it under \
                 target/tmp/sandbox-plugins",
                dir.display()
            )
        })
}

/// Times `noop.echo` alone and beside the zoo of hostile calls, prints both
/// and the zoo's tally, and fails when a zoo call ended other than expected.
async fn zoo_latency(config: &Config, dir: &Path, iterations: usize) -> anyhow::Result<()> {
    let hostile_path = find_hostile(dir)?;
    let scratch = tempfile::tempdir()?;
    let runtime = Arc::new(Runtime::new(
        RuntimeConfig {
            cache_dir: Some(scratch.path().join("cache")),
        },
        None,
        None,
    )?);
    let noop = runtime
        .load(&config.plugins_dir.join("noop.wasm"), |name| {
            config.grant(name)
        })
        .await?;
    let hostile = runtime.load(&hostile_path, |_| zoo_grant()).await?;

    // Warm up so first-call costs do not count.
    time_echoes(&runtime, &noop, iterations.min(100)).await?;
    let alone = summarise(time_echoes(&runtime, &noop, iterations).await?);

    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let actions = zoo_actions();
    let action_count = actions.len();
    let mut tasks = Vec::new();
    for zoo in actions {
        tasks.push(tokio::spawn(run_zoo_task(
            runtime.clone(),
            hostile.clone(),
            zoo,
            stop.clone(),
            ready.clone(),
        )));
    }
    let waiting_since = Instant::now();
    while ready.load(Ordering::Relaxed) < action_count
        && waiting_since.elapsed() < ZOO_START_TIMEOUT
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let beside = time_echoes(&runtime, &noop, iterations).await;
    stop.store(true, Ordering::Relaxed);
    let mut tallies = Vec::new();
    for task in tasks {
        tallies.push(task.await?);
    }
    if ready.load(Ordering::Relaxed) < action_count {
        anyhow::bail!("the zoo tasks did not all finish a call within {ZOO_START_TIMEOUT:?}");
    }
    let beside = summarise(beside?);

    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    println!(
        "zoo: noop.echo, {iterations} sequential calls, alone and beside {action_count} tasks calling hostile actions"
    );
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>9}",
        "", "p50 us", "p99 us", "mean us", "max us"
    );
    for (name, summary) in [
        ("noop.echo alone", &alone),
        ("noop.echo beside the zoo", &beside),
    ] {
        println!(
            "{name:<36} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            micros(summary.p50),
            micros(summary.p99),
            micros(summary.mean),
            micros(summary.max)
        );
    }
    print_zoo_tallies(&tallies)
}

/// Prints the calls of each zoo task and fails when any call ended other
/// than expected.
fn print_zoo_tallies(tallies: &[ZooTally]) -> anyhow::Result<()> {
    let expected: Vec<_> = zoo_actions()
        .into_iter()
        .map(|zoo| (zoo.action, zoo.expected))
        .collect();
    let total: usize = tallies.iter().map(|tally| tally.calls).sum();
    let unexpected: usize = tallies.iter().map(|tally| tally.unexpected).sum();
    println!("zoo calls: {total}, {unexpected} ended other than expected");
    for tally in tallies {
        let expected = expected
            .iter()
            .find(|(action, _)| *action == tally.action)
            .map_or("?", |(_, expected)| expected);
        println!(
            "  {:<12} {:>7} calls, expected {expected}, {} otherwise{}",
            tally.action,
            tally.calls,
            tally.unexpected,
            tally
                .first_unexpected
                .as_ref()
                .map(|outcome| format!(" (first: {outcome})"))
                .unwrap_or_default()
        );
    }
    if unexpected > 0 {
        anyhow::bail!("{unexpected} of {total} zoo calls ended other than expected");
    }
    Ok(())
}
