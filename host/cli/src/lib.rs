//! The `palisade` command: one-shot runs, the daemon, and read-back of
//! cases, runs and plugins. Commands parse arguments and format output; the
//! work happens in the engine they share with the HTTP API.

mod api_client;
pub mod api_config;
mod api_error;
pub mod audit_cmd;
pub mod auth;
pub mod bench;
mod bench_swap;
mod case_api;
pub mod case_cmd;
pub mod config;
mod export_cmd;
pub mod host;
pub mod metrics;
mod output;
mod playbook_api;
mod playbook_test;
mod plugin_api;
mod plugin_cmd;
pub mod registry;
mod run_cmd;
pub mod secrets;
pub mod server;
pub mod sign_cmd;
mod tls;
mod token_api;
mod token_cmd;
pub mod webhook;

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use palisade_model::{Alert, parse_alert_bytes};
use palisade_runtime::CallContext;
use palisade_store::Store;
use serde_json::{Value, json};

use crate::config::Config;
use crate::secrets::MasterKey;

/// Palisade: a SOAR host that runs every playbook step as a sandboxed
/// WebAssembly component.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (TOML). Without it, defaults apply and no plugin
    /// is granted any capability.
    #[arg(long, short, global = true, env = "PALISADE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Data directory for the database and the compiled-plugin cache;
    /// overrides `data_dir` in the configuration.
    #[arg(long, global = true, env = "PALISADE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log debug detail to standard error.
    #[arg(long, short, global = true)]
    pub verbose: bool,

    /// Format of the log lines on standard error: `text` for people, or
    /// `json` for one JSON object a line with the fields of the current
    /// run, step and plugin-call spans.
    #[arg(
        long,
        global = true,
        env = "PALISADE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    /// API token (`pal_...`) sent to the daemon by commands given
    /// `--server`. The environment variable keeps it out of the process
    /// list.
    #[arg(long, global = true, env = "PALISADE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// Format of the diagnostics on standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest alerts from files, run matching playbooks, and print the cases.
    /// With `show ID`, print one run's timeline instead.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Run {
        #[command(subcommand)]
        show: Option<RunCommand>,
        /// A playbook file, or a directory of playbooks (the default is the
        /// configured `playbooks_dir`).
        playbook: Option<PathBuf>,
        /// Alert file: a JSON document, a JSON array, JSON lines, or
        /// Suricata EVE lines. Repeat for several files.
        #[arg(long = "alerts", required = true)]
        alerts: Vec<PathBuf>,
        /// Threat-intelligence file to load first: a STIX 2.1 bundle
        /// (.json) or a CSV block list (.csv). Repeat for several files.
        #[arg(long = "intel")]
        intel: Vec<PathBuf>,
        /// Print the cases as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon: accept alerts over HTTP and run playbooks on them.
    Serve {
        /// Address to listen on; overrides `listen` in the configuration.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// List cases, filtered by status, severity, assignee, tag, SLA or
    /// title, or show one case in full.
    Cases(case_cmd::CasesArgs),
    /// Work on a case: update it, comment, manage its tasks, or show
    /// statistics over all cases.
    Case {
        #[command(subcommand)]
        command: case_cmd::CaseCommand,
    },
    /// Show one run with its steps.
    Runs {
        /// Run id; without it, list all runs.
        id: Option<String>,
        /// Read from a running daemon at this URL instead of the database.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Decide on a parked run, whose step with side effects was interrupted
    /// mid-call: retry the step with the same idempotency key, skip it, or
    /// fail it. The run then continues.
    Resume {
        /// Id of the parked run, such as R00000012.
        run_id: String,
        #[arg(long, value_parser = ["retry", "skip", "fail"])]
        decision: String,
        /// Who decides, recorded in the case timeline; `cli` by default. Through
        /// a daemon the actor is the name of the API token, and a different
        /// name here is rejected.
        #[arg(long = "as")]
        actor: Option<String>,
        /// Send the decision to a running daemon at this URL instead of
        /// opening the database.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the approval steps waiting for an answer.
    Approvals {
        /// Read from a running daemon at this URL instead of the database.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Answer an approval step, then let its run continue.
    Approve {
        /// Id of the run with the open approval, such as R00000012.
        run_id: String,
        /// Id of the approval step.
        step_id: String,
        #[arg(long, value_parser = ["approve", "reject"])]
        decision: String,
        /// Response to the approval's form, as JSON.
        #[arg(long)]
        response: Option<String>,
        /// Item position, for an approval inside a `for_each` step.
        #[arg(long)]
        item: Option<u32>,
        /// Who answers; must be one of the approval's approvers when it
        /// names them. `cli` by default. Through a daemon the actor is the
        /// name of the API token, and a different name here is rejected.
        #[arg(long = "as")]
        actor: Option<String>,
        /// Send the answer to a running daemon at this URL instead of
        /// opening the database.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check playbooks before they run.
    Playbook {
        #[command(subcommand)]
        command: PlaybookCommand,
    },
    /// Install, swap, roll back, sign and inspect plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Show each plugin's API quotas: rate and tokens left, daily and
    /// monthly use, requests in flight and pauses after a 429 response.
    Quota {
        /// Read the live state from a running daemon at this URL. Without
        /// it, the counts stored in the database are shown, with full rate
        /// buckets and nothing in flight.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Load threat-intelligence files into the ti-matcher plugin.
    Intel {
        /// STIX 2.1 bundles (.json) or CSV block lists (.csv).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Manage the secrets stored encrypted in the database.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Create, list and revoke the tokens of the HTTP API.
    Token {
        #[command(subcommand)]
        command: token_cmd::TokenCommand,
    },
    /// Measure per-step overhead against a bare wasmtime instantiate and call.
    Bench(bench::BenchArgs),
    /// Check or list the hash-chained audit log. Opens the database, so
    /// stop the daemon first.
    Audit {
        #[command(subcommand)]
        command: audit_cmd::AuditCommand,
    },
    /// Write the whole database as JSON lines: alerts, cases, runs, plugin
    /// key-value data, encrypted secrets and the audit log. Opens the
    /// database, so stop the daemon first.
    Export {
        /// File to write; standard output by default.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Read an export into an empty data directory, then verify the audit
    /// chain it brought in.
    Import {
        /// Export file, or `-` for standard input.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlaybookCommand {
    /// Report every problem of the playbooks with file, line, column and a
    /// hint: invalid YAML or fields, unknown plugins, actions and
    /// sub-playbooks, inputs that do not fit an action's schema, undefined
    /// variables, calls that loop. Warnings name steps that can never run
    /// and failures nothing handles. Exits 1 when there is an error.
    Check {
        /// Playbook files or directories (the default is the configured
        /// `playbooks_dir`). Playbooks that call each other are checked
        /// together.
        paths: Vec<PathBuf>,
    },
    /// Run PLAYBOOK on the alerts of a file with the real plugins, in a
    /// scratch database, answering every HTTP request from recorded
    /// responses. Reports the path taken with each step's output, the error
    /// paths and branches not exercised, and each plugin's API calls
    /// against its quotas. Other playbooks in PLAYBOOK's directory can be
    /// called as sub-playbooks. Exits 1 when a run fails.
    Test {
        playbook: PathBuf,
        /// Alert file: a JSON document, a JSON array, JSON lines or EVE
        /// lines.
        #[arg(long)]
        alert: PathBuf,
        /// Directory of recorded responses, one `.json` file per request:
        /// {"request": {"method", "url"}, "response": {"status", "headers",
        /// "body"}}.
        #[arg(long)]
        fixtures: PathBuf,
        /// Reject approval questions instead of approving them.
        #[arg(long)]
        reject: bool,
        /// Response given with each approval, as JSON, for forms with
        /// required fields.
        #[arg(long)]
        response: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Print the timeline of run ID: each step with its start, duration,
    /// attempt, input, output and error, and the runs of the sub-playbooks
    /// it called, indented. Secrets were redacted before the run was
    /// stored.
    Show {
        id: String,
        /// Read from a running daemon at this URL instead of the database.
        #[arg(long)]
        server: Option<String>,
        /// Print the run and its sub-playbook runs as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Encrypt the value read from standard input and store it as secret
    /// NAME, replacing an earlier value. Surrounding whitespace is removed.
    /// Needs the secret key (`PALISADE_SECRET_KEY` or `secret_key_file`).
    Set { name: String },
    /// List the names of the stored secrets (never their values).
    List,
    /// Delete stored secret NAME.
    Delete { name: String },
    /// Print a new random secret key (64 hexadecimal digits) to standard
    /// output, for `PALISADE_SECRET_KEY` or `secret_key_file`.
    GenerateKey,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List installed plugins: the active version and every version kept,
    /// from the daemon at --server or the database. Before the first
    /// start, it lists the components of the plugin directory.
    List {
        /// Daemon to ask, such as http://127.0.0.1:8470.
        #[arg(long)]
        server: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin's actions and its requested versus granted capabilities.
    Show { name: String },
    /// Install a plugin component after checking its signature, its
    /// world, its imports and its description, and make it active. Runs
    /// in flight keep the version they started with.
    Install {
        file: PathBuf,
        /// Detached signature file; `FILE.sig` is used when present.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Install without making it active.
        #[arg(long)]
        stage: bool,
        /// Daemon to install into, such as http://127.0.0.1:8470;
        /// without it, the database is changed directly.
        #[arg(long)]
        server: Option<String>,
        /// Print the install report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make an installed version active.
    Activate {
        name: String,
        version: String,
        /// Daemon to change; without it, the database is changed directly.
        #[arg(long)]
        server: Option<String>,
    },
    /// Make the version active before the current one active again.
    Rollback {
        name: String,
        /// Daemon to change; without it, the database is changed directly.
        #[arg(long)]
        server: Option<String>,
    },
    /// List a plugin's installs, activations and rollbacks.
    History {
        name: String,
        /// Daemon to ask; without it, the database is read directly.
        #[arg(long)]
        server: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create an ed25519 key pair for signing plugins: NAME.key (secret,
    /// mode 0600) and NAME.pub (for operators' `[trust] keys`).
    Keygen {
        /// Directory for the two files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Name of the key pair; operators see it as the signer's name.
        #[arg(long)]
        name: String,
    },
    /// Sign a plugin component: writes FILE.sig, or with --embed adds the
    /// signature to the component itself.
    Sign {
        file: PathBuf,
        /// Secret key file from `palisade plugin keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Put the signature in a custom section of the component instead
        /// of a `.sig` file beside it.
        #[arg(long)]
        embed: bool,
        /// Output file of the signed component for --embed (default: in
        /// place).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(data_dir) = cli.data_dir {
        config.data_dir = data_dir;
    }
    let token = cli.token.as_deref();
    let client =
        |server: Option<String>| server.map(|server| api_client::ApiClient::new(&server, token));
    match cli.command {
        Command::Run {
            show: Some(RunCommand::Show { id, server, json }),
            ..
        } => run_cmd::show(&config, &id, client(server).as_ref(), json).await,
        Command::Run {
            show: None,
            playbook,
            alerts,
            intel,
            json,
        } => run_once(&config, playbook.as_deref(), &alerts, &intel, json).await,
        Command::Serve { listen } => {
            let listen = listen.unwrap_or(config.listen);
            server::serve(&config, listen, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cases(args) => case_cmd::cases(&config, args, token).await,
        Command::Case { command } => case_cmd::case(&config, command, token).await,
        Command::Runs { id, server, json } => {
            output::runs(&config, id.as_deref(), client(server).as_ref(), json).await
        }
        Command::Resume {
            run_id,
            decision,
            actor,
            server,
            json,
        } => {
            // clap accepts only the three names `parse` accepts.
            let decision = palisade_engine::ParkedDecision::parse(&decision)
                .with_context(|| format!("unknown decision {decision:?}"))?;
            let server = client(server);
            run_cmd::resume(
                &config,
                &run_id,
                decision,
                actor.as_deref(),
                server.as_ref(),
                json,
            )
            .await
        }
        Command::Approvals { server, json } => {
            run_cmd::approvals(&config, client(server).as_ref(), json).await
        }
        Command::Approve {
            run_id,
            step_id,
            decision,
            response,
            item,
            actor,
            server,
            json,
        } => {
            let response = match response {
                Some(text) => serde_json::from_str(&text).with_context(|| {
                    format!("--response {text:?} is not JSON; give an object such as '{{\"reason\": \"confirmed\"}}'")
                })?,
                None => Value::Null,
            };
            let answer = run_cmd::ApprovalAnswer {
                run_id,
                step_id,
                item,
                approve: decision == "approve",
                response,
                actor,
            };
            run_cmd::approve(&config, answer, client(server).as_ref(), json).await
        }
        Command::Playbook {
            command: PlaybookCommand::Check { paths },
        } => check_playbooks(&config, &paths).await,
        Command::Playbook {
            command:
                PlaybookCommand::Test {
                    playbook,
                    alert,
                    fixtures,
                    reject,
                    response,
                    json,
                },
        } => {
            let response = response
                .map(|text| {
                    serde_json::from_str(&text).with_context(|| {
                        format!("--response {text:?} is not JSON; give an object such as '{{\"reason\": \"test\"}}'")
                    })
                })
                .transpose()?;
            playbook_test::run(
                &config, &playbook, &alert, &fixtures, !reject, response, json,
            )
            .await
        }
        Command::Plugin { command } => plugin_command(&config, command, token).await,
        Command::Quota { server, json } => {
            output::quotas(&config, client(server).as_ref(), json).await
        }
        Command::Intel { files } => {
            let host = host::build(&config, None).await?;
            load_intel(&host, &files).await?;
            host.store.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Secret { command } => secret_command(&config, command),
        Command::Token { command } => token_cmd::run(&config, command, token).await,
        Command::Audit { command } => audit_cmd::run(&config, command),
        Command::Export { out } => export_cmd::export(&config, out.as_deref()),
        Command::Import { file } => export_cmd::import(&config, &file),
        Command::Bench(args) => bench::run(&config, args).await,
    }
}

fn secret_command(config: &Config, command: SecretCommand) -> anyhow::Result<ExitCode> {
    match command {
        SecretCommand::Set { name } => {
            secrets::validate_name(&name)?;
            let key = MasterKey::require(config.secret_key_file.as_deref())?;
            let value = read_secret_value()?;
            let record = key.encrypt(&name, value.as_bytes())?;
            let store = host::open_store(config)?;
            store.put_secret(&name, &record)?;
            store.flush()?;
            eprintln!("stored secret {name:?}");
            if !config.is_stored_secret(&name) {
                eprintln!(
                    "note: the configuration has no `[secrets.{name}]` with `stored = true`, so no plugin can use this secret yet"
                );
            }
        }
        SecretCommand::List => {
            let store = host::open_store(config)?;
            for name in store.secret_names()? {
                println!("{name}");
            }
        }
        SecretCommand::Delete { name } => {
            let store = host::open_store(config)?;
            if !store.delete_secret(&name)? {
                anyhow::bail!(
                    "secret {name:?} is not stored; `palisade secret list` shows the stored ones"
                );
            }
            store.flush()?;
            eprintln!("deleted secret {name:?}");
        }
        SecretCommand::GenerateKey => println!("{}", MasterKey::generate()?.to_hex()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a secret's value from standard input, so it never appears in the
/// process list or shell history as an argument would.
fn read_secret_value() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("type the secret value, then press Ctrl-D on a new line");
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .take(secrets::MAX_VALUE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .context("cannot read the secret value from standard input")?;
    if bytes.len() > secrets::MAX_VALUE_BYTES {
        anyhow::bail!(
            "the secret value is over {} bytes",
            secrets::MAX_VALUE_BYTES
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("the secret value on standard input is not valid UTF-8"))?;
    let value = text.trim();
    if value.is_empty() {
        anyhow::bail!("the secret value on standard input is empty");
    }
    Ok(value.to_string())
}

async fn shutdown_signal() {
    // If the signal handler cannot be installed the daemon runs until killed.
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run_once(
    config: &Config,
    playbook: Option<&Path>,
    alert_files: &[PathBuf],
    intel: &[PathBuf],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let host = host::build(config, playbook).await?;
    load_intel(&host, intel).await?;
    // Finish alerts and runs an earlier process accepted but did not end.
    let resumed = host.engine.resume_all().await?;
    if resumed > 0 {
        eprintln!("resumed {resumed} alerts and runs left by an earlier, interrupted process");
    }

    let mut rejected = 0;
    let mut case_ids = Vec::new();
    for file in alert_files {
        let bytes = std::fs::read(file)
            .with_context(|| format!("cannot read alert file {}", file.display()))?;
        for parsed in parse_alert_bytes(&bytes) {
            let alert: Alert = match parsed {
                Ok(alert) => alert,
                Err(error) => {
                    eprintln!("skipped {}: {error}", file.display());
                    rejected += 1;
                    continue;
                }
            };
            let report = host.engine.ingest(&alert).await?;
            if !case_ids.contains(&report.case_id) {
                case_ids.push(report.case_id.clone());
            }
        }
    }
    finish_waiting_runs(&host.engine).await?;
    host.store.flush()?;

    let mut cases = Vec::new();
    for id in &case_ids {
        if let Some(case) = host.store.case(id)? {
            cases.push(case);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&cases)?);
    } else {
        print!("{}", output::case_table(&cases));
    }
    Ok(if rejected > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Waits for runs that wait to retry a step, and continues each when its
/// time comes, until none waits. Runs that wait for a person's approval are
/// left waiting: they are listed, and the daemon or a later `run`
/// continues them. Interrupting leaves every run stored for the next start.
async fn finish_waiting_runs(
    engine: &palisade_engine::Engine<host::RuntimeCaller>,
) -> anyhow::Result<()> {
    loop {
        let asking: std::collections::BTreeSet<String> = engine
            .pending_approvals()?
            .into_iter()
            .map(|approval| approval.root_run_id)
            .collect();
        let next = engine
            .store()
            .active_runs()?
            .into_iter()
            .filter(|run| {
                run.status == palisade_model::RunStatus::Waiting && !asking.contains(&run.id)
            })
            .filter_map(|run| run.wake_at)
            .min();
        let Some(at) = next else {
            if !asking.is_empty() {
                eprintln!(
                    "{} runs wait for an approval; `palisade approvals` lists the questions and `palisade approve` answers them",
                    asking.len()
                );
            }
            return Ok(());
        };
        let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() {
            eprintln!(
                "waiting {} for a step to be retried (Ctrl-C leaves it for the next start)",
                palisade_model::format_duration(std::time::Duration::from_millis(
                    wait.as_millis().max(1) as u64
                ))
            );
            tokio::time::sleep(wait).await;
        }
        for (run_id, _) in engine.due_runs(100)? {
            if !asking.contains(&run_id) {
                engine.resume_run(&run_id).await?;
            }
        }
    }
}

/// Loads STIX bundles and CSV block lists through the ti-matcher plugin.
async fn load_intel(host: &host::Host, files: &[PathBuf]) -> anyhow::Result<()> {
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read intel file {}", file.display()))?;
        let source = file
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_csv = file.extension().is_some_and(|ext| ext == "csv");
        let (action, input) = if is_csv {
            ("load-csv", json!({ "csv": text, "source": source }))
        } else {
            let bundle: Value = serde_json::from_str(&text).with_context(|| {
                format!(
                    "intel file {} is not JSON; expected a STIX 2.1 bundle or a .csv block list",
                    file.display()
                )
            })?;
            ("load-stix", json!({ "bundle": bundle, "source": source }))
        };
        let context = CallContext {
            run_id: "intel-load".into(),
            step_id: source.clone(),
            idempotency_key: None,
            version: None,
        };
        let result = host
            .caller
            .runtime
            .invoke("ti-matcher", action, &input, &context)
            .await
            .map_err(|failure| {
                anyhow::anyhow!("loading {} failed: {}", file.display(), failure.error)
            })?;
        let loaded = result
            .output
            .get("loaded")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let noun = if loaded == 1 {
            "indicator"
        } else {
            "indicators"
        };
        eprintln!("loaded {loaded} {noun} from {}", file.display());
    }
    Ok(())
}

async fn check_playbooks(config: &Config, paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let roots = if paths.is_empty() {
        vec![config.playbooks_dir.clone()]
    } else {
        paths.to_vec()
    };
    let mut files = Vec::new();
    for root in &roots {
        files.extend(
            palisade_engine::playbook_files(root)
                .with_context(|| format!("cannot list playbooks in {}", root.display()))?,
        );
    }
    let caller = host::RuntimeCaller {
        runtime: std::sync::Arc::new(host::build_runtime_only(config).await?),
    };
    let diagnostics = palisade_engine::check_files(&files, &caller);
    for diagnostic in &diagnostics {
        println!("{diagnostic}");
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.level == palisade_engine::Level::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    eprintln!(
        "checked {} playbooks: {errors} errors, {warnings} warnings",
        files.len()
    );
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn plugin_command(
    config: &Config,
    command: PluginCommand,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let client =
        |server: Option<String>| server.map(|server| api_client::ApiClient::new(&server, token));
    match command {
        PluginCommand::Install {
            file,
            signature,
            stage,
            server,
            json,
        } => {
            return plugin_cmd::install(
                config,
                &file,
                signature.as_deref(),
                stage,
                client(server),
                json,
            )
            .await;
        }
        PluginCommand::Activate {
            name,
            version,
            server,
        } => return plugin_cmd::activate(config, &name, &version, client(server)).await,
        PluginCommand::Rollback { name, server } => {
            return plugin_cmd::rollback(config, &name, client(server)).await;
        }
        PluginCommand::History { name, server, json } => {
            return plugin_cmd::history(config, &name, client(server), json).await;
        }
        PluginCommand::Keygen { dir, name } => {
            sign_cmd::keygen(&dir, &name)?;
            return Ok(ExitCode::SUCCESS);
        }
        PluginCommand::Sign {
            file,
            key,
            embed,
            output,
        } => {
            sign_cmd::sign(&file, &key, embed, output.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
        PluginCommand::List { ref server, json } => {
            if let Some(listed) = plugin_cmd::list(config, client(server.clone())).await? {
                return plugin_cmd::print_list(&listed, json);
            }
        }
        PluginCommand::Show { .. } => {}
    }
    let host = host::build_runtime_only(config).await?;
    match command {
        PluginCommand::List { .. } => {
            for plugin in host.plugins() {
                let actions: Vec<&str> = plugin
                    .info
                    .actions
                    .iter()
                    .map(|action| action.name.as_str())
                    .collect();
                println!(
                    "{:<16} {:<8} {}",
                    plugin.info.name,
                    plugin.info.version,
                    actions.join(", ")
                );
            }
        }
        PluginCommand::Show { name } => {
            let plugin = host.plugin(&name).with_context(|| {
                format!(
                    "plugin {name:?} is not loaded; `palisade plugin list` shows the loaded ones"
                )
            })?;
            print!("{}", output::plugin_detail(&plugin));
        }
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}
