//! Playbooks, their execution, and the service layer the CLI and the HTTP
//! API share.
//!
//! The engine reaches plugins only through [`PluginCaller`] and storage
//! only through [`palisade_store::Store`], so it depends on no wasmtime
//! or sled types.

mod cases;
mod check;
mod playbook;
mod runner;
mod runs;
mod schema;
mod template;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use palisade_model::{Alert, Case, Observable, RunRecord, RunStatus, Severity};
use palisade_store::{Store, StoreError};
use serde_json::{Map, Value};

pub use crate::cases::{
    CaseCounts, CaseEdit, CaseError, CaseFilter, CaseQuery, CaseService, CaseStats,
    MAX_COMMENT_CHARS, MAX_NAME_CHARS, MAX_TAG_CHARS, PRIORITIES, SeverityCounts, parse_period,
};
pub use crate::check::{Diagnostic, Level, check_files, input_problems, playbook_files};
pub use crate::playbook::{
    Approval, CaseUpdate, DEFAULT_RETRY_KINDS, Input, Join, OnError, OnInterrupt, Playbook,
    PlaybookError, Retry, Step, TimeoutDecision, Trigger,
};
pub use crate::runner::{CallInfo, PluginCaller, StepOutcome};
pub use crate::runs::{Answer, ParkedDecision, PendingApproval, Recovery};
pub use crate::schema::Schema;
pub use crate::template::Templates;

/// Failure of an engine operation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Playbook(String),
    /// A request about a run that does not fit its state, such as resuming
    /// a run that is not parked.
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this, such as answer an approval meant for
    /// other people.
    #[error("{0}")]
    Forbidden(String),
    /// A value the caller gave is invalid. The message gives the reason.
    #[error("{0}")]
    Invalid(String),
}

/// Outcome of ingesting one alert: its case and the runs it started.
#[derive(Clone, Debug)]
pub struct IngestReport {
    pub alert_id: String,
    pub case_id: String,
    pub alert_is_new: bool,
    pub case_is_new: bool,
    /// Runs started for the alert, with their final status.
    pub runs: Vec<(String, RunStatus)>,
}

/// Receives the start and each stop of every run the engine drives, such
/// as a metrics registry. Both are called after the run is stored, on the
/// task that drives it, so an implementation must return quickly.
pub trait RunObserver: Send + Sync {
    /// Receives a new run once it is stored: a run on an alert or a
    /// sub-playbook's run.
    fn run_started(&self, run: &RunRecord);

    /// Receives `run` when a drive of it stops in `run.status`: `succeeded`
    /// or `failed` when the run ended, `waiting` or `parked` when it
    /// continues later. A run that waits or parks is received again when
    /// its next drive stops.
    fn run_stopped(&self, run: &RunRecord);
}

/// The service layer: stores alerts, groups them into cases and runs the
/// playbooks whose trigger matches.
pub struct Engine<C: PluginCaller> {
    store: Arc<dyn Store>,
    caller: Arc<C>,
    playbooks: Vec<Playbook>,
    templates: Templates,
    /// Runs a task of this process is driving, so that no run is driven
    /// twice at once.
    claims: Mutex<HashSet<String>>,
    observer: Option<Arc<dyn RunObserver>>,
}

impl<C: PluginCaller> Engine<C> {
    /// Creates the engine, checking that every step of every playbook names
    /// a loaded plugin and an action it offers.
    pub fn new(
        store: Arc<dyn Store>,
        caller: Arc<C>,
        playbooks: Vec<Playbook>,
    ) -> Result<Self, EngineError> {
        for playbook in &playbooks {
            check_targets(playbook, caller.as_ref())?;
            check_calls(playbook, &playbooks)?;
        }
        check_recursion(&playbooks)?;
        Ok(Self {
            store,
            caller,
            playbooks,
            templates: Templates::new(),
            claims: Mutex::new(HashSet::new()),
            observer: None,
        })
    }

    /// Reports the start and every stop of each run to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn playbooks(&self) -> &[Playbook] {
        &self.playbooks
    }

    /// Playbooks whose trigger matches `alert`.
    pub fn matching(&self, alert: &Alert) -> Vec<&Playbook> {
        let context = runner::RunContext::new(alert, "").value();
        self.playbooks
            .iter()
            .filter(|playbook| {
                let Some(trigger) = &playbook.trigger else {
                    return false;
                };
                let source_matches = trigger
                    .source
                    .as_ref()
                    .is_none_or(|source| *source == alert.source);
                source_matches
                    && trigger.when.as_ref().is_none_or(|when| {
                        // A trigger that fails to evaluate does not match; the
                        // failure is logged so the operator can fix it.
                        self.templates
                            .is_true(when, &context)
                            .inspect_err(|error| {
                                tracing::warn!(playbook = %playbook.name, %error, "trigger expression failed");
                            })
                            .unwrap_or(false)
                    })
            })
            .collect()
    }

    /// Stores `alert` and adds it to its case, without running playbooks.
    /// A new alert stays pending in the store until [`Engine::run_matching`]
    /// has finished its runs, so a restart can resume it.
    pub fn accept(&self, alert: &Alert) -> Result<IngestReport, EngineError> {
        let outcome = self.store.ingest_alert(alert, Utc::now())?;
        Ok(IngestReport {
            alert_id: alert.id.clone(),
            case_id: outcome.case_id,
            alert_is_new: outcome.alert_is_new,
            case_is_new: outcome.case_is_new,
            runs: Vec::new(),
        })
    }

    /// Stores `alert`, adds it to its case, and runs every matching playbook.
    /// An alert that was stored before is not run again.
    pub async fn ingest(&self, alert: &Alert) -> Result<IngestReport, EngineError> {
        let mut report = self.accept(alert)?;
        if report.alert_is_new {
            report.runs = self.run_matching(alert, &report.case_id).await?;
        }
        Ok(report)
    }
}

