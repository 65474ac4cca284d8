//! Durable runs: start, drive, wait, park and resume.
//!
//! A run is driven from its journal. Each step attempt is written as
//! `started` before the plugin is called and overwritten with its outcome
//! after, so whatever point the process stops at, the next start can tell
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

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use palisade_model::{Alert, ParentStep, RunRecord, RunStatus, StepError, StepRecord, StepStatus};
use palisade_store::AuditEvent;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::playbook::{OnError, OnInterrupt, Playbook, Step, TimeoutDecision};
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

/// A question waiting for a person.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PendingApproval {
    /// The top-level run, which waits for the answer too.
    pub root_run_id: String,
    pub run_id: String,
    pub step_id: String,
    pub item: Option<u32>,
    pub playbook: String,
    pub case_id: String,
    pub question: String,
    /// Who may answer; empty means anyone.
    pub approvers: Vec<String>,
    /// JSON Schema of the response.
    pub form: Option<Value>,
    pub asked_at: DateTime<Utc>,
    /// When the question closes with its timeout decision.
    pub deadline: Option<DateTime<Utc>>,
}

/// A person's answer to an approval.
#[derive(Clone, Debug)]
pub struct Answer {
    pub approve: bool,
    /// Checked against the approval's form when approving.
    pub response: Value,
    /// Name of the person answering; one of the approvers when they are
    /// listed.
    pub actor: String,
}

/// Checks the name of a person who decides, as for case changes.
fn check_actor(actor: &str) -> Result<String, EngineError> {
    crate::cases::check_name("actor", actor)
        .map_err(|error| EngineError::Invalid(error.to_string()))
}

