//! `palisade playbook check`: every problem of a set of playbooks, each
//! with file, line, column and a hint, without running anything.
//!
//! Errors are what loading would reject: YAML and field errors, invalid
//! steps and expressions, unknown plugins, actions and sub-playbooks,
//! inputs that do not fit an action's JSON Schema, and playbooks that call
//! themselves. Warnings are legal but likely wrong: a handler no step uses,
//! steps that can never run, and steps that can fail with nothing to
//! handle the failure.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::playbook::{OnError, Playbook, PlaybookError, Step};
use crate::runner::PluginCaller;
use crate::schema::Schema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

/// One problem, at a place in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub level: Level,
    pub message: String,
    /// Suggested fix.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {level}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// A playbook file as read.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    /// A diagnostic for `message`, placed at the step or field it names.
    /// Messages written as "problem; what to do" are split into the message
    /// and the hint.
    fn diagnose(&self, level: Level, message: &str) -> Diagnostic {
        let (line, column) = locate(&self.text, message);
        let (message, hint) = match message.split_once("; ") {
            Some((message, hint)) => (message.to_string(), Some(hint.to_string())),
            None => (message.to_string(), None),
        };
        Diagnostic {
            path: self.path.clone(),
            line,
            column,
            level,
            message,
            hint,
        }
    }
}

/// Checks the playbook files `paths` together, with the plugins `caller`
/// has loaded. Returns the problems, errors first within each file.
pub fn check_files<C: PluginCaller>(paths: &[PathBuf], caller: &C) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut loaded: Vec<(Source, Playbook)> = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                diagnostics.push(Diagnostic {
                    path: path.clone(),
                    line: 1,
                    column: 1,
                    level: Level::Error,
                    message: format!("cannot read the file: {error}"),
                    hint: None,
                });
                continue;
            }
        };
        let source = Source {
            path: path.clone(),
            text,
        };
        match Playbook::parse_unchecked(&source.text, path) {
            Ok(mut playbook) => {
                let problems = playbook.problems();
                for problem in &problems {
                    diagnostics.push(source.diagnose(Level::Error, problem));
                }
                playbook.name_step_kinds();
                loaded.push((source, playbook));
            }
            Err(PlaybookError::Syntax {
                line,
                column,
                message,
                ..
            }) => diagnostics.push(Diagnostic {
                path: path.clone(),
                line,
                column,
                level: Level::Error,
                message: strip_location(&message),
                hint: None,
            }),
            Err(error) => diagnostics.push(source.diagnose(Level::Error, &error.to_string())),
        }
    }
    let playbooks: Vec<Playbook> = loaded
        .iter()
        .map(|(_, playbook)| playbook.clone())
        .collect();
    for (source, playbook) in &loaded {
        check_duplicate_name(source, playbook, &playbooks, &mut diagnostics);
        for step in playbook.steps.iter().chain(&playbook.handlers) {
            check_target(source, step, caller, &mut diagnostics);
            check_call(source, step, &playbooks, &mut diagnostics);
        }
        check_reachability(source, playbook, &mut diagnostics);
        check_failure_handling(source, playbook, caller, &mut diagnostics);
    }
    if let Err(error) = crate::check_recursion(&playbooks) {
        let message = error.to_string();
        let source = loaded
            .iter()
            .map(|(source, _)| source)
            .find(|source| message.starts_with(&source.path.display().to_string()));
        if let Some(source) = source {
            let message = message
                .strip_prefix(&format!("{}: ", source.path.display()))
                .unwrap_or(&message)
                .to_string();
            diagnostics.push(source.diagnose(Level::Error, &message));
        }
    }
    diagnostics.sort_by(|a, b| (&a.path, a.level, a.line).cmp(&(&b.path, b.level, b.line)));
    diagnostics
}

fn check_duplicate_name(
    source: &Source,
    playbook: &Playbook,
    all: &[Playbook],
    diagnostics: &mut Vec<Diagnostic>,
) {
    let first = all.iter().find(|other| other.name == playbook.name);
    if let Some(first) = first
        && first.path != playbook.path
    {
        diagnostics.push(source.diagnose(
            Level::Error,
            &format!(
                "playbook name {:?} is already used by {}; give each playbook its own name",
                playbook.name,
                first.path.display()
            ),
        ));
    }
}

