//! One attempt of one step: evaluate its condition and input, journal it
//! as started, call the plugin, and return the finished record. The run
//! loop that orders steps, retries and resumes lives in the engine.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use chrono::{DateTime, Utc};
use palisade_model::{Alert, StepError, StepRecord, StepStatus};
use serde_json::{Map, Value, json};

use crate::playbook::{Playbook, Step};
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

/// Identity of a call: the run and step, and the step's idempotency key.
#[derive(Clone, Copy, Debug)]
pub struct CallInfo<'a> {
    pub run_id: &'a str,
    pub step_id: &'a str,
    /// The same on every attempt of the step, across restarts.
    pub idempotency_key: Option<&'a str>,
    /// Version of the plugin the run is pinned to; `None` calls the active
    /// version.
    pub version: Option<&'a str>,
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
        call: CallInfo<'_>,
    ) -> impl Future<Output = StepOutcome> + Send;

    /// Version of plugin `plugin` a new run gets: the active one when it
    /// meets `requirement` (or there is none), else the highest loaded
    /// version that does. `None` when no loaded version fits.
    fn resolve(&self, plugin: &str, requirement: Option<&semver::VersionReq>) -> Option<String>;

    /// Names of the actions plugin `plugin` offers, or `None` when no such
    /// plugin is loaded.
    fn actions(&self, plugin: &str) -> Option<Vec<String>>;

    /// Returns whether `plugin.action` changes something outside Palisade, as
    /// the plugin declares, in `version` (the active version when `None`). An
    /// unknown action or version counts as having side effects.
    fn has_side_effects(&self, plugin: &str, action: &str, version: Option<&str>) -> bool;

    /// JSON Schema of the input of `plugin.action`, when the plugin gives a
    /// valid one.
    fn input_schema(&self, plugin: &str, action: &str) -> Option<Value>;

    /// Returns whether plugin `plugin` requests HTTP origins, so its calls can meet
    /// timeouts, rate limits and upstream errors.
    fn requests_network(&self, plugin: &str) -> bool;
}

/// The expression context of a run: `alert`, `case` and the outputs of the
/// steps so far under `steps`. Each part is converted to a template value
/// once, so a step's expressions do not convert the alert again.
pub(crate) struct RunContext {
    alert: minijinja::Value,
    case: minijinja::Value,
    inputs: minijinja::Value,
    steps: BTreeMap<String, minijinja::Value>,
}

impl RunContext {
    pub fn new(alert: &Alert, case_id: &str) -> Self {
        Self {
            alert: minijinja::Value::from_serialize(alert),
            case: minijinja::Value::from_serialize(json!({ "id": case_id })),
            inputs: minijinja::Value::from_serialize(json!({})),
            steps: BTreeMap::new(),
        }
    }

    /// Sets the run's inputs, read as `inputs`.
    pub fn set_inputs(&mut self, inputs: &Value) {
        self.inputs = minijinja::Value::from_serialize(inputs);
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
            inputs => self.inputs.clone(),
            steps => minijinja::Value::from(self.steps.clone()),
        }
    }

    /// Builds the context with `item`, for one item of a `for_each` step.
    pub fn with_item(&self, item: &Value) -> minijinja::Value {
        minijinja::context! {
            alert => self.alert.clone(),
            case => self.case.clone(),
            inputs => self.inputs.clone(),
            steps => minijinja::Value::from(self.steps.clone()),
            item => minijinja::Value::from_serialize(item),
        }
    }

    /// Builds the context with `error`, for a handler.
    pub fn with_error(&self, error: &Value) -> minijinja::Value {
        minijinja::context! {
            alert => self.alert.clone(),
            case => self.case.clone(),
            inputs => self.inputs.clone(),
            steps => minijinja::Value::from(self.steps.clone()),
            error => minijinja::Value::from_serialize(error),
        }
    }
}

/// Decision of [`prepare`] for an attempt.
pub(crate) enum Prepared {
    /// The step's condition is false, or evaluating it or the input failed:
    /// the record is final and no plugin is called.
    Done(StepRecord),
    /// The input is ready; the record is in the `started` state.
    Call(StepRecord),
}

