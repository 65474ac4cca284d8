//! Playbooks, their execution, and the service layer the CLI and the HTTP
//! API share.
//!
//! The engine reaches plugins only through [`PluginCaller`] and storage
//! only through [`palisade_store::Store`], so it depends on no wasmtime
//! or sled types.

mod playbook;
mod runner;
mod template;

use std::sync::Arc;

use chrono::Utc;
use palisade_model::{Alert, Case, Observable, RunRecord, RunStatus, Severity, StepError};
use palisade_store::{Store, StoreError};
use serde_json::{Map, Value};
use tracing::Instrument;

pub use crate::playbook::{CaseUpdate, OnError, Playbook, PlaybookError, Step, Trigger};
pub use crate::runner::{PluginCaller, StepOutcome};
pub use crate::template::Templates;

/// Failure of an engine operation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Playbook(String),
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

/// The service layer: stores alerts, groups them into cases and runs the
/// playbooks whose trigger matches.
pub struct Engine<C: PluginCaller> {
    store: Arc<dyn Store>,
    caller: Arc<C>,
    playbooks: Vec<Playbook>,
    templates: Templates,
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
        }
        Ok(Self {
            store,
            caller,
            playbooks,
            templates: Templates::new(),
        })
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
                let trigger = &playbook.trigger;
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

    /// Runs every playbook matching `alert` for case `case_id`, then marks
    /// the alert as no longer pending.
    pub async fn run_matching(
        &self,
        alert: &Alert,
        case_id: &str,
    ) -> Result<Vec<(String, RunStatus)>, EngineError> {
        let mut runs = Vec::new();
        for playbook in self.matching(alert) {
            let run = self.run_playbook(playbook, alert, case_id).await?;
            runs.push((run.id, run.status));
        }
        self.store.finish_pending(&alert.id)?;
        Ok(runs)
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

    /// Collects alerts that were accepted but whose runs did not finish, for
    /// example because the process stopped, with the case each joined. Runs
    /// left `running` by the stop are recorded as interrupted, since they
    /// will never finish. Call this before accepting new alerts: a run
    /// started afterwards would be taken for an interrupted one.
    pub fn take_pending(&self) -> Result<Vec<(Alert, String)>, EngineError> {
        let pending = self.store.pending_alerts()?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        for mut run in self.store.runs()? {
            if run.status == RunStatus::Running && pending.contains(&run.alert_id) {
                run.status = RunStatus::Failed;
                run.finished_at = Some(Utc::now());
                run.error = Some(StepError {
                    kind: "interrupted".into(),
                    message: "the process stopped during this run; the alert ran again".into(),
                });
                self.store.put_run(&run)?;
            }
        }
        let mut resumable = Vec::new();
        for alert_id in &pending {
            let Some(alert) = self.store.alert(alert_id)? else {
                self.store.finish_pending(alert_id)?;
                continue;
            };
            let case_id = self.store.case_of_alert(alert_id)?.unwrap_or_default();
            resumable.push((alert, case_id));
        }
        Ok(resumable)
    }

    /// Runs the playbooks of every alert [`Engine::take_pending`] returns.
    /// Returns how many alerts were resumed.
    pub async fn resume_pending(&self) -> Result<usize, EngineError> {
        let pending = self.take_pending()?;
        for (alert, case_id) in &pending {
            self.run_matching(alert, case_id).await?;
        }
        Ok(pending.len())
    }

    /// Runs `playbook` on `alert` for case `case_id`, journaling every step,
    /// and writes what the run found to the case.
    pub async fn run_playbook(
        &self,
        playbook: &Playbook,
        alert: &Alert,
        case_id: &str,
    ) -> Result<RunRecord, EngineError> {
        let mut run = RunRecord {
            id: self.store.next_run_id()?,
            playbook: playbook.name.clone(),
            alert_id: alert.id.clone(),
            case_id: case_id.to_string(),
            status: RunStatus::Running,
            started_at: Utc::now(),
            finished_at: None,
            steps: Vec::new(),
            error: None,
        };
        self.store.put_run(&run)?;

        let span = tracing::debug_span!("run", run.id = %run.id, playbook = %playbook.name);
        let mut context = runner::RunContext::new(alert, case_id);
        let mut journal_error = None;
        let run_id = run.id.clone();
        let mut journal = |index: usize, step: &palisade_model::StepRecord| {
            if let Err(error) = self.store.put_step(&run_id, index, step) {
                journal_error.get_or_insert(error);
            }
        };
        runner::execute(
            self.caller.as_ref(),
            &self.templates,
            playbook,
            &mut run,
            &mut context,
            &mut journal,
        )
        .instrument(span)
        .await;
        if let Some(error) = journal_error {
            return Err(error.into());
        }
        self.store.put_run(&run)?;
        for step in &run.steps {
            if let Some(error) = &step.error {
                tracing::warn!(
                    run.id = %run.id,
                    step.id = %step.id,
                    plugin.action = %step.uses,
                    error.kind = %error.kind,
                    error = %error.message,
                    "step failed"
                );
            }
        }

        let (fields, errors) = runner::case_fields(&self.templates, playbook, &context);
        for error in &errors {
            tracing::warn!(run.id = %run.id, %error, "case update expression failed");
        }
        let key_observable = alert.key_observable.clone();
        self.store.update_case(case_id, &mut |case| {
            apply_case_fields(case, &fields, key_observable.as_ref());
            case.run_ids.push(run.id.clone());
            let status = serde_json::to_value(run.status).unwrap_or_default();
            let detail = format!(
                "run {} of {} {}",
                run.id,
                playbook.name,
                status.as_str().unwrap_or("")
            );
            case.record("run_finished", detail, Utc::now());
            for error in &errors {
                case.record("case_update_failed", error.clone(), Utc::now());
            }
        })?;
        Ok(run)
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
