//! Case work for analysts: listing with filters, updates, comments, tasks
//! and statistics. The CLI and the HTTP API call this service and add only
//! parsing and formatting.
//!
//! Input is validated before anything is written. Every write goes through
//! [`Store::update_case`], so it applies atomically to the case as stored
//! at that moment, is flushed to disk, and is appended to the audit log as
//! an action of `operator:NAME`.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use palisade_model::{Case, CaseStatus, Severity, SlaPolicy, parse_duration};
use palisade_store::{AuditEvent, Store, StoreError};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

/// Maximum length of a comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 10_000;
/// Maximum length of a task title, an assignee or an actor name, in
/// characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Maximum length of a tag, in characters.
pub const MAX_TAG_CHARS: usize = 64;
/// Priorities an analyst may set; the triage scorer uses the same ones.
pub const PRIORITIES: [&str; 4] = ["P1", "P2", "P3", "P4"];

/// Failure of a case operation.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("case {0:?} not found; list the cases to find its id")]
    NotFound(String),
    /// Input that was rejected before anything was written. The message
    /// names the value and what is accepted.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(StoreError),
    /// The change reached the case, but its audit record was not written.
    #[error("case {case_id} was changed, but its audit record was not written")]
    Audit {
        case_id: String,
        #[source]
        source: StoreError,
    },
}

impl From<StoreError> for CaseError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { what: "case", id } => Self::NotFound(id),
            other => Self::Store(other),
        }
    }
}

/// Filters of a case listing as text, the way `GET /v1/cases` and
/// `palisade cases` receive them. [`CaseFilter::parse`] checks them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseQuery {
    /// A status name, or `open` (new and in progress) or `closed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Lowest severity to list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `true` for cases past an SLA deadline, `false` for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breached: Option<String>,
    /// Text the title contains, ignoring case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Checked filters of a case listing. A case must pass every filter set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaseFilter {
    pub statuses: Option<Vec<CaseStatus>>,
    pub min_severity: Option<Severity>,
    pub assignee: Option<String>,
    pub tag: Option<String>,
    pub breached: Option<bool>,
    /// Lowercase text the lowercase title must contain.
    pub text: Option<String>,
}

impl CaseFilter {
    pub fn parse(query: &CaseQuery) -> Result<Self, CaseError> {
        let statuses = match query.status.as_deref().map(str::trim) {
            None | Some("") => None,
            Some("open") => Some(vec![CaseStatus::New, CaseStatus::InProgress]),
            Some("closed") => Some(vec![CaseStatus::Resolved, CaseStatus::FalsePositive]),
            Some(text) => Some(vec![parse_status(text).map_err(|error| {
                CaseError::Invalid(format!("{error}, or open or closed"))
            })?]),
        };
        let min_severity = non_empty(&query.severity).map(parse_severity).transpose()?;
        let breached = match non_empty(&query.breached) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(CaseError::Invalid(format!(
                    "breached filter {other:?} is invalid; use true or false"
                )));
            }
        };
        Ok(Self {
            statuses,
            min_severity,
            assignee: non_empty(&query.assignee).map(str::to_string),
            tag: non_empty(&query.tag).map(normalise_tag).transpose()?,
            breached,
            text: non_empty(&query.text).map(str::to_lowercase),
        })
    }

    /// Returns whether `case`, with its SLA view filled in, passes.
    pub fn matches(&self, case: &Case) -> bool {
        let breached = case.sla.is_some_and(|sla| sla.is_breached());
        self.statuses
            .as_ref()
            .is_none_or(|statuses| statuses.contains(&case.status))
            && self.min_severity.is_none_or(|min| case.severity >= min)
            && self
                .assignee
                .as_ref()
                .is_none_or(|name| case.assignee.as_ref() == Some(name))
            && self.tag.as_ref().is_none_or(|tag| case.tags.contains(tag))
            && self.breached.is_none_or(|wanted| breached == wanted)
            && self
                .text
                .as_ref()
                .is_none_or(|text| case.title.to_lowercase().contains(text))
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|text| !text.is_empty())
}

/// Changes to a case, as `PATCH /v1/cases/{id}` and `palisade case
/// update` receive them. Fields left out stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseEdit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// A name assigns the case, and `null` (`Some(None)`) unassigns it.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub assignee: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

/// Reads a field that is present, so `null` becomes `Some(None)` and an
/// absent field stays `None` through `#[serde(default)]`.
fn present_or_null<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