fn check_targets<C: PluginCaller>(playbook: &Playbook, caller: &C) -> Result<(), EngineError> {
    for (plugin, actions) in playbook.targets() {
        let Some(offered) = caller.actions(plugin) else {
            return Err(EngineError::Playbook(format!(
                "{}: plugin {plugin:?} is not loaded; build it or remove the steps that use it",
                playbook.path.display()
            )));
        };
        for action in actions {
            if !offered.iter().any(|name| name == action) {
                return Err(EngineError::Playbook(format!(
                    "{}: plugin {plugin:?} has no action {action:?}; it offers {}",
                    playbook.path.display(),
                    offered.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Checks that every sub-playbook `playbook` calls is loaded, that a
/// `with` written as an object gives only inputs it declares and all it
/// requires, and that a playbook with a trigger requires no input.
fn check_calls(playbook: &Playbook, all: &[Playbook]) -> Result<(), EngineError> {
    let path = playbook.path.display();
    if playbook.trigger.is_some()
        && let Some((name, _)) = playbook.inputs.iter().find(|(_, input)| input.required)
    {
        return Err(EngineError::Playbook(format!(
            "{path}: input {name:?} is required, but a playbook with a trigger runs on alerts with no inputs; give it a default or remove the trigger"
        )));
    }
    for step in playbook.steps.iter().chain(&playbook.handlers) {
        let Some(name) = step.sub_playbook() else {
            continue;
        };
        let Some(called) = all.iter().find(|candidate| candidate.name == name) else {
            let known: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
            return Err(EngineError::Playbook(format!(
                "{path}: step {:?} calls playbook {name:?}, which is not loaded; the loaded playbooks are: {}",
                step.id,
                known.join(", ")
            )));
        };
        if let Value::Object(given) = &step.with {
            called
                .resolve_inputs(&Value::Object(given.clone()))
                .map_err(|error| {
                    EngineError::Playbook(format!("{path}: step {:?}: {error}", step.id))
                })?;
        }
    }
    Ok(())
}

/// Rejects playbooks that call themselves, directly or through others,
/// naming the chain of calls.
pub(crate) fn check_recursion(playbooks: &[Playbook]) -> Result<(), EngineError> {
    fn visit<'a>(
        name: &'a str,
        playbooks: &'a [Playbook],
        chain: &mut Vec<&'a str>,
        done: &mut HashSet<&'a str>,
    ) -> Result<(), EngineError> {
        if let Some(start) = chain.iter().position(|seen| *seen == name) {
            let mut cycle: Vec<&str> = chain[start..].to_vec();
            cycle.push(name);
            let path = playbooks
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.path.display().to_string())
                .unwrap_or_default();
            return Err(EngineError::Playbook(format!(
                "{path}: playbook {name:?} calls itself: {}; a sub-playbook may not call a playbook that called it",
                cycle.join(" -> ")
            )));
        }
        if done.contains(name) {
            return Ok(());
        }
        let Some(playbook) = playbooks.iter().find(|p| p.name == name) else {
            return Ok(());
        };
        chain.push(name);
        for called in playbook.sub_playbooks() {
            visit(called, playbooks, chain, done)?;
        }
        chain.pop();
        done.insert(name);
        Ok(())
    }
    let mut done = HashSet::new();
    for playbook in playbooks {
        visit(&playbook.name, playbooks, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

/// Writes evaluated `case` fields of a run into `case`.
fn apply_case_fields(case: &mut Case, fields: &Map<String, Value>, key: Option<&Observable>) {
    let now = Utc::now();
    let mut observables: Vec<Observable> = fields
        .get("observables")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| serde_json::from_value(item.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    observables.extend(key.cloned());
    case.merge_observables(&observables, now);

    for (field, entries) in [
        ("intel_hits", &mut case.intel_hits),
        ("verdicts", &mut case.verdicts),
    ] {
        if let Some(new) = fields.get(field).and_then(Value::as_array) {
            Case::merge_keyed(entries, new);
        }
    }
    if let Some(severity) = fields
        .get("severity")
        .and_then(Value::as_str)
        .and_then(Severity::parse)
    {
        case.severity = case.severity.max(severity);
    }
    if let Some(priority) = fields.get("priority").and_then(Value::as_str) {
        case.priority = Some(priority.to_string());
    }
    if let Some(score) = fields.get("score").and_then(Value::as_u64) {
        case.score = Some(score.min(100) as u8);
    }
}
