//! Playbook files: YAML with a trigger, steps and what to write to the case.
//!
//! ```yaml
//! name: wazuh-triage
//! trigger:
//!   source: wazuh
//!   when: "alert.severity != 'informational'"
//! steps:
//!   - id: extract
//!     uses: ioc-extractor.extract
//!     with:
//!       document: "{{ alert.raw }}"
//! case:
//!   observables: "{{ steps.extract.observables }}"
//! ```
//!
//! A string that is one `{{ expression }}` and nothing else takes the
//! expression's value with its JSON type. Any other string containing `{{`
//! is rendered as a template into a string.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::template::Templates;

/// Condition on the alerts a playbook runs on.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Alert source the playbook takes, such as `wazuh`. None takes all.
    pub source: Option<String>,
    /// Expression over `alert` that must be true.
    pub when: Option<String>,
}

/// Behaviour of a run when a step fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail the run; later steps do not run.
    #[default]
    Fail,
    /// Record the failure and go on; the step's output is undefined.
    Continue,
}

/// Policy for a step that was started but not confirmed finished before
/// the host stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInterrupt {
    /// Call the plugin again with the same idempotency key. The default for
    /// actions without side effects.
    Retry,
    /// Park the run until a person decides to retry, skip or fail the step.
    /// The default for actions with side effects, since the first call may
    /// or may not have taken effect.
    Park,
}

/// Error kinds a step can fail with: the plugin's own (`bad_input` to
/// `internal`), the host's limits and faults, and the engine's.
pub const ERROR_KINDS: &[&str] = &[
    "bad_input",
    "unknown_action",
    "upstream",
    "rate_limited",
    "denied",
    "internal",
    "unknown_plugin",
    "timeout",
    "cpu_time_limit",
    "memory_limit",
    "stack_overflow",
    "output_too_large",
    "invalid_output",
    "trap",
    "instantiate",
    "expression",
    "unknown_playbook",
    "recursion",
    "failed_by_playbook",
];

/// Error kinds retried when a step's `retry.on` is not given: the failures
/// that a later attempt may not meet.
pub const DEFAULT_RETRY_KINDS: &[&str] = &["rate_limited", "timeout", "upstream"];

/// Retries of a failed step. The wait before attempt `n + 1` is `backoff`
/// times `factor` to the power `n - 1`, at most `max_backoff`, and with
/// `jitter` a random part of it (from half to all of it) so that runs
/// failing together do not retry together. The wait is a stored deadline:
/// a restart does not lose or shorten it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included: 2 to 20.
    pub attempts: u32,
    #[serde(default = "default_backoff", deserialize_with = "duration")]
    pub backoff: std::time::Duration,
    #[serde(default = "default_factor")]
    pub factor: u32,
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: std::time::Duration,
    #[serde(default = "default_jitter")]
    pub jitter: bool,
    /// Error kinds to retry, such as `rate_limited`; see
    /// [`DEFAULT_RETRY_KINDS`].
    pub on: Option<Vec<String>>,
}

fn default_backoff() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

fn default_factor() -> u32 {
    2
}

fn default_max_backoff() -> std::time::Duration {
    std::time::Duration::from_secs(600)
}

fn default_jitter() -> bool {
    true
}

fn duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    palisade_model::parse_duration(&text).map_err(serde::de::Error::custom)
}

impl Retry {
    /// Returns whether a failure of kind `kind` is retried.
    pub fn retries(&self, kind: &str) -> bool {
        match &self.on {
            Some(kinds) => kinds.iter().any(|k| k == kind),
            None => DEFAULT_RETRY_KINDS.contains(&kind),
        }
    }

    /// Wait after failed attempt `attempt` (from 1), before jitter.
    pub fn delay(&self, attempt: u32) -> std::time::Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let factor = u64::from(self.factor).saturating_pow(exponent);
        let millis = (self.backoff.as_millis() as u64).saturating_mul(factor);
        std::time::Duration::from_millis(millis).min(self.max_backoff)
    }
}