impl CaseEdit {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A [`CaseEdit`] after validation.
#[derive(Default)]
struct CheckedEdit {
    status: Option<CaseStatus>,
    assignee: Option<Option<String>>,
    add_tags: Vec<String>,
    remove_tags: Vec<String>,
    priority: Option<String>,
    severity: Option<Severity>,
}

impl CheckedEdit {
    fn parse(edit: &CaseEdit) -> Result<Self, CaseError> {
        if edit.is_empty() {
            return Err(CaseError::Invalid(
                "the update changes nothing; set at least one of status, assignee, add_tags, remove_tags, priority or severity".into(),
            ));
        }
        let assignee = match &edit.assignee {
            None => None,
            Some(None) => Some(None),
            Some(Some(name)) => Some(Some(check_name("assignee", name)?)),
        };
        let tags = |tags: &[String]| -> Result<Vec<String>, CaseError> {
            tags.iter().map(|tag| normalise_tag(tag)).collect()
        };
        Ok(Self {
            status: edit.status.as_deref().map(parse_status).transpose()?,
            assignee,
            add_tags: tags(&edit.add_tags)?,
            remove_tags: tags(&edit.remove_tags)?,
            priority: edit.priority.as_deref().map(parse_priority).transpose()?,
            severity: edit.severity.as_deref().map(parse_severity).transpose()?,
        })
    }

    /// Applies the edit and returns the names of the fields that changed.
    fn apply(&self, case: &mut Case, actor: &str, now: DateTime<Utc>) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if let Some(status) = self.status
            && case.set_status(status, actor, now)
        {
            changed.push("status");
        }

        if let Some(assignee) = &self.assignee
            && case.assign(assignee.as_deref(), actor, now)
        {
            changed.push("assignee");
        }

        let mut tags_changed = false;
        for tag in &self.add_tags {
            tags_changed |= case.add_tag(tag, actor, now);
        }
        for tag in &self.remove_tags {
            tags_changed |= case.remove_tag(tag, actor, now);
        }
        if tags_changed {
            changed.push("tags");
        }

        if let Some(priority) = &self.priority
            && case.set_priority(priority, actor, now)
        {
            changed.push("priority");
        }

        if let Some(severity) = self.severity
            && case.set_severity(severity, actor, now)
        {
            changed.push("severity");
        }
        changed
    }
}

/// Parses the length of a statistics period that ends now, such as `7d`.
pub fn parse_period(text: &str) -> Result<TimeDelta, CaseError> {
    let invalid = |reason: String| {
        CaseError::Invalid(format!(
            "{reason}; give how far back to count, such as 24h, 7d or 30d"
        ))
    };
    let period = parse_duration(text).map_err(invalid)?;
    if period.is_zero() {
        return Err(invalid(format!("the period {text:?} is empty")));
    }
    TimeDelta::from_std(period).map_err(|_| invalid(format!("the period {text:?} is too long")))
}

fn parse_status(text: &str) -> Result<CaseStatus, CaseError> {
    CaseStatus::parse(&text.trim().to_lowercase()).ok_or_else(|| {
        let names: Vec<&str> = CaseStatus::ALL.iter().map(|s| s.as_str()).collect();
        CaseError::Invalid(format!(
            "unknown status {text:?}; use one of {}",
            names.join(", ")
        ))
    })
}

fn parse_severity(text: &str) -> Result<Severity, CaseError> {
    Severity::parse(&text.trim().to_lowercase()).ok_or_else(|| {
        CaseError::Invalid(format!(
            "unknown severity {text:?}; use one of informational, low, medium, high, critical"
        ))
    })
}

fn parse_priority(text: &str) -> Result<String, CaseError> {
    let upper = text.trim().to_uppercase();
    if PRIORITIES.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(CaseError::Invalid(format!(
            "unknown priority {text:?}; use one of {}",
            PRIORITIES.join(", ")
        )))
    }
}

/// Lowercases `tag` and checks it: 1 to [`MAX_TAG_CHARS`] letters, digits
/// or `-_.:/`.
fn normalise_tag(tag: &str) -> Result<String, CaseError> {
    let tag = tag.trim().to_lowercase();
    let allowed = |c: char| c.is_alphanumeric() || "-_.:/".contains(c);
    let length = tag.chars().count();
    if length == 0 || length > MAX_TAG_CHARS || !tag.chars().all(allowed) {
        return Err(CaseError::Invalid(format!(
            "tag {tag:?} is invalid; use 1 to {MAX_TAG_CHARS} letters, digits or - _ . : /"
        )));
    }
    Ok(tag)
}