/// When the question of an approval record closes.
fn approval_deadline(record: &StepRecord) -> Option<DateTime<Utc>> {
    record.input.get("deadline")?.as_str()?.parse().ok()
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

/// A run's claim, released when dropped.
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

impl<C: PluginCaller> Engine<C> {
    /// Waits until every write so far is on disk, on a thread of the
    /// blocking pool: a flush can wait on the disk for a long time and must
    /// not hold a thread that serves other runs and requests.
    async fn flush(&self) -> Result<(), EngineError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|error| EngineError::Conflict(format!("the flush task failed: {error}")))??;
        Ok(())
    }

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

    /// Appends the `step_finished` audit record of journal entry `index` of
    /// `run`, with the digest of the entry as written, so a verification can
    /// tell whether the journal changed afterwards.
    fn audit_step(
        &self,
        actor: &str,
        run: &RunRecord,
        index: usize,
        record: &StepRecord,
    ) -> Result<(), EngineError> {
        let detail = json!({
            "step": record.id,
            "item": record.item,
            "handles": record.handles,
            "uses": record.uses,
            "step_status": record.status,
            "attempt": record.attempt,
            "index": index,
            "plugin_version": record.plugin_version,
            "idempotency_key": record.idempotency_key,
            "error_kind": record.error.as_ref().map(|error| &error.kind),
            "record_sha256": palisade_store::step_record_sha256(record),
        });
        self.audit_run(actor, "step_finished", run, detail)
    }

    fn observe_start(&self, run: &RunRecord) {
        if let Some(observer) = &self.observer {
            observer.run_started(run);
        }
    }

    fn observe_stop(&self, run: &RunRecord) {
        if let Some(observer) = &self.observer {
            observer.run_stopped(run);
        }
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

    /// Chooses the version of every plugin `playbook` calls, for a new run.
    /// A sub-playbook's run keeps its parent's choice (`inherited`) where
    /// that meets its own requirement, so one alert's runs see one version.
    /// A plugin with no fitting version is left out; its steps fail when
    /// they call it, unless one is installed by then.
    pub(crate) fn pin_plugins(
        &self,
        playbook: &Playbook,
        inherited: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut pins = BTreeMap::new();
        for plugin in playbook.targets().into_keys() {
            let requirement = playbook.version_requirement(plugin);
            let kept = inherited.get(plugin).filter(|version| {
                requirement.as_ref().is_none_or(|requirement| {
                    semver::Version::parse(version).is_ok_and(|v| requirement.matches(&v))
                })
            });
            let version = match kept {
                Some(version) => Some(version.clone()),
                None => self.caller.resolve(plugin, requirement.as_ref()),
            };
            if let Some(version) = version {
                pins.insert(plugin.to_string(), version);
            }
        }
        pins
    }

    /// Version of `plugin` that a step of `run` calls: the run's pinned
    /// one, or else the version that resolves now. A playbook requirement
    /// that no loaded version meets is an error naming it.
    fn call_version(&self, run: &RunRecord, plugin: &str) -> Result<Option<String>, String> {
        if let Some(version) = run.plugin_versions.get(plugin) {
            return Ok(Some(version.clone()));
        }
        let requirement = self
            .playbook(&run.playbook)
            .and_then(|playbook| playbook.version_requirement(plugin));
        match (
            self.caller.resolve(plugin, requirement.as_ref()),
            requirement,
        ) {
            (Some(version), _) => Ok(Some(version)),
            (None, Some(requirement)) => Err(format!(
                "no loaded version of plugin {plugin:?} meets the playbook's requirement {requirement}; install one with `palisade plugin install` or change `plugins.{plugin}`"
            )),
            (None, None) => Ok(None),
        }
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
            parent: None,
            // A playbook with a trigger requires no input (checked at load),
            // so its defaults always resolve.
            inputs: playbook.resolve_inputs(&Value::Null).unwrap_or_default(),
            outputs: None,
            plugin_versions: self.pin_plugins(playbook, &BTreeMap::new()),
        };
        self.store.put_run(&run)?;
        self.audit_run("engine", "run_started", &run, json!({}))?;
        self.observe_start(&run);
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
        let actor = check_actor(actor)?;
        let actor = actor.as_str();
        let given = self.load_run(run_id)?;
        // A sub-playbook run is driven through the top-level run above it.
        let mut chain = vec![given.clone()];
        while let Some(parent) = &chain[chain.len() - 1].parent {
            let parent = self.load_run(&parent.run_id)?;
            chain.push(parent);
        }
        chain.reverse();
        let root_id = chain[0].id.clone();
        let Some(_claim) = self.claim(&root_id) else {
            return Err(EngineError::Conflict(format!(
                "run {root_id} is being driven right now; try again when it stops"
            )));
        };
        if given.status != RunStatus::Parked {
            return Err(EngineError::Conflict(format!(
                "run {run_id} has status {}, not parked; only a parked run takes retry, skip or fail",
                given.status.as_str()
            )));
        }
        // Go down from the given run to the run whose own step is parked.
        let mut target = given;
        loop {
            let child = target
                .steps
                .iter()
                .rev()
                .find(|step| step.status == StepStatus::Started && step.child_run.is_some())
                .and_then(|step| step.child_run.clone());
            match child.map(|id| self.load_run(&id)).transpose()? {
                Some(child) if child.status == RunStatus::Parked => {
                    chain.push(child.clone());
                    target = child;
                }
                _ => break,
            }
        }
        let Some(index) = target
            .steps
            .iter()
            .rposition(|step| step.status == StepStatus::Started && step.child_run.is_none())
        else {
            return Err(EngineError::Conflict(format!(
                "run {} is parked but no step is in flight; its journal is damaged",
                target.id
            )));
        };
        let (playbook, alert) = match self.run_inputs(&chain[0])? {
            Ok(inputs) => inputs,
            Err(error) => return self.fail_unresumable(chain.swap_remove(0), error),
        };
        let step_id = target.steps[index].id.clone();
        let detail = format!(
            "{actor} chose {} for step {step_id:?} of run {}",
            decision.as_str(),
            target.id
        );
        self.store.update_case(&target.case_id, &mut |case| {
            case.record("run_decided", detail.clone(), Utc::now());
        })?;
        // Running is written before the decision, so a stop in between
        // finds the step still `started` and parks the run again rather
        // than leaving a parked run with no step in flight.
        for run in &mut chain {
            if run.status == RunStatus::Parked {
                run.status = RunStatus::Running;
                run.error = None;
                self.store.put_run(run)?;
            }
        }
        let target_id = target.id.clone();
        if decision != ParkedDecision::Retry {
            let record = &mut target.steps[index];
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
            self.store.put_step(&target_id, index, record)?;
            let record = record.clone();
            self.audit_step(&format!("operator:{actor}"), &target, index, &record)?;
        }
        target.status = RunStatus::Running;
        let detail = json!({ "decision": decision.as_str(), "step": step_id });
        self.audit_run(&format!("operator:{actor}"), "run_decided", &target, detail)?;
        let forced =
            (decision == ParkedDecision::Retry).then_some((target_id.as_str(), step_id.as_str()));
        let root = self.load_run(&root_id)?;
        let driven = self.drive(playbook, &alert, root, forced).await?;
        if run_id == root_id {
            Ok(driven)
        } else {
            self.load_run(run_id)
        }
    }

    fn load_run(&self, run_id: &str) -> Result<RunRecord, EngineError> {
        self.store.run(run_id)?.ok_or_else(|| {
            EngineError::Store(palisade_store::StoreError::NotFound {
                what: "run",
                id: run_id.to_string(),
            })
        })
    }

    /// Returns the playbook and alert of `run`, or why they cannot be had.
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
        self.observe_stop(&run);
        Ok(run)
    }

    /// Drives `run` from its journal until it ends, waits or parks. The
    /// caller has claimed the run. `forced` names a step whose `started`
    /// record is retried whatever its `on_interrupt` policy is.
    async fn drive(
        &self,
        playbook: &Playbook,
        alert: &Alert,
        run: RunRecord,
        forced: Option<(&str, &str)>,
    ) -> Result<RunRecord, EngineError> {
        let span = tracing::info_span!("run", run.id = %run.id, playbook = %playbook.name);
        self.drive_steps(playbook, alert, run, forced)
            .instrument(span)
            .await
    }

    async fn drive_steps(
        &self,
        playbook: &Playbook,
        alert: &Alert,
        mut run: RunRecord,
        forced: Option<(&str, &str)>,
    ) -> Result<RunRecord, EngineError> {
        if run.status != RunStatus::Running {
            run.status = RunStatus::Running;
            run.wake_at = None;
            self.store.put_run(&run)?;
        }
        loop {
            let mut context = RunContext::new(alert, &run.case_id);
            context.set_inputs(&run.inputs);
            let plan = self.plan(playbook, &run, &mut context, forced);
            match plan {
                Plan::Work(units) => {
                    let journal = std::sync::Mutex::new(std::mem::take(&mut run.steps));
                    let results = futures::future::join_all(units.iter().map(|unit| {
                        self.run_unit(&run, alert, unit, &journal, &context, forced)
                            .instrument(unit.span())
                    }))
                    .await;
                    run.steps = journal.into_inner().unwrap_or_else(|e| e.into_inner());
                    for result in results {
                        result?;
                    }
                }
                Plan::Park(step) => return self.park(run, step),
                Plan::Wait(at) => return self.wait(run, at),
                Plan::Fail(step, error) => {
                    fail_run(&mut run, step, error);
                    run.finished_at = Some(Utc::now());
                    return self.finish(playbook, alert, run, &context);
                }
                Plan::Done => {
                    run.status = RunStatus::Succeeded;
                    run.finished_at = Some(Utc::now());
                    return self.finish(playbook, alert, run, &context);
                }
            }
        }
    }

    /// Reads the journal against the playbook and decides what comes next:
    /// the attempts that can run now, or the run's next state. Fills
    /// `context` with the outputs of the steps that ended.
    fn plan<'p>(
        &self,
        playbook: &'p Playbook,
        run: &RunRecord,
        context: &mut RunContext,
        forced: Option<(&str, &str)>,
    ) -> Plan<'p> {
        let mut ended: HashMap<&str, Ended> = HashMap::new();
        let mut units = Vec::new();
        let mut wake: Option<DateTime<Utc>> = None;
        let mut parked: Option<&Step> = None;
        let mut before: Option<&Step> = None;
        for step in &playbook.steps {
            let previous = before.replace(step);
            let dependencies = step.dependencies(previous);
            // Skipped needed steps do not count, so a step after one whose
            // `if` was false still runs, and a join waits only for the
            // branches that run.
            let (mut succeeded, mut pending, mut counted) = (0, 0, 0);
            for id in &dependencies {
                match ended.get(id) {
                    None => {
                        pending += 1;
                        counted += 1;
                    }
                    Some(end) if end.skipped => {}
                    Some(end) => {
                        counted += 1;
                        succeeded += usize::from(end.satisfied);
                    }
                }
            }
            // A step that names its needs and none of them ran is skipped
            // too: it must not act on, say, an approval that was never
            // asked. A plain list (no `needs`) passes over skipped steps.
            if step.needs.is_some() && !dependencies.is_empty() && counted == 0 {
                ended.insert(&step.id, Ended::skipped());
                continue;
            }
            let required = step.join.required(counted);
            if succeeded < required {
                if succeeded + pending < required {
                    ended.insert(&step.id, Ended::skipped());
                }
                continue;
            }
            let state = self.step_state(step, run, context, forced);
            match state {
                StepState::Ended(end) => {
                    if let Some(output) = &end.output {
                        context.add_step_output(&step.id, output);
                    }
                    match &end.failure {
                        Some(error) => match self.handler_state(playbook, step, run, error, forced)
                        {
                            HandlerState::Run(unit) => units.push(unit),
                            HandlerState::Waiting(at) => wake = Some(earliest(wake, at)),
                            HandlerState::Parked(handler) => parked = parked.or(Some(handler)),
                            HandlerState::Ended(output) if step.on_error == OnError::Fail => {
                                if let (Some(handler), Some(output)) = (&step.handler, &output) {
                                    context.add_step_output(handler, output);
                                }
                                return Plan::Fail(step, Some(error.clone()));
                            }
                            HandlerState::Ended(output) => {
                                if let (Some(handler), Some(output)) = (&step.handler, &output) {
                                    context.add_step_output(handler, output);
                                }
                                ended.insert(
                                    &step.id,
                                    Ended {
                                        satisfied: true,
                                        ..end
                                    },
                                );
                            }
                        },
                        None => {
                            ended.insert(&step.id, end);
                        }
                    }
                }
                StepState::Open {
                    units: ready,
                    wake: at,
                    parked: stopped,
                } => {
                    units.extend(ready);
                    if let Some(at) = at {
                        wake = Some(earliest(wake, at));
                    }
                    if stopped {
                        parked = parked.or(Some(step));
                    }
                }
            }
        }
        if !units.is_empty() {
            return Plan::Work(units);
        }
        if let Some(step) = parked {
            return Plan::Park(step);
        }
        if let Some(at) = wake {
            return Plan::Wait(at);
        }
        Plan::Done
    }

    /// Returns the state of `step` in `run`'s journal.
    fn step_state<'p>(
        &self,
        step: &'p Step,
        run: &RunRecord,
        context: &RunContext,
        forced: Option<(&str, &str)>,
    ) -> StepState<'p> {
        let Some(expression) = &step.for_each else {
            let latest = latest_record(run, &step.id, None, None);
            return match self.slot_state(step, run, latest, None, forced) {
                SlotState::Ended(record) => StepState::Ended(Ended::from_record(&record)),
                SlotState::Run(unit) => StepState::open(vec![unit], None, false),
                SlotState::Waiting(at) => StepState::open(Vec::new(), Some(at), false),
                SlotState::Parked => StepState::open(Vec::new(), None, true),
            };
        };
        if let Some((_, record)) = latest_record(run, &step.id, None, None) {
            // The list itself could not be evaluated.
            return StepState::Ended(Ended::from_record(record));
        }
        let items = match self.templates.eval(expression, &context.value()) {
            Ok(Value::Array(items)) if items.len() <= MAX_ITEMS => items,
            Ok(Value::Array(items)) => {
                let message = format!(
                    "`for_each` gave {} items, over the limit of {MAX_ITEMS}",
                    items.len()
                );
                return StepState::open(vec![Unit::list_failure(step, message)], None, false);
            }
            Ok(Value::Null) => Vec::new(),
            Ok(other) => {
                let message = format!("`for_each` gave {}, not a list", type_name(&other));
                return StepState::open(vec![Unit::list_failure(step, message)], None, false);
            }
            Err(message) => {
                return StepState::open(vec![Unit::list_failure(step, message)], None, false);
            }
        };
        let mut outputs = Vec::with_capacity(items.len());
        let mut failure = None;
        let mut ready = Vec::new();
        let mut wake = None;
        let mut parked = false;
        let mut open = false;
        for (position, item) in items.into_iter().enumerate() {
            let position = position as u32;
            let latest = latest_record(run, &step.id, Some(position), None);
            match self.slot_state(step, run, latest, Some((position, item)), forced) {
                SlotState::Ended(record) => {
                    outputs.push(record.output.clone().unwrap_or(Value::Null));
                    if record.status == StepStatus::Failed && failure.is_none() {
                        failure = record.error.clone().map(|error| StepError {
                            kind: error.kind,
                            message: format!("item {position}: {}", error.message),
                        });
                    }
                }
                SlotState::Run(unit) => {
                    open = true;
                    if ready.len() < step.concurrency as usize {
                        ready.push(unit);
                    }
                }
                SlotState::Waiting(at) => {
                    open = true;
                    wake = Some(earliest(wake, at));
                }
                SlotState::Parked => {
                    open = true;
                    parked = true;
                }
            }
        }
        if open {
            return StepState::open(ready, wake, parked);
        }
        StepState::Ended(Ended {
            skipped: false,
            satisfied: failure.is_none(),
            output: Some(Value::Array(outputs)),
            failure,
        })
    }

    /// Returns the state of one attempt slot (the step, or one item of it)
    /// from its latest journal record.
    fn slot_state<'p>(
        &self,
        step: &'p Step,
        run: &RunRecord,
        latest: Option<(usize, &StepRecord)>,
        item: Option<(u32, Value)>,
        forced: Option<(&str, &str)>,
    ) -> SlotState<'p> {
        let Some((index, record)) = latest else {
            return SlotState::Run(Unit::attempt(step, run.steps.len(), 1, item, true));
        };
        match record.status {
            StepStatus::Succeeded | StepStatus::Skipped => {
                SlotState::Ended(Box::new(record.clone()))
            }
            StepStatus::Failed => match record.retry_at {
                Some(at) if at > Utc::now() => SlotState::Waiting(at),
                Some(_) => SlotState::Run(Unit::attempt(
                    step,
                    run.steps.len(),
                    record.attempt + 1,
                    item,
                    true,
                )),
                None => SlotState::Ended(Box::new(record.clone())),
            },
            StepStatus::Started if step.approval.is_some() => {
                match approval_deadline(record) {
                    Some(at) if at > Utc::now() => SlotState::Waiting(at),
                    // The time is up: the unit records the timeout decision.
                    _ => SlotState::Run(Unit::attempt(step, index, record.attempt, item, false)),
                }
            }
            StepStatus::Started if step.sub_playbook().is_some() => {
                // The sub-playbook's run decides: the step follows it.
                let child = record
                    .child_run
                    .as_ref()
                    .and_then(|id| self.store.run(id).ok().flatten());
                let retry = Unit::attempt(step, index, record.attempt, item, false);
                match child {
                    Some(child) if child.status == RunStatus::Waiting => match child.wake_at {
                        Some(at) if at > Utc::now() => SlotState::Waiting(at),
                        _ => SlotState::Run(retry),
                    },
                    Some(child)
                        if child.status == RunStatus::Parked
                            && forced.is_none_or(|(id, _)| id == run.id) =>
                    {
                        SlotState::Parked
                    }
                    _ => SlotState::Run(retry),
                }
            }
            StepStatus::Started => {
                let (plugin, action) = step.target();
                let policy = step.on_interrupt.unwrap_or(
                    if self.caller.has_side_effects(
                        plugin,
                        action,
                        run.plugin_versions.get(plugin).map(String::as_str),
                    ) {
                        OnInterrupt::Park
                    } else {
                        OnInterrupt::Retry
                    },
                );
                if policy == OnInterrupt::Park
                    && forced != Some((run.id.as_str(), step.id.as_str()))
                {
                    return SlotState::Parked;
                }
                SlotState::Run(Unit::attempt(step, index, record.attempt, item, false))
            }
        }
    }

    /// Returns the state of the handler of failed step `step`.
    fn handler_state<'p>(
        &self,
        playbook: &'p Playbook,
        step: &'p Step,
        run: &RunRecord,
        error: &StepError,
        forced: Option<(&str, &str)>,
    ) -> HandlerState<'p> {
        let Some(handler) = step
            .handler
            .as_ref()
            .and_then(|id| playbook.handlers.iter().find(|h| &h.id == id))
        else {
            return HandlerState::Ended(None);
        };
        let latest = latest_record(run, &handler.id, None, Some(&step.id));
        let failure = json!({ "step": step.id, "kind": error.kind, "message": error.message });
        match self.slot_state(handler, run, latest, None, forced) {
            SlotState::Ended(record) => HandlerState::Ended(record.output.clone()),
            SlotState::Run(mut unit) => {
                unit.handles = Some((step.id.clone(), failure));
                HandlerState::Run(unit)
            }
            SlotState::Waiting(at) => HandlerState::Waiting(at),
            SlotState::Parked => HandlerState::Parked(handler),
        }
    }

    /// Runs one unit of work: an attempt of a step, an item or a handler,
    /// or records that a `for_each` list could not be had.
    async fn run_unit(
        &self,
        run: &RunRecord,
        alert: &Alert,
        unit: &Unit<'_>,
        journal: &std::sync::Mutex<Vec<StepRecord>>,
        context: &RunContext,
        forced: Option<(&str, &str)>,
    ) -> Result<(), EngineError> {
        let step = unit.step;
        let lock = || journal.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(message) = &unit.list_failure {
            let record = runner::failed_record(step, "expression", message.clone());
            let index = push_record(&mut lock(), record.clone());
            self.store.put_step(&run.id, index, &record)?;
            return self.audit_step("engine", run, index, &record);
        }
        if step.approval.is_some() {
            return self.run_approval(run, unit, journal, context).await;
        }
        let slot = match (&unit.item, &unit.handles) {
            (Some((position, _)), _) => format!("{}#{position}", step.id),
            (None, Some((failed, _))) => format!("{}@{failed}", step.id),
            (None, None) => step.id.clone(),
        };
        // A retried interruption keeps its key; a new attempt derives it.
        let key = {
            let journal = lock();
            journal
                .get(unit.index)
                .filter(|_| !unit.new_record)
                .and_then(|record| record.idempotency_key.clone())
                .unwrap_or_else(|| idempotency_key(run, &slot))
        };
        let context_value = match (&unit.item, &unit.handles) {
            (Some((_, item)), _) => context.with_item(item),
            (None, Some((_, failure))) => context.with_error(failure),
            (None, None) => context.value(),
        };
        let prepared = runner::prepare(&self.templates, step, &context_value, unit.attempt, &key);
        let (plugin, action) = step.target();
        let mut side_effects = false;
        let (index, mut record) = match prepared {
            Prepared::Done(record) => {
                let record = unit.label(record);
                let index = self.place(run, unit, &mut lock(), record.clone());
                (index, record)
            }
            Prepared::Call(started) if step.fail.is_some() => {
                let message = step.fail.clone().unwrap_or_default();
                let message = match self
                    .templates
                    .render(&Value::String(message), &context_value)
                {
                    Ok(Value::String(text)) => text,
                    Ok(other) => other.to_string(),
                    Err(error) => format!("`fail` could not be evaluated: {error}"),
                };
                let mut record = unit.label(started);
                record.status = StepStatus::Failed;
                record.error = Some(StepError {
                    kind: "failed_by_playbook".into(),
                    message,
                });
                let index = self.place(run, unit, &mut lock(), record.clone());
                (index, record)
            }
            Prepared::Call(started) if step.sub_playbook().is_some() => {
                let mut started = unit.label(started);
                if !unit.new_record {
                    // A retried call keeps the run it started.
                    started.child_run = lock()[unit.index].child_run.clone();
                }
                if started.child_run.is_none() {
                    // The step names its run before the run exists, so a
                    // stop in between leaves an id to create the run under,
                    // not a run that nothing refers to.
                    started.child_run = Some(self.store.next_run_id()?);
                }
                let index = self.place(run, unit, &mut lock(), started.clone());
                self.store.put_step(&run.id, index, &started)?;
                match self
                    .call_playbook(run, alert, step, started, forced)
                    .await?
                {
                    Some(record) => (index, record),
                    // The sub-playbook waits or is parked; the step stays
                    // `started` and the parent follows its state.
                    None => return Ok(()),
                }
            }
            Prepared::Call(started) => {
                let started = unit.label(started);
                let index = self.place(run, unit, &mut lock(), started.clone());
                self.store.put_step(&run.id, index, &started)?;
                let version = self.call_version(run, plugin);
                let pinned = version.as_ref().ok().and_then(Option::as_deref);
                side_effects = self.caller.has_side_effects(plugin, action, pinned);
                if side_effects {
                    // The side effect may happen as soon as the plugin runs,
                    // so the journal must know first.
                    self.flush().await?;
                }
                let record = match version {
                    Ok(version) => {
                        let version = version.as_deref();
                        runner::call(self.caller.as_ref(), step, &run.id, version, started).await
                    }
                    Err(message) => runner::fail_started(started, "unknown_plugin", message),
                };
                (index, record)
            }
        };
        if record.status == StepStatus::Failed {
            runner::schedule_retry(step, &mut record, Utc::now());
            if let Some(error) = &record.error {
                tracing::warn!(
                    run.id = %run.id,
                    step.id = %step.id,
                    item = record.item,
                    plugin.action = %step.uses,
                    attempt = record.attempt,
                    error.kind = %error.kind,
                    error = %error.message,
                    retry_at = record.retry_at.as_ref().map(tracing::field::display),
                    "step failed"
                );
            }
        }
        lock()[index] = record.clone();
        self.store.put_step(&run.id, index, &record)?;
        self.audit_step("engine", run, index, &record)?;
        if side_effects {
            // Without this, a stop soon after would find the step still
            // `started` and retry or park a side effect that happened.
            self.flush().await?;
        }
        Ok(())
    }

    /// Runs the sub-playbook of `step` for its `started` record, creating
    /// the run the record names or continuing it. Returns the finished record, or `None` while the sub-playbook
    /// waits or is parked.
    async fn call_playbook(
        &self,
        run: &RunRecord,
        alert: &Alert,
        step: &Step,
        mut record: StepRecord,
        forced: Option<(&str, &str)>,
    ) -> Result<Option<StepRecord>, EngineError> {
        let started = std::time::Instant::now();
        let name = step.sub_playbook().unwrap_or_default();
        let depth = run.parent.as_ref().map_or(0, |parent| parent.depth) + 1;
        let Some(called) = self.playbook(name) else {
            let message = format!("playbook {name:?} is not loaded");
            return Ok(Some(failed_call(
                record,
                "unknown_playbook",
                message,
                started,
            )));
        };
        if depth > MAX_DEPTH {
            let message = format!(
                "sub-playbook calls are nested {depth} deep, over the limit of {MAX_DEPTH}"
            );
            return Ok(Some(failed_call(record, "recursion", message, started)));
        }
        let inputs = match called.resolve_inputs(&record.input) {
            Ok(inputs) => inputs,
            Err(message) => return Ok(Some(failed_call(record, "bad_input", message, started))),
        };
        let Some(child_id) = record.child_run.clone() else {
            let message = "the step has no sub-playbook run id".to_string();
            return Ok(Some(failed_call(record, "internal", message, started)));
        };
        let child = match self.store.run(&child_id)? {
            Some(child) => child,
            None => {
                let child = RunRecord {
                    id: child_id.clone(),
                    playbook: called.name.clone(),
                    alert_id: run.alert_id.clone(),
                    case_id: run.case_id.clone(),
                    status: RunStatus::Running,
                    started_at: Utc::now(),
                    finished_at: None,
                    steps: Vec::new(),
                    error: None,
                    wake_at: None,
                    parent: Some(ParentStep {
                        run_id: run.id.clone(),
                        step_id: step.id.clone(),
                        item: record.item,
                        depth,
                    }),
                    inputs,
                    outputs: None,
                    plugin_versions: self.pin_plugins(called, &run.plugin_versions),
                };
                self.store.put_run(&child)?;
                self.audit_run("engine", "run_started", &child, json!({ "parent": run.id }))?;
                self.observe_start(&child);
                child
            }
        };
        let child = if child.status.is_final() {
            child
        } else {
            Box::pin(self.drive(called, alert, child, forced)).await?
        };
        record.duration_us = started.elapsed().as_micros() as u64;
        match child.status {
            RunStatus::Succeeded => {
                record.status = StepStatus::Succeeded;
                record.output = Some(child.outputs.clone().unwrap_or_else(|| json!({})));
            }
            RunStatus::Failed => {
                let error = child.error.clone().unwrap_or(StepError {
                    kind: "failed".into(),
                    message: String::new(),
                });
                record.status = StepStatus::Failed;
                record.error = Some(StepError {
                    kind: error.kind,
                    message: format!(
                        "playbook {name:?} (run {}) failed: {}",
                        child.id, error.message
                    ),
                });
            }
            RunStatus::Running | RunStatus::Waiting | RunStatus::Parked => return Ok(None),
        }
        Ok(Some(record))
    }

    /// Asks the question of an approval step, or records the timeout
    /// decision of one whose time is up.
    async fn run_approval(
        &self,
        run: &RunRecord,
        unit: &Unit<'_>,
        journal: &std::sync::Mutex<Vec<StepRecord>>,
        context: &RunContext,
    ) -> Result<(), EngineError> {
        let step = unit.step;
        let Some(approval) = &step.approval else {
            return Ok(());
        };
        let lock = || journal.lock().unwrap_or_else(|e| e.into_inner());
        if !unit.new_record {
            let mut record = lock()[unit.index].clone();
            let approved = approval.on_timeout == TimeoutDecision::Approve;
            record.status = StepStatus::Succeeded;
            record.output = Some(json!({
                "approved": approved,
                "response": null,
                "by": null,
                "timed_out": true,
            }));
            lock()[unit.index] = record.clone();
            self.store.put_step(&run.id, unit.index, &record)?;
            self.audit_step("engine", run, unit.index, &record)?;
            let detail = format!(
                "approval {:?} of run {} timed out: {}",
                step.id,
                run.id,
                if approved { "approved" } else { "rejected" }
            );
            self.store.update_case(&run.case_id, &mut |case| {
                case.record("approval_timed_out", detail.clone(), Utc::now());
            })?;
            let detail = json!({ "step": step.id, "approved": approved, "timed_out": true });
            return self.audit_run("engine", "approval_decided", run, detail);
        }
        let key = idempotency_key(run, &step.id);
        let context_value = match &unit.item {
            Some((_, item)) => context.with_item(item),
            None => context.value(),
        };
        let mut record =
            match runner::prepare(&self.templates, step, &context_value, unit.attempt, &key) {
                Prepared::Done(record) => unit.label(record),
                Prepared::Call(started) => unit.label(started),
            };
        if record.status == StepStatus::Started {
            let question = match self
                .templates
                .render(&Value::String(approval.question.clone()), &context_value)
            {
                Ok(Value::String(text)) => text,
                Ok(other) => other.to_string(),
                Err(message) => {
                    record.status = StepStatus::Failed;
                    record.error = Some(StepError {
                        kind: "expression".into(),
                        message: format!("approval.question: {message}"),
                    });
                    let index = self.place(run, unit, &mut lock(), record.clone());
                    self.store.put_step(&run.id, index, &record)?;
                    return self.audit_step("engine", run, index, &record);
                }
            };
            let deadline = Utc::now()
                + chrono::Duration::from_std(approval.timeout).unwrap_or(chrono::Duration::MAX);
            record.input = json!({
                "question": question,
                "approvers": approval.approvers,
                "form": approval.form,
                "deadline": deadline,
            });
        }
        let index = self.place(run, unit, &mut lock(), record.clone());
        self.store.put_step(&run.id, index, &record)?;
        if record.status != StepStatus::Started {
            // The condition was false: the step is skipped.
            return self.audit_step("engine", run, index, &record);
        }
        {
            let detail = format!("run {} asks: {}", run.id, record.input["question"]);
            self.store.update_case(&run.case_id, &mut |case| {
                case.record("approval_requested", detail.clone(), Utc::now());
            })?;
            let detail = json!({ "step": step.id, "deadline": record.input["deadline"] });
            self.audit_run("engine", "approval_requested", run, detail)?;
        }
        Ok(())
    }

    /// Questions that wait for an answer, in top-level runs and the
    /// sub-playbook runs under them.
    pub fn pending_approvals(&self) -> Result<Vec<PendingApproval>, EngineError> {
        let mut pending = Vec::new();
        let mut runs: Vec<(String, RunRecord)> = self
            .store
            .active_runs()?
            .into_iter()
            .filter(|run| run.status == RunStatus::Waiting)
            .map(|run| (run.id.clone(), run))
            .collect();
        while let Some((root, run)) = runs.pop() {
            for record in &run.steps {
                if record.status != StepStatus::Started {
                    continue;
                }
                if let Some(child) = &record.child_run {
                    if let Some(child) = self.store.run(child)? {
                        runs.push((root.clone(), child));
                    }
                    continue;
                }
                if record.uses != "approval" {
                    continue;
                }
                pending.push(PendingApproval {
                    root_run_id: root.clone(),
                    run_id: run.id.clone(),
                    step_id: record.id.clone(),
                    item: record.item,
                    playbook: run.playbook.clone(),
                    case_id: run.case_id.clone(),
                    question: record.input["question"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    approvers: serde_json::from_value(record.input["approvers"].clone())
                        .unwrap_or_default(),
                    form: record
                        .input
                        .get("form")
                        .cloned()
                        .filter(|form| !form.is_null()),
                    asked_at: record.started_at,
                    deadline: approval_deadline(record),
                });
            }
        }
        pending.sort_by_key(|approval| approval.asked_at);
        Ok(pending)
    }

    /// Records `answer` to the approval `step_id` of run `run_id` (item
    /// `item` of a `for_each` step) and continues the run.
    pub async fn answer_approval(
        &self,
        run_id: &str,
        step_id: &str,
        item: Option<u32>,
        mut answer: Answer,
    ) -> Result<RunRecord, EngineError> {
        answer.actor = check_actor(&answer.actor)?;
        let given = self.load_run(run_id)?;
        let mut root = given.clone();
        while let Some(parent) = &root.parent {
            root = self.load_run(&parent.run_id)?;
        }
        let Some(_claim) = self.claim(&root.id) else {
            return Err(EngineError::Conflict(format!(
                "run {} is being driven right now; try again when it stops",
                root.id
            )));
        };
        let given = self.load_run(run_id)?;
        let Some(index) = given.steps.iter().rposition(|record| {
            record.id == step_id
                && record.item == item
                && record.uses == "approval"
                && record.status == StepStatus::Started
        }) else {
            return Err(EngineError::Conflict(format!(
                "run {run_id} has no open approval {step_id:?}{}; `palisade approvals` lists the open ones",
                item.map(|item| format!(" for item {item}"))
                    .unwrap_or_default()
            )));
        };
        let mut record = given.steps[index].clone();
        if let Some(deadline) = approval_deadline(&record)
            && deadline <= Utc::now()
        {
            return Err(EngineError::Conflict(format!(
                "approval {step_id:?} of run {run_id} closed at {deadline}; its timeout decision applies"
            )));
        }
        let approvers: Vec<String> =
            serde_json::from_value(record.input["approvers"].clone()).unwrap_or_default();
        if !approvers.is_empty() && !approvers.contains(&answer.actor) {
            return Err(EngineError::Forbidden(format!(
                "{:?} may not answer approval {step_id:?}; it is for {}",
                answer.actor,
                approvers.join(", ")
            )));
        }
        if answer.approve
            && let Some(form) = record.input.get("form").filter(|form| !form.is_null())
        {
            let schema = crate::schema::Schema::compile(form).map_err(EngineError::Invalid)?;
            schema.validate(&answer.response).map_err(|error| {
                EngineError::Invalid(format!("the response does not fit the form: {error}"))
            })?;
        }
        record.status = StepStatus::Succeeded;
        record.duration_us = (Utc::now() - record.started_at)
            .num_microseconds()
            .unwrap_or(0)
            .max(0) as u64;
        record.output = Some(json!({
            "approved": answer.approve,
            "response": answer.response,
            "by": answer.actor,
            "timed_out": false,
        }));
        self.store.put_step(&given.id, index, &record)?;
        self.audit_step(
            &format!("operator:{}", answer.actor),
            &given,
            index,
            &record,
        )?;
        let verdict = if answer.approve {
            "approved"
        } else {
            "rejected"
        };
        let detail = format!("{} {verdict} {step_id:?} of run {}", answer.actor, given.id);
        self.store.update_case(&given.case_id, &mut |case| {
            case.record("approval_answered", detail.clone(), Utc::now());
        })?;
        let detail = json!({ "step": step_id, "item": item, "approved": answer.approve });
        self.audit_run(
            &format!("operator:{}", answer.actor),
            "approval_decided",
            &given,
            detail,
        )?;
        // The answered run and the runs above it continue now rather than
        // at the question's deadline.
        let mut current = Some(given.id.clone());
        while let Some(id) = current {
            let mut run = self.load_run(&id)?;
            if run.status == RunStatus::Waiting {
                run.status = RunStatus::Running;
                run.wake_at = None;
                self.store.put_run(&run)?;
            }
            current = run.parent.map(|parent| parent.run_id);
        }
        let root = self.load_run(&root.id)?;
        let Ok((playbook, alert)) = self.run_inputs(&root)? else {
            return self.load_run(run_id);
        };
        self.drive(playbook, &alert, root, None).await?;
        self.load_run(run_id)
    }

    /// Puts `record` at the unit's journal position: its own for a retried
    /// interruption, or a new one at the end.
    fn place(
        &self,
        _run: &RunRecord,
        unit: &Unit<'_>,
        journal: &mut Vec<StepRecord>,
        record: StepRecord,
    ) -> usize {
        if unit.new_record {
            push_record(journal, record)
        } else {
            journal[unit.index] = record;
            unit.index
        }
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
        self.observe_stop(&run);
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
        self.observe_stop(&run);
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
        let mut run = run;
        let (outputs, output_errors) = runner::outputs(&self.templates, playbook, context);
        if !playbook.outputs.is_empty() {
            run.outputs = Some(outputs);
        }
        let (fields, mut errors) = runner::case_fields(&self.templates, playbook, context);
        errors.extend(output_errors);
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
            // A sub-playbook run is listed under the step that called it.
            if run.parent.is_none() {
                case.run_ids.push(run.id.clone());
            }
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
        self.observe_stop(&run);
        Ok(run)
    }
}