/// One step: a plugin action with templated input.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: String,
    /// `plugin.action`, or `playbook:NAME` for a step that calls a
    /// sub-playbook (written `playbook: NAME` in the file).
    #[serde(default)]
    pub uses: String,
    /// Name of a sub-playbook to run with `with` as its inputs; the step's
    /// output is the sub-playbook's outputs.
    pub playbook: Option<String>,
    /// A question for a person: the run waits for the answer or the
    /// timeout. The step's output is the decision.
    pub approval: Option<Approval>,
    /// Fails the step with this message (a template), so that its
    /// `on_error` decides: with the default, the run fails. For a branch
    /// that must end the run, such as a rejected approval.
    pub fail: Option<String>,
    /// Expression that must be true for the step to run.
    #[serde(rename = "if")]
    pub condition: Option<String>,
    #[serde(default)]
    pub with: Value,
    #[serde(default)]
    pub on_error: OnError,
    pub retry: Option<Retry>,
    /// Unset means `retry` for actions without side effects and `park` for
    /// actions with them.
    pub on_interrupt: Option<OnInterrupt>,
    /// Steps that must end before this one starts, each above it in the
    /// file. Unset means the step above, so a plain list runs in order; an
    /// empty list starts the step with the run.
    pub needs: Option<Vec<String>>,
    /// How many of `needs` must succeed (a failure under `on_error:
    /// continue` counts): all, any, or a number.
    #[serde(default)]
    pub join: Join,
    /// Expression giving a list: the step runs once per item, with the item
    /// as `item`, and its output is the list of the items' outputs.
    pub for_each: Option<String>,
    /// Items of `for_each` running at once, 1 to 64.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Maximum duration of an attempt; it then fails with kind `timeout`. The
    /// plugin's own wall-clock limit applies as well.
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<std::time::Duration>,
    /// Id of a step under `handlers` to run when this step fails for good,
    /// with the failure as `error`; `on_error` applies after it.
    pub handler: Option<String>,
}

fn default_concurrency() -> u32 {
    4
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    palisade_model::parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// What an unanswered approval decides when its time runs out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutDecision {
    #[default]
    Reject,
    Approve,
}

/// A question a person answers before the run goes on. The output of the
/// step is `{"approved": bool, "response": ..., "by": NAME,
/// "timed_out": bool}`, so later steps branch with `if`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The question, a template over the run's context.
    pub question: String,
    /// Names of the people who may answer; empty lets anyone answer.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// JSON Schema of the response a person gives with the decision.
    pub form: Option<Value>,
    /// How long the question stays open.
    #[serde(deserialize_with = "duration")]
    pub timeout: std::time::Duration,
    /// The decision when nobody answers in time.
    #[serde(default)]
    pub on_timeout: TimeoutDecision,
}

/// How many needed steps must succeed before a step starts. When too few
/// can succeed, the step is skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Join {
    #[default]
    All,
    Any,
    AtLeast(u32),
}

impl<'de> Deserialize<'de> for Join {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Count(u32),
            Name(String),
        }
        match Form::deserialize(deserializer)? {
            Form::Count(0) => Err(serde::de::Error::custom(
                "`join: 0` is invalid; give all, any or a number from 1",
            )),
            Form::Count(count) => Ok(Self::AtLeast(count)),
            Form::Name(name) if name == "all" => Ok(Self::All),
            Form::Name(name) if name == "any" => Ok(Self::Any),
            Form::Name(name) => Err(serde::de::Error::custom(format!(
                "`join: {name}` is invalid; give all, any or a number from 1"
            ))),
        }
    }
}

impl Join {
    /// Successes needed out of `needed` steps.
    pub fn required(self, needed: usize) -> usize {
        match self {
            Self::All => needed,
            Self::Any => needed.min(1),
            Self::AtLeast(count) => count as usize,
        }
    }
}

impl Step {
    /// Splits `uses` into plugin and action.
    pub fn target(&self) -> (&str, &str) {
        self.uses.split_once('.').unwrap_or((&self.uses, ""))
    }

    /// Name of the sub-playbook the step calls, if it calls one.
    pub fn sub_playbook(&self) -> Option<&str> {
        self.playbook.as_deref()
    }

