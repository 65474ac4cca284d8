//! `palisade cases` and `palisade case ...`: case listing, updates,
//! comments, tasks and statistics, on the database or through a running
//! daemon (`--server URL`), which holds the database lock while it runs.
//! The work happens in [`CaseService`]; this module parses arguments and
//! formats the result.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use palisade_engine::{CaseEdit, CaseFilter, CaseQuery, CaseService, CaseStats, parse_period};
use palisade_model::Case;
use palisade_store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api_client::ApiClient;
use crate::config::Config;
use crate::output::{case_table, printable_lines};

/// Arguments of `palisade cases`.
#[derive(Debug, Args)]
pub struct CasesArgs {
    /// Case id to show in full, with its tasks, comments and timeline.
    pub id: Option<String>,
    /// Read from a running daemon at this URL instead of the database.
    #[arg(long)]
    pub server: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only cases with this status: new, in_progress, resolved,
    /// false_positive, or open (new and in progress) or closed.
    #[arg(long)]
    pub status: Option<String>,
    /// Only cases of this severity or higher: informational, low, medium,
    /// high or critical.
    #[arg(long)]
    pub severity: Option<String>,
    /// Only cases assigned to this name.
    #[arg(long)]
    pub assignee: Option<String>,
    /// Only cases with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only cases past an SLA deadline.
    #[arg(long)]
    pub breached: bool,
    /// Only cases whose title contains this text, ignoring case.
    #[arg(long)]
    pub text: Option<String>,
}

impl CasesArgs {
    fn query(&self) -> CaseQuery {
        CaseQuery {
            status: self.status.clone(),
            severity: self.severity.clone(),
            assignee: self.assignee.clone(),
            tag: self.tag.clone(),
            breached: self.breached.then(|| "true".to_string()),
            text: self.text.clone(),
        }
    }

    fn has_filters(&self) -> bool {
        let query = self.query();
        query.status.is_some()
            || query.severity.is_some()
            || query.assignee.is_some()
            || query.tag.is_some()
            || query.breached.is_some()
            || query.text.is_some()
    }
}

/// Destination and actor of a case command.
#[derive(Debug, Args)]
pub struct Target {
    /// Send the change to a running daemon at this URL instead of writing
    /// the database.
    #[arg(long)]
    pub server: Option<String>,
    /// Name of the person making the change, for the timeline and the
    /// audit log. On the database the default is the `USER` environment
    /// variable, else `cli`. Through a daemon the actor is the name of the
    /// API token, and a different name here is rejected.
    #[arg(long = "as", value_name = "WHO")]
    pub actor: Option<String>,
    /// Print the case as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    /// Returns a client of the daemon at `--server`, sending `token`, when
    /// `--server` is given.
    fn client(&self, token: Option<&str>) -> Option<ApiClient> {
        self.server
            .as_deref()
            .map(|server| ApiClient::new(server, token))
    }

    /// Adds `--as`, when given, to a request body for the daemon.
    fn claim_actor(&self, body: &mut Value) {
        if let Some(actor) = &self.actor {
            body["actor"] = json!(actor);
        }
    }

    fn actor(&self) -> String {
        self.actor
            .clone()
            .or_else(|| std::env::var("USER").ok().filter(|user| !user.is_empty()))
            .unwrap_or_else(|| "cli".to_string())
    }
}

