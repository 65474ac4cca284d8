//! Durable runs: start, drive, wait, park and resume.
//!
//! A run is driven from its journal. Each step attempt is written as
//! `started` before the plugin is called and overwritten with its outcome
//! after, so whatever point the process stops at, the next start knows
//! which steps finished (their outputs are replayed into the context, not
//! run again), which one was in flight, and which have not begun.
//!
//! A step found `started` after a restart was interrupted mid-call. A step
//! without side effects runs again. A step with side effects follows its
//! `on_interrupt` policy: `retry` calls the plugin again with the same
//! idempotency key, and `park` (the default for such steps) stops the run
//! until a person decides with [`Engine::resume_parked`]. Before a step
//! with side effects is called, its `started` record is flushed to disk, so
//! no side effect can happen that a restart would not know about.
//!
//! A failed attempt that its step's `retry` policy covers gets a stored
//! deadline; the run waits (status `waiting`) until [`Engine::due_runs`]
//! reports it, whether or not the process restarted in between.

use chrono::Utc;
use palisade_model::{Alert, RunRecord, RunStatus, StepError, StepRecord, StepStatus};
use palisade_store::AuditEvent;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::playbook::{OnError, OnInterrupt, Playbook, Step};
use crate::runner::{self, Prepared, RunContext};
use crate::{Engine, EngineError, PluginCaller, apply_case_fields};

/// Work a restarted process must pick up.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Alerts accepted whose runs were not all started, with their cases.
    pub pending: Vec<(Alert, String)>,
    /// Runs that were running when the process stopped.
    pub interrupted: Vec<String>,
}

/// A person's decision on a parked run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkedDecision {
    /// Call the plugin again with the same idempotency key.
    Retry,
    /// Record the step as skipped and go on with the next one.
    Skip,
    /// Record the step as failed; the step's `on_error` then applies.
    Fail,
}

impl ParkedDecision {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "retry" => Some(Self::Retry),
            "skip" => Some(Self::Skip),
            "fail" => Some(Self::Fail),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Skip => "skip",
            Self::Fail => "fail",
        }
    }
}

/// Holds a run's claim and releases it when dropped.
struct Claim<'a> {
    claims: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    run_id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.remove(&self.run_id);
    }
}

/// Idempotency key of step `step_id` of run `run`: a digest of the alert,
/// the playbook, the run and the step, so it is the same on every attempt
/// and differs between runs and between installations that process other
/// alerts.
fn idempotency_key(run: &RunRecord, step_id: &str) -> String {
    let mut digest = Sha256::new();
    for part in [&run.alert_id, &run.playbook, &run.id, step_id] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    format!("palisade-{}", &hex::encode(digest.finalize())[..40])
}