    /// Ids of the steps this one waits for: its `needs`, or the step before
    /// it in `steps` when `needs` is unset.
    pub fn dependencies<'a>(&'a self, before: Option<&'a Step>) -> Vec<&'a str> {
        match &self.needs {
            Some(needs) => needs.iter().map(String::as_str).collect(),
            None => before.map(|step| step.id.as_str()).into_iter().collect(),
        }
    }
}

/// Fields a finished run writes to its case. Every field is an expression or
/// template over the run's context; a null or undefined result leaves the
/// case field unchanged.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseUpdate {
    pub observables: Option<String>,
    pub intel_hits: Option<String>,
    pub verdicts: Option<String>,
    pub severity: Option<String>,
    pub priority: Option<String>,
    pub score: Option<String>,
}

/// One input of a playbook.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default)]
    pub description: String,
    /// A calling step must give the input.
    #[serde(default)]
    pub required: bool,
    /// Value when a calling step does not give the input.
    pub default: Option<Value>,
}

/// A parsed and checked playbook.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Alerts the playbook runs on. A playbook without one runs only when
    /// another calls it as a sub-playbook.
    pub trigger: Option<Trigger>,
    /// Inputs a calling step may give, by name.
    #[serde(default)]
    pub inputs: BTreeMap<String, Input>,
    /// Values the run returns to a calling step, by name: expressions over
    /// the run's context, evaluated when it ends.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    /// Steps run only as the `handler` of a failed step.
    #[serde(default)]
    pub handlers: Vec<Step>,
    #[serde(default)]
    pub case: CaseUpdate,
    /// Versions of plugins the playbook accepts, by plugin name, as semver
    /// requirements: `"=1.4.2"` pins one version, `"^1.4"` accepts any 1.x
    /// from 1.4. A run gets the active version when it meets the
    /// requirement, else the highest installed version that does.
    #[serde(default)]
    pub plugins: BTreeMap<String, String>,
    #[serde(skip)]
    pub path: PathBuf,
}

