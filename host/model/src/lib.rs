//! Alert, observable, case and run types shared by every Palisade layer,
//! and the parsers that turn a security product's output into alerts.
//!
//! This crate has no I/O: it parses text it is given and builds values.

mod alert;
mod case;
mod correlation;
mod duration;
mod ingest;
mod observable;
mod run;
mod sla;

pub use alert::{Alert, NormaliseError, Rule, Severity};
pub use case::{Case, CaseNote, CaseObservable, CaseStatus, CaseTask, TimelineEvent};
pub use duration::{DURATION_FORMS, format_duration, parse_duration};
pub use ingest::{InputError, MAX_ALERT_DEPTH, parse_alert_bytes, parse_alerts};
pub use observable::{Observable, ObservableKind, is_internal_ip};
pub use run::{ParentStep, RunRecord, RunStatus, StepError, StepRecord, StepStatus};
pub use sla::{CaseSla, SlaPolicy, SlaTarget};