/// Trims `value` and checks that it is one line of 1 to
/// [`MAX_NAME_CHARS`] characters.
pub(crate) fn check_name(what: &str, value: &str) -> Result<String, CaseError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(CaseError::Invalid(format!(
            "the {what} is empty; give a name"
        )));
    }
    let length = value.chars().count();
    if length > MAX_NAME_CHARS {
        return Err(CaseError::Invalid(format!(
            "the {what} has {length} characters; the limit is {MAX_NAME_CHARS}"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(CaseError::Invalid(format!(
            "the {what} {value:?} contains control characters; use one line of plain text"
        )));
    }
    Ok(value.to_string())
}

/// Counts and times of cases in a period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseCounts {
    /// Cases created in the period.
    pub opened: u64,
    /// Cases first acknowledged in the period.
    pub acknowledged: u64,
    /// Cases resolved in the period and not reopened since.
    pub resolved: u64,
    /// Median time from creation to acknowledgement of the acknowledged
    /// cases, in whole seconds.
    pub median_acknowledge_secs: Option<i64>,
    /// Median time from creation to resolution of the resolved cases, in
    /// whole seconds.
    pub median_resolve_secs: Option<i64>,
    /// Cases opened in the period that missed their acknowledge deadline.
    pub acknowledge_breaches: u64,
    /// Cases opened in the period that missed their resolve deadline.
    pub resolve_breaches: u64,
}

/// [`CaseCounts`] of the cases of one severity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeverityCounts {
    pub severity: Severity,
    #[serde(flatten)]
    pub counts: CaseCounts,
}

/// Statistics over the period from `since` to `until`, both included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseStats {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    #[serde(flatten)]
    pub total: CaseCounts,
    /// By the cases' current severity, most severe first.
    pub by_severity: Vec<SeverityCounts>,
}

/// Collects [`CaseCounts`] one case at a time.
#[derive(Default)]
struct CountsBuilder {
    counts: CaseCounts,
    acknowledge_secs: Vec<i64>,
    resolve_secs: Vec<i64>,
}

impl CountsBuilder {
    fn add(&mut self, case: &Case, since: DateTime<Utc>, until: DateTime<Utc>) {
        let in_period = |time: DateTime<Utc>| since <= time && time <= until;
        if in_period(case.created_at) {
            self.counts.opened += 1;
            if let Some(sla) = case.sla {
                self.counts.acknowledge_breaches += u64::from(sla.acknowledge_breached);
                self.counts.resolve_breaches += u64::from(sla.resolve_breached);
            }
        }
        if let Some(at) = case.acknowledged_at.filter(|at| in_period(*at)) {
            self.counts.acknowledged += 1;
            self.acknowledge_secs
                .push((at - case.created_at).num_seconds());
        }
        if let Some(at) = case.resolved_at.filter(|at| in_period(*at)) {
            self.counts.resolved += 1;
            self.resolve_secs.push((at - case.created_at).num_seconds());
        }
    }

    fn finish(mut self) -> CaseCounts {
        self.counts.median_acknowledge_secs = median(&mut self.acknowledge_secs);
        self.counts.median_resolve_secs = median(&mut self.resolve_secs);
        self.counts
    }
}

/// Returns the median of `values`: the middle value, or the mean of the
/// two middle values rounded down. `None` when there are none.
fn median(values: &mut [i64]) -> Option<i64> {
    values.sort_unstable();
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        length if length % 2 == 1 => values.get(middle).copied(),
        _ => {
            let low = *values.get(middle - 1)?;
            let high = *values.get(middle)?;
            Some(low + (high - low) / 2)
        }
    }
}

/// The case service.
pub struct CaseService {
    store: Arc<dyn Store>,
    sla: SlaPolicy,
}

impl CaseService {
    pub fn new(store: Arc<dyn Store>, sla: SlaPolicy) -> Self {
        Self { store, sla }
    }

    pub fn sla(&self) -> &SlaPolicy {
        &self.sla
    }

    /// Fills in the SLA view of `case` as of `now`.
    fn with_sla(&self, mut case: Case, now: DateTime<Utc>) -> Case {
        case.sla = Some(self.sla.evaluate(&case, now));
        case
    }

    /// Returns case `id` with its SLA view as of `now`.
    pub fn case(&self, id: &str, now: DateTime<Utc>) -> Result<Case, CaseError> {
        let case = self
            .store
            .case(id)?
            .ok_or_else(|| CaseError::NotFound(id.to_string()))?;
        Ok(self.with_sla(case, now))
    }

    /// Returns the cases that pass `filter`, oldest first, with their SLA
    /// views as of `now`.
    pub fn list(&self, filter: &CaseFilter, now: DateTime<Utc>) -> Result<Vec<Case>, CaseError> {
        Ok(self
            .store
            .cases()?
            .into_iter()
            .map(|case| self.with_sla(case, now))
            .filter(|case| filter.matches(case))
            .collect())
    }

