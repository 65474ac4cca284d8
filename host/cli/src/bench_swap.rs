//! The hot-swap benchmark: how long a new plugin version takes to reach
//! runs, and what swapping does to the latency of the runs around it.
//!
//! It needs two or more signed builds of the `versioned` test fixture in
//! one directory (`benches/swap.sh` makes them), and a configuration that
//! trusts their key. In a scratch database it:
//! 1. installs the second build through the registry with a cold
//!    compilation cache, and times the whole install;
//! 2. runs alerts through a three-step playbook on `tasks` concurrent
//!    tasks, first with no swaps (the baseline), then while a swapper
//!    activates the builds in turn every `interval`;
//! 3. for each swap, measures the time from the start of the activation to
//!    the start of the first run that got the new version.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use palisade_model::RunStatus;
use palisade_store::Store;
use tokio::sync::Mutex;

use crate::bench::{Summary, summarise, synthetic_alert};
use crate::config::Config;
use crate::registry::InstallRequest;

const SWAP_PLAYBOOK: &str = include_str!("../../../plugins/versioned/swap-chain.yaml");

/// One finished run: when it started (relative to the benchmark's clock),
/// how long it took, and the version it got.
struct Sample {
    started: Instant,
    took: Duration,
    version: String,
}

/// Settings of the swap benchmark.
pub struct SwapBench<'a> {
    pub dir: &'a Path,
    pub runs: usize,
    pub tasks: usize,
    pub swaps: usize,
    pub interval: Duration,
}

pub async fn run(config: &Config, bench: SwapBench<'_>) -> anyhow::Result<()> {
    let mut builds = palisade_runtime::wasm_files(bench.dir)
        .with_context(|| format!("cannot list {}", bench.dir.display()))?;
    builds.sort();
    if builds.len() < 2 {
        anyhow::bail!(
            "{} contains {} component(s); the swap benchmark needs two or more signed builds of the `versioned` fixture, which `benches/swap.sh` makes",
            bench.dir.display(),
            builds.len()
        );
    }
    let scratch = tempfile::tempdir()?;
    let plugins = scratch.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let first = &builds[0];
    let file_name = first.file_name().context("a build has no file name")?;
    std::fs::copy(first, plugins.join(file_name))?;
    let signature = palisade_signing::signature_path(first);
    if signature.is_file() {
        std::fs::copy(
            &signature,
            palisade_signing::signature_path(&plugins.join(file_name)),
        )?;
    }
    let playbook_path = scratch.path().join("bench-swap.yaml");
    std::fs::write(&playbook_path, SWAP_PLAYBOOK)?;
    let mut bench_config = config.clone();
    bench_config.data_dir = scratch.path().join("data");
    bench_config.cache_dir = Some(scratch.path().join("cache"));
    bench_config.plugins_dir = plugins;
    let host = Arc::new(crate::host::build(&bench_config, Some(&playbook_path)).await?);

    // Install every other build once, cold, and keep the version numbers.
    let mut versions = vec![
        host.registry
            .runtime()
            .plugin("versioned")
            .context("the first build is not the `versioned` fixture")?
            .info
            .version
            .clone(),
    ];
    let mut installs = Vec::new();
    for build in &builds[1..] {
        let bytes = std::fs::read(build)?;
        let detached = std::fs::read_to_string(palisade_signing::signature_path(build)).ok();
        let started = Instant::now();
        let report = host
            .registry
            .install(InstallRequest {
                bytes,
                detached_signature: detached,
                source: build.display().to_string(),
                actor: "bench".into(),
                activate: false,
            })
            .await?;
        installs.push(started.elapsed());
        versions.push(report.version);
    }

    let alerts = Arc::new(std::sync::atomic::AtomicUsize::new(2_000_000));
    let all = |runs| Phase::Runs(std::sync::atomic::AtomicUsize::new(runs));
    stream(
        &host,
        &alerts,
        bench.tasks,
        Arc::new(all(bench.runs.min(200))),
    )
    .await?;
    let baseline = stream(&host, &alerts, bench.tasks, Arc::new(all(bench.runs))).await?;

    // The runs go on until the last swap is done.
    let swapping = Arc::new(Phase::Until(AtomicBool::new(true)));
    let swaps = Arc::new(Mutex::new(Vec::<(Instant, Duration, String)>::new()));
    let swapper = {
        let (host, swapping, swaps) = (host.clone(), swapping.clone(), swaps.clone());
        let versions = versions.clone();
        let (limit, interval) = (bench.swaps, bench.interval);
        tokio::spawn(async move {
            let mut next = 1;
            while swaps.lock().await.len() < limit {
                tokio::time::sleep(interval).await;
                let target = versions[next % versions.len()].clone();
                next += 1;
                let started = Instant::now();
                if let Err(error) = host.registry.activate("versioned", &target, "bench").await {
                    eprintln!("swap to {target} failed: {error}");
                    break;
                }
                swaps
                    .lock()
                    .await
                    .push((started, started.elapsed(), target));
            }
            swapping.stop();
        })
    };
    let during = stream(&host, &alerts, bench.tasks, swapping).await?;
    swapper.await?;
    let swaps = swaps.lock().await.clone();

    let mut reach = Vec::new();
    for (started, _, version) in &swaps {
        if let Some(first) = during
            .iter()
            .filter(|sample| sample.started >= *started && &sample.version == version)
            .map(|sample| sample.started)
            .min()
        {
            reach.push(first - *started);
        }
    }
    let publish: Vec<Duration> = swaps.iter().map(|(_, took, _)| *took).collect();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!(
        "plugin swaps: versions {versions:?}, {} swaps every {} ms, {} tasks, {} baseline runs, {} runs during swaps",
        swaps.len(),
        bench.interval.as_millis(),
        bench.tasks,
        bench.runs,
        during.len()
    );
    if let Some(install) = installs.first() {
        println!(
            "install (signature, cold compile, canary describe and self-test, store): {:.1} ms",
            millis(*install)
        );
    }
    if !publish.is_empty() {
        let publish = summarise(publish);
        println!(
            "activation (stored, flushed, published): p50 {:.0} us, p99 {:.0} us, max {:.0} us",
            micros(publish.p50),
            micros(publish.p99),
            micros(publish.max)
        );
    }
    if reach.is_empty() {
        println!("no run started on a swapped-in version; raise --engine-runs");
    } else {
        let count = reach.len();
        let reach = summarise(reach);
        println!(
            "activation start to first run on the new version ({count} swaps): p50 {:.0} us, p99 {:.0} us, max {:.0} us",
            micros(reach.p50),
            micros(reach.p99),
            micros(reach.max)
        );
    }
    let line = |label: &str, summary: &Summary| {
        println!(
            "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            millis(summary.p50),
            millis(summary.p99),
            millis(summary.max)
        );
    };
    let baseline = summarise(baseline.into_iter().map(|s| s.took).collect());
    let during_summary = summarise(during.iter().map(|s| s.took).collect());
    line("run latency, no swaps (baseline)", &baseline);
    line("run latency during swaps", &during_summary);
    println!(
        "ratio during/baseline: p50 {:.2}, p99 {:.2}",
        during_summary.p50.as_secs_f64() / baseline.p50.as_secs_f64(),
        during_summary.p99.as_secs_f64() / baseline.p99.as_secs_f64()
    );
    Ok(())
}

