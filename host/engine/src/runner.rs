//! Running a playbook on one alert, step by step, with a journal entry
//! after every step.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use chrono::Utc;
use palisade_model::{Alert, RunRecord, RunStatus, StepError, StepRecord, StepStatus};
use serde_json::{Map, Value, json};

use crate::playbook::{OnError, Playbook, Step};
use crate::template::Templates;

/// Result of one plugin call, as the engine records it.
#[derive(Clone, Debug)]
pub struct StepOutcome {
    pub result: Result<Value, StepError>,
    pub plugin_version: Option<String>,
    pub duration_us: u64,
    pub logs: Value,
    pub http_calls: Value,
}

/// Interface through which the engine calls plugins. The host implements
/// it over the sandboxed runtime, and the engine passes and receives only
/// JSON.
pub trait PluginCaller: Send + Sync + 'static {
    fn call(
        &self,
        plugin: &str,
        action: &str,
        input: &Value,
        run_id: &str,
        step_id: &str,
    ) -> impl Future<Output = StepOutcome> + Send;

    /// Names of the actions plugin `plugin` offers, or `None` when no such
    /// plugin is loaded.
    fn actions(&self, plugin: &str) -> Option<Vec<String>>;
}

/// The expression context of a run: `alert`, `case` and the outputs of the
/// steps so far under `steps`. Each part is converted to a template value
/// once, so a step's expressions do not convert the alert again.
pub(crate) struct RunContext {
    alert: minijinja::Value,
    case: minijinja::Value,
    steps: BTreeMap<String, minijinja::Value>,
}

impl RunContext {
    pub fn new(alert: &Alert, case_id: &str) -> Self {
        Self {
            alert: minijinja::Value::from_serialize(alert),
            case: minijinja::Value::from_serialize(json!({ "id": case_id })),
            steps: BTreeMap::new(),
        }
    }

    pub fn add_step_output(&mut self, step_id: &str, output: &Value) {
        self.steps.insert(
            step_id.to_string(),
            minijinja::Value::from_serialize(output),
        );
    }

    /// Builds the context as one template value.
    pub fn value(&self) -> minijinja::Value {
        minijinja::context! {
            alert => self.alert.clone(),
            case => self.case.clone(),
            steps => minijinja::Value::from(self.steps.clone()),
        }
    }
}

/// Runs `playbook`'s steps in order and journals every finished step
/// through `journal`, with its index.
pub(crate) async fn execute<C: PluginCaller>(
    caller: &C,
    templates: &Templates,
    playbook: &Playbook,
    run: &mut RunRecord,
    context: &mut RunContext,
    journal: &mut (dyn FnMut(usize, &StepRecord) + Send),
) {
    for step in &playbook.steps {
        let record = run_step(caller, templates, step, &run.id, &context.value()).await;
        let failed = record.status == StepStatus::Failed;
        if let Some(output) = &record.output {
            context.add_step_output(&step.id, output);
        }
        let error = record.error.clone();
        journal(run.steps.len(), &record);
        run.steps.push(record);
        if failed && step.on_error == OnError::Fail {
            run.status = RunStatus::Failed;
            run.error = error.map(|error| StepError {
                kind: error.kind,
                message: format!("step {:?} failed: {}", step.id, error.message),
            });
            break;
        }
    }
    if run.status == RunStatus::Running {
        run.status = RunStatus::Succeeded;
    }
    run.finished_at = Some(Utc::now());
}

async fn run_step<C: PluginCaller>(
    caller: &C,
    templates: &Templates,
    step: &Step,
    run_id: &str,
    context: &minijinja::Value,
) -> StepRecord {
    let started_at = Utc::now();
    let started = Instant::now();
    let mut record = StepRecord {
        id: step.id.clone(),
        uses: step.uses.clone(),
        status: StepStatus::Skipped,
        started_at,
        duration_us: 0,
        plugin_version: None,
        input: Value::Null,
        output: None,
        error: None,
        logs: Value::Array(Vec::new()),
        http_calls: Value::Array(Vec::new()),
    };

    if let Some(condition) = &step.condition {
        match templates.is_true(condition, context) {
            Ok(true) => {}
            Ok(false) => return record,
            Err(message) => return failed(record, "expression", message, started),
        }
    }
    let input = match templates.render(&step.with, context) {
        Ok(input) => input,
        Err(message) => return failed(record, "expression", message, started),
    };

    let (plugin, action) = step.target();
    let outcome = caller.call(plugin, action, &input, run_id, &step.id).await;
    record.input = input;
    record.plugin_version = outcome.plugin_version;
    record.logs = outcome.logs;
    record.http_calls = outcome.http_calls;
    record.duration_us = outcome.duration_us;
    match outcome.result {
        Ok(output) => {
            record.status = StepStatus::Succeeded;
            record.output = Some(output);
        }
        Err(error) => {
            record.status = StepStatus::Failed;
            record.error = Some(error);
        }
    }
    record
}

fn failed(mut record: StepRecord, kind: &str, message: String, started: Instant) -> StepRecord {
    record.status = StepStatus::Failed;
    record.duration_us = started.elapsed().as_micros() as u64;
    record.error = Some(StepError {
        kind: kind.to_string(),
        message,
    });
    record
}

/// Evaluates the playbook's `case` section against the finished run.
/// Returns the values that are set, by field name, and the errors met.
pub(crate) fn case_fields(
    templates: &Templates,
    playbook: &Playbook,
    context: &RunContext,
) -> (Map<String, Value>, Vec<String>) {
    let context = context.value();
    let fields = [
        ("observables", &playbook.case.observables),
        ("intel_hits", &playbook.case.intel_hits),
        ("verdicts", &playbook.case.verdicts),
        ("severity", &playbook.case.severity),
        ("priority", &playbook.case.priority),
        ("score", &playbook.case.score),
    ];
    let mut values = Map::new();
    let mut errors = Vec::new();
    for (name, template) in fields {
        let Some(template) = template else { continue };
        match templates.render(&Value::String(template.clone()), &context) {
            Ok(Value::Null) => {}
            Ok(value) => {
                values.insert(name.to_string(), value);
            }
            Err(error) => errors.push(format!("case.{name}: {error}")),
        }
    }
    (values, errors)
}