    /// Applies `edit` to case `id` on behalf of `actor` and returns the
    /// case. A field set to the value it has already adds no event.
    pub fn update(
        &self,
        id: &str,
        edit: &CaseEdit,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Case, CaseError> {
        let actor = check_name("actor", actor)?;
        let checked = CheckedEdit::parse(edit)?;
        let mut changed = Vec::new();
        let case = self.store.update_case(id, &mut |case| {
            changed = checked.apply(case, &actor, now);
        })?;
        if !changed.is_empty() {
            let detail = json!({ "changed": changed, "edit": edit });
            self.audit(&actor, "case_updated", id, detail)?;
        }
        Ok(self.with_sla(case, now))
    }

    /// Adds a comment by `actor` to case `id` and returns the case.
    pub fn comment(
        &self,
        id: &str,
        actor: &str,
        text: &str,
        now: DateTime<Utc>,
    ) -> Result<Case, CaseError> {
        let actor = check_name("actor", actor)?;
        if text.trim().is_empty() {
            return Err(CaseError::Invalid(
                "the comment is empty; write some text".into(),
            ));
        }
        let length = text.chars().count();
        if length > MAX_COMMENT_CHARS {
            return Err(CaseError::Invalid(format!(
                "the comment has {length} characters; the limit is {MAX_COMMENT_CHARS}"
            )));
        }
        let case = self.store.update_case(id, &mut |case| {
            case.add_note(&actor, text, now);
        })?;
        let detail = json!({ "characters": length });
        self.audit(&actor, "case_commented", id, detail)?;
        Ok(self.with_sla(case, now))
    }

    /// Adds a task titled `title` to case `id`. Returns the case and the
    /// new task's id.
    pub fn add_task(
        &self,
        id: &str,
        actor: &str,
        title: &str,
        now: DateTime<Utc>,
    ) -> Result<(Case, String), CaseError> {
        let actor = check_name("actor", actor)?;
        let title = check_name("task title", title)?;
        let mut task_id = String::new();
        let case = self.store.update_case(id, &mut |case| {
            task_id = case.add_task(&title, &actor, now);
        })?;
        let detail = json!({ "task": task_id, "title": title });
        self.audit(&actor, "case_task_added", id, detail)?;
        Ok((self.with_sla(case, now), task_id))
    }

    /// Marks task `task_id` of case `id` done. Completing a task that is
    /// already done changes nothing and succeeds, so a retried request is
    /// harmless.
    pub fn complete_task(
        &self,
        id: &str,
        task_id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Case, CaseError> {
        let actor = check_name("actor", actor)?;
        let task_id = task_id.trim().to_uppercase();
        let mut outcome = None;
        let mut known = Vec::new();
        let case = self.store.update_case(id, &mut |case| {
            outcome = case.complete_task(&task_id, &actor, now);
            known = case.tasks.iter().map(|task| task.id.clone()).collect();
        })?;
        match outcome {
            None if known.is_empty() => Err(CaseError::Invalid(format!(
                "case {id} has no task {task_id:?}; it has no tasks yet"
            ))),
            None => Err(CaseError::Invalid(format!(
                "case {id} has no task {task_id:?}; its tasks are {}",
                known.join(", ")
            ))),
            Some(changed) => {
                if changed {
                    let detail = json!({ "task": task_id });
                    self.audit(&actor, "case_task_done", id, detail)?;
                }
                Ok(self.with_sla(case, now))
            }
        }
    }

    /// Counts the cases opened, acknowledged and resolved from `since` to
    /// `now`, with median times and SLA breaches, in total and by
    /// severity.
    pub fn stats(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Result<CaseStats, CaseError> {
        if since > now {
            return Err(CaseError::Invalid(format!(
                "the period starts at {since}, after its end {now}; give a start in the past"
            )));
        }
        let mut total = CountsBuilder::default();
        let mut by_severity: Vec<(Severity, CountsBuilder)> = [
            Severity::Critical,
            Severity::High,
            Severity::Medium,
            Severity::Low,
            Severity::Informational,
        ]
        .into_iter()
        .map(|severity| (severity, CountsBuilder::default()))
        .collect();
        for case in self.store.cases()? {
            let case = self.with_sla(case, now);
            total.add(&case, since, now);
            if let Some((_, counts)) = by_severity.iter_mut().find(|(s, _)| *s == case.severity) {
                counts.add(&case, since, now);
            }
        }
        Ok(CaseStats {
            since,
            until: now,
            total: total.finish(),
            by_severity: by_severity
                .into_iter()
                .map(|(severity, counts)| SeverityCounts {
                    severity,
                    counts: counts.finish(),
                })
                .collect(),
        })
    }

    /// Appends an operator action on case `case_id` to the audit log and
    /// flushes, so the change and its record are on disk on return.
    fn audit(
        &self,
        actor: &str,
        action: &str,
        case_id: &str,
        detail: Value,
    ) -> Result<(), CaseError> {
        let event = AuditEvent {
            actor: format!("operator:{actor}"),
            action: action.to_string(),
            subject: case_id.to_string(),
            detail,
        };
        let written = self
            .store
            .append_audit(event)
            .and_then(|_| self.store.flush());
        written.map_err(|source| CaseError::Audit {
            case_id: case_id.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use palisade_model::parse_alerts;
    use palisade_store::SledStore;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    const T0: &str = "2026-01-05T10:00:00Z";

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<SledStore>,
        service: CaseService,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let service = CaseService::new(store.clone(), SlaPolicy::default());
        Fixture {
            _dir: dir,
            store,
            service,
        }
    }

    impl Fixture {
        /// Opens a case at `created` from a Wazuh alert of `level` with
        /// rule `rule_id` and description `title`; returns its id.
        fn open_case(&self, rule_id: &str, level: u8, title: &str, created: &str) -> String {
            let line = format!(
                r#"{{"timestamp":"2026-01-05T09:00:00.000+0000","rule":{{"level":{level},"id":"{rule_id}","description":"{title}"}},"agent":{{"id":"001","name":"web-1"}}}}"#
            );
            let alert = parse_alerts(&line).pop().unwrap().unwrap();
            self.store
                .ingest_alert(&alert, at(created))
                .unwrap()
                .case_id
        }

        fn update(&self, id: &str, edit: CaseEdit, when: &str) -> Case {
            self.service.update(id, &edit, "ana", at(when)).unwrap()
        }

        fn ids(&self, query: CaseQuery) -> Vec<String> {
            let filter = CaseFilter::parse(&query).unwrap();
            self.service
                .list(&filter, at("2026-01-05T10:30:00Z"))
                .unwrap()
                .into_iter()
                .map(|case| case.id)
                .collect()
        }
    }

    fn invalid(result: Result<impl std::fmt::Debug, CaseError>) -> String {
        match result {
            Err(CaseError::Invalid(message)) => message,
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    fn status(name: &str) -> CaseEdit {
        CaseEdit {
            status: Some(name.into()),
            ..CaseEdit::default()
        }
    }

    #[test]
    fn list_filters_each_field() {
        let fixture = fixture();
        // Level 13 is high, 8 medium, 3 low.
        let high = fixture.open_case("100", 13, "Brute force on web-1", T0);
        let medium = fixture.open_case("200", 8, "Port scan", T0);
        let low = fixture.open_case("300", 3, "Login after hours", T0);
        fixture.update(
            &medium,
            CaseEdit {
                assignee: Some(Some("ana".into())),
                add_tags: vec!["Scan".into()],
                status: Some("in_progress".into()),
                ..CaseEdit::default()
            },
            "2026-01-05T10:05:00Z",
        );
        fixture.update(&low, status("resolved"), "2026-01-05T10:06:00Z");

        let query = |build: fn(&mut CaseQuery)| {
            let mut query = CaseQuery::default();
            build(&mut query);
            fixture.ids(query)
        };
        assert_eq!(
            query(|_| {}),
            [high.as_str(), medium.as_str(), low.as_str()]
        );
        assert_eq!(
            query(|q| q.status = Some("in_progress".into())),
            [medium.as_str()]
        );
        assert_eq!(
            query(|q| q.status = Some("open".into())),
            [high.as_str(), medium.as_str()]
        );
        assert_eq!(query(|q| q.status = Some("closed".into())), [low.as_str()]);
        assert_eq!(
            query(|q| q.severity = Some("medium".into())),
            [high.as_str(), medium.as_str()]
        );
        assert_eq!(
            query(|q| q.assignee = Some("ana".into())),
            [medium.as_str()]
        );
        assert_eq!(
            query(|q| q.assignee = Some("bo".into())),
            Vec::<String>::new()
        );
        assert_eq!(query(|q| q.tag = Some("SCAN".into())), [medium.as_str()]);
        assert_eq!(
            query(|q| q.text = Some("brute FORCE".into())),
            [high.as_str()]
        );
        // At 10:30 the high case (acknowledge within 1h) is on time; none
        // is breached yet.
        assert_eq!(
            query(|q| q.breached = Some("true".into())),
            Vec::<String>::new()
        );
        assert_eq!(query(|q| q.breached = Some("false".into())).len(), 3);
    }

    #[test]
    fn breached_filter_uses_the_read_time() {
        let fixture = fixture();
        let high = fixture.open_case("100", 13, "Brute force", T0);
        let filter = CaseFilter::parse(&CaseQuery {
            breached: Some("true".into()),
            ..CaseQuery::default()
        })
        .unwrap();
        let early = fixture.service.list(&filter, at("2026-01-05T11:00:00Z"));
        assert!(early.unwrap().is_empty(), "exactly at the deadline");
        let late = fixture
            .service
            .list(&filter, at("2026-01-05T11:00:01Z"))
            .unwrap();
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].id, high);
        let sla = late[0].sla.unwrap();
        assert!(sla.acknowledge_breached);
        assert!(!sla.resolve_breached);
    }

    #[test]
    fn bad_filters_name_value_and_choices() {
        let cases = [
            (
                CaseQuery {
                    status: Some("done".into()),
                    ..CaseQuery::default()
                },
                "\"done\"",
                "in_progress",
            ),
            (
                CaseQuery {
                    severity: Some("urgent".into()),
                    ..CaseQuery::default()
                },
                "\"urgent\"",
                "critical",
            ),
            (
                CaseQuery {
                    breached: Some("yes".into()),
                    ..CaseQuery::default()
                },
                "\"yes\"",
                "true or false",
            ),
        ];
        for (query, value, choices) in cases {
            let message = invalid(CaseFilter::parse(&query));
            assert!(message.contains(value), "{query:?}: {message}");
            assert!(message.contains(choices), "{query:?}: {message}");
        }
    }

    #[test]
    fn update_applies_each_field_with_events() {
        let fixture = fixture();
        let id = fixture.open_case("100", 8, "Port scan", T0);
        let case = fixture.update(
            &id,
            CaseEdit {
                status: Some("In_Progress".into()),
                assignee: Some(Some(" ana ".into())),
                add_tags: vec!["scan".into(), "external".into()],
                priority: Some("p2".into()),
                severity: Some("high".into()),
                ..CaseEdit::default()
            },
            "2026-01-05T10:05:00Z",
        );
        assert_eq!(case.status, CaseStatus::InProgress);
        assert_eq!(case.assignee.as_deref(), Some("ana"));
        assert_eq!(case.tags, ["external", "scan"]);
        assert_eq!(case.priority.as_deref(), Some("P2"));
        assert_eq!(case.severity, Severity::High);
        assert_eq!(case.acknowledged_at, Some(at("2026-01-05T10:05:00Z")));
        assert!(case.sla.is_some(), "the service fills in the SLA view");

        let kinds: Vec<&str> = case
            .timeline
            .iter()
            .filter(|event| event.actor.as_deref() == Some("ana"))
            .map(|event| event.kind.as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "status_changed",
                "assigned",
                "tag_added",
                "tag_added",
                "priority_changed",
                "severity_changed"
            ]
        );

        let case = fixture.update(
            &id,
            CaseEdit {
                assignee: Some(None),
                remove_tags: vec!["scan".into()],
                ..CaseEdit::default()
            },
            "2026-01-05T10:06:00Z",
        );
        assert_eq!(case.assignee, None);
        assert_eq!(case.tags, ["external"]);

        let records = fixture.store.audit_records(0, 100).unwrap();
        let updates: Vec<_> = records
            .iter()
            .filter(|record| record.action == "case_updated")
            .collect();
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].actor, "operator:ana");
        assert_eq!(updates[0].subject, id);
    }

    #[test]
    fn unchanged_update_adds_no_event_or_audit() {
        let fixture = fixture();
        let id = fixture.open_case("100", 8, "Port scan", T0);
        let before = fixture.service.case(&id, at(T0)).unwrap().timeline.len();
        fixture.update(&id, status("new"), "2026-01-05T10:01:00Z");
        let after = fixture.service.case(&id, at(T0)).unwrap();
        assert_eq!(after.timeline.len(), before);
        let audits = fixture.store.audit_records(0, 100).unwrap();
        assert!(audits.iter().all(|record| record.action != "case_updated"));
    }

    #[test]
    fn invalid_updates_change_nothing() {
        let fixture = fixture();
        let id = fixture.open_case("100", 8, "Port scan", T0);
        let now = at("2026-01-05T10:01:00Z");
        let rejected = [
            (
                status("closed"),
                "unknown status \"closed\"",
                "false_positive",
            ),
            (
                CaseEdit {
                    priority: Some("urgent".into()),
                    ..CaseEdit::default()
                },
                "\"urgent\"",
                "P1, P2, P3, P4",
            ),
            (
                CaseEdit {
                    severity: Some("severe".into()),
                    ..CaseEdit::default()
                },
                "\"severe\"",
                "informational",
            ),
            (
                CaseEdit {
                    add_tags: vec!["two words".into()],
                    ..CaseEdit::default()
                },
                "\"two words\"",
                "letters, digits",
            ),
            (
                CaseEdit {
                    assignee: Some(Some("x".repeat(201))),
                    ..CaseEdit::default()
                },
                "201 characters",
                "200",
            ),
            (CaseEdit::default(), "changes nothing", "status"),
        ];
        for (edit, value, choices) in rejected {
            // A valid status beside the bad field must not be applied.
            let mut edit = edit;
            if edit.status.is_none() && edit != CaseEdit::default() {
                edit.status = Some("resolved".into());
            }
            let message = invalid(fixture.service.update(&id, &edit, "ana", now));
            assert!(message.contains(value), "{edit:?}: {message}");
            assert!(message.contains(choices), "{edit:?}: {message}");
        }
        let case = fixture.service.case(&id, now).unwrap();
        assert_eq!(case.status, CaseStatus::New);
        assert!(case.tags.is_empty());
        assert_eq!(case.timeline.len(), 2, "opened and one alert");
    }

    #[test]
    fn unknown_case_is_not_found() {
        let fixture = fixture();
        let error = fixture
            .service
            .update("C99999999", &status("resolved"), "ana", at(T0))
            .unwrap_err();
        assert!(
            matches!(error, CaseError::NotFound(ref id) if id == "C99999999"),
            "{error}"
        );
        let error = fixture.service.case("C99999999", at(T0)).unwrap_err();
        assert!(matches!(error, CaseError::NotFound(_)), "{error}");
        let error = fixture
            .service
            .comment("C99999999", "ana", "hello", at(T0))
            .unwrap_err();
        assert!(matches!(error, CaseError::NotFound(_)), "{error}");
    }

    #[test]
    fn comments_are_checked_and_kept() {
        let fixture = fixture();
        let id = fixture.open_case("100", 8, "Port scan", T0);
        let now = at("2026-01-05T10:01:00Z");
        let empty = invalid(fixture.service.comment(&id, "ana", " \n ", now));
        assert!(empty.contains("empty"), "{empty}");
        let long = "x".repeat(MAX_COMMENT_CHARS + 1);
        let too_long = invalid(fixture.service.comment(&id, "ana", &long, now));
        assert!(too_long.contains("10001 characters"), "{too_long}");
        assert!(too_long.contains("10000"), "{too_long}");
        let no_actor = invalid(fixture.service.comment(&id, "", "text", now));
        assert!(no_actor.contains("actor"), "{no_actor}");

        let limit = "é".repeat(MAX_COMMENT_CHARS);
        fixture
            .service
            .comment(&id, "ana", "first look", now)
            .unwrap();
        let case = fixture.service.comment(&id, "bo", &limit, now).unwrap();
        assert_eq!(case.notes.len(), 2);
        assert_eq!(case.notes[0].text, "first look");
        assert_eq!(case.notes[1].author, "bo");
        assert_eq!(case.notes[1].text, limit, "the limit counts characters");
        let comments = case.timeline.iter().filter(|e| e.kind == "comment").count();
        assert_eq!(comments, 2);
    }

    #[test]
    fn tasks_are_added_and_completed() {
        let fixture = fixture();
        let id = fixture.open_case("100", 8, "Port scan", T0);
        let now = at("2026-01-05T10:01:00Z");
        let none_yet = invalid(fixture.service.complete_task(&id, "T1", "ana", now));
        assert!(none_yet.contains("no tasks yet"), "{none_yet}");
        let (_, first) = fixture
            .service
            .add_task(&id, "ana", "block the address", now)
            .unwrap();
        let (_, second) = fixture
            .service
            .add_task(&id, "ana", "ask the owner", now)
            .unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("T1", "T2"));

        let unknown = invalid(fixture.service.complete_task(&id, "T7", "bo", now));
        assert!(unknown.contains("\"T7\""), "{unknown}");
        assert!(unknown.contains("T1, T2"), "{unknown}");

        let case = fixture.service.complete_task(&id, "t2", "bo", now).unwrap();
        let task = case.tasks.iter().find(|task| task.id == "T2").unwrap();
        assert!(task.done);
        assert_eq!(task.done_by.as_deref(), Some("bo"));
        assert_eq!(task.done_at, Some(now));
        // Again: accepted, and nothing more is recorded.
        let again = fixture
            .service
            .complete_task(&id, "T2", "ana", now)
            .unwrap();
        let task = again.tasks.iter().find(|task| task.id == "T2").unwrap();
        assert_eq!(task.done_by.as_deref(), Some("bo"));
        let done = again
            .timeline
            .iter()
            .filter(|e| e.kind == "task_done")
            .count();
        assert_eq!(done, 1);

        let empty = invalid(fixture.service.add_task(&id, "ana", "  ", now));
        assert!(empty.contains("task title"), "{empty}");
        let actions: Vec<String> = fixture
            .store
            .audit_records(0, 100)
            .unwrap()
            .into_iter()
            .map(|record| record.action)
            .collect();
        assert_eq!(
            actions,
            ["case_task_added", "case_task_added", "case_task_done"]
        );
    }

    #[test]
    fn stats_count_and_take_medians() {
        let fixture = fixture();
        let minutes = |m: i64| at(T0) + TimeDelta::minutes(m);
        let stamp = |m: i64| minutes(m).to_rfc3339();
        // Three high cases opened at 10:00 and acknowledged after 10, 20 and
        // 61 minutes. Two of them are resolved after 2 and 30 hours.
        let a = fixture.open_case("1", 13, "a", T0);
        let b = fixture.open_case("2", 13, "b", T0);
        let c = fixture.open_case("3", 13, "c", T0);
        fixture.update(&a, status("in_progress"), &stamp(10));
        fixture.update(
            &b,
            CaseEdit {
                assignee: Some(Some("ana".into())),
                ..CaseEdit::default()
            },
            &stamp(20),
        );
        fixture.update(&c, status("in_progress"), &stamp(61));
        fixture.update(&a, status("resolved"), &stamp(120));
        fixture.update(&c, status("false_positive"), &stamp(30 * 60));
        // A low case opened a week earlier, outside the period, resolved
        // inside it.
        let old = fixture.open_case("4", 3, "old", "2025-12-29T10:00:00Z");
        fixture.update(&old, status("resolved"), &stamp(5));
        // A medium case reopened after resolving counts as not resolved.
        let reopened = fixture.open_case("5", 8, "reopened", T0);
        fixture.update(&reopened, status("resolved"), &stamp(1));
        fixture.update(&reopened, status("in_progress"), &stamp(2));

        let now = minutes(48 * 60);
        let stats = fixture.service.stats(minutes(-60), now).unwrap();
        let total = &stats.total;
        assert_eq!(total.opened, 4, "the old case was opened before the period");
        assert_eq!(total.acknowledged, 5);
        assert_eq!(total.resolved, 3);
        // Acknowledge times: 1, 10, 20, 61 minutes and 7 days 5 minutes.
        assert_eq!(total.median_acknowledge_secs, Some(20 * 60));
        // Resolve times: 2 h, 30 h and 7 days 5 minutes.
        assert_eq!(total.median_resolve_secs, Some(30 * 3600));
        // Among the cases opened in the period, c was acknowledged after the
        // 1h deadline of high cases. b is unresolved after 48h and c was
        // resolved after 30h, both past the 24h deadline.
        assert_eq!(total.acknowledge_breaches, 1);
        assert_eq!(total.resolve_breaches, 2);

        let high = &stats.by_severity[1];
        assert_eq!(high.severity, Severity::High);
        assert_eq!(high.counts.opened, 3);
        assert_eq!(high.counts.resolved, 2);
        // Two values: the mean of 2 h and 30 h.
        assert_eq!(high.counts.median_resolve_secs, Some(16 * 3600));
        let low = &stats.by_severity[3];
        assert_eq!(low.severity, Severity::Low);
        assert_eq!(low.counts.opened, 0);
        assert_eq!(low.counts.resolved, 1);
        let critical = &stats.by_severity[0];
        assert_eq!(critical.counts, CaseCounts::default());

        let backwards = invalid(fixture.service.stats(now, minutes(0)));
        assert!(backwards.contains("after its end"), "{backwards}");
    }

    #[test]
    fn period_parses_or_names_the_value() {
        assert_eq!(parse_period("7d").unwrap(), TimeDelta::days(7));
        assert_eq!(parse_period("90m").unwrap(), TimeDelta::minutes(90));
        for (text, reason) in [("0", "empty"), ("week", "\"week\""), ("400d", "365 days")] {
            let message = invalid(parse_period(text));
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains("such as 24h"), "{text}: {message}");
        }
    }

    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5]), Some(5));
        assert_eq!(median(&mut [9, 1, 5]), Some(5));
        assert_eq!(
            median(&mut [4, 1, 2, 3]),
            Some(2),
            "mean of 2 and 3, rounded down"
        );
        assert_eq!(median(&mut [10, 20]), Some(15));
    }

    #[test]
    fn edit_json_tells_null_from_absent() {
        let unassign: CaseEdit = serde_json::from_str(r#"{"assignee": null}"#).unwrap();
        assert_eq!(unassign.assignee, Some(None));
        let absent: CaseEdit = serde_json::from_str(r#"{"status": "new"}"#).unwrap();
        assert_eq!(absent.assignee, None);
        let round_trip: CaseEdit =
            serde_json::from_value(serde_json::to_value(&unassign).unwrap()).unwrap();
        assert_eq!(round_trip, unassign);
        let error = serde_json::from_str::<CaseEdit>(r#"{"tags": ["x"]}"#).unwrap_err();
        assert!(error.to_string().contains("tags"), "{error}");
    }
}