/// Evaluates the step's condition and input for attempt `attempt`.
pub(crate) fn prepare(
    templates: &Templates,
    step: &Step,
    context: &minijinja::Value,
    attempt: u32,
    idempotency_key: &str,
) -> Prepared {
    let started = Instant::now();
    let mut record = StepRecord {
        id: step.id.clone(),
        uses: step.uses.clone(),
        status: StepStatus::Skipped,
        item: None,
        handles: None,
        child_run: None,
        attempt,
        idempotency_key: Some(idempotency_key.to_string()),
        retry_at: None,
        started_at: Utc::now(),
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
            Ok(false) => return Prepared::Done(record),
            Err(message) => return Prepared::Done(failed(record, "expression", message, started)),
        }
    }
    match templates.render(&step.with, context) {
        Ok(input) => {
            record.input = input;
            record.status = StepStatus::Started;
            Prepared::Call(record)
        }
        Err(message) => Prepared::Done(failed(record, "expression", message, started)),
    }
}

/// Calls the plugin for a `started` record and returns it finished.
pub(crate) async fn call<C: PluginCaller>(
    caller: &C,
    step: &Step,
    run_id: &str,
    version: Option<&str>,
    mut record: StepRecord,
) -> StepRecord {
    let (plugin, action) = step.target();
    let info = CallInfo {
        run_id,
        step_id: &step.id,
        idempotency_key: record.idempotency_key.as_deref(),
        version,
    };
    let call = caller.call(plugin, action, &record.input, info);
    let outcome = match step.timeout {
        None => call.await,
        Some(limit) => match tokio::time::timeout(limit, call).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => StepOutcome {
                result: Err(StepError {
                    kind: "timeout".into(),
                    message: format!(
                        "the step's timeout of {} passed",
                        palisade_model::format_duration(limit)
                    ),
                }),
                plugin_version: None,
                duration_us: limit.as_micros() as u64,
                logs: Value::Array(Vec::new()),
                http_calls: Value::Array(Vec::new()),
            },
        },
    };
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

/// Sets when a failed attempt is tried again, if the step's retry policy
/// covers the failure and attempts remain.
pub(crate) fn schedule_retry(step: &Step, record: &mut StepRecord, now: DateTime<Utc>) {
    let (Some(retry), Some(error)) = (&step.retry, &record.error) else {
        return;
    };
    if record.attempt >= retry.attempts || !retry.retries(&error.kind) {
        return;
    }
    let mut delay = retry.delay(record.attempt);
    if retry.jitter {
        // From half the delay to all of it.
        let half = delay / 2;
        let spread = half.as_millis() as u64;
        let random = if spread == 0 {
            0
        } else {
            random_u64() % (spread + 1)
        };
        delay = half + std::time::Duration::from_millis(random);
    }
    let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    record.retry_at = Some(now + delay);
}

/// A random number from the standard library's hasher keys, which are
/// seeded from the operating system; enough to spread retries apart.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// Builds a failed record of `step` for a failure found before any call.
pub(crate) fn failed_record(step: &Step, kind: &str, message: String) -> StepRecord {
    let record = StepRecord {
        id: step.id.clone(),
        uses: step.uses.clone(),
        status: StepStatus::Failed,
        item: None,
        handles: None,
        child_run: None,
        attempt: 1,
        idempotency_key: None,
        retry_at: None,
        started_at: Utc::now(),
        duration_us: 0,
        plugin_version: None,
        input: Value::Null,
        output: None,
        error: None,
        logs: Value::Array(Vec::new()),
        http_calls: Value::Array(Vec::new()),
    };
    failed(record, kind, message, Instant::now())
}

/// Ends a `started` record that could not call its plugin.
pub(crate) fn fail_started(record: StepRecord, kind: &str, message: String) -> StepRecord {
    failed(record, kind, message, Instant::now())
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

/// Evaluates the playbook's `outputs` section against the finished run.
/// Returns the outputs as an object (an output that fails to evaluate is
/// null) and the errors met.
pub(crate) fn outputs(
    templates: &Templates,
    playbook: &Playbook,
    context: &RunContext,
) -> (Value, Vec<String>) {
    let context = context.value();
    let mut values = Map::new();
    let mut errors = Vec::new();
    for (name, template) in &playbook.outputs {
        match templates.render(&Value::String(template.clone()), &context) {
            Ok(value) => {
                values.insert(name.clone(), value);
            }
            Err(error) => {
                values.insert(name.clone(), Value::Null);
                errors.push(format!("outputs.{name}: {error}"));
            }
        }
    }
    (Value::Object(values), errors)
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