#[derive(Debug, Subcommand)]
pub enum CaseCommand {
    /// Change a case's status, assignee, tags, priority or severity.
    Update {
        /// Case id, such as C00000001.
        id: String,
        /// New status: new, in_progress, resolved or false_positive.
        #[arg(long)]
        status: Option<String>,
        /// Assign the case to this name.
        #[arg(long, conflicts_with = "unassign")]
        assignee: Option<String>,
        /// Remove the assignee.
        #[arg(long)]
        unassign: bool,
        /// Add a tag; repeat for several.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Remove a tag; repeat for several.
        #[arg(long = "untag", value_name = "TAG")]
        untags: Vec<String>,
        /// New priority: P1, P2, P3 or P4.
        #[arg(long)]
        priority: Option<String>,
        /// New severity: informational, low, medium, high or critical.
        #[arg(long)]
        severity: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Add a comment to a case.
    Comment {
        /// Case id, such as C00000001.
        id: String,
        /// Comment text, up to 10,000 characters.
        text: String,
        #[command(flatten)]
        target: Target,
    },
    /// Add a task to a case, or mark one done.
    Task {
        /// Case id, such as C00000001.
        id: String,
        #[command(subcommand)]
        action: TaskAction,
    },
    /// Count cases opened, acknowledged and resolved over a period, with
    /// median times and SLA breaches.
    Stats {
        /// Length of the period that ends now, such as 24h, 7d or 30d.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Read from a running daemon at this URL instead of the database.
        #[arg(long)]
        server: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskAction {
    /// Add a task with this title.
    Add {
        /// Task title: one line of up to 200 characters.
        title: String,
        #[command(flatten)]
        target: Target,
    },
    /// Mark task TASK_ID (such as T1) done.
    Done {
        /// Task id, such as T1.
        task_id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Opens the database and builds the case service with the configured SLA.
fn local_service(config: &Config) -> anyhow::Result<CaseService> {
    let sla = config.sla.policy().map_err(anyhow::Error::msg)?;
    let store: Arc<dyn Store> = crate::host::open_store(config)?;
    Ok(CaseService::new(store, sla))
}

/// `palisade cases`. `token` is the API token sent with `--server`.
pub async fn cases(
    config: &Config,
    args: CasesArgs,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if args.id.is_some() && args.has_filters() {
        anyhow::bail!("filters apply to the case list; drop the case id or the filters");
    }
    let now = Utc::now();
    let client = args
        .server
        .as_deref()
        .map(|server| ApiClient::new(server, token));
    let cases: Vec<Case> = match (&client, &args.id) {
        (Some(server), Some(id)) => {
            let body = server.get(&format!("/v1/cases/{id}")).await?;
            vec![serde_json::from_value(body)?]
        }
        (Some(server), None) => {
            let query = serde_json::to_value(args.query())?;
            let pairs = query_pairs(&query);
            serde_json::from_value(server.send(Method::GET, "/v1/cases", &pairs, None).await?)?
        }
        (None, Some(id)) => vec![local_service(config)?.case(id, now)?],
        (None, None) => {
            let filter = CaseFilter::parse(&args.query())?;
            local_service(config)?.list(&filter, now)?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cases)?);
    } else if args.id.is_some() {
        for case in &cases {
            print!("{}", case_detail(case));
        }
    } else {
        print!("{}", case_list(&cases));
    }
    Ok(ExitCode::SUCCESS)
}

/// `palisade case ...`. `token` is the API token sent with `--server`.
pub async fn case(
    config: &Config,
    command: CaseCommand,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    match command {
        CaseCommand::Update {
            id,
            status,
            assignee,
            unassign,
            tags,
            untags,
            priority,
            severity,
            target,
        } => {
            let edit = CaseEdit {
                status,
                assignee: if unassign {
                    Some(None)
                } else {
                    assignee.map(Some)
                },
                add_tags: tags,
                remove_tags: untags,
                priority,
                severity,
            };
            let case = match target.client(token) {
                Some(server) => {
                    let mut body = serde_json::to_value(&edit)?;
                    target.claim_actor(&mut body);
                    let path = format!("/v1/cases/{id}");
                    serde_json::from_value(
                        server.send(Method::PATCH, &path, &[], Some(body)).await?,
                    )?
                }
                None => local_service(config)?.update(&id, &edit, &target.actor(), Utc::now())?,
            };
            print_case(&case, &format!("updated case {}", case.id), target.json)
        }
        CaseCommand::Comment { id, text, target } => {
            let case = match target.client(token) {
                Some(server) => {
                    let mut body = json!({ "text": text });
                    target.claim_actor(&mut body);
                    let path = format!("/v1/cases/{id}/comments");
                    serde_json::from_value(
                        server.send(Method::POST, &path, &[], Some(body)).await?,
                    )?
                }
                None => local_service(config)?.comment(&id, &target.actor(), &text, Utc::now())?,
            };
            print_case(
                &case,
                &format!("commented on case {}", case.id),
                target.json,
            )
        }
        CaseCommand::Task { id, action } => task(config, &id, action, token).await,
        CaseCommand::Stats {
            since,
            server,
            json,
        } => {
            let stats: CaseStats = match &server {
                Some(server) => {
                    let pairs = [("since".to_string(), since.clone())];
                    let server = ApiClient::new(server, token);
                    serde_json::from_value(
                        server
                            .send(Method::GET, "/v1/cases/stats", &pairs, None)
                            .await?,
                    )?
                }
                None => {
                    let period = parse_period(&since)?;
                    let now = Utc::now();
                    local_service(config)?.stats(now - period, now)?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", stats_table(&stats));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn task(
    config: &Config,
    id: &str,
    action: TaskAction,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    match action {
        TaskAction::Add { title, target } => {
            let (case, task_id) = match target.client(token) {
                Some(server) => {
                    let mut body = json!({ "title": title });
                    target.claim_actor(&mut body);
                    let path = format!("/v1/cases/{id}/tasks");
                    let mut reply = server.send(Method::POST, &path, &[], Some(body)).await?;
                    let task_id = reply["task_id"].as_str().unwrap_or_default().to_string();
                    (serde_json::from_value(reply["case"].take())?, task_id)
                }
                None => local_service(config)?.add_task(id, &target.actor(), &title, Utc::now())?,
            };
            print_case(
                &case,
                &format!("added task {task_id} to case {}", case.id),
                target.json,
            )
        }
        TaskAction::Done { task_id, target } => {
            let case = match target.client(token) {
                Some(server) => {
                    let mut body = json!({});
                    target.claim_actor(&mut body);
                    let path = format!("/v1/cases/{id}/tasks/{task_id}/done");
                    serde_json::from_value(
                        server.send(Method::POST, &path, &[], Some(body)).await?,
                    )?
                }
                None => local_service(config)?.complete_task(
                    id,
                    &task_id,
                    &target.actor(),
                    Utc::now(),
                )?,
            };
            let summary = format!(
                "task {} of case {} is done",
                task_id.to_uppercase(),
                case.id
            );
            print_case(&case, &summary, target.json)
        }
    }
}

fn print_case(case: &Case, summary: &str, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(case)?);
    } else {
        print!("{}", printable_lines(summary));
    }
    Ok(ExitCode::SUCCESS)
}

/// Turns the set fields of a serialised query into URL query pairs.
fn query_pairs(query: &Value) -> Vec<(String, String)> {
    query
        .as_object()
        .map(|fields| {
            fields
                .iter()
                .filter_map(|(name, value)| Some((name.clone(), value.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Returns the SLA column of a case: `-` without deadlines, else `ok`,
/// `ack late`, `late` (resolution) or `ack+res late`.
fn sla_label(case: &Case) -> &'static str {
    let Some(sla) = case.sla else { return "-" };
    match (sla.acknowledge_breached, sla.resolve_breached) {
        (true, true) => "ack+res late",
        (true, false) => "ack late",
        (false, true) => "late",
        (false, false) if sla.acknowledge_by.is_none() && sla.resolve_by.is_none() => "-",
        (false, false) => "ok",
    }
}

/// Formats cases one line each. Text is stripped of control characters.
pub fn case_list(cases: &[Case]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<14} {:<13} {:<4} {:<16} {:<12} {:>6}  TITLE",
        "CASE", "STATUS", "SEVERITY", "PRIO", "ASSIGNEE", "SLA", "ALERTS"
    );
    for case in cases {
        let _ = writeln!(
            out,
            "{:<10} {:<14} {:<13} {:<4} {:<16} {:<12} {:>6}  {}",
            case.id,
            case.status.as_str(),
            case.severity.as_str(),
            case.priority.as_deref().unwrap_or("-"),
            case.assignee.as_deref().unwrap_or("-"),
            sla_label(case),
            case.alert_ids.len(),
            case.title,
        );
    }
    printable_lines(&out)
}

/// Describes a deadline: when, and whether it was met, missed or is open.
fn deadline(by: Option<DateTime<Utc>>, done: Option<DateTime<Utc>>, breached: bool) -> String {
    let Some(by) = by else {
        return "none".into();
    };
    let state = match (done, breached) {
        (_, true) => "missed",
        (Some(_), false) => "met",
        (None, false) => "pending",
    };
    format!("by {} ({state})", time(by))
}

/// Formats one case in full: the table row with observables, intel hits
/// and verdicts, then status, SLA, tasks, comments and the timeline. Text
/// is stripped of control characters.
pub fn case_detail(case: &Case) -> String {
    let mut out = case_table(std::slice::from_ref(case));
    write_workflow(&mut out, case);
    write_tasks(&mut out, case);
    write_comments(&mut out, case);
    write_timeline(&mut out, case);
    printable_lines(&out)
}

fn write_workflow(out: &mut String, case: &Case) {
    let optional = |at: Option<DateTime<Utc>>| at.map(time).unwrap_or_else(|| "-".into());
    let tags = if case.tags.is_empty() {
        "-".to_string()
    } else {
        case.tags.join(", ")
    };
    let _ = writeln!(out, "  status       {}", case.status.as_str());
    let _ = writeln!(
        out,
        "  assignee     {}",
        case.assignee.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "  tags         {tags}");
    let _ = writeln!(out, "  opened       {}", time(case.created_at));
    let _ = writeln!(out, "  acknowledged {}", optional(case.acknowledged_at));
    let _ = writeln!(out, "  resolved     {}", optional(case.resolved_at));
    if let Some(sla) = case.sla {
        let acknowledge = deadline(
            sla.acknowledge_by,
            case.acknowledged_at,
            sla.acknowledge_breached,
        );
        let resolve = deadline(sla.resolve_by, case.resolved_at, sla.resolve_breached);
        let _ = writeln!(
            out,
            "  sla          acknowledge {acknowledge}, resolve {resolve}"
        );
    }
}

fn write_tasks(out: &mut String, case: &Case) {
    if case.tasks.is_empty() {
        return;
    }
    let _ = writeln!(out, "  tasks");
    for task in &case.tasks {
        let mark = if task.done { "x" } else { " " };
        let done = match (&task.done_by, task.done_at) {
            (Some(by), Some(at)) => format!(" (done by {by} at {})", time(at)),
            _ => String::new(),
        };
        let _ = writeln!(out, "    [{mark}] {:<4} {}{done}", task.id, task.title);
    }
}

fn write_comments(out: &mut String, case: &Case) {
    if case.notes.is_empty() {
        return;
    }
    let _ = writeln!(out, "  comments");
    for note in &case.notes {
        let _ = writeln!(out, "    {} {}:", time(note.time), note.author);
        for line in note.text.lines() {
            let _ = writeln!(out, "      {line}");
        }
    }
}

fn write_timeline(out: &mut String, case: &Case) {
    let _ = writeln!(out, "  timeline");
    for event in &case.timeline {
        let actor = event.actor.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "    {} {:<18} {:<12} {}",
            time(event.time),
            event.kind,
            actor,
            event.detail
        );
    }
}

/// Writes `seconds` as days, hours, minutes and seconds, largest first,
/// keeping the two largest parts, such as `1d 4h` or `12m 30s`.
fn format_seconds(seconds: Option<i64>) -> String {
    let Some(seconds) = seconds else {
        return "-".into();
    };
    let sign = if seconds < 0 { "-" } else { "" };
    let mut rest = seconds.unsigned_abs();
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if parts.is_empty() {
        return "0s".into();
    }
    parts.truncate(2);
    format!("{sign}{}", parts.join(" "))
}

/// Formats statistics: one line per severity, then the total.
pub fn stats_table(stats: &CaseStats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cases from {} to {}",
        time(stats.since),
        time(stats.until)
    );
    let _ = writeln!(
        out,
        "{:<13} {:>6} {:>6} {:>8} {:>10} {:>14} {:>8} {:>12}",
        "SEVERITY",
        "OPENED",
        "ACKED",
        "RESOLVED",
        "MEDIAN ACK",
        "MEDIAN RESOLVE",
        "ACK LATE",
        "RESOLVE LATE"
    );
    let rows = stats
        .by_severity
        .iter()
        .map(|row| (row.severity.as_str(), &row.counts))
        .chain([("all", &stats.total)]);
    for (name, counts) in rows {
        let _ = writeln!(
            out,
            "{:<13} {:>6} {:>6} {:>8} {:>10} {:>14} {:>8} {:>12}",
            name,
            counts.opened,
            counts.acknowledged,
            counts.resolved,
            format_seconds(counts.median_acknowledge_secs),
            format_seconds(counts.median_resolve_secs),
            counts.acknowledge_breaches,
            counts.resolve_breaches,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_keep_two_largest_parts() {
        let cases = [
            (None, "-"),
            (Some(0), "0s"),
            (Some(45), "45s"),
            (Some(750), "12m 30s"),
            (Some(3_600), "1h"),
            (Some(100_800), "1d 4h"),
            (Some(90_061), "1d 1h"),
            (Some(-90), "-1m 30s"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(format_seconds(seconds), expected, "{seconds:?}");
        }
    }

    #[test]
    fn detail_strips_control_characters_from_comments() {
        let mut case: Case = serde_json::from_value(json!({
            "id": "C00000001", "fingerprint": "f", "title": "t", "status": "new",
            "source": "wazuh", "rule": {"id": "1", "name": "r"}, "severity": "low",
            "priority": null, "score": null,
            "created_at": "2026-01-05T10:00:00Z", "updated_at": "2026-01-05T10:00:00Z",
            "alert_ids": [], "observables": [], "intel_hits": [], "verdicts": [],
            "run_ids": [], "timeline": []
        }))
        .unwrap();
        case.add_note(
            "ana\u{1b}[31m",
            "line one\n\u{1b}]0;owned\u{7}line two",
            Utc::now(),
        );
        case.add_task("isolate\u{1b}[2J", "ana", Utc::now());
        let detail = case_detail(&case);
        assert!(!detail.contains('\u{1b}'), "{detail:?}");
        assert!(!detail.contains('\u{7}'), "{detail:?}");
        assert!(detail.contains("      line one\n"), "{detail}");
        let list = case_list(std::slice::from_ref(&case));
        assert_eq!(list.lines().count(), 2, "{list}");
    }
}