/// A playbook file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("cannot read playbook {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Playbook {
    /// Reads and checks the playbook at `path`.
    pub fn load(path: &Path) -> Result<Self, PlaybookError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlaybookError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks playbook `text`; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PlaybookError> {
        let mut playbook = Self::parse_unchecked(text, path)?;
        playbook.check().map_err(|message| PlaybookError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        playbook.name_step_kinds();
        Ok(playbook)
    }

    /// Sets `uses` of the steps that call no plugin to what the journal
    /// records for them: `playbook:NAME`, `approval` or `fail`.
    pub fn name_step_kinds(&mut self) {
        for step in self.steps.iter_mut().chain(&mut self.handlers) {
            if let Some(name) = &step.playbook {
                step.uses = format!("playbook:{name}");
            }
            if step.approval.is_some() {
                step.uses = "approval".to_string();
            }
            if step.fail.is_some() {
                step.uses = "fail".to_string();
            }
        }
    }

    /// Parses playbook `text` without the checks of [`Playbook::problems`],
    /// so a checker can list every problem.
    pub fn parse_unchecked(text: &str, path: &Path) -> Result<Self, PlaybookError> {
        let shown = path.display().to_string();
        let mut playbook: Playbook =
            serde_yaml_ng::from_str(text).map_err(|error| match error.location() {
                Some(location) => PlaybookError::Syntax {
                    path: shown.clone(),
                    line: location.line(),
                    column: location.column(),
                    message: error.to_string(),
                },
                None => PlaybookError::Invalid {
                    path: shown.clone(),
                    message: error.to_string(),
                },
            })?;
        playbook.path = path.to_path_buf();
        Ok(playbook)
    }

    /// Loads every `.yaml` and `.yml` file in `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>, PlaybookError> {
        let read_error = |source| PlaybookError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_error)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension().is_some_and(|ext| {
                    ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml")
                })
            })
            .collect();
        paths.sort();
        let playbooks: Vec<Self> = paths
            .iter()
            .map(|path| Self::load(path))
            .collect::<Result<_, _>>()?;
        for (index, playbook) in playbooks.iter().enumerate() {
            if let Some(first) = playbooks[..index].iter().find(|p| p.name == playbook.name) {
                return Err(PlaybookError::Invalid {
                    path: playbook.path.display().to_string(),
                    message: format!(
                        "playbook name {:?} is already used by {}; give each playbook its own name",
                        playbook.name,
                        first.path.display()
                    ),
                });
            }
        }
        Ok(playbooks)
    }

    fn check(&self) -> Result<(), String> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Lists every problem the playbook has on its own, each a message that names
    /// the step or field; empty when it is valid. [`Playbook::parse`]
    /// reports the first.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("`name` is empty; give the playbook a name".into());
        }
        if self.steps.is_empty() {
            problems.push("`steps` is empty; a playbook needs at least one step".into());
        }
        let templates = Templates::new();
        if let Some(when) = self
            .trigger
            .as_ref()
            .and_then(|trigger| trigger.when.as_ref())
            && let Err(error) = templates.check_expression(when)
        {
            problems.push(format!("trigger.when {when:?}: {error}"));
        }
        let used = self.targets();
        for (plugin, requirement) in &self.plugins {
            if let Err(error) = semver::VersionReq::parse(requirement) {
                problems.push(format!(
                    "plugins.{plugin}: {requirement:?} is not a version requirement ({error}); write one such as \"=1.2.0\" or \"^1.2\""
                ));
            }
            if !used.contains_key(plugin.as_str()) {
                problems.push(format!(
                    "plugins.{plugin}: no step uses plugin {plugin:?}; remove the entry or fix its name"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        let mut ancestors: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut before = None;
        for step in &self.steps {
            // A step with invalid needs still gets its other checks, with
            // the ancestors that could be worked out.
            let reachable = match self.check_needs(step, before, &seen, &ancestors) {
                Ok(reachable) => reachable,
                Err(problem) => {
                    problems.push(problem);
                    step.dependencies(before)
                        .into_iter()
                        .filter(|need| seen.contains(need))
                        .flat_map(|need| {
                            let mut all: BTreeSet<&str> =
                                ancestors.get(need).cloned().unwrap_or_default();
                            all.insert(need);
                            all
                        })
                        .collect()
                }
            };
            problems.extend(self.check_step(step, &seen, &reachable, &templates).err());
            problems.extend(self.check_handler_reference(step).err());
            seen.insert(step.id.as_str());
            ancestors.insert(step.id.as_str(), reachable);
            before = Some(step);
        }
        let main_steps = seen.clone();
        for handler in &self.handlers {
            let id = &handler.id;
            if handler.needs.is_some()
                || handler.for_each.is_some()
                || handler.handler.is_some()
                || handler.join != Join::All
            {
                problems.push(format!(
                    "handler {id:?} has needs, join, for_each or handler; a handler is one step run after a failure"
                ));
            }
            if let Err(error) = self.check_step(handler, &seen, &main_steps, &templates) {
                problems.push(format!("handlers: {error}"));
            }
            seen.insert(id.as_str());
        }
        let case_fields = [
            ("observables", &self.case.observables),
            ("intel_hits", &self.case.intel_hits),
            ("verdicts", &self.case.verdicts),
            ("severity", &self.case.severity),
            ("priority", &self.case.priority),
            ("score", &self.case.score),
        ];
        for (field, value) in case_fields {
            if let Some(value) = value {
                if let Err(error) = templates.check_value(&Value::String(value.clone())) {
                    problems.push(format!("case.{field}: {error}"));
                }
                if let Err(error) = check_step_references(value, &seen) {
                    problems.push(format!("case.{field}: {error}"));
                }
            }
        }
        for (name, value) in &self.outputs {
            if let Err(error) = templates.check_value(&Value::String(value.clone())) {
                problems.push(format!("outputs.{name}: {error}"));
            }
            if let Err(error) = check_step_references(value, &seen) {
                problems.push(format!("outputs.{name}: {error}"));
            }
        }
        problems
    }

    /// Checks `step.needs` and returns the ids of every step that ends
    /// before `step` starts: its needs and, in turn, theirs.
    fn check_needs<'a>(
        &'a self,
        step: &'a Step,
        before: Option<&'a Step>,
        seen: &BTreeSet<&'a str>,
        ancestors: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    ) -> Result<BTreeSet<&'a str>, String> {
        let id = &step.id;
        let dependencies = step.dependencies(before);
        let mut reachable = BTreeSet::new();
        for (position, need) in dependencies.iter().enumerate() {
            if !seen.contains(need) {
                return Err(format!(
                    "step {id:?} needs {need:?}, which is not a step above it; list steps in an order where each comes after the steps it needs"
                ));
            }
            if dependencies[..position].contains(need) {
                return Err(format!("step {id:?} lists {need:?} twice in `needs`"));
            }
            reachable.insert(*need);
            if let Some(theirs) = ancestors.get(need) {
                reachable.extend(theirs.iter().copied());
            }
        }
        if let Join::AtLeast(count) = step.join
            && count as usize > dependencies.len()
        {
            return Err(format!(
                "step {id:?} has `join: {count}` but needs only {} steps",
                dependencies.len()
            ));
        }
        if !(1..=64).contains(&step.concurrency) {
            return Err(format!(
                "step {id:?}: `concurrency: {}` is out of range; use 1 to 64",
                step.concurrency
            ));
        }
        if let Some(expression) = &step.for_each {
            Templates::new()
                .check_expression(expression)
                .map_err(|error| format!("step {id:?} `for_each`: {error}"))?;
            check_step_references(expression, &reachable)
                .map_err(|error| format!("step {id:?} `for_each`: {error}"))?;
        }
        Ok(reachable)
    }

    fn check_handler_reference(&self, step: &Step) -> Result<(), String> {
        let Some(handler) = &step.handler else {
            return Ok(());
        };
        if self
            .handlers
            .iter()
            .any(|candidate| &candidate.id == handler)
        {
            return Ok(());
        }
        let known: Vec<&str> = self.handlers.iter().map(|h| h.id.as_str()).collect();
        Err(format!(
            "step {:?} names handler {handler:?}, which is not under `handlers`; the handlers are: {}",
            step.id,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    }

    fn check_step(
        &self,
        step: &Step,
        earlier: &BTreeSet<&str>,
        reachable: &BTreeSet<&str>,
        templates: &Templates,
    ) -> Result<(), String> {
        let id = &step.id;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "step id {id:?} is invalid; use letters, digits and underscores"
            ));
        }
        if earlier.contains(id.as_str()) {
            return Err(format!(
                "step id {id:?} is used twice; step ids must be unique"
            ));
        }
        if step.timeout.is_some_and(|timeout| timeout.is_zero()) {
            return Err(format!(
                "step {id:?}: `timeout` is zero; give how long an attempt may take, such as 30s"
            ));
        }
        if step.retry.is_some() && (step.approval.is_some() || step.fail.is_some()) {
            return Err(format!(
                "step {id:?} has `retry`, but approval and fail steps make no attempts to retry; remove `retry`"
            ));
        }
        if let Some(retry) = &step.retry {
            if !(2..=20).contains(&retry.attempts) {
                return Err(format!(
                    "step {id:?}: `retry.attempts: {}` is out of range; give 2 to 20 attempts in all",
                    retry.attempts
                ));
            }
            if !(1..=10).contains(&retry.factor) {
                return Err(format!(
                    "step {id:?}: `retry.factor: {}` is out of range; use 1 to 10",
                    retry.factor
                ));
            }
            if retry.max_backoff < retry.backoff {
                return Err(format!(
                    "step {id:?}: `retry.max_backoff` is shorter than `retry.backoff`; make it at least as long"
                ));
            }
            match &retry.on {
                Some(kinds) if kinds.is_empty() => {
                    return Err(format!(
                        "step {id:?}: `retry.on` is empty, so nothing would be retried; list error kinds or remove `on`"
                    ));
                }
                Some(kinds) => {
                    if let Some(unknown) = kinds
                        .iter()
                        .find(|kind| !ERROR_KINDS.contains(&kind.as_str()))
                    {
                        return Err(format!(
                            "step {id:?}: `retry.on` names {unknown:?}, which is not an error kind; use {}",
                            ERROR_KINDS.join(", ")
                        ));
                    }
                }
                None => {}
            }
        }
        if let Some(message) = &step.fail {
            if !step.uses.is_empty() || step.playbook.is_some() || step.approval.is_some() {
                return Err(format!(
                    "step {id:?} has `fail` and also `uses`, `playbook` or `approval`; give one"
                ));
            }
            templates
                .check_value(&Value::String(message.clone()))
                .map_err(|error| format!("step {id:?} `fail`: {error}"))?;
        }
        if let Some(approval) = &step.approval {
            if !step.uses.is_empty() || step.playbook.is_some() {
                return Err(format!(
                    "step {id:?} has `approval` and also `uses` or `playbook`; give one"
                ));
            }
            if approval.timeout.is_zero() {
                return Err(format!(
                    "step {id:?}: `approval.timeout` is zero; give how long the question stays open, such as 4h"
                ));
            }
            if let Some(form) = &approval.form {
                crate::schema::Schema::compile(form)
                    .map_err(|error| format!("step {id:?} `approval.form`: {error}"))?;
            }
            templates
                .check_value(&Value::String(approval.question.clone()))
                .map_err(|error| format!("step {id:?} `approval.question`: {error}"))?;
            check_step_references(&approval.question, reachable)
                .map_err(|error| format!("step {id:?} `approval.question`: {error}"))?;
        }
        match &step.playbook {
            _ if step.approval.is_some() || step.fail.is_some() => {}
            Some(name) if !step.uses.is_empty() => {
                return Err(format!(
                    "step {id:?} has both `uses: {}` and `playbook: {name}`; give one",
                    step.uses
                ));
            }
            Some(name) if name.trim().is_empty() => {
                return Err(format!("step {id:?}: `playbook` is empty; name a playbook"));
            }
            Some(_) => {}
            None => {
                let (plugin, action) = step.target();
                if plugin.is_empty() || action.is_empty() {
                    return Err(format!(
                        "step {id:?}: `uses: {}` is invalid; write plugin.action, such as ioc-extractor.extract, or call a playbook with `playbook: NAME`",
                        step.uses
                    ));
                }
            }
        }
        if let Some(condition) = &step.condition {
            templates
                .check_expression(condition)
                .map_err(|error| format!("step {id:?} `if`: {error}"))?;
            check_step_references(condition, reachable)
                .map_err(|error| format!("step {id:?} `if`: {error}"))?;
        }
        templates
            .check_value(&step.with)
            .map_err(|error| format!("step {id:?} `with`: {error}"))?;
        for text in strings_in(&step.with) {
            check_step_references(text, reachable)
                .map_err(|error| format!("step {id:?} `with`: {error}"))?;
        }
        Ok(())
    }

    /// Names of the sub-playbooks the playbook calls.
    pub fn sub_playbooks(&self) -> BTreeSet<&str> {
        self.steps
            .iter()
            .chain(&self.handlers)
            .filter_map(Step::sub_playbook)
            .collect()
    }

    /// Inputs of a run: `given` (an object or null) checked against the
    /// declared inputs, with defaults for those not given.
    pub fn resolve_inputs(&self, given: &Value) -> Result<Value, String> {
        let empty = serde_json::Map::new();
        let given = match given {
            Value::Null => &empty,
            Value::Object(map) => map,
            other => {
                return Err(format!(
                    "the inputs of playbook {:?} must be an object of names and values, not {other}",
                    self.name
                ));
            }
        };
        let mut inputs = serde_json::Map::new();
        for name in given.keys() {
            if !self.inputs.contains_key(name) {
                let known: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
                return Err(format!(
                    "playbook {:?} has no input {name:?}; its inputs are: {}",
                    self.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        for (name, input) in &self.inputs {
            match (given.get(name), &input.default) {
                (Some(value), _) => {
                    inputs.insert(name.clone(), value.clone());
                }
                (None, _) if input.required => {
                    return Err(format!(
                        "playbook {:?} needs input {name:?}; give it in the calling step's `with`",
                        self.name
                    ));
                }
                (None, Some(default)) => {
                    inputs.insert(name.clone(), default.clone());
                }
                (None, None) => {
                    inputs.insert(name.clone(), Value::Null);
                }
            }
        }
        Ok(Value::Object(inputs))
    }

    /// The version requirement of plugin `plugin`, when the playbook sets
    /// a valid one.
    pub fn version_requirement(&self, plugin: &str) -> Option<semver::VersionReq> {
        semver::VersionReq::parse(self.plugins.get(plugin)?).ok()
    }

    /// `plugin.action` pairs the playbook uses.
    pub fn targets(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut targets: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for step in self.steps.iter().chain(&self.handlers) {
            if step.playbook.is_some() || step.approval.is_some() || step.fail.is_some() {
                continue;
            }
            let (plugin, action) = step.target();
            targets.entry(plugin).or_default().insert(action);
        }
        targets
    }
}

fn strings_in(value: &Value) -> Vec<&str> {
    match value {
        Value::String(text) => vec![text],
        Value::Array(items) => items.iter().flat_map(strings_in).collect(),
        Value::Object(map) => map.values().flat_map(strings_in).collect(),
        _ => Vec::new(),
    }
}

/// Rejects `steps.<id>` references to a step that is not in `allowed`: for
/// a step, those that end before it starts.
fn check_step_references(text: &str, allowed: &BTreeSet<&str>) -> Result<(), String> {
    let mut rest = text;
    while let Some(position) = rest.find("steps.") {
        let before = rest[..position].chars().last();
        rest = &rest[position + "steps.".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let id: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !allowed.contains(id.as_str()) {
            return Err(format!(
                "`steps.{id}` does not name a step that ends before this one; a step can use the outputs of the steps it needs, directly or through others"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Playbook, String> {
        Playbook::parse(text, Path::new("test.yaml")).map_err(|error| error.to_string())
    }

    const VALID: &str = "
name: t
trigger: { source: wazuh, when: \"alert.severity != 'informational'\" }
steps:
  - id: extract
    uses: ioc-extractor.extract
    with: { document: '{{ alert.raw }}' }
  - id: intel
    uses: ti-matcher.match
    with: { observables: '{{ steps.extract.observables }}' }
case:
  observables: '{{ steps.extract.observables }}'
";

    #[test]
    fn valid_playbook_loads() {
        let playbook = parse(VALID).unwrap();
        assert_eq!(playbook.steps.len(), 2);
        assert_eq!(playbook.steps[1].target(), ("ti-matcher", "match"));
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            (
                VALID.replace("ti-matcher.match", "ti-matcher"),
                "write plugin.action",
            ),
            (VALID.replace("id: intel", "id: extract"), "used twice"),
            (
                VALID.replace("steps.extract.observables }}' }", "steps.later.x }}' }"),
                "`steps.later`",
            ),
            (
                VALID.replace("alert.severity !=", "alert.severity !=="),
                "trigger.when",
            ),
            (
                VALID.replace(
                    "uses: ti-matcher.match",
                    "uses: ti-matcher.match\n    colour: red",
                ),
                "unknown field `colour`",
            ),
            ("name: t\nsteps: []\n".to_string(), "at least one step"),
            (
                VALID.replace(
                    "uses: ti-matcher.match",
                    "uses: ti-matcher.match\n    timeout: 0s",
                ),
                "`timeout` is zero",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err();
            assert!(
                error.contains(expected),
                "expected {expected:?} in {error:?}"
            );
        }
    }

    #[test]
    fn directory_rejects_duplicate_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), VALID).unwrap();
        std::fs::write(dir.path().join("b.YML"), VALID).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a playbook").unwrap();
        let error = Playbook::load_dir(dir.path()).unwrap_err().to_string();
        assert!(error.contains("already used"), "{error}");
        assert!(error.contains("b.YML"), "{error}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let error = parse("name: t\nsteps:\n  - id: [unclosed\n").unwrap_err();
        assert!(error.starts_with("test.yaml:"), "{error}");
        assert!(error.contains(":3:") || error.contains(":4:"), "{error}");
    }
}
