//! Records of playbook runs and their steps.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// Waiting for a stored deadline, such as the next attempt of a step
    /// that failed; `wake_at` says when.
    Waiting,
    /// Stopped for a person to decide: a step with side effects was
    /// started but not confirmed before the host stopped, and its
    /// `on_interrupt` policy is `park`.
    Parked,
    Succeeded,
    Failed,
}

impl RunStatus {
    /// Returns whether the run has ended and will not change again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Parked => "parked",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Journaled before the plugin is called. A step still in this state
    /// after a restart was interrupted mid-call.
    Started,
    Succeeded,
    Failed,
    /// The step's condition was false.
    Skipped,
}

/// Why a step failed: a stable kind (such as `timeout` or `rate_limited`)
/// and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    pub kind: String,
    pub message: String,
}

/// One attempt of a step of a run, as journaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    /// `plugin.action` the step called.
    pub uses: String,
    pub status: StepStatus,
    /// Position of the item in the step's `for_each` list, for a step that
    /// runs once per item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    /// For a run of an error handler, the step whose failure it handles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handles: Option<String>,
    /// Run of the sub-playbook this step called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_run: Option<String>,
    /// Attempt number, from 1. A retried step has one record per attempt.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Key passed to the plugin, the same on every attempt of the step.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// When a failed attempt is retried, the time of the next attempt.
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub duration_us: u64,
    /// Plugin version that ran the step.
    pub plugin_version: Option<String>,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    /// Plugin log lines and HTTP requests made during the step.
    pub logs: Value,
    pub http_calls: Value,
}

/// A playbook run on one alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub playbook: String,
    pub alert_id: String,
    pub case_id: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// Error that ended the run, when it failed, or why it is parked.
    pub error: Option<StepError>,
    /// When a waiting run continues.
    #[serde(default)]
    pub wake_at: Option<DateTime<Utc>>,
    /// The run and step that called this run as a sub-playbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentStep>,
    /// Inputs of the run, by name: those a calling step gave, with the
    /// playbook's defaults for the others.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub inputs: Value,
    /// Outputs of the finished run, as its playbook's `outputs` section
    /// evaluates them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    /// Version of each plugin the run calls, by plugin name, chosen when
    /// the run starts. Every call of the run goes to that version, so a
    /// plugin swapped while the run is in flight does not change under it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugin_versions: BTreeMap<String, String>,
}

/// The step of a parent run that called a sub-playbook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentStep {
    pub run_id: String,
    pub step_id: String,
    /// Item position, when the calling step runs once per item.
    pub item: Option<u32>,
    /// Sub-playbook calls from the top-level run down to this one, from 1.
    pub depth: u32,
}

fn first_attempt() -> u32 {
    1
}
