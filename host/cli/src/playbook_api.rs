//! The playbook routes of the HTTP API.
//!
//! - `GET /v1/playbooks`: name, description, trigger, step count and the
//!   plugins used, of each loaded playbook;
//! - `GET /v1/playbooks/{name}`: one playbook file as the daemon loaded
//!   it, converted from YAML to JSON;
//! - `POST /v1/playbooks/check`: the diagnostics of `palisade playbook
//!   check` for the YAML playbook in the body, checked with the loaded
//!   plugins and beside the loaded playbooks, so it may call them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use palisade_engine::{Diagnostic, Level, Playbook};
use serde_json::{Value, json};

use crate::api_error::{ApiError, Body, ErrorCode, internal};
use crate::host::RuntimeCaller;

/// File name the checked body gets in diagnostics.
const BODY_FILE: &str = "request.yaml";

/// The loaded playbooks, as the playbook routes present them.
pub struct PlaybookCatalog {
    summaries: Vec<Value>,
    /// Playbook documents by name.
    documents: BTreeMap<String, Value>,
    /// Files of the loaded playbooks, for checking a body beside them.
    files: Vec<PathBuf>,
    caller: Arc<RuntimeCaller>,
}

impl PlaybookCatalog {
    /// Builds the catalog of `playbooks` and reads each one's file again to
    /// keep its document. A file that cannot be read or parsed any more is
    /// listed with a null document and a warning.
    pub fn new(playbooks: &[Playbook], caller: Arc<RuntimeCaller>) -> Self {
        let mut documents = BTreeMap::new();
        for playbook in playbooks {
            let document = std::fs::read_to_string(&playbook.path)
                .map_err(|error| error.to_string())
                .and_then(|text| {
                    serde_yaml_ng::from_str::<Value>(&text).map_err(|error| error.to_string())
                })
                .unwrap_or_else(|error| {
                    tracing::warn!(playbook = %playbook.name, path = %playbook.path.display(), %error, "cannot read the playbook file again; its document is null");
                    Value::Null
                });
            documents.insert(playbook.name.clone(), document);
        }
        Self {
            summaries: playbooks.iter().map(summary).collect(),
            documents,
            files: playbooks
                .iter()
                .map(|playbook| playbook.path.clone())
                .collect(),
            caller,
        }
    }
}

fn summary(playbook: &Playbook) -> Value {
    let trigger = playbook
        .trigger
        .as_ref()
        .map(|trigger| json!({ "source": trigger.source, "when": trigger.when }));
    let plugins: Vec<&str> = playbook.targets().into_keys().collect();
    json!({
        "name": playbook.name,
        "description": playbook.description,
        "trigger": trigger,
        "steps": playbook.steps.len(),
        "plugins": plugins,
    })
}

/// The state the playbook routes take from the router's state.
#[derive(Clone)]
pub struct PlaybookState(pub Arc<PlaybookCatalog>);

pub async fn list_playbooks(State(PlaybookState(catalog)): State<PlaybookState>) -> Json<Value> {
    Json(Value::Array(catalog.summaries.clone()))
}

pub async fn show_playbook(
    State(PlaybookState(catalog)): State<PlaybookState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    catalog
        .documents
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("playbook {name:?} not found; `GET /v1/playbooks` lists the loaded ones"),
            )
        })
}

/// Checks the YAML playbook in the body. Returns 200 with `valid`, the
/// counts of errors and warnings, and each diagnostic with its line,
/// column, level, message and hint, whether or not the playbook is valid.
pub async fn check_playbook(
    State(PlaybookState(catalog)): State<PlaybookState>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let text = String::from_utf8(body.to_vec()).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidBody,
            "the body is not UTF-8 text; send the playbook as YAML",
        )
    })?;
    let diagnostics = tokio::task::spawn_blocking(move || check_text(&catalog, &text))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let errors = diagnostics
        .iter()
        .filter(|diagnostic| diagnostic.level == Level::Error)
        .count();
    let listed: Vec<Value> = diagnostics.iter().map(diagnostic_json).collect();
    Ok(Json(json!({
        "valid": errors == 0,
        "errors": errors,
        "warnings": diagnostics.len() - errors,
        "diagnostics": listed,
    })))
}

/// Writes `text` to a scratch file and checks it ahead of the loaded
/// playbooks, so a playbook of the same name is replaced by it. Returns
/// the diagnostics of the body only, with the scratch path replaced by
/// [`BODY_FILE`].
fn check_text(catalog: &PlaybookCatalog, text: &str) -> std::io::Result<Vec<Diagnostic>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(BODY_FILE);
    std::fs::write(&path, text)?;
    let mut files = vec![path.clone()];
    files.extend(catalog.files.iter().cloned());
    let scratch_path = path.display().to_string();
    let diagnostics = palisade_engine::check_files(&files, catalog.caller.as_ref())
        .into_iter()
        .filter(|diagnostic| diagnostic.path == path)
        .map(|mut diagnostic| {
            diagnostic.path = PathBuf::from(BODY_FILE);
            diagnostic.message = diagnostic.message.replace(&scratch_path, BODY_FILE);
            diagnostic.hint = diagnostic
                .hint
                .map(|hint| hint.replace(&scratch_path, BODY_FILE));
            diagnostic
        })
        .collect();
    Ok(diagnostics)
}

fn diagnostic_json(diagnostic: &Diagnostic) -> Value {
    let level = match diagnostic.level {
        Level::Error => "error",
        Level::Warning => "warning",
    };
    json!({
        "line": diagnostic.line,
        "column": diagnostic.column,
        "level": level,
        "message": diagnostic.message,
        "hint": diagnostic.hint,
    })
}
