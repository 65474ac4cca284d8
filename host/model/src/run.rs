//! Records of playbook runs and their steps.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
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

/// One finished step of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    /// `plugin.action` the step called.
    pub uses: String,
    pub status: StepStatus,
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
    /// Error that ended the run, when it failed.
    pub error: Option<StepError>,
}