/// Checks that the step's plugin and action are loaded and that the
/// literal parts of its `with` fit the action's input schema.
fn check_target<C: PluginCaller>(
    source: &Source,
    step: &Step,
    caller: &C,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if step.playbook.is_some() || step.approval.is_some() || step.fail.is_some() {
        return;
    }
    let (plugin, action) = step.target();
    let Some(offered) = caller.actions(plugin) else {
        diagnostics.push(source.diagnose(
            Level::Error,
            &format!(
                "step {:?} uses plugin {plugin:?}, which is not loaded; build it into the plugins directory or change `uses`",
                step.id
            ),
        ));
        return;
    };
    if !offered.iter().any(|name| name == action) {
        diagnostics.push(source.diagnose(
            Level::Error,
            &format!(
                "step {:?}: plugin {plugin:?} has no action {action:?}; it offers {}",
                step.id,
                offered.join(", ")
            ),
        ));
        return;
    }
    let Some(schema) = caller.input_schema(plugin, action) else {
        return;
    };
    for problem in input_problems(&step.with, &schema) {
        diagnostics.push(source.diagnose(Level::Error, &format!("step {:?}: {problem}", step.id)));
    }
}

/// Problems of the literal parts of `with` against an object schema:
/// required inputs that are missing, inputs the schema does not allow, and
/// literal values that do not fit their property's schema. Values that
/// contain an expression are known only when the step runs.
pub fn input_problems(with: &Value, schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let empty = serde_json::Map::new();
    let given = match with {
        Value::Object(given) => given,
        Value::Null => &empty,
        // A whole `with` given by one expression.
        _ => return problems,
    };
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !given.contains_key(name) {
                problems.push(format!(
                    "input `{name}` is required by the action's schema; add it under `with`"
                ));
            }
        }
    }
    for (name, value) in given {
        let property = properties.and_then(|properties| properties.get(name));
        match property {
            None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                let known: Vec<&str> = properties
                    .map(|properties| properties.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                problems.push(format!(
                    "input `{name}` is not in the action's schema; the inputs are: {}",
                    known.join(", ")
                ));
            }
            Some(property) if !contains_expression(value) => {
                if let Ok(schema) = Schema::compile(property)
                    && let Err(error) = schema.validate(value)
                {
                    problems.push(format!(
                        "input `{name}` does not fit the action's schema: {}; change the value",
                        error.replace('\n', " ")
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

fn contains_expression(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains("{{"),
        Value::Array(items) => items.iter().any(contains_expression),
        Value::Object(map) => map.values().any(contains_expression),
        _ => false,
    }
}

fn check_call(source: &Source, step: &Step, all: &[Playbook], diagnostics: &mut Vec<Diagnostic>) {
    let Some(name) = step.sub_playbook() else {
        return;
    };
    let Some(called) = all.iter().find(|candidate| candidate.name == name) else {
        let known: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        diagnostics.push(source.diagnose(
            Level::Error,
            &format!(
                "step {:?} calls playbook {name:?}, which is not among the checked playbooks; check it together with this one, or fix the name (known: {})",
                step.id,
                known.join(", ")
            ),
        ));
        return;
    };
    if let Value::Object(given) = &step.with
        && let Err(error) = called.resolve_inputs(&Value::Object(given.clone()))
    {
        diagnostics.push(source.diagnose(Level::Error, &format!("step {:?}: {error}", step.id)));
    }
}

/// Warns about a handler no step names, and about steps that can never
/// run because a step they need always fails the run.
fn check_reachability(source: &Source, playbook: &Playbook, diagnostics: &mut Vec<Diagnostic>) {
    for handler in &playbook.handlers {
        if !playbook
            .steps
            .iter()
            .any(|step| step.handler.as_deref() == Some(&handler.id))
        {
            diagnostics.push(source.diagnose(
                Level::Warning,
                &format!(
                    "handler {:?} is not the handler of any step, so it never runs; name it in a step's `handler` or remove it",
                    handler.id
                ),
            ));
        }
    }
    let mut never: BTreeSet<&str> = BTreeSet::new();
    let mut before: Option<&Step> = None;
    for step in &playbook.steps {
        let dependencies = step.dependencies(before);
        let blocked = dependencies
            .iter()
            .filter(|need| never.contains(*need))
            .count();
        let required = step.join.required(dependencies.len());
        if blocked > 0 && dependencies.len() - blocked < required {
            diagnostics.push(source.diagnose(
                Level::Warning,
                &format!(
                    "step {:?} can never run: a step it needs always fails the run; give that step a condition or `on_error: continue`",
                    step.id
                ),
            ));
            never.insert(&step.id);
        }
        if step.fail.is_some() && step.condition.is_none() && step.on_error == OnError::Fail {
            never.insert(&step.id);
        }
        before = Some(step);
    }
}

/// Warns about steps whose action talks to another system (so timeouts,
/// rate limits and upstream errors happen) and that have neither a
/// handler, a retry nor `on_error: continue`: their failure fails the run.
fn check_failure_handling<C: PluginCaller>(
    source: &Source,
    playbook: &Playbook,
    caller: &C,
    diagnostics: &mut Vec<Diagnostic>,
) {
    for step in &playbook.steps {
        if step.playbook.is_some() || step.approval.is_some() || step.fail.is_some() {
            continue;
        }
        let (plugin, action) = step.target();
        let known = caller
            .actions(plugin)
            .is_some_and(|actions| actions.iter().any(|name| name == action));
        let reaches_out = known && caller.requests_network(plugin);
        if reaches_out
            && step.handler.is_none()
            && step.retry.is_none()
            && step.on_error == OnError::Fail
        {
            diagnostics.push(source.diagnose(
                Level::Warning,
                &format!(
                    "step {:?} calls {}, which can fail (timeout, rate limit, upstream error), and nothing handles a failure, so it fails the run; add `retry`, a `handler` or `on_error: continue` if the run should go on",
                    step.id, step.uses
                ),
            ));
        }
    }
}

/// The line and column (from 1) of the step, handler or field `message`
/// names, or of the first line.
fn locate(text: &str, message: &str) -> (usize, usize) {
    let quoted = |after: &str| -> Option<String> {
        let start = message.find(after)? + after.len();
        let rest = message[start..].strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_string())
    };
    let id = quoted("step ").or_else(|| quoted("handler "));
    if let Some(id) = id {
        for (number, line) in text.lines().enumerate() {
            if let Some(column) = find_key_value(line, "id", &id) {
                return (number + 1, column);
            }
        }
    }
    for field in [
        "trigger.when",
        "outputs.",
        "case.",
        "name",
        "steps",
        "inputs",
    ] {
        if !message.starts_with(&format!("`{field}")) && !message.starts_with(field) {
            continue;
        }
        let key = field
            .rsplit('.')
            .find(|part| !part.is_empty())
            .unwrap_or(field);
        for (number, line) in text.lines().enumerate() {
            if let Some(column) = line.find(&format!("{key}:")) {
                return (number + 1, column + 1);
            }
        }
    }
    (1, 1)
}

/// Column (from 1) of `key: value` in `line`, in block or flow style and
/// with or without quotes.
fn find_key_value(line: &str, key: &str, value: &str) -> Option<usize> {
    let mut search = 0;
    while let Some(found) = line[search..].find(&format!("{key}:")) {
        let start = search + found;
        let before = line[..start].chars().last();
        let after = line[start + key.len() + 1..].trim_start();
        let bare = after
            .trim_start_matches(['"', '\''])
            .split(['"', '\'', ',', '}', ' ', '#'])
            .next()
            .unwrap_or("");
        let key_starts_here = before.is_none_or(|c| c == ' ' || c == '{' || c == '-');
        if key_starts_here && bare == value {
            return Some(start + 1);
        }
        search = start + key.len() + 1;
    }
    None
}

/// serde_yaml_ng adds "at line L column C" to its messages, sometimes
/// twice; the diagnostic carries the place already.
fn strip_location(message: &str) -> String {
    let mut rest = message;
    let mut out = String::new();
    while let Some(position) = rest.find(" at line ") {
        out.push_str(&rest[..position]);
        let after = &rest[position + " at line ".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_digit() || c == ' ' || "column".contains(c)))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Lists the playbook files of `path`: the file itself, or the `.yaml`
/// and `.yml` files of a directory, sorted.
pub fn playbook_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension().is_some_and(|ext| {
                ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml")
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn yaml_locations_are_removed() {
        assert_eq!(
            strip_location(
                "did not find expected ',' at line 7 column 1, while parsing a flow mapping at line 6 column 11"
            ),
            "did not find expected ',', while parsing a flow mapping"
        );
        assert_eq!(strip_location("no location"), "no location");
    }

    #[test]
    fn keys_are_found_in_both_styles() {
        assert_eq!(find_key_value("  - id: enrich", "id", "enrich"), Some(5));
        assert_eq!(
            find_key_value("  - { id: \"a\", uses: x }", "id", "a"),
            Some(7)
        );
        assert_eq!(find_key_value("  - id: enrich_more", "id", "enrich"), None);
        assert_eq!(find_key_value("  - uuid: enrich", "id", "enrich"), None);
    }

    #[test]
    fn literal_inputs_are_checked_against_the_schema() {
        let schema = json!({
            "type": "object",
            "required": ["title"],
            "additionalProperties": false,
            "properties": {"title": {"type": "string"}, "max": {"type": "integer"}}
        });
        assert!(input_problems(&json!({"title": "{{ alert.id }}"}), &schema).is_empty());
        let problems = input_problems(&json!({"max": "two", "colour": 1}), &schema);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("`title` is required"));
        assert!(problems.iter().any(|p| p.contains("`colour` is not in")));
        assert!(problems.iter().any(|p| p.contains("`max` does not fit")));
    }
}