/// Hex SHA-256 of a journaled step record, so the audit log pins what
/// the journal holds without copying inputs and outputs into it.
fn record_digest(record: &StepRecord) -> String {
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

impl<C: PluginCaller> Engine<C> {
    /// Appends an audit record about run `run`.
    fn audit_run(
        &self,
        actor: &str,
        action: &str,
        run: &RunRecord,
        mut detail: Value,
    ) -> Result<(), EngineError> {
        detail["playbook"] = json!(run.playbook);
        detail["alert_id"] = json!(run.alert_id);
        detail["case_id"] = json!(run.case_id);
        detail["status"] = json!(run.status.as_str());
        self.store.append_audit(AuditEvent {
            actor: actor.to_string(),
            action: action.to_string(),
            subject: run.id.clone(),
            detail,
        })?;
        Ok(())
    }

    fn claim(&self, run_id: &str) -> Option<Claim<'_>> {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.insert(run_id.to_string()).then(|| Claim {
            claims: &self.claims,
            run_id: run_id.to_string(),
        })
    }

    fn playbook(&self, name: &str) -> Option<&Playbook> {
        self.playbooks.iter().find(|playbook| playbook.name == name)
    }

    /// Starts or continues the run of every playbook matching `alert` for
    /// case `case_id`, then marks the alert as no longer pending. A playbook
    /// that already has a run for the alert does not get a second one.
    /// Returns each run's id and the status it reached here.
    pub async fn run_matching(
        &self,
        alert: &Alert,
        case_id: &str,
    ) -> Result<Vec<(String, RunStatus)>, EngineError> {
        let mut runs = Vec::new();
        for playbook in self.matching(alert) {
            let run = match self.store.run_of_alert(&alert.id, &playbook.name)? {
                Some(id) => match self.store.run(&id)? {
                    Some(run) if run.status == RunStatus::Running => {
                        self.drive_claimed(playbook, alert, run).await?
                    }
                    Some(run) => run,
                    None => self.start(playbook, alert, case_id).await?,
                },
                None => self.start(playbook, alert, case_id).await?,
            };
            runs.push((run.id, run.status));
        }
        self.store.finish_pending(&alert.id)?;
        Ok(runs)
    }

    /// Runs `playbook` on `alert` for case `case_id` in a new run, until the
    /// run ends, waits or parks.
    pub async fn run_playbook(
        &self,
        playbook: &Playbook,
        alert: &Alert,
        case_id: &str,
    ) -> Result<RunRecord, EngineError> {
        self.start(playbook, alert, case_id).await
    }

    async fn start(
        &self,
        playbook: &Playbook,
        alert: &Alert,
        case_id: &str,
    ) -> Result<RunRecord, EngineError> {
        let run = RunRecord {
            id: self.store.next_run_id()?,
            playbook: playbook.name.clone(),
            alert_id: alert.id.clone(),
            case_id: case_id.to_string(),
            status: RunStatus::Running,
            started_at: Utc::now(),
            finished_at: None,
            steps: Vec::new(),
            error: None,
            wake_at: None,
        };
        self.store.put_run(&run)?;
        self.audit_run("engine", "run_started", &run, json!({}))?;
        self.drive_claimed(playbook, alert, run).await
    }

    async fn drive_claimed(
        &self,
        playbook: &Playbook,
        alert: &Alert,
        run: RunRecord,
    ) -> Result<RunRecord, EngineError> {
        let Some(_claim) = self.claim(&run.id) else {
            // Another task is driving it; it reports the outcome.
            return Ok(run);
        };
        self.drive(playbook, alert, run, None).await
    }

    /// Collects the work a stopped process left: alerts accepted but not
    /// all started, and runs that were running. Waiting runs need nothing
    /// here: their deadlines are stored and [`Engine::due_runs`] reports
    /// them.
    pub fn recover(&self) -> Result<Recovery, EngineError> {
        let mut recovery = Recovery::default();
        for alert_id in self.store.pending_alerts()? {
            let Some(alert) = self.store.alert(&alert_id)? else {
                self.store.finish_pending(&alert_id)?;
                continue;
            };
            let case_id = self.store.case_of_alert(&alert_id)?.unwrap_or_default();
            recovery.pending.push((alert, case_id));
        }
        let pending: std::collections::HashSet<&str> = recovery
            .pending
            .iter()
            .map(|(alert, _)| alert.id.as_str())
            .collect();
        let mut interrupted = Vec::new();
        for run in self.store.active_runs()? {
            // A pending alert's runs are continued through the alert.
            if run.status == RunStatus::Running && !pending.contains(run.alert_id.as_str()) {
                interrupted.push(run.id);
            }
        }
        recovery.interrupted = interrupted;
        Ok(recovery)
    }

    /// Continues every run and alert [`Engine::recover`] reports, and every
    /// waiting run that is due, one after another. Returns how many runs
    /// and alerts were continued.
    pub async fn resume_all(&self) -> Result<usize, EngineError> {
        let recovery = self.recover()?;
        let mut count = 0;
        for run_id in &recovery.interrupted {
            self.resume_run(run_id).await?;
            count += 1;
        }
        for (alert, case_id) in &recovery.pending {
            self.run_matching(alert, case_id).await?;
            count += 1;
        }
        Ok(count)
    }

    /// Ids of waiting runs whose wake time has come, with that time.
    pub fn due_runs(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, chrono::DateTime<Utc>)>, EngineError> {
        Ok(self.store.due_runs(Utc::now(), limit)?)
    }

    /// Earliest wake time of a waiting run.
    pub fn next_wake(&self) -> Result<Option<chrono::DateTime<Utc>>, EngineError> {
        Ok(self.store.next_wake()?)
    }

    /// Continues run `run_id` from its journal if it is running, or waiting
    /// and due. Returns the run as it is afterwards.
    pub async fn resume_run(&self, run_id: &str) -> Result<RunRecord, EngineError> {
        let Some(_claim) = self.claim(run_id) else {
            return self.load_run(run_id);
        };
        let run = self.load_run(run_id)?;
        let resumable = match run.status {
            RunStatus::Running => true,
            RunStatus::Waiting => run.wake_at.is_none_or(|at| at <= Utc::now()),
            _ => false,
        };
        if !resumable {
            return Ok(run);
        }
        let (playbook, alert) = match self.run_inputs(&run)? {
            Ok(inputs) => inputs,
            Err(error) => return self.fail_unresumable(run, error),
        };
        self.drive(playbook, &alert, run, None).await
    }

    /// Applies a person's decision to parked run `run_id` and continues it.
    /// `actor` names who decided, for the case timeline.
    pub async fn resume_parked(
        &self,
        run_id: &str,
        decision: ParkedDecision,
        actor: &str,
    ) -> Result<RunRecord, EngineError> {
        let Some(_claim) = self.claim(run_id) else {
            return Err(EngineError::Conflict(format!(
                "run {run_id} is being driven right now; try again when it stops"
            )));
        };
        let mut run = self.load_run(run_id)?;
        if run.status != RunStatus::Parked {
            return Err(EngineError::Conflict(format!(
                "run {run_id} is {}, not parked; only a parked run takes retry, skip or fail",
                run.status.as_str()
            )));
        }
        let Some(index) = run
            .steps
            .iter()
            .rposition(|step| step.status == StepStatus::Started)
        else {
            return Err(EngineError::Conflict(format!(
                "run {run_id} is parked but no step is in flight; its journal is damaged"
            )));
        };
        let (playbook, alert) = match self.run_inputs(&run)? {
            Ok(inputs) => inputs,
            Err(error) => return self.fail_unresumable(run, error),
        };
        let step_id = run.steps[index].id.clone();
        let detail = format!(
            "{actor} chose {} for step {step_id:?} of run {run_id}",
            decision.as_str()
        );
        self.store.update_case(&run.case_id, &mut |case| {
            case.record("run_decided", detail.clone(), Utc::now());
        })?;
        // Running is written before the decision, so a stop in between
        // finds the step still `started` and parks the run again rather
        // than leaving a parked run with no step in flight.
        run.status = RunStatus::Running;
        run.error = None;
        self.store.put_run(&run)?;
        let mut forced = None;
        match decision {
            ParkedDecision::Retry => forced = Some(step_id),
            ParkedDecision::Skip | ParkedDecision::Fail => {
                let record = &mut run.steps[index];
                let (status, kind) = if decision == ParkedDecision::Skip {
                    (StepStatus::Skipped, "skipped_by_operator")
                } else {
                    (StepStatus::Failed, "failed_by_operator")
                };
                record.status = status;
                record.error = Some(StepError {
                    kind: kind.into(),
                    message: format!("interrupted mid-call; {actor} chose {}", decision.as_str()),
                });
                self.store.put_step(&run.id, index, record)?;
            }
        }
        let detail = json!({ "decision": decision.as_str(), "step": run.steps[index].id });
        self.audit_run(&format!("operator:{actor}"), "run_decided", &run, detail)?;
        self.drive(playbook, &alert, run, forced.as_deref()).await
    }

    fn load_run(&self, run_id: &str) -> Result<RunRecord, EngineError> {
        self.store.run(run_id)?.ok_or_else(|| {
            EngineError::Store(palisade_store::StoreError::NotFound {
                what: "run",
                id: run_id.to_string(),
            })
        })
    }

    /// The playbook and alert of `run`, or why they cannot be had.
    fn run_inputs(
        &self,
        run: &RunRecord,
    ) -> Result<Result<(&Playbook, Alert), String>, EngineError> {
        let Some(playbook) = self.playbook(&run.playbook) else {
            return Ok(Err(format!(
                "playbook {:?} is no longer loaded; restore it to continue its runs",
                run.playbook
            )));
        };
        let Some(alert) = self.store.alert(&run.alert_id)? else {
            return Ok(Err(format!("alert {} of the run is missing", run.alert_id)));
        };
        Ok(Ok((playbook, alert)))
    }

    fn fail_unresumable(
        &self,
        mut run: RunRecord,
        message: String,
    ) -> Result<RunRecord, EngineError> {
        run.status = RunStatus::Failed;
        run.finished_at = Some(Utc::now());
        run.error = Some(StepError {
            kind: "unresumable".into(),
            message,
        });
        let detail = format!("run {} of {} failed: cannot resume", run.id, run.playbook);
        self.store.finish_run(&run, &mut |case| {
            case.run_ids.push(run.id.clone());
            case.record("run_finished", detail.clone(), Utc::now());
        })?;
        self.audit_run(
            "engine",
            "run_finished",
            &run,
            json!({ "error_kind": "unresumable" }),
        )?;
        Ok(run)
    }

    /// Drives `run` from its journal until it ends, waits or parks. The
    /// caller holds the run's claim. `forced` names a step whose `started`
    /// record is retried whatever its `on_interrupt` policy says.
    async fn drive(
        &self,
        playbook: &Playbook,
        alert: &Alert,
        run: RunRecord,
        forced: Option<&str>,
    ) -> Result<RunRecord, EngineError> {
        let span = tracing::debug_span!("run", run.id = %run.id, playbook = %playbook.name);
        self.drive_steps(playbook, alert, run, forced)
            .instrument(span)
            .await
    }

    async fn drive_steps(
        &self,
        playbook: &Playbook,
        alert: &Alert,
        mut run: RunRecord,
        forced: Option<&str>,
    ) -> Result<RunRecord, EngineError> {
        if run.status != RunStatus::Running {
            run.status = RunStatus::Running;
            run.wake_at = None;
            self.store.put_run(&run)?;
        }
        let mut context = RunContext::new(alert, &run.case_id);
        for step in &playbook.steps {
            let latest = run.steps.iter().rposition(|record| record.id == step.id);
            let (index, attempt) = match latest {
                None => (run.steps.len(), 1),
                Some(index) => {
                    let record = &run.steps[index];
                    match record.status {
                        StepStatus::Succeeded | StepStatus::Skipped => {
                            if let Some(output) = &record.output {
                                context.add_step_output(&step.id, output);
                            }
                            continue;
                        }
                        StepStatus::Failed => match record.retry_at {
                            Some(at) if at > Utc::now() => {
                                return self.wait(run, at);
                            }
                            Some(_) => (run.steps.len(), record.attempt + 1),
                            None if step.on_error == OnError::Continue => continue,
                            None => {
                                let error = record.error.clone();
                                fail_run(&mut run, step, error);
                                break;
                            }
                        },
                        StepStatus::Started => {
                            let (plugin, action) = step.target();
                            let policy = step.on_interrupt.unwrap_or(
                                if self.caller.has_side_effects(plugin, action) {
                                    OnInterrupt::Park
                                } else {
                                    OnInterrupt::Retry
                                },
                            );
                            if policy == OnInterrupt::Park && forced != Some(step.id.as_str()) {
                                return self.park(run, step);
                            }
                            (index, record.attempt)
                        }
                    }
                }
            };

            let record = self.attempt(&run, step, index, attempt, &context).await?;
            if let Some(output) = &record.output {
                context.add_step_output(&step.id, output);
            }
            let retry_at = record.retry_at;
            let error = record.error.clone();
            let failed = record.status == StepStatus::Failed;
            if index == run.steps.len() {
                run.steps.push(record);
            } else {
                run.steps[index] = record;
            }
            if let Some(at) = retry_at {
                return self.wait(run, at);
            }
            if failed && step.on_error == OnError::Fail {
                fail_run(&mut run, step, error);
                break;
            }
        }
        if run.status == RunStatus::Running {
            run.status = RunStatus::Succeeded;
        }
        run.finished_at = Some(Utc::now());
        self.finish(playbook, alert, run, &context)
    }

    /// Runs one attempt of `step` at journal position `index`.
    async fn attempt(
        &self,
        run: &RunRecord,
        step: &Step,
        index: usize,
        attempt: u32,
        context: &RunContext,
    ) -> Result<StepRecord, EngineError> {
        let key = run
            .steps
            .get(index)
            .and_then(|record| record.idempotency_key.clone())
            .unwrap_or_else(|| idempotency_key(run, &step.id));
        let (plugin, action) = step.target();
        let mut side_effects = false;
        let mut record =
            match runner::prepare(&self.templates, step, &context.value(), attempt, &key) {
                Prepared::Done(record) => record,
                Prepared::Call(started) => {
                    self.store.put_step(&run.id, index, &started)?;
                    side_effects = self.caller.has_side_effects(plugin, action);
                    if side_effects {
                        // The side effect may happen as soon as the plugin runs,
                        // so the journal must know first.
                        self.store.flush()?;
                    }
                    runner::call(self.caller.as_ref(), step, &run.id, started).await
                }
            };
        if record.status == StepStatus::Failed {
            runner::schedule_retry(step, &mut record, Utc::now());
            if let Some(error) = &record.error {
                tracing::warn!(
                    run.id = %run.id,
                    step.id = %step.id,
                    plugin.action = %step.uses,
                    attempt,
                    error.kind = %error.kind,
                    error = %error.message,
                    retry_at = ?record.retry_at,
                    "step failed"
                );
            }
        }
        self.store.put_step(&run.id, index, &record)?;
        let detail = json!({
            "step": record.id,
            "uses": record.uses,
            "step_status": record.status,
            "attempt": record.attempt,
            "index": index,
            "plugin_version": record.plugin_version,
            "idempotency_key": record.idempotency_key,
            "error_kind": record.error.as_ref().map(|error| &error.kind),
            "record_sha256": record_digest(&record),
        });
        self.audit_run("engine", "step_finished", run, detail)?;
        if side_effects {
            // Without this, a stop soon after would find the step still
            // `started` and retry or park a side effect that happened.
            self.store.flush()?;
        }
        Ok(record)
    }

    fn wait(
        &self,
        mut run: RunRecord,
        at: chrono::DateTime<Utc>,
    ) -> Result<RunRecord, EngineError> {
        run.status = RunStatus::Waiting;
        run.wake_at = Some(at);
        self.store.put_run(&run)?;
        self.audit_run("engine", "run_waiting", &run, json!({ "wake_at": at }))?;
        Ok(run)
    }

    fn park(&self, mut run: RunRecord, step: &Step) -> Result<RunRecord, EngineError> {
        let message = format!(
            "step {:?} ({}) has side effects and was started but not confirmed before the host stopped; it may or may not have taken effect. Check the target system, then retry (same idempotency key), skip or fail it",
            step.id, step.uses
        );
        run.status = RunStatus::Parked;
        run.error = Some(StepError {
            kind: "interrupted".into(),
            message: message.clone(),
        });
        self.store.put_run(&run)?;
        self.audit_run("engine", "run_parked", &run, json!({ "step": step.id }))?;
        let detail = format!("run {} parked at step {:?}", run.id, step.id);
        self.store.update_case(&run.case_id, &mut |case| {
            case.record("run_parked", detail.clone(), Utc::now());
        })?;
        tracing::warn!(run.id = %run.id, step.id = %step.id, "run parked for a decision");
        Ok(run)
    }

    /// Writes the final run and its findings to the case in one
    /// transaction.
    fn finish(
        &self,
        playbook: &Playbook,
        alert: &Alert,
        run: RunRecord,
        context: &RunContext,
    ) -> Result<RunRecord, EngineError> {
        let (fields, errors) = runner::case_fields(&self.templates, playbook, context);
        for error in &errors {
            tracing::warn!(run.id = %run.id, %error, "case update expression failed");
        }
        let key_observable = alert.key_observable.clone();
        let detail = format!(
            "run {} of {} {}",
            run.id,
            playbook.name,
            run.status.as_str()
        );
        self.store.finish_run(&run, &mut |case| {
            apply_case_fields(case, &fields, key_observable.as_ref());
            case.run_ids.push(run.id.clone());
            case.record("run_finished", detail.clone(), Utc::now());
            for error in &errors {
                case.record("case_update_failed", error.clone(), Utc::now());
            }
        })?;
        let error_kind = run.error.as_ref().map(|error| error.kind.clone());
        self.audit_run(
            "engine",
            "run_finished",
            &run,
            json!({ "error_kind": error_kind }),
        )?;
        Ok(run)
    }
}