/// Deepest nesting of sub-playbook calls. Loading rejects playbooks that
/// call themselves, so this stops only very long chains of distinct
/// playbooks.
const MAX_DEPTH: u32 = 8;

/// `record` failed with `kind` before the sub-playbook ran.
fn failed_call(
    mut record: StepRecord,
    kind: &str,
    message: String,
    started: std::time::Instant,
) -> StepRecord {
    record.status = StepStatus::Failed;
    record.duration_us = started.elapsed().as_micros() as u64;
    record.error = Some(StepError {
        kind: kind.to_string(),
        message,
    });
    record
}

/// Largest `for_each` list a step takes.
const MAX_ITEMS: usize = 1_000;

/// Next state of a run, as the journal decides it.
enum Plan<'p> {
    /// Attempts that can run now, together.
    Work(Vec<Unit<'p>>),
    /// Nothing can run: a step with side effects was interrupted.
    Park(&'p Step),
    /// Nothing can run before this time.
    Wait(DateTime<Utc>),
    /// A step failed for good and its `on_error` is `fail`.
    Fail(&'p Step, Option<StepError>),
    /// Every step ended.
    Done,
}

/// How a step ended, as its dependents see it.
#[derive(Clone, Debug)]
struct Ended {
    /// The step's `if` was false, or too few of its needed steps succeeded.
    skipped: bool,
    /// Counts as a success for the steps that need it.
    satisfied: bool,
    output: Option<Value>,
    failure: Option<StepError>,
}

impl Ended {
    fn skipped() -> Self {
        Self {
            skipped: true,
            satisfied: false,
            output: None,
            failure: None,
        }
    }

    fn from_record(record: &StepRecord) -> Self {
        match record.status {
            StepStatus::Skipped => Self::skipped(),
            StepStatus::Failed => Self {
                skipped: false,
                satisfied: false,
                output: None,
                failure: record.error.clone(),
            },
            _ => Self {
                skipped: false,
                satisfied: true,
                output: record.output.clone(),
                failure: None,
            },
        }
    }
}

enum StepState<'p> {
    Ended(Ended),
    /// Not ended: attempts ready to run, the earliest retry, and whether an
    /// attempt is parked.
    Open {
        units: Vec<Unit<'p>>,
        wake: Option<DateTime<Utc>>,
        parked: bool,
    },
}

impl<'p> StepState<'p> {
    fn open(units: Vec<Unit<'p>>, wake: Option<DateTime<Utc>>, parked: bool) -> Self {
        Self::Open {
            units,
            wake,
            parked,
        }
    }
}

enum SlotState<'p> {
    Ended(Box<StepRecord>),
    Run(Unit<'p>),
    Waiting(DateTime<Utc>),
    Parked,
}

enum HandlerState<'p> {
    /// No handler, or it ended; with the handler's output.
    Ended(Option<Value>),
    Run(Unit<'p>),
    Waiting(DateTime<Utc>),
    Parked(&'p Step),
}

/// One attempt to run: of a step, of one item of a `for_each` step, or of
/// a handler.
struct Unit<'p> {
    step: &'p Step,
    /// Journal position of the record a retried interruption overwrites.
    index: usize,
    /// Whether the attempt gets a new journal record.
    new_record: bool,
    attempt: u32,
    item: Option<(u32, Value)>,
    /// For a handler: the failed step and its error, as `error`.
    handles: Option<(String, Value)>,
    /// Set when the `for_each` list could not be had: the unit only
    /// records that failure.
    list_failure: Option<String>,
}

impl<'p> Unit<'p> {
    fn attempt(
        step: &'p Step,
        index: usize,
        attempt: u32,
        item: Option<(u32, Value)>,
        new_record: bool,
    ) -> Self {
        Self {
            step,
            index,
            new_record,
            attempt,
            item,
            handles: None,
            list_failure: None,
        }
    }

    fn list_failure(step: &'p Step, message: String) -> Self {
        Self {
            list_failure: Some(message),
            ..Self::attempt(step, 0, 1, None, true)
        }
    }

    /// Creates the span of this attempt. `plugin.name` is set only for a
    /// step that calls a plugin, and `item` only for an item of a
    /// `for_each` step.
    fn span(&self) -> tracing::Span {
        let step = self.step;
        let calls_plugin =
            step.sub_playbook().is_none() && step.approval.is_none() && step.fail.is_none();
        let plugin = calls_plugin.then(|| step.target().0);
        let item = self.item.as_ref().map(|(position, _)| *position);
        tracing::info_span!(
            "step",
            step.id = %step.id,
            plugin.name = plugin,
            item,
            attempt = self.attempt,
        )
    }

    /// Marks `record` with the unit's item and handled step.
    fn label(&self, mut record: StepRecord) -> StepRecord {
        record.item = self.item.as_ref().map(|(position, _)| *position);
        record.handles = self.handles.as_ref().map(|(step, _)| step.clone());
        record
    }
}

/// The last journal record of step `id`, for item `item`, handling the
/// failure of step `handles`, with its position.
fn latest_record<'r>(
    run: &'r RunRecord,
    id: &str,
    item: Option<u32>,
    handles: Option<&str>,
) -> Option<(usize, &'r StepRecord)> {
    run.steps.iter().enumerate().rev().find(|(_, record)| {
        record.id == id && record.item == item && record.handles.as_deref() == handles
    })
}

fn push_record(journal: &mut Vec<StepRecord>, record: StepRecord) -> usize {
    journal.push(record);
    journal.len() - 1
}

fn earliest(current: Option<DateTime<Utc>>, at: DateTime<Utc>) -> DateTime<Utc> {
    current.map_or(at, |current| current.min(at))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
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
            parent: None,
            inputs: serde_json::Value::Null,
            outputs: None,
            plugin_versions: Default::default(),
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