/// How long a phase of runs lasts.
enum Phase {
    /// This many more runs.
    Runs(std::sync::atomic::AtomicUsize),
    /// Until the flag is cleared.
    Until(AtomicBool),
}

impl Phase {
    /// Takes one run, or returns false when the phase is over.
    fn take(&self) -> bool {
        match self {
            Self::Runs(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            Self::Until(going) => going.load(Ordering::Relaxed),
        }
    }

    fn stop(&self) {
        if let Self::Until(going) = self {
            going.store(false, Ordering::Relaxed);
        }
    }
}

/// Runs alerts through the playbook on `tasks` tasks for the length of
/// `phase` and returns one sample per run. A run that does not succeed
/// fails the benchmark.
async fn stream(
    host: &Arc<crate::host::Host>,
    next_alert: &Arc<std::sync::atomic::AtomicUsize>,
    tasks: usize,
    phase: Arc<Phase>,
) -> anyhow::Result<Vec<Sample>> {
    let mut handles = Vec::new();
    for _ in 0..tasks.max(1) {
        let (host, next_alert, phase) = (host.clone(), next_alert.clone(), phase.clone());
        handles.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while phase.take() {
                let alert = synthetic_alert(next_alert.fetch_add(1, Ordering::Relaxed));
                let started = Instant::now();
                let report = host.engine.ingest(&alert).await?;
                let took = started.elapsed();
                let Some((run_id, RunStatus::Succeeded)) = report.runs.first().cloned() else {
                    anyhow::bail!("a benchmark run did not succeed: {:?}", report.runs);
                };
                let run = host
                    .store
                    .run(&run_id)?
                    .with_context(|| format!("run {run_id} was not stored"))?;
                let version = run
                    .plugin_versions
                    .get("versioned")
                    .cloned()
                    .unwrap_or_default();
                samples.push(Sample {
                    started,
                    took,
                    version,
                });
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut samples = Vec::new();
    for handle in handles {
        samples.extend(handle.await??);
    }
    Ok(samples)
}