fn fail_run(run: &mut RunRecord, step: &Step, error: Option<StepError>) {
    run.status = RunStatus::Failed;
    run.error = error.map(|error| StepError {
        kind: error.kind,
        message: format!("step {:?} failed: {}", step.id, error.message),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            playbook: "p".into(),
            alert_id: "a".into(),
            case_id: "C00000001".into(),
            status: RunStatus::Running,
            started_at: Utc::now(),
            finished_at: None,
            steps: Vec::new(),
            error: None,
            wake_at: None,
        }
    }

    #[test]
    fn idempotency_keys_are_stable_and_distinct() {
        let first = idempotency_key(&run("R00000001"), "block");
        assert_eq!(first, idempotency_key(&run("R00000001"), "block"));
        assert_ne!(first, idempotency_key(&run("R00000002"), "block"));
        assert_ne!(first, idempotency_key(&run("R00000001"), "ticket"));
        assert!(
            first.starts_with("palisade-") && first.len() == 49,
            "{first}"
        );
    }

    #[test]
    fn decisions_parse() {
        for decision in [
            ParkedDecision::Retry,
            ParkedDecision::Skip,
            ParkedDecision::Fail,
        ] {
            assert_eq!(ParkedDecision::parse(decision.as_str()), Some(decision));
        }
        assert_eq!(ParkedDecision::parse("maybe"), None);
    }
}
